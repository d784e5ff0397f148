//! Does sonic-rs parse client commands faster than serde_json would?
//!
//! Every text message a client sends goes through `ws::command::parse` on its shard, so its
//! cost per command bounds how many commands a shard takes per second. corecast uses sonic-rs
//! (SIMD) and keeps a publish's `data` as raw validated text; this bench checks that choice
//! against serde_json doing the same job, side by side in one group per document:
//! - `corecast_parse`: `ws::command::parse`, the real path (the depth and escape pass of
//!   `json::check`, sonic-rs, the `id` check and the dispatch on `type`);
//! - `json_check`: that pass alone, what `parse` spends before sonic-rs;
//! - `sonic_rs_struct` / `serde_json_struct`: deserializing alone into the same borrowed shape
//!   (`data` as sonic-rs `LazyValue` / serde_json `&RawValue`, `id` as each crate's `Value`);
//! - `serde_json_parse`: serde_json followed by the same checks `parse` makes, i.e. what
//!   `parse` would cost had it been written on serde_json.
//!
//! Load: a subscribe command (57 bytes) and a publish command with a 100-byte `data` object
//! (160 bytes), each parsed from the same `&str` on every call, on one thread; and two large
//! publishes that show what the checks run before sonic-rs cost per byte: `publish_text`, whose
//! `data` is one 16 KiB string with an escape every 64 bytes, and `publish_numbers`, whose
//! `data` is an array of 2,000 integers (11.8 KB, no string bytes).
//!
//! Run: `cargo bench --bench command -- --warm-up-time 1 --measurement-time 3`
//!
//! Last run: 2 vCPU AMD EPYC (Zen 3, family 25 model 1) KVM guest, 1 MiB L2 per core, Linux,
//! rustc 1.95, release profile (thin LTO), no `target-cpu`; machine otherwise idle (1-minute
//! load under 0.3 at the start, other processes under 0.2 CPU-seconds during the run):
//!
//! | 57-byte subscribe / 160-byte publish | subscribe | publish |
//! |--------------------------------------|----------:|--------:|
//! | `corecast_parse` (sonic-rs)          |    273 ns |  462 ns |
//! | `sonic_rs_struct`                    |    268 ns |  390 ns |
//! | `serde_json_struct`                  |    180 ns |  350 ns |
//! | `serde_json_parse`                   |    214 ns |  375 ns |
//!
//! serde_json is faster on both: 22% less time for the whole parse of a subscribe, 19% for a
//! publish. Tried on a copy: borrowing `id` as raw text instead of an owned `Value` (whose
//! sonic-rs form allocates an arena) saves 14-42 ns with either crate and leaves serde_json
//! ahead (138 against 200 ns, 319 against 375 ns); building with `-C target-cpu=native`, which
//! sonic-rs asks for to use its SIMD and corecast does not set, did not change the order.
//!
//! `json_depth_max` (`json::check` in place of `ws::command::check_escapes`), same machine and
//! flags, pinned to CPU 1, but shared with other builds (1-minute load 1.4 to 5.7): first the
//! pass alone against the escape-only pass it replaced, both in one bench binary, three runs
//! each (median); the old pass is not kept in this file.
//!
//! | the pass before sonic-rs          | subscribe | publish | publish_text | publish_numbers |
//! |-----------------------------------|----------:|--------:|-------------:|----------------:|
//! | `check_escapes` (memchr for `\`)  |      6 ns |    7 ns |      1.93 µs |           73 ns |
//! | `json::check` (memchr3, + depth)  |     14 ns |   31 ns |      2.43 µs |          173 ns |
//!
//! +8 ns on a subscribe and +24 ns on a publish (memchr3 stops at each `[` and `{` as well as
//! each `\`): 3% and 5% of the whole parse (`corecast_parse`, 247-296 ns and 466-565 ns in two
//! before/after rounds, within the noise of this machine); +0.5 µs on 16 KiB of string with
//! 257 escapes (memchr3 against memchr per stop) and +0.1 µs on 11.8 KB of numbers, against
//! sonic-rs's 2.2-2.8 µs and 15-22 µs for the same documents. None of these nests past 128
//! brackets in all, so none takes the second, depth-counting pass.

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::Deserialize;
use serde_json::value::RawValue;

use corecast::config::defaults;
use corecast::json;
use corecast::ws::command::{self, Command, ID_BYTES_MAX};

const SUBSCRIBE: &str = r#"{"type":"subscribe","channel":"prices.eu.EURUSD","id":17}"#;

const PUBLISH: &str = concat!(
    r#"{"type":"publish","channel":"leads.42","id":"req-7","data":"#,
    r#"{"lead":42,"score":19,"stage":"qualified","owner":"ana@acme.io","#,
    r#""tags":["eu","web"],"at":1700000000}}"#,
);

/// The `data` value of [`PUBLISH`], exactly as sent.
const PUBLISH_DATA: &str = concat!(
    r#"{"lead":42,"score":19,"stage":"qualified","owner":"ana@acme.io","#,
    r#""tags":["eu","web"],"at":1700000000}"#,
);

/// A publish whose `data` is one long string: `{"text":"..."}`, 16 KiB of text with a `\n`
/// or `\"` escape every 64 bytes.
fn publish_text() -> String {
    let mut text = String::new();
    while text.len() < 16 * 1024 {
        text.push_str("The quick brown fox jumps over the lazy dog, then naps a while");
        text.push_str(if text.len() % 128 == 62 {
            "\\n"
        } else {
            "\\\""
        });
    }
    format!(r#"{{"type":"publish","channel":"docs.1","id":1,"data":{{"text":"{text}"}}}}"#)
}

/// A publish whose `data` is an array of 2,000 integers.
fn publish_numbers() -> String {
    let numbers: Vec<String> = (0..2_000u32)
        .map(|n| (n * 7919 % 100_000).to_string())
        .collect();
    format!(
        r#"{{"type":"publish","channel":"ticks.1","id":2,"data":[{}]}}"#,
        numbers.join(",")
    )
}

/// The shape `ws::command::parse` deserializes with sonic-rs (its own struct is private).
#[derive(Deserialize)]
struct SonicCommand<'a> {
    #[serde(borrow)]
    r#type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<sonic_rs::LazyValue<'a>>,
    id: Option<sonic_rs::Value>,
}

/// The same shape for serde_json: `data` borrowed as raw text.
#[derive(Deserialize)]
struct SerdeCommand<'a> {
    #[serde(borrow)]
    r#type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    id: Option<serde_json::Value>,
}

/// What [`serde_json_parse`] returns: the parts a shard acts on.
#[derive(Debug, PartialEq)]
enum Parsed<'a> {
    Subscribe {
        channel: Cow<'a, str>,
    },
    Publish {
        channel: Cow<'a, str>,
        data: &'a str,
    },
}

/// `ws::command::parse` for these two commands, on serde_json: the same `id` check (a number
/// or a string of at most `ID_BYTES_MAX` bytes as JSON text) and the same dispatch on `type`.
/// Errors are reduced to `None`: only the success path is timed.
fn serde_json_parse(text: &str) -> Option<(Parsed<'_>, Option<serde_json::Value>)> {
    let raw: SerdeCommand = serde_json::from_str(text).ok()?;
    if let Some(id) = &raw.id {
        let id_bytes = serde_json::to_string(id).map_or(usize::MAX, |text| text.len());
        if !(id.is_number() || id.is_string()) || id_bytes > ID_BYTES_MAX {
            return None;
        }
    }
    let parsed = match raw.r#type?.as_ref() {
        "subscribe" => Parsed::Subscribe {
            channel: raw.channel?,
        },
        "publish" => Parsed::Publish {
            channel: raw.channel?,
            data: raw.data?.get(),
        },
        _ => return None,
    };
    Some((parsed, raw.id))
}

fn check_inputs() {
    match command::parse(SUBSCRIBE, defaults::json_depth_max()) {
        Ok(Command::Subscribe { channel, id, .. }) => {
            assert_eq!(channel, "prices.eu.EURUSD");
            assert_eq!(id, Some(sonic_rs::Value::from(17u64)));
        }
        other => panic!("subscribe parsed as {other:?}"),
    }
    match command::parse(PUBLISH, defaults::json_depth_max()) {
        Ok(Command::Publish { channel, data, id }) => {
            assert_eq!((channel.as_ref(), data), ("leads.42", PUBLISH_DATA));
            assert_eq!(id, Some(sonic_rs::Value::from("req-7")));
        }
        other => panic!("publish parsed as {other:?}"),
    }
    assert_eq!(
        PUBLISH_DATA.len(),
        100,
        "the documented load has a 100-byte data object"
    );
    assert_eq!(
        (SUBSCRIBE.len(), PUBLISH.len()),
        (57, 160),
        "the documented sizes"
    );
    let (parsed, id) = serde_json_parse(PUBLISH).expect("serde_json reads the publish");
    assert_eq!(
        parsed,
        Parsed::Publish {
            channel: "leads.42".into(),
            data: PUBLISH_DATA
        }
    );
    assert_eq!(id, Some(serde_json::Value::from("req-7")));
    let (parsed, _) = serde_json_parse(SUBSCRIBE).expect("serde_json reads the subscribe");
    assert_eq!(
        parsed,
        Parsed::Subscribe {
            channel: "prices.eu.EURUSD".into()
        }
    );
    let sonic: SonicCommand = sonic_rs::from_str(PUBLISH).expect("sonic-rs reads the publish");
    assert_eq!(sonic.data.map(|data| data.as_raw_str().len()), Some(100));
    assert_eq!(sonic.r#type.as_deref(), Some("publish"));
    assert_eq!(sonic.channel.as_deref(), Some("leads.42"));
    assert!(sonic.id.is_some());
    for (text, data_bytes) in [(publish_text(), 16_395), (publish_numbers(), 11_770)] {
        match command::parse(&text, defaults::json_depth_max()) {
            Ok(Command::Publish { data, .. }) => assert_eq!(data.len(), data_bytes, "{data}"),
            other => panic!("a large publish parsed as {other:?}"),
        }
    }
}

fn parse_commands(c: &mut Criterion) {
    check_inputs();
    let (text, numbers) = (publish_text(), publish_numbers());
    let documents = [
        ("subscribe", SUBSCRIBE),
        ("publish", PUBLISH),
        ("publish_text", text.as_str()),
        ("publish_numbers", numbers.as_str()),
    ];
    for (name, text) in documents {
        let mut group = c.benchmark_group(format!("command/{name}"));
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function("corecast_parse", |b| {
            b.iter(|| command::parse(black_box(text), defaults::json_depth_max()).is_ok())
        });
        group.bench_function("json_check", |b| {
            b.iter(|| json::check(black_box(text).as_bytes(), defaults::json_depth_max()).is_ok())
        });
        group.bench_function("sonic_rs_struct", |b| {
            b.iter(|| sonic_rs::from_str::<SonicCommand>(black_box(text)).is_ok())
        });
        group.bench_function("serde_json_struct", |b| {
            b.iter(|| serde_json::from_str::<SerdeCommand>(black_box(text)).is_ok())
        });
        group.bench_function("serde_json_parse", |b| {
            b.iter(|| serde_json_parse(black_box(text)).is_some())
        });
        group.finish();
    }
}

criterion_group!(benches, parse_commands);
criterion_main!(benches);
