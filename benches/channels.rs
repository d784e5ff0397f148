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
//! The parts: the names (one `Box<str>` each, computed from their lengths), the index (a hash
//! table of slot numbers, measured on a replica filled the same way), the slots (what is left of
//! the empty case: a vector of channel structs), and with a message the `fronts` map (measured
//! on a replica: the same map type filled in the same order) and the history's entries (the
//! rest).
//!
//! Run: `cargo test --bench channels` (bytes do not depend on the build profile, so the dev
//! build will do; `--release` gives the same figures).
//!
//! Measured on the development VM (x86_64 Linux, Rust 1.89), bytes per channel, before the
//! table's rework (hash map of `Rc<str>` to channel, name again in `fronts`, four entries of 72
//! bytes from the first message on, kept once empty) and after it (slots, an index of slot
//! numbers, one entry of 56 bytes for a first message, none for an empty history):
//!
//! | channels  | kept             | before | after |
//! |-----------|------------------|-------:|------:|
//! | 100,000   | no message       |  148.6 | 122.3 |
//! | 100,000   | one message      |  485.6 | 204.6 |
//! | 100,000   | history expired  |  436.6 | 122.3 |
//! | 1,000,000 | no message       |  218.6 | 106.3 |
//! | 1,000,000 | one message      |  555.6 | 188.5 |
//! | 1,000,000 | history expired  |  506.6 | 106.3 |

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corecast::config::Config;
use corecast::ingest::history::History;
use hashbrown::{DefaultHashBuilder, HashTable};

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
        let assigned = history.assign(name, seq).expect("below channels_max");
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

/// Heap bytes of a replica of `fronts`: one slot number per channel, inserted in seq order.
fn fronts_bytes(n: usize) -> usize {
    let before = live();
    let mut fronts: BTreeMap<u64, u32> = BTreeMap::new();
    for (seq, slot) in (1..).zip(0..n as u32) {
        fronts.insert(seq, slot);
    }
    let bytes = live() - before;
    drop(fronts);
    bytes
}

/// Heap bytes of a replica of the index: one slot number per channel, hashed by name.
fn index_bytes(names: &[String]) -> usize {
    let hasher = DefaultHashBuilder::default();
    let before = live();
    let mut index: HashTable<u32> = HashTable::new();
    for (slot, name) in (0..).zip(names) {
        index.insert_unique(hasher.hash_one(name.as_str()), slot, |&slot| {
            hasher.hash_one(names[slot as usize].as_str())
        });
    }
    let bytes = live() - before;
    drop(index);
    bytes
}

fn main() {
    println!("heap bytes per channel of the sequencer's table (counting allocator)");
    for n in [100_000usize, 1_000_000] {
        let names: Vec<String> = (0..n).map(|i| format!("leads.{i}")).collect();
        // A `Box<str>`'s allocation is its bytes.
        let name_bytes: usize = names.iter().map(String::len).sum();
        let empty = history_bytes(&names, Kept::Nothing);
        let one = history_bytes(&names, Kept::One);
        let expired = history_bytes(&names, Kept::Expired);
        let fronts = fronts_bytes(n);
        let index = index_bytes(&names);
        let per = |bytes: usize| bytes as f64 / n as f64;
        println!("{n} channels, names {:.1} bytes on average", {
            names.iter().map(String::len).sum::<usize>() as f64 / n as f64
        });
        println!(
            "  no message kept: {:7.1} B  = slots {:.1} + index {:.1} + names {:.1}",
            per(empty),
            per(empty - index - name_bytes),
            per(index),
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
