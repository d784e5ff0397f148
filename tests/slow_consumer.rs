//! Pins down slow-consumer handling (PROTOCOL.md section 2, close 4008): a subscriber that stops
//! reading has its socket closed once its outbox overflows, while a subscriber that reads gets every
//! message in order, and `/v1/stats` counts the close — by publishing thousands of one-KiB messages
//! to a raw client that never reads and a real client that does.

mod common;

use std::time::Duration;

use common::raw::{parse_frame, read_until_closed, RawWs, OP_CLOSE, OP_TEXT};
use common::{assert_message, assert_subscribed, watchdog, Client, Server, STEP};
use serde_json::{json, Value};

/// Messages published at least (1 KiB each)...
const MESSAGES_MIN: usize = 3_000;
/// ...and at most, as the server's kernel send buffer (up to `net.ipv4.tcp_wmem` max, 4 MB here)
/// fills before its outbox overflows.
const MESSAGES_MAX: usize = 20_000;
/// Longest the publishing goes on, leaving the rest of the watchdog for the checks.
const PUBLISH_FOR_MAX: Duration = Duration::from_secs(15);
/// Messages per HTTP batch: below `--outbox-frames-max` and (in bytes) `--outbox-bytes-max`, so a
/// client that keeps reading never has more than one batch queued and is never taken for a slow one.
const BATCH: usize = 16;

fn data(i: usize) -> Value {
    json!({"i": i, "pad": "x".repeat(1000)})
}

#[tokio::test]
async fn reader_gets_everything_and_the_stalled_subscriber_is_closed_4008() {
    watchdog(async {
        let server = Server::start(&[
            "--outbox-frames-max",
            "64",
            "--outbox-bytes-max",
            "65536",
            "--publish-body-bytes-max",
            "1048576",
            "--publish-batch-max",
            "100",
        ])
        .await;

        // The stalled subscriber: subscribes, sees the confirmation, then never reads again. Its
        // receive buffer is pinned small, or the kernel would grow it by tens of MB first.
        let mut slow = RawWs::connect_ready_small_buffer(server.ws, 4096).await;
        slow.send_text(r#"{"type":"subscribe","channel":"flood.1","id":1}"#)
            .await;
        assert_subscribed(&slow.next_json().await, "flood.1", json!(1));

        let mut fast = Client::connect(&server).await;
        fast.subscribe("flood.1", 1).await;

        // Publish in small batches, reading each batch from the fast subscriber before the next
        // (lock-step: it is never more than one batch behind). Kernel socket buffers on loopback
        // can absorb several MB for the stalled one, so after MESSAGES_MIN keep going until the
        // server reports the close, up to MESSAGES_MAX.
        let started = std::time::Instant::now();
        let mut first_offset = None;
        let mut published = 0;
        while published < MESSAGES_MAX && started.elapsed() < PUBLISH_FOR_MAX {
            let end = published + BATCH;
            let batch: Vec<(&str, Value)> =
                (published..end).map(|i| ("flood.1", data(i))).collect();
            let offsets = server.publish_batch(&batch).await;
            let first = *first_offset.get_or_insert(offsets[0]);
            for i in published..end {
                let got = fast.recv().await;
                assert_message(&got, "flood.1", first + i as u64, &data(i));
            }
            published = end;
            if published >= MESSAGES_MIN
                && published % (BATCH * 32) == 0
                && slow_consumer_closes(&server.stats().await) >= 1
            {
                break;
            }
        }
        fast.ping(2).await;

        // The stalled socket must have been closed by the server: reading it now drains what the
        // kernel buffered and then ends (EOF or reset) instead of waiting for more.
        let mut bytes = std::mem::take(&mut slow.buf);
        bytes.extend(read_until_closed(&mut slow.stream, STEP).await);
        let mut frames = 0usize;
        let mut close = None;
        while let Some(frame) = parse_frame(&mut bytes) {
            match frame.opcode {
                OP_TEXT => frames += 1,
                OP_CLOSE => {
                    close = Some(frame.close_code());
                    break;
                }
                _ => {}
            }
        }
        assert!(
            frames < published,
            "expected the stalled subscriber to be cut off before all {published} messages, \
             it was sent {frames}"
        );
        if let Some((code, reason)) = close {
            assert_eq!(
                code, 4008,
                "expected close 4008 for a slow consumer, got {code} {reason:?}"
            );
        }

        let stats = server
            .poll_json("/v1/stats", |stats| slow_consumer_closes(stats) >= 1)
            .await;
        assert!(
            slow_consumer_closes(&stats) >= 1,
            "expected /v1/stats to count the slow-consumer close after {published} messages, \
             got {stats}"
        );
    })
    .await
}

fn slow_consumer_closes(stats: &Value) -> u64 {
    stats["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .filter_map(|shard| shard["slow_consumer_closes"].as_u64())
                .sum()
        })
        .unwrap_or_default()
}

/// A subscriber that stops reading for a while and then catches up gets every message whole and
/// in order: the server's direct writes fill its socket, the frame that does not fit is split
/// between the socket and the outbox, and everything after it queues behind the rest. 8 MB is
/// more than the loopback socket buffers hold (its receive buffer is pinned small, the server's
/// send buffer grows to `net.ipv4.tcp_wmem`'s 4 MB at most), and the outbox is large enough that
/// it is never taken for a slow consumer.
#[tokio::test]
async fn a_subscriber_that_catches_up_gets_split_frames_whole_and_in_order() {
    const MESSAGES: usize = 200;
    const BATCH: usize = 20;
    watchdog(async {
        let server = Server::start(&[
            "--outbox-frames-max",
            "4096",
            "--outbox-bytes-max",
            "16777216",
            "--publish-body-bytes-max",
            "1048576",
            "--publish-batch-max",
            "100",
        ])
        .await;
        let mut late = RawWs::connect_ready_small_buffer(server.ws, 4096).await;
        late.send_text(r#"{"type":"subscribe","channel":"late.1","id":1}"#)
            .await;
        assert_subscribed(&late.next_json().await, "late.1", json!(1));
        let data = |i: usize| json!({"i": i, "pad": "y".repeat(40_000 + i)});
        let mut first_offset = None;
        for start in (0..MESSAGES).step_by(BATCH) {
            let batch: Vec<(&str, Value)> = (start..start + BATCH)
                .map(|i| ("late.1", data(i)))
                .collect();
            let offsets = server.publish_batch(&batch).await;
            first_offset.get_or_insert(offsets[0]);
        }
        // Answered behind what the outbox held when the command arrived. A publish's HTTP
        // reply means it was sequenced, not yet fanned out by the shard, so the last messages
        // may still be in the shard's queue then and come after the stats reply.
        late.send_text(r#"{"type":"get_stats","id":2}"#).await;
        let first = first_offset.unwrap();
        let mut stats = None;
        let mut i = 0;
        while i < MESSAGES {
            let got = late.next_json().await;
            if got["type"] == "stats" && stats.is_none() {
                stats = Some(got);
                continue;
            }
            assert_message(&got, "late.1", first + i as u64, &data(i));
            i += 1;
        }
        let stats = match stats {
            Some(stats) => stats,
            None => late.next_json().await,
        };
        assert_eq!(stats["type"], "stats", "{stats}");
        assert!(
            stats["outbox_bytes"].as_u64().unwrap() > 0,
            "expected part of the 8 MB to wait in the outbox behind a full socket: {stats}"
        );
        // Every frame counted once, whichever way it went: connected, subscribed, the messages
        // (split ones included) and the first stats reply.
        late.send_text(r#"{"type":"get_stats","id":3}"#).await;
        let stats = late.next_json().await;
        assert_eq!(stats["messages_out"], MESSAGES + 3, "{stats}");
        assert_eq!(slow_consumer_closes(&server.stats().await), 0);
    })
    .await
}
