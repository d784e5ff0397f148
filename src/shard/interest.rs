//! What the shard subscribes to, and since when: the patterns it has announced to the ingest
//! core (its *interest*), the [`Registry`] from live patterns to connections, and the shard's
//! position in the ingest core's run of offsets (the epoch, and a message `seq`).
//!
//! A pattern new to the shard is announced with a sequence number, and subscriptions to it wait
//! (as a [`Waiter`] each) until the ingest core's `InterestReady` for that number says the
//! pattern is routed here; only then do they go into the registry and get answered, so a client
//! that has read `subscribed` is guaranteed every message published after that. The last
//! subscriber's leaving withdraws the pattern.
//!
//! This module never writes to a connection: it says who waited, and the shard answers them.

use std::cell::{Cell, Ref, RefCell};
use std::sync::Arc;

use hashbrown::HashMap;
use sonic_rs::Value;

use super::conn::ConnHandle;
use super::forward::Forwarder;
use crate::msg::{ConnId, ShardId, ToIngest};
use crate::registry::Registry;

/// What a subscription waiting for its pattern's route does once the route exists.
pub enum Waiter {
    /// A connect-time subscription: the connection is greeted once all of them are live.
    Hello,
    /// A `subscribe` command: it goes live and is answered `subscribed`, echoing the id.
    Reply(Option<Value>),
    /// A `subscribe` with `since`: the ingest core's `Recovered` makes it live, not the route.
    Recovery,
    /// A server-side subscription (`POST /v1/users/subscribe`): it goes live and is answered
    /// `subscribed` with `"server":true`.
    Server,
}

/// A pattern the shard has announced, or is announcing, to the ingest core.
struct Announced {
    /// Connections subscribed to the pattern, waiting ones included.
    conns: u32,
    /// The sequence number of the latest `add` sent for this pattern.
    add_seq: u64,
    /// True once the ingest core confirmed `add_seq`.
    ready: bool,
    /// Subscriptions waiting for that confirmation.
    waiters: Vec<(ConnId, Waiter)>,
}

/// The shard's interest, its registry and its position.
pub struct Interest {
    /// The shard the announcements come from.
    shard: ShardId,
    /// Every pattern some connection here subscribes to, live or waiting.
    patterns: RefCell<HashMap<Box<str>, Announced>>,
    /// The sequence number of the latest announcement or withdrawal sent.
    seq: Cell<u64>,
    /// Live subscriptions: pattern to connections. Fan-out reads it for every delivery.
    registry: RefCell<Registry<ConnId>>,
    /// The ingest core's current run of offsets, as clients are told it.
    epoch: RefCell<Arc<str>>,
    /// A message `seq` such that every later publish matching a live subscription here reaches
    /// this shard: the highest of the deliveries, routes and recoveries received so far.
    position: Cell<u64>,
}

impl Interest {
    /// No interest yet, in the run of offsets named `epoch`.
    pub fn new(shard: ShardId, epoch: Arc<str>) -> Self {
        Interest {
            shard,
            patterns: RefCell::new(HashMap::new()),
            seq: Cell::new(0),
            registry: RefCell::new(Registry::new()),
            epoch: RefCell::new(epoch),
            position: Cell::new(0),
        }
    }

    /// Counts one more subscriber of `pattern` on this shard, announcing the pattern to the
    /// ingest core if it is new. Returns true if the pattern is already routed here; otherwise
    /// `(conn, waiter)` waits for the ingest core's confirmation.
    pub fn announce(
        &self,
        pattern: &str,
        conn: ConnId,
        waiter: Waiter,
        forwarder: &Forwarder,
    ) -> bool {
        let mut patterns = self.patterns.borrow_mut();
        if let Some(entry) = patterns.get_mut(pattern) {
            entry.conns += 1;
            if !entry.ready {
                entry.waiters.push((conn, waiter));
            }
            return entry.ready;
        }
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        patterns.insert(
            pattern.into(),
            Announced {
                conns: 1,
                add_seq: seq,
                ready: false,
                waiters: vec![(conn, waiter)],
            },
        );
        drop(patterns);
        forwarder.send(ToIngest::Interest {
            shard: self.shard,
            pattern: pattern.into(),
            add: true,
            seq,
        });
        false
    }

    /// Counts one subscriber of `pattern` less, withdrawing the pattern when it was the last.
    pub fn withdraw(&self, pattern: &str, forwarder: &Forwarder) {
        let mut patterns = self.patterns.borrow_mut();
        let entry = patterns
            .get_mut(pattern)
            .expect("a subscribed pattern is announced");
        entry.conns -= 1;
        if entry.conns > 0 {
            return;
        }
        patterns.remove(pattern);
        drop(patterns);
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        forwarder.send(ToIngest::Interest {
            shard: self.shard,
            pattern: pattern.into(),
            add: false,
            seq,
        });
    }

    /// The ingest core routes `pattern` here as of announcement `seq`, at `position`: marks it
    /// ready and returns the subscriptions that waited for it. A confirmation of an older
    /// announcement (the pattern was withdrawn and announced again since) returns none.
    pub fn ready(&self, pattern: &str, seq: u64, position: u64) -> Vec<(ConnId, Waiter)> {
        self.advance_position(position);
        let mut patterns = self.patterns.borrow_mut();
        let Some(entry) = patterns.get_mut(pattern) else {
            return Vec::new();
        };
        if entry.add_seq != seq {
            return Vec::new();
        }
        entry.ready = true;
        std::mem::take(&mut entry.waiters)
    }

    /// Puts `conn`'s subscription to `pattern` into the registry: fan-out reaches it from now.
    pub fn route(&self, pattern: &str, conn: ConnId) {
        self.registry.borrow_mut().insert(pattern, conn);
    }

    /// Takes `conn`'s subscription to `pattern` out of the registry.
    pub fn unroute(&self, pattern: &str, conn: ConnId) {
        self.registry.borrow_mut().remove(pattern, conn);
    }

    /// Makes a subscription live as of the shard's position now: routed, and covering every
    /// message after it.
    pub fn make_live(&self, handle: &ConnHandle, pattern: &str) {
        self.route(pattern, handle.id);
        handle.cover_from(pattern, self.position.get());
    }

    /// Makes every subscription of a connection live as of the shard's position now (its
    /// connect-time subscriptions, once all of them are routed here).
    pub fn make_all_live(&self, handle: &ConnHandle) {
        let mut registry = self.registry.borrow_mut();
        for subscription in handle.subscriptions.borrow().iter() {
            registry.insert(&subscription.pattern, handle.id);
            subscription.covered_from.set(self.position.get());
        }
    }

    /// Fills `matches` with the connections subscribed to a pattern matching `channel`.
    #[inline]
    pub fn collect_matches(&self, channel: &str, matches: &mut Vec<ConnId>) {
        self.registry.borrow().collect_matches(channel, matches);
    }

    /// Live subscriptions, over every connection.
    pub fn subscriptions_len(&self) -> usize {
        self.registry.borrow().len()
    }

    /// Every subscribed pattern and its live subscriber count.
    pub fn patterns(&self) -> Vec<(Box<str>, usize)> {
        let registry = self.registry.borrow();
        registry
            .patterns()
            .map(|(pattern, count)| (Box::from(pattern), count))
            .collect()
    }

    /// The current run of offsets.
    pub fn epoch(&self) -> Ref<'_, Arc<str>> {
        self.epoch.borrow()
    }

    /// A message `seq` such that every later publish matching a live subscription here
    /// reaches this shard.
    pub fn position(&self) -> u64 {
        self.position.get()
    }

    /// Moves the shard's position forward to `seq` (never back).
    #[inline]
    pub fn advance_position(&self, seq: u64) {
        self.position.set(self.position.get().max(seq));
    }

    /// A new run of offsets: the position starts again from zero.
    pub fn new_epoch(&self, epoch: Arc<str>) {
        *self.epoch.borrow_mut() = epoch;
        self.position.set(0);
    }
}
