//! Pins the load generator's bytes against the server's own encoders: the floor's `connected`
//! greeting and message frames, and the publisher's message text, must be exactly what corecast
//! sends for the same publish, at every frame header size, or a comparison of the two would
//! measure different workloads. These tests live here, above both crates, because the bench
//! (`corecast-bench`) must not depend on the server; pure over bytes, they need no watchdog.

use corecast::ingest::{encode, Priority};
use corecast::msg::{Slow, Stamp};
use corecast_bench::formats::{connected_frame, message_frame, message_parts, write_data, Scanner};

#[test]
fn greeting_is_the_frame_corecast_sends() {
    let mut out = Vec::new();
    connected_frame(
        "floor-7",
        1_700_000_000_123,
        25,
        "00000000000000ff",
        &mut out,
    );
    let corecast = corecast::ws::command::connected_frame(
        "floor-7",
        None,
        0,
        1_700_000_000_123,
        25,
        "00000000000000ff",
    );
    assert_eq!(out, corecast);
    assert_eq!(
        &out[2..],
        br#"{"type":"connected","conn_id":"floor-7","shard":0,"server_time_ms":1700000000123,"heartbeat_s":25,"epoch":"00000000000000ff"}"#
    );
    assert!(Scanner::default().is_connected(&out[2..]));
}

#[test]
fn message_is_the_frame_corecast_encodes_at_every_header_size() {
    let mut data = String::new();
    let mut frame = Vec::new();
    // 7-bit, 16-bit and 64-bit payload lengths.
    for payload_bytes in [64, 100, 1_000, 70_000] {
        data.clear();
        write_data(&mut data, 12, 1_700_000_000_123_456, payload_bytes);
        message_frame(
            &mut frame,
            r#""bench.fanout""#,
            13,
            13,
            1_700_000_000_123,
            &data,
        );
        let corecast = encode::delivery(
            &encode::Message {
                channel: "bench.fanout",
                offset: 13,
                ts_ms: 1_700_000_000_123,
                data: &data,
                priority: Priority::Normal,
                stamp: Stamp {
                    publish: 13,
                    accepted: std::time::Instant::now(),
                },
            },
            encode::Treatment {
                slow: Slow::Disconnect,
                namespace: 0,
                deflate: false,
            },
        );
        assert_eq!(frame, corecast.frame, "payload_bytes {payload_bytes}");
    }
    let delivery = Scanner::default().delivery(&frame[10..]).unwrap();
    assert_eq!(
        (delivery.seq, delivery.sent_us),
        (12, 1_700_000_000_123_456)
    );
}

#[test]
fn message_text_is_what_corecast_delivers() {
    let mut data = String::new();
    let mut text = String::new();
    for payload_bytes in [0, 100, 1_000, 70_000] {
        data.clear();
        write_data(&mut data, 12, 1_700_000_000_123_456, payload_bytes);
        text.clear();
        text.extend(message_parts(
            r#""bench.fanout""#,
            "13",
            "13",
            "1700000000123",
            &data,
        ));
        let corecast = encode::delivery(
            &encode::Message {
                channel: "bench.fanout",
                offset: 13,
                ts_ms: 1_700_000_000_123,
                data: &data,
                priority: Priority::Normal,
                stamp: Stamp {
                    publish: 13,
                    accepted: std::time::Instant::now(),
                },
            },
            encode::Treatment {
                slow: Slow::Disconnect,
                namespace: 0,
                deflate: false,
            },
        );
        let header_bytes = corecast.frame.len() - text.len();
        assert!([2, 4, 10].contains(&header_bytes), "{payload_bytes} bytes");
        assert_eq!(
            &corecast.frame[header_bytes..],
            text.as_bytes(),
            "{payload_bytes} bytes"
        );
    }
}
