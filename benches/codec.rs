//! What one frame costs to build on the ingest core and to parse on a shard.
//!
//! Every publish is encoded once, by `ingest::encode::delivery`, on the single ingest core, so
//! its cost per message caps the publish rate of the whole server; replies (`published`, and
//! every frame built by `ws::command::json_frame`) are built on the shards. Every client frame
//! passes `ws::frame::parse_client_frame`, which reads the header and unmasks the payload in
//! place; its cost per byte bounds how fast a shard can take client publishes. This bench
//! times each call on one thread (no I/O, no allocator contention) and reports time per call
//! and, for payload-sized work, bytes per second.
//!
//! Load: one `message` frame for a 100-byte and a 4 KiB `data` object; a `published` reply
//! with a numeric `id`; a `subscribed`-shaped reply through `json_frame`; masked text frames
//! with a 100-byte and a 16 KiB payload (a fresh masked copy per call, made outside the timed
//! part, so every call parses the same input); `unmask` alone on 16 KiB.
//!
//! Run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`
//!
//! Last run: 2 vCPU AMD EPYC (Zen 3, family 25 model 1) KVM guest, 1 MiB L2 per core, Linux,
//! rustc 1.95, release profile (thin LTO), no `target-cpu`; machine otherwise idle (1-minute
//! load under 0.3 at the start, other processes under 0.2 CPU-seconds during the run):
//! - `encode/message/100`: 174 ns per frame; `encode/message/4096`: 215 ns (17.8 GiB/s of
//!   `data`). Both reallocate their buffer on every call, because `encode::delivery` sizes it 5
//!   bytes short (`+ 24` for 29 fixed bytes), and whether `realloc` grows in place depends on
//!   the heap, so `message/100` has ranged from 65 to 272 ns between builds and runs; with the
//!   hint corrected (tried on a copy) it was a steady 101 ns, and `message/4096` 182-209 ns.
//! - `encode/published_frame`: 233 ns; `encode/json_frame_subscribed`: 201 ns. Both
//!   reallocate too: sonic-rs reserves `6 * len + 35` bytes per string it writes, more than
//!   `json_frame`'s 96-byte hint (with a 256-byte hint: 158 ns and 129 ns).
//! - `parse_client_frame/100`: 29.1 ns (3.2 GiB/s); `parse_client_frame/16384`: 524 ns
//!   (29.1 GiB/s; 448-524 ns across quiet runs).
//! - `unmask/16384`: 376 ns (40.6 GiB/s; 335-531 ns across runs). Built with
//!   `-C target-cpu=native` (AVX2) it took 165 ns.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde::Serialize;

use corecast::config::defaults;
use corecast::ingest::encode;
use corecast::ingest::Priority;
use corecast::msg::{Slow, Stamp};
use corecast::ws::command;
use corecast::ws::frame::{self, Opcode};

/// The mask of every client frame here (the RFC 6455 example key).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Masked frames copied per timed batch: 16 x 16 KiB stays inside the 1 MiB L2, as a frame just
/// read from the socket would be, and the timer is read once per 16 calls.
const FRAMES_PER_BATCH: u64 = 16;

/// A JSON object of exactly `len_bytes` bytes, like a publish's `data`.
fn json_object(len_bytes: usize) -> String {
    let skeleton = r#"{"lead":42,"score":9,"note":""}"#;
    assert!(len_bytes >= skeleton.len(), "too short for the skeleton");
    let note = "x".repeat(len_bytes - skeleton.len());
    let object = format!(r#"{{"lead":42,"score":9,"note":"{note}"}}"#);
    assert_eq!(object.len(), len_bytes);
    object
}

/// A masked client text frame around `payload`, as a browser would send it.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81];
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(
        payload
            .iter()
            .enumerate()
            .map(|(at, byte)| byte ^ MASK[at % 4]),
    );
    out
}

/// A publish command of exactly `len_bytes` bytes, the payload of a client frame.
fn publish_command(len_bytes: usize) -> String {
    let head = r#"{"type":"publish","channel":"leads.42","id":7,"data":"#;
    let command = format!("{head}{}}}", json_object(len_bytes - head.len() - 1));
    assert_eq!(command.len(), len_bytes);
    command
}

fn encode_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for data_bytes in [100usize, 4096] {
        let data = json_object(data_bytes);
        let stamp = Stamp {
            publish: 1,
            accepted: Instant::now(),
        };
        let delivery = encode::delivery(
            &encode::Message {
                channel: "leads.42",
                offset: 1,
                ts_ms: 2,
                data: &data,
                priority: Priority::Normal,
                stamp,
            },
            encode::Treatment {
                slow: Slow::Disconnect,
                namespace: 0,
                deflate: false,
            },
        );
        assert!(delivery.frame.ends_with(format!("{data}}}").as_bytes()));
        group.throughput(Throughput::Bytes(data_bytes as u64));
        group.bench_function(format!("message/{data_bytes}"), |b| {
            b.iter(|| {
                encode::delivery(
                    &encode::Message {
                        channel: black_box("leads.42"),
                        offset: black_box(1_234_567),
                        ts_ms: black_box(1_700_000_000_000),
                        data: black_box(&data),
                        priority: Priority::Normal,
                        stamp,
                    },
                    encode::Treatment {
                        slow: Slow::Disconnect,
                        namespace: 0,
                        deflate: false,
                    },
                )
            })
        });
    }

    group.throughput(Throughput::Elements(1));
    let id = Some(sonic_rs::Value::from(7u64));
    let published = command::published_frame(&id, "leads.42", 1_234_567);
    assert_eq!(
        &published[2..],
        br#"{"type":"published","id":7,"channel":"leads.42","offset":1234567}"#
    );
    group.bench_function("published_frame", |b| {
        b.iter(|| {
            command::published_frame(black_box(&id), black_box("leads.42"), black_box(1_234_567))
        })
    });

    /// The shape of a `subscribed` reply, serialized through the generic path.
    #[derive(Serialize)]
    struct Subscribed<'a> {
        r#type: &'static str,
        channel: &'a str,
        id: &'a Option<sonic_rs::Value>,
    }
    let reply = Subscribed {
        r#type: "subscribed",
        channel: "prices.eu.EURUSD",
        id: &id,
    };
    assert_eq!(
        &command::json_frame(&reply)[2..],
        br#"{"type":"subscribed","channel":"prices.eu.EURUSD","id":7}"#
    );
    group.bench_function("json_frame_subscribed", |b| {
        b.iter(|| command::json_frame(black_box(&reply)))
    });
    group.finish();
}

fn parse_frames(c: &mut Criterion) {
    let frame_bytes_max = defaults::frame_bytes_max();
    let mut group = c.benchmark_group("parse_client_frame");
    for payload_bytes in [100usize, 16 * 1024] {
        let payload = publish_command(payload_bytes);
        let masked = masked_text_frame(payload.as_bytes());
        // The input is right: one parse yields the text frame and the original payload.
        let mut check = masked.clone();
        let parsed = frame::parse_client_frame(&mut check, frame_bytes_max, false)
            .expect("a valid frame")
            .expect("a complete frame");
        assert_eq!(parsed.opcode, Opcode::Text);
        assert_eq!(
            &check[parsed.payload_start..parsed.payload_end],
            payload.as_bytes()
        );
        assert_eq!(parsed.frame_len, masked.len());

        group.throughput(Throughput::Bytes(payload_bytes as u64));
        group.bench_function(format!("{payload_bytes}"), |b| {
            b.iter_batched_ref(
                || masked.clone(),
                |buf| frame::parse_client_frame(black_box(buf), frame_bytes_max, false),
                BatchSize::NumIterations(FRAMES_PER_BATCH),
            )
        });
    }
    group.finish();

    let mut group = c.benchmark_group("unmask");
    let mut payload = publish_command(16 * 1024).into_bytes();
    let original = payload.clone();
    frame::unmask(&mut payload, MASK);
    frame::unmask(&mut payload, MASK);
    assert_eq!(payload, original, "unmasking twice restores the payload");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    // Unmasking is an XOR whose cost does not depend on the bytes, so the buffer is simply
    // unmasked again on every call rather than restored.
    group.bench_function(format!("{}", payload.len()), |b| {
        b.iter(|| frame::unmask(black_box(&mut payload), black_box(MASK)))
    });
    group.finish();
}

criterion_group!(benches, encode_frames, parse_frames);
criterion_main!(benches);
