//! What matching one published channel against 100,000 subscriptions costs, and what a
//! subscribe plus unsubscribe costs.
//!
//! A shard runs `Registry::collect_matches` once for every message it receives, before it
//! queues the frame on each matching connection, so its cost per message (and per matched key)
//! adds to the latency of every delivery; `insert` and `remove` run on every subscribe and
//! unsubscribe, the churn of clients coming and going.
//!
//! Load: one `Registry<u32>` (u32 standing in for a connection key) holding 100,000
//! subscriptions: 10,000 keys with 10 patterns each, from these families (k is the key):
//!
//! | pattern                                   | kind  | patterns | keys each |
//! |-------------------------------------------|-------|---------:|----------:|
//! | `market.status`                           | exact |        1 |    10,000 |
//! | `leads.<k>`                               | exact |   10,000 |         1 |
//! | `leads.<k % 1000>.*`                      | `*`   |    1,000 |        10 |
//! | `prices.<region>.<instrument>`            | exact |    1,600 |     ~6    |
//! | `prices.<region>.*`                       | `*`   |       16 |       625 |
//! | `prices.*.<instrument>`                   | `*`   |      100 |       100 |
//! | `prices.<region>.>`                       | `>`   |       16 |       625 |
//! | `news.<topic>`                            | exact |       20 |       500 |
//! | `alerts.<k % 100>.*.critical`             | `*`   |      100 |       100 |
//! | `orders.<k>.>`                            | `>`   |   10,000 |         1 |
//!
//! (16 regions, 100 instruments, each family spread over the keys with a different stride so
//! the sets overlap the way independent clients' choices do.) Measured:
//! - `match/exact_10000`: `market.status`, one exact set of 10,000 keys, no wildcard;
//! - `match/overlap_4_sets`: `prices.eu.EURUSD`, matched by the exact pattern,
//!   `prices.eu.*`, `prices.*.EURUSD` and `prices.eu.>` (the dedup path);
//! - `match/none`: `alerts.42.eu.info`, which walks three trie levels and matches nothing;
//! - `churn/*`: one `insert` then one `remove` of a new key on a full registry, for a pattern
//!   that already has subscribers and for one that does not (which creates and then frees
//!   its map entry or trie nodes).
//!
//! Each match reuses one output `Vec`, as a shard does, so allocation is not counted.
//!
//! Run: `cargo bench --bench registry -- --warm-up-time 1 --measurement-time 3`
//!
//! Last run: 2 vCPU AMD EPYC (Zen 3, family 25 model 1) KVM guest, 1 MiB L2 per core, Linux,
//! rustc 1.95, release profile (thin LTO), no `target-cpu`; machine otherwise idle (1-minute
//! load under 0.3 at the start, other processes under 0.2 CPU-seconds during the run):
//! - `match/exact_10000`: 12.5 us, 1.25 ns per key delivered.
//! - `match/overlap_4_sets`: 5.7 us for 1,256 distinct keys out of 1,364 gathered from 4
//!   sets (4.5 ns per distinct key).
//! - `match/none`: 79-96 ns.
//! - `churn`, per insert+remove pair: `exact_existing` 93 ns, `exact_new` 166 ns,
//!   `star_existing` 201 ns, `greater_existing` 200 ns, `star_new` 480 ns.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use corecast::channel;
use corecast::registry::Registry;

/// Connection keys in the registry.
const KEYS: u32 = 10_000;
/// Patterns each key subscribes to.
const PATTERNS_PER_KEY: usize = 10;

const REGIONS: [&str; 16] = [
    "eu", "us", "apac", "latam", "uk", "jp", "cn", "in", "br", "ca", "au", "za", "mx", "kr", "sg",
    "ch",
];

const TOPICS: [&str; 20] = [
    "sports", "politics", "tech", "markets", "weather", "health", "science", "travel", "food",
    "music", "film", "books", "games", "autos", "energy", "crypto", "retail", "jobs", "housing",
    "local",
];

/// 100 instrument names: a few real currency pairs, then generated tickers.
fn instruments() -> Vec<String> {
    let named = ["EURUSD", "USDJPY", "GBPUSD", "AUDUSD", "USDCHF", "BTCUSD"];
    let mut all: Vec<String> = named.iter().map(|name| (*name).to_owned()).collect();
    all.extend((named.len()..100).map(|n| format!("TKR{n:03}")));
    all
}

/// The 10 patterns of key `k` (see the table in the module doc).
fn patterns_of(k: u32, instruments: &[String]) -> [String; PATTERNS_PER_KEY] {
    let k = k as usize;
    [
        "market.status".to_owned(),
        format!("leads.{k}"),
        format!("leads.{}.*", k % 1000),
        format!("prices.{}.{}", REGIONS[k % 16], instruments[(k / 16) % 100]),
        format!("prices.{}.*", REGIONS[(k / 3) % 16]),
        format!("prices.*.{}", instruments[(k / 5) % 100]),
        format!("prices.{}.>", REGIONS[(k / 7) % 16]),
        format!("news.{}", TOPICS[k % 20]),
        format!("alerts.{}.*.critical", k % 100),
        format!("orders.{k}.>"),
    ]
}

/// The full registry, and every (pattern, key) in it for the reference matcher.
fn build() -> (Registry<u32>, Vec<(String, u32)>) {
    let instruments = instruments();
    let mut registry = Registry::new();
    let mut subscriptions = Vec::with_capacity(KEYS as usize * PATTERNS_PER_KEY);
    for key in 0..KEYS {
        for pattern in patterns_of(key, &instruments) {
            assert!(registry.insert(&pattern, key), "{pattern} twice for {key}");
            subscriptions.push((pattern, key));
        }
    }
    assert_eq!(registry.len(), 100_000);
    (registry, subscriptions)
}

/// Checks `collect_matches` against `channel::pattern_matches` over every subscription and
/// returns how many distinct keys `channel` reaches, how many patterns matched it, and the
/// sum of those patterns' subscriber counts (the keys gathered before deduplication).
fn check(
    registry: &Registry<u32>,
    subscriptions: &[(String, u32)],
    name: &str,
) -> (usize, usize, usize) {
    let mut expected = BTreeSet::new();
    let mut patterns = BTreeSet::new();
    for (pattern, key) in subscriptions {
        if channel::pattern_matches(pattern, name) {
            expected.insert(*key);
            patterns.insert(pattern.as_str());
        }
    }
    let mut out = Vec::new();
    registry.collect_matches(name, &mut out);
    let got: BTreeSet<u32> = out.iter().copied().collect();
    assert_eq!(got.len(), out.len(), "{name}: a key appears twice");
    assert_eq!(got, expected, "{name}: wrong keys");
    let gathered = patterns
        .iter()
        .map(|pattern| registry.subscribers(pattern))
        .sum();
    (expected.len(), patterns.len(), gathered)
}

fn matching(c: &mut Criterion) {
    let (registry, subscriptions) = build();
    let mut group = c.benchmark_group("match");
    // (case, channel, patterns that match it, keys it reaches if fixed by construction)
    let cases = [
        ("exact_10000", "market.status", 1, Some(10_000)),
        ("overlap_4_sets", "prices.eu.EURUSD", 4, None),
        ("none", "alerts.42.eu.info", 0, Some(0)),
    ];
    for (case, name, patterns_expected, keys_expected) in cases {
        let (keys, patterns, gathered) = check(&registry, &subscriptions, name);
        assert_eq!(patterns, patterns_expected, "{name}: matching patterns");
        if let Some(keys_expected) = keys_expected {
            assert_eq!(keys, keys_expected, "{name}: matching keys");
        }
        println!(
            "match/{case}: {name} reaches {keys} distinct keys through {patterns} patterns \
             holding {gathered} keys"
        );
        // Per matched key where there are keys, so the figure compares across cases.
        group.throughput(Throughput::Elements(keys.max(1) as u64));
        let mut out = Vec::with_capacity(KEYS as usize);
        group.bench_function(case, |b| {
            b.iter(|| {
                registry.collect_matches(black_box(name), &mut out);
                out.len()
            })
        });
    }
    group.finish();

    let mut registry = registry;
    let mut group = c.benchmark_group("churn");
    // Two operations per call: the figure is per insert+remove pair.
    group.throughput(Throughput::Elements(2));
    let cases = [
        // An exact pattern with 10,000 keys: one set insert and remove.
        ("exact_existing", "market.status"),
        // A new exact pattern: its set is created and freed each time.
        ("exact_new", "leads.new.42"),
        // A wildcard pattern with 625 keys: a trie walk to an existing node.
        ("star_existing", "prices.eu.*"),
        // A new wildcard pattern: three trie nodes created and freed each time.
        ("star_new", "leads.new.*.notes"),
        ("greater_existing", "prices.eu.>"),
    ];
    let key = KEYS + 1;
    for (case, pattern) in cases {
        let before = registry.subscribers(pattern);
        group.bench_function(case, |b| {
            b.iter(|| {
                let inserted = registry.insert(black_box(pattern), key);
                let removed = registry.remove(black_box(pattern), key);
                inserted && removed
            })
        });
        assert_eq!(registry.subscribers(pattern), before);
        assert_eq!(registry.len(), 100_000);
    }
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
