//! JWT connection auth against the real binary (`--auth jwt --jwt-secret`): a missing, forged
//! or expired token gets 401 with a JSON reason at the upgrade, from `?token=` or
//! `Authorization: Bearer` alike; the token's `channels` and `publish` claims bound what the
//! connection may subscribe and publish (`forbidden` otherwise, 403 for connect-time channels);
//! `refresh` extends a live connection, and one left to expire is closed with 4001. A
//! well-behaved client keeps receiving everything meanwhile.

mod common;

use std::time::Duration;

use common::{assert_error, assert_message, refused_upgrade, watchdog, Bystander, Client, Server};
use jsonwebtoken::{encode, EncodingKey, Header};
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
        for (path, header, says) in [
            ("/ws".to_string(), "", "authentication required"),
            (format!("/ws?token={forged}"), "", "InvalidSignature"),
            (format!("/ws?token={expired}"), "", "expired"),
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
