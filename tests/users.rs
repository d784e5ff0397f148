//! Users against the real binary (PROTOCOL.md, "Users"): a connection's user, `$user`
//! streams on every shard with their own offsets and recovery, disconnect (4010), the
//! per-user connection limit, server-side subscriptions (the token's `subs` and the API), and
//! tenant isolation of all of it. Each test asserts the exact frames every client gets, and
//! that the others get nothing.

mod common;

use std::time::Duration;

use common::{assert_error, assert_message, refused_upgrade, watchdog, Client, Server};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "users-test-secret";
const ACME_KEY: &str = "acme-key-0123456789abcdef";
const OPERATOR_KEY: &str = "operator-key-0123456789";

/// A token for `sub` with `extra` claims, granting `>` to subscribe and publish.
fn token(sub: &str, extra: Value) -> String {
    let mut claims = json!({
        "sub": sub, "exp": common::now_ms() / 1000 + 300,
        "channels": [">"], "publish": [">"],
    });
    for (key, value) in extra.as_object().expect("extra claims are an object") {
        claims[key] = value.clone();
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("a token encodes")
}

/// A server with JWT auth, an operator key and acme's key, and `extra` TOML.
async fn jwt_server(extra: &str) -> Server {
    let toml = format!(
        "auth = \"jwt\"\njwt_secret = \"{SECRET}\"\n{extra}\n\
         [[api_keys]]\nkey = \"{OPERATOR_KEY}\"\n\
         [[api_keys]]\nkey = \"{ACME_KEY}\"\ntenant = \"acme\"\n"
    );
    let path = std::env::temp_dir().join(format!(
        "corecast-users-{}-{}.toml",
        std::process::id(),
        common::now_ms()
    ));
    std::fs::write(&path, toml).expect("write the config");
    Server::start(&["--config", path.to_str().expect("a UTF-8 path")]).await
}

/// Connections to `path` until one has landed on each of the two shards; the extra ones
/// close. Returns them in shard order.
async fn one_on_each_shard(server: &Server, path: &str) -> [Client; 2] {
    let mut found: [Option<Client>; 2] = [None, None];
    for _ in 0..64 {
        let client = Client::connect_path(server, path).await;
        let shard = usize::try_from(client.shard()).expect("a small shard number");
        if found[shard].is_none() {
            found[shard] = Some(client);
        }
        if found.iter().all(Option::is_some) {
            return found.map(|client| client.expect("both found"));
        }
    }
    panic!("expected 64 connections to reach both shards");
}

/// `POST path` with `body` and `key`; returns the status and JSON body.
async fn post(server: &Server, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
    let reply = server
        .http_with("POST", path, Some(&body.to_string()), key)
        .await;
    (reply.status, reply.json())
}

/// Publishes `data` to `user` (with `key`) and returns the offset, asserting the exact answer.
async fn publish_to_user(server: &Server, user: &str, data: Value, key: Option<&str>) -> u64 {
    let (status, body) = post(
        server,
        "/v1/publish",
        json!({"user": user, "data": data}),
        key,
    )
    .await;
    assert_eq!(
        status, 200,
        "expected the publish to {user:?} to succeed: {body}"
    );
    let offset = body["offset"].as_u64().expect("an integer offset");
    let mut expected = json!({"user": user, "offset": offset});
    if key == Some(ACME_KEY) {
        expected["tenant"] = json!("acme");
    }
    assert_eq!(body, expected);
    offset
}

/// Publishes `data` to `channel` with the operator key; returns the offset.
async fn operator_publish(server: &Server, channel: &str, data: Value) -> u64 {
    let (status, body) = post(
        server,
        "/v1/publish",
        json!({"channel": channel, "data": data}),
        Some(OPERATOR_KEY),
    )
    .await;
    assert_eq!(
        status, 200,
        "expected the publish to {channel:?} to succeed: {body}"
    );
    body["offset"].as_u64().expect("an integer offset")
}

#[tokio::test]
async fn each_connection_of_a_user_on_both_shards_gets_its_messages_once_in_order() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let [mut ada0, mut ada1] = one_on_each_shard(&server, "/ws?user=ada%40example.com").await;
        let mut bob = Client::connect_path(&server, "/ws?user=bob").await;
        let mut anonymous = Client::connect(&server).await;
        anonymous.subscribe(">", 1).await;
        for ada in [&ada0, &ada1] {
            assert_eq!(ada.hello["user"], "ada@example.com");
        }
        assert_eq!(bob.hello["user"], "bob");
        assert!(anonymous.hello.get("user").is_none());

        for n in 1..=5 {
            let offset = publish_to_user(&server, "ada@example.com", json!({"n": n}), None).await;
            assert_eq!(offset, n, "a user's stream has offsets of its own");
        }
        assert_eq!(publish_to_user(&server, "bob", json!("b"), None).await, 1);
        for ada in [&mut ada0, &mut ada1] {
            for n in 1..=5 {
                assert_message(&ada.recv().await, "$user", n, &json!({"n": n}));
            }
            ada.expect_silence("ada got each of her messages once")
                .await;
        }
        assert_message(&bob.recv().await, "$user", 1, &json!("b"));
        bob.expect_silence("bob gets only his own").await;
        anonymous
            .expect_silence("no wildcard reaches a user's stream")
            .await;

        // A user that has no connection yet: the stream exists once written.
        assert_eq!(publish_to_user(&server, "carol", json!(1), None).await, 1);
        let history = server.get("/v1/stats").await.json();
        let users: u64 = history["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .map(|shard| shard["users"].as_u64().expect("users per shard"))
            .sum();
        assert_eq!(users, 3, "ada on each shard and bob: {history}");
    })
    .await;
}

#[tokio::test]
async fn a_user_recovers_its_stream_with_since_after_a_reconnect() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut ada = Client::connect_path(&server, "/ws?user=ada").await;
        publish_to_user(&server, "ada", json!("first"), None).await;
        let first = ada.recv().await;
        assert_message(&first, "$user", 1, &json!("first"));
        let epoch = ada.hello["epoch"].clone();
        drop(ada);
        for n in 2..=4 {
            publish_to_user(&server, "ada", json!(n), None).await;
        }

        // Back, without the stream at connect: recover it from the offset it had.
        let mut ada = Client::connect_path(&server, "/ws?user=ada").await;
        ada.unsubscribe("$user", 1).await;
        let reply = ada
            .request(json!({
                "type": "subscribe", "channel": "$user", "id": 2,
                "since": {"epoch": epoch, "offset": 1},
            }))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["channel"], "$user");
        assert_eq!(reply["recovered"], true, "{reply}");
        for n in 2..=4 {
            assert_message(&ada.recv().await, "$user", n, &json!(n));
        }
        ada.expect_silence("recovered exactly what it missed").await;
        assert_eq!(publish_to_user(&server, "ada", json!(5), None).await, 5);
        assert_message(&ada.recv().await, "$user", 5, &json!(5));
    })
    .await;
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_the_user_with_4010_and_no_one_else() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let [mut ada0, mut ada1] = one_on_each_shard(&server, "/ws?user=ada").await;
        let mut bob = Client::connect_path(&server, "/ws?user=bob&channels=news").await;
        let (status, body) = post(
            &server,
            "/v1/users/disconnect",
            json!({"user": "ada", "reason": "signed out by the admin"}),
            None,
        )
        .await;
        assert_eq!((status, body), (200, json!({"user": "ada"})));
        for ada in [&mut ada0, &mut ada1] {
            let close = ada.expect_close(Duration::from_secs(5)).await;
            assert_eq!(close, (4010, "signed out by the admin".to_owned()));
        }
        let offset = server.publish("news", &json!("still here")).await;
        assert_message(&bob.recv().await, "news", offset, &json!("still here"));

        let mut bob2 = Client::connect_path(&server, "/ws?user=bob").await;
        let (status, _) = post(
            &server,
            "/v1/users/disconnect",
            json!({"user": "bob"}),
            None,
        )
        .await;
        assert_eq!(status, 200);
        for bob in [&mut bob, &mut bob2] {
            let close = bob.expect_close(Duration::from_secs(5)).await;
            assert_eq!(close, (4010, "disconnected by the server".to_owned()));
        }
        // Nobody to disconnect is no error.
        let (status, _) = post(
            &server,
            "/v1/users/disconnect",
            json!({"user": "zed"}),
            None,
        )
        .await;
        assert_eq!(status, 200);
    })
    .await;
}

#[tokio::test]
async fn the_per_user_limit_refuses_the_next_upgrade_until_one_closes() {
    watchdog(async {
        let server = Server::start(&["--connections-per-user-max", "2"]).await;
        let [ada0, _ada1] = one_on_each_shard(&server, "/ws?user=ada").await;
        let (status, body) = refused_upgrade(&server, "/ws?user=ada", "").await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["code"], "user_connection_limit", "{body}");
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(
            message.contains("connections_per_user_max = 2"),
            "{message}"
        );
        // Others are not counted against ada, nor anonymous connections at all.
        Client::connect_path(&server, "/ws?user=bob").await;
        Client::connect(&server).await;
        drop(ada0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (status, _) = refused_upgrade(&server, "/ws?user=ada", "").await;
            if status == 101 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected ada's closed connection to make room within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn server_side_subscriptions_from_the_token_and_the_api_reach_every_connection() {
    watchdog(async {
        let server = jwt_server("").await;
        let subs = json!({"subs": ["alerts.ada", "team.>"], "channels": []});
        let path = format!("/ws?token={}", token("ada", subs.clone()));
        let [mut ada0, mut ada1] = one_on_each_shard(&server, &path).await;
        let offset = operator_publish(&server, "team.ops", json!("t")).await;
        for ada in [&mut ada0, &mut ada1] {
            assert_message(&ada.recv().await, "team.ops", offset, &json!("t"));
        }
        // The API subscribes every connection of the user, though its token grants nothing.
        let (status, body) = post(
            &server,
            "/v1/users/subscribe",
            json!({"user": "ada", "channel": "quotes.*"}),
            Some(OPERATOR_KEY),
        )
        .await;
        assert_eq!(
            (status, body),
            (200, json!({"user": "ada", "channel": "quotes.*"}))
        );
        for ada in [&mut ada0, &mut ada1] {
            let reply = ada.recv().await;
            let seq = reply["seq"].as_u64().expect("a seq");
            assert_eq!(
                reply,
                json!({"type": "subscribed", "channel": "quotes.*", "server": true,
                       "epoch": ada.hello["epoch"], "seq": seq})
            );
        }
        let offset = operator_publish(&server, "quotes.42", json!("q")).await;
        for ada in [&mut ada0, &mut ada1] {
            assert_message(&ada.recv().await, "quotes.42", offset, &json!("q"));
        }
        let (status, _) = post(
            &server,
            "/v1/users/unsubscribe",
            json!({"user": "ada", "channel": "quotes.*"}),
            Some(OPERATOR_KEY),
        )
        .await;
        assert_eq!(status, 200);
        for ada in [&mut ada0, &mut ada1] {
            assert_eq!(
                ada.recv().await,
                json!({"type": "unsubscribed", "channel": "quotes.*", "server": true})
            );
        }
        operator_publish(&server, "quotes.42", json!("gone")).await;
        for ada in [&mut ada0, &mut ada1] {
            ada.expect_silence("unsubscribed by the server").await;
        }
    })
    .await;
}

#[tokio::test]
async fn one_tenants_users_are_out_of_reach_of_another_tenants_keys_and_sockets() {
    watchdog(async {
        let server = jwt_server("").await;
        let acme = format!("/ws?token={}", token("ada", json!({"tenant": "acme"})));
        let globex = format!("/ws?token={}", token("ada", json!({"tenant": "globex"})));
        let unscoped = format!("/ws?token={}", token("ada", json!({})));
        let mut acme_ada = Client::connect_path(&server, &acme).await;
        let mut globex_ada = Client::connect_path(&server, &globex).await;
        let mut plain_ada = Client::connect_path(&server, &unscoped).await;
        let mut globex_watcher = Client::connect_path(
            &server,
            &format!("/ws?token={}", token("eve", json!({"tenant": "globex"}))),
        )
        .await;
        globex_watcher.subscribe(">", 1).await;

        // acme's key reaches acme's ada only, whatever the others are called.
        assert_eq!(
            publish_to_user(&server, "ada", json!("a"), Some(ACME_KEY)).await,
            1
        );
        assert_message(&acme_ada.recv().await, "$user", 1, &json!("a"));
        for other in [&mut globex_ada, &mut plain_ada, &mut globex_watcher] {
            other.expect_silence("another tenant's ada").await;
        }
        let (status, body) = post(
            &server,
            "/v1/publish",
            json!({"tenant": "globex", "user": "ada", "data": 1}),
            Some(ACME_KEY),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        let (status, _) = post(
            &server,
            "/v1/users/disconnect",
            json!({"user": "ada"}),
            Some(ACME_KEY),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(acme_ada.expect_close(Duration::from_secs(5)).await.0, 4010);
        globex_ada.ping(1).await;
        plain_ada.ping(1).await;

        // No socket reads or writes anyone's stream but its own.
        for (command, code) in [
            (
                json!({"type": "subscribe", "channel": "$user.ada", "id": 2}),
                "forbidden",
            ),
            (
                json!({"type": "subscribe", "channel": "$user.*", "id": 2}),
                "forbidden",
            ),
            (
                json!({"type": "publish", "channel": "$user", "data": 1, "id": 2}),
                "forbidden",
            ),
            (
                json!({"type": "publish", "channel": "$user.ada", "data": 1, "id": 2}),
                "forbidden",
            ),
        ] {
            let reply = globex_watcher.request(command.clone()).await;
            assert_error(&reply, json!(2), code);
        }
        globex_watcher
            .expect_silence("nothing of anyone's stream")
            .await;
    })
    .await;
}

#[tokio::test]
async fn bad_users_and_bad_user_requests_get_clear_errors() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let long = "x".repeat(81);
        for (path, status, code) in [
            (format!("/ws?user={long}"), 400, "invalid_user"),
            ("/ws?user=".to_owned(), 400, "invalid_user"),
            ("/ws?channels=%24user".to_owned(), 400, "invalid_channel"),
            (
                "/ws?user=ada&channels=%24user.bob".to_owned(),
                400,
                "invalid_channel",
            ),
        ] {
            let (got, body) = refused_upgrade(&server, &path, "").await;
            assert_eq!(
                (got, body["error"]["code"].as_str()),
                (status, Some(code)),
                "{path}: {body}"
            );
        }
        let mut anonymous = Client::connect(&server).await;
        let reply = anonymous
            .request(json!({"type": "subscribe", "channel": "$user", "id": 1}))
            .await;
        assert_error(&reply, json!(1), "forbidden");

        for (path, body, code) in [
            (
                "/v1/publish",
                json!({"user": "ada", "channel": "a", "data": 1}),
                "bad_request",
            ),
            (
                "/v1/publish",
                json!({"user": "", "data": 1}),
                "invalid_user",
            ),
            (
                "/v1/publish",
                json!({"user": long, "data": 1}),
                "invalid_user",
            ),
            (
                "/v1/publish",
                json!({"channel": "$user", "data": 1}),
                "invalid_channel",
            ),
            (
                "/v1/publish",
                json!({"channel": "$user.ada", "data": 1}),
                "invalid_channel",
            ),
            (
                "/v1/publish/batch",
                json!({"messages": [{"user": "a\nb", "data": 1}]}),
                "invalid_user",
            ),
            ("/v1/users/disconnect", json!({}), "bad_request"),
            (
                "/v1/users/disconnect",
                json!({"user": "ada", "reason": "r".repeat(124)}),
                "bad_request",
            ),
            ("/v1/users/subscribe", json!({"user": "ada"}), "bad_request"),
            (
                "/v1/users/subscribe",
                json!({"user": "ada", "channel": "a..b"}),
                "invalid_channel",
            ),
            (
                "/v1/users/subscribe",
                json!({"user": "ada", "channel": "$user"}),
                "invalid_channel",
            ),
        ] {
            let (status, reply) = post(&server, path, body.clone(), None).await;
            assert_eq!(status, 400, "{path} {body}: {reply}");
            assert_eq!(reply["error"]["code"], code, "{path} {body}: {reply}");
        }
        let (status, _) = post(
            &server,
            "/v1/users/disconnect",
            json!({"user": "ada"}),
            None,
        )
        .await;
        assert_eq!(status, 200);
        anonymous.ping(2).await;
    })
    .await;
}

#[tokio::test]
async fn a_token_with_a_bad_sub_or_info_or_too_many_subs_is_refused_at_the_upgrade() {
    watchdog(async {
        let server = jwt_server("subscriptions_per_conn_max = 2").await;
        let big = "i".repeat(1_100);
        for (claims_sub, extra, status, says) in [
            ("", json!({}), 401, "claim `sub`"),
            (
                "ada",
                json!({"info": {"name": big}}),
                401,
                "presence_info_bytes_max",
            ),
            ("ada", json!({"info": [1]}), 401, "JSON object"),
            (
                "ada",
                json!({"subs": ["a", "b", "c"]}),
                400,
                "subscriptions_per_conn_max",
            ),
        ] {
            let path = format!("/ws?token={}", token(claims_sub, extra.clone()));
            let (got, body) = refused_upgrade(&server, &path, "").await;
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                got == status && message.contains(says),
                "{extra}: {got} {body}"
            );
        }
        let ok = format!(
            "/ws?token={}",
            token("ada", json!({"info": {"name": "Ada"}, "subs": ["a", "b"]}))
        );
        let mut ada = Client::connect_path(&server, &ok).await;
        assert_eq!(ada.hello["user"], "ada");
        let reply = ada
            .request(json!({"type": "subscribe", "channel": "c", "id": 1}))
            .await;
        assert_error(&reply, json!(1), "too_many_subscriptions");
    })
    .await;
}
