//! `corecast bench --baseline` and `--compare`: several targets measured in turn with the same
//! load, the same receiver and the same CPUs, and one table of their ratios to the floors.
//!
//! Owns which targets a comparison measures and in what order (the floors first, then corecast,
//! then each `--peer`), how each is started (a floor on a thread of this process; corecast and
//! the peers as processes of their own on `--server-cpus`, see `spawn`), and the comparison's
//! outputs: every target's own report, then one table with each target's fan-out completion
//! against the floors', measured minutes apart on the same host rather than taken from another
//! day's run. Each target is measured exactly as a single run measures a server (see
//! `measure_target`), and stopped before the next one starts, so that targets never share
//! the CPUs. A target that cannot be started or measured is reported as failed and the others
//! still run; the floor-uring target is skipped with a note where io_uring is unavailable.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::floor::{self, Floor};
use crate::probe::Process;
use crate::publish::Via;
use crate::report::Report;
use crate::spawn::{self, PeerSpec, Spawned};
use crate::target::{Server, Target};
use crate::wire::{self, WsTarget};
use crate::{BenchArgs, Finished};

/// Time between one target's stop and the next one's start, in milliseconds: the stopped
/// server's sockets are closed and the CPUs are idle before the next one is measured.
const SETTLE_MS: u64 = 500;

/// The path subscribers of a spawned server connect to, as they do to corecast.
const SUBSCRIBE_PATH: &str = "/ws";

/// The path a peer's publisher connection connects to.
const PUBLISH_PATH: &str = "/publish";

/// One target of a comparison, before it is started.
enum Planned {
    Floor(floor::Kind),
    Corecast,
    /// corecast in cluster mode: this many nodes and a Redis.
    Cluster(u8),
    Peer(PeerSpec),
}

impl Planned {
    fn name(&self) -> String {
        match self {
            Self::Floor(kind) => kind.name().to_string(),
            Self::Corecast => "corecast".to_string(),
            Self::Cluster(nodes) => format!("corecast-{nodes}-nodes"),
            Self::Peer(peer) => peer.name.clone(),
        }
    }
}

/// How long cluster nodes may take to sync with Redis after they listen.
const CLUSTER_SYNC: Duration = Duration::from_secs(10);

/// A target's result: its measured run, or why it has none.
struct Row {
    name: String,
    outcome: Result<Finished, String>,
    /// Set when the host cannot run the target at all (the io_uring floor without io_uring):
    /// it is reported, and the comparison does not fail for it.
    skipped: bool,
}

/// Runs every target in turn, prints each report and the comparison table on stdout, and
/// writes the JSON and SVG files when asked. Exits 1 when a target failed to start, could not
/// finish or lost a delivery.
pub fn main(args: &BenchArgs) -> ExitCode {
    let rows = match run(args) {
        Ok(rows) => rows,
        Err(message) => {
            eprintln!("corecast bench: {message}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    let mut stdout = std::io::stdout().lock();
    for row in &rows {
        if let Ok(finished) = &row.outcome {
            let printed = writeln!(stdout, "== {}", row.name)
                .and_then(|()| finished.report.write_table(&mut stdout))
                .and_then(|()| writeln!(stdout));
            failed |= printed.is_err();
        }
    }
    failed |= write_comparison(&mut stdout, &rows).is_err();
    let finished: Vec<&Finished> = rows
        .iter()
        .filter_map(|row| row.outcome.as_ref().ok())
        .collect();
    if let Some(path) = &args.json {
        if let Err(error) = write_json(path, &rows) {
            eprintln!("corecast bench: cannot write {}: {error}", path.display());
            failed = true;
        }
    }
    if let Some(path) = &args.svg {
        if let Err(error) = super::write_svg(path, args, &finished) {
            eprintln!("corecast bench: {error}");
            failed = true;
        }
    }
    for row in &rows {
        match &row.outcome {
            Ok(finished) => {
                finished.print_notes();
                failed |= !finished.is_clean();
            }
            Err(message) if row.skipped => {
                eprintln!("corecast bench: {}: skipped: {message}", row.name);
            }
            Err(message) => {
                eprintln!("corecast bench: {}: FAILED: {message}", row.name);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Checks the host once, then starts, measures and stops each target in turn; sets every
/// report's ratios to the floors' of this run.
fn run(args: &BenchArgs) -> Result<Vec<Row>, String> {
    args.validate()?;
    args.check_bench_cpus()?;
    let server_cpus = args.server_cpu_list()?;
    for &cpu in &server_cpus {
        super::check_cpu("server-cpus", cpu)?;
    }
    super::prepare_host(args.subscribers, true)?;
    let mut rows = Vec::new();
    for (index, planned) in plan(args).into_iter().enumerate() {
        if index > 0 {
            std::thread::sleep(Duration::from_millis(SETTLE_MS));
        }
        let unavailable = match &planned {
            Planned::Floor(kind) => kind.unavailable(),
            Planned::Corecast | Planned::Cluster(_) | Planned::Peer(_) => None,
        };
        if let Some(reason) = unavailable {
            rows.push(Row {
                name: planned.name().to_string(),
                outcome: Err(reason),
                skipped: true,
            });
            continue;
        }
        eprintln!("corecast bench: measuring {}", planned.name());
        let outcome = start(args, &planned, &server_cpus)
            .and_then(|(target, endpoint)| super::measure_target(args, target, &endpoint));
        rows.push(Row {
            name: planned.name().to_string(),
            outcome,
            skipped: false,
        });
    }
    let floor_report = |kind: floor::Kind| {
        rows.iter()
            .find(|row| row.name == kind.name())
            .and_then(|row| row.outcome.as_ref().ok())
            .map(|finished| finished.report.clone())
    };
    let floor_write = floor_report(floor::Kind::Write);
    let floor_uring = floor_report(floor::Kind::Uring);
    for row in &mut rows {
        if let Ok(finished) = &mut row.outcome {
            finished
                .report
                .set_ratios(floor_write.as_ref(), floor_uring.as_ref());
        }
    }
    Ok(rows)
}

/// The targets of the run, in the order they are measured.
fn plan(args: &BenchArgs) -> Vec<Planned> {
    let mut planned = vec![
        Planned::Floor(floor::Kind::Write),
        Planned::Floor(floor::Kind::Uring),
    ];
    if args.compare {
        planned.push(Planned::Corecast);
        planned.extend(args.nodes.map(Planned::Cluster));
        planned.extend(args.peer.iter().cloned().map(Planned::Peer));
    }
    planned
}

/// Starts one target on `cpus` and returns it with the URL its subscribers use.
fn start(
    args: &BenchArgs,
    planned: &Planned,
    cpus: &[usize],
) -> Result<(Target, WsTarget), String> {
    match planned {
        Planned::Floor(kind) => {
            let floor = Floor::start(floor::Config {
                kind: *kind,
                cpu: cpus[0],
                subscribers: usize::try_from(args.subscribers).expect("bounded by SUBSCRIBERS_MAX"),
                channel_json: args.channel_json(),
                payload_bytes: args.payload_bytes,
                interval: Duration::from_millis(args.interval_ms),
                connect_concurrency: args.connect_concurrency,
            })?;
            let endpoint = ws_url(floor.addr(), floor::PATH)?;
            Ok((Target::Floor(floor), endpoint))
        }
        Planned::Corecast => {
            let ws = free_addr(&[])?;
            let api = free_addr(&[ws])?;
            let argv = corecast_argv(args, ws, api)?;
            let via = Via::Http(wire::publish_url(&format!("http://{api}"))?);
            let server = start_server(args, "corecast", &argv, cpus, &[ws, api], via)?;
            Ok((Target::Server(server), ws_url(ws, SUBSCRIBE_PATH)?))
        }
        Planned::Cluster(nodes) => start_cluster(args, *nodes, cpus),
        Planned::Peer(peer) => {
            let addr = SocketAddr::from(([127, 0, 0, 1], spawn::free_port()?));
            let argv = [
                "sh".to_string(),
                "-c".to_string(),
                peer.command_for(addr.port()),
            ];
            let via = Via::WebSocket(ws_url(addr, PUBLISH_PATH)?);
            let server = start_server(args, &peer.name, &argv, cpus, &[addr], via)?;
            Ok((Target::Server(server), ws_url(addr, SUBSCRIBE_PATH)?))
        }
    }
}

/// Starts a server process and waits until it accepts connections on `addrs`.
fn start_server(
    args: &BenchArgs,
    name: &str,
    argv: &[String],
    cpus: &[usize],
    addrs: &[SocketAddr],
    via: Via,
) -> Result<Server, String> {
    let mut spawned = Spawned::start(name, argv, cpus)?;
    spawned.await_listening(addrs)?;
    Ok(Server {
        name: name.to_string(),
        plan: args.plan(via, ureq::tls::TlsConfig::default()),
        process: Some(Process::Tree(spawned.pid())),
        cpus: cpus.to_vec(),
        spawned: vec![spawned],
    })
}

/// A free loopback address other than those in `taken`.
fn free_addr(taken: &[SocketAddr]) -> Result<SocketAddr, String> {
    loop {
        let addr = SocketAddr::from(([127, 0, 0, 1], spawn::free_port()?));
        if !taken.contains(&addr) {
            return Ok(addr);
        }
    }
}

/// Starts a `redis-server` and `nodes` corecast nodes on it; events go to the first node's
/// API, subscribers to the last node.
fn start_cluster(
    args: &BenchArgs,
    nodes: u8,
    cpus: &[usize],
) -> Result<(Target, WsTarget), String> {
    let name = Planned::Cluster(nodes).name();
    let redis = free_addr(&[])?;
    let redis_argv: Vec<String> = [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        &redis.port().to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let mut spawned = vec![Spawned::start("redis-server", &redis_argv, cpus)?];
    spawned[0].await_listening(&[redis])?;
    let mut taken = vec![redis];
    let mut apis = Vec::new();
    let mut last_ws = redis;
    for node in 0..nodes {
        let ws = free_addr(&taken)?;
        taken.push(ws);
        let api = free_addr(&taken)?;
        taken.push(api);
        let mut argv = corecast_argv(args, ws, api)?;
        argv.extend([
            "--redis".to_string(),
            format!("redis://{redis}"),
            "--sys-stats-interval-ms".to_string(),
            "0".to_string(),
        ]);
        let mut started = Spawned::start(&format!("{name} node {node}"), &argv, cpus)?;
        started.await_listening(&[ws, api])?;
        spawned.push(started);
        apis.push(api);
        last_ws = ws;
    }
    for api in &apis {
        await_cluster_sync(*api)?;
    }
    let via = Via::Http(wire::publish_url(&format!("http://{}", apis[0]))?);
    let subscribers_node = spawned.last().expect("nodes started").pid();
    let server = Server {
        name,
        plan: args.plan(via, ureq::tls::TlsConfig::default()),
        process: Some(Process::Tree(subscribers_node)),
        cpus: cpus.to_vec(),
        spawned,
    };
    Ok((Target::Server(server), ws_url(last_ws, SUBSCRIBE_PATH)?))
}

/// Waits until the node whose API is `api` reports it has synced with the cluster.
fn await_cluster_sync(api: SocketAddr) -> Result<(), String> {
    let deadline = std::time::Instant::now() + CLUSTER_SYNC;
    let url = format!("http://{api}/v1/stats");
    loop {
        let synced = ureq::get(&url)
            .call()
            .ok()
            .and_then(|mut reply| reply.body_mut().read_to_string().ok())
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .is_some_and(|stats| stats["cluster"]["seq"].is_u64());
        if synced {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "the cluster node at {api} did not sync with Redis within {CLUSTER_SYNC:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `corecast serve` on `ws` and `api`, with `--corecast-args`, and on `--server-cpus` unless
/// those name the cores themselves.
fn corecast_argv(args: &BenchArgs, ws: SocketAddr, api: SocketAddr) -> Result<Vec<String>, String> {
    let exe = std::env::current_exe()
        .map_err(|error| format!("corecast: cannot find this executable: {error}"))?;
    let mut argv = vec![
        exe.to_string_lossy().into_owned(),
        "serve".to_string(),
        "--listen".to_string(),
        ws.to_string(),
        "--api".to_string(),
        api.to_string(),
    ];
    let extra: Vec<String> = args
        .corecast_args
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !extra
        .iter()
        .any(|arg| arg == "--cores" || arg.starts_with("--cores="))
    {
        argv.extend(["--cores".to_string(), args.server_cpus.clone()]);
    }
    argv.extend(extra);
    Ok(argv)
}

fn ws_url(addr: SocketAddr, path: &str) -> Result<WsTarget, String> {
    wire::parse_ws_url(&format!("ws://{addr}{path}"))
}

/// Writes the comparison: one line per target with its fan-out completion and delivery
/// latency, its server's cost, its loss and its ratios to the floors.
fn write_comparison(out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    let ratio = |ratio: Option<f64>| ratio.map_or("-".to_string(), |ratio| format!("{ratio:.2}"));
    let optional = |value: Option<String>| value.unwrap_or_else(|| "-".to_string());
    let header = [
        "target",
        "fan-out p50 ms",
        "fan-out p99 ms",
        "delivery p50 ms",
        "delivery p99 ms",
        "server CPU/delivery ns",
        "RSS/conn B",
        "lost/dup/order",
        "p50 vs write",
        "p99 vs write",
        "p50 vs uring",
    ];
    let mut lines = vec![header.map(str::to_string).to_vec()];
    for row in rows {
        let line = match &row.outcome {
            Ok(finished) => {
                let report = &finished.report;
                vec![
                    row.name.clone(),
                    ms(report.fanout_completion_us_p50),
                    ms(report.fanout_completion_us_p99),
                    ms(report.latency_us_p50),
                    ms(report.latency_us_p99),
                    optional(report.server_cpu_per_delivery_ns.map(|ns| ns.to_string())),
                    optional(
                        report
                            .server_rss_per_conn_bytes
                            .map(|bytes| bytes.to_string()),
                    ),
                    format!(
                        "{}/{}/{}",
                        report.lost, report.duplicated, report.out_of_order
                    ),
                    ratio(report.fanout_p50_vs_floor_write),
                    ratio(report.fanout_p99_vs_floor_write),
                    ratio(report.fanout_p50_vs_floor_uring),
                ]
            }
            Err(_) => {
                let mut line = vec![row.name.clone(), "(no result: see below)".to_string()];
                line.resize(header.len(), String::new());
                line
            }
        };
        lines.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            lines
                .iter()
                .map(|line| line[column].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                if column == 0 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// Writes every measured report and every failure as pretty JSON:
/// `{"runs": [report, ...], "failed": [{"target": name, "error": message}, ...]}`.
fn write_json(path: &std::path::Path, rows: &[Row]) -> std::io::Result<()> {
    let runs: Vec<&Report> = rows
        .iter()
        .filter_map(|row| row.outcome.as_ref().ok())
        .map(|finished| &finished.report)
        .collect();
    let failed: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|row| {
            let error = row.outcome.as_ref().err()?;
            Some(serde_json::json!({ "target": row.name, "error": error }))
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&serde_json::json!({
        "runs": runs,
        "failed": failed,
    }))
    .expect("reports serialize");
    text.push('\n');
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::Summary;
    use crate::report::Cost;
    use crate::tests::{parse, within_watchdog};

    fn finished(target: &str, fanout_p50_us: u64) -> Finished {
        let summary = Summary {
            deliveries: 10,
            deliveries_per_s: 100.0,
            latency_us_p50: 1_000,
            latency_us_p90: 2_000,
            latency_us_p99: 3_000,
            latency_us_p999: 4_000,
            latency_us_max: 5_000,
            fanout_completion_us_p50: fanout_p50_us,
            fanout_completion_us_p99: 2 * fanout_p50_us,
            fanout_completion_us_max: 3 * fanout_p50_us,
            lost: 0,
            duplicated: 0,
            out_of_order: 0,
            foreign_frames: 0,
        };
        let cost = Cost {
            bench_cpu_ns: 10_000,
            server_cpu_ns: Some(50_000),
        };
        Finished {
            report: Report::new(target.into(), parse(&[]).load(), 1, &summary, cost, None),
            latency_cdf: Vec::new(),
            fanout_cdf: Vec::new(),
            failure: None,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn corecast_runs_on_the_server_cpus_unless_told_its_cores() {
        let ws = SocketAddr::from(([127, 0, 0, 1], 1000));
        let api = SocketAddr::from(([127, 0, 0, 1], 1001));
        let args = parse(&[
            "--compare",
            "--server-cpus",
            "0-1",
            "--corecast-args",
            "--shards 2",
        ]);
        let argv = corecast_argv(&args, ws, api).unwrap();
        assert_eq!(
            argv[1..],
            [
                "serve",
                "--listen",
                "127.0.0.1:1000",
                "--api",
                "127.0.0.1:1001",
                "--cores",
                "0-1",
                "--shards",
                "2"
            ]
        );
        let args = parse(&["--compare", "--corecast-args", "--cores 1 --ingest-core 0"]);
        let argv = corecast_argv(&args, ws, api).unwrap();
        assert_eq!(argv[6..], ["--cores", "1", "--ingest-core", "0"]);
    }

    #[test]
    fn the_table_has_a_line_per_target_with_its_ratios_and_failures_marked() {
        let floor = finished("floor-write", 4_000);
        let mut corecast = finished("corecast", 5_000);
        corecast.report.set_ratios(Some(&floor.report), None);
        let rows = vec![
            Row {
                name: "floor-write".into(),
                outcome: Ok(floor),
                skipped: false,
            },
            Row {
                name: "corecast".into(),
                outcome: Ok(corecast),
                skipped: false,
            },
            Row {
                name: "tokio".into(),
                outcome: Err("tokio ended (exit status: 1) before it accepted connections".into()),
                skipped: false,
            },
        ];
        let mut out = Vec::new();
        write_comparison(&mut out, &rows).unwrap();
        let table = String::from_utf8(out).unwrap();
        let lines: Vec<Vec<&str>> = table
            .lines()
            .map(|line| {
                line.split("  ")
                    .map(str::trim)
                    .filter(|cell| !cell.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert_eq!(lines[0][0], "target");
        assert_eq!(lines[0].len(), 11, "{table}");
        assert_eq!(
            lines[2],
            [
                "corecast", "5.00", "10.00", "1.00", "3.00", "5000", "-", "0/0/0", "1.25", "1.25",
                "-"
            ]
        );
        assert_eq!(lines[3], ["tokio", "(no result: see below)"]);
        let end_of_second_column: Vec<Option<usize>> = table
            .lines()
            .take(3)
            .map(|line| {
                line.find("ms")
                    .or_else(|| line.find(".00"))
                    .map(|at| at + 2)
            })
            .collect();
        assert_eq!(end_of_second_column[1], end_of_second_column[2], "{table}");
    }

    /// `--baseline` end to end at small scale: both floors deliver every event to every
    /// subscriber once and in order, report their CPU time, and carry their ratios.
    #[test]
    fn baseline_measures_both_floors_with_their_ratios() {
        let cores = core_affinity::get_core_ids().unwrap();
        let server_cpu = cores[0].id.to_string();
        let bench_cpu = cores[cores.len() - 1].id.to_string();
        let args = parse(&[
            "--baseline",
            "--server-cpus",
            &server_cpu,
            "--cpu",
            &bench_cpu,
            "--subscribers",
            "50",
            "--events",
            "5",
            "--warmup-events",
            "2",
            "--interval-ms",
            "10",
            "--timeout-s",
            "20",
        ]);
        let rows =
            within_watchdog(Duration::from_secs(60), move || run(&args)).expect("the run starts");
        let names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
        assert_eq!(names, ["floor-write", "floor-uring"]);
        for row in &rows {
            let finished = row.outcome.as_ref().unwrap();
            assert_eq!(finished.failure, None);
            let report = &finished.report;
            assert_eq!(report.target, row.name);
            assert_eq!(report.deliveries, 50 * 5);
            assert!(report.is_clean());
            assert!(report.server_cpu_per_delivery_ns.is_some_and(|ns| ns > 0));
            assert!(report.fanout_p50_vs_floor_write.is_some());
            assert!(report.fanout_p50_vs_floor_uring.is_some());
            assert_eq!(finished.fanout_cdf.last().map(|point| point.1), Some(1.0));
        }
        assert_eq!(
            rows[0]
                .outcome
                .as_ref()
                .unwrap()
                .report
                .fanout_p50_vs_floor_write,
            Some(1.0)
        );
    }

    #[test]
    fn a_cpu_the_process_may_not_use_is_refused() {
        let args = parse(&["--baseline", "--server-cpus", "100000"]);
        let Err(message) = run(&args) else {
            panic!("--server-cpus 100000 was accepted");
        };
        assert!(
            message.starts_with(
                "--server-cpus 100000 is not a CPU this process may run on; allowed: "
            ),
            "{message}"
        );
    }
}
