//! Delivery you can trust, end to end against the real binary: recovery with `since` (by
//! offset, by seq, through wildcards, while publishing goes on), its refusals (history trimmed,
//! epoch changed), `/v1/history`, acks, and the slow-consumer policies (`conflate`,
//! `drop_oldest`) and `critical` overtaking, each checked message by message.

mod common;

use std::collections::HashMap;

use common::raw::RawWs;
use common::{
    assert_epoch, assert_error, assert_message, assert_subscribed, watchdog, Client, Server, STEP,
};
use serde_json::{json, Value};

/// Subscribes with `since` and returns the `subscribed` reply, checked for its fixed fields.
async fn subscribe_since(client: &mut Client, channel: &str, since: Value) -> Value {
    let reply = client
        .request(json!({"type": "subscribe", "channel": channel, "id": 9, "since": since}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["channel"], channel, "{reply}");
    assert_eq!(reply["id"], 9, "{reply}");
    assert_epoch(&reply["epoch"], &reply.to_string());
    assert!(reply["seq"].is_u64(), "{reply}");
    reply
}

/// The epoch the server runs in, from a fresh connection's greeting.
async fn epoch(server: &Server) -> String {
    let client = Client::connect(server).await;
    client.hello["epoch"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_resubscribe_by_offset_gets_exactly_the_missed_messages_then_live_ones() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut first = Client::connect(&server).await;
        let epoch = first.hello["epoch"].as_str().unwrap().to_owned();
        first.subscribe("rec.1", 1).await;
        for i in 1..=3 {
            server.publish("rec.1", &json!({"i": i})).await;
            assert_message(&first.recv().await, "rec.1", i, &json!({"i": i}));
        }
        drop(first);
        for i in 4..=6 {
            server.publish("rec.1", &json!({"i": i})).await;
        }
        let mut again = Client::connect(&server).await;
        let reply =
            subscribe_since(&mut again, "rec.1", json!({"epoch": epoch, "offset": 3})).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(reply.get("reason"), None, "{reply}");
        for i in 4..=6 {
            assert_message(&again.recv().await, "rec.1", i, &json!({"i": i}));
        }
        server.publish("rec.1", &json!({"i": 7})).await;
        assert_message(&again.recv().await, "rec.1", 7, &json!({"i": 7}));
        again.expect_silence("nothing is delivered twice").await;
    })
    .await
}

#[tokio::test]
async fn recovery_while_publishing_continues_has_no_gap_and_no_duplicate() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let epoch = epoch(&server).await;
        const BEFORE: u64 = 50;
        const TOTAL: u64 = 400;
        let datas: Vec<Value> = (1..=BEFORE).map(|i| json!({"i": i})).collect();
        server.publish_many("race.1", datas).await;
        // Publishing goes on while the subscription recovers, so the snapshot of history falls
        // somewhere in the middle of the stream.
        let rest: Vec<Value> = (BEFORE + 1..=TOTAL).map(|i| json!({"i": i})).collect();
        let publisher = server.publish_many("race.1", rest);
        let mut client = Client::connect(&server).await;
        let subscribing = async {
            let reply =
                subscribe_since(&mut client, "race.1", json!({"epoch": epoch, "offset": 10})).await;
            assert_eq!(reply["recovered"], true, "{reply}");
            let mut offsets = Vec::new();
            while offsets.len() < (TOTAL - 10) as usize {
                let got = client.recv().await;
                assert_eq!(got["type"], "message", "{got}");
                offsets.push(got["offset"].as_u64().unwrap());
            }
            offsets
        };
        let (_, offsets) = tokio::join!(publisher, subscribing);
        let expected: Vec<u64> = (11..=TOTAL).collect();
        assert_eq!(
            offsets, expected,
            "every offset after 10 exactly once, in order"
        );
        client.expect_silence("nothing after the last").await;
    })
    .await
}

#[tokio::test]
async fn wildcard_recovery_by_seq_sends_every_matching_channel_in_publish_order() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut first = Client::connect(&server).await;
        let epoch = first.hello["epoch"].as_str().unwrap().to_owned();
        let position = first.subscribe("w.*", 1).await;
        server.publish("w.a", &json!(1)).await;
        let seen = first.recv().await;
        let seq = seen["seq"].as_u64().unwrap();
        assert!(seq > position, "{seen} after subscribed seq {position}");
        drop(first);
        server
            .publish_batch(&[
                ("w.b", json!(2)),
                ("other", json!(3)),
                ("w.a", json!(4)),
                ("w.a.deep", json!(5)),
                ("w.c", json!(6)),
            ])
            .await;
        let mut again = Client::connect(&server).await;
        let reply = subscribe_since(&mut again, "w.*", json!({"epoch": epoch, "seq": seq})).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        let mut seqs = Vec::new();
        for (channel, offset, data) in [("w.b", 1, 2), ("w.a", 2, 4), ("w.c", 1, 6)] {
            let got = again.recv().await;
            assert_message(&got, channel, offset, &json!(data));
            seqs.push(got["seq"].as_u64().unwrap());
        }
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
        assert_eq!(reply["seq"].as_u64().unwrap(), seq + 5, "{reply}");
        again
            .expect_silence("w.a.deep and other do not match w.*")
            .await;
    })
    .await
}

#[tokio::test]
async fn recovery_past_the_history_window_or_across_epochs_says_why_and_goes_live() {
    watchdog(async {
        let server = Server::start(&["--history-messages-max", "5"]).await;
        let epoch = epoch(&server).await;
        let datas: Vec<Value> = (1..=20).map(|i| json!(i)).collect();
        server.publish_many("short.1", datas).await;
        let mut client = Client::connect(&server).await;
        let reply =
            subscribe_since(&mut client, "short.1", json!({"epoch": epoch, "offset": 2})).await;
        assert_eq!(reply["recovered"], false, "{reply}");
        assert_eq!(reply["reason"], "history_trimmed", "{reply}");
        server.publish("short.1", &json!(21)).await;
        assert_message(&client.recv().await, "short.1", 21, &json!(21));

        let reply = subscribe_since(
            &mut client,
            "short.2",
            json!({"epoch": "0123456789abcdef", "offset": 2}),
        )
        .await;
        assert_eq!(reply["recovered"], false, "{reply}");
        assert_eq!(reply["reason"], "epoch_changed", "{reply}");
        assert_ne!(reply["epoch"], "0123456789abcdef");

        let reply = subscribe_since(
            &mut client,
            "short.3",
            json!({"epoch": epoch, "offset": 15}),
        )
        .await;
        assert_eq!(reply["reason"], "unknown_position", "{reply}");

        // A channel never published to has nothing to miss.
        let reply = subscribe_since(
            &mut client,
            "short.1.x",
            json!({"epoch": epoch, "offset": 0}),
        )
        .await;
        assert_eq!(
            reply["recovered"], true,
            "nothing ever published there: {reply}"
        );

        let bad = client
            .request(json!({"type": "subscribe", "channel": "short.*", "id": 4,
                            "since": {"epoch": epoch, "offset": 1}}))
            .await;
        assert_error(&bad, json!(4), "bad_request");
    })
    .await
}

#[tokio::test]
async fn history_pages_a_channel_and_refuses_bad_queries() {
    watchdog(async {
        let server = Server::start(&["--history-messages-max", "4"]).await;
        let epoch = epoch(&server).await;
        let datas: Vec<Value> = (1..=6).map(|i| json!({"i": i})).collect();
        server.publish_many("h.1", datas).await;
        let page = server.get("/v1/history?channel=h.1&since=3&limit=2").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let body = page.json();
        assert_eq!(body["channel"], "h.1");
        assert_eq!(body["epoch"], epoch.as_str());
        assert_eq!(body["offset"], 6);
        assert_eq!(body["complete"], true);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_message(&messages[0], "h.1", 4, &json!({"i": 4}));
        assert_message(&messages[1], "h.1", 5, &json!({"i": 5}));

        let trimmed = server.get("/v1/history?channel=h.1").await.json();
        assert_eq!(trimmed["complete"], false, "1 and 2 are gone: {trimmed}");
        assert_eq!(trimmed["messages"].as_array().unwrap().len(), 4);

        let empty = server.get("/v1/history?channel=never.used").await.json();
        assert_eq!(
            empty,
            json!({"channel": "never.used", "epoch": epoch, "offset": 0, "complete": true,
                   "messages": []})
        );
        for (query, code) in [
            ("", "bad_request"),
            ("channel=h.*", "invalid_channel"),
            ("channel=h.1&since=-1", "bad_request"),
            ("channel=h.1&limit=0", "bad_request"),
            ("channel=h.1&limit=1001", "bad_request"),
            ("channel=h.1&what=1", "bad_request"),
        ] {
            let reply = server.get(&format!("/v1/history?{query}")).await;
            assert_eq!(reply.status, 400, "{query}: {}", reply.body);
            assert_eq!(
                common::assert_http_error_body(&reply, query),
                code,
                "{query}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn acks_are_kept_per_channel_and_summarised_in_stats() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut client = Client::connect(&server).await;
        client.subscribe("ack.*", 1).await;
        for i in 1..=3 {
            server.publish("ack.a", &json!(i)).await;
            client.recv().await;
        }
        client
            .send(json!({"type": "ack", "channel": "ack.a", "offset": 2}))
            .await;
        let acked = client
            .request(json!({"type": "ack", "channel": "ack.a", "offset": 1, "id": 5}))
            .await;
        assert_eq!(
            acked,
            json!({"type": "acked", "id": 5, "channel": "ack.a", "offset": 1})
        );
        let stats = client.request(json!({"type": "get_stats", "id": 6})).await;
        assert_eq!(
            stats["acks"],
            json!({"ack.a": 2}),
            "the highest ack stays: {stats}"
        );
        let outside = client
            .request(json!({"type": "ack", "channel": "elsewhere", "offset": 1, "id": 7}))
            .await;
        assert_error(&outside, json!(7), "not_subscribed");

        let stats = server.stats().await;
        assert_eq!(
            stats["acks"],
            json!([{"channel": "ack.a", "conns": 1, "offset_min": 2, "offset_max": 2,
                    "offset_latest": 3}]),
            "{stats}"
        );
        let acks_total: u64 = stats["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|shard| shard["acks_total"].as_u64().unwrap())
            .sum();
        assert_eq!(acks_total, 2);
    })
    .await
}

/// A config file with one namespace, written next to the test's temporary files.
fn namespace_config(name: &str, body: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("corecast-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, body).expect("the temp dir is writable");
    path
}

/// Reads text frames, as JSON values, until `done` says so (a silent server fails the test).
async fn drain(raw: &mut RawWs, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Some(frame) = raw.next_frame(STEP).await {
        let value: Value = serde_json::from_slice(&frame.payload).expect("JSON text frames");
        let finished = done(&value);
        frames.push(value);
        if finished {
            break;
        }
    }
    frames
}

/// Publishes `count` messages made by `data` to `channel` in batches of 50.
async fn publish_all(server: &Server, channel: &str, count: usize, data: impl Fn(usize) -> Value) {
    for start in (0..count).step_by(50) {
        let batch: Vec<(&str, Value)> = (start..(start + 50).min(count))
            .map(|i| (channel, data(i)))
            .collect();
        server.publish_batch(&batch).await;
    }
}

#[tokio::test]
async fn conflation_delivers_the_newest_value_per_key_to_a_stalled_client() {
    watchdog(async {
        let config = namespace_config(
            "conflate",
            "[[namespaces]]\npattern = \"px.>\"\nslow_consumer = \"conflate\"\nconflate_key = \"sym\"\n",
        );
        let server = Server::start(&[
            "--config",
            config.to_str().unwrap(),
            "--outbox-frames-max",
            "64",
        ])
        .await;
        let mut stalled = RawWs::connect_ready_small_buffer(server.ws, 4096).await;
        stalled
            .send_text(r#"{"type":"subscribe","channel":"px.eu","id":1}"#)
            .await;
        assert_subscribed(&stalled.next_json().await, "px.eu", json!(1));
        // 8 MB: more than loopback's socket buffers absorb, so most of it meets the outbox.
        const UPDATES: usize = 8_000;
        let pad = "p".repeat(1_000);
        publish_all(&server, "px.eu", UPDATES, |i| {
            json!({"sym": format!("s{}", i % 10), "v": i, "pad": pad})
        })
        .await;
        // The last update published is the last one queued: conflation moves the newest to the back.
        let frames = drain(&mut stalled, |frame| frame["data"]["v"] == UPDATES - 1).await;
        let mut newest: HashMap<String, u64> = HashMap::new();
        let mut last_offset = 0;
        for frame in &frames {
            assert_eq!(frame["type"], "message", "{frame}");
            let offset = frame["offset"].as_u64().unwrap();
            assert!(offset > last_offset, "offsets only grow: {offset} after {last_offset}");
            last_offset = offset;
            let sym = frame["data"]["sym"].as_str().unwrap().to_owned();
            newest.insert(sym, frame["data"]["v"].as_u64().unwrap());
        }
        assert!(
            frames.len() < UPDATES,
            "a stalled client receives fewer than the {UPDATES} updates: {}",
            frames.len()
        );
        for key in 0..10u64 {
            let v = newest[&format!("s{key}")];
            assert_eq!(
                v,
                UPDATES as u64 - 10 + key,
                "the last value seen for s{key} is its newest"
            );
        }
        let stats = server.stats().await;
        assert_eq!(common_slow_closes(&stats), 0, "conflation closed nobody: {stats}");
        let namespace = &stats["namespaces"][1];
        assert_eq!(namespace["namespace"], "px.>", "{stats}");
        assert_eq!(
            namespace["conflated"].as_u64().unwrap() + frames.len() as u64,
            UPDATES as u64,
            "every update was delivered or conflated, and counted: {stats}"
        );
        assert_eq!(namespace["deliveries"], UPDATES as u64, "{stats}");
    })
    .await
}

fn common_slow_closes(stats: &Value) -> u64 {
    stats["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|shard| shard["slow_consumer_closes"].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn drop_oldest_sends_gaps_that_exactly_cover_what_was_dropped() {
    watchdog(async {
        let config = namespace_config(
            "drop",
            "[[namespaces]]\npattern = \"feed.>\"\nslow_consumer = \"drop_oldest\"\n",
        );
        let server = Server::start(&[
            "--config",
            config.to_str().unwrap(),
            "--outbox-frames-max",
            "32",
        ])
        .await;
        let mut stalled = RawWs::connect_ready_small_buffer(server.ws, 4096).await;
        stalled
            .send_text(r#"{"type":"subscribe","channel":"feed.1","id":1}"#)
            .await;
        assert_subscribed(&stalled.next_json().await, "feed.1", json!(1));
        const MESSAGES: u64 = 8_000;
        let pad = "d".repeat(1_000);
        publish_all(
            &server,
            "feed.1",
            MESSAGES as usize,
            |i| json!({"i": i, "pad": pad}),
        )
        .await;
        let frames = drain(&mut stalled, |frame| {
            frame["offset"] == MESSAGES || frame["to"] == MESSAGES
        })
        .await;
        // Messages and gaps together account for every offset once, in order.
        let mut next = 1;
        let mut gaps = 0;
        let mut gapped = 0;
        for frame in &frames {
            match frame["type"].as_str().unwrap() {
                "message" => {
                    assert_eq!(frame["offset"], next, "{frame}");
                    next += 1;
                }
                "gap" => {
                    assert_eq!(frame["channel"], "feed.1", "{frame}");
                    assert_eq!(frame["from"], next, "{frame}");
                    let to = frame["to"].as_u64().unwrap();
                    assert!(to >= next, "{frame}");
                    gapped += to + 1 - next;
                    next = to + 1;
                    gaps += 1;
                }
                other => panic!("unexpected {other}: {frame}"),
            }
        }
        assert_eq!(next, MESSAGES + 1, "every offset accounted for");
        assert!(gaps > 0, "a stalled client must have been sent a gap");
        let stats = server.stats().await;
        assert_eq!(common_slow_closes(&stats), 0);
        assert_eq!(
            stats["namespaces"][1],
            json!({"namespace": "feed.>", "deliveries": MESSAGES, "drops": gapped,
                   "conflated": 0, "slow_consumer_closes": 0}),
            "the drops counted are the offsets the gaps named"
        );
    })
    .await
}

#[tokio::test]
async fn a_critical_event_overtakes_a_backlog_of_normal_ones_on_another_channel() {
    watchdog(async {
        let server = Server::start(&[
            "--outbox-frames-max",
            "5000",
            "--outbox-bytes-max",
            "33554432",
        ])
        .await;
        let mut stalled = RawWs::connect_ready_small_buffer(server.ws, 4096).await;
        for (id, channel) in [(1, "bulk.1"), (2, "alert.1")] {
            stalled
                .send_text(&format!(
                    r#"{{"type":"subscribe","channel":"{channel}","id":{id}}}"#
                ))
                .await;
            assert_subscribed(&stalled.next_json().await, channel, json!(id));
        }
        // 8 MB of bulk: more than loopback's socket buffers absorb, so a backlog forms.
        const BULK: usize = 2_000;
        let pad = "b".repeat(4_000);
        publish_all(&server, "bulk.1", BULK, |i| json!({"i": i, "pad": pad})).await;
        let reply = server
            .post(
                "/v1/publish",
                &json!({"channel": "alert.1", "data": "fire", "priority": "critical"}).to_string(),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let frames = drain(&mut stalled, |frame| frame["offset"] == BULK).await;
        let alert_at = frames
            .iter()
            .position(|frame| frame["channel"] == "alert.1")
            .expect("the alert arrives");
        let bulk: Vec<u64> = frames
            .iter()
            .filter(|frame| frame["channel"] == "bulk.1")
            .map(|frame| frame["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(
            bulk,
            (1..=BULK as u64).collect::<Vec<_>>(),
            "bulk in order, whole"
        );
        let overtaken = frames.len() - 1 - alert_at;
        assert!(
            overtaken > 0,
            "the alert overtook the queued bulk messages: it came {alert_at}th of {}",
            frames.len()
        );
    })
    .await
}

#[tokio::test]
async fn overlapping_subscriptions_that_recover_deliver_each_missed_message_once() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut first = Client::connect(&server).await;
        let epoch = first.hello["epoch"].as_str().unwrap().to_owned();
        first.subscribe("ov.1", 1).await;
        first.subscribe("ov.*", 2).await;
        server.publish("ov.1", &json!(1)).await;
        let seen = first.recv().await;
        assert_message(&seen, "ov.1", 1, &json!(1));
        first
            .expect_silence("delivered once through two patterns")
            .await;
        let last_seq = seen["seq"].as_u64().unwrap();
        drop(first);
        server
            .publish_batch(&[("ov.1", json!(2)), ("ov.2", json!(3)), ("ov.1", json!(4))])
            .await;
        let mut again = Client::connect(&server).await;
        let exact = subscribe_since(&mut again, "ov.1", json!({"epoch": epoch, "offset": 1})).await;
        assert_eq!(exact["recovered"], true, "{exact}");
        assert_message(&again.recv().await, "ov.1", 2, &json!(2));
        assert_message(&again.recv().await, "ov.1", 3, &json!(4));
        let wild =
            subscribe_since(&mut again, "ov.*", json!({"epoch": epoch, "seq": last_seq})).await;
        assert_eq!(wild["recovered"], true, "{wild}");
        assert_message(&again.recv().await, "ov.2", 1, &json!(3));
        again
            .expect_silence("ov.1's missed messages came once, through ov.1")
            .await;
        server.publish("ov.1", &json!(5)).await;
        assert_message(&again.recv().await, "ov.1", 4, &json!(5));
        again.expect_silence("and live ones once too").await;
    })
    .await
}
