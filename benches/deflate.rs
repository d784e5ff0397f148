//! What permessage-deflate costs per publish: the compressed twin the ingest core makes of every
//! `message` frame when `permessage_deflate` is on (`ws::frame::deflated_twin`, which
//! `ingest::encode::delivery` calls when its `Treatment` says `deflate`), next to the plain
//! encode it comes on top of, and what a shard pays to inflate a client's compressed command.
//!
//! The twin is made once per publish on the single ingest core, whatever the number of
//! subscribers, so its time per message is what deflate takes from the node's publish rate.
//! Shards pay nothing per delivery for it: a deflate connection gets the twin's bytes as a
//! plain one gets the frame's. The bench times each call on one thread, no I/O.
//!
//! Load: a `message` frame whose `data` is a JSON object of 100 bytes, 1 KiB and 16 KiB (a note
//! of repeated words, so it compresses about as typical JSON does); inflating a 100-byte
//! compressed command.
//!
//! Run: `cargo bench --bench deflate -- --warm-up-time 1 --measurement-time 3`
//!
//! Last run: 2 vCPU AMD EPYC KVM guest (shared with other builds at the time), release profile,
//! flate2 on zlib-rs: `encode/100` 127 ns, `deflated_twin/100` 3.27 µs; `encode/1024` 163 ns,
//! `deflated_twin/1024` 3.01 µs; `encode/16384` 426 ns, `deflated_twin/16384` 4.40 µs;
//! `inflate/command` 0.79 µs. On miniz_oxide (flate2's default, replaced) the twins took
//! 8.2-10.2 µs and the inflate 9.1 µs. The README's "permessage-deflate" section has the table.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use corecast::ingest::encode;
use corecast::ingest::Priority;
use corecast::msg::{Slow, Stamp};
use corecast::ws::deflate::{compress_into, Inflater};
use corecast::ws::frame;

/// A JSON object of exactly `len_bytes` bytes, words repeating as in real event data.
fn json_object(len_bytes: usize) -> String {
    let skeleton = r#"{"lead":42,"score":9,"note":""}"#;
    let words = [
        "status",
        "open",
        "region",
        "emea",
        "owner",
        "alice",
        "stage",
        "qualified",
    ];
    let mut note = String::new();
    let mut at = 0;
    while note.len() < len_bytes - skeleton.len() {
        note.push_str(words[at % words.len()]);
        note.push(' ');
        at = at * 7 + 3;
    }
    note.truncate(len_bytes - skeleton.len());
    let object = format!(r#"{{"lead":42,"score":9,"note":"{note}"}}"#);
    assert_eq!(object.len(), len_bytes);
    object
}

fn stamp() -> Stamp {
    Stamp {
        publish: 1,
        accepted: Instant::now(),
    }
}

fn per_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for len_bytes in [100usize, 1024, 16 * 1024] {
        let data = json_object(len_bytes);
        let plain = encode::delivery(
            &encode::Message {
                channel: "leads.42",
                offset: 7,
                ts_ms: 1_700_000_000_000,
                data: &data,
                priority: Priority::Normal,
                stamp: stamp(),
            },
            encode::Treatment {
                slow: Slow::Disconnect,
                namespace: 0,
                deflate: false,
            },
        );
        let twin = frame::deflated_twin(&plain.frame);
        println!(
            "data {len_bytes} B: frame {} B, deflated twin {} B",
            plain.frame.len(),
            twin.len()
        );
        group.throughput(Throughput::Bytes(plain.frame.len() as u64));
        group.bench_function(format!("encode/{len_bytes}"), |b| {
            b.iter(|| {
                encode::delivery(
                    &encode::Message {
                        channel: "leads.42",
                        offset: black_box(7),
                        ts_ms: 1_700_000_000_000,
                        data: black_box(&data),
                        priority: Priority::Normal,
                        stamp: stamp(),
                    },
                    encode::Treatment {
                        slow: Slow::Disconnect,
                        namespace: 0,
                        deflate: false,
                    },
                )
            })
        });
        group.bench_function(format!("deflated_twin/{len_bytes}"), |b| {
            b.iter(|| frame::deflated_twin(black_box(&plain.frame)))
        });
    }
    group.finish();
}

fn inflate_command(c: &mut Criterion) {
    let command = br#"{"type":"subscribe","channel":"leads.*","id":1,"since":{"offset":1}}  "#;
    let mut compressed = Vec::new();
    compress_into(command, &mut compressed);
    c.bench_function("inflate/command", |b| {
        b.iter(|| {
            // A fresh inflater per message, as a connection makes one per compressed message.
            let mut inflater = Inflater::default();
            let mut out = Vec::new();
            inflater
                .push(black_box(&compressed), &mut out, 65_536)
                .unwrap();
            inflater.finish(&mut out, 65_536).unwrap();
            out
        })
    });
}

criterion_group!(benches, per_publish, inflate_command);
criterion_main!(benches);
