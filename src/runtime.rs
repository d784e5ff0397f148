//! Start-up and shutdown: the core plan, the host checks, one pinned glommio executor per core.
//!
//! [`CorePlan`] decides which CPU runs the ingest core and each broadcast shard. [`preflight`]
//! checks what glommio needs from the host (memlock, io_uring, file descriptors, enough of them
//! for `api_connections_max`: see [`Config::check_file_limit`]) and turns a
//! shortfall into a message that says what to change (the thresholds and host reads are
//! [`crate::tune`]'s, shared with `corecast tune check`). [`serve`] wires the queues, starts every
//! executor, waits until each has bound its port, prints the plan and the `listening` line, and
//! joins them after a signal. Each executor runs on a thread of its own whose stack is sized
//! for JSON nested `json_depth_max` deep ([`crate::json::thread_stack_bytes`]). This module
//! holds no per-message logic.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::cluster::FromCluster;
use crate::config::Config;
use crate::ingest::{Ingest, IngestCore};
use crate::json;
use crate::msg::{ToIngest, ToShard};
use crate::queue;
use crate::shard::{Shard, ShardCore};
use crate::tune::{self, MEMLOCK_BYTES_MIN};

/// How long start-up waits for every executor to bind before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start, worded for the operator.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Which CPU runs what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorePlan {
    pub ingest_cpu: usize,
    /// `shard_cpus[i]` runs broadcast shard `i`.
    pub shard_cpus: Vec<usize>,
}

impl CorePlan {
    /// Builds the plan from the config and the CPUs this process may run on.
    pub fn new(config: &Config, allowed_cpus: &[usize]) -> Result<CorePlan, StartError> {
        assert!(!allowed_cpus.is_empty(), "a running process has a CPU");
        let cpus = config
            .cores
            .clone()
            .unwrap_or_else(|| allowed_cpus.to_vec());
        for cpu in cpus.iter().chain(config.ingest_core.as_ref()) {
            if !allowed_cpus.contains(cpu) {
                return Err(StartError(format!(
                    "CPU {cpu} is not available to this process (allowed: {allowed_cpus:?}); \
                     fix --cores/--ingest-core or the process's CPU affinity"
                )));
            }
        }
        let shards = config.shards.unwrap_or(cpus.len());
        let shard_cpus = (0..shards).map(|shard| cpus[shard % cpus.len()]).collect();
        Ok(CorePlan {
            ingest_cpu: config.ingest_core.unwrap_or(cpus[0]),
            shard_cpus,
        })
    }

    /// One line per executor, as printed at start.
    pub fn lines(&self) -> Vec<String> {
        let sharing: Vec<String> = self
            .shard_cpus
            .iter()
            .enumerate()
            .filter(|(_, cpu)| **cpu == self.ingest_cpu)
            .map(|(shard, _)| format!("shard {shard}"))
            .collect();
        let ingest = if sharing.is_empty() {
            format!("core plan: ingest on cpu {} (dedicated)", self.ingest_cpu)
        } else {
            format!(
                "core plan: ingest on cpu {} (shared with {})",
                self.ingest_cpu,
                sharing.join(", ")
            )
        };
        std::iter::once(ingest)
            .chain(
                self.shard_cpus
                    .iter()
                    .enumerate()
                    .map(|(shard, cpu)| format!("core plan: shard {shard} on cpu {cpu}")),
            )
            .collect()
    }
}

/// Checks the host for what glommio and the configured load need, raising soft limits to the
/// hard ones where that is all it takes.
pub fn preflight(config: &Config, executors: usize) -> Result<(), StartError> {
    if tune::host::io_uring_disabled() == Some(2) {
        return Err(StartError(
            "io_uring is disabled on this host (kernel.io_uring_disabled = 2); corecast runs on \
             io_uring: set `sysctl -w kernel.io_uring_disabled=0`"
                .into(),
        ));
    }
    if let Err(error) = tune::host::io_uring_ring() {
        return Err(StartError(format!(
            "io_uring is not available here ({error}); corecast runs on io_uring. A seccomp \
             profile (containers' default ones refuse it), a container runtime or \
             kernel.io_uring_disabled blocks it: in a container, run with `--security-opt \
             seccomp=unconfined` or a profile that allows io_uring_setup, io_uring_enter and \
             io_uring_register (README, \"Container image\")"
        )));
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::MEMLOCK)
        .map_err(|err| StartError(format!("cannot read RLIMIT_MEMLOCK: {err}")))?;
    if soft < MEMLOCK_BYTES_MIN && hard >= MEMLOCK_BYTES_MIN {
        rlimit::setrlimit(rlimit::Resource::MEMLOCK, hard, hard)
            .map_err(|err| StartError(format!("cannot raise RLIMIT_MEMLOCK to {hard}: {err}")))?;
    } else if soft < MEMLOCK_BYTES_MIN {
        return Err(StartError(format!(
            "RLIMIT_MEMLOCK is {} KiB; glommio needs at least {} KiB for io_uring. Raise it with \
             `ulimit -l {}` (or LimitMEMLOCK= in the systemd unit, memlock in limits.conf: see \
             tuning/)",
            soft / 1024,
            MEMLOCK_BYTES_MIN / 1024,
            tune::memlock_bytes_wanted(executors, config.io_memory_bytes) / 1024,
        )));
    }
    let nofile = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|err| StartError(format!("cannot raise RLIMIT_NOFILE: {err}")))?;
    config
        .check_file_limit(nofile, executors)
        .map_err(|err| StartError(err.0))?;
    let wanted = (config.connections_per_shard_max as u64).min(1_000_000);
    if nofile < wanted {
        tracing::info!(
            nofile,
            "RLIMIT_NOFILE allows about {nofile} connections in all; raise the hard limit \
             (LimitNOFILE=, limits.conf) for more"
        );
    }
    Ok(())
}

/// Runs the server until SIGINT or SIGTERM. Prints the core plan and then
/// `listening ws=ADDR api=ADDR` on stdout once every executor is serving.
pub fn serve(config: Config) -> Result<(), StartError> {
    let plan = CorePlan::new(&config, &tune::host::allowed_cpus())?;
    preflight(&config, plan.shard_cpus.len() + 1)?;
    let (reservation, config) = claim_ports(config)?;
    let mut shared = Shared::load(&config)?;
    let (links, signal_tx) = Links::new(&config, plan.shard_cpus.len());
    let mut executors = Executors::new();
    executors.start_ingest(
        &config,
        plan.ingest_cpu,
        &mut shared,
        links.to_shards,
        links.ingest_inboxes,
    )?;
    let shards = plan
        .shard_cpus
        .iter()
        .zip(links.shard_inboxes.into_iter().zip(links.to_ingest));
    for (shard, (cpu, (inbox, to_ingest))) in shards.enumerate() {
        executors.start_shard(&config, shard, *cpu, &shared, inbox, to_ingest)?;
    }
    let api_addr = executors.wait_bound(&signal_tx)?;
    drop(reservation);
    // Before `listening`: whoever starts the server may signal it as soon as it reads that line.
    forward_signals(signal_tx)?;
    for line in plan.lines() {
        println!("{line}");
    }
    println!("listening ws={} api={api_addr}", config.listen);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(ws = %config.listen, api = %api_addr, shards = plan.shard_cpus.len(), "serving");
    executors.join_all()
}

/// Checks that both ports are free and holds the WebSocket port (the socket returned) until
/// every shard has bound it. The config returned names the real port, for whoever shows it
/// (the dashboard).
fn claim_ports(config: Config) -> Result<(socket2::Socket, Arc<Config>), StartError> {
    for (name, addr) in [("WebSocket", config.listen), ("API", config.api)] {
        crate::net::ensure_unused(addr).map_err(|err| {
            StartError(format!(
                "cannot use the {name} port {addr}: {err} (is another corecast running?)"
            ))
        })?;
    }
    let (reservation, ws_addr) = crate::net::reserve(config.listen).map_err(|err| {
        StartError(format!(
            "cannot bind the WebSocket port {}: {err}",
            config.listen
        ))
    })?;
    let mut config = config;
    config.listen = ws_addr;
    Ok((reservation, Arc::new(config)))
}

/// What the executors share, read once before any starts: a bad certificate or key file, or a
/// cluster bridge that cannot start, stops start-up here, named.
struct Shared {
    /// The first run of offsets, as clients are told it.
    epoch: Arc<str>,
    verifier: Option<Arc<crate::net::auth::Verifier>>,
    /// The WebSocket port's TLS, and the control plane's.
    tls: Option<futures_rustls::TlsAcceptor>,
    api_tls: Option<futures_rustls::TlsAcceptor>,
    /// Cluster mode's bridge, held until the server ends (its threads stop when it is
    /// dropped), and its queue to the ingest core until that takes it.
    bridge: Option<crate::cluster::Bridge>,
    cluster_inbox: Option<queue::Receiver<FromCluster>>,
}

impl Shared {
    fn load(config: &Config) -> Result<Shared, StartError> {
        let epoch = crate::clock::new_epoch();
        tracing::info!(%epoch, "offsets start at 1 in a new epoch");
        let (bridge, cluster_inbox) = match crate::cluster::Settings::from_config(config) {
            Some(settings) => {
                let (tx, rx) = queue::bounded::<FromCluster>(config.queue_items_max);
                let node = crate::ingest::sys_stats::node_token(config);
                let url = settings.url.clone();
                let bridge =
                    crate::cluster::Bridge::start(settings, node, tx).map_err(StartError)?;
                tracing::info!(redis = %url, threads = bridge.threads(), "cluster mode: publishes go through Redis");
                (Some(bridge), Some(rx))
            }
            None => (None, None),
        };
        let verifier = crate::net::auth::Verifier::from_config(config)
            .map_err(StartError)?
            .map(Arc::new);
        let tls = tls_acceptor("tls_cert_file", &config.tls_cert_file, &config.tls_key_file)?;
        let api_tls = tls_acceptor(
            "api_tls_cert_file",
            &config.api_tls_cert_file,
            &config.api_tls_key_file,
        )?;
        if verifier.is_none() {
            tracing::warn!(
                "auth = \"none\": ANY client may connect and subscribe to ANY channel. Fine on a \
                 laptop; set auth = \"jwt\" before this faces a network"
            );
        }
        Ok(Shared {
            epoch,
            verifier,
            tls,
            api_tls,
            bridge,
            cluster_inbox,
        })
    }
}

/// The queues between the cores, each endpoint to be handed to its one owner.
struct Links {
    /// `to_shards[i]` is the ingest core's sender to shard `i`, `shard_inboxes[i]` the shard's end.
    to_shards: Vec<queue::Sender<ToShard>>,
    shard_inboxes: Vec<queue::Receiver<ToShard>>,
    /// `to_ingest[i]` is shard `i`'s sender; the ingest core reads one inbox per shard and,
    /// last, the signal thread's.
    to_ingest: Vec<queue::Sender<ToIngest>>,
    ingest_inboxes: Vec<queue::Receiver<ToIngest>>,
}

impl Links {
    /// The queues for `shards` shards, and the signal thread's sender.
    fn new(config: &Config, shards: usize) -> (Links, queue::Sender<ToIngest>) {
        let mut links = Links {
            to_shards: Vec::with_capacity(shards),
            shard_inboxes: Vec::with_capacity(shards),
            to_ingest: Vec::with_capacity(shards),
            ingest_inboxes: Vec::with_capacity(shards + 1),
        };
        for _ in 0..shards {
            let (tx, rx) = queue::bounded::<ToShard>(config.queue_items_max);
            links.to_shards.push(tx);
            links.shard_inboxes.push(rx);
            let (tx, rx) = queue::bounded::<ToIngest>(config.queue_items_max);
            links.to_ingest.push(tx);
            links.ingest_inboxes.push(rx);
        }
        let (signal_tx, signal_rx) = queue::bounded::<ToIngest>(4);
        links.ingest_inboxes.push(signal_rx);
        (links, signal_tx)
    }
}

/// What an executor reports once it has bound its port (or failed to): who, and why not.
type Bound = (String, Result<(), String>);

/// The executors started so far, by name, and where they report that they have bound.
struct Executors {
    started: Vec<(String, Executor)>,
    /// Dropped when the waiting starts, with `api_tx`: an executor that ends without a word
    /// then ends the wait at once.
    bound_tx: Option<mpsc::Sender<Bound>>,
    bound_rx: mpsc::Receiver<Bound>,
    /// The control plane's address, once the ingest core has bound it.
    api_tx: Option<mpsc::Sender<SocketAddr>>,
    api_rx: mpsc::Receiver<SocketAddr>,
}

impl Executors {
    fn new() -> Executors {
        let (bound_tx, bound_rx) = mpsc::channel();
        let (api_tx, api_rx) = mpsc::channel();
        Executors {
            started: Vec::new(),
            bound_tx: Some(bound_tx),
            bound_rx,
            api_tx: Some(api_tx),
            api_rx,
        }
    }

    fn bound_tx(&self) -> mpsc::Sender<Bound> {
        self.bound_tx
            .clone()
            .expect("executors start before the wait")
    }

    /// Starts the ingest core, which binds the control plane's port.
    fn start_ingest(
        &mut self,
        config: &Arc<Config>,
        cpu: usize,
        shared: &mut Shared,
        to_shards: Vec<queue::Sender<ToShard>>,
        inboxes: Vec<queue::Receiver<ToIngest>>,
    ) -> Result<(), StartError> {
        let (config_, epoch, bound, api_tx) = (
            config.clone(),
            shared.epoch.clone(),
            self.bound_tx(),
            self.api_tx
                .clone()
                .expect("executors start before the wait"),
        );
        let cluster_requests = shared.bridge.as_ref().map(crate::cluster::Bridge::requests);
        let (api_tls, cluster_inbox) = (shared.api_tls.clone(), shared.cluster_inbox.take());
        let task = move || async move {
            let config = config_;
            let listener = match glommio::net::TcpListener::bind(config.api) {
                Ok(listener) => listener,
                Err(err) => {
                    let reason = format!("cannot bind the API port {}: {err}", config.api);
                    let _ = bound.send(("ingest".into(), Err(reason)));
                    return;
                }
            };
            let _ = api_tx.send(
                listener
                    .local_addr()
                    .expect("a bound listener has an address"),
            );
            let core = IngestCore::new(config, epoch, to_shards, cluster_requests);
            let ingest = Ingest::start(core, listener, api_tls, inboxes, cluster_inbox);
            let _ = bound.send(("ingest".into(), Ok(())));
            ingest.run().await;
        };
        let executor = spawn_executor(config, "corecast-ingest", cpu, task)
            .map_err(|err| StartError(format!("cannot start the ingest executor: {err}")))?;
        self.started.push(("ingest".to_owned(), executor));
        Ok(())
    }

    /// Starts broadcast shard `shard`, which binds its own listener on the WebSocket port.
    fn start_shard(
        &mut self,
        config: &Arc<Config>,
        shard: usize,
        cpu: usize,
        shared: &Shared,
        inbox: queue::Receiver<ToShard>,
        to_ingest: queue::Sender<ToIngest>,
    ) -> Result<(), StartError> {
        let name = format!("shard {shard}");
        let (config_, epoch, bound, who) = (
            config.clone(),
            shared.epoch.clone(),
            self.bound_tx(),
            name.clone(),
        );
        let (verifier, tls) = (shared.verifier.clone(), shared.tls.clone());
        let task = move || async move {
            let ws_addr = config_.listen;
            let listener = match glommio::net::TcpListener::bind(ws_addr) {
                Ok(listener) => listener,
                Err(err) => {
                    let reason = format!("cannot bind {ws_addr}: {err}");
                    let _ = bound.send((who, Err(reason)));
                    return;
                }
            };
            let core = match ShardCore::new(shard, config_, verifier, tls, epoch, to_ingest) {
                Ok(core) => core,
                Err(reason) => {
                    let _ = bound.send((who, Err(reason)));
                    return;
                }
            };
            let running = Shard::start(core, listener, inbox);
            let _ = bound.send((who, Ok(())));
            running.run().await;
        };
        let executor = spawn_executor(config, &format!("corecast-shard{shard}"), cpu, task)
            .map_err(|err| StartError(format!("cannot start shard {shard}: {err}")))?;
        self.started.push((name, executor));
        Ok(())
    }

    /// Waits until every executor has bound its port (at most [`START_TIMEOUT`]) and returns
    /// the control plane's address. If one could not, stops the others (through the ingest
    /// core, `signal_tx`) and returns why, naming each.
    fn wait_bound(
        &mut self,
        signal_tx: &queue::Sender<ToIngest>,
    ) -> Result<SocketAddr, StartError> {
        self.bound_tx = None;
        self.api_tx = None;
        let mut failures = Vec::new();
        for _ in 0..self.started.len() {
            match self.bound_rx.recv_timeout(START_TIMEOUT) {
                Ok((_, Ok(()))) => {}
                Ok((who, Err(reason))) => failures.push(format!("{who}: {reason}")),
                Err(_) => break,
            }
        }
        let api_addr = self.api_rx.recv_timeout(Duration::from_millis(100)).ok();
        if let (true, Some(api_addr)) = (failures.is_empty(), api_addr) {
            return Ok(api_addr);
        }
        let _ = signal_tx.try_push(ToIngest::Shutdown);
        signal_tx.wake();
        for (who, executor) in self.started.drain(..) {
            if let Err(err) = join(executor) {
                failures.push(format!("{who}: {}", explain_executor_error(&err)));
            }
        }
        Err(StartError(format!(
            "corecast could not start: {}",
            if failures.is_empty() {
                "an executor stopped during start-up".to_owned()
            } else {
                failures.join("; ")
            }
        )))
    }

    /// Waits for every executor to end (after a signal); names each that failed.
    fn join_all(self) -> Result<(), StartError> {
        let failed: Vec<String> = self
            .started
            .into_iter()
            .filter_map(|(who, executor)| join(executor).err().map(|err| format!("{who}: {err}")))
            .collect();
        if failed.is_empty() {
            tracing::info!("stopped");
            Ok(())
        } else {
            Err(StartError(format!(
                "executors failed: {}",
                failed.join("; ")
            )))
        }
    }
}

/// A running executor's thread; it ends with glommio's error if the executor could not start.
type Executor = std::thread::JoinHandle<Result<(), glommio::GlommioError<()>>>;

/// Starts an executor pinned to `cpu` on a thread named `name`, running `task`, on a stack
/// sized for JSON nested `json_depth_max` deep ([`json::thread_stack_bytes`]): sonic-rs
/// recurses once per level. This is what glommio's `LocalExecutorBuilder::spawn` does (a
/// thread, then `make` and `run` on it), but that thread gets Rust's default stack (2 MiB, or
/// `RUST_MIN_STACK`), which glommio 0.9 offers no way to set.
fn spawn_executor<G, F>(
    config: &Config,
    name: &str,
    cpu: usize,
    task: G,
) -> std::io::Result<Executor>
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = ()> + 'static,
{
    let io_memory = config.io_memory_bytes;
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(json::thread_stack_bytes(config.json_depth_max))
        .spawn(move || {
            let executor = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .io_memory(io_memory)
                .make()?;
            executor.run(task());
            Ok(())
        })
}

/// Waits for an executor to end: its start-up error or a panic, as text.
fn join(executor: Executor) -> Result<(), String> {
    match executor.join() {
        Ok(outcome) => outcome.map_err(|err| err.to_string()),
        Err(_) => Err("the executor's thread panicked".to_owned()),
    }
}

/// Turns a glommio start-up error into what the operator should change.
fn explain_executor_error(error: &str) -> String {
    if error.contains("memlock") {
        format!("{error}: raise the memlock limit (ulimit -l, LimitMEMLOCK=; see tuning/)")
    } else if error.contains("Operation not permitted")
        || error.contains("Function not implemented")
    {
        format!(
            "{error}: io_uring is not available here (a seccomp profile, a container runtime or \
             kernel.io_uring_disabled may block it)"
        )
    } else {
        error.to_owned()
    }
}

/// Sends the first SIGINT/SIGTERM to the ingest core as a graceful shutdown; a second one
/// exits at once.
fn forward_signals(signal_tx: queue::Sender<ToIngest>) -> Result<(), StartError> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|err| StartError(format!("cannot install signal handlers: {err}")))?;
    std::thread::Builder::new()
        .name("corecast-signals".into())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received > 1 {
                    eprintln!("corecast: second signal {signal}; exiting now");
                    std::process::exit(130);
                }
                if signal_tx.try_push(ToIngest::Shutdown).is_ok() {
                    signal_tx.wake();
                }
            }
        })
        .map_err(|err| StartError(format!("cannot start the signal thread: {err}")))?;
    Ok(())
}

/// The TLS settings of one port, when its certificate and key are configured (`cert_key`
/// names the setting, for the error that stops start-up).
fn tls_acceptor(
    cert_key: &'static str,
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
) -> Result<Option<futures_rustls::TlsAcceptor>, StartError> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    crate::net::tls::acceptor(&crate::net::tls::Files {
        cert_key,
        cert,
        key,
    })
    .map(Some)
    .map_err(StartError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_is_one_shard_per_cpu_with_ingest_sharing_the_first() {
        let plan = CorePlan::new(&Config::default(), &[0, 1]).unwrap();
        assert_eq!(
            plan,
            CorePlan {
                ingest_cpu: 0,
                shard_cpus: vec![0, 1]
            }
        );
        assert_eq!(
            plan.lines(),
            [
                "core plan: ingest on cpu 0 (shared with shard 0)",
                "core plan: shard 0 on cpu 0",
                "core plan: shard 1 on cpu 1"
            ]
        );
    }

    #[test]
    fn shards_reuse_listed_cores_round_robin_and_unknown_cpus_are_refused() {
        let config = Config {
            shards: Some(3),
            cores: Some(vec![1]),
            ingest_core: Some(0),
            ..Config::default()
        };
        let plan = CorePlan::new(&config, &[0, 1]).unwrap();
        assert_eq!(plan.shard_cpus, [1, 1, 1]);
        assert_eq!(plan.lines()[0], "core plan: ingest on cpu 0 (dedicated)");
        let config = Config {
            cores: Some(vec![7]),
            ..Config::default()
        };
        let err = CorePlan::new(&config, &[0, 1]).unwrap_err().0;
        assert!(err.contains("CPU 7 is not available"), "{err}");
    }
}
