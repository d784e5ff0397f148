//! What one channel costs the sequencer's table (`ingest::history::History`), in heap bytes,
//! measured exactly with a counting global allocator.
//!
//! Load: N channels named `leads.<i>` (i from 0), created through `History` as the sequencer
//! creates them: with no message kept (`assign` alone), with one message each (`assign` then
//! `record`), and with one message each that then expired (`history_age_s`) and was trimmed,
//! the state of a channel nobody publishes to any more. The message frames are static `Bytes`, so the figures are the
//! table's own cost: a frame is the message's cost, shared with the shards, and is counted by
//! `history_bytes` instead. The allocator counts the bytes asked for; malloc's own rounding and
//! headers (8 to 16 bytes per allocation with glibc) come on top.
//!
//! The parts: the names (one `Rc<str>` each, computed from their lengths), the hash table (what
//! is left of the empty case: its buckets hold each channel's struct), and with a message the
//! `fronts` map (measured on a replica: the same map type filled in the same order) and the
//! history's entries (the rest).
//!
//! Run: `cargo test --release --bench channels` (the figures do not depend on the build
//! profile: `cargo test --bench channels` gives the same bytes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corecast::config::Config;
use corecast::ingest::history::History;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s
// contract; the counter only observes the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout is passed on as it came.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with this layout (every allocation goes
        // through `alloc` or `realloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

const FRAME: Bytes = Bytes::from_static(b"{\"type\":\"message\"}");

/// What each channel of a measured `History` holds.
#[derive(Clone, Copy, PartialEq)]
enum Kept {
    /// Created, nothing recorded.
    Nothing,
    /// One message in history.
    One,
    /// One message recorded, then expired (`history_age_s`) and trimmed.
    Expired,
}

/// Heap bytes a `History` of `names.len()` channels holds, each keeping `kept`.
fn history_bytes(names: &[String], kept: Kept) -> usize {
    let config = Arc::new(Config::default());
    let later = Instant::now() + Duration::from_secs(config.history_age_s + 1);
    let before = live();
    let mut history = History::new(config);
    let now = Instant::now();
    for (seq, name) in (1..).zip(names) {
        let assigned = history.assign(name).expect("below channels_max");
        if kept != Kept::Nothing {
            history.record(name, assigned.offset, seq, FRAME, 0, now);
        }
        if kept == Kept::Expired {
            assert!(history.page(name, 0, 1, later).messages.is_empty());
        }
    }
    let bytes = live() - before;
    assert_eq!(history.channels_len(), names.len());
    drop(history);
    bytes
}

/// Heap bytes of a replica of `fronts`: one entry per channel, inserted in seq order.
fn fronts_bytes(names: &[String]) -> usize {
    let keys: Vec<Rc<str>> = names.iter().map(|name| Rc::from(name.as_str())).collect();
    let before = live();
    let mut fronts: BTreeMap<u64, Rc<str>> = BTreeMap::new();
    for (seq, key) in (1..).zip(&keys) {
        fronts.insert(seq, key.clone());
    }
    let bytes = live() - before;
    drop(fronts);
    bytes
}

fn main() {
    println!("heap bytes per channel of the sequencer's table (counting allocator)");
    for n in [100_000usize, 1_000_000] {
        let names: Vec<String> = (0..n).map(|i| format!("leads.{i}")).collect();
        let name_bytes: usize = names
            .iter()
            // An `Rc<str>`'s allocation: two counters and the bytes, padded to 8.
            .map(|name| (2 * std::mem::size_of::<usize>() + name.len()).next_multiple_of(8))
            .sum();
        let empty = history_bytes(&names, Kept::Nothing);
        let one = history_bytes(&names, Kept::One);
        let expired = history_bytes(&names, Kept::Expired);
        let fronts = fronts_bytes(&names);
        let per = |bytes: usize| bytes as f64 / n as f64;
        println!("{n} channels, names {:.1} bytes on average", {
            names.iter().map(String::len).sum::<usize>() as f64 / n as f64
        });
        println!(
            "  no message kept: {:7.1} B  = table {:.1} + names {:.1}",
            per(empty),
            per(empty - name_bytes),
            per(name_bytes)
        );
        println!(
            "  one message:     {:7.1} B  = no message + fronts {:.1} + entries {:.1}",
            per(one),
            per(fronts),
            per(one - empty - fronts)
        );
        println!(
            "  history expired: {:7.1} B  = no message + entries left {:.1}",
            per(expired),
            per(expired - empty)
        );
    }
}
