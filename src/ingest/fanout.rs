//! The overall fan-out latency: per publish, the slowest of the shards it was routed to.
//!
//! Each delivery carries the `Instant` its publish was accepted; every shard it was routed to
//! reports its fan-out time back, and the publish is recorded into the overall histogram (see
//! [`super::metrics`]) once all of them have. This owns the table of publishes still waiting
//! for reports, bounded (two shard queues' worth, `FANOUT_PENDING_QUEUES`) so that a stalled
//! shard cannot grow it, and the histograms; it never sends to a shard.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use hashbrown::HashMap;

use crate::latency::{Buckets, FanoutLatency, LatencySummary};
use crate::msg::FanoutReport;

/// Publishes whose fan-out reports the ingest core waits for, at most, in shard queues' worth
/// (`queue_items_max` each): a publish waits while it sits in the slowest shard's queue (one
/// queue's worth at most) and while that shard's report travels back (a shard reports after
/// each batch it drains; allow one more). Past that a shard is stalled. An entry is about
/// 40 bytes: 5 MiB at the default `queue_items_max` of 65,536. A publish that finds the table
/// full is not timed overall and counts in `fanout_untracked_total`.
pub(super) const FANOUT_PENDING_QUEUES: usize = 2;

/// A publish whose shards have not all reported their fan-out time yet.
struct FanoutPending {
    shards_left: usize,
    slowest: Duration,
}

/// The publishes awaiting reports and the latency of those that got all of theirs.
pub(crate) struct Fanout {
    /// Publishes awaiting fan-out reports, by publish number; at most `pending_max`.
    pending: RefCell<HashMap<u64, FanoutPending>>,
    /// [`FANOUT_PENDING_QUEUES`] x `queue_items_max`.
    pending_max: usize,
    /// Publishes not timed overall because `pending` was at its bound.
    untracked_total: Cell<u64>,
    /// Per publish, the slowest fan-out of the shards it was routed to.
    overall: RefCell<FanoutLatency>,
    /// The same, since the last `$sys.stats` tick took it.
    interval: RefCell<FanoutLatency>,
}

impl Fanout {
    /// Nothing awaited yet, for shard queues of `queue_items_max` items.
    pub(super) fn new(queue_items_max: usize) -> Fanout {
        Fanout {
            pending: RefCell::new(HashMap::new()),
            pending_max: FANOUT_PENDING_QUEUES * queue_items_max,
            untracked_total: Cell::new(0),
            overall: RefCell::new(FanoutLatency::default()),
            interval: RefCell::new(FanoutLatency::default()),
        }
    }

    /// Starts waiting for the fan-out reports of `publish` from `shards` shards.
    pub(super) fn await_reports(&self, publish: u64, shards: usize) {
        let mut pending = self.pending.borrow_mut();
        if pending.len() >= self.pending_max {
            self.untracked_total.set(self.untracked_total.get() + 1);
            return;
        }
        let fresh = pending
            .insert(
                publish,
                FanoutPending {
                    shards_left: shards,
                    slowest: Duration::ZERO,
                },
            )
            .is_none();
        assert!(fresh, "publish numbers are never reused");
    }

    /// Takes one shard's fan-out times; a publish whose last shard reported is recorded.
    /// Reports for untracked publishes are ignored.
    pub(super) fn reported(&self, reports: &[FanoutReport]) {
        let mut pending = self.pending.borrow_mut();
        for report in reports {
            let Some(entry) = pending.get_mut(&report.publish) else {
                continue;
            };
            assert!(entry.shards_left > 0, "a finished publish leaves the table");
            entry.slowest = entry.slowest.max(report.elapsed);
            entry.shards_left -= 1;
            if entry.shards_left == 0 {
                let slowest = entry.slowest;
                pending.remove(&report.publish);
                self.overall.borrow_mut().record(slowest);
                self.interval.borrow_mut().record(slowest);
            }
        }
    }

    /// The overall fan-out latency's percentiles.
    pub(super) fn summary(&self) -> LatencySummary {
        self.overall.borrow().summary()
    }

    /// The overall fan-out latency in Prometheus buckets.
    pub(super) fn buckets(&self) -> Buckets {
        self.overall.borrow().buckets()
    }

    /// The fan-out latency recorded since the previous call, which starts a new interval.
    pub(super) fn take_interval(&self) -> LatencySummary {
        std::mem::take(&mut *self.interval.borrow_mut()).summary()
    }

    /// Publishes waiting for some shard's report now.
    pub(super) fn pending_len(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Publishes not timed overall because the table was full.
    pub(super) fn untracked_total(&self) -> u64 {
        self.untracked_total.get()
    }
}
