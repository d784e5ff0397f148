//! The numbering: the epoch, the seq of the last publish, every channel's offsets and bounded
//! [`History`], and encode-once as a channel's namespace says.
//!
//! Only the sequencer task (and, in cluster mode, the messages back from Redis it takes in
//! order) moves the seq or assigns an offset, so everything here is single-threaded state of
//! the ingest core. A new channel that finds the table at `channels_max` first reclaims
//! forgettable ones, and a sweep forgets channels with no history left and no route, both
//! asking the [`routes`](super::routes) which channels have a subscriber. Recoveries are
//! answered from here, as of the seq they are taken at. This never sends anything to a shard:
//! the caller routes and sends what it numbers.

use std::cell::{Cell, RefCell};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use super::encode;
use super::history::{self, Assigned, ChannelsFull, History, RecoveryLimits, Unnumbered};
use super::lanes::Job;
use super::routes::Routes;
use super::Settings;
use crate::cluster::Numbered;
use crate::config::{Config, SlowConsumer};
use crate::msg::{Delivery, Since, Slow};
use crate::ws::command::Unrecovered;

/// The epoch, the seq and the channels they number.
pub(crate) struct Sequencer {
    /// Every channel's settings, kept to start a new history when the epoch changes.
    config: Arc<Config>,
    /// This run of offsets, as clients are told it: new at every start (history is in memory),
    /// or the cluster's.
    epoch: RefCell<Arc<str>>,
    /// The seq of the last message numbered: publishes sequenced here, or (cluster mode) the
    /// cluster's last one taken.
    published_total: Cell<u64>,
    history: RefCell<History>,
    /// Channels the sweep and reclaims forgot, over every epoch.
    channels_forgotten_total: Cell<u64>,
    /// `channels_sweep_max`: slots one sweep or reclaim examines.
    sweep_max: usize,
    /// Hashes `conflate_key` values; any hasher will do, they are only compared on this node.
    conflate_hasher: hashbrown::DefaultHashBuilder,
    /// `permessage_deflate`: whether each frame gets its compressed twin.
    deflate: bool,
    /// `recovery_messages_max` and `outbox_bytes_max`: what one recovery sends at most.
    recovery_messages_max: usize,
    recovery_bytes_max: usize,
    /// `subscribe` commands with `since` answered, and those answered `recovered:false`.
    recoveries_total: Cell<u64>,
    recoveries_failed_total: Cell<u64>,
}

impl Sequencer {
    /// Nothing numbered yet in `epoch`, with `config`'s channel limits and namespaces and the
    /// ingest core's `settings`.
    pub(super) fn new(config: Arc<Config>, epoch: Arc<str>, settings: &Settings) -> Sequencer {
        Sequencer {
            history: RefCell::new(History::new(config.clone())),
            epoch: RefCell::new(epoch),
            published_total: Cell::new(0),
            channels_forgotten_total: Cell::new(0),
            sweep_max: settings.channels_sweep_max,
            conflate_hasher: hashbrown::DefaultHashBuilder::default(),
            deflate: settings.deflate,
            recovery_messages_max: settings.recovery_messages_max,
            recovery_bytes_max: settings.recovery_bytes_max,
            recoveries_total: Cell::new(0),
            recoveries_failed_total: Cell::new(0),
            config,
        }
    }

    /// The current epoch.
    pub(super) fn epoch(&self) -> Arc<str> {
        self.epoch.borrow().clone()
    }

    /// Whether `epoch` is the current one.
    pub(super) fn in_epoch(&self, epoch: &str) -> bool {
        **self.epoch.borrow() == *epoch
    }

    /// The seq of the last message numbered: where a subscription made now starts.
    pub(super) fn position(&self) -> u64 {
        self.published_total.get()
    }

    /// The seq the next message will have.
    pub(super) fn next_seq(&self) -> u64 {
        self.published_total.get() + 1
    }

    /// Numbers the next message: returns its seq.
    pub(super) fn advance(&self) -> u64 {
        let publish = self.next_seq();
        self.published_total.set(publish);
        publish
    }

    /// The cluster's seq `seq` is the last one taken.
    pub(super) fn set_position(&self, seq: u64) {
        self.published_total.set(seq);
    }

    /// A new epoch: Redis lost its data and numbers from 1 again, so history starts empty.
    pub(super) fn adopt_epoch(&self, epoch: Arc<str>) {
        *self.epoch.borrow_mut() = epoch;
        *self.history.borrow_mut() = History::new(self.config.clone());
        self.published_total.set(0);
    }

    /// A node that joined the cluster holds nothing at or before seq `after`.
    pub(super) fn set_floor(&self, after: u64) {
        self.history.borrow_mut().set_floor(after);
    }

    /// The next offset of `channel` (message number `seq`), reclaiming slots of forgettable
    /// channels first when it is new and the table is full.
    pub(super) fn assign(
        &self,
        channel: &str,
        seq: u64,
        routes: &Routes,
    ) -> Result<Assigned, ChannelsFull> {
        let assigned = self.history.borrow_mut().assign(channel, seq);
        match assigned {
            Err(ChannelsFull) if self.reclaim(routes) > 0 => {
                self.history.borrow_mut().assign(channel, seq)
            }
            assigned => assigned,
        }
    }

    /// Whether the channels of a batch's `jobs` fit `channels_max`: after a reclaim when they
    /// do not at first. Each of its messages is then [`Sequencer::assign_fitted`].
    pub(super) fn fits(&self, jobs: &[Job], routes: &Routes) -> bool {
        let fits = || {
            let history = self.history.borrow();
            history.untracked(jobs.iter().map(|job| &*job.channel)) <= history.slots_free()
        };
        fits() || (self.reclaim(routes) > 0 && fits())
    }

    /// The next offset of a batch's `channel` (message number `seq`), once the batch
    /// [`Sequencer::fits`].
    pub(super) fn assign_fitted(&self, channel: &str, seq: u64) -> Assigned {
        // Only the sequencer tracks new channels, and the sweep that may run while a batch
        // waits for a shard frees one slot for each channel it forgets.
        self.history
            .borrow_mut()
            .assign(channel, seq)
            .expect("the batch's new channels were counted before its first message")
    }

    /// `History::assign_numbered`, reclaiming slots of forgettable channels first when the
    /// channel is new here and the table is full.
    pub(super) fn assign_numbered(
        &self,
        event: &Numbered,
        routes: &Routes,
    ) -> Result<(Assigned, Option<(u64, u64)>), Unnumbered> {
        let assign = || {
            self.history
                .borrow_mut()
                .assign_numbered(&event.channel, event.offset, event.seq)
        };
        match assign() {
            Err(Unnumbered::ChannelsFull) if self.reclaim(routes) > 0 => assign(),
            assigned => assigned,
        }
    }

    /// For a new channel that found the table full: forgets what the bounded reclaim finds
    /// (see [`History::reclaim`]); returns how many.
    fn reclaim(&self, routes: &Routes) -> usize {
        let forgotten =
            self.history
                .borrow_mut()
                .reclaim(self.sweep_max, Instant::now(), routes.subscribed());
        self.count_forgotten(forgotten);
        forgotten
    }

    /// One tick of the sweep (see [`History::sweep`]).
    pub(super) fn sweep(&self, routes: &Routes) {
        let forgotten =
            self.history
                .borrow_mut()
                .sweep(self.sweep_max, Instant::now(), routes.subscribed());
        self.count_forgotten(forgotten);
    }

    fn count_forgotten(&self, forgotten: usize) {
        self.channels_forgotten_total
            .set(self.channels_forgotten_total.get() + forgotten as u64);
    }

    /// The slow-consumer policy of a message under policy `index`.
    fn slow(&self, index: usize, data: &str) -> Slow {
        let history = self.history.borrow();
        let policy = history.policy(index);
        match policy.slow_consumer {
            SlowConsumer::Disconnect => Slow::Disconnect,
            SlowConsumer::DropOldest => Slow::DropOldest,
            SlowConsumer::Conflate => {
                let key = policy
                    .conflate_key
                    .as_deref()
                    .expect("validated at start-up");
                let value = sonic_rs::get_from_str(data, [key]).ok();
                Slow::Conflate(value.map(|value| self.conflate_hasher.hash_one(value.as_raw_str())))
            }
        }
    }

    /// Encodes a numbered message once, local or back from the cluster, as its channel's
    /// namespace (`policy`) and the config say it is delivered.
    pub(super) fn encode(&self, message: &encode::Message<'_>, policy: usize) -> Delivery {
        let treatment = encode::Treatment {
            slow: self.slow(policy, message.data),
            namespace: u16::try_from(policy).expect("config validation bounds the namespaces"),
            deflate: self.deflate,
        };
        encode::delivery(message, treatment)
    }

    /// Keeps an encoded message of `channel` in its history, as of `now`.
    pub(super) fn record(&self, channel: &str, delivery: &Delivery, now: Instant) {
        self.history.borrow_mut().record(
            channel,
            delivery.offset,
            delivery.stamp.publish,
            delivery.frame.clone(),
            encode::payload_start(delivery),
            now,
        );
    }

    /// A recovery of `pattern` since `since`, from the history as of now, and the seq it was
    /// taken at: everything numbered so far is either in the missed frames or past
    /// recovering. Counted, and counted failed when not recovered.
    pub(super) fn recover(
        &self,
        pattern: &str,
        since: &Since,
    ) -> (Result<history::Recovery, Unrecovered>, u64) {
        let position = self.position();
        let outcome = if !self.in_epoch(&since.epoch) {
            Err(Unrecovered::EpochChanged)
        } else {
            let limits = RecoveryLimits {
                messages_max: self.recovery_messages_max,
                bytes_max: self.recovery_bytes_max,
                seq_latest: position,
            };
            self.history
                .borrow_mut()
                .recover(pattern, since.position, limits, Instant::now())
        };
        self.recoveries_total.set(self.recoveries_total.get() + 1);
        if outcome.is_err() {
            self.recoveries_failed_total
                .set(self.recoveries_failed_total.get() + 1);
        }
        (outcome, position)
    }

    /// The latest offset of `channel`, 0 if it has none.
    pub(super) fn offset(&self, channel: &str) -> u64 {
        self.history.borrow().offset(channel)
    }

    /// Up to `limit` messages of `channel` after offset `since`, for `GET /v1/history`.
    pub(super) fn page(&self, channel: &str, since: u64, limit: usize) -> history::Page {
        self.history
            .borrow_mut()
            .page(channel, since, limit, Instant::now())
    }

    /// Its figures for `/v1/stats`.
    pub(super) fn stats(&self) -> SequencerStats {
        let history = self.history.borrow();
        let (history_messages, history_bytes) = history.held();
        SequencerStats {
            published_total: self.published_total.get(),
            channels: history.channels_len(),
            channels_forgotten_total: self.channels_forgotten_total.get(),
            history_messages,
            history_bytes,
            recoveries_total: self.recoveries_total.get(),
            recoveries_failed_total: self.recoveries_failed_total.get(),
        }
    }
}

/// The sequencer's part of [`super::IngestStats`] (whose fields say what each is).
pub(super) struct SequencerStats {
    pub(super) published_total: u64,
    pub(super) channels: usize,
    pub(super) channels_forgotten_total: u64,
    pub(super) history_messages: usize,
    pub(super) history_bytes: usize,
    pub(super) recoveries_total: u64,
    pub(super) recoveries_failed_total: u64,
}
