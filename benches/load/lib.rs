//! corecast-bench: `corecast bench`, the fan-out load generator. It opens N subscriber WebSocket
//! connections, publishes M events through the control-plane API (or, for a server without one,
//! through a publisher WebSocket the server relays), stamps every delivery on arrival and reports
//! latency, fan-out completion, throughput, loss and the server's memory per connection, as a
//! table, a JSON file and an SVG plot of the distributions. With `--baseline` it measures the
//! floors instead of a server: a minimal server on a pinned thread of its own process that writes
//! each event to every socket with a blocking write() loop, then with batched io_uring sends, so
//! that a server's figures can be read against what the kernel alone costs on the same host with
//! the same receiver (see `floor`). With `--compare` it measures the floors, corecast and any
//! `--peer` in turn on the same CPUs and prints one table of ratios (see `compare`).
//!
//! Owns one target's run: check the host (open-file limit, local ports, the CPUs), connect and
//! await every `connected`, publish warm-up events and await them, publish the measured events
//! and await them, close, report. It never shares a core with the server it measures: the
//! receive side is one thread per CPU of `--cpu` (one when it names one CPU or is absent),
//! each running a `mio` event loop over its share of the connections, and the publisher is
//! one plain thread on the first of those CPUs; the servers run on `--server-cpus`. The
//! orchestration runs between the first loop's turns on the same thread, and every loop
//! records into figures of its own, merged at the end, so nothing on the delivery path is
//! shared across threads.
//! It must never be the bottleneck it reports: its own code spends no allocation and no JSON
//! parse on a delivery (see `conn` and `wire`), reads the clock once per wake-up (see
//! `receiver`), and the report shows the bench's CPU time per delivery next to the server's
//! (with `--server-pid`, for a server the bench started, or for the floor's thread), with a
//! warning when the bench's is the larger, so that a run says whether it measured itself.
//!
//! It speaks to a server only through the wire: the protocol's types and the client codec come
//! from `corecast-proto`, and it must never depend on the server's crate, whose binary runs it
//! (and which it measures as a separate process). The tests that pin its bytes against the
//! server's own encoders therefore live above both, in the root package's `tests/bench_wire.rs`
//! (see [`formats`]).
//!
//! # Layout
//! - `compare`: `--baseline` and `--compare`: the targets in turn, the table of ratios.
//! - `target`: what a run measures, a server or a floor: how it is published to, where its
//!   CPU time comes from, and how it is stopped.
//! - `spawn`: the server processes `--compare` starts (corecast, the peers): CPUs, readiness,
//!   output, stop.
//! - `floor`: the floor servers, their thread and their side of the wire.
//! - `wire`: the bench's upgrade requests and the delivery field scan, over the client codec
//!   ([`corecast_proto::wire`], [`corecast_proto::buffer`]) it shares with the Rust client.
//! - `conn`: one subscriber connection: its socket and its protocol state machine.
//! - `receiver`: the event loop that owns one thread's connections, and their admission.
//! - `receivers`: one loop per CPU of `--cpu`: the threads, their progress, the merge.
//! - `recorder`: latency histogram, per-event counts and times, loss/duplicate/order counters,
//!   and the distributions the plot draws.
//! - `publish`: the publisher thread (HTTP or WebSocket), the event body format and the phase
//!   protocol every target's publishing follows.
//! - `probe`: resident memory and CPU time of the server (a process, or a process tree), of
//!   the bench and of one of its threads, from `/proc`.
//! - `report`: the result record and its table and JSON renderings.
//! - `plot`: the SVG plot of the latency distributions, one curve per target.
//! - `throughput`: `--throughput-s`: publishes a second through the API, no fan-out.

// No unsafe code, but in one place that allows it by name: the io_uring floor
// (`floor::uring`), which queues sends on a ring of its own; see its SAFETY comments.
#![deny(unsafe_code)]

mod compare;
mod conn;
mod floor;
mod plot;
mod probe;
mod publish;
mod receiver;
mod receivers;
mod recorder;
mod report;
mod spawn;
mod target;
mod throughput;
mod wire;

/// The bytes the bench writes in a server's place (the floor's greeting and message frames, the
/// publisher's message text and event data) and the scan it reads deliveries with: public only
/// so that the root package's `tests/bench_wire.rs` can pin them against the server's own
/// encoders, since this crate must not depend on the server.
pub mod formats {
    pub use crate::floor::wire::{connected_frame, message_frame};
    pub use crate::publish::{message_parts, write_data};
    pub use crate::wire::{Delivery, Scanner};
}

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corecast_proto::channel::CHANNEL_BYTES_MAX;
use indicatif::{ProgressBar, ProgressStyle};

use probe::Process;
use publish::{Outcome, Phase, Plan, Published, Publisher, Via};
use receivers::Receivers;
use report::{Cost, Load, Report, ServerRss};
use spawn::PeerSpec;
use target::{Server, ServerCpu, Target};
use wire::WsTarget;

/// Most subscriber connections one bench process opens.
const SUBSCRIBERS_MAX: u64 = 1_000_000;

/// Most measured events in one run; the recorder keeps 24 bytes per event.
const EVENTS_MAX: u64 = 1_000_000;

/// Most warm-up events in one run.
const WARMUP_EVENTS_MAX: u64 = 10_000;

/// Smallest `data` size, in bytes: room for `seq`, `t_us` and an empty `pad` at any `seq`.
const PAYLOAD_BYTES_MIN: usize = 64;

/// Largest `data` size, in bytes.
const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;

/// Longest time between two publishes, in milliseconds.
const INTERVAL_MS_MAX: u64 = 60_000;

/// Most handshakes in flight at once.
const CONNECT_CONCURRENCY_MAX: usize = 65_536;

/// Longest watchdog, in seconds (one day).
const TIMEOUT_S_MAX: u64 = 86_400;

/// File descriptors the process needs besides its subscribers' sockets: stdio, the epoll
/// instance, the publisher's HTTP connection or the floor's listener, `/proc` reads.
const FDS_RESERVED: u64 = 64;

/// Longest the receive loop sleeps in `poll()` when nothing arrives, in milliseconds: how late
/// the watchdog, a drain stall and the publisher's answer can be noticed. Receive times do not
/// depend on it; a shorter tick costs more idle wake-ups during the measured phase.
const TICK_MS: u64 = 10;

/// How long a phase may go without a single frame arriving, after its last publish was
/// accepted, before the bench stops waiting and counts what is missing as lost, in
/// milliseconds. A slow server still makes progress and is waited for until the watchdog.
const DRAIN_STALL_MS: u64 = 2_000;

/// How long the subscribers get to exchange Close frames at the end, in milliseconds.
const CLOSE_WAIT_MS: u64 = 1_000;

/// Options of `corecast bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// WebSocket URL of the server, ws:// or wss:// (TLS); `?channels=<channel>` is appended.
    #[arg(long, value_name = "URL", default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,

    /// Control-plane URL of the server, http:// or https://; events go to `{api}/v1/publish`.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8081")]
    pub api: String,

    /// For wss:// and https://: a PEM file of the CA certificates to trust (a private CA, or a
    /// self-signed server's certificate) instead of the built-in Mozilla roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Subscriber connections to open; each receives every event (1 to 1,000,000).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub subscribers: u64,

    /// Measured events to publish (1 to 1,000,000).
    #[arg(long, value_name = "M", default_value_t = 100)]
    pub events: u64,

    /// Size of each event's JSON `data` value in bytes, padded with `pad` (64 to 1,048,576).
    #[arg(long, value_name = "S", default_value_t = 100)]
    pub payload_bytes: usize,

    /// Time between two publishes in milliseconds, on a fixed schedule (0 to 60,000).
    #[arg(long, value_name = "I", default_value_t = 20)]
    pub interval_ms: u64,

    /// Channel every subscriber subscribes to and every event is published on.
    #[arg(long, value_name = "NAME", default_value = "bench.fanout")]
    pub channel: String,

    /// Handshakes in flight at once while connecting, split evenly across the receive threads
    /// of --cpu (at least one each); higher connects faster but can overflow the server's
    /// accept backlog (1 to 65,536).
    #[arg(long, value_name = "K", default_value_t = 256)]
    pub connect_concurrency: usize,

    /// CPUs to pin the bench to, as a list like --server-cpus (`1`, `8-15`, `0,2,4-7`): one
    /// receive thread pinned to each, the subscribers dealt round-robin across them, the
    /// publisher on the first. With one CPU the bench is one receive thread and the publisher,
    /// both on it; without --cpu, the same unpinned.
    #[arg(long, value_name = "LIST", value_parser = CpuList::parse)]
    pub cpu: Option<CpuList>,

    /// Server process id, to report its resident memory (before connecting, once idle) and its
    /// CPU time per delivery next to the bench's.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Watchdog for the whole run in seconds: on expiry the bench reports what arrived and
    /// fails (1 to 86,400).
    #[arg(long, value_name = "T", default_value_t = 60)]
    pub timeout_s: u64,

    /// Events published and awaited before the measured ones, and left out of the figures
    /// (0 to 10,000). The first events after thousands of connections open are slower: on the
    /// 2-vCPU development VM the first 10 to 20 after 10,000 took up to 2.4 times the steady
    /// fan-out time, in the server's own histogram too. Give 0 to measure them.
    #[arg(long, value_name = "W", default_value_t = 30)]
    pub warmup_events: u64,

    /// Publish through a WebSocket connection to this URL instead of the API: the server must
    /// relay every text message of that connection, unchanged, to every subscriber (the peer
    /// contract; see `--peer`). --api is then not used.
    #[arg(long, value_name = "URL", conflicts_with = "api")]
    pub publish_ws: Option<String>,

    /// Measure the floors instead of a server, in turn: a minimal server on a thread of this
    /// process, pinned to the first of --server-cpus, that writes each event's frame to every
    /// subscriber with a plain blocking write() loop (`floor-write`), then with batched io_uring
    /// sends (`floor-uring`). --ws, --api and --server-pid are not used.
    #[arg(long, conflicts_with = "compare")]
    pub baseline: bool,

    /// Measure, in turn and with the same load: both floors, corecast (this executable's
    /// `serve`, started on --server-cpus with --corecast-args) and every --peer; then print one
    /// table with each target's ratio to the floors. --ws, --api and --server-pid are not used.
    #[arg(long)]
    pub compare: bool,

    /// CPUs the servers of --baseline and --compare run on (a list such as `0` or `0-1`): the
    /// floors on the first, corecast and the peers on all. Give the bench others with --cpu.
    #[arg(long, value_name = "LIST", default_value = "0")]
    pub server_cpus: String,

    /// Extra `corecast serve` options for --compare, split at spaces (for example
    /// `--shards 2`). The bench sets --listen and --api, and --cores to --server-cpus unless
    /// these options hold --cores.
    #[arg(
        long,
        value_name = "OPTIONS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub corecast_args: String,

    /// A server to compare with --compare, as NAME=COMMAND: the bench starts `sh -c COMMAND`
    /// on --server-cpus with `{port}` replaced by a free port. The peer must accept WebSocket
    /// upgrades on that port, greet each subscriber (on `/ws`) with a text message holding
    /// `"type":"connected"` once it receives broadcasts, and relay every text message of the
    /// publisher connection (on `/publish`) unchanged to every subscriber. Repeat for several
    /// peers.
    #[arg(long, value_name = "NAME=COMMAND", value_parser = PeerSpec::parse)]
    pub peer: Vec<PeerSpec>,

    /// With --compare, also measure corecast in cluster mode: N nodes (2 to 8) and a
    /// `redis-server` (which must be on the PATH), all on --server-cpus. Events are published
    /// to the first node's API and every subscriber is on the last node, so each event crosses
    /// Redis; the table then shows the extra latency against the single node of the same run.
    /// The server CPU and memory figures are the subscribers' node's.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(2..=8))]
    pub nodes: Option<u8>,

    /// Also draw the latency distributions (per delivery, and per event's fan-out completion)
    /// as CDFs into this SVG file, one curve per target.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,

    /// Measure publish throughput instead of fan-out, for this many seconds (1 to 3,600):
    /// --publishers threads post to --api (a comma-separated list: a cluster's nodes, dealt
    /// round-robin) as fast as they are answered, with no subscriber; the report gives messages
    /// and requests a second, request latency, refusals, and the CPU time per message of every
    /// process of --pids.
    #[arg(long, value_name = "T", conflicts_with_all = ["baseline", "compare"])]
    pub throughput_s: Option<u64>,

    /// With --throughput-s: publisher threads, each with one connection (1 to 1,024).
    #[arg(long, value_name = "K", default_value_t = 8)]
    pub publishers: usize,

    /// With --throughput-s: messages per request; above 1, `/v1/publish/batch` (1 to 1,000).
    #[arg(long, value_name = "B", default_value_t = 1)]
    pub batch: usize,

    /// With --throughput-s: processes (corecast nodes, `redis-server`) whose CPU time per
    /// message published to report, as a comma-separated list of pids.
    #[arg(long, value_name = "PIDS", value_delimiter = ',')]
    pub pids: Option<Vec<u32>>,
}

impl BenchArgs {
    /// Refuses values outside their ranges, naming the flag, the value and the range.
    pub fn validate(&self) -> Result<(), String> {
        fn check<T: PartialOrd + std::fmt::Display>(
            flag: &str,
            value: T,
            min: T,
            max: T,
        ) -> Result<(), String> {
            if value < min || value > max {
                return Err(format!("--{flag} {value} is outside {min}..={max}"));
            }
            Ok(())
        }
        check("subscribers", self.subscribers, 1, SUBSCRIBERS_MAX)?;
        check("events", self.events, 1, EVENTS_MAX)?;
        check("warmup-events", self.warmup_events, 0, WARMUP_EVENTS_MAX)?;
        check(
            "payload-bytes",
            self.payload_bytes,
            PAYLOAD_BYTES_MIN,
            PAYLOAD_BYTES_MAX,
        )?;
        check("interval-ms", self.interval_ms, 0, INTERVAL_MS_MAX)?;
        check(
            "connect-concurrency",
            self.connect_concurrency,
            1,
            CONNECT_CONCURRENCY_MAX,
        )?;
        check("timeout-s", self.timeout_s, 1, TIMEOUT_S_MAX)?;
        check("channel length", self.channel.len(), 1, CHANNEL_BYTES_MAX)?;
        check("publishers", self.publishers, 1, 1_024)?;
        check("batch", self.batch, 1, 1_000)?;
        if let Some(seconds) = self.throughput_s {
            check("throughput-s", seconds, 1, 3_600)?;
        }
        self.validate_modes()?;
        self.server_cpu_list().map(|_| ())
    }

    /// Refuses flags that do not apply to the mode (one server, `--baseline`, `--compare`).
    fn validate_modes(&self) -> Result<(), String> {
        let mode = if self.compare {
            "--compare"
        } else {
            "--baseline"
        };
        let starts_its_servers = self.baseline || self.compare;
        if let (true, Some(pid)) = (starts_its_servers, self.server_pid) {
            return Err(format!(
                "--server-pid {pid} does not apply to {mode}: the bench starts the servers it \
                 measures and reads their memory and CPU time itself"
            ));
        }
        if let (true, Some(url)) = (starts_its_servers, &self.publish_ws) {
            return Err(format!(
                "--publish-ws {url} does not apply to {mode}: the bench publishes to corecast's \
                 API and to each peer's /publish"
            ));
        }
        if !self.compare {
            if let Some(peer) = self.peer.first() {
                return Err(format!("--peer {} needs --compare", peer.name));
            }
            if !self.corecast_args.trim().is_empty() {
                return Err("--corecast-args needs --compare".into());
            }
            if self.nodes.is_some() {
                return Err("--nodes needs --compare".into());
            }
        }
        let mut names = vec![
            floor::Kind::Write.name(),
            floor::Kind::Uring.name(),
            "corecast",
        ];
        for peer in &self.peer {
            if names.contains(&peer.name.as_str()) {
                return Err(format!(
                    "--peer {}: another target of the comparison has that name",
                    peer.name
                ));
            }
            names.push(&peer.name);
        }
        Ok(())
    }

    /// The CPUs of `--server-cpus`.
    fn server_cpu_list(&self) -> Result<Vec<usize>, String> {
        corecast_proto::host::parse_cpu_list(&self.server_cpus)
            .map_err(|error| format!("--server-cpus: {error}"))
    }

    /// The CPUs of `--cpu`, in the order given; empty when unpinned.
    fn bench_cpus(&self) -> &[usize] {
        self.cpu.as_ref().map_or(&[], CpuList::cpus)
    }

    /// Refuses a CPU of `--cpu` this process may not run on.
    fn check_bench_cpus(&self) -> Result<(), String> {
        self.bench_cpus()
            .iter()
            .try_for_each(|&cpu| check_cpu("cpu", cpu))
    }

    /// What every target of the run is asked to carry.
    fn load(&self) -> Load {
        Load {
            subscribers: self.subscribers,
            events: self.events,
            warmup_events: self.warmup_events,
            payload_bytes: self.payload_bytes as u64,
            interval_ms: self.interval_ms,
            bench_cpus: self.bench_cpus().to_vec(),
        }
    }

    /// How a server is to be published to through `via`, with `api_tls` for an https:// API.
    fn plan(&self, via: Via, api_tls: ureq::tls::TlsConfig) -> Plan {
        Plan {
            via,
            api_tls,
            channel_json: self.channel_json(),
            payload_bytes: self.payload_bytes,
            interval: Duration::from_millis(self.interval_ms),
        }
    }

    /// The certificates of `--ca`, read once per call; `None` without it. The error names
    /// `--ca` and the file.
    fn ca_pem(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(path) = &self.ca else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|err| format!("--ca {}: {err}", path.display()))?;
        corecast_proto::tls::certificates(&pem)
            .map_err(|err| format!("--ca {}: {err}", path.display()))?;
        Ok(Some(pem))
    }

    /// How the subscribers of `endpoint` speak TLS: `None` for ws://.
    fn subscriber_tls(&self, endpoint: &WsTarget) -> Result<Option<conn::Tls>, String> {
        if !endpoint.tls {
            return Ok(None);
        }
        let roots = corecast_proto::tls::roots(self.ca_pem()?.as_deref())?;
        Ok(Some(conn::Tls {
            config: corecast_proto::tls::client_config(roots),
            server_name: corecast_proto::tls::server_name(endpoint.host())
                .map_err(|err| format!("--ws {err}"))?,
        }))
    }

    /// ureq's TLS settings for an https:// `--api`: rustls, trusting `--ca` or the built-in
    /// Mozilla roots.
    fn api_tls(&self) -> Result<ureq::tls::TlsConfig, String> {
        let builder = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
        let Some(pem) = self.ca_pem()? else {
            return Ok(builder.build());
        };
        let certificates = corecast_proto::tls::certificates(&pem)?
            .iter()
            .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
            .collect();
        Ok(builder
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(
                certificates,
            )))
            .build())
    }

    /// The channel name as a JSON string, quotes included.
    fn channel_json(&self) -> String {
        serde_json::to_string(&self.channel).expect("a string serializes")
    }
}

/// Runs the bench, prints the report on stdout and writes it as JSON and SVG when asked.
/// Exits 1 when a delivery was lost, duplicated or out of order, or when the run could not be
/// set up or finished, with the reason on stderr. `--baseline` and `--compare` go to `compare`.
pub fn main(args: BenchArgs) -> ExitCode {
    if args.baseline || args.compare {
        return compare::main(&args);
    }
    if let Some(seconds) = args.throughput_s {
        return match args
            .validate()
            .and_then(|()| throughput::main(&args, seconds))
        {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("corecast bench: {message}");
                ExitCode::FAILURE
            }
        };
    }
    let finished = match run(&args) {
        Ok(finished) => finished,
        Err(message) => {
            eprintln!("corecast bench: {message}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = !finished.is_clean();
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = finished.report.write_table(&mut stdout) {
        eprintln!("corecast bench: cannot print the report: {error}");
        failed = true;
    }
    if let Some(path) = &args.json {
        if let Err(error) = finished.report.write_json(path) {
            eprintln!("corecast bench: cannot write {}: {error}", path.display());
            failed = true;
        }
    }
    if let Some(path) = &args.svg {
        if let Err(error) = write_svg(path, &args, &[&finished]) {
            eprintln!("corecast bench: {error}");
            failed = true;
        }
    }
    finished.print_notes();
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A run that got as far as publishing: its report, and why it failed if it did.
struct Finished {
    report: Report,
    /// The latency and fan-out completion distributions, for the plot.
    latency_cdf: Vec<(u64, f64)>,
    fanout_cdf: Vec<(u64, f64)>,
    /// Why the measured phase could not finish (watchdog, publish error).
    failure: Option<String>,
    /// What the operator should know even when nothing was lost.
    warnings: Vec<String>,
}

impl Finished {
    /// Whether the run finished and every delivery arrived once and in order.
    fn is_clean(&self) -> bool {
        self.failure.is_none() && self.report.is_clean()
    }

    /// Prints the warnings, the failure and the loss on stderr, each naming the target.
    fn print_notes(&self) {
        let target = &self.report.target;
        for warning in &self.warnings {
            eprintln!("corecast bench: {target}: {warning}");
        }
        if let Some(failure) = &self.failure {
            eprintln!("corecast bench: {target}: {failure}");
        }
        let report = &self.report;
        if !report.is_clean() {
            eprintln!(
                "corecast bench: {target}: FAILED: {} lost, {} duplicated, {} out of order",
                report.lost, report.duplicated, report.out_of_order
            );
        }
    }
}

/// Draws the runs' latency distributions into the SVG file at `path`.
fn write_svg(path: &std::path::Path, args: &BenchArgs, runs: &[&Finished]) -> Result<(), String> {
    let curves = |cdf: fn(&Finished) -> &Vec<(u64, f64)>| -> Vec<plot::Curve> {
        runs.iter()
            .map(|run| plot::Curve {
                name: run.report.target.clone(),
                points: cdf(run).clone(),
            })
            .collect()
    };
    let latency = curves(|run| &run.latency_cdf);
    let fanout = curves(|run| &run.fanout_cdf);
    let caption = format!(
        "{} subscribers, {} events of {} B every {} ms",
        args.subscribers, args.events, args.payload_bytes, args.interval_ms
    );
    plot::write_svg(
        path,
        &caption,
        &[
            plot::Panel {
                title: "latency per delivery",
                counted: "deliveries",
                curves: &latency,
            },
            plot::Panel {
                title: "fan-out completion per event (publish to last subscriber)",
                counted: "events",
                curves: &fanout,
            },
        ],
    )
}

/// Everything the receive thread needs, checked and resolved before it starts.
struct Setup {
    target: Target,
    addr: SocketAddr,
    /// `Some` for a wss:// `--ws`.
    tls: Option<conn::Tls>,
    request: Vec<u8>,
    load: Load,
    connect_concurrency: usize,
    rss_before_kib: Option<u64>,
    deadline: Instant,
    timeout_s: u64,
}

/// One server, the one `--ws` names, published to through `--api` or `--publish-ws`.
fn run(args: &BenchArgs) -> Result<Finished, String> {
    args.validate()?;
    args.check_bench_cpus()?;
    let via = match &args.publish_ws {
        Some(url) => {
            let target = wire::parse_ws_url(url).map_err(|err| format!("--publish-ws {err}"))?;
            if target.tls {
                return Err(format!(
                    "--publish-ws {url:?}: the publisher WebSocket speaks plain ws:// only; \
                     publish through an https:// --api instead"
                ));
            }
            Via::WebSocket(target)
        }
        None => Via::Http(wire::publish_url(&args.api)?),
    };
    let api_tls = args.api_tls()?;
    let endpoint = wire::parse_ws_url(&args.ws).map_err(|err| format!("--ws {err}"))?;
    prepare_host(args.subscribers, false)?;
    let server = Server {
        name: args.ws.clone(),
        plan: args.plan(via, api_tls),
        process: args.server_pid.map(Process::Pid),
        cpus: Vec::new(),
        spawned: Vec::new(),
    };
    measure_target(args, Target::Server(server), &endpoint)
}

/// Raises the open-file limit and checks the local ports for `subscribers` connections, with
/// the server's ends in this process too when `in_process_server`.
fn prepare_host(subscribers: u64, in_process_server: bool) -> Result<(), String> {
    raise_open_file_limit(subscribers, in_process_server)?;
    check_local_ports(subscribers)
}

/// Measures one started target, whose subscribers connect to `endpoint`, with the load `args`
/// describe, on a thread pinned to the first CPU of `--cpu` (the other receive threads start
/// from there, see `receivers`); stops the target at the end. Its watchdog,
/// `--timeout-s`, starts here.
fn measure_target(
    args: &BenchArgs,
    target: Target,
    endpoint: &WsTarget,
) -> Result<Finished, String> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let addr = endpoint
        .authority
        .to_socket_addrs()
        .map_err(|error| format!("{}: cannot resolve: {error}", endpoint.authority))?
        .next()
        .ok_or_else(|| format!("{}: the host has no address", endpoint.authority))?;
    let rss_before_kib = target
        .process()
        .map(|process| probe::rss_kib(process).map_err(|error| format!("the server: {error}")))
        .transpose()?;
    let tls = args.subscriber_tls(endpoint)?;
    let setup = Setup {
        target,
        addr,
        tls,
        request: wire::upgrade_request(endpoint, &args.channel),
        load: args.load(),
        connect_concurrency: args.connect_concurrency,
        rss_before_kib,
        deadline,
        timeout_s: args.timeout_s,
    };
    std::thread::Builder::new()
        .name("corecast-bench".into())
        .spawn(move || {
            if let Some(&cpu) = setup.load.bench_cpus.first() {
                pin_current_thread("cpu", cpu)?;
            }
            drive(setup)
        })
        .map_err(|error| format!("cannot start the bench thread: {error}"))?
        .join()
        .map_err(|_| "the bench thread panicked".to_string())?
}

/// Most CPUs in `--cpu`, and so receive threads in one run.
const BENCH_CPUS_MAX: usize = 1_024;

/// The CPUs of `--cpu`: at least one, none twice, in the order given (the first carries the
/// publisher too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// Parses a list the way the server's `--cores` and the bench's `--server-cpus` are parsed
    /// (`1`, `8-15`, `0,2,4-7`), and refuses a CPU named twice (two receive threads would take
    /// turns on it) or more than `BENCH_CPUS_MAX` CPUs. Each error names the part at fault.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cpus = corecast_proto::host::parse_cpu_list(text)?;
        if cpus.len() > BENCH_CPUS_MAX {
            return Err(format!(
                "{text:?} names {} CPUs; at most {BENCH_CPUS_MAX}",
                cpus.len()
            ));
        }
        for (at, cpu) in cpus.iter().enumerate() {
            if cpus[..at].contains(cpu) {
                return Err(format!("CPU {cpu} is named twice in {text:?}"));
            }
        }
        Ok(Self(cpus))
    }

    /// The CPUs, in the order given.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }
}

/// Refuses a CPU (given with `--{flag}`) this process may not run on, listing the ones it may.
fn check_cpu(flag: &str, cpu: usize) -> Result<(), String> {
    let allowed = core_affinity::get_core_ids()
        .ok_or_else(|| format!("--{flag}: cannot list the CPUs this process may run on"))?;
    if allowed.iter().any(|core| core.id == cpu) {
        return Ok(());
    }
    let list: Vec<String> = allowed.iter().map(|core| core.id.to_string()).collect();
    Err(format!(
        "--{flag} {cpu} is not a CPU this process may run on; allowed: {}",
        list.join(", ")
    ))
}

/// Pins the calling thread to `cpu`, given with `--{flag}` and checked by `check_cpu` first.
fn pin_current_thread(flag: &str, cpu: usize) -> Result<(), String> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        Ok(())
    } else {
        Err(format!("--{flag} {cpu}: cannot pin a thread to it"))
    }
}

/// Raises the open-file soft limit to the hard limit, and both to what is needed where the
/// process may (root, or CAP_SYS_RESOURCE), and checks that the subscribers fit: one socket
/// each, two when the server's end is in this process too (the floors). Servers the bench
/// starts inherit the limit.
fn raise_open_file_limit(subscribers: u64, in_process_server: bool) -> Result<(), String> {
    let sockets_per_subscriber = if in_process_server { 2 } else { 1 };
    let needed = subscribers * sockets_per_subscriber + FDS_RESERVED;
    let mut limit = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|error| format!("cannot raise the open-file limit: {error}"))?;
    // Refused without the privilege; then the check below says what to do.
    if limit < needed && rlimit::setrlimit(rlimit::Resource::NOFILE, needed, needed).is_ok() {
        limit = needed;
    }
    if limit < needed {
        let why = if in_process_server {
            " (two sockets per subscriber for the floors: their end is in this process)"
        } else {
            ""
        };
        return Err(format!(
            "--subscribers {subscribers} needs {needed} open files{why} but this process may \
             open only {limit} (its hard limit): raise it (ulimit -Hn, or LimitNOFILE= for a \
             service) or use fewer subscribers"
        ));
    }
    Ok(())
}

/// Checks that the subscribers fit in the local port range: every connection to the one
/// server address needs its own local port.
fn check_local_ports(subscribers: u64) -> Result<(), String> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    // Without the file (not Linux, no /proc) the kernel will say so at connect time.
    let Ok(text) = std::fs::read_to_string(PATH) else {
        return Ok(());
    };
    let Some(ports) = corecast_proto::host::local_port_count(&text) else {
        return Ok(());
    };
    if subscribers > ports {
        return Err(format!(
            "--subscribers {subscribers} needs as many local ports but {PATH} allows {ports}: \
             widen it (sysctl net.ipv4.ip_local_port_range) or use fewer subscribers"
        ));
    }
    Ok(())
}

/// Microseconds since the UNIX epoch by the wall clock: the publisher stamps `t_us` with it and
/// the receivers stamp arrivals with it, on the same host.
fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

/// How waiting for a phase's deliveries ended.
enum PhaseEnd {
    /// Every subscriber received every event of the phase.
    Complete,
    /// The phase was published but no frame arrived for `DRAIN_STALL_MS`.
    Stalled,
    /// The run's watchdog expired.
    Watchdog,
    /// The publisher failed; carries its message.
    PublishFailed(String),
}

/// The run on the (lead) receive thread: from connecting to the report.
fn drive(mut setup: Setup) -> Result<Finished, String> {
    let publisher = setup
        .target
        .publisher(setup.load.bench_cpus.first().copied())?;
    let mut receivers = Receivers::start(receivers::Config {
        addr: setup.addr,
        tls: setup.tls.clone(),
        request: setup.request.clone(),
        subscribers: setup.load.subscribers,
        warmup_events: setup.load.warmup_events,
        events: setup.load.events,
        connect_concurrency: setup.connect_concurrency,
        cpus: setup.load.bench_cpus.clone(),
        tick: tick(),
    })?;
    let measured = measure(&mut receivers, &publisher, &setup);
    close_all(&mut receivers, publisher);
    let stopped = setup.target.stop();
    let Measured {
        connect_time_ms,
        rss,
        cost,
        failure,
        mut warnings,
    } = measured?;
    warnings.extend(stopped.err());

    let recorder = receivers.recorder();
    let summary = recorder.summary();
    let name = setup.target.name().to_string();
    let report = Report::new(
        name,
        setup.load.clone(),
        connect_time_ms,
        &summary,
        cost,
        rss,
    );
    if let Some(server_ns) = report.server_cpu_per_delivery_ns {
        if report.bench_cpu_per_delivery_ns >= server_ns && summary.deliveries > 0 {
            warnings.push(format!(
                "the bench spent {} ns of CPU per delivery and the server {server_ns} ns: the \
                 bench may be the bottleneck, and then the latency figures measure the bench",
                report.bench_cpu_per_delivery_ns
            ));
        }
    }
    warnings.extend(disconnections(&receivers));
    if summary.foreign_frames > 0 {
        warnings.push(format!(
            "{} text frames were not deliveries of this run's events (another publisher on \
             the channel, or data without seq/t_us)",
            summary.foreign_frames
        ));
    }
    Ok(Finished {
        report,
        latency_cdf: recorder.latency_cdf(),
        fanout_cdf: recorder.fanout_cdf(),
        failure,
        warnings,
    })
}

/// What a run measured besides the recorder's figures.
struct Measured {
    connect_time_ms: u64,
    rss: Option<ServerRss>,
    cost: Cost,
    /// Why the measured phase could not finish.
    failure: Option<String>,
    warnings: Vec<String>,
}

/// Connects every subscriber, publishes and awaits the warm-up, then the measured phase, with
/// the CPU time of the bench and of the server around it. Leaves the connections open.
fn measure(
    receivers: &mut Receivers,
    publisher: &Publisher,
    setup: &Setup,
) -> Result<Measured, String> {
    let connect_started = Instant::now();
    let connecting = connect_progress(setup.load.subscribers);
    let connect_result = await_connected(receivers, publisher, &connecting, setup);
    connecting.finish_and_clear();
    connect_result?;
    let connect_time_ms = u64::try_from(connect_started.elapsed().as_millis()).unwrap_or(u64::MAX);

    let rss = match (setup.target.process(), setup.rss_before_kib) {
        (Some(process), Some(before_kib)) => Some(ServerRss {
            before_kib,
            idle_kib: probe::rss_kib(process)?,
        }),
        _ => None,
    };
    let mut warnings = Vec::new();
    let server_cpus = setup.target.cpus();
    let shared: Vec<String> = (setup.load.bench_cpus.iter())
        .filter(|cpu| server_cpus.contains(cpu))
        .map(ToString::to_string)
        .collect();
    if !shared.is_empty() {
        let (cpus, them) = match shared.len() {
            1 => ("CPU", "it"),
            _ => ("CPUs", "them"),
        };
        warnings.push(format!(
            "the bench (--cpu) and the server (--server-cpus) share {cpus} {}: they took \
             turns on {them}, so the figures are not those of a server on CPUs of its own",
            shared.join(", ")
        ));
    }

    let warmup = Phase {
        first_seq: 0,
        count: setup.load.warmup_events,
    };
    if warmup.count > 0 {
        let (end, _) = publish_and_await(
            receivers,
            publisher,
            warmup,
            setup,
            Receivers::warmup_complete,
        );
        if let Some(failure) = phase_failure("warm-up", end, receivers, setup) {
            let mut message = format!("{failure}; the measured events were not published");
            if let Some(disconnections) = disconnections(receivers) {
                message = format!("{message} ({disconnections})");
            }
            return Err(message);
        }
    }

    let measured = Phase {
        first_seq: setup.load.warmup_events,
        count: setup.load.events,
    };
    let server_cpu = setup.target.server_cpu();
    let bench_before_ns = probe::cpu_time_ns(Process::Bench)?;
    let server_before_ns = match server_cpu {
        ServerCpu::Process(process) => Some(probe::cpu_time_ns(process)?),
        ServerCpu::Unmeasured | ServerCpu::Reported => None,
    };
    let (end, published) = publish_and_await(
        receivers,
        publisher,
        measured,
        setup,
        Receivers::measured_complete,
    );
    let failure = phase_failure("measured", end, receivers, setup);
    let process_cpu_ns = probe::cpu_time_ns(Process::Bench)?.saturating_sub(bench_before_ns);
    // Set only when the publishing thread is the server, running in this process.
    let reported_ns = published.and_then(|published| published.cpu_ns);
    let server_cpu_ns = match (server_cpu, server_before_ns) {
        (ServerCpu::Process(process), Some(before_ns)) => match probe::cpu_time_ns(process) {
            Ok(after_ns) => Some(after_ns.saturating_sub(before_ns)),
            Err(error) => {
                warnings.push(format!("cannot read the server's CPU time: {error}"));
                None
            }
        },
        (ServerCpu::Reported, _) => reported_ns,
        _ => None,
    };
    Ok(Measured {
        connect_time_ms,
        rss,
        cost: Cost {
            bench_cpu_ns: process_cpu_ns.saturating_sub(reported_ns.unwrap_or(0)),
            server_cpu_ns,
        },
        failure,
        warnings,
    })
}

/// How many subscribers the server disconnected after they subscribed, and the first reason.
fn disconnections(receivers: &Receivers) -> Option<String> {
    let count = receivers.closed_early();
    (count > 0).then(|| {
        format!(
            "{count} subscribers were disconnected during the run; the first: {}",
            receivers.first_error().unwrap_or("unknown")
        )
    })
}

fn connect_progress(subscribers: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style =
        ProgressStyle::with_template("connecting {bar:40} {pos}/{len} subscribers, {elapsed}")
            .expect("the template is valid");
    ProgressBar::new(subscribers).with_style(style)
}

fn tick() -> Duration {
    Duration::from_millis(TICK_MS)
}

/// Turns the receive loop until every subscriber has received `connected`, or a subscriber or
/// the publishing side (the floor, which accepts the subscribers) fails.
fn await_connected(
    receivers: &mut Receivers,
    publisher: &Publisher,
    progress: &ProgressBar,
    setup: &Setup,
) -> Result<(), String> {
    let subscribers = setup.load.subscribers;
    loop {
        match publisher.outcomes.try_recv() {
            Ok(Outcome::Failed(message)) => return Err(message),
            Ok(Outcome::Published(published)) => {
                panic!("{published:?} answered before any phase was sent")
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => {
                return Err("the publisher thread has ended".into());
            }
        }
        let connected = receivers.connected();
        progress.set_position(connected);
        if connected == subscribers {
            return Ok(());
        }
        let failed = receivers.setup_failed() + receivers.closed_early();
        if failed > 0 {
            return Err(format!(
                "{failed} of {subscribers} subscribers failed to connect; the first: {}",
                receivers.first_error().unwrap_or("unknown")
            ));
        }
        if Instant::now() >= setup.deadline {
            return Err(format!(
                "watchdog: only {connected} of {subscribers} subscribers were connected and \
                 subscribed after --timeout-s {}",
                setup.timeout_s
            ));
        }
        receivers.turn(tick());
    }
}

/// Publishes `phase` and turns the receive loop until `complete` holds, the deliveries stall,
/// the watchdog expires or the publisher fails. Returns how it ended, and the publisher's
/// answer once it has given one.
fn publish_and_await(
    receivers: &mut Receivers,
    publisher: &Publisher,
    phase: Phase,
    setup: &Setup,
    complete: fn(&Receivers) -> bool,
) -> (PhaseEnd, Option<Published>) {
    if publisher.phases.send(phase).is_err() {
        let end = PhaseEnd::PublishFailed("the publisher thread has ended".into());
        return (end, None);
    }
    let mut published = None;
    let mut frames = receivers.frames();
    let mut progress_at = Instant::now();
    loop {
        // Wait for the publisher's answer too, so that its next phase starts in step.
        if published.is_some() && complete(receivers) {
            return (PhaseEnd::Complete, published);
        }
        match publisher.outcomes.try_recv() {
            Ok(Outcome::Published(done)) => {
                assert_eq!(
                    done.phase, phase,
                    "the publisher answers the phase it was given"
                );
                published = Some(done);
                progress_at = Instant::now();
            }
            Ok(Outcome::Failed(message)) => return (PhaseEnd::PublishFailed(message), None),
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => {
                let end = PhaseEnd::PublishFailed("the publisher thread has ended".into());
                return (end, None);
            }
        }
        let now = Instant::now();
        if now >= setup.deadline {
            return (PhaseEnd::Watchdog, published);
        }
        if receivers.frames() != frames {
            frames = receivers.frames();
            progress_at = now;
        }
        if published.is_some()
            && now.duration_since(progress_at) >= Duration::from_millis(DRAIN_STALL_MS)
        {
            return (PhaseEnd::Stalled, published);
        }
        receivers.turn(tick());
    }
}

/// Why a phase makes the run fail, if it does. A stalled measured phase is not a failure of
/// its own: what is missing is reported as lost.
fn phase_failure(
    name: &str,
    end: PhaseEnd,
    receivers: &Receivers,
    setup: &Setup,
) -> Option<String> {
    match end {
        PhaseEnd::Complete => None,
        PhaseEnd::Stalled if name == "measured" => None,
        PhaseEnd::Stalled => {
            let (received, expected) = receivers.warmup_progress();
            Some(format!(
                "warm-up: {received} of {expected} deliveries arrived, then none for \
                 {DRAIN_STALL_MS} ms"
            ))
        }
        PhaseEnd::Watchdog => Some(format!(
            "watchdog: the {name} phase had not finished after --timeout-s {}",
            setup.timeout_s
        )),
        PhaseEnd::PublishFailed(message) => Some(format!("{name} phase: {message}")),
    }
}

/// Tells every subscriber to close, then ends the publisher, and turns the lead loop up to
/// `CLOSE_WAIT_MS` for the close exchanges of every loop to finish; then ends the other
/// receive threads and merges their figures. Connections still open after that are dropped
/// with their loop. The order matters for the floor, which sends every subscriber Close once
/// its publisher is gone: a subscriber that got it before sending its own would count it as a
/// disconnection.
fn close_all(receivers: &mut Receivers, publisher: Publisher) {
    receivers.stop();
    drop(publisher);
    let give_up = Instant::now() + Duration::from_millis(CLOSE_WAIT_MS);
    while receivers.live() > 0 && Instant::now() < give_up {
        receivers.turn(tick());
    }
    receivers.join();
}

#[cfg(test)]
mod tests {
    //! Also the helpers the bench's other tests share: the command line's parser and a
    //! watchdog.

    use super::*;
    use clap::Parser;

    /// How long a test's body may run before the watchdog fails it.
    pub(super) const WATCHDOG: Duration = Duration::from_secs(10);

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    /// `corecast bench` with `flags`, parsed as the command line does.
    pub(super) fn parse(flags: &[&str]) -> BenchArgs {
        Cli::parse_from(std::iter::once("bench").chain(flags.iter().copied())).bench
    }

    /// Runs `body` on a thread and fails the test if it panics or takes longer than `within`.
    pub(super) fn within_watchdog<T: Send + 'static>(
        within: Duration,
        body: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // After the watchdog has expired nothing receives: the test has failed already.
            let _ = done.send(body());
        });
        match result.recv_timeout(within) {
            Ok(value) => value,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the watchdog expired"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the test body panicked")
            }
        }
    }

    #[test]
    fn defaults_match_the_documented_run() {
        let args = parse(&[]);
        assert_eq!(args.ws, "ws://127.0.0.1:8080/ws");
        assert_eq!(args.api, "http://127.0.0.1:8081");
        assert_eq!(
            (
                args.subscribers,
                args.events,
                args.payload_bytes,
                args.interval_ms
            ),
            (10_000, 100, 100, 20)
        );
        assert_eq!(args.channel, "bench.fanout");
        assert_eq!(args.connect_concurrency, 256);
        assert_eq!((args.timeout_s, args.warmup_events), (60, 30));
        assert_eq!(
            (args.cpu.as_ref(), args.server_pid, args.json.as_deref()),
            (None, None, None)
        );
        assert_eq!(
            (args.baseline, args.compare, args.server_cpus.as_str()),
            (false, false, "0")
        );
        assert_eq!(
            (
                args.publish_ws.as_deref(),
                args.svg.as_deref(),
                args.corecast_args.as_str()
            ),
            (None, None, "")
        );
        assert!(args.peer.is_empty());
        assert_eq!(args.validate(), Ok(()));
    }

    #[test]
    fn cpu_lists_parse_like_server_cpus_and_errors_name_the_bad_part() {
        let cpus = |flags: &[&str]| parse(flags).cpu.map(|list| list.cpus().to_vec());
        assert_eq!(cpus(&["--cpu", "1"]), Some(vec![1]));
        assert_eq!(cpus(&["--cpu", "8-15"]), Some((8..=15).collect()));
        assert_eq!(cpus(&["--cpu", "0,2,4-7"]), Some(vec![0, 2, 4, 5, 6, 7]));
        assert_eq!(cpus(&["--cpu", "3,1"]), Some(vec![3, 1]), "the order given");
        assert_eq!(cpus(&[]), None);
        for (text, error) in [
            ("0,x", r#""x" in "0,x" is not a CPU id"#),
            ("2-a", r#""a" in "2-a" is not a CPU id"#),
            ("3-1", r#"CPU range "3-1" is empty or too large"#),
            ("0-3,2", r#"CPU 2 is named twice in "0-3,2""#),
            (",", r#""," names no CPU"#),
            ("0-2047", r#""0-2047" names 2048 CPUs; at most 1024"#),
        ] {
            assert_eq!(CpuList::parse(text), Err(error.to_string()));
            let refused = Cli::try_parse_from(["bench", "--cpu", text])
                .err()
                .unwrap_or_else(|| panic!("--cpu {text} was accepted"))
                .to_string();
            assert!(
                refused.contains("--cpu <LIST>") && refused.contains(error),
                "{refused}"
            );
        }
    }

    #[test]
    fn validation_names_the_flag_and_range() {
        let args = parse(&["--subscribers", "0"]);
        assert_eq!(
            args.validate(),
            Err("--subscribers 0 is outside 1..=1000000".into())
        );
        let args = parse(&["--payload-bytes", "10"]);
        assert_eq!(
            args.validate(),
            Err("--payload-bytes 10 is outside 64..=1048576".into())
        );
    }

    #[test]
    fn flags_that_do_not_apply_to_the_mode_are_refused() {
        assert_eq!(
            parse(&["--baseline", "--server-pid", "42"]).validate(),
            Err(
                "--server-pid 42 does not apply to --baseline: the bench starts the servers it \
                 measures and reads their memory and CPU time itself"
                    .into()
            )
        );
        assert_eq!(
            parse(&["--compare", "--publish-ws", "ws://h/publish"]).validate(),
            Err(
                "--publish-ws ws://h/publish does not apply to --compare: the bench publishes \
                 to corecast's API and to each peer's /publish"
                    .into()
            )
        );
        assert_eq!(
            parse(&["--peer", "tokio=./peer {port}"]).validate(),
            Err("--peer tokio needs --compare".into())
        );
        assert_eq!(
            parse(&["--baseline", "--corecast-args", "--shards 1"]).validate(),
            Err("--corecast-args needs --compare".into())
        );
        assert_eq!(
            parse(&["--compare", "--peer", "corecast=./other {port}"]).validate(),
            Err("--peer corecast: another target of the comparison has that name".into())
        );
        assert_eq!(
            parse(&["--compare", "--server-cpus", "1-0"]).validate(),
            Err(r#"--server-cpus: CPU range "1-0" is empty or too large"#.into())
        );
        let args = parse(&[
            "--compare",
            "--server-cpus",
            "0-1",
            "--corecast-args",
            "--shards 2",
            "--peer",
            "tokio=./peer {port}",
            "--peer",
            "node=node peer.js {port}",
        ]);
        assert_eq!(args.validate(), Ok(()));
        assert_eq!(args.server_cpu_list(), Ok(vec![0, 1]));
        assert_eq!(args.peer.len(), 2);
    }
}
