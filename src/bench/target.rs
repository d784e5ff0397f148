//! What a run measures: a server reached over the network, or the floor server in this
//! process.
//!
//! Owns the two things that differ between targets: how the events are published, and where
//! the server's CPU time comes from. Everything else (the receiver, the recorder, the loss and
//! order checks, the report) is the same code for every target, so that two runs differ by
//! the target alone and a server's figures can be read against the floor's. It never measures
//! anything itself: the run reads every figure the same way whatever the target.

use super::floor::{self, Floor};
use super::publish::{self, Plan, Publisher};

/// The system under measurement.
pub enum Target {
    /// A server (corecast, or whatever `--ws` names): the publisher thread posts the events
    /// to its API, and its CPU time is read from `/proc` when `--server-pid` names it.
    Server(Server),
    /// The floor server (`--baseline`): its thread writes the events to the subscribers'
    /// sockets itself and reads its own CPU time.
    Floor(Floor),
}

/// A server reached over the network.
pub struct Server {
    /// What the report calls it: the `--ws` URL.
    pub name: String,
    pub plan: Plan,
    /// Its process id, from `--server-pid`.
    pub pid: Option<u32>,
}

/// Where a target's CPU time over the measured phase comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCpu {
    /// Nowhere: a server without `--server-pid`.
    Unmeasured,
    /// The process's threads in `/proc/PID/task`, read by the run before and after.
    Process(u32),
    /// The publishing thread itself, reported with the phase's outcome; it runs in the
    /// bench's process, so the run also takes it out of the bench's own CPU time.
    Reported,
}

impl Target {
    /// What the report calls it.
    pub fn name(&self) -> &str {
        match self {
            Self::Server(server) => &server.name,
            Self::Floor(_) => floor::NAME,
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

    /// The server's process id, when it is another process and `--server-pid` names it: its
    /// memory and CPU time are then read from `/proc`.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Server(server) => server.pid,
            Self::Floor(_) => None,
        }
    }

    pub fn server_cpu(&self) -> ServerCpu {
        match (self, self.pid()) {
            (Self::Floor(_), _) => ServerCpu::Reported,
            (Self::Server(_), Some(pid)) => ServerCpu::Process(pid),
            (Self::Server(_), None) => ServerCpu::Unmeasured,
        }
    }

    /// Waits for the target's threads in this process to end, once the run has dropped its
    /// publisher; the HTTP publisher is never waited for (see `publish::spawn`).
    pub fn stop(&mut self) -> Result<(), String> {
        match self {
            Self::Server(_) => Ok(()),
            Self::Floor(floor) => floor.stop(),
        }
    }
}
