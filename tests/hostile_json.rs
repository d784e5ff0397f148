//! Replays the hostile JSON corpus (`tests/hostile-json/`, written by its `make.py`, plus values
//! 100,000 deep and the deepest each size limit allows, built here) through every parser the
//! server exposes, on a thread with no more stack than corecast reserves for nesting, and
//! asserts each outcome exactly: past `json_depth_max` the error naming it and the byte, a bad
//! `\u` escape refused at its byte, everything else accepted or refused as pinned in
//! [`OUTCOMES`], a `data` kept byte for byte. Then the TOML config and the JWKS file, whose
//! parsers bound their own recursion, at depth 100,000.

use std::path::{Path, PathBuf};

use corecast::cluster;
use corecast::config::{defaults, AuthMode, Config};
use corecast::ingest::api;
use corecast::json;
use corecast::net::auth::Verifier;
use corecast::ws::command::{self, Command};

/// The limit every parser runs under here: the server's default.
fn depth_max() -> usize {
    defaults::json_depth_max()
}

/// The replay thread's stack: what a parsing thread reserves for `json_depth_max` levels
/// (`json::STACK_BYTES_PER_LEVEL` each), without the 2 MiB base the server adds for
/// everything else, plus 128 KiB for the test's own frames. In a release build that is
/// 256 KiB; sonic-rs at the limit spends about 33 KiB of it (257 bytes a level), so the test
/// proves the margin, not the size of a test thread.
fn replay_stack_bytes() -> usize {
    depth_max() * json::STACK_BYTES_PER_LEVEL + (128 << 10)
}

/// Runs `work` on a thread of `stack_bytes` and returns what it returned.
fn on_small_stack<T: Send>(stack_bytes: usize, work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("hostile-json".into())
            .stack_size(stack_bytes)
            .spawn_scoped(scope, work)
            .expect("a replay thread")
            .join()
            .expect("the replay thread finishes")
    })
}

// ---------------------------------------------------------------------------------------------
// The model: an independent, byte-at-a-time reading of a document

/// The first reason a document must be refused before parsing, found apart from
/// `json::check`, one byte at a time: a `\u` escape without four hex digits anywhere (every
/// backslash escapes the byte after it), else the first bracket outside strings, found with an
/// "inside a string" and an "after a backslash" flag, that opens one level too many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The `[` or `{` at this byte opens level `depth_max + 1`.
    TooDeep(usize),
    /// The `\u` whose backslash is at this byte lacks four hex digits.
    BadEscape(usize),
    Checked,
}

fn verdict(doc: &[u8], depth_max: usize) -> Verdict {
    let mut at = 0;
    while at < doc.len() {
        if doc[at] == b'\\' {
            let hex = doc.get(at + 2..at + 6);
            if doc.get(at + 1) == Some(&b'u')
                && !hex.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            {
                return Verdict::BadEscape(at);
            }
            at += 1;
        }
        at += 1;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (at, &byte) in doc.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > depth_max {
                    return Verdict::TooDeep(at);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Verdict::Checked
}

/// The message a refused document must carry, after the parser's prefix, or `None` when the
/// model finds nothing to refuse before parsing.
fn expected_refusal(doc: &[u8]) -> Option<String> {
    match verdict(doc, depth_max()) {
        Verdict::TooDeep(at) => Some(format!(
            "nested deeper than json_depth_max = {} (at byte {at})",
            depth_max()
        )),
        Verdict::BadEscape(at) => Some(format!("invalid \\u escape at byte {at}")),
        Verdict::Checked => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The parsers, each with the value in its place

/// What a parser made of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Accepted; the `data` it keeps, where it keeps one.
    Accepted(Option<String>),
    /// Refused with this message.
    Refused(String),
    /// This parser never sees such bytes (a text frame must be UTF-8; the server closes 1007
    /// first, and a Redis payload that is not UTF-8 is dropped before parsing).
    Unreachable,
}

/// Every place a value goes, by the letter [`OUTCOMES`] uses for it, with the prefix its
/// refusals carry.
const PATHS: [(&str, &str); 13] = [
    ("id", "not a valid command: "),
    ("data", "not a valid command: "),
    ("unknown field", "not a valid command: "),
    ("since", "not a valid command: "),
    ("alone", "not a valid command: "),
    ("unclosed command", "not a valid command: "),
    ("salvage_id", ""),
    ("/v1/publish", "invalid JSON body: "),
    ("/v1/publish/batch", "invalid JSON body: "),
    ("cluster event", "a {corecast}:events message is refused: "),
    ("JWT claims", ""),
    ("JWT header", ""),
    ("JWT header jwk", ""),
];

/// The paths that keep the value itself as a message's `data`.
const DATA_PATHS: [usize; 4] = [1, 7, 8, 9];

/// The paths sonic-rs parses, each after `json::check` (all but `salvage_id`, which answers
/// only with an id or none, and the JWT ones, which serde_json parses).
const CHECKED_PATHS: [usize; 9] = [0, 1, 2, 3, 4, 5, 7, 8, 9];

/// `value` in the place `path` (an index of [`PATHS`]) gives it, as the bytes that parser
/// reads.
fn document(path: usize, value: &[u8]) -> Vec<u8> {
    let (head, tail): (&[u8], &[u8]) = match path {
        0 => (br#"{"type":"ping","id":"#, b"}"),
        1 => (br#"{"type":"publish","channel":"c","id":1,"data":"#, b"}"),
        2 => (br#"{"type":"ping","id":1,"x":"#, b"}"),
        3 => (
            br#"{"type":"subscribe","channel":"a","id":1,"since":"#,
            b"}",
        ),
        4 | 11 | 12 => (b"", b""),
        5 => (br#"{"type":"ping","id":1,"x":"#, b""),
        6 => (br#"{"x":"#, br#","id":1}"#),
        7 => (br#"{"channel":"c","data":"#, b"}"),
        8 => (br#"{"messages":[{"channel":"c","data":"#, b"}]}"),
        9 => (
            br#"{"e":"00ff","s":1,"o":1,"t":1,"p":"normal","c":"a","d":"#,
            b"}",
        ),
        10 => (br#"{"sub":"ada","exp":4102444800,"x":"#, b"}"),
        _ => unreachable!("{path} is not a path"),
    };
    [head, value, tail].concat()
}

const JWT_SECRET: &str = "hostile-json-test-secret";

/// A verifier of HS256 tokens signed with [`JWT_SECRET`], as `auth = "jwt"` builds it.
fn verifier() -> Verifier {
    let config = Config {
        auth: AuthMode::Jwt,
        jwt_secret: Some(JWT_SECRET.into()),
        ..Config::default()
    };
    Verifier::from_config(&config)
        .expect("an HS256 secret is a key")
        .expect("auth = jwt has a verifier")
}

/// base64url without padding, as JWTs carry their parts.
fn base64url(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let word = chunk.iter().enumerate().fold(0u32, |word, (at, &byte)| {
            word | u32::from(byte) << (16 - 8 * at)
        });
        for at in 0..=chunk.len() {
            text.push(char::from(DIGITS[(word >> (18 - 6 * at)) as usize & 63]));
        }
    }
    text
}

/// A token of `header` and `claims` (raw JSON bytes), signed HS256 with [`JWT_SECRET`].
fn token(header: &[u8], claims: &[u8]) -> String {
    let signed = format!("{}.{}", base64url(header), base64url(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(signed.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .expect("HS256 signs anything");
    format!("{signed}.{signature}")
}

/// The claims every JWT path but the claims one carries.
const CLAIMS: &[u8] = br#"{"sub":"ada","exp":4102444800}"#;

/// The outcome of parser `path` on `doc`.
fn run(path: usize, doc: &[u8], verifier: &Verifier) -> Outcome {
    let refused = |message: String| Outcome::Refused(message);
    let text = std::str::from_utf8(doc);
    match path {
        0..=5 => {
            let Ok(text) = text else {
                return Outcome::Unreachable;
            };
            match command::parse(text, depth_max()) {
                Ok(Command::Publish { data, .. }) => Outcome::Accepted(Some(data.to_owned())),
                Ok(_) => Outcome::Accepted(None),
                Err(err) => {
                    assert_eq!(err.code, command::ErrorCode::BadRequest, "{}", err.message);
                    let id = err.id.map(|id| sonic_rs::to_string(&id).expect("an id"));
                    // A command refused after the depth check still has its id found.
                    if path == 5 && expected_refusal(doc).is_none() {
                        assert_eq!(id.as_deref(), Some("1"), "{}", err.message);
                    }
                    if expected_refusal(doc).is_some() {
                        assert_eq!(id, None, "a too-deep command is not searched for its id");
                    }
                    refused(err.message)
                }
            }
        }
        6 => {
            let Ok(text) = text else {
                return Outcome::Unreachable;
            };
            match command::salvage_id(text, depth_max()) {
                Some(id) => {
                    assert_eq!(sonic_rs::to_string(&id).expect("an id"), "1");
                    Outcome::Accepted(None)
                }
                None => refused(String::new()),
            }
        }
        7 | 8 => match api::parse_body(doc, path == 8, depth_max()) {
            Ok(datas) => {
                assert_eq!(datas.len(), 1, "one message");
                Outcome::Accepted(datas[0].as_deref().map(str::to_owned))
            }
            Err(message) => refused(message),
        },
        9 => {
            let Ok(text) = text else {
                return Outcome::Unreachable;
            };
            match cluster::parse_event(text, depth_max()) {
                Ok(event) => Outcome::Accepted(Some(event.data.into())),
                Err(message) => refused(message),
            }
        }
        10 => {
            let header = br#"{"alg":"HS256","typ":"JWT"}"#;
            match verifier.verify(Some(&token(header, doc))) {
                Ok(grant) => {
                    assert_eq!(grant.sub, "ada");
                    Outcome::Accepted(None)
                }
                Err(err) => refused(err.to_string()),
            }
        }
        11 | 12 => {
            // An unknown header field, which serde_json skips, and the header's `jwk`, which
            // jsonwebtoken reads through `#[serde(flatten)]`, i.e. as a whole value.
            let field: &[u8] = if path == 11 { b"x" } else { b"jwk" };
            let header = [
                br#"{"alg":"HS256","typ":"JWT",""#,
                field,
                br#"":"#,
                doc,
                b"}",
            ]
            .concat();
            match verifier.verify(Some(&token(&header, CLAIMS))) {
                Ok(_) => Outcome::Accepted(None),
                Err(err) => refused(err.to_string()),
            }
        }
        _ => unreachable!("{path} is not a path"),
    }
}

// ---------------------------------------------------------------------------------------------
// What each value gets

/// Per file, one letter per path of [`PATHS`], in order: `A` accepted, `R` refused, `-` never
/// reaches that parser. Depth and escape refusals must also carry the model's exact message;
/// every other outcome is sonic-rs's (serde_json's for the JWT paths), pinned here so that a
/// change of either shows.
const OUTCOMES: &[(&str, &str)] = &[
    // One letter per path: id, data, unknown field, since, alone, unclosed command,
    // salvage_id, /v1/publish, /v1/publish/batch, cluster event, JWT claims, JWT header,
    // JWT header jwk.
    ("arrays-127.json", "RAARRRAARAAAR"),
    ("arrays-128.json", "RRRRRRRRRRAAR"),
    ("arrays-129.json", "RRRRRRRRRRAAR"),
    ("arrays-32000.json", "RRRRRRRRRRAAR"),
    ("brackets-in-string.json", "RAARRRAAAAAAR"),
    ("control-char-in-string.json", "RRRRRRRRRRRRR"),
    ("duplicate-keys.json", "RAARRRAAAAAAR"),
    ("empty.json", "RRRRRRRRRRRRR"),
    ("escape-trailing-backslash.json", "RRRRRRRRRRRRR"),
    ("escape-u-not-hex.json", "RRRRRRRRRRRRR"),
    ("escape-u-short.json", "RRRRRRRRRRRRR"),
    ("escape-u-swallows-quote.json", "RRRRRRRRRRRRR"),
    ("escape-x.json", "RRRRRRRRRRRRR"),
    ("escaped-quote-then-brackets.json", "RAARRRAAAAAAR"),
    ("invalid-utf8-in-string.json", "-------RR-AAR"),
    ("long-string.json", "RAARRRAAAAAAR"),
    ("many-keys.json", "RAARRRAAAAAAR"),
    ("mixed-128.json", "RRRRRRRRRRAAR"),
    ("nul-in-string.json", "RRRRRRRRRRRRR"),
    ("number-1e-400.json", "AAARRRAAAAAAR"),
    ("number-1e400.json", "RAARRRAAAAAAR"),
    ("number-300-digits.json", "AAARRRAAAAAAR"),
    ("number-i64-min-minus-one.json", "AAARRRAAAAAAR"),
    ("number-leading-zero.json", "RRRRRRRRRRRRR"),
    ("number-minus-1e400.json", "RAARRRAAAAAAR"),
    ("number-minus-zero.json", "AAARRRAAAAAAR"),
    ("number-u64-max-plus-one.json", "AAARRRAAAAAAR"),
    ("objects-10900.json", "RRRRRRRRRRAAR"),
    ("objects-127.json", "RAARRRAARAAAR"),
    ("objects-128.json", "RRRRRRRRRRAAR"),
    ("objects-129.json", "RRRRRRRRRRAAR"),
    ("surrogate-high-then-letter.json", "RAARRRAAAAAAR"),
    ("surrogate-lone-high.json", "RAARRRAAAAAAR"),
    ("surrogate-lone-low.json", "RAARRRAAAAAAR"),
    ("surrogate-reversed-pair.json", "RAARRRAAAAAAR"),
    ("surrogate-valid-pair.json", "AAARRRAAAAAAR"),
    ("unclosed-arrays-32000.json", "RRRRRRRRRRRRR"),
    ("built: arrays-100000", "RRRRRRRRRRAAR"),
    ("built: objects-100000", "RRRRRRRRRRAAR"),
    ("built: arrays-524276 (a 1 MiB body)", "RRRRRRRRRRAAR"),
];

/// The values built here rather than stored: 100,000 levels of each kind, and the deepest
/// each size limit allows (the control plane's 1 MiB body; a 64 KiB frame is the stored
/// `arrays-32000.json`).
fn built_values() -> Vec<(String, Vec<u8>)> {
    let arrays = |depth: usize| ("[".repeat(depth) + &"]".repeat(depth)).into_bytes();
    let objects = |depth: usize| (r#"{"a":"#.repeat(depth) + "1" + &"}".repeat(depth)).into_bytes();
    let body_max = defaults::publish_body_bytes_max();
    // `{"channel":"c","data":` and `}` around 2 bytes a level.
    let body_depth = (body_max - 23) / 2;
    vec![
        ("built: arrays-100000".into(), arrays(100_000)),
        ("built: objects-100000".into(), objects(100_000)),
        (
            format!("built: arrays-{body_depth} (a 1 MiB body)"),
            arrays(body_depth),
        ),
    ]
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile-json");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", folder.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    let mut values: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|path| {
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(path).expect("a corpus file"))
        })
        .collect();
    values.extend(built_values());
    values
}

#[test]
fn every_hostile_value_gets_its_exact_outcome_in_every_parser() {
    let values = corpus();
    assert!(values.len() >= 40, "the corpus has {} values", values.len());
    let got = on_small_stack(replay_stack_bytes(), || {
        let verifier = verifier();
        let mut got = Vec::new();
        for (name, value) in &values {
            let mut letters = String::new();
            for (path, (path_name, prefix)) in PATHS.iter().enumerate() {
                let doc = document(path, value);
                let outcome = run(path, &doc, &verifier);
                let refusal = expected_refusal(&doc);
                match (&outcome, &refusal) {
                    (Outcome::Refused(got), Some(message)) if CHECKED_PATHS.contains(&path) => {
                        assert_eq!(got, &format!("{prefix}{message}"), "{name} as {path_name}")
                    }
                    (Outcome::Refused(got), None) => {
                        assert!(
                            !got.contains("json_depth_max"),
                            "{name} as {path_name}: {got}"
                        );
                        let answered = CHECKED_PATHS.contains(&path) && path != 9;
                        assert!(
                            !(answered && got.contains('\n')),
                            "{name} as {path_name}: a client's error is one line: {got}"
                        );
                    }
                    (Outcome::Accepted(data), _) => {
                        assert!(
                            refusal.is_none() || !CHECKED_PATHS.contains(&path),
                            "{name} as {path_name}: accepted past the checks"
                        );
                        if DATA_PATHS.contains(&path) {
                            let data = data.as_deref().map(str::as_bytes);
                            assert_eq!(data, Some(&value[..]), "{name} as {path_name}: data");
                        }
                    }
                    _ => {}
                }
                letters.push(match &outcome {
                    Outcome::Accepted(_) => 'A',
                    Outcome::Refused(_) => 'R',
                    Outcome::Unreachable => '-',
                });
            }
            got.push((name.clone(), letters));
        }
        got
    });
    let expected: Vec<(String, String)> = OUTCOMES
        .iter()
        .map(|(name, letters)| (name.to_string(), letters.to_string()))
        .collect();
    for ((name, letters), (expected_name, expected_letters)) in got.iter().zip(&expected) {
        assert_eq!(
            name, expected_name,
            "the corpus and OUTCOMES list the same values"
        );
        assert_eq!(letters, expected_letters, "{name}: outcomes per path");
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "the corpus and OUTCOMES list the same values"
    );
}

/// A file under `target/tmp` holding `text`, for the parsers that read files.
fn temp_file(name: &str, text: &[u8]) -> PathBuf {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp/hostile-json");
    std::fs::create_dir_all(&folder).expect("a scratch folder");
    let path = folder.join(name);
    std::fs::write(&path, text).expect("a scratch file");
    path
}

#[test]
fn the_toml_config_bounds_its_own_recursion_at_depth_100000() {
    let arrays = format!("a = {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let tables = format!("a = {}1{}", "{b = ".repeat(100_000), "}".repeat(100_000));
    // toml stops at 80 levels (`a = ` and 80 brackets end at column 84; `{b = ` is 5 bytes).
    for (name, text, column) in [("arrays.toml", arrays, 85), ("tables.toml", tables, 405)] {
        let path = temp_file(name, text.as_bytes());
        // The main thread reads the config, on RLIMIT_STACK's stack (8 MiB by default); an
        // unoptimized toml spends about 6 KiB a level, so 1 MiB holds its 80.
        let err = on_small_stack(1 << 20, || Config::read_table(&path))
            .unwrap_err()
            .0;
        let says = format!(
            "config {} is not TOML: TOML parse error at line 1, column {column}",
            path.display()
        );
        assert!(err.starts_with(&says), "{name}: {err}");
        assert!(
            err.ends_with("cannot recurse further; max recursion depth met\n"),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn jwts_and_the_jwks_file_bound_their_own_recursion_at_depth_100000() {
    let arrays = "[".repeat(100_000) + &"]".repeat(100_000);
    let objects = r#"{"a":"#.repeat(100_000) + "1" + &"}".repeat(100_000);
    on_small_stack(replay_stack_bytes(), || {
        let verifier = verifier();
        let header = br#"{"alg":"HS256","typ":"JWT"}"#;
        // A claim corecast does not read is skipped by serde_json without recursing.
        let claims = format!(r#"{{"sub":"ada","exp":4102444800,"x":{objects}}}"#);
        let grant = verifier.verify(Some(&token(header, claims.as_bytes())));
        assert_eq!(grant.map(|grant| grant.sub), Ok("ada".to_owned()));
        // One it reads as a list of strings stops at the first bracket too many.
        let claims = format!(r#"{{"sub":"ada","exp":4102444800,"channels":{arrays}}}"#);
        let err = verifier
            .verify(Some(&token(header, claims.as_bytes())))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid token: JSON error: invalid type: sequence, expected a string at line 1 \
             column 42"
        );
        // The header's `jwk` is read whole (`#[serde(flatten)]`): serde_json's limit of 128.
        let header = format!(r#"{{"alg":"HS256","typ":"JWT","jwk":{objects}}}"#);
        let err = verifier
            .verify(Some(&token(header.as_bytes(), CLAIMS)))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid token: JSON error: recursion limit exceeded at line 1 column 664"
        );
    });
    // The JWKS file is read on the main thread at start-up, and stops start-up.
    let path = temp_file("jwks.json", format!(r#"{{"keys":[{objects}]}}"#).as_bytes());
    let config = Config {
        auth: AuthMode::Jwt,
        jwks_file: Some(path.clone()),
        ..Config::default()
    };
    let err = on_small_stack(replay_stack_bytes(), || {
        Verifier::from_config(&config).err()
    });
    assert_eq!(
        err,
        Some(format!(
            "auth = \"jwt\": {} is not a JWKS: recursion limit exceeded at line 1 column 635",
            path.display()
        ))
    );
}
