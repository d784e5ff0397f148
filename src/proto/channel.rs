//! Channel names and subscription patterns: the rules of the wire contract (PROTOCOL.md,
//! "Channels") as pure functions over bytes.
//!
//! This module owns what a valid channel name and a valid pattern are, and what a pattern
//! matches. It never allocates, never touches a socket or the registry, and never decides how
//! an error reaches the client: it returns a small [`ChannelError`] and the caller turns it into
//! an `invalid_channel` reply. Validation runs on every publish and every subscribe, so each
//! check is a single pass over at most [`CHANNEL_BYTES_MAX`] bytes; [`pattern_matches`] is the
//! reference matcher that the registry's trie is tested against.

use std::fmt;

/// The longest channel name or pattern, in bytes.
pub const CHANNEL_BYTES_MAX: usize = 255;

/// The first token of the server's own channels (`$sys.stats`). `$` is no token byte, so no
/// client name collides with them; clients may subscribe to them but never publish, and a
/// pattern matches them only if it starts with this token too: a `>` firehose does not get
/// the server's telemetry.
pub const SYSTEM_TOKEN: &str = "$sys";

/// Whether `name` (a channel or a pattern) is under [`SYSTEM_TOKEN`].
#[must_use]
pub fn is_system(name: &str) -> bool {
    name.strip_prefix(SYSTEM_TOKEN)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// How a tenant's scope starts: the server knows tenant `acme`'s channel `leads.42` as
/// `$t:acme.leads.42`, its *full name*, while the tenant's clients only ever read and write
/// `leads.42`. No client can name a scope (`$` is no token byte), and like [`SYSTEM_TOKEN`] a
/// scope is matched only by patterns that start with the same scope: a tenant's `>`, which the
/// server scopes to `$t:acme.>`, matches nothing of another tenant, and an unscoped `>` matches
/// no tenant's channels.
pub const TENANT_MARK: &str = "$t:";

/// The longest tenant name, in bytes.
pub const TENANT_BYTES_MAX: usize = 64;

/// Checks a tenant name (a token claim, an API key's tenant, a publish's `tenant`): one token
/// of 1 to [`TENANT_BYTES_MAX`] bytes of `[A-Za-z0-9_:@=+-]`.
///
/// # Errors
/// A human reason, for a 400 or a 401 body.
pub fn validate_tenant(tenant: &str) -> Result<(), String> {
    let shown: String = tenant.chars().take(TENANT_BYTES_MAX).collect();
    if tenant.is_empty() || tenant.len() > TENANT_BYTES_MAX {
        return Err(format!(
            "tenant {shown:?} is {} bytes; it needs 1 to {TENANT_BYTES_MAX}",
            tenant.len()
        ));
    }
    let token_byte = |byte: u8| byte.is_ascii_alphanumeric() || b"_:@=+-".contains(&byte);
    if !tenant.bytes().all(token_byte) {
        return Err(format!(
            "tenant {shown:?} is not one token: it allows only A-Z a-z 0-9 _ : @ = + -"
        ));
    }
    Ok(())
}

/// The full name of `name` (a channel or a pattern) in `tenant`'s scope.
#[must_use]
pub fn scoped(tenant: &str, name: &str) -> String {
    [TENANT_MARK, tenant, ".", name].concat()
}

/// A full name's tenant, if it is in one's scope, and the name its clients use.
#[must_use]
pub fn split_scope(full: &str) -> (Option<&str>, &str) {
    full.strip_prefix(TENANT_MARK)
        .and_then(|rest| rest.split_once('.'))
        .map_or((None, full), |(tenant, name)| (Some(tenant), name))
}

/// The name clients use for the full name `full`: without its tenant's scope, and
/// [`USER_CHANNEL`] for every user's stream (each connection reads only its own).
#[must_use]
pub fn visible(full: &str) -> &str {
    let name = split_scope(full).1;
    if is_user_stream(name) {
        USER_CHANNEL
    } else {
        name
    }
}

/// The channel on which a connection receives what is published to its user (PROTOCOL.md,
/// "Users"). Each user's messages are a stream of their own, with its own offsets and
/// history: the server knows user `ada`'s as `$user.ada` ([`user_stream`]), and every
/// connection of hers reads and writes it as `$user`. Like [`SYSTEM_TOKEN`] it starts with `$`,
/// so no client channel collides with it and no wildcard stands for it.
pub const USER_CHANNEL: &str = "$user";

/// The longest user id (a token's `sub`, a `?user=`), in bytes. Its stream's name, escaped
/// ([`user_stream`]) after `$user.`, stays within [`CHANNEL_BYTES_MAX`].
pub const USER_BYTES_MAX: usize = 80;

/// Checks a user id: 1 to [`USER_BYTES_MAX`] bytes, no control characters.
///
/// # Errors
/// A human reason, for a 400 or a 401 body.
pub fn validate_user(user: &str) -> Result<(), String> {
    let shown: String = user.chars().take(USER_BYTES_MAX).collect();
    if user.is_empty() || user.len() > USER_BYTES_MAX {
        return Err(format!(
            "user {shown:?} is {} bytes; it needs 1 to {USER_BYTES_MAX}",
            user.len()
        ));
    }
    if user.chars().any(char::is_control) {
        return Err(format!("user {shown:?} holds a control character"));
    }
    Ok(())
}

/// The full name of `user`'s stream (a valid [`validate_user`] id) in `tenant`'s scope, if
/// any: `$user.` and the id as one token, every byte outside `[A-Za-z0-9_:@+-]` written `=XX`
/// (its hex), so that two ids never share a stream: `ada@example.com` is
/// `$user.ada@example=2Ecom`, and in tenant `acme`'s scope `$t:acme.$user.ada@example=2Ecom`.
#[must_use]
pub fn user_stream(tenant: Option<&str>, user: &str) -> String {
    use std::fmt::Write;
    let mut name = String::with_capacity(USER_CHANNEL.len() + 1 + user.len());
    if let Some(tenant) = tenant {
        name.extend([TENANT_MARK, tenant, "."]);
    }
    name.push_str(USER_CHANNEL);
    name.push('.');
    for byte in user.bytes() {
        if byte.is_ascii_alphanumeric() || b"_:@+-".contains(&byte) {
            name.push(char::from(byte));
        } else {
            write!(name, "={byte:02X}").expect("writing to a String cannot fail");
        }
    }
    name
}

/// Whether `name` (without a tenant's scope) is [`USER_CHANNEL`] or a user's stream.
#[must_use]
pub fn is_user_stream(name: &str) -> bool {
    name.strip_prefix(USER_CHANNEL)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Whether a wildcard may stand for `token`: never for a token the server reserves, which
/// starts with `$` ([`SYSTEM_TOKEN`], a tenant's scope, [`USER_CHANNEL`]). A pattern must spell
/// such a token out to match past it, so a `>` firehose gets neither the server's telemetry,
/// nor another tenant's channels, nor anyone's user stream.
#[must_use]
pub fn wildcard_may_match(token: &str) -> bool {
    !token.starts_with('$')
}

/// Why a channel name or pattern was refused. Every variant is the peer's mistake: answer with
/// an `invalid_channel` error carrying the [`Display`](fmt::Display) text, keep the connection
/// open, and change nothing for anyone else. Offsets are byte offsets into the refused name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// The name has no bytes. Refuse the request; the client must send 1 to 255 bytes.
    Empty,
    /// The name is longer than `max_bytes`: [`CHANNEL_BYTES_MAX`], or the server's lower
    /// `channel_bytes_max`. Refuse the request; the client must shorten it.
    TooLong { len_bytes: usize, max_bytes: usize },
    /// A leading dot, a trailing dot or two dots in a row leave a token empty; `at` is where the
    /// empty token starts. Refuse the request; the client must drop the extra dot.
    EmptyToken { at: usize },
    /// A byte outside `[A-Za-z0-9_:@=+-]` and the separator `.`. Refuse the request; the client
    /// must rename the channel.
    BadByte { byte: u8, at: usize },
    /// A `*` or `>` in a name given to publish, which needs one concrete channel. Refuse the
    /// publish; the client must publish to each concrete channel instead.
    Wildcard { at: usize },
    /// A `*` or `>` sharing its token with other bytes, as in `a*` or `>b`. Refuse the
    /// subscribe; the client must make the wildcard a whole token.
    PartialWildcard { at: usize },
    /// A `>` token before the last token, as in `a.>.b`. Refuse the subscribe; the client must
    /// end the pattern at the `>`.
    MisplacedGreater { at: usize },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ChannelError::Empty => {
                write!(
                    f,
                    "channel is empty; it needs 1 to {CHANNEL_BYTES_MAX} bytes"
                )
            }
            ChannelError::TooLong {
                len_bytes,
                max_bytes,
            } => write!(f, "channel is {len_bytes} bytes; the limit is {max_bytes}"),
            ChannelError::EmptyToken { at } => write!(
                f,
                "channel has an empty token at byte {at}; tokens are joined by single dots"
            ),
            ChannelError::BadByte { byte, at } => {
                write!(f, "channel has byte 0x{byte:02X}")?;
                if byte.is_ascii_graphic() {
                    write!(f, " ('{}')", char::from(byte))?;
                }
                write!(
                    f,
                    " at byte {at}; a token allows only A-Z a-z 0-9 _ : @ = + -"
                )
            }
            ChannelError::Wildcard { at } => write!(
                f,
                "channel has a wildcard at byte {at}; publish needs a concrete channel"
            ),
            ChannelError::PartialWildcard { at } => write!(
                f,
                "wildcard at byte {at} shares a token; '*' and '>' must be whole tokens"
            ),
            ChannelError::MisplacedGreater { at } => {
                write!(f, "'>' at byte {at} is not the last token")
            }
        }
    }
}

impl std::error::Error for ChannelError {}

/// Checks that a name is at most `max_bytes` long (a server's `channel_bytes_max`, which the
/// validators below leave to the caller: they check the contract's [`CHANNEL_BYTES_MAX`]).
///
/// # Errors
/// [`ChannelError::TooLong`] past it.
pub fn check_length(name: &str, max_bytes: usize) -> Result<(), ChannelError> {
    if name.len() > max_bytes {
        return Err(ChannelError::TooLong {
            len_bytes: name.len(),
            max_bytes,
        });
    }
    Ok(())
}

/// Checks a concrete channel name, as given to publish: no wildcards.
///
/// # Errors
/// The first rule the name breaks, scanning from its start (length is checked first).
pub fn validate_channel(name: &str) -> Result<(), ChannelError> {
    scan(name, Wildcards::Refused)
}

/// Checks a subscription pattern: a channel name whose tokens may also be `*` anywhere or `>`
/// as the last token.
///
/// # Errors
/// The first rule the pattern breaks, scanning from its start (length is checked first).
pub fn validate_pattern(pattern: &str) -> Result<(), ChannelError> {
    scan(pattern, Wildcards::Allowed)
}

/// Whether `pattern` has a `*` or `>` token, i.e. can match more than the one channel of the
/// same name. Exact for any input; only meaningful for a pattern that passed
/// [`validate_pattern`].
#[must_use]
pub fn is_pattern(pattern: &str) -> bool {
    pattern.split('.').any(|token| token == "*" || token == ">")
}

/// Whether `pattern` matches the concrete `channel`. Both are expected to be valid; a `>` that
/// is not the last token matches nothing. This is the reference for the registry's trie.
#[must_use]
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    let mut pattern_tokens = pattern.split('.');
    let mut channel_tokens = channel.split('.');
    loop {
        match (pattern_tokens.next(), channel_tokens.next()) {
            (None, None) => return true,
            (Some("*" | ">"), Some(token)) if !wildcard_may_match(token) => return false,
            // `>` swallows this token and every one after it, so at least one.
            (Some(">"), Some(_)) => return pattern_tokens.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(pattern_token), Some(channel_token)) => {
                if pattern_token != channel_token {
                    return false;
                }
            }
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

/// Whether every channel `pattern` matches is also matched by `granted` (both valid
/// patterns): what a token's grant must say for a subscription to be allowed.
#[must_use]
pub fn pattern_covers(granted: &str, pattern: &str) -> bool {
    let mut granted_tokens = granted.split('.');
    let mut pattern_tokens = pattern.split('.');
    loop {
        match (granted_tokens.next(), pattern_tokens.next()) {
            (None, None) => return true,
            (Some("*" | ">"), Some(token)) if !wildcard_may_match(token) => return false,
            // `>` takes one token or more, whatever they are, wildcards included.
            (Some(">"), Some(_)) => return true,
            // The pattern goes deeper than anything a non-`>` grant reaches.
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(granted_token), Some(pattern_token)) => {
                if granted_token != pattern_token {
                    return false;
                }
            }
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

/// Whether the scan accepts `*` and `>` tokens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wildcards {
    Allowed,
    Refused,
}

/// The one pass behind both validators: length first, then every byte once. A wildcard looks
/// one byte ahead to tell a whole token (`*.` or `*` at the end) from a partial one (`*a`).
fn scan(name: &str, wildcards: Wildcards) -> Result<(), ChannelError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err(ChannelError::Empty);
    }
    check_length(name, CHANNEL_BYTES_MAX)?;
    // The system token and the user channel are the one place a `$` may stand.
    let mut token_start = if is_system(name) {
        SYSTEM_TOKEN.len() + 1
    } else if is_user_stream(name) {
        USER_CHANNEL.len() + 1
    } else {
        0
    };
    if token_start > bytes.len() {
        return Ok(());
    }
    for (at, &byte) in bytes.iter().enumerate().skip(token_start) {
        match byte {
            b'.' => {
                if at == token_start {
                    return Err(ChannelError::EmptyToken { at });
                }
                token_start = at + 1;
            }
            b'*' | b'>' => {
                if wildcards == Wildcards::Refused {
                    return Err(ChannelError::Wildcard { at });
                }
                if at != token_start {
                    return Err(ChannelError::PartialWildcard { at });
                }
                match bytes.get(at + 1) {
                    Some(b'.') if byte == b'>' => {
                        return Err(ChannelError::MisplacedGreater { at });
                    }
                    None | Some(b'.') => {}
                    Some(_) => return Err(ChannelError::PartialWildcard { at }),
                }
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b':' | b'@' | b'=' | b'+' | b'-' => {}
            _ => return Err(ChannelError::BadByte { byte, at }),
        }
    }
    if token_start == bytes.len() {
        return Err(ChannelError::EmptyToken { at: token_start });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_token_byte() {
        let name = "AZaz09_:@=+-.x";
        assert_eq!(validate_channel(name), Ok(()));
        assert_eq!(validate_pattern(name), Ok(()));
        assert_eq!(validate_channel("leads.42.notes"), Ok(()));
        assert_eq!(validate_channel("a"), Ok(()));
    }

    #[test]
    fn the_system_token_is_valid_and_matched_only_by_its_own_patterns() {
        assert_eq!(validate_channel("$sys.stats"), Ok(()));
        assert_eq!(validate_channel("$sys"), Ok(()));
        assert_eq!(validate_pattern("$sys.>"), Ok(()));
        assert_eq!(
            validate_channel("$sys."),
            Err(ChannelError::EmptyToken { at: 5 })
        );
        assert_eq!(
            validate_channel("$system"),
            Err(ChannelError::BadByte { byte: b'$', at: 0 })
        );
        assert_eq!(
            validate_channel("a.$sys"),
            Err(ChannelError::BadByte { byte: b'$', at: 2 })
        );
        assert!(is_system("$sys.stats") && is_system("$sys") && !is_system("$system"));
        assert!(pattern_matches("$sys.stats", "$sys.stats"));
        assert!(pattern_matches("$sys.*", "$sys.stats"));
        assert!(!pattern_matches(">", "$sys.stats"));
        assert!(!pattern_matches("*.stats", "$sys.stats"));
    }

    #[test]
    fn a_user_stream_is_one_escaped_token_that_no_wildcard_reaches() {
        assert_eq!(user_stream(None, "ada"), "$user.ada");
        assert_eq!(user_stream(Some("acme"), "ada"), "$t:acme.$user.ada");
        assert_eq!(
            user_stream(None, "ada@example.com"),
            "$user.ada@example=2Ecom"
        );
        assert_eq!(user_stream(None, "a=2E"), "$user.a=3D2E");
        assert_ne!(user_stream(None, "a.b"), user_stream(None, "a=2Eb"));
        assert_eq!(user_stream(None, "é"), "$user.=C3=A9");
        let longest = user_stream(None, &"\u{7f}".repeat(USER_BYTES_MAX));
        assert!(validate_user(&"x".repeat(USER_BYTES_MAX)).is_ok());
        assert!(validate_channel(&user_stream(None, &"%".repeat(USER_BYTES_MAX))).is_ok());
        assert!(longest.len() <= CHANNEL_BYTES_MAX);
        assert!(validate_user("").is_err());
        assert!(validate_user(&"x".repeat(USER_BYTES_MAX + 1)).is_err());
        assert!(validate_user("a\nb").is_err());
        for full in ["$user.ada", "$t:acme.$user.ada", "$user"] {
            assert_eq!(visible(full), USER_CHANNEL);
        }
        assert_eq!(visible("$t:acme.users.ada"), "users.ada");
        assert!(!is_user_stream("$users.x") && is_user_stream("$user"));
        for pattern in [">", "*", "$t:acme.>", "$t:acme.*", "$t:acme.*.ada"] {
            let channel = if pattern.starts_with("$t:") {
                "$t:acme.$user.ada"
            } else {
                "$user.ada"
            };
            assert!(
                !pattern_matches(pattern, channel),
                "{pattern} reaches {channel}"
            );
        }
        assert!(pattern_matches("$t:acme.$user.ada", "$t:acme.$user.ada"));
        assert!(!pattern_covers(">", "$user") && !pattern_covers("*", "$user"));
    }

    #[test]
    fn a_grant_covers_exactly_the_patterns_within_it() {
        for (granted, pattern, covered) in [
            ("leads.*", "leads.42", true),
            ("leads.*", "leads.*", true),
            ("leads.*", "leads.>", false),
            ("leads.*", "leads.42.x", false),
            ("leads.>", "leads.*.notes", true),
            ("leads.>", "leads.>", true),
            ("leads.>", "leads", false),
            (">", "a.b.c", true),
            (">", "$sys.stats", false),
            ("$sys.>", "$sys.stats", true),
            ("a.b", "a.*", false),
            ("*.b", "a.b", true),
        ] {
            assert_eq!(
                pattern_covers(granted, pattern),
                covered,
                "{granted} {pattern}"
            );
        }
    }

    #[test]
    fn a_tenant_scope_is_matched_only_by_patterns_of_the_same_scope() {
        let full = scoped("acme", "leads.42");
        assert_eq!(full, "$t:acme.leads.42");
        assert_eq!(split_scope(&full), (Some("acme"), "leads.42"));
        assert_eq!(split_scope("leads.42"), (None, "leads.42"));
        assert_eq!(visible("$sys.stats"), "$sys.stats");
        assert!(pattern_matches(&scoped("acme", ">"), &full));
        assert!(pattern_matches(&scoped("acme", "leads.*"), &full));
        assert!(!pattern_matches(&scoped("acme2", ">"), &full));
        assert!(!pattern_matches(&scoped("globex", "leads.42"), &full));
        assert!(!pattern_matches(">", &full));
        assert!(!pattern_matches("*.leads.42", &full));
        assert!(!pattern_matches(&scoped("acme", ">"), "leads.42"));
        assert!(!pattern_covers(">", &scoped("acme", "leads.*")));
        assert!(pattern_covers(
            &scoped("acme", "leads.>"),
            &scoped("acme", "leads.*")
        ));
        assert!(
            validate_pattern("$t:globex.>").is_err(),
            "clients cannot name a scope"
        );
        assert_eq!(validate_tenant("acme-1"), Ok(()));
        for bad in ["", "a.b", "a*", "$sys", "a b", &"x".repeat(65)] {
            assert!(validate_tenant(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_is_refused() {
        assert_eq!(validate_channel(""), Err(ChannelError::Empty));
        assert_eq!(validate_pattern(""), Err(ChannelError::Empty));
    }

    #[test]
    fn length_boundary_is_255_bytes() {
        let at_limit = "a".repeat(CHANNEL_BYTES_MAX);
        assert_eq!(validate_channel(&at_limit), Ok(()));
        assert_eq!(validate_pattern(&at_limit), Ok(()));

        let over_limit = "a".repeat(CHANNEL_BYTES_MAX + 1);
        let error = ChannelError::TooLong {
            len_bytes: 256,
            max_bytes: 255,
        };
        assert_eq!(validate_channel(&over_limit), Err(error));
        assert_eq!(validate_pattern(&over_limit), Err(error));

        // Length counts bytes, not chars: 128 two-byte chars are 256 bytes.
        let wide = "é".repeat(128);
        assert_eq!(validate_channel(&wide), Err(error));
    }

    #[test]
    fn empty_tokens_are_refused() {
        assert_eq!(
            validate_channel(".a"),
            Err(ChannelError::EmptyToken { at: 0 })
        );
        assert_eq!(
            validate_channel("a."),
            Err(ChannelError::EmptyToken { at: 2 })
        );
        assert_eq!(
            validate_channel("a..b"),
            Err(ChannelError::EmptyToken { at: 2 })
        );
        assert_eq!(
            validate_channel("."),
            Err(ChannelError::EmptyToken { at: 0 })
        );
        assert_eq!(
            validate_pattern("a.*."),
            Err(ChannelError::EmptyToken { at: 4 })
        );
    }

    #[test]
    fn bad_bytes_are_refused_with_their_offset() {
        assert_eq!(
            validate_channel("a/b"),
            Err(ChannelError::BadByte { byte: b'/', at: 1 })
        );
        assert_eq!(
            validate_channel("a b"),
            Err(ChannelError::BadByte { byte: b' ', at: 1 })
        );
        assert_eq!(
            validate_pattern("leads.é"),
            Err(ChannelError::BadByte { byte: 0xC3, at: 6 })
        );
        assert_eq!(
            validate_pattern("x#"),
            Err(ChannelError::BadByte { byte: b'#', at: 1 })
        );
    }

    #[test]
    fn publish_names_refuse_wildcards() {
        assert_eq!(validate_channel("*"), Err(ChannelError::Wildcard { at: 0 }));
        assert_eq!(
            validate_channel("leads.>"),
            Err(ChannelError::Wildcard { at: 6 })
        );
        assert_eq!(
            validate_channel("a*"),
            Err(ChannelError::Wildcard { at: 1 })
        );
    }

    #[test]
    fn patterns_accept_whole_wildcard_tokens() {
        for pattern in ["*", ">", "leads.*", "leads.>", "*.*", "*.x.>", "a.*.b"] {
            assert_eq!(validate_pattern(pattern), Ok(()), "{pattern}");
        }
    }

    #[test]
    fn partial_wildcards_are_refused() {
        assert_eq!(
            validate_pattern("a*"),
            Err(ChannelError::PartialWildcard { at: 1 })
        );
        assert_eq!(
            validate_pattern("*a"),
            Err(ChannelError::PartialWildcard { at: 0 })
        );
        assert_eq!(
            validate_pattern(">b"),
            Err(ChannelError::PartialWildcard { at: 0 })
        );
        assert_eq!(
            validate_pattern("x.**"),
            Err(ChannelError::PartialWildcard { at: 2 })
        );
        assert_eq!(
            validate_pattern("x.*>"),
            Err(ChannelError::PartialWildcard { at: 2 })
        );
    }

    #[test]
    fn greater_must_be_last() {
        assert_eq!(
            validate_pattern(">.a"),
            Err(ChannelError::MisplacedGreater { at: 0 })
        );
        assert_eq!(
            validate_pattern("a.>.b"),
            Err(ChannelError::MisplacedGreater { at: 2 })
        );
        assert_eq!(
            validate_pattern("a.>."),
            Err(ChannelError::MisplacedGreater { at: 2 })
        );
    }

    #[test]
    fn messages_name_the_problem() {
        assert_eq!(
            ChannelError::TooLong {
                len_bytes: 300,
                max_bytes: 255
            }
            .to_string(),
            "channel is 300 bytes; the limit is 255"
        );
        assert_eq!(
            ChannelError::Empty.to_string(),
            "channel is empty; it needs 1 to 255 bytes"
        );
        assert_eq!(
            ChannelError::BadByte { byte: b'/', at: 1 }.to_string(),
            "channel has byte 0x2F ('/') at byte 1; a token allows only A-Z a-z 0-9 _ : @ = + -"
        );
        assert_eq!(
            ChannelError::BadByte { byte: 0xC3, at: 6 }.to_string(),
            "channel has byte 0xC3 at byte 6; a token allows only A-Z a-z 0-9 _ : @ = + -"
        );
        assert_eq!(
            ChannelError::EmptyToken { at: 2 }.to_string(),
            "channel has an empty token at byte 2; tokens are joined by single dots"
        );
        assert_eq!(
            ChannelError::Wildcard { at: 6 }.to_string(),
            "channel has a wildcard at byte 6; publish needs a concrete channel"
        );
        assert_eq!(
            ChannelError::PartialWildcard { at: 1 }.to_string(),
            "wildcard at byte 1 shares a token; '*' and '>' must be whole tokens"
        );
        assert_eq!(
            ChannelError::MisplacedGreater { at: 2 }.to_string(),
            "'>' at byte 2 is not the last token"
        );
    }

    #[test]
    fn is_pattern_finds_wildcard_tokens() {
        assert!(is_pattern("*"));
        assert!(is_pattern(">"));
        assert!(is_pattern("leads.*"));
        assert!(is_pattern("a.*.b"));
        assert!(is_pattern("leads.>"));
        assert!(!is_pattern("leads.42"));
        assert!(!is_pattern("a"));
    }

    #[test]
    fn exact_patterns_match_only_themselves() {
        assert!(pattern_matches("leads.42", "leads.42"));
        assert!(!pattern_matches("leads.42", "leads.43"));
        assert!(!pattern_matches("leads.42", "leads.42.notes"));
        assert!(!pattern_matches("leads.42", "leads"));
    }

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(pattern_matches("leads.*", "leads.42"));
        assert!(!pattern_matches("leads.*", "leads.42.notes"));
        assert!(!pattern_matches("leads.*", "leads"));
        assert!(pattern_matches("*.42", "leads.42"));
        assert!(pattern_matches("a.*.c", "a.b.c"));
        assert!(!pattern_matches("a.*.c", "a.b.d"));
        assert!(pattern_matches("*", "leads"));
        assert!(!pattern_matches("*", "leads.42"));
    }

    #[test]
    fn greater_matches_one_or_more_tokens() {
        assert!(pattern_matches("leads.>", "leads.42"));
        assert!(pattern_matches("leads.>", "leads.42.notes"));
        assert!(!pattern_matches("leads.>", "leads"));
        assert!(!pattern_matches("leads.>", "lead.42"));
        assert!(pattern_matches(">", "a"));
        assert!(pattern_matches(">", "a.b.c"));
        assert!(pattern_matches("*.>", "a.b"));
        assert!(!pattern_matches("*.>", "a"));
        // An invalid `>` in the middle matches nothing rather than everything.
        assert!(!pattern_matches("a.>.c", "a.b.c"));
    }
}
