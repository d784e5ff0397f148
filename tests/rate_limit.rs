//! The inbound rate limit per connection, against the real binary with small limits set by
//! flags: a client flooding commands gets exactly one `rate_limited` error (its id echoed), its
//! later refused commands are dropped without a reply, and the run's refusal that reaches
//! `--inbound-refusals-max` closes it with 4029 and a reason, while a subscriber on the same
//! server receives every message published meanwhile, each offset once; the refusals and the
//! close are counted in `/v1/stats` and `/metrics`. A client that sends its burst and then keeps
//! to its rate gets every reply and no error, and one that pauses after `rate_limited` is served
//! again (and told again if it overruns again).

mod common;

use std::time::Duration;

use common::{assert_error, assert_message, assert_recent_ms, watchdog, Client, Server, STEP};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn ping(id: u64) -> Message {
    Message::text(json!({"type": "ping", "id": id}).to_string())
}

/// Asserts `got` is exactly the `pong` for `id`.
fn assert_pong(got: &Value, id: u64) {
    let time = assert_recent_ms(&got["server_time_ms"], "pong server_time_ms");
    assert_eq!(
        got,
        &json!({"type": "pong", "id": id, "server_time_ms": time}),
        "expected the pong of ping {id}"
    );
}

/// Asserts `got` is exactly the `rate_limited` error for `id` under a limit of `per_s`, `burst`
/// and `refusals_max`, saying to retry within a token's time; returns that wait in ms.
fn assert_rate_limited(got: &Value, id: Value, per_s: u64, burst: u64, refusals_max: u64) -> u64 {
    assert_error(got, id, "rate_limited");
    let message = got["message"].as_str().expect("checked by assert_error");
    let retry_ms: u64 = message
        .split("(retry in ")
        .nth(1)
        .and_then(|rest| rest.split(" ms)").next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("expected `(retry in N ms)` in {message:?}"));
    assert!(
        (1..=1_000 / per_s).contains(&retry_ms),
        "expected a retry within one token's time (1000/{per_s} ms), got {message:?}"
    );
    assert_eq!(
        message,
        format!(
            "rate limited: messages are limited to {per_s}/s in bursts of up to {burst}; this \
             one was dropped, as are the next until a token is free (retry in {retry_ms} ms); \
             {refusals_max} refused in a row close the connection with 4029"
        )
    );
    retry_ms
}

/// Sends `pings` (each as its own frame) in one write.
async fn send_at_once(client: &mut Client, ids: impl Iterator<Item = u64>) {
    for id in ids {
        client.ws.feed(ping(id)).await.expect("queue a ping");
    }
    client.ws.flush().await.expect("send the pings");
}

/// The sum over shards of the `/v1/stats` counter `key`.
fn shard_sum(stats: &Value, key: &str) -> u64 {
    stats["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("expected shards in {stats}"))
        .iter()
        .map(|shard| {
            shard[key]
                .as_u64()
                .unwrap_or_else(|| panic!("expected an integer {key} in {shard}"))
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooder_is_told_once_then_closed_with_4029_and_a_subscriber_misses_nothing() {
    // One token a second: the flood arrives within milliseconds, so no token comes back
    // during it and the run of refusals is never broken.
    const BURST: u64 = 5;
    const REFUSALS_MAX: u64 = 20;
    const AFTER_CLOSE: u64 = 30;
    const MESSAGES: u64 = 100;
    watchdog(async {
        let server = Server::start(&[
            "--inbound-messages-per-s",
            "1",
            "--inbound-messages-burst",
            &BURST.to_string(),
            "--inbound-refusals-max",
            &REFUSALS_MAX.to_string(),
        ])
        .await;
        let mut calm = Client::connect(&server).await;
        calm.subscribe("calm.1", 1).await;
        let mut flooder = Client::connect(&server).await;

        let flood = async {
            send_at_once(&mut flooder, 1..=BURST + REFUSALS_MAX + AFTER_CLOSE).await;
            flooder
        };
        let publish = async {
            let datas = (0..MESSAGES).map(|i| json!({ "i": i })).collect();
            server.publish_many("calm.1", datas).await
        };
        let (mut flooder, offsets) = tokio::join!(flood, publish);

        for id in 1..=BURST {
            assert_pong(&flooder.recv().await, id);
        }
        let told = flooder.recv().await;
        assert_rate_limited(&told, json!(BURST + 1), 1, BURST, REFUSALS_MAX);
        // Nothing else (no reply to the dropped ones, nothing after the close) but the close.
        let next = tokio::time::timeout(STEP, flooder.ws.next())
            .await
            .expect("expected the close within a step");
        match next {
            Some(Ok(Message::Close(Some(close)))) => assert_eq!(
                (u16::from(close.code), close.reason.as_str()),
                (4029, "rate limit: too many messages refused in a row")
            ),
            other => panic!("expected close 4029 right after rate_limited, got {other:?}"),
        }

        for (i, offset) in offsets.into_iter().enumerate() {
            assert_message(&calm.recv().await, "calm.1", offset, &json!({ "i": i }));
        }
        calm.expect_silence("each message once").await;
        calm.ping(2).await;

        let stats = server
            .poll_json("/v1/stats", |stats| {
                shard_sum(stats, "rate_limit_closes") == 1
            })
            .await;
        assert_eq!(shard_sum(&stats, "rate_limit_closes"), 1, "{stats}");
        assert_eq!(
            shard_sum(&stats, "rate_limited_messages"),
            REFUSALS_MAX,
            "the told one, the dropped ones and the closing one; none after the close: {stats}"
        );
        let metrics = server.get("/metrics").await.body;
        let shard = flooder.shard();
        for line in [
            format!("corecast_rate_limit_closes_total{{shard=\"{shard}\"}} 1"),
            format!("corecast_rate_limited_messages_total{{shard=\"{shard}\"}} {REFUSALS_MAX}"),
        ] {
            assert!(
                metrics.lines().any(|got| got == line),
                "no {line:?} in\n{metrics}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn a_client_within_its_burst_and_rate_never_gets_an_error() {
    const PER_S: u64 = 20;
    const BURST: u64 = 4;
    const STEADY: u64 = 30;
    watchdog(async {
        let server = Server::start(&[
            "--inbound-messages-per-s",
            &PER_S.to_string(),
            "--inbound-messages-burst",
            &BURST.to_string(),
        ])
        .await;
        let mut client = Client::connect(&server).await;
        send_at_once(&mut client, 1..=BURST).await;
        for id in 1..=BURST {
            assert_pong(&client.recv().await, id);
        }
        // Refilled; then one message per token's time, never faster (late ticks are not
        // caught up), each reply awaited.
        tokio::time::sleep(Duration::from_millis(1_000 * BURST / PER_S)).await;
        let mut ticks = tokio::time::interval(Duration::from_millis(1_000 / PER_S));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for id in BURST + 1..=BURST + STEADY {
            ticks.tick().await;
            client.ping(id).await;
        }
        client.expect_silence("no error, nothing unasked").await;
        let stats = server.stats().await;
        assert_eq!(shard_sum(&stats, "rate_limited_messages"), 0, "{stats}");
    })
    .await
}

#[tokio::test]
async fn a_client_that_pauses_after_rate_limited_is_served_again() {
    const PER_S: u64 = 10;
    const BURST: u64 = 3;
    const REFUSALS_MAX: u64 = 50;
    watchdog(async {
        let server = Server::start(&[
            "--inbound-messages-per-s",
            &PER_S.to_string(),
            "--inbound-messages-burst",
            &BURST.to_string(),
            "--inbound-refusals-max",
            &REFUSALS_MAX.to_string(),
        ])
        .await;
        let mut client = Client::connect(&server).await;
        send_at_once(&mut client, 1..=BURST).await;
        client
            .send(json!({"type": "subscribe", "channel": "back.1", "id": "sub"}))
            .await;
        client.send(json!({"type": "ping", "id": 99})).await;
        for id in 1..=BURST {
            assert_pong(&client.recv().await, id);
        }
        let told = client.recv().await;
        let retry_ms = assert_rate_limited(&told, json!("sub"), PER_S, BURST, REFUSALS_MAX);
        client
            .expect_silence("the second refusal of the run is dropped without a reply")
            .await;

        // Paused for longer than told (expect_silence waited too): served again. The refused
        // subscribe was not executed: nothing comes of a publish before the new one.
        tokio::time::sleep(Duration::from_millis(retry_ms)).await;
        server.publish("back.1", &json!("unseen")).await;
        client
            .expect_silence("the refused subscribe was dropped")
            .await;
        client.subscribe("back.1", 4).await;
        let offset = server.publish("back.1", &json!("again")).await;
        assert_message(&client.recv().await, "back.1", offset, &json!("again"));

        // With the bucket full again, a new run is told again.
        tokio::time::sleep(Duration::from_millis(1_000 * BURST / PER_S)).await;
        send_at_once(&mut client, 10..=10 + BURST).await;
        for id in 10..10 + BURST {
            assert_pong(&client.recv().await, id);
        }
        let told = client.recv().await;
        assert_rate_limited(&told, json!(10 + BURST), PER_S, BURST, REFUSALS_MAX);
    })
    .await
}
