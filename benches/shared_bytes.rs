//! Does sharing one `Bytes` per frame across shards cost more than one copy per shard?
//!
//! Every shard clones a published frame once per matching connection and drops each clone when
//! the write completes. With one shared `Bytes`, every shard's clones and drops hit the same
//! atomic refcount, so its cache line bounces between cores; with one copy per shard, each
//! shard's refcount stays in its own cache. This bench runs both on two pinned threads (the
//! shape of a 2-shard server) and reports nanoseconds per delivered frame (clone into an outbox,
//! then drop after the "write"). Run: `cargo bench --bench shared_bytes`. Results on the 2-core
//! CI machine are kept in the comment at `ingest::IngestCore::sequence`.

use std::collections::VecDeque;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Connections per shard each event is delivered to.
const CONNS_PER_SHARD: usize = 5_000;
/// Events published per measurement.
const EVENTS: usize = 400;
/// Interleaved measurements of each strategy; the median is reported.
const ROUNDS: usize = 21;
/// Frame size (a 100-byte event plus its envelope).
const FRAME_BYTES: usize = 190;

/// One shard's work for one event: a clone per connection into its outbox, then the drops once
/// the writes complete (coalesced: every connection's outbox is drained after the fan-out).
fn fan_out(frame: &Bytes, outboxes: &mut [VecDeque<Bytes>]) -> usize {
    for outbox in outboxes.iter_mut() {
        outbox.push_back(frame.clone());
    }
    let mut written = 0;
    for outbox in outboxes.iter_mut() {
        while let Some(sent) = outbox.pop_front() {
            written += sent.len();
        }
    }
    written
}

fn run(shared: bool, shards: usize) -> Duration {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let frames: Vec<Bytes> = (0..EVENTS)
        .map(|event| Bytes::from(vec![(event % 251) as u8; FRAME_BYTES]))
        .collect();
    let barrier = Barrier::new(shards);
    let mut slowest = Duration::ZERO;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..shards)
            .map(|shard| {
                let frames = &frames;
                let barrier = &barrier;
                let core = cores.get(shard % cores.len().max(1)).copied();
                scope.spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let mut outboxes = vec![VecDeque::with_capacity(4); CONNS_PER_SHARD];
                    barrier.wait();
                    let started = Instant::now();
                    let mut written = 0;
                    for frame in frames {
                        if shared {
                            written += fan_out(frame, &mut outboxes);
                        } else {
                            let own = Bytes::copy_from_slice(frame);
                            written += fan_out(&own, &mut outboxes);
                        }
                    }
                    assert_eq!(written, EVENTS * CONNS_PER_SHARD * FRAME_BYTES);
                    started.elapsed()
                })
            })
            .collect();
        for handle in handles {
            slowest = slowest.max(handle.join().expect("bench thread"));
        }
    });
    slowest
}

fn main() {
    let shards = core_affinity::get_core_ids().map_or(2, |cores| cores.len().max(2));
    let deliveries = (EVENTS * CONNS_PER_SHARD) as f64;
    println!(
        "shared_bytes: {shards} shards x {CONNS_PER_SHARD} connections x {EVENTS} events, \
         {FRAME_BYTES}-byte frames, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut ratios = Vec::new();
    let (mut shared_ns, mut copied_ns) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let shared = run(true, shards);
        let copied = run(false, shards);
        shared_ns.push(shared.as_nanos() as f64 / deliveries);
        copied_ns.push(copied.as_nanos() as f64 / deliveries);
        ratios.push(shared.as_secs_f64() / copied.as_secs_f64());
    }
    println!(
        "median of {ROUNDS} interleaved rounds: shared {:.2} ns/delivery, copy per shard {:.2} \
         ns/delivery, shared/copy {:.2} (min {:.2}, max {:.2})",
        median(&mut shared_ns),
        median(&mut copied_ns),
        median(&mut ratios),
        ratios.first().copied().unwrap_or(0.0),
        ratios.last().copied().unwrap_or(0.0),
    );
}

/// Sorts `values` and returns the middle one.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
