//! A broadcast shard: one pinned executor that owns its listener, its connections and their
//! subscriptions for their whole life, and fans published frames out to them.
//!
//! [`ShardCore`] is the shard's single-threaded state (`Rc`, `Cell`, `RefCell`; no atomics),
//! composed of one owner per concern, each holding its own fields behind its own methods:
//! - [`conns::Conns`]: the connection slab, by slot.
//! - [`interest::Interest`]: the patterns announced to the ingest core, the registry of live
//!   subscriptions, and the shard's epoch and position. A subscription to a pattern the shard
//!   has not announced yet waits for the ingest core's `InterestReady` before it is answered,
//!   so a client that has read `subscribed` is guaranteed every message published after that.
//! - [`fanout::Fanout`]: writes to connections (deliveries, replies, the batching window) and
//!   the fan-out latency; a delivery's writes go to the kernel as one batch on the shard's
//!   own io_uring ([`send_ring::SendRing`], the crate's only `unsafe` code).
//! - [`forward::Forwarder`]: the one way to the ingest core, never waiting.
//! - [`admission::Admission`]: upgrades waiting for the ingest core's verdict, and the places
//!   of admitted connections.
//! - [`stats::Stats`]: the event counters, per shard and per namespace.
//! - [`users::Users`]: the connections of each user, for the control plane's acts on a user.
//! - [`presence::Presence`]: the members of presence channels, and their joins and leaves
//!   since the last diff, sent to the ingest core once per `presence_diff_interval_ms`.
//!
//! The commands a connection sends ([`commands`]) have no state of their own and act through
//! those owners; so do the task loops and the dispatch of the ingest core's messages, here.
//! The shard reads its settings once, as [`settings::Settings`].
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
pub mod admission;
pub mod commands;
pub mod conn;
pub mod conns;
pub mod fanout;
pub mod forward;
pub mod interest;
pub mod presence;
pub mod send_ring;
pub mod settings;
pub mod stats;
pub mod users;

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_rustls::TlsAcceptor;

use crate::channel;
use crate::config::Config;
use crate::config::PresenceMode;
use crate::msg::{
    Answer, ConnId, Member, QueryKind, ShardId, ShardReport, ShardStats, ToIngest, ToShard, UserAct,
};
use crate::net::auth::Verifier;
use crate::net::tls::Transport;
use crate::net::Identity;
use crate::notify::Notify;
use crate::queue::{Receiver, Sender};
use crate::ws::command;
use crate::ws::deflate::Deflate;
use crate::ws::frame;
use crate::ws::rate::Refusal;
use crate::ws::session::CloseRequest;
use admission::Admission;
pub use admission::Place;
use conn::{ConnHandle, Subscription};
use conns::Conns;
use fanout::Fanout;
use forward::Forwarder;
use interest::{Interest, Waiter};
use presence::Presence;
use settings::Settings;
use stats::Stats;
use users::Users;

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

/// The shard's state, shared by its tasks on its one core: the owners of its concerns, and
/// what its connections' tasks and its accept loop read.
pub struct ShardCore {
    /// This shard's number: `shard` in its reports, the prefix of its `conn_id`s.
    pub id: ShardId,
    /// The whole configuration, for the connection tasks and the handshake
    /// ([`conn`], [`accept`]); the rest of the shard reads `settings`.
    pub config: Arc<Config>,
    /// What the shard's owners and loops read from `config`, taken once at start.
    settings: Settings,
    /// Verifies tokens at the upgrade and on `refresh`; `None` with `auth = "none"`.
    pub verifier: Option<Arc<Verifier>>,
    /// TLS for every connection of the port (`tls_cert_file`); `None`: plain TCP.
    pub tls: Option<TlsAcceptor>,
    /// Every open connection, by slot.
    conns: Conns,
    /// What the shard has announced to the ingest core, the registry, the position.
    interest: Interest,
    /// Writes to connections, and the fan-out latency.
    fanout: Fanout,
    /// Everything the shard sends the ingest core goes through it, in order.
    forwarder: Forwarder,
    /// Upgrades waiting for the ingest core's verdict, and admitted connections' places.
    admission: Admission,
    /// The event counters, per shard and per namespace.
    counters: Stats,
    /// The connections of each user.
    users: Users,
    /// The members of presence channels here.
    presence: Presence,
    /// Every connection reads into this buffer; only partial frames are copied out.
    pub read_buf: RefCell<Vec<u8>>,
    /// Where a connection's pending frames are coalesced into one write.
    pub write_buf: RefCell<Vec<u8>>,
    /// Cleared by the first step of shutdown, before any shard closes a connection.
    accepting: Cell<bool>,
    /// Set when the ingest core says stop: no new connections, the open ones are closing.
    stopping: Cell<bool>,
    /// Wakes [`Shard::run`] when `stopping` is set.
    stopped: Notify,
}

impl ShardCore {
    /// The shard's state, made on its own thread (its send ring is that thread's). Fails,
    /// saying why, when the kernel refuses the shard its io_uring send ring.
    pub fn new(
        id: ShardId,
        config: Arc<Config>,
        verifier: Option<Arc<Verifier>>,
        tls: Option<TlsAcceptor>,
        epoch: Arc<str>,
        to_ingest: Sender<ToIngest>,
    ) -> Result<Rc<Self>, String> {
        let settings = Settings::from_config(&config);
        let fanout = Fanout::new(&settings)
            .map_err(|error| format!("cannot create the shard's io_uring send ring: {error}"))?;
        Ok(Rc::new(ShardCore {
            id,
            config,
            verifier,
            tls,
            conns: Conns::default(),
            interest: Interest::new(id, epoch),
            fanout,
            forwarder: Forwarder::new(to_ingest),
            admission: Admission::default(),
            counters: Stats::new(id, settings.namespaces_len),
            users: Users::default(),
            presence: Presence::default(),
            read_buf: RefCell::new(vec![0; READ_BUF_BYTES]),
            write_buf: RefCell::new(Vec::with_capacity(64 * 1024)),
            accepting: Cell::new(true),
            stopping: Cell::new(false),
            stopped: Notify::default(),
            settings,
        }))
    }

    /// Registers a connection's socket on the fan-out's send ring (see
    /// [`Fanout::register_socket`]).
    pub fn register_socket(&self, id: ConnId, fd: RawFd) {
        self.fanout.register_socket(id, fd);
    }

    /// Unregisters a connection's socket from the send ring, before its task closes it.
    pub fn forget_socket(&self, id: ConnId) {
        self.fanout.forget_socket(id);
    }

    pub fn count_written(&self, frames: usize, bytes: usize) {
        self.counters.count_written(frames, bytes);
    }

    pub fn count_dropped(&self, frames: usize) {
        self.counters.count_dropped(frames);
    }

    /// Counts a message the inbound rate limit refused, and the close it may bring.
    pub fn count_rate_limited(&self, refusal: Refusal) {
        self.counters.count_rate_limited(refusal);
    }

    pub fn count_refused(&self) {
        self.counters.count_refused();
    }

    pub fn count_accept_error(&self) {
        self.counters.count_accept_error();
    }

    /// The counters as of now, with the figures each owner holds.
    fn stats(&self) -> ShardStats {
        let mut stats = self.counters.totals();
        stats.connections = self.conns.len();
        stats.users = self.users.count();
        stats.subscriptions = self.interest.subscriptions_len();
        stats.ingest_queue_len = self.forwarder.queue_len();
        (stats.presence_channels, stats.presence_members) = self.presence.figures();
        self.conns.each(|handle| {
            let (frames, bytes) = handle.outbox_len();
            stats.outbox_frames += frames;
            stats.outbox_bytes += bytes;
        });
        stats.fanout_latency_us = self.fanout.latency();
        stats
    }

    /// Whether a new connection may be accepted.
    pub fn has_room(&self) -> bool {
        self.accepting.get()
            && !self.stopping.get()
            && self.conns.len() < self.settings.connections_max
    }

    /// Sends a reply or control `frame` to a connection: at once where its socket takes it
    /// (see `ConnHandle::write_now`), the rest through its outbox and task. A full outbox
    /// closes it as a slow consumer.
    pub fn send_to(&self, handle: &ConnHandle, frame: Bytes) {
        self.fanout.send_to(handle, frame, &self.counters);
    }

    /// Registers an upgraded connection and starts its task. A broadcast connection's
    /// `channels` are its connect-time subscriptions (already validated), after its own
    /// `$user` and its token's `subs`; `connected` is sent once they are all live. An echo
    /// connection is greeted with nothing and subscribes to nothing. `deflate`: what
    /// permessage-deflate the upgrade agreed on.
    pub fn open_conn(
        self: &Rc<Self>,
        stream: Transport,
        route: Route,
        identity: Identity,
        deflate: Option<Deflate>,
        place: Option<Place>,
        early: Vec<u8>,
    ) {
        let Identity { grant, user } = identity;
        let (mut channels, greeted) = match route {
            Route::Broadcast(channels) => (channels, true),
            Route::Echo => (Vec::new(), false),
        };
        if greeted {
            let subs = grant.as_ref().map(|grant| grant.subs.iter().cloned());
            let own = user.as_ref().map(|_| channel::USER_CHANNEL.to_owned());
            channels.splice(0..0, own.into_iter().chain(subs.into_iter().flatten()));
        }
        let handle = self.conns.insert(|id| {
            let name = conn::ConnName {
                shard: self.id,
                seq: id.seq,
            };
            let hello = greeted.then(|| {
                command::connected_frame(
                    &name.to_string(),
                    user.as_deref(),
                    self.id,
                    crate::clock::unix_ms(),
                    self.settings.heartbeat_s,
                    &self.interest.epoch(),
                )
            });
            Rc::new(ConnHandle::new(
                id,
                self.id,
                hello,
                deflate,
                grant,
                user,
                Instant::now(),
            ))
        });
        let id = handle.id;
        if let Some(stream) = handle.user_stream().filter(|_| greeted) {
            self.users.add(&stream, id);
        }
        if let Some(place) = place {
            self.admission.hold(id, place);
        }
        self.counters.count_accepted();
        tracing::debug!(conn = %handle.name(), shard = self.id, "connection open");

        let mut waits = 0;
        // Exactly as many as asked for: most connections never subscribe to more.
        handle
            .subscriptions
            .borrow_mut()
            .reserve_exact(channels.len());
        for pattern in channels {
            let pattern = handle.full_name(&pattern).into_owned();
            if handle.is_subscribed(&pattern) {
                continue;
            }
            handle
                .subscriptions
                .borrow_mut()
                .push(Subscription::new(&pattern));
            self.presence_join(&handle, &pattern);
            if !self
                .interest
                .announce(&pattern, id, Waiter::Hello, &self.forwarder)
            {
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
        self.interest.make_all_live(handle);
        self.fanout.release_hello(handle, &self.counters);
    }

    /// The ingest core now routes `pattern` here: answer the subscriptions that waited for it.
    fn interest_ready(&self, pattern: &str, seq: u64, position: u64) {
        for (id, waiter) in self.interest.ready(pattern, seq, position) {
            let Some(handle) = self.conns.get(id) else {
                continue;
            };
            if !handle.is_subscribed(pattern) {
                continue;
            }
            match waiter {
                Waiter::Reply(request) => {
                    self.interest.make_live(&handle, pattern);
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
                Waiter::Server => {
                    self.interest.make_live(&handle, pattern);
                    let reply = self.server_subscribed_frame(pattern);
                    self.send_to(&handle, reply);
                }
                Waiter::Recovery => {}
            }
        }
    }

    /// Forgets a closed connection: its subscriptions, its interest, its place, its slot.
    pub fn remove_conn(&self, handle: &ConnHandle) {
        let subscriptions = std::mem::take(&mut *handle.subscriptions.borrow_mut());
        for subscription in &subscriptions {
            self.presence.leave(&subscription.pattern, handle.id);
            self.interest.unroute(&subscription.pattern, handle.id);
            self.interest
                .withdraw(&subscription.pattern, &self.forwarder);
        }
        if let Some(stream) = handle.user_stream() {
            self.users.remove(&stream, handle.id);
        }
        self.admission.give_back(handle.id);
        self.conns.remove(handle);
        tracing::debug!(conn = %handle.name(), "connection closed");
    }

    /// The control plane's act on every connection here of the user whose stream is
    /// `stream`: close with 4010, or subscribe or unsubscribe server-side.
    fn user_act(&self, stream: &str, act: &UserAct) {
        for id in self.users.conns(stream) {
            let Some(handle) = self.conns.get(id) else {
                continue;
            };
            match act {
                UserAct::Disconnect(reason) => {
                    handle.request_close(CloseRequest::disconnected(reason));
                }
                UserAct::Subscribe(pattern) => self.server_subscribe(&handle, pattern),
                UserAct::Unsubscribe(pattern) => self.server_unsubscribe(&handle, pattern),
            }
        }
    }

    /// The cluster's offsets restarted (Redis lost its data): every connection is closed with
    /// 1012 so that its client reconnects and learns, by `recovered:false`, that its positions
    /// mean nothing now.
    fn new_epoch(&self, epoch: Arc<str>) {
        self.interest.new_epoch(epoch);
        self.conns
            .each(|handle| handle.request_close(CloseRequest::EPOCH_CHANGED));
    }

    /// Sends the ingest core the fan-out times gathered since the last report, if any.
    fn report_fanout(&self) {
        let reports = self.fanout.take_reports();
        if reports.is_empty() {
            return;
        }
        self.forwarder.send(ToIngest::Fanout {
            shard: self.id,
            reports,
        });
    }

    fn handle_ingest(&self, message: ToShard) {
        match message {
            ToShard::Deliver(delivery) => {
                self.fanout
                    .deliver(&delivery, &self.interest, &self.conns, &self.counters)
            }
            ToShard::Reply { conn, frame } => {
                if let Some(handle) = self.conns.get(conn) {
                    self.send_to(&handle, frame);
                }
            }
            ToShard::InterestReady {
                pattern,
                seq,
                position,
            } => self.interest_ready(&pattern, seq, position),
            ToShard::Recovered(recovered) => self.recovered(*recovered),
            ToShard::Gap { channel, frame } => {
                self.fanout
                    .gap(&channel, frame, &self.interest, &self.conns, &self.counters)
            }
            ToShard::PresenceDiff { channel, frame } => {
                self.fanout
                    .gap(&channel, frame, &self.interest, &self.conns, &self.counters)
            }
            ToShard::Epoch(epoch) => self.new_epoch(epoch),
            ToShard::User { stream, act } => self.user_act(&stream, &act),
            ToShard::Admitted { ticket, verdict } => {
                self.admission.admitted(ticket, verdict, &self.forwarder)
            }
            ToShard::Query { query, kind } => {
                // Reports first, so the ingest core's overall figures are as current as ours.
                self.report_fanout();
                let answer = match kind {
                    QueryKind::Stats => Answer::Stats(Box::new(ShardReport {
                        stats: self.stats(),
                        acks: self.ack_rows(),
                        namespaces: self.counters.namespaces(),
                    })),
                    QueryKind::Channels => Answer::Channels(self.interest.patterns()),
                    QueryKind::Presence(channel) => Answer::Presence(
                        self.presence
                            .count(&channel, self.settings.presence_members_max),
                    ),
                    QueryKind::PresenceAll => Answer::PresenceAll(
                        self.presence.count_all(self.settings.presence_members_max),
                    ),
                    QueryKind::StopAccepting => {
                        self.accepting.set(false);
                        Answer::StoppedAccepting
                    }
                };
                self.forwarder.send(ToIngest::Answer {
                    query,
                    shard: self.id,
                    answer,
                });
            }
            ToShard::Shutdown => self.stop(),
        }
    }

    /// Stops accepting and closes every connection with 1001.
    fn stop(&self) {
        self.stopping.set(true);
        self.stopped.notify();
        self.conns
            .each(|handle| handle.request_close(CloseRequest::GOING_AWAY));
    }

    /// Drains the ingest core's queue, a bounded batch (`queue_batch_max`) per wake-up. A lone
    /// message is handled as it comes; a batch of more coalesces (see [`fanout`]).
    async fn run_inbox(self: Rc<Self>, inbox: Receiver<ToShard>) {
        loop {
            inbox.ready().await;
            for _ in 0..self.settings.queue_batch_max {
                let Some(message) = inbox.pop() else { break };
                if !inbox.is_empty() {
                    self.fanout.coalesce();
                }
                self.handle_ingest(message);
            }
            self.fanout.end_batch(&self.conns, &self.counters);
            self.report_fanout();
            inbox.release();
            glommio::yield_if_needed().await;
        }
    }

    /// Sends the ingest core the joins and leaves of `join_leave` channels every
    /// `presence_diff_interval_ms`, in one message, when there were any: a storm of joins costs
    /// one message per interval, not one per join.
    async fn run_presence(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(self.settings.presence_diff_interval).await;
            let changes = self.presence.take_changes();
            if !changes.is_empty() {
                self.forwarder.send(ToIngest::PresenceChanges {
                    shard: self.id,
                    changes,
                });
            }
        }
    }

    /// Counts a new subscription to `pattern` (a full name) in as a presence member when it
    /// names one channel of a presence namespace: the one namespace match a subscription
    /// costs; nothing is read per delivery.
    fn presence_join(&self, handle: &ConnHandle, pattern: &str) {
        if channel::is_pattern(pattern) || channel::is_user_stream(channel::visible(pattern)) {
            return;
        }
        let mode = self.config.presence_of(pattern);
        if mode == PresenceMode::Off {
            return;
        }
        self.presence.join(pattern, mode, handle.id, || Member {
            user: handle.user.clone(),
            conn_id: handle.name().to_string().into(),
            info: handle
                .grant
                .borrow()
                .as_ref()
                .and_then(|grant| grant.info.as_deref())
                .and_then(|info| serde_json::value::RawValue::from_string(info.into()).ok()),
        });
    }

    /// Forwards what found the ingest core's queue full, waiting for space.
    async fn run_backlog(self: Rc<Self>) {
        self.forwarder.run().await;
    }

    /// Wakes the connections holding batched messages once the batching window has passed.
    async fn run_batcher(self: Rc<Self>) {
        self.fanout.run_batcher(&self.conns).await;
    }

    /// Pings connections every `heartbeat_s` and closes those silent for `idle_timeout_s`.
    async fn run_ticker(self: Rc<Self>) {
        let heartbeat = Duration::from_secs(self.settings.heartbeat_s);
        let idle_timeout = self.settings.idle_timeout;
        let ping = frame::ping_frame();
        loop {
            glommio::timer::sleep(TICK).await;
            let now = Instant::now();
            let now_s = crate::clock::unix_ms() / 1000;
            self.conns.each(|handle| {
                if handle.is_closing() {
                    return;
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
                    self.send_to(handle, ping.clone());
                }
            });
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
    /// the backlog forwarder and the ticker, and the batcher when there is a batching window.
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
        if core.fanout.batching() {
            tasks.push(glommio::spawn_local(core.clone().run_batcher()).detach());
        }
        if core.settings.join_leave {
            tasks.push(glommio::spawn_local(core.clone().run_presence()).detach());
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
        let deadline = Instant::now() + self.core.settings.shutdown_timeout;
        while !self.core.conns.is_empty() && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let left = self.core.conns.len();
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
