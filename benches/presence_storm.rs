//! The presence storm of README "Presence": `--joins` connections (10,000) join one
//! `join_leave` channel as fast as `--concurrency` handshakes at a time allow while
//! `--watchers` subscribers (100) watch it. It reports the `presence_diff` frames each watcher
//! received for the storm, the joins those frames listed, the server's CPU time over the
//! storm (from `/proc/<pid>/stat`), and how long until `GET /v1/presence` counted every join.
//!
//! `cargo build --release && cargo bench --bench presence_storm` (it runs
//! `target/release/corecast`, or `--server PATH`). Every connection stays open and reads what
//! it is sent, as a live client would: the joiners are subscribers too, so they receive the
//! diffs as well.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// The run's shape, from `--name value` pairs.
struct Args {
    server: String,
    joins: usize,
    watchers: usize,
    concurrency: usize,
    shards: usize,
}

fn args() -> Args {
    let mut args = Args {
        server: "target/release/corecast".into(),
        joins: 10_000,
        watchers: 100,
        concurrency: 200,
        shards: 2,
    };
    let given: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    for pair in given.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        let number = || value.parse().expect("a number");
        match pair[0].as_str() {
            "--server" => args.server = value.clone(),
            "--joins" => args.joins = number(),
            "--watchers" => args.watchers = number(),
            "--concurrency" => args.concurrency = number(),
            "--shards" => args.shards = number(),
            other => panic!(
                "unknown flag {other}: take --server PATH --joins N --watchers N \
                 --concurrency N --shards N"
            ),
        }
    }
    args
}

/// User plus system CPU seconds the process has used.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server's stat");
    let after = &stat[stat.rfind(')').expect("a comm field") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// What one watcher saw of the storm.
#[derive(Default)]
struct Seen {
    frames: AtomicUsize,
    joined: AtomicUsize,
    truncated: AtomicUsize,
}

#[tokio::main]
async fn main() {
    let args = args();
    let config = std::env::temp_dir().join(format!("presence-storm-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "presence_diff_interval_ms = 1000\n[[namespaces]]\npattern = \"room.*\"\n\
         presence = true\njoin_leave = true\n",
    )
    .expect("write the config");
    let mut child = Command::new(&args.server)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--shards",
        ])
        .arg(args.shards.to_string())
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", args.server));
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = loop {
        let line = lines.next().expect("a listening line").unwrap();
        if let Some(rest) = line.strip_prefix("listening ") {
            break rest.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let field = |name: &str| {
        listening
            .split(' ')
            .find_map(|part| part.strip_prefix(name))
            .expect("ws= and api=")
            .to_owned()
    };
    let (ws, api) = (field("ws="), field("api="));

    let watchers: Vec<Arc<Seen>> = (0..args.watchers).map(|_| Arc::default()).collect();
    let counting = Arc::new(AtomicU64::new(0));
    for seen in &watchers {
        let url = format!("ws://{ws}/ws?channels=room.1");
        let (mut stream, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("a watcher");
        let (seen, counting) = (seen.clone(), counting.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                if counting.load(Ordering::Relaxed) == 0 || !text.contains("presence_diff") {
                    continue;
                }
                let diff: serde_json::Value = serde_json::from_str(&text).unwrap();
                seen.frames.fetch_add(1, Ordering::Relaxed);
                let joined = diff["joined"].as_array().map_or(0, Vec::len);
                seen.joined.fetch_add(joined, Ordering::Relaxed);
                if diff["truncated"] == true {
                    seen.truncated.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // The watchers' own joins go out in the next diff; the storm is counted after it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    counting.store(1, Ordering::Relaxed);

    let cpu_before = cpu_s(pid);
    let started = Instant::now();
    let expected = args.joins + args.watchers;
    let presence_url = format!("http://{api}/v1/presence?channel=room.1&members=false");
    let counted = tokio::task::spawn_blocking(move || loop {
        if started.elapsed() > Duration::from_secs(60) {
            return None;
        }
        let body = ureq::get(&presence_url)
            .call()
            .ok()
            .and_then(|mut reply| reply.body_mut().read_to_string().ok())
            .unwrap_or_default();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if body["connections"].as_u64() == Some(expected as u64) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    });
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut joiners = Vec::with_capacity(args.joins);
    for n in 0..args.joins {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let url = format!("ws://{ws}/ws?user=u{n}&channels=room.1");
        joiners.push(tokio::spawn(async move {
            let (mut stream, _) = tokio_tungstenite::connect_async(&url)
                .await
                .expect("a joiner");
            stream.next().await.expect("connected").expect("connected");
            drop(permit);
            while let Some(Ok(_)) = stream.next().await {}
        }));
    }
    // Every handshake done: the last permit back.
    let _all = gate.acquire_many(args.concurrency as u32).await.unwrap();
    let connected = started.elapsed();
    let counted = counted.await.unwrap();
    // Two more intervals for the last joins' diff to arrive.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let cpu = cpu_s(pid) - cpu_before;
    let window = started.elapsed();

    let mut frames: Vec<usize> = watchers
        .iter()
        .map(|s| s.frames.load(Ordering::Relaxed))
        .collect();
    frames.sort_unstable();
    let joined: Vec<usize> = watchers
        .iter()
        .map(|s| s.joined.load(Ordering::Relaxed))
        .collect();
    let truncated: usize = watchers
        .iter()
        .map(|s| s.truncated.load(Ordering::Relaxed))
        .sum();
    println!(
        "joins {} (concurrency {}), watchers {}, shards {}",
        args.joins, args.concurrency, args.watchers, args.shards
    );
    println!(
        "all {} joiners connected after {:.3} s",
        args.joins,
        connected.as_secs_f64()
    );
    match counted {
        Some(counted) => println!(
            "GET /v1/presence counted all {expected} after {:.3} s",
            counted.as_secs_f64()
        ),
        None => println!("GET /v1/presence never counted all {expected} within 60 s"),
    }
    println!(
        "presence_diff frames per watcher: min {} median {} max {} (of them truncated: {truncated} over all watchers)",
        frames[0],
        frames[frames.len() / 2],
        frames[frames.len() - 1]
    );
    println!(
        "joins listed per watcher: min {} max {}",
        joined.iter().min().unwrap(),
        joined.iter().max().unwrap()
    );
    println!(
        "server CPU over the {:.1} s window: {cpu:.2} s (user + system)",
        window.as_secs_f64()
    );
    for joiner in joiners {
        joiner.abort();
    }
    let _ = child.kill();
    let _ = child.wait();
}
