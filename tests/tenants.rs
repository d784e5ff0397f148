//! Tenant isolation against the real binary (`--auth jwt`, `[[api_keys]]`): a token's `tenant`
//! puts its connection in that tenant's scope, so the names it writes (`leads.*`, even `>`)
//! reach only its tenant's channels and come back without any scope; control-plane publishes
//! and history name the tenant, and a tenant's API key acts in that tenant only. Each test
//! publishes into several scopes and asserts the exact frames each client gets, and that the
//! others get nothing.

mod common;

use std::time::Duration;

use common::{assert_error, assert_message, watchdog, Client, Server};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "tenant-test-secret";
const OPERATOR_KEY: &str = "operator-key-0123456789";
const ACME_KEY: &str = "acme-key-0123456789abcdef";

/// A token for `tenant` (none: unscoped) granting `>` to subscribe and publish.
fn token(tenant: Option<&str>) -> String {
    let mut claims = json!({
        "sub": "ada", "exp": common::now_ms() / 1000 + 300,
        "channels": [">"], "publish": [">"],
    });
    if let Some(tenant) = tenant {
        claims["tenant"] = json!(tenant);
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("a token encodes")
}

/// A server with JWT auth and, when `keys`, an operator key and acme's key.
async fn server(keys: bool) -> Server {
    let mut toml = format!("auth = \"jwt\"\njwt_secret = \"{SECRET}\"\n");
    if keys {
        toml += &format!(
            "[[api_keys]]\nkey = \"{OPERATOR_KEY}\"\n\
             [[api_keys]]\nkey = \"{ACME_KEY}\"\ntenant = \"acme\"\n"
        );
    }
    let path = std::env::temp_dir().join(format!(
        "corecast-tenants-{}-{keys}.toml",
        std::process::id()
    ));
    std::fs::write(&path, toml).expect("write the config");
    Server::start(&["--config", path.to_str().expect("a UTF-8 path")]).await
}

async fn connect(server: &Server, tenant: Option<&str>) -> Client {
    Client::connect_path(server, &format!("/ws?token={}", token(tenant))).await
}

/// `POST /v1/publish` of `data` to `channel` in `tenant` with `key`; returns status and body.
async fn publish(
    server: &Server,
    key: Option<&str>,
    tenant: Option<&str>,
    channel: &str,
    data: Value,
) -> (u16, Value) {
    let mut body = json!({"channel": channel, "data": data});
    if let Some(tenant) = tenant {
        body["tenant"] = json!(tenant);
    }
    let reply = server
        .http_with("POST", "/v1/publish", Some(&body.to_string()), key)
        .await;
    (reply.status, reply.json())
}

#[tokio::test]
async fn a_tenant_root_wildcard_sees_only_its_tenant_and_names_come_back_unscoped() {
    watchdog(async {
        let server = server(false).await;
        let mut acme = connect(&server, Some("acme")).await;
        let mut globex = connect(&server, Some("globex")).await;
        let mut unscoped = connect(&server, None).await;
        for client in [&mut acme, &mut globex, &mut unscoped] {
            client.subscribe(">", 1).await;
        }

        let (status, body) = publish(&server, None, Some("acme"), "leads.1", json!("a")).await;
        assert_eq!(
            (status, body.clone()),
            (
                200,
                json!({"tenant": "acme", "channel": "leads.1", "offset": 1})
            )
        );
        assert_message(&acme.recv().await, "leads.1", 1, &json!("a"));
        let (_, body) = publish(&server, None, Some("globex"), "leads.1", json!("g")).await;
        assert_eq!(
            body["offset"], 1,
            "each tenant's channel has its own offsets"
        );
        assert_message(&globex.recv().await, "leads.1", 1, &json!("g"));
        let offset = server.publish("leads.1", &json!("u")).await;
        assert_eq!(offset, 1);
        assert_message(&unscoped.recv().await, "leads.1", 1, &json!("u"));

        // The reply and the delivery take different paths: either may come first.
        acme.send(json!({"type": "publish", "channel": "chat.r1", "data": 7, "id": 2}))
            .await;
        let mut frames = [acme.recv().await, acme.recv().await];
        frames.sort_by_key(|frame| frame["type"] != "published");
        assert_eq!(
            frames[0],
            json!({"type": "published", "id": 2, "channel": "chat.r1", "offset": 1})
        );
        assert_message(&frames[1], "chat.r1", 1, &json!(7));

        acme.expect_silence("acme got its three messages").await;
        globex.expect_silence("globex got only its own").await;
        unscoped
            .expect_silence("an unscoped `>` sees no tenant")
            .await;
    })
    .await
}

#[tokio::test]
async fn a_tenant_cannot_reach_sys_or_another_scope_and_recovers_within_its_own() {
    watchdog(async {
        let server = server(false).await;
        let mut acme = connect(&server, Some("acme")).await;
        let refused = acme
            .request(json!({"type": "subscribe", "channel": "$sys.stats", "id": 1}))
            .await;
        assert_error(&refused, json!(1), "forbidden");
        let forged = acme
            .request(json!({"type": "subscribe", "channel": "$t:globex.>", "id": 2}))
            .await;
        assert_error(&forged, json!(2), "invalid_channel");

        for data in ["one", "two"] {
            publish(&server, None, Some("acme"), "leads.9", json!(data)).await;
        }
        publish(&server, None, Some("globex"), "leads.9", json!("theirs")).await;
        let hello = acme.request(json!({"type": "ping", "id": 3})).await;
        assert_eq!(hello["type"], "pong");
        let epoch = server.stats().await["epoch"].clone();
        let reply = acme
            .request(json!({"type": "subscribe", "channel": "leads.9", "id": 4,
                            "since": {"epoch": epoch, "offset": 0}}))
            .await;
        assert_eq!(reply["channel"], "leads.9", "{reply}");
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_message(&acme.recv().await, "leads.9", 1, &json!("one"));
        assert_message(&acme.recv().await, "leads.9", 2, &json!("two"));
        acme.expect_silence("globex's leads.9 is not acme's").await;

        let page = server
            .get("/v1/history?tenant=acme&channel=leads.9")
            .await
            .json();
        assert_eq!(page["tenant"], "acme", "{page}");
        assert_eq!(page["channel"], "leads.9", "{page}");
        let datas: Vec<&Value> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|message| &message["data"])
            .collect();
        assert_eq!(datas, [&json!("one"), &json!("two")]);
        let unscoped = server.get("/v1/history?channel=leads.9").await.json();
        assert_eq!(unscoped["messages"], json!([]), "{unscoped}");

        let channels = server.get("/v1/channels").await.json();
        assert_eq!(
            channels["channels"],
            json!([{"tenant": "acme", "channel": "leads.9", "subscribers": 1}])
        );
    })
    .await
}

#[tokio::test]
async fn api_keys_gate_the_control_plane_and_a_tenant_key_acts_in_its_tenant_only() {
    watchdog(async {
        let server = server(true).await;
        let mut acme = connect(&server, Some("acme")).await;
        acme.subscribe("leads.*", 1).await;

        let anonymous = server.get("/v1/stats").await;
        assert_eq!(anonymous.status, 401, "{}", anonymous.body);
        assert_eq!(anonymous.json()["error"]["code"], "unauthorized");
        let wrong = server
            .http_with("GET", "/v1/stats", None, Some("not-a-key-at-all"))
            .await;
        assert_eq!(wrong.status, 401, "{}", wrong.body);
        assert_eq!(server.get("/healthz").await.status, 200, "health is open");
        let operator = server
            .http_with("GET", "/v1/stats", None, Some(OPERATOR_KEY))
            .await;
        assert_eq!(operator.status, 200, "{}", operator.body);
        let tenant_stats = server
            .http_with("GET", "/v1/stats", None, Some(ACME_KEY))
            .await;
        assert_eq!(tenant_stats.status, 403, "{}", tenant_stats.body);

        let (status, body) = publish(&server, Some(ACME_KEY), None, "leads.1", json!(1)).await;
        assert_eq!(
            (status, body),
            (
                200,
                json!({"tenant": "acme", "channel": "leads.1", "offset": 1})
            ),
            "a tenant key publishes into its tenant"
        );
        assert_message(&acme.recv().await, "leads.1", 1, &json!(1));
        let (status, body) =
            publish(&server, Some(ACME_KEY), Some("globex"), "leads.1", json!(2)).await;
        assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
        let (status, _) = publish(&server, None, Some("acme"), "leads.1", json!(3)).await;
        assert_eq!(status, 401, "no key, no publish");
        let (status, body) = publish(
            &server,
            Some(OPERATOR_KEY),
            Some("a.b"),
            "leads.1",
            json!(4),
        )
        .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("bad_request"))
        );
        let (status, _) = publish(
            &server,
            Some(OPERATOR_KEY),
            Some("acme"),
            "leads.1",
            json!(5),
        )
        .await;
        assert_eq!(status, 200);
        assert_message(&acme.recv().await, "leads.1", 2, &json!(5));
        let history = server
            .http_with(
                "GET",
                "/v1/history?tenant=globex&channel=leads.1",
                None,
                Some(ACME_KEY),
            )
            .await;
        assert_eq!(history.status, 403, "{}", history.body);
        acme.expect_silence("only the two granted publishes").await;
    })
    .await
}

#[tokio::test]
async fn a_token_whose_tenant_is_not_one_token_is_refused_at_the_upgrade() {
    watchdog(async {
        let server = server(false).await;
        let bad = token(Some("acme.evil"));
        let url = server.ws_url(&format!("/ws?token={bad}"));
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("an answer");
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401);
                let body: Value =
                    serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                        .expect("a JSON body");
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("claim `tenant`"), "{body}");
            }
            other => panic!("expected 401, got {other:?}"),
        }
    })
    .await
}
