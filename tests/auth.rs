//! JWT connection auth against the real binary (`--auth jwt --jwt-secret`): a missing, forged
//! or expired token, or one not valid yet (`nbf` or `iat` an hour ahead), gets 401 with a JSON reason at the upgrade, from `?token=` or
//! `Authorization: Bearer` alike; the token's `channels` and `publish` claims bound what the
//! connection may subscribe and publish (`forbidden` otherwise, 403 for connect-time channels);
//! `refresh` extends a live connection, and one left to expire is closed with 4001. A
//! well-behaved client keeps receiving everything meanwhile. With public keys (the test-only
//! fixtures of `tests/keys/`): RS256 and ES256 tokens verify against a PEM key or a JWKS file
//! whose key the token's `kid` picks; an unknown `kid`, another key's signature or an HS256
//! token keyed with the public key get 401; a bad key file stops start-up, naming the file.

mod common;

use std::time::Duration;

use common::{assert_error, assert_message, refused_upgrade, watchdog, Bystander, Client, Server};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "test-secret";

fn now_s() -> u64 {
    common::now_ms() / 1000
}

/// A token signed with `secret` for `sub`, valid for `ttl_s` seconds (negative: expired).
fn token(secret: &str, ttl_s: i64, channels: &[&str], publish: &[&str]) -> String {
    let claims = json!({
        "sub": "ada", "exp": now_s() as i64 + ttl_s,
        "channels": channels, "publish": publish,
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token encodes")
}

async fn server() -> Server {
    Server::start(&["--auth", "jwt", "--jwt-secret", SECRET]).await
}

#[tokio::test]
async fn missing_forged_and_expired_tokens_get_401_with_a_reason() {
    watchdog(async {
        let server = server().await;
        let mut bystander = {
            let good = token(SECRET, 60, &["by.*"], &[]);
            let mut client = Client::connect_path(&server, &format!("/ws?token={good}")).await;
            client.subscribe("by.1", 1).await;
            Bystander::from_client(client, "by.1")
        };
        let forged = token("another-secret", 60, &[">"], &[]);
        let expired = token(SECRET, -5, &[">"], &[]);
        let from_the_future = |claim: &str| {
            let mut claims = json!({"sub": "ada", "exp": now_s() + 7200, "channels": [">"]});
            claims[claim] = json!(now_s() + 3600);
            encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .expect("a token encodes")
        };
        let (not_before, issued) = (from_the_future("nbf"), from_the_future("iat"));
        for (path, header, says) in [
            ("/ws".to_string(), "", "authentication required"),
            (format!("/ws?token={forged}"), "", "InvalidSignature"),
            (format!("/ws?token={expired}"), "", "expired"),
            (format!("/ws?token={not_before}"), "", "not valid yet"),
            (format!("/ws?token={issued}"), "", "not valid yet"),
            (
                "/ws".to_string(),
                "Authorization: Bearer not.a.jwt\r\n",
                "invalid token",
            ),
        ] {
            let (status, body) = refused_upgrade(&server, &path, header).await;
            assert_eq!(status, 401, "{path} {header}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{path}: {message}");
            bystander.assert_unaffected(&server).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_bearer_token_works_like_the_query_and_its_claims_bound_the_connection() {
    watchdog(async {
        let server = server().await;
        let good = token(SECRET, 60, &["leads.*"], &["chat.>"]);
        let mut request = server.ws_url("/ws").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {good}").parse().unwrap());
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("a bearer token upgrades");
        assert_eq!(response.status().as_u16(), 101);
        drop(ws);

        let mut client = Client::connect_path(&server, &format!("/ws?token={good}")).await;
        client.subscribe("leads.42", 1).await;
        let outside = client
            .request(json!({"type": "subscribe", "channel": "leads.>", "id": 2}))
            .await;
        assert_error(&outside, json!(2), "forbidden");
        let published = client
            .request(json!({"type": "publish", "channel": "chat.r1", "data": 1, "id": 3}))
            .await;
        assert_eq!(published["type"], "published", "{published}");
        let refused = client
            .request(json!({"type": "publish", "channel": "leads.42", "data": 1, "id": 4}))
            .await;
        assert_error(&refused, json!(4), "forbidden");
        let offset = server.publish("leads.42", &json!("in")).await;
        assert_message(&client.recv().await, "leads.42", offset, &json!("in"));

        let (status, body) =
            refused_upgrade(&server, &format!("/ws?token={good}&channels=other"), "").await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (403, json!("forbidden")),
            "{body}"
        );
    })
    .await
}

#[tokio::test]
async fn refresh_extends_a_connection_and_expiry_closes_one_with_4001() {
    watchdog(async {
        let server = server().await;
        let short = token(SECRET, 2, &["t.*"], &[]);
        let mut refreshed = Client::connect_path(&server, &format!("/ws?token={short}")).await;
        let mut expiring = Client::connect_path(&server, &format!("/ws?token={short}")).await;
        let longer = token(SECRET, 60, &["t.*"], &[]);
        let reply = refreshed
            .request(json!({"type": "refresh", "token": longer, "id": 1}))
            .await;
        assert_eq!(reply["type"], "refreshed", "{reply}");
        assert!(reply["exp"].as_u64().unwrap() > now_s() + 30, "{reply}");
        let bad = refreshed
            .request(json!({"type": "refresh", "token": token("nope", 60, &[], &[]), "id": 2}))
            .await;
        assert_error(&bad, json!(2), "forbidden");

        let (code, reason) = expiring.expect_close(Duration::from_secs(6)).await;
        assert_eq!(code, 4001, "{reason}");
        refreshed.subscribe("t.1", 3).await;
        let offset = server.publish("t.1", &json!("still here")).await;
        assert_message(&refreshed.recv().await, "t.1", offset, &json!("still here"));
    })
    .await
}

/// A fixture of `tests/keys/` (test-only keys; see its README).
fn key_file(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A token for `ada` (subscribe `k.*`), valid for a minute, with `kid`, signed by the fixture
/// private key `<key>.pem`.
fn signed(algorithm: Algorithm, kid: Option<&str>, key: &str) -> String {
    let pem = std::fs::read(key_file(&format!("{key}.pem"))).expect("a fixture key");
    let key = match algorithm {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("a fixture private key");
    let header = Header {
        kid: kid.map(str::to_owned),
        ..Header::new(algorithm)
    };
    let claims = json!({"sub": "ada", "exp": now_s() + 60, "channels": ["k.*"]});
    encode(&header, &claims, &key).expect("a token encodes")
}

/// Connects with `token`, subscribes within its grant and receives a publish.
async fn assert_admitted(server: &Server, token: &str, what: &str) {
    let mut client = Client::connect_path(server, &format!("/ws?token={token}")).await;
    client.subscribe("k.1", 1).await;
    let offset = server.publish("k.1", &json!(what)).await;
    assert_message(&client.recv().await, "k.1", offset, &json!(what));
}

/// Asserts `token` gets 401 `unauthorized` at the upgrade with exactly `message`.
async fn assert_refused(server: &Server, token: &str, message: &str) {
    let (status, body) = refused_upgrade(server, &format!("/ws?token={token}"), "").await;
    assert_eq!(
        body,
        json!({"error": {"code": "unauthorized", "message": message}}),
        "status {status}"
    );
    assert_eq!(status, 401, "{body}");
}

/// An HS256 token keyed with the bytes of a public key file, which anyone may read: the
/// algorithm-confusion forgery.
fn confused(public_file: &str, kid: Option<&str>) -> String {
    let public = std::fs::read(key_file(public_file)).expect("a fixture file");
    let header = Header {
        kid: kid.map(str::to_owned),
        ..Header::new(Algorithm::HS256)
    };
    let claims = json!({"sub": "ada", "exp": now_s() + 60, "channels": [">"]});
    encode(&header, &claims, &EncodingKey::from_secret(&public)).expect("a token encodes")
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_pem_public_keys() {
    watchdog(async {
        let rsa = key_file("rsa-a.pub.pem");
        let server = Server::start(&["--auth", "jwt", "--jwt-public-key-file", &rsa]).await;
        assert_admitted(&server, &signed(Algorithm::RS256, None, "rsa-a"), "rs256").await;
        let other = signed(Algorithm::RS256, None, "rsa-b");
        assert_refused(&server, &other, "invalid token: InvalidSignature").await;
        let forged = confused("rsa-a.pub.pem", None);
        assert_refused(
            &server,
            &forged,
            "invalid token: no configured key takes HS256",
        )
        .await;

        let ec = key_file("ec-a.pub.pem");
        let server = Server::start(&["--auth", "jwt", "--jwt-public-key-file", &ec]).await;
        assert_admitted(&server, &signed(Algorithm::ES256, None, "ec-a"), "es256").await;
        let rsa_token = signed(Algorithm::RS256, None, "rsa-a");
        assert_refused(
            &server,
            &rsa_token,
            "invalid token: no configured key takes RS256",
        )
        .await;
        let forged = confused("ec-a.pub.pem", None);
        assert_refused(
            &server,
            &forged,
            "invalid token: no configured key takes HS256",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn a_jwks_key_is_picked_by_kid_and_strangers_are_refused() {
    watchdog(async {
        let jwks = key_file("jwks.json");
        let server = Server::start(&["--auth", "jwt", "--jwks-file", &jwks]).await;
        for (algorithm, kid) in [
            (Algorithm::RS256, "rsa-a"),
            (Algorithm::RS256, "rsa-b"),
            (Algorithm::ES256, "ec-a"),
        ] {
            assert_admitted(&server, &signed(algorithm, Some(kid), kid), kid).await;
        }
        for (token, message) in [
            (
                signed(Algorithm::RS256, Some("rsa-z"), "rsa-a"),
                "invalid token: no configured RS256 key has kid \"rsa-z\"",
            ),
            (
                signed(Algorithm::RS256, Some("rsa-b"), "rsa-a"),
                "invalid token: InvalidSignature",
            ),
            (
                signed(Algorithm::RS256, Some("rsa-a"), "rsa-c"),
                "invalid token: InvalidSignature",
            ),
            (
                confused("jwks.json", Some("rsa-a")),
                "invalid token: no configured HS256 key has kid \"rsa-a\"",
            ),
        ] {
            assert_refused(&server, &token, message).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_bad_key_file_stops_start_up_with_a_message_naming_it() {
    watchdog(async {
        for (flag, name, says) in [
            (
                "--jwt-public-key-file",
                "README.md",
                "is neither an RSA nor an EC public key in PEM",
            ),
            ("--jwt-public-key-file", "rsa-a.pem", "holds a private key"),
            ("--jwt-public-key-file", "absent.pem", "cannot read"),
            ("--jwks-file", "rsa-a.pub.pem", "is not a JWKS"),
        ] {
            let path = key_file(name);
            let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
                .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
                .args(["--shards", "1", "--auth", "jwt", flag, &path])
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(Duration::from_secs(10), run)
                .await
                .expect("a refused start exits promptly")
                .expect("corecast runs");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
            assert!(
                stderr.contains("corecast: auth = \"jwt\": ")
                    && stderr.contains(&path)
                    && stderr.contains(says),
                "{name}: expected the path and {says:?} in {stderr}"
            );
            assert!(
                !String::from_utf8_lossy(&output.stdout).contains("listening"),
                "{name}: expected no `listening` line"
            );
        }
    })
    .await
}
