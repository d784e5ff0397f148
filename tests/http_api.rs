//! Pins down the control-plane HTTP API (PROTOCOL.md section 3): exact reply bodies of publish,
//! batch, health, stats and channels; the status and JSON error body of every refusal; and that
//! what the API reports matches what the test's own WebSocket clients did — by calling a real
//! `corecast` binary over HTTP and comparing parsed JSON.

mod common;

use std::collections::BTreeSet;

use common::{assert_http_error_body, assert_message, watchdog, Client, Server};
use serde_json::{json, Value};

/// Asserts `reply` has `status` and the JSON error body, returning its code.
fn assert_refused(reply: &common::HttpReply, status: u16, what: &str) -> String {
    assert_eq!(
        reply.status, status,
        "expected {status} for {what}, got {} {}",
        reply.status, reply.body
    );
    assert_http_error_body(reply, what)
}

#[tokio::test]
async fn healthz_is_ok() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let reply = server.get("/healthz").await;
        assert_eq!(
            reply.status, 200,
            "expected 200 from /healthz, got {reply:?}"
        );
        assert_eq!(
            reply.json(),
            json!({"status": "ok"}),
            "expected exactly {{\"status\":\"ok\"}}"
        );
    })
    .await
}

#[tokio::test]
async fn publish_offsets_count_per_channel() {
    watchdog(async {
        let server = Server::start(&[]).await;
        // `publish` asserts the exact `{"channel","offset"}` reply.
        let first = server.publish("count.a", &json!(1)).await;
        let other = server.publish("count.b", &json!(1)).await;
        let second = server.publish("count.a", &json!(2)).await;
        let other_second = server.publish("count.b", &json!(2)).await;
        assert_eq!(
            second,
            first + 1,
            "expected count.a's offset to grow by exactly 1"
        );
        assert_eq!(
            other_second,
            other + 1,
            "expected count.b's offset to grow by exactly 1"
        );
    })
    .await
}

#[tokio::test]
async fn publish_accepts_every_priority() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        client.subscribe("prio.1", 1).await;
        for priority in ["critical", "high", "normal"] {
            let body = json!({"channel": "prio.1", "data": priority, "priority": priority});
            let reply = server.post("/v1/publish", &body.to_string()).await;
            assert_eq!(
                reply.status, 200,
                "expected priority {priority:?} to be accepted, got {reply:?}"
            );
            let offset = reply.json()["offset"].as_u64().expect("an integer offset");
            assert_message(&client.recv().await, "prio.1", offset, &json!(priority));
        }
    })
    .await
}

#[tokio::test]
async fn bad_json_body_is_400_bad_request() {
    watchdog(async {
        let server = Server::start(&[]).await;
        // The last: a `\u` escape without four hex digits in `data`, which sonic-rs skips.
        let bad_escape = r#"{"channel":"leads.1","data":"a\u00'9"}"#;
        for body in ["{nope", "", "[]", "\"leads.1\"", bad_escape] {
            let reply = server.post("/v1/publish", body).await;
            let code = assert_refused(&reply, 400, &format!("the body {body:?}"));
            assert_eq!(
                code, "bad_request",
                "expected code bad_request for the body {body:?}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn missing_field_is_400_bad_request() {
    watchdog(async {
        let server = Server::start(&[]).await;
        for body in [json!({"data": 1}), json!({"channel": "leads.1"}), json!({})] {
            let reply = server.post("/v1/publish", &body.to_string()).await;
            let code = assert_refused(&reply, 400, &format!("the body {body}"));
            assert_eq!(
                code, "bad_request",
                "expected code bad_request for the body {body}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn wildcard_or_malformed_channel_is_400_invalid_channel() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        client.subscribe(">", 1).await;
        let too_long = "a".repeat(256);
        for channel in [
            "leads.*",
            "leads.>",
            ">",
            "a..b",
            "",
            too_long.as_str(),
            "a b",
        ] {
            let body = json!({"channel": channel, "data": 1});
            let reply = server.post("/v1/publish", &body.to_string()).await;
            let code = assert_refused(&reply, 400, &format!("publishing to {channel:?}"));
            assert_eq!(
                code, "invalid_channel",
                "expected invalid_channel for {channel:?}"
            );
        }
        client
            .expect_silence("a refused publish is not delivered")
            .await;
    })
    .await
}

#[tokio::test]
async fn body_over_publish_body_bytes_max_is_413() {
    watchdog(async {
        let server = Server::start(&["--publish-body-bytes-max", "4096"]).await;
        let body_of = |len: usize| {
            let head = r#"{"channel":"big.1","data":""#;
            format!(r#"{head}{}"}}"#, "x".repeat(len - head.len() - 2))
        };
        let under = body_of(4000);
        let reply = server.post("/v1/publish", &under).await;
        assert_eq!(
            reply.status, 200,
            "expected a 4000-byte body under the 4096 limit to pass, got {reply:?}"
        );
        let over = body_of(5000);
        let reply = server.post("/v1/publish", &over).await;
        assert_refused(
            &reply,
            413,
            "a 5000-byte body over --publish-body-bytes-max 4096",
        );
        // The API still serves after refusing.
        assert_eq!(
            server.get("/healthz").await.status,
            200,
            "expected /healthz to answer after a 413"
        );
    })
    .await
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    watchdog(async {
        let server = Server::start(&[]).await;
        assert_refused(&server.get("/nope").await, 404, "GET /nope");
        assert_refused(&server.post("/v1/nope", "{}").await, 404, "POST /v1/nope");
        assert_refused(&server.get("/v1/publish").await, 405, "GET /v1/publish");
        assert_refused(
            &server.get("/v1/publish/batch").await,
            405,
            "GET /v1/publish/batch",
        );
    })
    .await
}

#[tokio::test]
async fn batch_results_are_in_order_and_delivered_in_order() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        client.subscribe("batch.*", 1).await;
        let messages = [
            ("batch.1", json!({"n": 1})),
            ("batch.1", json!({"n": 2})),
            ("batch.1", json!({"n": 3})),
        ];
        // `publish_batch` asserts the exact `{"results":[{"channel","offset"},..]}` reply.
        let offsets = server.publish_batch(&messages).await;
        assert_eq!(
            offsets,
            vec![offsets[0], offsets[0] + 1, offsets[0] + 2],
            "expected one channel's batch offsets to be consecutive"
        );
        for ((channel, data), offset) in messages.iter().zip(&offsets) {
            assert_message(&client.recv().await, channel, *offset, data);
        }
        client.expect_silence("exactly three deliveries").await;
    })
    .await
}

#[tokio::test]
async fn batch_over_several_channels_keeps_per_channel_sequences() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let x = server.publish("mix.x", &json!(0)).await;
        let messages = [
            ("mix.x", json!(1)),
            ("mix.y", json!(1)),
            ("mix.x", json!(2)),
            ("mix.y", json!(2)),
        ];
        let offsets = server.publish_batch(&messages).await;
        assert_eq!(
            offsets[0],
            x + 1,
            "expected the batch to continue mix.x's sequence"
        );
        assert_eq!(
            offsets[2],
            x + 2,
            "expected mix.x's offsets to be consecutive in a batch"
        );
        assert_eq!(
            offsets[3],
            offsets[1] + 1,
            "expected mix.y's offsets to be consecutive"
        );
    })
    .await
}

#[tokio::test]
async fn batch_over_publish_batch_max_is_refused() {
    watchdog(async {
        let server = Server::start(&["--publish-batch-max", "4"]).await;
        let mut client = Client::connect(&server).await;
        client.subscribe("cap.1", 1).await;
        let at_limit: Vec<(&str, Value)> = (0..4).map(|n| ("cap.1", json!(n))).collect();
        let offsets = server.publish_batch(&at_limit).await;
        for ((channel, data), offset) in at_limit.iter().zip(&offsets) {
            assert_message(&client.recv().await, channel, *offset, data);
        }

        let over = json!({
            "messages": (0..5).map(|n| json!({"channel": "cap.1", "data": n})).collect::<Vec<_>>(),
        });
        let reply = server.post("/v1/publish/batch", &over.to_string()).await;
        assert!(
            [400, 413].contains(&reply.status),
            "expected 413 (or 400) for 5 messages over --publish-batch-max 4, got {reply:?}"
        );
        assert_http_error_body(&reply, "a batch over --publish-batch-max");
        client
            .expect_silence("nothing of a refused batch is delivered")
            .await;
    })
    .await
}

/// The per-shard counters of `/v1/stats`, checked for shape: two shards, 0 and 1, each with every
/// counter as an integer.
fn shard_counters(stats: &Value) -> Vec<Value> {
    let shards = stats["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("expected {{\"shards\":[..]}} in /v1/stats, got {stats}"));
    assert_eq!(
        shards.len(),
        2,
        "expected one entry per shard (2) in {stats}"
    );
    let ids: BTreeSet<u64> = shards.iter().filter_map(|s| s["shard"].as_u64()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([0, 1]),
        "expected shards 0 and 1 in {stats}"
    );
    for shard in shards {
        for key in [
            "connections",
            "subscriptions",
            "messages_out",
            "bytes_out",
            "drops",
            "slow_consumer_closes",
        ] {
            assert!(
                shard[key].is_u64(),
                "expected an integer {key} in every shard entry, got {shard}"
            );
        }
    }
    shards.clone()
}

fn sum(stats: &Value, key: &str) -> u64 {
    stats["shards"]
        .as_array()
        .map(|shards| shards.iter().filter_map(|s| s[key].as_u64()).sum())
        .unwrap_or_default()
}

#[tokio::test]
async fn stats_count_connections_subscriptions_and_deliveries_per_shard() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let stats = server.stats().await;
        shard_counters(&stats);
        assert_eq!(sum(&stats, "connections"), 0, "expected no connections yet in {stats}");

        // One distinct channel per connection, so "subscriptions" means the same whether a shard
        // counts (connection, channel) pairs or channels.
        let mut clients = Vec::new();
        for id in 0..3u64 {
            let mut client = Client::connect(&server).await;
            client.subscribe(&format!("stat.{id}"), id).await;
            clients.push(client);
        }
        for (id, client) in clients.iter_mut().enumerate() {
            let channel = format!("stat.{id}");
            let data = json!("counted");
            let offset = server.publish(&channel, &data).await;
            assert_message(&client.recv().await, &channel, offset, &data);
        }

        let stats = server
            .poll_json("/v1/stats", |s| {
                sum(s, "connections") == 3 && sum(s, "messages_out") >= 3
            })
            .await;
        let shards = shard_counters(&stats);
        assert_eq!(sum(&stats, "connections"), 3, "expected 3 open connections in {stats}");
        assert_eq!(sum(&stats, "subscriptions"), 3, "expected 3 subscriptions in {stats}");
        assert!(sum(&stats, "messages_out") >= 3, "expected 3 deliveries counted in {stats}");
        assert!(sum(&stats, "bytes_out") > 0, "expected bytes counted in {stats}");
        assert_eq!(sum(&stats, "drops"), 0, "expected no drops in {stats}");
        assert_eq!(sum(&stats, "slow_consumer_closes"), 0, "expected no slow closes in {stats}");
        // Each shard's count matches the connections that landed on it.
        for shard in &shards {
            let id = shard["shard"].as_u64().expect("checked");
            let landed = clients.iter().filter(|c| c.shard() == id).count() as u64;
            assert_eq!(
                shard["connections"], landed,
                "expected shard {id} to count the {landed} connections whose connected frame named it"
            );
        }

        let mut gone = clients.pop().expect("three clients");
        gone.ws.close(None).await.expect("a clean close");
        let stats = server
            .poll_json("/v1/stats", |s| sum(s, "connections") == 2)
            .await;
        assert_eq!(sum(&stats, "connections"), 2, "expected a closed connection to be uncounted in {stats}");
        assert_eq!(sum(&stats, "subscriptions"), 2, "expected its subscription to go with it in {stats}");
    })
    .await
}

fn sorted_channels(body: &Value) -> Vec<Value> {
    let mut channels = body["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("expected {{\"channels\":[..]}}, got {body}"))
        .clone();
    channels.sort_by_key(|c| c["channel"].as_str().unwrap_or_default().to_string());
    channels
}

#[tokio::test]
async fn channels_lists_live_subscriptions_with_exact_counts() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let body = server.get("/v1/channels").await;
        assert_eq!(
            body.status, 200,
            "expected 200 from /v1/channels, got {body:?}"
        );
        assert_eq!(
            sorted_channels(&body.json()),
            Vec::<Value>::new(),
            "expected no channels yet"
        );

        // Enough clients that both shards are likely involved: counts must add up across shards.
        let mut clients = Vec::new();
        for _ in 0..4 {
            let mut client = Client::connect(&server).await;
            client.subscribe("leads.*", 1).await;
            clients.push(client);
        }
        clients[0].subscribe("leads.42", 2).await;
        let expected = vec![
            json!({"channel": "leads.*", "subscribers": 4}),
            json!({"channel": "leads.42", "subscribers": 1}),
        ];
        let body = server
            .poll_json("/v1/channels", |b| sorted_channels(b) == expected)
            .await;
        assert_eq!(
            sorted_channels(&body),
            expected,
            "expected exact subscriber counts"
        );

        clients[1].unsubscribe("leads.*", 3).await;
        let mut gone = clients.pop().expect("four clients");
        gone.ws.close(None).await.expect("a clean close");
        let expected = vec![
            json!({"channel": "leads.*", "subscribers": 2}),
            json!({"channel": "leads.42", "subscribers": 1}),
        ];
        let body = server
            .poll_json("/v1/channels", |b| sorted_channels(b) == expected)
            .await;
        assert_eq!(
            sorted_channels(&body),
            expected,
            "expected an unsubscribe and a closed connection to lower the count"
        );

        clients[0].unsubscribe("leads.42", 4).await;
        let expected = vec![json!({"channel": "leads.*", "subscribers": 2})];
        let body = server
            .poll_json("/v1/channels", |b| sorted_channels(b) == expected)
            .await;
        assert_eq!(
            sorted_channels(&body),
            expected,
            "expected a channel without subscribers to leave the list"
        );
    })
    .await
}
