//! The shard's counters: the totals it reports in `/v1/stats` and `/metrics`, and the same per
//! channel namespace. Only the `count_*` methods write them, each one event's worth.
//!
//! The figures that are states rather than events (connections, subscriptions, queue and outbox
//! lengths, the fan-out latency) are not kept here: `ShardCore::stats` reads them from their
//! owners when asked, over these counters.

use std::cell::{Cell, RefCell};

use crate::msg::{NamespaceStats, ShardId, ShardStats};
use crate::ws::outbox::Shed;
use crate::ws::rate::Refusal;

/// Event counters, for the shard and per namespace.
pub struct Stats {
    /// The shard's totals; the state figures in it stay zero here.
    totals: Cell<ShardStats>,
    /// Counters per channel namespace, by index (see `Delivery::namespace`).
    namespaces: RefCell<Vec<NamespaceStats>>,
}

impl Stats {
    /// Counters for shard `shard`, with `namespaces_len` namespaces.
    pub fn new(shard: ShardId, namespaces_len: usize) -> Self {
        Stats {
            totals: Cell::new(ShardStats {
                shard,
                ..ShardStats::default()
            }),
            namespaces: RefCell::new(vec![NamespaceStats::default(); namespaces_len]),
        }
    }

    fn update(&self, change: impl FnOnce(&mut ShardStats)) {
        let mut totals = self.totals.get();
        change(&mut totals);
        self.totals.set(totals);
    }

    /// The shard's counters as of now, the state figures left zero.
    pub fn totals(&self) -> ShardStats {
        self.totals.get()
    }

    /// The namespaces' counters as of now.
    pub fn namespaces(&self) -> Vec<NamespaceStats> {
        self.namespaces.borrow().clone()
    }

    pub fn count_written(&self, frames: usize, bytes: usize) {
        self.update(|totals| {
            totals.messages_out += frames as u64;
            totals.bytes_out += bytes as u64;
        });
    }

    pub fn count_dropped(&self, frames: usize) {
        self.update(|totals| totals.drops += frames as u64);
    }

    /// Counts a message the inbound rate limit refused, and the close it may bring.
    pub fn count_rate_limited(&self, refusal: Refusal) {
        self.update(|totals| {
            totals.rate_limited_messages += 1;
            totals.rate_limit_closes += u64::from(refusal == Refusal::Close);
        });
    }

    pub fn count_refused(&self) {
        self.update(|totals| totals.connections_refused += 1);
    }

    pub fn count_accept_error(&self) {
        self.update(|totals| totals.accept_errors += 1);
    }

    pub fn count_accepted(&self) {
        self.update(|totals| totals.connections_accepted += 1);
    }

    pub fn count_ack(&self) {
        self.update(|totals| totals.acks_total += 1);
    }

    /// Counts a connection closed with 4008, and the frame it could not take.
    pub fn count_slow_consumer(&self) {
        self.update(|totals| {
            totals.slow_consumer_closes += 1;
            totals.drops += 1;
        });
    }

    /// Counts a slow-consumer close in the namespace of the message that caused it.
    pub fn count_namespace_slow_consumer(&self, namespace: u16) {
        self.namespaces.borrow_mut()[usize::from(namespace)].slow_consumer_closes += 1;
    }

    /// Counts what a channel's slow-consumer policy shed from an outbox: the dropped frames
    /// for the shard and their namespace, the conflated ones for the namespace.
    pub fn count_shed(&self, namespace: u16, shed: Shed) {
        self.count_dropped(shed.dropped);
        let mut namespaces = self.namespaces.borrow_mut();
        let namespace = &mut namespaces[usize::from(namespace)];
        namespace.drops += shed.dropped as u64;
        namespace.conflated += shed.conflated as u64;
    }

    /// Counts one delivery to `conns` connections in `namespace`.
    pub fn count_deliveries(&self, namespace: u16, conns: usize) {
        self.namespaces.borrow_mut()[usize::from(namespace)].deliveries += conns as u64;
    }
}
