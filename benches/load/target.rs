//! What a run measures: a server reached over the network (one the operator started, or one
//! the bench started for `--compare`), or a floor server in this process.
//!
//! Owns the two things that differ between targets: how the events are published, and where
//! the server's CPU time comes from. Everything else (the receiver, the recorder, the loss and
//! order checks, the report) is the same code for every target, so that two runs differ by
//! the target alone and a server's figures can be read against the floor's. It never measures
//! anything itself: the run reads every figure the same way whatever the target.

use crate::floor::Floor;
use crate::probe::Process;
use crate::publish::{self, Plan, Publisher};
use crate::spawn::Spawned;

/// The system under measurement.
pub enum Target {
    /// A server (corecast, a peer, or whatever `--ws` names): the publisher thread sends it
    /// the events, and its CPU time and memory are read from `/proc` when its process is known.
    Server(Server),
    /// A floor server (`--baseline`, `--compare`): its thread writes the events to the
    /// subscribers' sockets itself and reads its own CPU time.
    Floor(Floor),
}

/// A server reached over the network.
pub struct Server {
    /// What the report calls it: the `--ws` URL, or the name it was started under.
    pub name: String,
    pub plan: Plan,
    /// Where its memory and CPU time are read: `--server-pid`, or the processes the bench
    /// started for it.
    pub process: Option<Process>,
    /// The CPUs it was started on, when the bench started it.
    pub cpus: Vec<usize>,
    /// The processes the bench started for it (one, or a cluster's nodes and its Redis),
    /// stopped with the target, last started first.
    pub spawned: Vec<Spawned>,
}

/// Where a target's CPU time over the measured phase comes from.
#[derive(Debug, Clone, Copy)]
pub enum ServerCpu {
    /// Nowhere: a server without `--server-pid`.
    Unmeasured,
    /// The process's (or processes') threads in `/proc/PID/task`, read by the run before and
    /// after.
    Process(Process),
    /// The publishing thread itself, reported with the phase's outcome; it runs in the
    /// bench's process, so the run also takes it out of the bench's own CPU time.
    Reported,
}

impl Target {
    /// What the report calls it.
    pub fn name(&self) -> &str {
        match self {
            Self::Server(server) => &server.name,
            Self::Floor(floor) => floor.name(),
        }
    }

    /// Starts publishing: the handle the run drives the phases through, on `bench_cpu` for a
    /// server (the floor's thread is already running on its own CPU). Called once per run.
    pub fn publisher(&mut self, bench_cpu: Option<usize>) -> Result<Publisher, String> {
        match self {
            Self::Server(server) => publish::spawn(server.plan.clone(), bench_cpu),
            Self::Floor(floor) => Ok(floor.take_publisher()),
        }
    }

    /// The server's processes, when they are known: its memory and CPU time are then read
    /// from `/proc`.
    pub fn process(&self) -> Option<Process> {
        match self {
            Self::Server(server) => server.process,
            Self::Floor(_) => None,
        }
    }

    /// The CPUs the server runs on, when the bench placed it.
    pub fn cpus(&self) -> Vec<usize> {
        match self {
            Self::Server(server) => server.cpus.clone(),
            Self::Floor(floor) => vec![floor.cpu()],
        }
    }

    pub fn server_cpu(&self) -> ServerCpu {
        match (self, self.process()) {
            (Self::Floor(_), _) => ServerCpu::Reported,
            (Self::Server(_), Some(process)) => ServerCpu::Process(process),
            (Self::Server(_), None) => ServerCpu::Unmeasured,
        }
    }

    /// Stops what the bench started for the target, once the run has dropped its publisher:
    /// waits for the floor's thread to end, or stops the server process the bench started. A
    /// server the operator started is left running, and the HTTP publisher is never waited
    /// for (see `publish::spawn`).
    pub fn stop(&mut self) -> Result<(), String> {
        match self {
            Self::Server(server) => {
                let mut outcome = Ok(());
                while let Some(spawned) = server.spawned.pop() {
                    let stopped = spawned.stop();
                    if outcome.is_ok() {
                        outcome = stopped;
                    }
                }
                outcome
            }
            Self::Floor(floor) => floor.stop(),
        }
    }
}
