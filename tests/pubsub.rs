//! Pins down the happy path of the wire contract (PROTOCOL.md section 2): the `connected` frame,
//! every client command and its exact reply, wildcard matching, per-channel order with consecutive
//! offsets across both shards, once-only delivery through overlapping patterns, `?channels=`, and
//! client publishing — by driving a real `corecast` binary with real WebSocket and HTTP clients
//! and comparing whole parsed JSON messages.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{assert_error, assert_message, watchdog, Client, Server};
use serde_json::{json, Value};

#[tokio::test]
async fn connected_is_the_first_frame_with_typed_fields() {
    watchdog(async {
        let server = Server::start(&["--heartbeat-s", "7", "--idle-timeout-s", "30"]).await;
        let first = Client::connect(&server).await;
        let second = Client::connect(&server).await;
        // The shape (string conn_id, integer shard below 2, epoch-ms server_time_ms, integer
        // heartbeat_s, nothing else) is asserted by `Client::connect`.
        assert_eq!(
            first.hello["heartbeat_s"],
            json!(7),
            "expected heartbeat_s to echo --heartbeat-s 7"
        );
        assert_ne!(
            first.hello["conn_id"], second.hello["conn_id"],
            "expected two connections to get distinct conn_ids"
        );
        let mut first = first;
        first
            .expect_silence("nothing follows connected without subscriptions")
            .await;
    })
    .await
}

#[tokio::test]
async fn exact_subscription_gets_the_published_message_exactly() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        client.subscribe("leads.42", 1).await;
        let data = json!({"name": "Ada", "score": 9.5, "tags": ["a", "b"], "nested": {"ok": true}});
        let offset = server.publish("leads.42", &data).await;
        let got = client.recv().await;
        assert_message(&got, "leads.42", offset, &data);
        client
            .expect_silence("one publish makes one delivery")
            .await;
    })
    .await
}

#[tokio::test]
async fn star_matches_one_token_and_tail_matches_one_or_more() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut star = Client::connect(&server).await;
        let mut tail = Client::connect(&server).await;
        star.subscribe("leads.*", 11).await;
        tail.subscribe("leads.>", 12).await;

        let first = json!({"n": 1});
        let first_offset = server.publish("leads.42", &first).await;
        let deep = json!({"n": 2});
        let deep_offset = server.publish("leads.42.notes", &deep).await;
        // Matched by neither pattern: `>` needs at least one token after `leads`.
        server.publish("leads", &json!({"n": 3})).await;
        server.publish("other.42", &json!({"n": 4})).await;

        assert_message(&star.recv().await, "leads.42", first_offset, &first);
        star.expect_silence("leads.* must not match leads.42.notes, leads or other.42")
            .await;

        assert_message(&tail.recv().await, "leads.42", first_offset, &first);
        assert_message(&tail.recv().await, "leads.42.notes", deep_offset, &deep);
        tail.expect_silence("leads.> must not match leads or other.42")
            .await;
    })
    .await
}

#[tokio::test]
async fn star_in_the_middle_matches_one_token() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        client.subscribe("a.*.c", 1).await;
        let hit = json!("hit");
        let offset = server.publish("a.b.c", &hit).await;
        server.publish("a.b.b.c", &json!("miss")).await;
        server.publish("a.c", &json!("miss")).await;
        assert_message(&client.recv().await, "a.b.c", offset, &hit);
        client
            .expect_silence("a.*.c must not match a.b.b.c or a.c")
            .await;
    })
    .await
}

#[tokio::test]
async fn two_hundred_publishes_arrive_in_order_with_consecutive_offsets() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        client.subscribe("orders.1", 1).await;
        let datas: Vec<Value> = (0..200).map(|i| json!({"i": i})).collect();
        let offsets = server.publish_many("orders.1", datas.clone()).await;
        let first = offsets[0];
        let expected: Vec<u64> = (first..first + 200).collect();
        assert_eq!(
            offsets, expected,
            "expected the publish replies to count up by exactly 1 from the first"
        );
        for (i, data) in datas.iter().enumerate() {
            let got = client.recv().await;
            assert_message(&got, "orders.1", first + i as u64, data);
        }
        client.expect_silence("exactly 200 deliveries").await;
    })
    .await
}

#[tokio::test]
async fn order_holds_for_many_subscribers_spread_over_both_shards() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut clients = Vec::new();
        // SO_REUSEPORT spreads connections by hash: 20 nearly always reach both shards; keep
        // connecting (up to a bound) until they do.
        while clients.len() < 20
            || clients
                .iter()
                .map(Client::shard)
                .collect::<BTreeSet<_>>()
                .len()
                < 2
        {
            assert!(
                clients.len() < 64,
                "expected 64 connections to land on both shards, all went to shard {}",
                clients[0].shard()
            );
            let mut client = Client::connect(&server).await;
            client.subscribe("fan.1", 1).await;
            clients.push(client);
        }

        let datas: Vec<Value> = (0..200).map(|i| json!({"i": i})).collect();
        let offsets = server.publish_many("fan.1", datas.clone()).await;
        let first = offsets[0];
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut client| {
                let datas = datas.clone();
                tokio::spawn(async move {
                    for (i, data) in datas.iter().enumerate() {
                        let got = client.recv().await;
                        assert_message(&got, "fan.1", first + i as u64, data);
                    }
                    client.expect_silence("exactly 200 deliveries").await;
                })
            })
            .collect();
        for reader in readers {
            reader
                .await
                .expect("expected every subscriber to get all 200 in order");
        }
    })
    .await
}

#[tokio::test]
async fn overlapping_patterns_deliver_each_message_once() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        client.subscribe("a.b", 1).await;
        client.subscribe("a.*", 2).await;
        client.subscribe(">", 3).await;

        let all_three = server.publish("a.b", &json!("all three match")).await;
        let two = server.publish("a.c", &json!("a.* and > match")).await;
        // Matched by `>` only: once it arrives, any duplicate of the above would have come first.
        let sentinel = server.publish("zz", &json!("sentinel")).await;

        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        loop {
            let got = client.recv().await;
            let channel = got["channel"].as_str().unwrap_or_default().to_string();
            assert_eq!(
                got["type"], "message",
                "expected only deliveries, got {got}"
            );
            seen.entry(channel.clone())
                .or_default()
                .push(got["offset"].as_u64().unwrap_or(u64::MAX));
            if channel == "zz" {
                break;
            }
        }
        client.ping(4).await;
        let expected = BTreeMap::from([
            ("a.b".to_string(), vec![all_three]),
            ("a.c".to_string(), vec![two]),
            ("zz".to_string(), vec![sentinel]),
        ]);
        assert_eq!(
            seen, expected,
            "expected each message exactly once despite overlapping patterns"
        );
    })
    .await
}

#[tokio::test]
async fn channels_query_subscribes_at_connect() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect_path(&server, "/ws?channels=room.a,room.b").await;
        let a = json!({"to": "a"});
        let b = json!({"to": "b"});
        let a_offset = server.publish("room.a", &a).await;
        let b_offset = server.publish("room.b", &b).await;
        server.publish("room.c", &json!("not asked for")).await;

        let mut deliveries = Vec::new();
        while deliveries.len() < 2 {
            let got = client.recv().await;
            // The contract does not say whether query subscriptions are confirmed with
            // `subscribed` frames; tolerate exactly those and nothing else.
            if got["type"] == "subscribed" {
                let channel = got["channel"].as_str().unwrap_or_default();
                assert!(
                    ["room.a", "room.b"].contains(&channel),
                    "expected a subscribed frame only for the query channels, got {got}"
                );
                continue;
            }
            deliveries.push(got);
        }
        assert_message(&deliveries[0], "room.a", a_offset, &a);
        assert_message(&deliveries[1], "room.b", b_offset, &b);
        client.expect_silence("room.c was not in ?channels=").await;
    })
    .await
}

#[tokio::test]
async fn client_publish_is_acknowledged_and_delivered() {
    watchdog(async {
        let server = Server::start(&["--client-publish", "chat.>"]).await;
        let mut reader = Client::connect(&server).await;
        reader.subscribe("chat.r1", 1).await;
        let mut writer = Client::connect(&server).await;
        let reply = writer
            .request(json!({"type": "publish", "channel": "chat.r1", "data": {"x": 1}, "id": 4}))
            .await;
        let offset = reply["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("expected an integer offset in {reply}"));
        assert_eq!(
            reply,
            json!({"type": "published", "id": 4, "channel": "chat.r1", "offset": offset}),
            "expected exactly the published acknowledgement"
        );
        assert_message(&reader.recv().await, "chat.r1", offset, &json!({"x": 1}));

        // An HTTP publish to the same channel continues the same offset sequence.
        let next = server.publish("chat.r1", &json!({"x": 2})).await;
        assert_eq!(
            next,
            offset + 1,
            "expected socket and HTTP publishes to share one offset sequence"
        );
        assert_message(&reader.recv().await, "chat.r1", next, &json!({"x": 2}));
    })
    .await
}

#[tokio::test]
async fn client_publish_outside_the_allowed_patterns_is_forbidden() {
    watchdog(async {
        let server = Server::start(&["--client-publish", "chat.>"]).await;
        let mut watcher = Client::connect(&server).await;
        watcher.subscribe("leads.1", 1).await;
        let mut writer = Client::connect(&server).await;
        let reply = writer
            .request(json!({"type": "publish", "channel": "leads.1", "data": {"x": 1}, "id": 9}))
            .await;
        assert_error(&reply, json!(9), "forbidden");
        writer.ping(10).await;
        watcher
            .expect_silence("a forbidden publish must not be delivered")
            .await;
    })
    .await
}

#[tokio::test]
async fn client_publish_is_forbidden_by_default() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut writer = Client::connect(&server).await;
        let reply = writer
            .request(json!({"type": "publish", "channel": "chat.r1", "data": 1, "id": 2}))
            .await;
        assert_error(&reply, json!(2), "forbidden");
        writer.ping(3).await;
    })
    .await
}

#[tokio::test]
async fn ping_answers_pong_with_id_and_server_time() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        // Exact shape asserted by `ping`.
        client.ping(3).await;
        client.ping(99).await;
    })
    .await
}

#[tokio::test]
async fn get_stats_answers_stats_with_id() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        let reply = client.request(json!({"type": "get_stats", "id": 5})).await;
        assert_eq!(
            reply["type"], "stats",
            "expected a stats reply, got {reply}"
        );
        assert_eq!(
            reply["id"], 5,
            "expected the stats reply to echo id 5, got {reply}"
        );
        let counters = reply
            .as_object()
            .map(|fields| fields.len())
            .unwrap_or_default();
        assert!(
            counters > 2,
            "expected the stats reply to carry this connection's counters, got {reply}"
        );
    })
    .await
}

#[tokio::test]
async fn unsubscribe_stops_deliveries_from_that_channel() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        client.subscribe("leads.1", 1).await;
        client.subscribe("leads.2", 2).await;
        let before = json!("before");
        let offset = server.publish("leads.1", &before).await;
        assert_message(&client.recv().await, "leads.1", offset, &before);

        client.unsubscribe("leads.1", 3).await;
        server.publish("leads.1", &json!("after")).await;
        let sentinel = json!("sentinel");
        let sentinel_offset = server.publish("leads.2", &sentinel).await;
        assert_message(&client.recv().await, "leads.2", sentinel_offset, &sentinel);
        client
            .expect_silence("nothing from leads.1 after unsubscribing")
            .await;
    })
    .await
}

#[tokio::test]
async fn unsubscribe_of_a_channel_not_subscribed_is_not_subscribed() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        let reply = client
            .request(json!({"type": "unsubscribe", "channel": "never.1", "id": 8}))
            .await;
        assert_error(&reply, json!(8), "not_subscribed");

        // Unsubscribing twice: the second is also `not_subscribed`.
        client.subscribe("once.1", 9).await;
        client.unsubscribe("once.1", 10).await;
        let reply = client
            .request(json!({"type": "unsubscribe", "channel": "once.1", "id": 11}))
            .await;
        assert_error(&reply, json!(11), "not_subscribed");
        client.ping(12).await;
    })
    .await
}
