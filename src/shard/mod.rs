//! A broadcast shard: one pinned executor that owns its listener, its connections and their
//! subscriptions for their whole life, and fans published frames out to them.
//!
//! [`ShardCore`] is the shard's single-threaded state (`Rc`, `Cell`, `RefCell`; no atomics): the
//! connection slab, the [`Registry`] from patterns to connections, and the shard's *interest*,
//! the patterns it has told the ingest core about. A subscription to a pattern the shard has not
//! announced yet waits for the ingest core's `InterestReady` before it is answered, so a client
//! that has read `subscribed` is guaranteed every message published after that.
//!
//! After each delivery's fan-out loop the shard records the time since the ingest core accepted
//! the publish in its own fan-out latency histogram (what that covers: [`crate::ingest::metrics`])
//! and reports it back to the ingest core, one message per batch drained from its queue. The
//! report goes through the same non-waiting path as query answers (the backlog, when the queue
//! is full), so it keeps the one-way rule below.
//!
//! The shard never blocks on a connection and never sends the ingest core anything from the task
//! that drains the ingest core's queue; that one-way rule is what keeps the two queues of a
//! shard from waiting on each other.

pub mod accept;
pub mod conn;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corecast_proto::Priority;
use futures_channel::oneshot;
use futures_rustls::TlsAcceptor;
use hashbrown::HashMap;
use slab::Slab;
use sonic_rs::Value;

use crate::channel;
use crate::config::Config;
use crate::latency::FanoutLatency;
use crate::msg::{
    AckRow, Answer, ConnId, Delivery, FanoutReport, NamespaceStats, Peer, QueryKind, Recovered,
    Refused, ShardId, ShardReport, ShardStats, Since, ToIngest, ToShard,
};
use crate::net::auth::{Grant, Verifier};
use crate::net::tls::Transport;
use crate::notify::Notify;
use crate::queue::{Receiver, Sender};
use crate::registry::Registry;
use crate::ws::command::{self, ErrorCode, ErrorReply};
use crate::ws::deflate::Deflate;
use crate::ws::frame;
use crate::ws::outbox::{Kind, Shed};
use crate::ws::rate::Refusal;
use crate::ws::session::CloseRequest;
use conn::{ConnHandle, Subscription};

/// What an upgraded connection is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The contract's endpoint (`/ws`): greeted, subscribes to these channels at connect.
    Broadcast(Vec<String>),
    /// The `echo_path` endpoint: every message is sent back (see `shard::conn`).
    Echo,
}

/// How often a shard checks heartbeats and idle timeouts.
const TICK: Duration = Duration::from_millis(250);

/// Size of the per-shard read scratch buffer every connection reads into.
const READ_BUF_BYTES: usize = 64 * 1024;

/// `forbidden` unless the connection's token grants subscribing to `pattern` (as the client
/// wrote it: grants are in the tenant's own names).
fn check_grant(handle: &ConnHandle, pattern: &str, id: &Option<Value>) -> Result<(), ErrorReply> {
    match &*handle.grant.borrow() {
        Some(grant) if !grant.may_subscribe(pattern) => Err(ErrorReply::new(
            id.clone(),
            ErrorCode::Forbidden,
            format!("the token does not grant {pattern:?}"),
        )),
        _ => Ok(()),
    }
}

/// A pattern the shard has announced, or is announcing, to the ingest core.
struct Interest {
    /// Connections subscribed to the pattern, waiting ones included.
    conns: u32,
    /// The sequence number of the latest `add` sent for this pattern.
    add_seq: u64,
    /// True once the ingest core confirmed `add_seq`.
    ready: bool,
    /// Subscriptions waiting for that confirmation.
    waiters: Vec<(ConnId, Waiter)>,
}

/// What a subscription waiting for its pattern's route does once the route exists.
enum Waiter {
    /// A connect-time subscription: the connection is greeted once all of them are live.
    Hello,
    /// A `subscribe` command: it goes live and is answered `subscribed`, echoing the id.
    Reply(Option<Value>),
    /// A `subscribe` with `since`: the ingest core's `Recovered` makes it live, not the route.
    Recovery,
}

/// The shard's state, shared by its tasks on its one core.
pub struct ShardCore {
    pub id: ShardId,
    pub config: Arc<Config>,
    /// Verifies tokens at the upgrade and on `refresh`; `None` with `auth = "none"`.
    pub verifier: Option<Arc<Verifier>>,
    /// TLS for every connection of the port (`tls_cert_file`); `None`: plain TCP.
    pub tls: Option<TlsAcceptor>,
    /// The ingest core's current run of offsets, as clients are told it.
    epoch: RefCell<Arc<str>>,
    /// A message `seq` such that every later publish matching a live subscription here reaches
    /// this shard: the highest of the deliveries, routes and recoveries received so far.
    position: Cell<u64>,
    /// Connections with messages held back for the batching window (`batch_window_us`).
    batched: RefCell<Vec<ConnId>>,
    batched_ready: Notify,
    conns: RefCell<Slab<Rc<ConnHandle>>>,
    registry: RefCell<Registry<ConnId>>,
    interest: RefCell<HashMap<Box<str>, Interest>>,
    interest_seq: Cell<u64>,
    /// Messages for the ingest core that found its queue full, in order.
    backlog: RefCell<VecDeque<ToIngest>>,
    backlog_ready: Notify,
    /// True while the forwarder holds a message taken from `backlog`: later messages must
    /// queue behind it to keep their order.
    forwarding: Cell<bool>,
    to_ingest: Sender<ToIngest>,
    next_seq: Cell<u32>,
    stats: Cell<ShardStats>,
    /// Counters per channel namespace, by index (see `Delivery::namespace`).
    namespaces: RefCell<Vec<NamespaceStats>>,
    /// Every connection reads into this buffer; only partial frames are copied out.
    pub read_buf: RefCell<Vec<u8>>,
    /// Where a connection's pending frames are coalesced into one write.
    pub write_buf: RefCell<Vec<u8>>,
    matches: RefCell<Vec<ConnId>>,
    /// Fan-out time of every delivery this shard handled.
    fanout: RefCell<FanoutLatency>,
    /// Fan-out times not yet reported to the ingest core: at most one batch of the queue.
    fanout_reports: RefCell<Vec<FanoutReport>>,
    ping: Bytes,
    /// Cleared by the first step of shutdown, before any shard closes a connection.
    accepting: Cell<bool>,
    stopping: Cell<bool>,
    stopped: Notify,
    /// Upgrades waiting for the ingest core's admission, by ticket; at most one per
    /// handshaking connection.
    admissions: RefCell<HashMap<u64, Admitting>>,
    next_ticket: Cell<u64>,
    /// The places of the connections admitted by the ingest core, given back on removal.
    /// Kept here, not in each handle, so connections no limit applies to pay nothing.
    places: RefCell<HashMap<ConnId, Place>>,
}

/// An upgrade waiting for admission: where its verdict goes, and who it is.
type Admitting = (oneshot::Sender<Result<(), Refused>>, Peer);

/// A connection's place under the limits the ingest core keeps ([`crate::ingest::admission`]),
/// held for the connection's life: dropping it gives the place back.
pub struct Place {
    shard: Weak<ShardCore>,
    peer: Option<Peer>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let (Some(shard), Some(peer)) = (self.shard.upgrade(), self.peer.take()) {
            shard.send_ingest(ToIngest::Leave(peer));
        }
    }
}

impl ShardCore {
    pub fn new(
        id: ShardId,
        config: Arc<Config>,
        verifier: Option<Arc<Verifier>>,
        tls: Option<TlsAcceptor>,
        epoch: Arc<str>,
        to_ingest: Sender<ToIngest>,
    ) -> Rc<Self> {
        let namespaces = config.namespaces.len() + 1;
        Rc::new(ShardCore {
            id,
            config,
            verifier,
            tls,
            epoch: RefCell::new(epoch),
            position: Cell::new(0),
            batched: RefCell::new(Vec::new()),
            batched_ready: Notify::default(),
            conns: RefCell::new(Slab::new()),
            registry: RefCell::new(Registry::new()),
            interest: RefCell::new(HashMap::new()),
            interest_seq: Cell::new(0),
            backlog: RefCell::new(VecDeque::new()),
            backlog_ready: Notify::default(),
            forwarding: Cell::new(false),
            to_ingest,
            next_seq: Cell::new(0),
            stats: Cell::new(ShardStats {
                shard: id,
                ..ShardStats::default()
            }),
            namespaces: RefCell::new(vec![NamespaceStats::default(); namespaces]),
            read_buf: RefCell::new(vec![0; READ_BUF_BYTES]),
            write_buf: RefCell::new(Vec::with_capacity(64 * 1024)),
            matches: RefCell::new(Vec::new()),
            fanout: RefCell::new(FanoutLatency::default()),
            fanout_reports: RefCell::new(Vec::new()),
            ping: frame::ping_frame(),
            accepting: Cell::new(true),
            admissions: RefCell::new(HashMap::new()),
            next_ticket: Cell::new(0),
            places: RefCell::new(HashMap::new()),
            stopping: Cell::new(false),
            stopped: Notify::default(),
        })
    }

    fn update_stats(&self, change: impl FnOnce(&mut ShardStats)) {
        let mut stats = self.stats.get();
        change(&mut stats);
        self.stats.set(stats);
    }

    pub fn count_written(&self, frames: usize, bytes: usize) {
        self.update_stats(|stats| {
            stats.messages_out += frames as u64;
            stats.bytes_out += bytes as u64;
        });
    }

    pub fn count_dropped(&self, frames: usize) {
        self.update_stats(|stats| stats.drops += frames as u64);
    }

    /// Counts a message the inbound rate limit refused, and the close it may bring.
    pub fn count_rate_limited(&self, refusal: Refusal) {
        self.update_stats(|stats| {
            stats.rate_limited_messages += 1;
            stats.rate_limit_closes += u64::from(refusal == Refusal::Close);
        });
    }

    /// The counters as of now.
    pub fn stats(&self) -> ShardStats {
        let mut stats = self.stats.get();
        stats.connections = self.conns.borrow().len();
        stats.subscriptions = self.registry.borrow().len();
        stats.ingest_queue_len = self.to_ingest.len() + self.backlog.borrow().len();
        for (_, handle) in self.conns.borrow().iter() {
            let (frames, bytes) = handle.outbox_len();
            stats.outbox_frames += frames;
            stats.outbox_bytes += bytes;
        }
        stats.fanout_latency_us = self.fanout.borrow().summary();
        stats
    }

    /// Every subscribed pattern and its live subscriber count.
    pub fn patterns(&self) -> Vec<(Box<str>, usize)> {
        let registry = self.registry.borrow();
        registry
            .patterns()
            .map(|(pattern, count)| (Box::from(pattern), count))
            .collect()
    }

    /// Whether a new connection may be accepted.
    pub fn has_room(&self) -> bool {
        self.accepting.get()
            && !self.stopping.get()
            && self.conns.borrow().len() < self.config.connections_per_shard_max
    }

    pub fn count_refused(&self) {
        self.update_stats(|stats| stats.connections_refused += 1);
    }

    pub fn count_accept_error(&self) {
        self.update_stats(|stats| stats.accept_errors += 1);
    }

    /// Sends a reply or control `frame` to a connection: at once where its socket takes it
    /// (see `ConnHandle::write_now`), the rest through its outbox and task. A full outbox
    /// closes it as a slow consumer.
    pub fn send_to(&self, handle: &ConnHandle, frame: Bytes) {
        let written = handle.write_now(&frame);
        let frames = usize::from(written == frame.len());
        if written > 0 {
            handle.count_written(frames, written);
        }
        if written == 0 {
            let config = &self.config;
            if handle
                .push(frame, config.outbox_frames_max, config.outbox_bytes_max)
                .is_err()
            {
                self.slow_consumer(handle);
            }
        } else if frames == 0 {
            handle.push_started(frame, written);
        }
        self.count_written(frames, written);
    }

    /// Sends one published message to a connection, for `deliver`, which updates the shard's
    /// counters once per fan-out: returns the frames and bytes written at once. A `critical`
    /// message, or any when there is no batching window, is written at once where the socket
    /// takes it; otherwise it queues under its channel's slow-consumer policy, and a batched
    /// one waits for the window's end. A tail the socket did not take queues as the outbox's
    /// started front, outside the policies and the limits: it must follow its head, whole.
    fn deliver_to(&self, handle: &ConnHandle, delivery: &Delivery, kind: &Kind) -> (usize, usize) {
        // The compressed twin, made once on the ingest core, for every connection that agreed
        // to permessage-deflate; the plain frame for the others.
        let frame = match &delivery.deflated {
            Some(deflated) if handle.compresses() => deflated,
            _ => &delivery.frame,
        };
        let critical = delivery.priority == Priority::Critical;
        let batched = !critical && self.config.batch_window_us > 0;
        if !batched {
            let written = handle.write_now(frame);
            if written == frame.len() {
                handle.count_written(1, written);
                return (1, written);
            }
            if written > 0 {
                // The socket took part of it: the rest is the started front of the outbox now.
                handle.count_written(0, written);
                handle.push_started(frame.clone(), written);
                return (0, written);
            }
        }
        let config = &self.config;
        let pushed = handle.push_message(
            frame.clone(),
            kind.clone(),
            config.outbox_frames_max,
            config.outbox_bytes_max,
            !batched,
        );
        let shed = match pushed {
            Err(_) => {
                self.slow_consumer(handle);
                self.namespaces.borrow_mut()[usize::from(delivery.namespace)]
                    .slow_consumer_closes += 1;
                return (0, 0);
            }
            Ok(shed) => shed,
        };
        if shed != Shed::default() {
            self.count_dropped(shed.dropped);
            let mut namespaces = self.namespaces.borrow_mut();
            let namespace = &mut namespaces[usize::from(delivery.namespace)];
            namespace.drops += shed.dropped as u64;
            namespace.conflated += shed.conflated as u64;
        }
        if batched && !handle.batched.replace(true) {
            let mut waiting = self.batched.borrow_mut();
            if waiting.is_empty() {
                self.batched_ready.notify();
            }
            waiting.push(handle.id);
        }
        (0, 0)
    }

    fn slow_consumer(&self, handle: &ConnHandle) {
        tracing::debug!(conn = %handle.name, "slow consumer: outbox overflowed, closing with 4008");
        self.update_stats(|stats| {
            stats.slow_consumer_closes += 1;
            stats.drops += 1;
        });
        handle.request_close(CloseRequest::SLOW_CONSUMER);
    }

    /// Registers an upgraded connection and starts its task. A broadcast connection's
    /// `channels` are its connect-time subscriptions (already validated); `connected` is sent
    /// once they are all live. An echo connection is greeted with nothing and subscribes to
    /// nothing. `deflate`: what permessage-deflate the upgrade agreed on.
    pub fn open_conn(
        self: &Rc<Self>,
        stream: Transport,
        route: Route,
        grant: Option<Grant>,
        deflate: Option<Deflate>,
        place: Option<Place>,
        early: Vec<u8>,
    ) {
        let seq = self.next_seq.get();
        self.next_seq.set(seq.wrapping_add(1));
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let id = ConnId {
            slot: u32::try_from(entry.key()).expect("connections_per_shard_max fits in u32"),
            seq,
        };
        let name: Box<str> = format!("{}-{}", self.id, seq).into();
        let hello = command::connected_frame(
            &name,
            self.id,
            crate::clock::unix_ms(),
            self.config.heartbeat_s,
            &self.epoch.borrow(),
        );
        let (channels, hello) = match route {
            Route::Broadcast(channels) => (channels, Some(hello)),
            Route::Echo => (Vec::new(), None),
        };
        let handle = Rc::new(ConnHandle::new(
            id,
            name,
            hello,
            deflate,
            grant,
            Instant::now(),
        ));
        entry.insert(handle.clone());
        if let Some(place) = place {
            self.places.borrow_mut().insert(id, place);
        }
        drop(conns);
        self.update_stats(|stats| stats.connections_accepted += 1);
        tracing::debug!(conn = %handle.name, shard = self.id, "connection open");

        let mut waits = 0;
        for pattern in channels {
            let pattern = handle.full_name(&pattern).into_owned();
            if handle.is_subscribed(&pattern) {
                continue;
            }
            handle
                .subscriptions
                .borrow_mut()
                .push(Subscription::new(&pattern));
            if !self.announce(&pattern, id, Waiter::Hello) {
                waits += 1;
            }
        }
        handle.hello_waits.set(waits);
        if waits == 0 {
            self.go_live(&handle);
        }
        glommio::spawn_local(conn::serve(self.clone(), handle, stream, early)).detach();
    }

    /// Makes a connection's connect-time subscriptions live and sends `connected`.
    fn go_live(&self, handle: &ConnHandle) {
        let mut registry = self.registry.borrow_mut();
        for subscription in handle.subscriptions.borrow().iter() {
            registry.insert(&subscription.pattern, handle.id);
            subscription.covered_from.set(self.position.get());
        }
        drop(registry);
        let config = &self.config;
        if handle
            .release_hello(config.outbox_frames_max, config.outbox_bytes_max)
            .is_err()
        {
            self.slow_consumer(handle);
        }
    }

    /// Counts one more subscriber of `pattern` on this shard, announcing the pattern to the
    /// ingest core if it is new. Returns true if the pattern is already routed here; otherwise
    /// `(conn, waiter)` waits for the ingest core's confirmation.
    fn announce(&self, pattern: &str, conn: ConnId, waiter: Waiter) -> bool {
        let mut interest = self.interest.borrow_mut();
        if let Some(entry) = interest.get_mut(pattern) {
            entry.conns += 1;
            if !entry.ready {
                entry.waiters.push((conn, waiter));
            }
            return entry.ready;
        }
        let seq = self.interest_seq.get() + 1;
        self.interest_seq.set(seq);
        interest.insert(
            pattern.into(),
            Interest {
                conns: 1,
                add_seq: seq,
                ready: false,
                waiters: vec![(conn, waiter)],
            },
        );
        drop(interest);
        self.send_ingest(ToIngest::Interest {
            shard: self.id,
            pattern: pattern.into(),
            add: true,
            seq,
        });
        false
    }

    /// Counts one subscriber of `pattern` less, withdrawing the pattern when it was the last.
    fn withdraw(&self, pattern: &str) {
        let mut interest = self.interest.borrow_mut();
        let entry = interest
            .get_mut(pattern)
            .expect("a subscribed pattern is announced");
        entry.conns -= 1;
        if entry.conns > 0 {
            return;
        }
        interest.remove(pattern);
        drop(interest);
        let seq = self.interest_seq.get() + 1;
        self.interest_seq.set(seq);
        self.send_ingest(ToIngest::Interest {
            shard: self.id,
            pattern: pattern.into(),
            add: false,
            seq,
        });
    }

    /// Moves the shard's position forward to `seq` (never back).
    fn advance_position(&self, seq: u64) {
        self.position.set(self.position.get().max(seq));
    }

    /// The ingest core now routes `pattern` here: answer the subscriptions that waited for it.
    fn interest_ready(&self, pattern: &str, seq: u64, position: u64) {
        self.advance_position(position);
        let waiters = {
            let mut interest = self.interest.borrow_mut();
            let Some(entry) = interest.get_mut(pattern) else {
                return;
            };
            if entry.add_seq != seq {
                return;
            }
            entry.ready = true;
            std::mem::take(&mut entry.waiters)
        };
        for (id, waiter) in waiters {
            let Some(handle) = self.handle(id) else {
                continue;
            };
            if !handle.is_subscribed(pattern) {
                continue;
            }
            match waiter {
                Waiter::Reply(request) => {
                    self.registry.borrow_mut().insert(pattern, id);
                    handle.cover_from(pattern, self.position.get());
                    let reply = self.subscribed_frame(pattern, &request);
                    self.send_to(&handle, reply);
                }
                Waiter::Hello => {
                    let waits = handle.hello_waits.get() - 1;
                    handle.hello_waits.set(waits);
                    if waits == 0 {
                        self.go_live(&handle);
                    }
                }
                Waiter::Recovery => {}
            }
        }
    }

    fn handle(&self, id: ConnId) -> Option<Rc<ConnHandle>> {
        let conns = self.conns.borrow();
        let handle = conns.get(id.slot as usize)?;
        (handle.id == id).then(|| handle.clone())
    }

    /// `subscribed` for a live subscription, as of the shard's position now.
    fn subscribed_frame(&self, pattern: &str, id: &Option<Value>) -> Bytes {
        command::subscribed_frame(pattern, id, &self.epoch.borrow(), self.position.get(), None)
    }

    /// The `subscribe` command. With `since`, the subscription goes live when the ingest
    /// core's `Recovered` arrives, after the missed messages it carries.
    pub fn subscribe(
        &self,
        handle: &ConnHandle,
        pattern: &str,
        since: Option<Since>,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        command::check_pattern(pattern, self.config.channel_bytes_max, &id)?;
        check_grant(handle, pattern, &id)?;
        let full = handle.full_name(pattern);
        let pattern = &*full;
        let mut subscriptions = handle.subscriptions.borrow_mut();
        if subscriptions
            .iter()
            .any(|subscription| *subscription.pattern == *pattern)
        {
            return Ok(Some(self.subscribed_frame(pattern, &id)));
        }
        if subscriptions.len() >= self.config.subscriptions_per_conn_max {
            return Err(ErrorReply::new(
                id,
                ErrorCode::TooManySubscriptions,
                format!(
                    "this connection already has {} subscriptions, the limit",
                    subscriptions.len()
                ),
            ));
        }
        if since.is_some() && self.backlog.borrow().len() >= self.config.queue_items_max {
            return Err(ErrorReply::new(
                id,
                ErrorCode::Internal,
                "the server is overloaded; retry later",
            ));
        }
        subscriptions.push(Subscription::new(pattern));
        drop(subscriptions);
        let Some(since) = since else {
            if self.announce(pattern, handle.id, Waiter::Reply(id.clone())) {
                self.registry.borrow_mut().insert(pattern, handle.id);
                handle.cover_from(pattern, self.position.get());
                return Ok(Some(self.subscribed_frame(pattern, &id)));
            }
            return Ok(None);
        };
        // Sent after the interest, so the ingest core routes the pattern here before it
        // takes the snapshot of history that `Recovered` carries.
        self.announce(pattern, handle.id, Waiter::Recovery);
        self.send_ingest(ToIngest::Recover {
            shard: self.id,
            conn: handle.id,
            id,
            pattern: pattern.into(),
            since,
        });
        Ok(None)
    }

    /// The ingest core's answer to a `subscribe` with `since`: the subscription goes live, and
    /// its reply and missed messages are queued ahead of any live message. A missed message
    /// that another live subscription of the connection covers was sent already, or will be,
    /// and is left out, so overlapping subscriptions deliver each message once.
    fn recovered(&self, recovered: Recovered) {
        let Recovered {
            conn,
            pattern,
            reply,
            missed,
            covered_from,
            position,
        } = recovered;
        self.advance_position(position);
        let Some(handle) = self.handle(conn) else {
            return;
        };
        if !handle.is_subscribed(&pattern) {
            return;
        }
        self.registry.borrow_mut().insert(&pattern, conn);
        let bytes = missed.iter().map(|missed| missed.frame.len()).sum();
        let mut joined = bytes::BytesMut::with_capacity(bytes);
        for missed in &missed {
            if !handle.covered_elsewhere(&pattern, missed.channel(), missed.seq) {
                joined.extend_from_slice(&missed.frame);
            }
        }
        handle.cover_from(&pattern, covered_from);
        self.send_to(&handle, reply);
        handle.push_recovered(joined.freeze());
    }

    /// The `refresh` command: a new token for the same subject replaces the grant and its `exp`.
    pub fn refresh(
        &self,
        handle: &ConnHandle,
        token: &str,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        let Some(verifier) = &self.verifier else {
            return Err(ErrorReply::new(
                id,
                ErrorCode::BadRequest,
                "this server runs without auth: there is no token to refresh",
            ));
        };
        let grant = verifier
            .verify(Some(token))
            .map_err(|err| ErrorReply::new(id.clone(), ErrorCode::Forbidden, err.to_string()))?;
        let mut current = handle.grant.borrow_mut();
        if let Some(current) = &*current {
            if current.sub != grant.sub || current.tenant != grant.tenant {
                return Err(ErrorReply::new(
                    id,
                    ErrorCode::Forbidden,
                    "a refresh must be for the same sub and tenant as the connection's token",
                ));
            }
        }
        let exp = grant.exp;
        *current = Some(grant);
        Ok(Some(command::refreshed_frame(&id, exp)))
    }

    /// The `ack` command: keeps the highest offset acked per channel.
    pub fn ack(
        &self,
        handle: &ConnHandle,
        channel: &str,
        offset: u64,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        command::check_channel(channel, self.config.channel_bytes_max, &id)?;
        let full = handle.full_name(channel);
        let channel = &*full;
        let subscribed = handle
            .subscriptions
            .borrow()
            .iter()
            .any(|subscription| channel::pattern_matches(&subscription.pattern, channel));
        if !subscribed {
            return Err(ErrorReply::new(
                id,
                ErrorCode::NotSubscribed,
                format!("no subscription of this connection matches {channel:?}"),
            ));
        }
        let mut acks = handle.acks.borrow_mut();
        match acks.iter().position(|(acked, _)| **acked == *channel) {
            Some(at) => acks[at].1 = acks[at].1.max(offset),
            None if acks.len() >= self.config.subscriptions_per_conn_max => {
                return Err(ErrorReply::new(
                    id,
                    ErrorCode::TooManySubscriptions,
                    format!(
                        "this connection acks {} channels already, the limit \
                         (subscriptions_per_conn_max)",
                        acks.len()
                    ),
                ));
            }
            None => acks.push((channel.into(), offset)),
        }
        drop(acks);
        self.update_stats(|stats| stats.acks_total += 1);
        Ok(id
            .is_some()
            .then(|| command::acked_frame(&id, channel, offset)))
    }

    /// Every channel some connection here acked: how many connections and their offsets.
    pub fn ack_rows(&self) -> Vec<AckRow> {
        let mut rows: HashMap<Box<str>, AckRow> = HashMap::new();
        for (_, handle) in self.conns.borrow().iter() {
            for (channel, offset) in handle.acks.borrow().iter() {
                let row = rows.entry(channel.clone()).or_insert_with(|| AckRow {
                    channel: channel.clone(),
                    conns: 0,
                    offset_min: *offset,
                    offset_max: *offset,
                });
                row.conns += 1;
                row.offset_min = row.offset_min.min(*offset);
                row.offset_max = row.offset_max.max(*offset);
            }
        }
        rows.into_values().collect()
    }

    /// The `unsubscribe` command.
    pub fn unsubscribe(
        &self,
        handle: &ConnHandle,
        pattern: &str,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        command::check_pattern(pattern, self.config.channel_bytes_max, &id)?;
        check_grant(handle, pattern, &id)?;
        let full = handle.full_name(pattern);
        let pattern = &*full;
        let mut subscriptions = handle.subscriptions.borrow_mut();
        let Some(at) = subscriptions
            .iter()
            .position(|subscription| *subscription.pattern == *pattern)
        else {
            return Err(ErrorReply::new(
                id,
                ErrorCode::NotSubscribed,
                format!("not subscribed to {pattern:?}"),
            ));
        };
        subscriptions.swap_remove(at);
        drop(subscriptions);
        self.registry.borrow_mut().remove(pattern, handle.id);
        self.withdraw(pattern);
        Ok(Some(command::channel_reply_frame(
            "unsubscribed",
            pattern,
            &id,
        )))
    }

    /// The `publish` command: checked here, sequenced by the ingest core, which replies.
    pub fn client_publish(
        &self,
        handle: &ConnHandle,
        channel: &str,
        data: &str,
        id: Option<Value>,
    ) -> Result<Option<Bytes>, ErrorReply> {
        command::check_channel(channel, self.config.channel_bytes_max, &id)?;
        // With auth, the token's `publish` claim decides; without, `client_publish`.
        let allowed = !channel::is_system(channel)
            && match &*handle.grant.borrow() {
                Some(grant) => grant.may_publish(channel),
                None => self
                    .config
                    .client_publish
                    .iter()
                    .any(|pattern| channel::pattern_matches(pattern, channel)),
            };
        if !allowed {
            return Err(ErrorReply::new(
                id,
                ErrorCode::Forbidden,
                format!("publishing to {channel:?} is not granted to this connection"),
            ));
        }
        if self.backlog.borrow().len() >= self.config.queue_items_max {
            return Err(ErrorReply::new(
                id,
                ErrorCode::Internal,
                "the server is overloaded; retry later",
            ));
        }
        self.send_ingest(ToIngest::Publish {
            shard: self.id,
            conn: handle.id,
            id,
            channel: handle.full_name(channel).into(),
            data: data.into(),
        });
        Ok(None)
    }

    /// Sends the ingest core a message, in order with every earlier one.
    fn send_ingest(&self, message: ToIngest) {
        let mut backlog = self.backlog.borrow_mut();
        if backlog.is_empty() && !self.forwarding.get() {
            match self.to_ingest.try_push(message) {
                Ok(()) => {
                    self.to_ingest.wake();
                    return;
                }
                Err(message) => backlog.push_back(message),
            }
        } else {
            backlog.push_back(message);
        }
        self.backlog_ready.notify();
    }

    /// Forgets a closed connection: its subscriptions, its interest, its slot.
    pub fn remove_conn(&self, handle: &ConnHandle) {
        let subscriptions = std::mem::take(&mut *handle.subscriptions.borrow_mut());
        for subscription in &subscriptions {
            self.registry
                .borrow_mut()
                .remove(&subscription.pattern, handle.id);
            self.withdraw(&subscription.pattern);
        }
        self.places.borrow_mut().remove(&handle.id);
        let removed = self.conns.borrow_mut().remove(handle.id.slot as usize);
        assert_eq!(
            removed.id, handle.id,
            "a slot holds the connection that owns it"
        );
        tracing::debug!(conn = %handle.name, "connection closed");
    }

    /// Writes a published frame to every local subscriber of its channel, then records the
    /// fan-out time and keeps it for the next report to the ingest core.
    fn deliver(&self, delivery: &Delivery) {
        self.advance_position(delivery.stamp.publish);
        let start = usize::from(delivery.channel_start);
        let kind = Kind::Message {
            channel: delivery
                .frame
                .slice(start..start + usize::from(delivery.channel_len)),
            offset: delivery.offset,
            critical: delivery.priority == Priority::Critical,
            slow: delivery.slow,
        };
        let mut matches = self.matches.borrow_mut();
        self.registry
            .borrow()
            .collect_matches(delivery.channel(), &mut matches);
        let conns = self.conns.borrow();
        let (mut frames, mut bytes) = (0, 0);
        for id in matches.iter() {
            let handle = &conns[id.slot as usize];
            assert_eq!(handle.id, *id, "the registry holds live connections only");
            let (sent_frames, sent_bytes) = self.deliver_to(handle, delivery, &kind);
            frames += sent_frames;
            bytes += sent_bytes;
        }
        self.count_written(frames, bytes);
        self.namespaces.borrow_mut()[usize::from(delivery.namespace)].deliveries +=
            matches.len() as u64;
        let elapsed = delivery.stamp.accepted.elapsed();
        self.fanout.borrow_mut().record(elapsed);
        self.fanout_reports.borrow_mut().push(FanoutReport {
            publish: delivery.stamp.publish,
            elapsed,
        });
    }

    /// A `gap` notice for every local subscriber of `channel` (cluster mode: messages this node
    /// never received and cannot read back).
    fn gap(&self, channel: &str, frame: Bytes) {
        let mut matches = self.matches.borrow_mut();
        self.registry
            .borrow()
            .collect_matches(channel, &mut matches);
        for id in matches.iter() {
            if let Some(handle) = self.handle(*id) {
                self.send_to(&handle, frame.clone());
            }
        }
    }

    /// The cluster's offsets restarted (Redis lost its data): every connection is closed with
    /// 1012 so that its client reconnects and learns, by `recovered:false`, that its positions
    /// mean nothing now.
    fn new_epoch(&self, epoch: Arc<str>) {
        *self.epoch.borrow_mut() = epoch;
        self.position.set(0);
        for (_, handle) in self.conns.borrow().iter() {
            handle.request_close(CloseRequest::EPOCH_CHANGED);
        }
    }

    /// Sends the ingest core the fan-out times gathered since the last report, if any.
    fn report_fanout(&self) {
        let reports = std::mem::take(&mut *self.fanout_reports.borrow_mut());
        if reports.is_empty() {
            return;
        }
        self.send_ingest(ToIngest::Fanout {
            shard: self.id,
            reports,
        });
    }

    fn handle_ingest(&self, message: ToShard) {
        match message {
            ToShard::Deliver(delivery) => self.deliver(&delivery),
            ToShard::Reply { conn, frame } => {
                if let Some(handle) = self.handle(conn) {
                    self.send_to(&handle, frame);
                }
            }
            ToShard::InterestReady {
                pattern,
                seq,
                position,
            } => self.interest_ready(&pattern, seq, position),
            ToShard::Recovered(recovered) => self.recovered(*recovered),
            ToShard::Gap { channel, frame } => self.gap(&channel, frame),
            ToShard::Epoch(epoch) => self.new_epoch(epoch),
            ToShard::Admitted { ticket, verdict } => self.admitted(ticket, verdict),
            ToShard::Query { query, kind } => {
                // Reports first, so the ingest core's overall figures are as current as ours.
                self.report_fanout();
                let answer = match kind {
                    QueryKind::Stats => Answer::Stats(ShardReport {
                        stats: self.stats(),
                        acks: self.ack_rows(),
                        namespaces: self.namespaces.borrow().clone(),
                    }),
                    QueryKind::Channels => Answer::Channels(self.patterns()),
                    QueryKind::StopAccepting => {
                        self.accepting.set(false);
                        Answer::StoppedAccepting
                    }
                };
                self.send_ingest(ToIngest::Answer {
                    query,
                    shard: self.id,
                    answer,
                });
            }
            ToShard::Shutdown => self.stop(),
        }
    }

    /// Asks the ingest core for a place for `peer` under the connection limits; the upgrade
    /// waits for the answer (one cross-core round trip) before it is answered.
    pub async fn admit(self: &Rc<Self>, peer: Peer) -> Result<Place, Refused> {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        let (done, verdict) = oneshot::channel();
        self.admissions
            .borrow_mut()
            .insert(ticket, (done, peer.clone()));
        self.send_ingest(ToIngest::Admit {
            shard: self.id,
            ticket,
            peer: peer.clone(),
        });
        match verdict.await {
            Ok(Ok(())) => Ok(Place {
                shard: Rc::downgrade(self),
                peer: Some(peer),
            }),
            Ok(Err(refused)) => Err(refused),
            Err(oneshot::Canceled) => Err(Refused::Stopping),
        }
    }

    /// The ingest core's verdict on ticket `ticket`. A place granted to an upgrade that gave
    /// up waiting (its handshake timed out, its peer left) is given back at once.
    fn admitted(&self, ticket: u64, verdict: Result<(), Refused>) {
        let Some((done, peer)) = self.admissions.borrow_mut().remove(&ticket) else {
            return;
        };
        if done.send(verdict).is_err() && verdict.is_ok() {
            self.send_ingest(ToIngest::Leave(peer));
        }
    }

    /// Stops accepting and closes every connection with 1001.
    fn stop(&self) {
        self.stopping.set(true);
        self.stopped.notify();
        for (_, handle) in self.conns.borrow().iter() {
            handle.request_close(CloseRequest::GOING_AWAY);
        }
    }

    /// Drains the ingest core's queue, a bounded batch per wake-up.
    async fn run_inbox(self: Rc<Self>, inbox: Receiver<ToShard>) {
        loop {
            inbox.ready().await;
            for _ in 0..self.config.queue_batch_max {
                let Some(message) = inbox.pop() else { break };
                self.handle_ingest(message);
            }
            self.report_fanout();
            inbox.release();
            glommio::yield_if_needed().await;
        }
    }

    /// Forwards what found the ingest core's queue full, waiting for space.
    async fn run_backlog(self: Rc<Self>) {
        loop {
            self.backlog_ready
                .wait_until(|| !self.backlog.borrow().is_empty())
                .await;
            self.forwarding.set(true);
            loop {
                let next = self.backlog.borrow_mut().pop_front();
                let Some(message) = next else { break };
                self.to_ingest.push(message).await;
                self.to_ingest.wake();
            }
            self.forwarding.set(false);
        }
    }

    /// Wakes the connections holding batched messages once the batching window has passed
    /// since the first of them was queued.
    async fn run_batcher(self: Rc<Self>) {
        let window = Duration::from_micros(self.config.batch_window_us);
        loop {
            self.batched_ready
                .wait_until(|| !self.batched.borrow().is_empty())
                .await;
            glommio::timer::sleep(window).await;
            let waiting = std::mem::take(&mut *self.batched.borrow_mut());
            for id in waiting {
                if let Some(handle) = self.handle(id) {
                    handle.batched.set(false);
                    handle.wake();
                }
            }
        }
    }

    /// Pings connections every `heartbeat_s` and closes those silent for `idle_timeout_s`.
    async fn run_ticker(self: Rc<Self>) {
        let heartbeat = Duration::from_secs(self.config.heartbeat_s);
        let idle_timeout = Duration::from_secs(self.config.idle_timeout_s);
        loop {
            glommio::timer::sleep(TICK).await;
            let now = Instant::now();
            let now_s = crate::clock::unix_ms() / 1000;
            for (_, handle) in self.conns.borrow().iter() {
                if handle.is_closing() {
                    continue;
                }
                let expired = handle
                    .grant
                    .borrow()
                    .as_ref()
                    .is_some_and(|grant| now_s >= grant.exp);
                if expired {
                    handle.request_close(CloseRequest::TOKEN_EXPIRED);
                } else if now.duration_since(handle.last_seen()) >= idle_timeout {
                    handle.request_close(CloseRequest::IDLE);
                } else if now.duration_since(handle.last_ping()) >= heartbeat {
                    handle.set_last_ping(now);
                    self.send_to(handle, self.ping.clone());
                }
            }
        }
    }
}

/// A shard's life: `start` its tasks, `run` until told to stop, then `stop` within the deadline.
pub struct Shard {
    core: Rc<ShardCore>,
    tasks: Vec<glommio::task::JoinHandle<()>>,
}

impl Shard {
    /// Starts the shard's tasks on the current executor: the listener, the ingest-queue drain,
    /// the backlog forwarder and the ticker.
    pub fn start(
        core: Rc<ShardCore>,
        listener: glommio::net::TcpListener,
        inbox: Receiver<ToShard>,
    ) -> Shard {
        let mut tasks = vec![
            glommio::spawn_local(accept::run(core.clone(), listener)).detach(),
            glommio::spawn_local(core.clone().run_inbox(inbox)).detach(),
            glommio::spawn_local(core.clone().run_backlog()).detach(),
            glommio::spawn_local(core.clone().run_ticker()).detach(),
        ];
        if core.config.batch_window_us > 0 {
            tasks.push(glommio::spawn_local(core.clone().run_batcher()).detach());
        }
        Shard { core, tasks }
    }

    /// Runs until the ingest core says stop, then waits for connections to close (at most
    /// `shutdown_timeout_ms`) and ends the shard's tasks.
    pub async fn run(self) {
        self.core
            .stopped
            .wait_until(|| self.core.stopping.get())
            .await;
        self.stop().await;
    }

    async fn stop(self) {
        let deadline = Instant::now() + Duration::from_millis(self.core.config.shutdown_timeout_ms);
        while !self.core.conns.borrow().is_empty() && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let left = self.core.conns.borrow().len();
        if left > 0 {
            tracing::warn!(
                shard = self.core.id,
                left,
                "shutdown deadline passed with connections open"
            );
        }
        for task in self.tasks {
            task.cancel();
        }
    }
}
