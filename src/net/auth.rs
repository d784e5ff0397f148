//! Connection auth: the JWT a client presents at the upgrade (`?token=` or `Authorization:
//! Bearer`), verified with `jsonwebtoken`, and the [`Grant`] it carries for the connection's
//! life: who it is, until when, which patterns it may subscribe to and publish to.
//!
//! Keys come from the config: an HS256 shared secret, a PEM public key (RS256 or ES256), or a
//! JWKS file, read once at start-up, so a bad key stops the server before it listens. This
//! module decides nothing about sockets: the handshake answers 401 with the [`AuthError`]'s
//! text, and the shard checks each subscribe and publish against the grant.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::channel;
use crate::config::{AuthMode, Config};

/// Why a token was refused. Every variant is the client's to fix: get a new token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token in `?token=` or `Authorization: Bearer`.
    Missing,
    /// Past its `exp`.
    Expired,
    /// Before its `nbf` (not valid yet), or issued (`iat`) after now: a token from the future,
    /// or from an issuer whose clock runs ahead of this server's.
    NotYetValid,
    /// Any other verification failure (signature, algorithm, shape, missing claim).
    Invalid(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => f.write_str(
                "authentication required: send a JWT as ?token= or Authorization: Bearer",
            ),
            AuthError::Expired => f.write_str("the token has expired"),
            AuthError::NotYetValid => f.write_str(
                "the token is not valid yet: its nbf or iat is after this server's clock",
            ),
            AuthError::Invalid(why) => write!(f, "invalid token: {why}"),
        }
    }
}

/// The claims corecast reads; others are ignored.
#[derive(Debug, Clone, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    tenant: Option<String>,
    exp: u64,
    /// Checked here: `jsonwebtoken` checks `exp` and `nbf`, not `iat`.
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    /// Channels or patterns subscribed at connect without a grant (PROTOCOL.md, "Users").
    #[serde(default)]
    subs: Vec<String>,
    /// What presence shows of the connection: a JSON object.
    #[serde(default)]
    info: Option<serde_json::Value>,
}

/// Seconds of clock difference allowed when checking `exp`, `nbf` and `iat`: none. An issuer
/// whose clock runs ahead gets its fresh tokens refused as not valid yet, which a leeway would
/// hide; one that runs behind gets them accepted past their real expiry, which is worse.
const LEEWAY_S: u64 = 0;

/// What a verified token allows its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub sub: String,
    pub tenant: Option<String>,
    /// Seconds since the UNIX epoch after which the connection is closed with 4001.
    pub exp: u64,
    /// Patterns it may subscribe to (a subscription must lie within one of them).
    pub channels: Vec<String>,
    /// Patterns it may publish to.
    pub publish: Vec<String>,
    /// Patterns the server subscribes it to at connect (the claim `subs`), validated.
    pub subs: Vec<String>,
    /// The claim `info` as compact JSON (an object of at most `presence_info_bytes_max`).
    pub info: Option<Box<str>>,
}

impl Grant {
    /// Whether every channel `pattern` matches lies within a granted pattern. A tenant's
    /// connection never gets the server's `$sys` channels, which speak of every tenant.
    pub fn may_subscribe(&self, pattern: &str) -> bool {
        if self.tenant.is_some() && channel::is_system(pattern) {
            return false;
        }
        self.channels
            .iter()
            .any(|granted| channel::pattern_covers(granted, pattern))
    }

    /// Whether `name` (a concrete channel) is granted for publishing.
    pub fn may_publish(&self, name: &str) -> bool {
        self.publish
            .iter()
            .any(|granted| channel::pattern_matches(granted, name))
    }
}

/// One way to check a signature.
struct Key {
    key: DecodingKey,
    algorithm: Algorithm,
    /// The JWKS `kid`, when the key came from a JWKS file.
    kid: Option<String>,
}

/// Verifies tokens with the configured keys.
pub struct Verifier {
    keys: Vec<Key>,
    /// Largest claim `info`, in bytes (`presence_info_bytes_max`).
    info_bytes_max: usize,
    /// Longest pattern of the claim `subs` (`channel_bytes_max`).
    channel_bytes_max: usize,
}

/// A key file or secret the server cannot use: start-up stops with this message.
fn key_error(what: &str, err: impl std::fmt::Display) -> String {
    format!("auth = \"jwt\": {what}: {err}")
}

impl Verifier {
    /// The verifier the config asks for: `None` with `auth = "none"`.
    pub fn from_config(config: &Config) -> Result<Option<Verifier>, String> {
        if config.auth == AuthMode::None {
            return Ok(None);
        }
        let mut keys = Vec::new();
        if let Some(secret) = &config.jwt_secret {
            keys.push(Key {
                key: DecodingKey::from_secret(secret.as_bytes()),
                algorithm: Algorithm::HS256,
                kid: None,
            });
        }
        if let Some(path) = &config.jwt_public_key_file {
            keys.push(public_key(path)?);
        }
        if let Some(path) = &config.jwks_file {
            keys.extend(jwks(path)?);
        }
        if keys.is_empty() {
            return Err(
                "auth = \"jwt\" needs a key: jwt_secret (HS256), jwt_public_key_file (RS256 or \
                 ES256 PEM) or jwks_file"
                    .into(),
            );
        }
        Ok(Some(Verifier {
            keys,
            info_bytes_max: config.presence_info_bytes_max,
            channel_bytes_max: config.channel_bytes_max,
        }))
    }

    /// Verifies `token` (signature, `exp`, `nbf`, `iat`, claims) and returns its grant.
    pub fn verify(&self, token: Option<&str>) -> Result<Grant, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|err| AuthError::Invalid(err.to_string()))?;
        let mut last = AuthError::Invalid(match &header.kid {
            Some(kid) if self.keys.iter().any(|key| key.kid.is_some()) => {
                format!("no configured {:?} key has kid {kid:?}", header.alg)
            }
            _ => format!("no configured key takes {:?}", header.alg),
        });
        for key in &self.keys {
            if key.algorithm != header.alg {
                continue;
            }
            if let (Some(kid), Some(wanted)) = (&key.kid, &header.kid) {
                if kid != wanted {
                    continue;
                }
            }
            let mut validation = Validation::new(key.algorithm);
            validation.leeway = LEEWAY_S;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "sub"]);
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if claims
                        .iat
                        .is_some_and(|iat| iat > jsonwebtoken::get_current_timestamp() + LEEWAY_S)
                    {
                        return Err(AuthError::NotYetValid);
                    }
                    return self.grant(claims);
                }
                Err(err) => {
                    last = match err.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                        jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                            AuthError::NotYetValid
                        }
                        _ => AuthError::Invalid(err.to_string()),
                    };
                }
            }
        }
        Err(last)
    }
}

impl Verifier {
    /// The grant of verified `claims`, once each claim corecast reads is within its rules.
    fn grant(&self, claims: Claims) -> Result<Grant, AuthError> {
        let invalid =
            |claim: &str, why: String| AuthError::Invalid(format!("claim `{claim}`: {why}"));
        channel::validate_user(&claims.sub).map_err(|why| invalid("sub", why))?;
        if let Some(tenant) = &claims.tenant {
            channel::validate_tenant(tenant).map_err(|why| invalid("tenant", why))?;
        }
        for pattern in &claims.subs {
            channel::check_length(pattern, self.channel_bytes_max)
                .and_then(|()| channel::validate_pattern(pattern))
                .map_err(|err| invalid("subs", format!("{pattern:?}: {err}")))?;
            if channel::is_user_stream(pattern) {
                return Err(invalid(
                    "subs",
                    format!("{pattern:?}: every connection with a user has $user already"),
                ));
            }
        }
        let info = match claims.info {
            None => None,
            Some(serde_json::Value::Object(info)) => {
                let text = serde_json::to_string(&info).expect("a JSON object serializes");
                if text.len() > self.info_bytes_max {
                    return Err(invalid(
                        "info",
                        format!(
                            "{} bytes; presence_info_bytes_max is {}",
                            text.len(),
                            self.info_bytes_max
                        ),
                    ));
                }
                Some(text.into_boxed_str())
            }
            Some(_) => return Err(invalid("info", "must be a JSON object".into())),
        };
        Ok(Grant {
            sub: claims.sub,
            tenant: claims.tenant,
            exp: claims.exp,
            channels: claims.channels,
            publish: claims.publish,
            subs: claims.subs,
            info,
        })
    }
}

/// A PEM public key: RSA (RS256) or EC (ES256).
fn public_key(path: &Path) -> Result<Key, String> {
    let pem = std::fs::read(path)
        .map_err(|err| key_error(&format!("cannot read {}", path.display()), err))?;
    // `jsonwebtoken` takes an RSA private key where it asks for a public one, and then refuses
    // every token at run time; and a private key does not belong on this server at all.
    if pem.windows(16).any(|label| label == b"PRIVATE KEY-----") {
        return Err(key_error(
            &format!("{} holds a private key", path.display()),
            "give its public key (openssl pkey -in KEY -pubout)",
        ));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Key {
            key,
            algorithm: Algorithm::RS256,
            kid: None,
        });
    }
    DecodingKey::from_ec_pem(&pem)
        .map(|key| Key {
            key,
            algorithm: Algorithm::ES256,
            kid: None,
        })
        .map_err(|err| {
            key_error(
                &format!(
                    "{} is neither an RSA nor an EC public key in PEM",
                    path.display()
                ),
                err,
            )
        })
}

/// Every RS256 or ES256 key of a JWKS file.
fn jwks(path: &Path) -> Result<Vec<Key>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| key_error(&format!("cannot read {}", path.display()), err))?;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
        .map_err(|err| key_error(&format!("{} is not a JWKS", path.display()), err))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|err| key_error(&format!("a key of {}", path.display()), err))?;
        keys.push(Key {
            key,
            algorithm,
            kid: jwk.common.key_id.clone(),
        });
    }
    if keys.is_empty() {
        return Err(key_error(
            &format!("{} holds no RS256 or ES256 key", path.display()),
            "empty",
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn verifier() -> Verifier {
        let config = Config {
            auth: AuthMode::Jwt,
            jwt_secret: Some("s3cret".into()),
            ..Config::default()
        };
        Verifier::from_config(&config).unwrap().unwrap()
    }

    fn token(secret: &str, exp: u64) -> String {
        let claims = serde_json::json!({
            "sub": "ada", "tenant": "acme", "exp": exp,
            "channels": ["leads.*"], "publish": ["chat.>"],
        });
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now_s() -> u64 {
        crate::clock::unix_ms() / 1000
    }

    #[test]
    fn a_valid_token_grants_its_claims() {
        let grant = verifier()
            .verify(Some(&token("s3cret", now_s() + 60)))
            .unwrap();
        assert_eq!(grant.sub, "ada");
        assert_eq!(grant.tenant.as_deref(), Some("acme"));
        assert!(grant.may_subscribe("leads.*") && grant.may_subscribe("leads.42"));
        assert!(!grant.may_subscribe("leads.>") && !grant.may_subscribe("other"));
        assert!(grant.may_publish("chat.r1") && !grant.may_publish("leads.1"));
    }

    #[test]
    fn bad_tokens_say_why() {
        let verifier = verifier();
        assert_eq!(verifier.verify(None), Err(AuthError::Missing));
        assert_eq!(
            verifier.verify(Some(&token("s3cret", now_s() - 1))),
            Err(AuthError::Expired)
        );
        assert!(matches!(
            verifier.verify(Some(&token("wrong", now_s() + 60))),
            Err(AuthError::Invalid(why)) if why.contains("InvalidSignature")
        ));
        assert!(matches!(
            verifier.verify(Some("x.y.z")),
            Err(AuthError::Invalid(_))
        ));
    }

    fn token_with(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap()
    }

    #[test]
    fn sub_info_and_subs_are_checked_and_carried() {
        let verifier = verifier();
        let exp = now_s() + 60;
        let grant = verifier
            .verify(Some(&token_with(serde_json::json!({
                "sub": "ada@example.com", "exp": exp,
                "info": {"name": "Ada"}, "subs": ["alerts.ada", "team.>"],
            }))))
            .unwrap();
        assert_eq!(grant.info.as_deref(), Some(r#"{"name":"Ada"}"#));
        assert_eq!(grant.subs, ["alerts.ada", "team.>"]);
        let big = "x".repeat(Config::default().presence_info_bytes_max);
        for (claims, says) in [
            (serde_json::json!({"sub": "", "exp": exp}), "claim `sub`"),
            (
                serde_json::json!({"sub": "x".repeat(channel::USER_BYTES_MAX + 1), "exp": exp}),
                "claim `sub`",
            ),
            (
                serde_json::json!({"sub": "ada", "exp": exp, "info": "Ada"}),
                "claim `info`: must be a JSON object",
            ),
            (
                serde_json::json!({"sub": "ada", "exp": exp, "info": {"name": big}}),
                "presence_info_bytes_max",
            ),
            (
                serde_json::json!({"sub": "ada", "exp": exp, "subs": ["a..b"]}),
                "claim `subs`",
            ),
            (
                serde_json::json!({"sub": "ada", "exp": exp, "subs": ["$user"]}),
                "has $user already",
            ),
        ] {
            let why = refused_because(&verifier, &token_with(claims));
            assert!(why.contains(says), "{why} lacks {says}");
        }
    }

    #[test]
    fn a_token_from_the_future_is_refused_by_its_nbf_or_iat() {
        let verifier = verifier();
        let now = now_s();
        for (claim, at, accepted) in [
            ("nbf", now + 3600, false),
            ("nbf", now + 2, false),
            ("nbf", now.saturating_sub(1), true),
            ("iat", now + 3600, false),
            ("iat", now + 2, false),
            ("iat", now.saturating_sub(1), true),
        ] {
            let mut claims = serde_json::json!({"sub": "ada", "exp": now + 7200});
            claims[claim] = at.into();
            let got = verifier.verify(Some(&token_with(claims)));
            if accepted {
                assert_eq!(got.map(|grant| grant.sub).as_deref(), Ok("ada"), "{claim}");
            } else {
                assert_eq!(
                    got,
                    Err(AuthError::NotYetValid),
                    "{claim} = now + {}",
                    at - now
                );
            }
        }
        assert!(AuthError::NotYetValid.to_string().contains("not valid yet"));
        let text_iat = serde_json::json!({"sub": "ada", "exp": now + 60, "iat": "yesterday"});
        assert!(matches!(
            verifier.verify(Some(&token_with(text_iat))),
            Err(AuthError::Invalid(_))
        ));
    }

    /// A fixture of `tests/keys/` (test-only keys; see its README).
    fn key_file(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name)
    }

    fn private_key(name: &str, algorithm: Algorithm) -> EncodingKey {
        let pem = std::fs::read(key_file(&format!("{name}.pem"))).unwrap();
        match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            other => panic!("no fixture signs {other:?}"),
        }
    }

    /// A token for `ada`, valid for a minute, signed with the fixture `key` (`<name>.pem`).
    fn signed(algorithm: Algorithm, kid: Option<&str>, key: &str) -> String {
        let claims = serde_json::json!({"sub": "ada", "exp": now_s() + 60, "channels": ["a.*"]});
        let header = Header {
            kid: kid.map(str::to_owned),
            ..Header::new(algorithm)
        };
        encode(&header, &claims, &private_key(key, algorithm)).unwrap()
    }

    fn verifier_with(public_key: Option<&str>, jwks: Option<&str>) -> Result<Verifier, String> {
        let config = Config {
            auth: AuthMode::Jwt,
            jwt_public_key_file: public_key.map(key_file),
            jwks_file: jwks.map(key_file),
            ..Config::default()
        };
        Verifier::from_config(&config).map(|verifier| verifier.expect("auth = jwt"))
    }

    fn refused_because(verifier: &Verifier, token: &str) -> String {
        match verifier.verify(Some(token)) {
            Err(AuthError::Invalid(why)) => why,
            other => panic!("expected the token to be refused as invalid, got {other:?}"),
        }
    }

    #[test]
    fn an_rs256_token_is_verified_by_an_rsa_pem_public_key() {
        let verifier = verifier_with(Some("rsa-a.pub.pem"), None).unwrap();
        let grant = verifier
            .verify(Some(&signed(Algorithm::RS256, None, "rsa-a")))
            .unwrap();
        assert_eq!(
            (grant.sub.as_str(), grant.channels),
            ("ada", vec!["a.*".into()])
        );
        let forged = signed(Algorithm::RS256, None, "rsa-b");
        assert_eq!(refused_because(&verifier, &forged), "InvalidSignature");
    }

    #[test]
    fn an_es256_token_is_verified_by_an_ec_p256_pem_public_key() {
        let verifier = verifier_with(Some("ec-a.pub.pem"), None).unwrap();
        let grant = verifier
            .verify(Some(&signed(Algorithm::ES256, None, "ec-a")))
            .unwrap();
        assert_eq!(grant.sub, "ada");
        let rsa = signed(Algorithm::RS256, None, "rsa-a");
        assert_eq!(
            refused_because(&verifier, &rsa),
            "no configured key takes RS256"
        );
    }

    #[test]
    fn a_jwks_key_is_chosen_by_the_tokens_kid() {
        let verifier = verifier_with(None, Some("jwks.json")).unwrap();
        for (algorithm, kid) in [
            (Algorithm::RS256, "rsa-a"),
            (Algorithm::RS256, "rsa-b"),
            (Algorithm::ES256, "ec-a"),
        ] {
            let token = signed(algorithm, Some(kid), kid);
            assert_eq!(verifier.verify(Some(&token)).unwrap().sub, "ada", "{kid}");
        }
        // The kid decides: rsa-b's key does not take a token of rsa-a's that claims to be rsa-b's.
        let misnamed = signed(Algorithm::RS256, Some("rsa-b"), "rsa-a");
        assert_eq!(refused_because(&verifier, &misnamed), "InvalidSignature");
        let unknown = signed(Algorithm::RS256, Some("rsa-z"), "rsa-a");
        assert_eq!(
            refused_because(&verifier, &unknown),
            "no configured RS256 key has kid \"rsa-z\""
        );
        // Without a kid, each key of the token's algorithm is tried.
        let kidless = signed(Algorithm::RS256, None, "rsa-b");
        assert_eq!(verifier.verify(Some(&kidless)).unwrap().sub, "ada");
    }

    #[test]
    fn a_token_signed_by_a_key_not_configured_is_refused() {
        let verifier = verifier_with(None, Some("jwks.json")).unwrap();
        let stranger = signed(Algorithm::RS256, Some("rsa-a"), "rsa-c");
        assert_eq!(refused_because(&verifier, &stranger), "InvalidSignature");
        let kidless = signed(Algorithm::RS256, None, "rsa-c");
        assert_eq!(refused_because(&verifier, &kidless), "InvalidSignature");
    }

    #[test]
    fn an_hs256_token_is_refused_when_only_public_keys_are_configured() {
        // Algorithm confusion: an HMAC "signature" keyed with the public key's own bytes, which
        // anyone can read, must not pass for a signature by its private key.
        for (public_key, jwks) in [(Some("rsa-a.pub.pem"), None), (None, Some("jwks.json"))] {
            let verifier = verifier_with(public_key, jwks).unwrap();
            let public = std::fs::read(key_file(public_key.unwrap_or("jwks.json"))).unwrap();
            let claims = serde_json::json!({"sub": "ada", "exp": now_s() + 60});
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("rsa-a".into());
            let confused = encode(&header, &claims, &EncodingKey::from_secret(&public)).unwrap();
            let why = refused_because(&verifier, &confused);
            assert!(why.starts_with("no configured"), "{why}");
        }
    }

    #[test]
    fn a_bad_key_file_stops_start_up_naming_the_file() {
        for (public_key, jwks, says) in [
            (Some("missing.pem"), None, "cannot read"),
            (
                Some("README.md"),
                None,
                "is neither an RSA nor an EC public key in PEM",
            ),
            (Some("rsa-a.pem"), None, "holds a private key"),
            (Some("ec-a.pem"), None, "holds a private key"),
            (None, Some("missing.json"), "cannot read"),
            (None, Some("rsa-a.pub.pem"), "is not a JWKS"),
        ] {
            let name = public_key.or(jwks).unwrap();
            let err = verifier_with(public_key, jwks).err().unwrap();
            let path = key_file(name).display().to_string();
            assert!(
                err.contains(&path) && err.contains(says),
                "{name}: expected {says:?} and the path in {err:?}"
            );
        }
    }

    #[test]
    fn a_tenant_claim_must_be_one_token_and_keeps_its_clients_off_sys() {
        let sign = |tenant: &str| {
            let claims = serde_json::json!({
                "sub": "ada", "tenant": tenant, "exp": now_s() + 60, "channels": [">", "$sys.>"],
            });
            encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        let grant = verifier().verify(Some(&sign("acme"))).unwrap();
        assert!(grant.may_subscribe("leads.>"));
        assert!(!grant.may_subscribe("$sys.stats"), "tenants never see $sys");
        assert!(matches!(
            verifier().verify(Some(&sign("ac.me"))),
            Err(AuthError::Invalid(why)) if why.starts_with("claim `tenant`")
        ));
    }

    #[test]
    fn jwt_without_a_key_is_refused_at_start_up() {
        let config = Config {
            auth: AuthMode::Jwt,
            ..Config::default()
        };
        let err = Verifier::from_config(&config).err().unwrap();
        assert!(err.contains("needs a key"), "{err}");
    }
}
