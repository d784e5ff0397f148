//! The sequencer's three priority lanes and the work that waits in them.
//!
//! A publish, a `/v1/publish/batch` or a recovery is queued here by its priority and taken by
//! the sequencer, `critical` before `high` before `normal`. The lanes own the count that
//! `queue_items_max` bounds (a batch counts each of its publishes) and the wake-up of the
//! sequencer; they never sequence, route or answer anything: what they refuse goes back to
//! the caller to answer.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::Instant;

use futures_channel::oneshot;
use sonic_rs::Value;

use super::{Priority, PublishError};
use crate::msg::{ConnId, ShardId, Since};
use crate::notify::Notify;

/// Where a sequenced publish's outcome goes.
pub(crate) enum Reply {
    /// The server's own publish (`$sys.stats`): nobody waits for it.
    None,
    Http(oneshot::Sender<Result<u64, PublishError>>),
    Conn {
        shard: ShardId,
        conn: ConnId,
        id: Option<Value>,
    },
}

/// The outcome of a whole batch: every offset in order, or why none of its messages was
/// published (or, `outcome_unknown`, why it is not known whether all of them were).
pub(crate) type BatchOutcome = Result<Vec<u64>, PublishError>;

/// One publish waiting in a lane.
pub(crate) struct Job {
    pub(super) channel: Box<str>,
    pub(super) data: Box<str>,
    pub(super) priority: Priority,
    pub(super) ts_ms: u64,
    /// When the ingest core accepted the publish: where its fan-out latency starts.
    pub(super) accepted: Instant,
    pub(super) reply: Reply,
}

/// A `/v1/publish/batch` waiting in the lane of its highest priority, to be sequenced whole.
/// Its jobs answer nobody: the batch answers for them.
pub(crate) struct Batch {
    pub(super) jobs: Vec<Job>,
    pub(super) done: oneshot::Sender<BatchOutcome>,
}

impl Batch {
    /// The lane of its most urgent message, so that none waits behind what it would overtake.
    fn priority(&self) -> Priority {
        self.jobs
            .iter()
            .map(|job| job.priority)
            .min()
            .unwrap_or_default()
    }
}

/// A `subscribe` with `since` waiting in the critical lane for its snapshot of history.
pub(crate) struct Recovery {
    pub(super) shard: ShardId,
    pub(super) conn: ConnId,
    pub(super) id: Option<Value>,
    pub(super) pattern: Box<str>,
    pub(super) since: Since,
}

/// What waits in a lane: a publish or a batch to sequence, or a recovery to answer between two.
pub(crate) enum Work {
    Publish(Job),
    Batch(Batch),
    Recover(Recovery),
}

impl Work {
    /// What it counts against `queue_items_max`: its publishes, or one for a recovery.
    fn weight(&self) -> usize {
        match self {
            Work::Batch(batch) => batch.jobs.len(),
            Work::Publish(_) | Work::Recover(_) => 1,
        }
    }

    fn lane(&self) -> usize {
        match self {
            Work::Publish(job) => job.priority.lane(),
            Work::Batch(batch) => batch.priority().lane(),
            Work::Recover(_) => Priority::Critical.lane(),
        }
    }
}

/// The lanes, by [`Priority::lane`], with what they hold and the sequencer's wake-up.
pub(crate) struct Lanes {
    queued: RefCell<[VecDeque<Work>; 3]>,
    /// Publishes (a batch's each) and recoveries waiting in each lane: what `items_max`
    /// bounds.
    len: [Cell<usize>; 3],
    /// `queue_items_max`: what all three lanes hold at most, in publishes.
    items_max: usize,
    /// Wakes the sequencer: work was queued, or (cluster mode) something arrived for it.
    ready: Notify,
}

impl Lanes {
    /// Empty lanes holding at most `items_max` (`queue_items_max`) publishes.
    pub(super) fn new(items_max: usize) -> Lanes {
        Lanes {
            queued: RefCell::new(Default::default()),
            len: Default::default(),
            items_max,
            ready: Notify::default(),
        }
    }

    /// Queues work in its lane: a publish by its priority, a batch by its most urgent
    /// message's, a recovery in the critical one; whole, or not at all past `queue_items_max`.
    pub(super) fn enqueue(&self, work: Work) -> Result<(), Work> {
        let queued: usize = self.len.iter().map(Cell::get).sum();
        if queued + work.weight() > self.items_max {
            return Err(work);
        }
        let lane = work.lane();
        self.len[lane].set(self.len[lane].get() + work.weight());
        self.queued.borrow_mut()[lane].push_back(work);
        self.ready.notify();
        Ok(())
    }

    /// Takes the next work of the first of `lanes` that has some.
    pub(super) fn dequeue(&self, lanes: &[usize]) -> Option<Work> {
        let mut queued = self.queued.borrow_mut();
        lanes.iter().find_map(|&lane| {
            let work = queued[lane].pop_front()?;
            self.len[lane].set(self.len[lane].get() - work.weight());
            Some(work)
        })
    }

    /// Whether every lane is empty.
    pub(super) fn is_empty(&self) -> bool {
        self.queued.borrow().iter().all(VecDeque::is_empty)
    }

    /// What each lane holds, in publishes, for `/v1/stats`.
    pub(super) fn lens(&self) -> [usize; 3] {
        self.len.each_ref().map(Cell::get)
    }

    /// Wakes the sequencer to check for work again.
    pub(super) fn wake(&self) {
        self.ready.notify();
    }

    /// Waits until `ready()`, checking again whenever work is queued or [`Lanes::wake`] is
    /// called.
    pub(super) async fn wait_until(&self, ready: impl Fn() -> bool) {
        self.ready.wait_until(ready).await;
    }
}
