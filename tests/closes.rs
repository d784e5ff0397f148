//! Pins down that closes arrive whole: a connection closed while a frame is half written gets
//! the rest of that frame, then the close frame and nothing after (4008 for a slow consumer,
//! 1001 at SIGTERM, 1002 for a protocol violation), or, when its socket cannot take the rest
//! within `close_timeout_ms`, the end of the TCP stream without a close frame, never close bytes
//! inside a cut-off message. Raw clients with small windows stall until the server must close
//! them, then read their stream to its end with the strict reader of `common::raw`. A client
//! that closes first and then stops reading is cut at `close_timeout_ms` too.

mod common;

use std::time::{Duration, Instant};

use common::raw::{unmasked, Ending, Frame, RawWs, FIN, OP_CLOSE, OP_TEXT};
use common::{assert_message, assert_subscribed, watchdog, Server, QUIET, STEP};
use serde_json::{json, Value};

/// The stalled clients' receive buffer and segment size: each backs up into the server after
/// about 100 KB (see `RawWs::connect_ready_small_window`).
const RECV_BUFFER_BYTES: usize = 4096;
const SEGMENT_BYTES: u32 = 1024;

/// The outbox limits of the slow-consumer tests: a few 20 KB messages overflow it.
const SMALL_OUTBOX: [&str; 4] = ["--outbox-frames-max", "64", "--outbox-bytes-max", "65536"];

fn data(i: usize, pad_bytes: usize) -> Value {
    json!({"i": i, "pad": "x".repeat(pad_bytes)})
}

/// A counter summed over the shards of `/v1/stats`.
fn shard_sum(stats: &Value, key: &str) -> u64 {
    stats["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a shards list in {stats}"))
        .iter()
        .map(|shard| {
            shard[key]
                .as_u64()
                .unwrap_or_else(|| panic!("expected {key} in {shard}"))
        })
        .sum()
}

/// A client with a small window, subscribed to `channel`, that reads nothing more.
async fn stalled_subscriber(server: &Server, channel: &str) -> RawWs {
    let mut raw =
        RawWs::connect_ready_small_window(server.ws, RECV_BUFFER_BYTES, SEGMENT_BYTES).await;
    raw.send_text(&json!({"type": "subscribe", "channel": channel, "id": 1}).to_string())
        .await;
    assert_subscribed(&raw.next_json().await, channel, json!(1));
    raw
}

/// Publishes batches of `batch` messages padded to `pad_bytes` to `channel` until `/v1/stats`
/// counts more than `closes_before` slow-consumer closes; returns the first offset and the
/// messages published.
async fn flood_until_closed(
    server: &Server,
    channel: &str,
    closes_before: u64,
    (batch, pad_bytes): (usize, usize),
) -> (u64, usize) {
    const MESSAGES_MAX: usize = 4_000;
    let mut first = None;
    let mut published = 0;
    while published < MESSAGES_MAX {
        let messages: Vec<(&str, Value)> = (published..published + batch)
            .map(|i| (channel, data(i, pad_bytes)))
            .collect();
        let offsets = server.publish_batch(&messages).await;
        first.get_or_insert(offsets[0]);
        published += batch;
        if shard_sum(&server.stats().await, "slow_consumer_closes") > closes_before {
            return (first.unwrap(), published);
        }
    }
    panic!("expected a slow-consumer close on {channel} within {MESSAGES_MAX} messages");
}

/// `ending` ended at EOF with no frame cut short; else the failure shows how the cut frame
/// begins and ends (where close bytes inside it would be).
fn assert_ends_between_frames_at_eof(ending: &Ending, who: &str) {
    let cut = &ending.cut;
    assert!(
        cut.is_empty() && ending.error.is_none(),
        "{who}: expected the stream to end between frames, at EOF; it ended with {:?} after {} \
         frames and {} bytes of the next: {:?} .. {:?}",
        ending.error,
        ending.frames.len(),
        cut.len(),
        String::from_utf8_lossy(&cut[..cut.len().min(24)]),
        String::from_utf8_lossy(&cut[cut.len().saturating_sub(48)..])
    );
}

/// The text frames of `ending` are the deliveries of `channel` from `first` on, each exact and
/// none missing: a close drops frames only at the end. Returns how many there are.
fn assert_deliveries_in_order(
    ending: &Ending,
    channel: &str,
    first: u64,
    pad_bytes: usize,
) -> usize {
    let texts = ending.texts();
    for (i, got) in texts.iter().enumerate() {
        assert_message(got, channel, first + i as u64, &data(i, pad_bytes));
    }
    texts.len()
}

#[tokio::test]
async fn a_slow_consumer_reads_whole_frames_then_4008_then_eof_every_round() {
    const ROUNDS: u64 = 6;
    watchdog(async {
        let mut args = SMALL_OUTBOX.to_vec();
        args.extend(["--close-timeout-ms", "5000"]);
        let server = Server::start(&args).await;
        for round in 0..ROUNDS {
            let channel = format!("slow.{round}");
            let mut slow = stalled_subscriber(&server, &channel).await;
            let (first, published) =
                flood_until_closed(&server, &channel, round, (8, 20_000)).await;
            let ending = slow.read_strictly(STEP).await;
            assert_ends_between_frames_at_eof(&ending, &format!("round {round}"));
            assert_eq!(
                ending.close(),
                Some((4008, "slow consumer: outbox overflowed".to_string())),
                "round {round}: expected the last frame to be the close 4008, got {:?}",
                ending.frames.last().map(Frame::summary)
            );
            let delivered = assert_deliveries_in_order(&ending, &channel, first, 20_000);
            assert!(
                (1..published).contains(&delivered),
                "round {round}: expected some but not all of {published} messages before the \
                 close, got {delivered}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn busy_clients_at_sigterm_read_whole_frames_then_1001_then_eof() {
    const CLIENTS: usize = 50;
    const MESSAGES: usize = 8;
    const PAD_BYTES: usize = 64 * 1024;
    watchdog(async {
        let mut server = Server::start(&[
            "--outbox-frames-max",
            "4096",
            "--outbox-bytes-max",
            "16777216",
            "--close-timeout-ms",
            "5000",
            "--shutdown-timeout-ms",
            "8000",
        ])
        .await;
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(stalled_subscriber(&server, "busy.1").await);
        }
        // 512 KB for each: its socket takes a message and part of the next (a frame half
        // written), its outbox holds the rest.
        let batch: Vec<(&str, Value)> = (0..MESSAGES)
            .map(|i| ("busy.1", data(i, PAD_BYTES)))
            .collect();
        let first = server.publish_batch(&batch).await[0];
        let stats = server
            .poll_json("/v1/stats", |stats| {
                shard_sum(stats, "outbox_frames") >= (CLIENTS * (MESSAGES / 2)) as u64
            })
            .await;
        assert!(
            shard_sum(&stats, "outbox_frames") >= (CLIENTS * (MESSAGES / 2)) as u64,
            "expected every client to be behind with frames queued, got {stats}"
        );

        let started = Instant::now();
        let terminate = server.terminate(Duration::from_secs(8) + STEP);
        let readers = async {
            // Read only once the server has had time to start every close.
            tokio::time::sleep(QUIET).await;
            futures_util::future::join_all(
                clients.iter_mut().map(|client| client.read_strictly(STEP)),
            )
            .await
        };
        let (exit, endings) = tokio::join!(terminate, readers);
        for (client, ending) in endings.iter().enumerate() {
            assert_ends_between_frames_at_eof(ending, &format!("client {client}"));
            assert_eq!(
                ending.close(),
                Some((1001, "going away".to_string())),
                "client {client}: expected the last frame to be the close 1001, got {:?}",
                ending.frames.last().map(Frame::summary)
            );
            let delivered = assert_deliveries_in_order(ending, "busy.1", first, PAD_BYTES);
            assert!(
                (1..MESSAGES).contains(&delivered),
                "client {client}: expected some but not all of {MESSAGES} messages before the \
                 close, got {delivered}"
            );
        }
        assert_eq!(exit.code(), Some(0), "expected exit status 0, got {exit:?}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "expected the exit once every client answered its close, well within \
             --shutdown-timeout-ms 8000; took {:?}",
            started.elapsed()
        );
    })
    .await
}

#[tokio::test]
async fn a_protocol_violation_behind_a_half_written_frame_closes_1002_after_that_frame() {
    const MESSAGES: usize = 8;
    const PAD_BYTES: usize = 64 * 1024;
    watchdog(async {
        let server = Server::start(&["--close-timeout-ms", "5000"]).await;
        let mut client = stalled_subscriber(&server, "broken.1").await;
        let batch: Vec<(&str, Value)> = (0..MESSAGES)
            .map(|i| ("broken.1", data(i, PAD_BYTES)))
            .collect();
        let first = server.publish_batch(&batch).await[0];
        let stats = server
            .poll_json("/v1/stats", |stats| shard_sum(stats, "outbox_frames") >= 4)
            .await;
        assert!(
            shard_sum(&stats, "outbox_frames") >= 4,
            "expected the client to be behind with frames queued, got {stats}"
        );
        // An unmasked frame: the server reads it while its writes to this client are stuck.
        client.send(&unmasked(FIN | OP_TEXT, b"{}")).await;
        let ending = client.read_strictly(STEP).await;
        assert_ends_between_frames_at_eof(&ending, "the violator");
        let (code, reason) = ending.close().unwrap_or_else(|| {
            panic!(
                "expected the last frame to be a close, got {:?}",
                ending.frames.last().map(Frame::summary)
            )
        });
        assert_eq!(code, 1002, "expected close 1002, got {code} {reason:?}");
        let delivered = assert_deliveries_in_order(&ending, "broken.1", first, PAD_BYTES);
        assert!(
            (1..MESSAGES).contains(&delivered),
            "expected some but not all of {MESSAGES} messages before the close, got {delivered}"
        );
    })
    .await
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_without_a_close_after_close_timeout_ms() {
    const CLOSE_TIMEOUT: Duration = Duration::from_millis(2000);
    // Each message is larger than what the kernels buffer for the client, so the rest of the
    // one the socket is taking when the outbox overflows cannot go before the deadline.
    const PAD_BYTES: usize = 200_000;
    watchdog(async {
        let mut args = SMALL_OUTBOX.to_vec();
        args.extend(["--close-timeout-ms", "2000"]);
        let server = Server::start(&args).await;
        let mut deaf = stalled_subscriber(&server, "deaf.1").await;
        let (first, published) = flood_until_closed(&server, "deaf.1", 0, (4, PAD_BYTES)).await;
        let closing = Instant::now();
        let stats = server
            .poll_json("/v1/stats", |stats| shard_sum(stats, "connections") == 0)
            .await;
        let gone_after = closing.elapsed();
        assert_eq!(
            shard_sum(&stats, "connections"),
            0,
            "expected the server to end the connection at close_timeout_ms, got {stats}"
        );
        // The close was requested a little before `closing` (a batch or two earlier, on a busy
        // machine): ending at once would show as nearly nothing.
        assert!(
            gone_after >= CLOSE_TIMEOUT / 2,
            "expected the server to wait close_timeout_ms for the socket, it ended the \
             connection after {gone_after:?}"
        );

        // The kernels still hold what the server wrote: whole frames, if any, then what the
        // socket took of the frame it was writing, and no close frame.
        let ending = deaf.read_strictly(STEP).await;
        assert_eq!(
            ending.close(),
            None,
            "expected no close frame when the socket could not take the rest in time"
        );
        let delivered = assert_deliveries_in_order(&ending, "deaf.1", first, PAD_BYTES);
        assert!(
            delivered < published,
            "expected the connection cut before all {published} messages, got {delivered}"
        );
        assert_cut_message(&ending.cut);
    })
    .await
}

/// `cut` is the start of one text frame of a `message` delivery: its header, then fewer
/// payload bytes than it declares, all of them JSON text (no close bytes inside). With messages
/// larger than the kernels buffer, the stream cannot end between frames.
fn assert_cut_message(cut: &[u8]) {
    assert!(
        cut.len() >= 10,
        "expected the stream to end inside a large frame, got {cut:?} after the last whole one"
    );
    assert_eq!(cut[0], FIN | OP_TEXT, "expected the cut frame to be text");
    let second = cut[1];
    let header = match second & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let declared = match header {
        4 => u16::from_be_bytes([cut[2], cut[3]]) as usize,
        10 => u64::from_be_bytes(cut[2..10].try_into().unwrap()) as usize,
        _ => usize::from(second & 0x7f),
    };
    let payload = &cut[header..];
    assert!(
        payload.len() < declared,
        "expected a frame cut short, got all {declared} bytes"
    );
    let start = br#"{"type":"message","#;
    let common = payload.len().min(start.len());
    assert_eq!(
        &payload[..common],
        &start[..common],
        "expected the cut frame to be a delivery"
    );
    if let Some(at) = payload.iter().position(|b| !b.is_ascii_graphic()) {
        let around = &payload[at.saturating_sub(16)..payload.len().min(at + 48)];
        panic!(
            "expected only JSON text in the cut frame, got byte {:#04x} at {at} of {}: {:?}",
            payload[at],
            payload.len(),
            String::from_utf8_lossy(around)
        );
    }
}

#[tokio::test]
async fn a_client_that_closes_first_and_stops_reading_is_cut_at_close_timeout_ms() {
    const PAD_BYTES: usize = 200_000;
    watchdog(async {
        let server = Server::start(&["--close-timeout-ms", "1000"]).await;
        let mut deaf = stalled_subscriber(&server, "gone.1").await;
        // Three large messages back up behind the client's small window, within the outbox's
        // limits (no 4008): the server's answer to its close waits behind them.
        let messages: Vec<(&str, Value)> = (0..3).map(|i| ("gone.1", data(i, PAD_BYTES))).collect();
        server.publish_batch(&messages).await;
        let stats = server
            .poll_json("/v1/stats", |stats| shard_sum(stats, "outbox_bytes") > 0)
            .await;
        assert!(
            shard_sum(&stats, "outbox_bytes") > 0,
            "expected the deliveries to back up in the outbox, got {stats}"
        );
        deaf.send(&common::raw::masked(FIN | OP_CLOSE, &1000u16.to_be_bytes()))
            .await;
        let closing = Instant::now();
        let stats = server
            .poll_json("/v1/stats", |stats| shard_sum(stats, "connections") == 0)
            .await;
        assert_eq!(
            shard_sum(&stats, "connections"),
            0,
            "expected the server to end a connection whose peer closed and stopped reading \
             within close_timeout_ms, got {stats} after {:?}",
            closing.elapsed()
        );
    })
    .await
}
