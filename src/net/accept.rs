//! What a listener does when `accept` fails: pause, longer each time, and say so rarely.
//!
//! An accept fails when the process is out of file descriptors (EMFILE), the host is (ENFILE),
//! or the kernel is out of memory for sockets; the connection waits in the backlog meanwhile,
//! so retrying at once only fails again, and a warning per failure fills the log (1,501 in
//! 25 s once). [`Backoff`] pauses from [`PAUSE_MIN`] doubling to [`PAUSE_MAX`], back to the
//! minimum after a success, and lets a warning through at most once per [`WARN_INTERVAL`],
//! carrying the failures since the previous one. Every accept loop (each shard's and the
//! control plane's) keeps one; the loop counts every failure in its stats. This module owns
//! only that arithmetic: it never touches a socket or a clock, so it is tested with made-up
//! instants.

use std::time::{Duration, Instant};

/// First pause after a failed accept.
pub const PAUSE_MIN: Duration = Duration::from_millis(5);

/// Longest pause between two accepts that fail: a freed descriptor is used within it.
pub const PAUSE_MAX: Duration = Duration::from_secs(1);

/// Shortest time between two warnings of one accept loop.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// One accept loop's pause and warning state.
#[derive(Debug)]
pub struct Backoff {
    pause: Duration,
    /// When the last warning was let through (`None`: never).
    warned_at: Option<Instant>,
    /// Failures since that warning, not yet reported.
    unreported: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            pause: PAUSE_MIN,
            warned_at: None,
            unreported: 0,
        }
    }
}

/// What to do after a failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// How long to wait before the next accept.
    pub pause: Duration,
    /// `Some(n)`: warn now, for `n` failures (this one included) since the previous warning.
    pub warn: Option<u64>,
}

impl Backoff {
    /// An accept succeeded: the next failure pauses [`PAUSE_MIN`] again. The warning interval
    /// is kept, so an accept that fails and succeeds in turn still warns rarely.
    pub fn succeeded(&mut self) {
        self.pause = PAUSE_MIN;
    }

    /// An accept failed at `now`.
    pub fn failed(&mut self, now: Instant) -> Failed {
        let pause = self.pause;
        self.pause = (self.pause * 2).min(PAUSE_MAX);
        self.unreported += 1;
        let due = self
            .warned_at
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_INTERVAL);
        let warn = due.then(|| {
            self.warned_at = Some(now);
            std::mem::take(&mut self.unreported)
        });
        Failed { pause, warn }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_the_cap_and_a_success_starts_over() {
        let mut backoff = Backoff::default();
        let now = Instant::now();
        let pauses: Vec<u64> = (0..10)
            .map(|_| backoff.failed(now).pause.as_millis() as u64)
            .collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(now).pause, PAUSE_MIN);
    }

    #[test]
    fn warnings_come_once_per_interval_with_the_failures_between() {
        let mut backoff = Backoff::default();
        let start = Instant::now();
        assert_eq!(
            backoff.failed(start).warn,
            Some(1),
            "the first failure warns"
        );
        let mut warnings = Vec::new();
        // A failure every 100 ms for 25 s, as a loop out of descriptors would see them (a
        // success now and then does not make it warn more).
        for step in 1..=250u64 {
            let now = start + Duration::from_millis(100 * step);
            if step % 7 == 0 {
                backoff.succeeded();
            }
            if let Some(failures) = backoff.failed(now).warn {
                warnings.push((step, failures));
            }
        }
        assert_eq!(warnings, [(100, 100), (200, 100)]);
    }
}
