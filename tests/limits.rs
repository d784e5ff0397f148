//! The connection and name limits against the real binary: `connections_max` (503),
//! `connections_per_ip_max` and `tenant_connections_max` (429), each with the contract's JSON
//! body, a place freed by a closed connection, `allowed_origins` (403), `channel_bytes_max`
//! (`invalid_channel`, 400), and `tenant_publishes_per_s` (429 or `rate_limited`). Beside each tripped limit a subscriber that
//! was admitted first keeps receiving every publish.

mod common;

use std::time::Duration;

use common::{assert_error, refused_upgrade, watchdog, Bystander, Client, Server};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "limits-test-secret";

fn token(tenant: &str) -> String {
    let claims = json!({
        "sub": "ada", "tenant": tenant, "exp": common::now_ms() / 1000 + 300,
        "channels": [">"], "publish": [">"],
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("a token encodes")
}

/// Connects until the upgrade succeeds, for a place that a closed connection frees a moment
/// after its close; any answer but the limit's 429 or 503 fails the test.
async fn connect_once_freed(server: &Server, path: &str) -> Client {
    use tokio_tungstenite::tungstenite::Error;
    for _ in 0..50 {
        match tokio_tungstenite::connect_async(server.ws_url(path)).await {
            Ok((ws, _)) => {
                let mut client = Client {
                    ws,
                    hello: json!(null),
                };
                client.hello = client.recv().await;
                assert_eq!(client.hello["type"], "connected", "{}", client.hello);
                return client;
            }
            Err(Error::Http(response)) if [429, 503].contains(&response.status().as_u16()) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("expected 101 or the limit's refusal, got {err}"),
        }
    }
    panic!("expected a place to be freed within 5 s");
}

#[tokio::test]
async fn per_ip_and_total_limits_refuse_with_their_status_and_free_places_on_close() {
    watchdog(async {
        let server = Server::start(&["--connections-per-ip-max", "3"]).await;
        let mut bystander = Bystander::join(&server, "by.1").await;
        let _second = Client::connect(&server).await;
        let third = Client::connect(&server).await;
        let (status, body) = refused_upgrade(&server, "/ws", "").await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("connections_per_ip_max = 3"), "{message}");
        bystander.assert_unaffected(&server).await;
        drop(third);
        let _again = connect_once_freed(&server, "/ws").await;
        bystander.assert_unaffected(&server).await;

        let server = Server::start(&["--connections-max", "2"]).await;
        let mut bystander = Bystander::join(&server, "by.1").await;
        let _second = Client::connect(&server).await;
        let (status, body) = refused_upgrade(&server, "/ws", "").await;
        assert_eq!(status, 503, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("connections_max = 2"), "{message}");
        bystander.assert_unaffected(&server).await;
        let refused = server.stats().await["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .map(|shard| shard["connections_refused"].as_u64().unwrap_or(0))
            .sum::<u64>();
        assert_eq!(refused, 1, "the refusal is counted");
    })
    .await
}

#[tokio::test]
async fn a_tenant_at_its_connection_limit_is_refused_and_other_tenants_are_not() {
    watchdog(async {
        let server = Server::start(&[
            "--auth",
            "jwt",
            "--jwt-secret",
            SECRET,
            "--tenant-connections-max",
            "1",
        ])
        .await;
        let acme_path = format!("/ws?token={}", token("acme"));
        let mut acme = Client::connect_path(&server, &acme_path).await;
        acme.subscribe("by.1", 1).await;
        let (status, body) = refused_upgrade(&server, &acme_path, "").await;
        assert_eq!(status, 429, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("tenant_connections_max = 1"), "{message}");
        let globex = Client::connect_path(&server, &format!("/ws?token={}", token("globex"))).await;

        let stats = server.stats().await;
        assert_eq!(
            stats["tenants"],
            json!([{"tenant": "acme", "connections": 1}, {"tenant": "globex", "connections": 1}])
        );
        let metrics = server.get("/metrics").await.body;
        assert!(
            metrics.contains("corecast_tenant_connections{tenant=\"acme\"} 1"),
            "{metrics}"
        );
        let offset = server
            .post(
                "/v1/publish",
                &json!({"tenant": "acme", "channel": "by.1", "data": 1}).to_string(),
            )
            .await
            .json()["offset"]
            .as_u64()
            .expect("an offset");
        common::assert_message(&acme.recv().await, "by.1", offset, &json!(1));
        drop(globex);
        drop(acme);
        let _acme_again = connect_once_freed(&server, &acme_path).await;
    })
    .await
}

#[tokio::test]
async fn origins_outside_the_list_get_403_and_browserless_clients_pass() {
    watchdog(async {
        let server = Server::start(&[
            "--allowed-origin",
            "https://app.example.com",
            "--allowed-origin",
            "https://*.corp.example",
        ])
        .await;
        let mut bystander = Bystander::join(&server, "by.1").await;
        let (status, body) =
            refused_upgrade(&server, "/ws", "Origin: https://evil.example\r\n").await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "origin_not_allowed", "{body}");
        for origin in ["https://app.example.com", "https://eu.corp.example"] {
            let (status, _) =
                refused_upgrade(&server, "/ws", &format!("Origin: {origin}\r\n")).await;
            assert_eq!(status, 101, "{origin} is allowed");
        }
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn channel_names_over_channel_bytes_max_are_invalid_everywhere() {
    watchdog(async {
        let server = Server::start(&["--channel-bytes-max", "16"]).await;
        let mut bystander = Bystander::join(&server, "by.1").await;
        let long = "a".repeat(17);
        let reply = bystander
            .client
            .request(json!({"type": "subscribe", "channel": long, "id": 7}))
            .await;
        assert_error(&reply, json!(7), "invalid_channel");
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(message.contains("the limit is 16"), "{message}");
        let publish = server
            .post(
                "/v1/publish",
                &json!({"channel": long, "data": 1}).to_string(),
            )
            .await;
        assert_eq!(publish.status, 400, "{}", publish.body);
        assert_eq!(publish.json()["error"]["code"], "invalid_channel");
        let (status, _) = refused_upgrade(&server, &format!("/ws?channels={long}"), "").await;
        assert_eq!(status, 400);
        bystander.client.subscribe(&"b".repeat(16), 8).await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn a_tenant_over_its_publish_rate_gets_429_or_rate_limited_and_others_do_not() {
    watchdog(async {
        let server = Server::start(&[
            "--auth",
            "jwt",
            "--jwt-secret",
            SECRET,
            "--tenant-publishes-per-s",
            "1",
        ])
        .await;
        let publish = |tenant: &'static str| {
            let server = &server;
            async move {
                let body = json!({"tenant": tenant, "channel": "news", "data": 1}).to_string();
                server.post("/v1/publish", &body).await
            }
        };
        let started = std::time::Instant::now();
        assert_eq!(publish("acme").await.status, 200, "the burst of one");
        let refused = publish("acme").await;
        assert_eq!(refused.status, 429, "{}", refused.body);
        let body = refused.json();
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("tenant_publishes_per_s = 1"), "{message}");
        assert_eq!(
            publish("globex").await.status,
            200,
            "another tenant's bucket"
        );
        assert_eq!(
            server.publish("news", &json!(2)).await,
            1,
            "unscoped publishes"
        );

        let mut acme = Client::connect_path(&server, &format!("/ws?token={}", token("acme"))).await;
        let reply = acme
            .request(json!({"type": "publish", "channel": "news", "data": 3, "id": 9}))
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the bucket had no time to refill; the test machine is too slow for this check"
        );
        assert_error(&reply, json!(9), "rate_limited");
        let stats = server.stats().await;
        assert_eq!(stats["ingest"]["tenant_publishes_refused_total"], 2);

        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(publish("acme").await.status, 200, "a token came back");
    })
    .await
}
