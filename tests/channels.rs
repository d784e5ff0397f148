//! Channels that come and go, and batches that are all or nothing, against the real binary: a
//! table at `channels_max` refuses a new channel with 503 `channels_full` until the sweep
//! forgets channels whose history expired and that nobody subscribes to, then reuses their
//! places, while a channel with a subscriber is kept and its offsets continue; a client that
//! comes back to a forgotten (and re-created) channel is told `history_trimmed`, never handed
//! the new life's offsets as if they followed its own; and a batch refused at `channels_max` or
//! at a tenant's rate publishes none of its messages (a subscriber receives nothing, and the
//! channels' offsets in `/v1/history` do not move).

mod common;

use std::time::Instant;

use common::{assert_http_error_body, assert_message, watchdog, Client, HttpReply, Server};
use serde_json::{json, Value};

/// A server with a table of `channels_max`, one second of history and no `$sys.stats`
/// channel of its own.
async fn small_table(channels_max: &str) -> Server {
    Server::start(&[
        "--channels-max",
        channels_max,
        "--history-age-s",
        "1",
        "--sys-stats-interval-ms",
        "0",
    ])
    .await
}

/// Waits until the sweep has forgotten `total` channels in all; returns `/v1/stats`.
async fn forgotten(server: &Server, total: u64) -> Value {
    let stats = server
        .poll_json("/v1/stats", |stats| {
            stats["ingest"]["channels_forgotten_total"] == total
        })
        .await;
    assert_eq!(
        stats["ingest"]["channels_forgotten_total"], total,
        "expected {total} channels forgotten once their history expired: {stats}"
    );
    stats
}

/// The latest offset `/v1/history` gives `channel` (0: none, or forgotten).
async fn offset_of(server: &Server, channel: &str, tenant: Option<&str>) -> u64 {
    let tenant = tenant.map_or(String::new(), |tenant| format!("&tenant={tenant}"));
    let reply = server
        .get(&format!("/v1/history?channel={channel}{tenant}"))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("an offset in {}", reply.body))
}

/// Asserts a refused batch: `status`, `code`, and a message saying nothing was published.
fn assert_refused_batch(reply: &HttpReply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(assert_http_error_body(reply, "a refused batch"), code);
    let message = reply.json()["error"]["message"].to_string();
    assert!(
        message.contains("nothing of the batch was published"),
        "{message}"
    );
}

fn batch(messages: impl IntoIterator<Item = Value>) -> String {
    json!({"messages": messages.into_iter().collect::<Vec<_>>()}).to_string()
}

async fn subscribe_since(client: &mut Client, channel: &str, since: Value) -> Value {
    let reply = client
        .request(json!({"type": "subscribe", "channel": channel, "id": 9, "since": since}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["channel"], channel, "{reply}");
    reply
}

#[tokio::test]
async fn a_full_table_takes_new_channels_again_once_expired_ones_are_forgotten() {
    watchdog(async {
        let server = small_table("3").await;
        let mut subscriber = Client::connect(&server).await;
        subscriber.subscribe("kept", 1).await;
        assert_eq!(server.publish("kept", &json!(1)).await, 1);
        assert_message(&subscriber.recv().await, "kept", 1, &json!(1));
        assert_eq!(server.publish("a", &json!(2)).await, 1);
        assert_eq!(server.publish("b", &json!(3)).await, 1);

        let refused = server
            .post(
                "/v1/publish",
                &json!({"channel": "c", "data": 4}).to_string(),
            )
            .await;
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(
            assert_http_error_body(&refused, "a fourth channel"),
            "channels_full"
        );
        let stats = server.stats().await;
        assert_eq!(stats["ingest"]["channels"], 3, "{stats}");
        assert_eq!(stats["ingest"]["channels_forgotten_total"], 0, "{stats}");

        let stats = forgotten(&server, 2).await;
        assert_eq!(
            stats["ingest"]["channels"], 1,
            "kept has a subscriber: {stats}"
        );
        assert_eq!(
            server.publish("c", &json!(4)).await,
            4,
            "a new channel after some were forgotten starts at its seq (the refusal took none)"
        );
        assert_eq!(
            server.publish("a", &json!(5)).await,
            5,
            "a again: a new life"
        );
        assert_eq!(
            server.publish("kept", &json!(6)).await,
            2,
            "a channel with a subscriber keeps its offsets, though its history expired"
        );
        assert_message(&subscriber.recv().await, "kept", 2, &json!(6));
        let metrics = server.get("/metrics").await;
        for line in ["corecast_channels 3", "corecast_channels_forgotten_total 2"] {
            assert!(
                metrics.body.lines().any(|got| got == line),
                "no {line:?} in\n{}",
                metrics.body
            );
        }
    })
    .await
}

#[tokio::test]
async fn a_client_back_on_a_forgotten_and_recreated_channel_is_told_history_trimmed() {
    watchdog(async {
        let server = small_table("10").await;
        let mut first = Client::connect(&server).await;
        let epoch = first.hello["epoch"].as_str().unwrap().to_owned();
        first.subscribe("gone", 1).await;
        server.publish("gone", &json!(1)).await;
        let seen = first.recv().await;
        assert_message(&seen, "gone", 1, &json!(1));
        let seq = seen["seq"].as_u64().unwrap();
        drop(first);
        assert_eq!(
            server.publish("gone", &json!(2)).await,
            2,
            "missed by the client"
        );
        server.publish("other", &json!(3)).await;
        forgotten(&server, 2).await;

        let mut again = Client::connect(&server).await;
        for since in [
            json!({"epoch": epoch, "offset": 1}),
            json!({"epoch": epoch, "seq": seq}),
        ] {
            let reply = subscribe_since(&mut again, "gone", since.clone()).await;
            assert_eq!(reply["recovered"], false, "forgotten, {since}: {reply}");
            assert_eq!(reply["reason"], "history_trimmed", "{since}: {reply}");
            again.unsubscribe("gone", 2).await;
        }

        assert_eq!(
            server.publish("gone", &json!(4)).await,
            4,
            "re-created at seq 4: its offsets start there, not at 3"
        );
        for since in [
            json!({"epoch": epoch, "offset": 1}),
            json!({"epoch": epoch, "offset": 2}),
            json!({"epoch": epoch, "seq": seq}),
        ] {
            let reply = subscribe_since(&mut again, "gone", since.clone()).await;
            assert_eq!(reply["recovered"], false, "re-created, {since}: {reply}");
            assert_eq!(reply["reason"], "history_trimmed", "{since}: {reply}");
            again
                .expect_silence("nothing of the new life is passed off as missed")
                .await;
            again.unsubscribe("gone", 2).await;
        }
        let reply = subscribe_since(&mut again, "gone", json!({"epoch": epoch, "offset": 4})).await;
        assert_eq!(
            reply["recovered"], true,
            "a position in the new life: {reply}"
        );
        server.publish("gone", &json!(5)).await;
        assert_message(&again.recv().await, "gone", 5, &json!(5));
    })
    .await
}

#[tokio::test]
async fn a_batch_that_does_not_fit_channels_max_publishes_none_of_its_messages() {
    watchdog(async {
        let server = Server::start(&["--channels-max", "20", "--sys-stats-interval-ms", "0"]).await;
        let mut subscriber = Client::connect(&server).await;
        subscriber.subscribe("b.*", 1).await;
        assert_eq!(server.publish("b.1", &json!(0)).await, 1);
        assert_message(&subscriber.recv().await, "b.1", 1, &json!(0));

        // The case: 1,000 messages over 40 channels, 19 places left.
        let too_many =
            batch((0..1_000).map(|n| json!({"channel": format!("b.{}", n % 40), "data": n})));
        let reply = server.post("/v1/publish/batch", &too_many).await;
        assert_refused_batch(&reply, 503, "channels_full");
        subscriber
            .expect_silence("nothing of the refused batch is delivered")
            .await;
        assert_eq!(offset_of(&server, "b.1", None).await, 1, "b.1 did not move");
        assert_eq!(
            offset_of(&server, "b.2", None).await,
            0,
            "b.2 was not created"
        );
        let stats = server.stats().await;
        assert_eq!(stats["ingest"]["published_total"], 1, "{stats}");
        assert_eq!(stats["ingest"]["channels"], 1, "{stats}");

        let fits: Vec<(&str, Value)> =
            vec![("b.1", json!(1)), ("b.2", json!(2)), ("b.1", json!(3))];
        assert_eq!(server.publish_batch(&fits).await, [2, 1, 3]);
        for (channel, offset, data) in [("b.1", 2, 1), ("b.2", 1, 2), ("b.1", 3, 3)] {
            assert_message(&subscriber.recv().await, channel, offset, &json!(data));
        }
    })
    .await
}

#[tokio::test]
async fn a_batch_over_a_tenants_publish_rate_publishes_none_of_its_messages() {
    watchdog(async {
        let server = Server::start(&["--tenant-publishes-per-s", "10"]).await;
        let of = |tenant: &str, count: usize| {
            batch((0..count).map(|n| json!({"tenant": tenant, "channel": "t", "data": n})))
        };
        let started = Instant::now();
        let reply = server.post("/v1/publish/batch", &of("acme", 10)).await;
        assert_eq!(reply.status, 200, "a second's worth: {reply:?}");
        let reply = server.post("/v1/publish/batch", &of("acme", 10)).await;
        assert!(
            started.elapsed().as_millis() < 1_000,
            "the bucket had no time to refill; the test machine is too slow for this check"
        );
        assert_refused_batch(&reply, 429, "rate_limited");
        assert_eq!(
            offset_of(&server, "t", Some("acme")).await,
            10,
            "none of the refused batch's messages was numbered"
        );
        let reply = server.post("/v1/publish/batch", &of("globex", 11)).await;
        assert_refused_batch(&reply, 413, "batch_too_large");
        assert_eq!(offset_of(&server, "t", Some("globex")).await, 0);
        let stats = server.stats().await;
        assert_eq!(
            stats["ingest"]["tenant_publishes_refused_total"], 21,
            "every message of both refused batches: {stats}"
        );
    })
    .await
}
