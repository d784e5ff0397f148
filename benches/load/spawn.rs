//! Servers the bench starts itself for `--compare`: corecast, and each `--peer`.
//!
//! Owns a server process from start to stop: its command line, the CPUs it may run on, its
//! output, the wait until it accepts connections, and its end. The CPUs are the ones of the
//! thread that spawns it, which is pinned to `--server-cpus` for that one call, so the server
//! and everything it starts inherit them from their first instruction. Its output goes to a
//! log file in the temporary directory, whose tail is quoted when it fails to start and which
//! is removed once it stops cleanly. It runs in a process group of its own, so that stopping
//! it (SIGTERM, then SIGKILL after `STOP_GRACE_MS`) reaches whatever a shell or a build tool
//! started for it. It never measures anything: the run reads the server's memory and CPU time
//! through `probe::Process::Tree`, over the same processes.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CpuSet;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long a server may take to accept connections after it is started, in seconds: long
/// enough for a peer started through `cargo bench`, which may compile it first.
const START_TIMEOUT_S: u64 = 300;

/// How long one readiness probe waits for a TCP connect, in milliseconds.
const PROBE_CONNECT_MS: u64 = 200;

/// Time between two readiness probes, in milliseconds.
const PROBE_INTERVAL_MS: u64 = 50;

/// How long a server gets to end after SIGTERM before it is killed, in milliseconds.
const STOP_GRACE_MS: u64 = 5_000;

/// Lines of a server's output quoted when it fails.
const LOG_TAIL_LINES: usize = 20;

/// Longest peer name, in bytes: it names a table row and a log file.
const NAME_BYTES_MAX: usize = 32;

/// The placeholder a peer's command must hold, replaced by the port it is to listen on.
pub const PORT_PLACEHOLDER: &str = "{port}";

/// A `--peer NAME=COMMAND` flag: a server to compare, started with `sh -c COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    /// The shell command, with `{port}` where the port goes.
    pub command: String,
}

impl PeerSpec {
    /// Parses `NAME=COMMAND`: a short name of letters, digits, `.`, `_` and `-`, and a command
    /// holding `{port}`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((name, command)) = text.split_once('=') else {
            return Err(format!(
                "{text:?} is not NAME=COMMAND (for example 'tokio=./peer {PORT_PLACEHOLDER}')"
            ));
        };
        let name_ok = !name.is_empty()
            && name.len() <= NAME_BYTES_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(format!(
                "peer name {name:?} must be 1 to {NAME_BYTES_MAX} letters, digits, '.', '_' or '-'"
            ));
        }
        if !command.contains(PORT_PLACEHOLDER) {
            return Err(format!(
                "peer {name}: the command {command:?} must hold {PORT_PLACEHOLDER}, where the \
                 bench puts the port the peer is to listen on"
            ));
        }
        Ok(Self {
            name: name.into(),
            command: command.into(),
        })
    }

    /// The command with every `{port}` replaced by `port`.
    pub fn command_for(&self, port: u16) -> String {
        self.command.replace(PORT_PLACEHOLDER, &port.to_string())
    }
}

/// A port on 127.0.0.1 nothing listens on now, for a server to take. Another process could
/// take it first; the server then fails to start and says so.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|error| format!("cannot find a free port on 127.0.0.1: {error}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|error| format!("cannot find a free port on 127.0.0.1: {error}"))
}

/// A server process the bench started.
pub struct Spawned {
    name: String,
    child: Child,
    log: PathBuf,
    /// Set once it has been stopped, so that `Drop` does nothing more.
    stopped: bool,
}

impl Spawned {
    /// Starts `argv` restricted to `cpus`, in a process group of its own, with its output in a
    /// log file named after `name`.
    pub fn start(name: &str, argv: &[String], cpus: &[usize]) -> Result<Self, String> {
        let (program, args) = argv.split_first().expect("a command has a program");
        let log =
            std::env::temp_dir().join(format!("corecast-bench-{}-{name}.log", std::process::id()));
        let file = File::create(&log)
            .map_err(|error| format!("{name}: cannot create {}: {error}", log.display()))?;
        let errors = file
            .try_clone()
            .map_err(|error| format!("{name}: cannot share {}: {error}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(errors);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut cpu_set = CpuSet::new();
        for &cpu in cpus {
            cpu_set
                .set(cpu)
                .map_err(|error| format!("{name}: CPU {cpu}: {error}"))?;
        }
        // A thread of its own, pinned for the one call: the child inherits its CPUs.
        let child = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::sched_setaffinity(Pid::from_raw(0), &cpu_set).map_err(|error| {
                        format!("{name}: cannot restrict a thread to CPUs {cpus:?}: {error}")
                    })?;
                    command
                        .spawn()
                        .map_err(|error| format!("{name}: cannot start {program:?}: {error}"))
                })
                .join()
                .map_err(|_| format!("{name}: the thread starting it panicked"))?
        })?;
        Ok(Self {
            name: name.into(),
            child,
            log,
            stopped: false,
        })
    }

    /// Its process id, which is also its process group's.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until every address in `addrs` accepts a TCP connection, up to `START_TIMEOUT_S`.
    /// Fails at once, quoting the end of its output, if the server exits first.
    pub fn await_listening(&mut self, addrs: &[SocketAddr]) -> Result<(), String> {
        let give_up = Instant::now() + Duration::from_secs(START_TIMEOUT_S);
        let mut waiting = addrs.to_vec();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stopped = true;
                return Err(format!(
                    "{} ended ({status}) before it accepted connections; {}",
                    self.name,
                    self.output_tail()
                ));
            }
            waiting.retain(|addr| {
                TcpStream::connect_timeout(addr, Duration::from_millis(PROBE_CONNECT_MS)).is_err()
            });
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= give_up {
                return Err(format!(
                    "{} did not accept connections on {waiting:?} within {START_TIMEOUT_S} s; {}",
                    self.name,
                    self.output_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(PROBE_INTERVAL_MS));
        }
    }

    /// Sends SIGTERM to its process group and waits up to `STOP_GRACE_MS` for the whole group
    /// to end (a shell's children too: a peer that still held its port would meet the next
    /// round), then sends SIGKILL. A server that exits with success or dies of the SIGTERM (one
    /// without a handler) has stopped cleanly, and its log is removed.
    pub fn stop(mut self) -> Result<(), String> {
        use std::os::unix::process::ExitStatusExt;
        self.stopped = true;
        self.signal(Signal::SIGTERM);
        let give_up = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        let mut exited = None;
        loop {
            if exited.is_none() {
                match self.child.try_wait() {
                    Ok(status) => exited = status,
                    Err(_) => break,
                }
            }
            if let Some(status) = exited.filter(|_| !self.group_running()) {
                if status.success() || status.signal() == Some(Signal::SIGTERM as i32) {
                    // Nothing to keep: the server had nothing to say that went wrong.
                    let _ = std::fs::remove_file(&self.log);
                    return Ok(());
                }
                return Err(format!(
                    "{} ended with {status} after SIGTERM; its output: {}",
                    self.name,
                    self.log.display()
                ));
            }
            if Instant::now() >= give_up {
                break;
            }
            std::thread::sleep(Duration::from_millis(PROBE_INTERVAL_MS));
        }
        self.signal(Signal::SIGKILL);
        // Reaps the child; it cannot outlive SIGKILL.
        let _ = self.child.wait();
        Err(format!(
            "{} did not end within {STOP_GRACE_MS} ms of SIGTERM and was killed; its output: {}",
            self.name,
            self.log.display()
        ))
    }

    /// Whether a process of its group still runs. Read from `/proc`, not with a signal 0: a
    /// member that exited is a zombie until its new parent reaps it, and in a container that
    /// parent may never do so.
    fn group_running(&self) -> bool {
        let group = self.child.id().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return false;
        };
        entries.flatten().any(|entry| {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // After the command name in parentheses: state, ppid, pgrp, ...
            let fields = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let mut fields = fields.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1);
            pgrp == Some(group.as_str()) && state.is_some_and(|state| state != "Z" && state != "X")
        })
    }

    fn signal(&self, signal: Signal) {
        let group = Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits in i32"));
        // The group may be gone already: then there is nothing to signal.
        let _ = killpg(group, signal);
    }

    /// The last lines of its output, or where to find it.
    fn output_tail(&self) -> String {
        let Ok(text) = std::fs::read_to_string(&self.log) else {
            return format!("its output was to be in {}", self.log.display());
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!("the end of its output ({}):\n{tail}", self.log.display())
    }
}

impl Drop for Spawned {
    /// A run that ended early (an error, a panic) never leaves a server running.
    fn drop(&mut self) {
        if !self.stopped {
            self.signal(Signal::SIGKILL);
            // Reaps the child; it cannot outlive SIGKILL.
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus() -> Vec<usize> {
        vec![core_affinity::get_core_ids().unwrap()[0].id]
    }

    #[test]
    fn a_peer_flag_needs_a_name_and_the_port_placeholder() {
        let peer = PeerSpec::parse("tokio=./peer --port {port}").unwrap();
        assert_eq!(peer.name, "tokio");
        assert_eq!(peer.command_for(8080), "./peer --port 8080");
        assert_eq!(
            PeerSpec::parse("tokio ./peer").unwrap_err(),
            r#""tokio ./peer" is not NAME=COMMAND (for example 'tokio=./peer {port}')"#
        );
        assert!(PeerSpec::parse("=./peer {port}")
            .unwrap_err()
            .starts_with(r#"peer name """#));
        assert!(PeerSpec::parse("a b=./peer {port}")
            .unwrap_err()
            .starts_with(r#"peer name "a b""#));
        assert_eq!(
            PeerSpec::parse("x=./peer 8080").unwrap_err(),
            r#"peer x: the command "./peer 8080" must hold {port}, where the bench puts the port the peer is to listen on"#
        );
    }

    /// A shell that listens with a child of its own (Python's one-line HTTP server): ready once
    /// it accepts, restricted to the CPUs given, and stopped with its whole group.
    #[test]
    fn a_started_server_is_awaited_pinned_and_stopped_with_its_children() {
        let port = free_port().unwrap();
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("python3 -m http.server --bind 127.0.0.1 {port} & wait"),
        ];
        let cpus = cpus();
        let mut server = Spawned::start("http", &argv, &cpus).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        server.await_listening(&[addr]).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        let allowed = status
            .lines()
            .find(|line| line.starts_with("Cpus_allowed_list:"))
            .unwrap();
        assert_eq!(
            allowed.split_whitespace().nth(1),
            Some(cpus[0].to_string().as_str())
        );
        let log = server.log.clone();
        assert_eq!(server.stop(), Ok(()));
        assert!(!log.exists(), "a clean stop removes the log");
        assert!(
            TcpStream::connect(addr).is_err(),
            "the shell's child was stopped too"
        );
    }

    #[test]
    fn a_server_that_exits_at_once_is_reported_with_its_output() {
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo cannot bind >&2; exit 3".to_string(),
        ];
        let mut server = Spawned::start("failing", &argv, &cpus()).unwrap();
        let port = free_port().unwrap();
        let message = server
            .await_listening(&[SocketAddr::from(([127, 0, 0, 1], port))])
            .unwrap_err();
        assert!(
            message.starts_with("failing ended (exit status: 3) before it accepted connections"),
            "{message}"
        );
        assert!(message.ends_with("\ncannot bind"), "{message}");
    }
}
