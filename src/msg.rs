//! The cross-core vocabulary: everything the ingest core and the broadcast shards (and the
//! signal thread) say to each other through [`crate::queue`], and the identities and reports
//! those messages carry.
//!
//! Both cores' halves speak it and neither owns it, so it lives beneath them: a shard and the
//! ingest core meet only here and in the queue. Every type is plain `Send` data (frames as
//! `Bytes`, names as `Box<str>`/`Arc<str>`); nothing here holds per-core state or does work
//! beyond reading the fields it carries. The frame layout is the encoder's
//! (`ingest::encode`): a [`Delivery`] carries where its channel and payload sit as fields, so no
//! reader needs to know the layout.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corecast_proto::Priority;
use serde::Serialize;

use crate::latency::LatencySummary;
pub use corecast_proto::position::{Position, Since};

/// A shard's index, also its position in every per-shard array.
pub type ShardId = usize;

/// What the ingest core sends a broadcast shard.
#[derive(Debug)]
pub enum ToShard {
    /// A published message, encoded once: write `frame` to every local match of its channel.
    Deliver(Delivery),
    /// A frame for one connection only (a reply to its `publish` or a deferred `subscribed`).
    Reply { conn: ConnId, frame: Bytes },
    /// The ingest core now routes channels matching `pattern` to this shard, as of the
    /// shard's `Interest` message number `seq`. Every publish after `position` (a message
    /// `seq`) that matches it reaches this shard.
    InterestReady {
        pattern: Box<str>,
        seq: u64,
        position: u64,
    },
    /// The answer to a `subscribe` with `since` (see [`Recovered`]).
    Recovered(Box<Recovered>),
    /// A `gap` notice for every subscriber of `channel`.
    Gap { channel: Box<str>, frame: Bytes },
    /// The epoch changed (cluster mode: Redis lost its data): close every connection.
    Epoch(Arc<str>),
    /// The answer to [`ToIngest::Admit`] number `ticket`.
    Admitted {
        ticket: u64,
        verdict: Result<(), Refused>,
    },
    /// Report counters or patterns (for `/v1/stats`, `/v1/channels`), tagged `query`.
    Query { query: u64, kind: QueryKind },
    /// The control plane's act on every connection here of one user, named by the full
    /// name of its stream (`$t:acme.$user.ada`).
    User { stream: Arc<str>, act: UserAct },
    /// A `presence_diff` frame, encoded once, for every subscriber of `channel` (a full name).
    PresenceDiff { channel: Arc<str>, frame: Bytes },
    /// Close every connection with 1001 and stop.
    Shutdown,
}

/// What `POST /v1/users/...` does to each connection of a user (PROTOCOL.md, "Users"). In
/// cluster mode it crosses Redis as JSON (`{"act":"disconnect","value":..}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "act", content = "value", rename_all = "snake_case")]
pub enum UserAct {
    /// Close it with 4010 and this reason.
    Disconnect(Arc<str>),
    /// Subscribe it to this pattern (as its clients name it, without a tenant's scope), and
    /// tell it so with `subscribed` and `"server":true`.
    Subscribe(Arc<str>),
    /// Unsubscribe it from this pattern, and tell it so with `unsubscribed`.
    Unsubscribe(Arc<str>),
}

/// The answer to a `subscribe` with `since`, sent by the sequencer between two publishes:
/// everything sequenced up to `position` is in `missed` (or was not recoverable, which `reply`
/// says), everything after it follows in the shard's queue. The shard makes the subscription
/// live on receipt, then queues `reply` and `missed` for the connection.
#[derive(Debug)]
pub struct Recovered {
    pub conn: ConnId,
    pub pattern: Box<str>,
    pub reply: Bytes,
    /// The missed `message` frames in `seq` order; empty when none or not recovered.
    pub missed: Vec<Missed>,
    /// The `seq` after which the subscription now has every matching message: where the
    /// client was when recovered, `position` when not.
    pub covered_from: u64,
    pub position: u64,
}

/// One missed message of a recovery: its frame from history and where its channel is.
#[derive(Debug, Clone)]
pub struct Missed {
    pub frame: Bytes,
    pub seq: u64,
    pub channel_start: u16,
    pub channel_len: u8,
    /// The channel's full name when it is in a tenant's scope (see [`Delivery::scoped`]).
    pub scoped: Option<Arc<str>>,
}

impl Missed {
    /// The full name of the channel this frame was published to.
    pub fn channel(&self) -> &str {
        self.scoped
            .as_deref()
            .unwrap_or_else(|| channel_in(&self.frame, self.channel_start, self.channel_len))
    }
}

/// The channel name the ingest core wrote into a `message` frame at `start`.
fn channel_in(frame: &Bytes, start: u16, len: u8) -> &str {
    let start = usize::from(start);
    std::str::from_utf8(&frame[start..start + usize::from(len)])
        .expect("the ingest core writes validated ASCII channel names")
}

/// A published message as it crosses to a shard: the complete WebSocket frame, where in it
/// the channel name sits (so the shard matches without a second copy of the name), and the
/// stamp its fan-out latency is measured from.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub frame: Bytes,
    /// The same message deflated without context (RSV1 set), for connections that negotiated
    /// permessage-deflate; made once by the ingest core when `permessage_deflate` is on.
    pub deflated: Option<Bytes>,
    pub channel_start: u16,
    pub channel_len: u8,
    /// The channel's full name when it is in a tenant's scope (`$t:acme.leads.42`) or a user's
    /// stream (`$user.ada`), which the shard matches subscriptions against; the frame names it
    /// as the clients do (`leads.42`, `$user`). `None` when the frame's name is the full name.
    pub scoped: Option<Arc<str>>,
    pub priority: Priority,
    pub offset: u64,
    /// What a shard does when this message finds a connection's outbox full.
    pub slow: Slow,
    /// The channel's namespace, for per-namespace counters: 0 for channels no namespace
    /// names, `i + 1` for `namespaces[i]` (see `Config::policy_index`).
    pub namespace: u16,
    pub stamp: Stamp,
}

/// A message's slow-consumer policy, resolved by the ingest core from its channel's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slow {
    Disconnect,
    DropOldest,
    /// A hash of the message's `conflate_key` value; `None` when its data has no such field
    /// (it then replaces nothing and is never replaced).
    Conflate(Option<u64>),
}

/// Which publish a delivery is and when the ingest core accepted it, for fan-out latency.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// The publish's number on the ingest core (its `published_total` once sequenced), which
    /// is also the message's node-wide `seq` on the wire.
    pub publish: u64,
    /// When the ingest core accepted the publish, before it waited in a lane.
    pub accepted: Instant,
}

/// One shard's fan-out time for one publish, reported back to the ingest core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutReport {
    pub publish: u64,
    pub elapsed: Duration,
}

impl Delivery {
    /// The full name of the channel this frame was published to.
    pub fn channel(&self) -> &str {
        self.scoped
            .as_deref()
            .unwrap_or_else(|| channel_in(&self.frame, self.channel_start, self.channel_len))
    }
}

/// What a broadcast shard (or the signal thread) sends the ingest core.
#[derive(Debug)]
pub enum ToIngest {
    /// A client's `publish` command, to be sequenced like an HTTP publish.
    Publish {
        shard: ShardId,
        conn: ConnId,
        /// The command's `id`, echoed in the reply.
        id: Option<sonic_rs::Value>,
        channel: Box<str>,
        /// The `data` value, as raw (validated) JSON.
        data: Box<str>,
    },
    /// A `subscribe` with `since`: the sequencer answers with `ToShard::Recovered`. The
    /// pattern's `Interest` was sent before it, so its route exists when it is handled.
    Recover {
        shard: ShardId,
        conn: ConnId,
        id: Option<sonic_rs::Value>,
        pattern: Box<str>,
        since: Since,
    },
    /// The shard's first subscriber to `pattern` arrived (`add`) or its last one left.
    /// `seq` numbers the shard's interest messages; an `add` is confirmed with it.
    Interest {
        shard: ShardId,
        pattern: Box<str>,
        add: bool,
        seq: u64,
    },
    /// An upgrade asks for a place under the connection limits (see
    /// [`crate::ingest::admission`]); answered with `ToShard::Admitted` and this `ticket`.
    Admit {
        shard: ShardId,
        ticket: u64,
        peer: Peer,
    },
    /// An admitted connection ended: its place is free.
    Leave(Peer),
    /// Fan-out times of the deliveries the shard handled in one batch from its queue, in order.
    Fanout {
        shard: ShardId,
        reports: Vec<FanoutReport>,
    },
    /// A connection's `presence` command, for a channel (a full name) in a presence
    /// namespace that it is subscribed to: the ingest core asks every shard (and in cluster
    /// mode every node) and replies to the connection with `ToShard::Reply`.
    Presence {
        shard: ShardId,
        conn: ConnId,
        id: Option<sonic_rs::Value>,
        channel: Box<str>,
    },
    /// The joins and leaves of `join_leave` channels on the shard since its previous
    /// message of this kind: one message per `presence_diff_interval_ms` at most.
    PresenceChanges {
        shard: ShardId,
        changes: Vec<PresenceChange>,
    },
    /// The answer to [`ToShard::Query`].
    Answer {
        query: u64,
        shard: ShardId,
        answer: Answer,
    },
    /// SIGINT or SIGTERM arrived.
    Shutdown,
}

/// What a [`ToShard::Query`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKind {
    Stats,
    Channels,
    /// The members of one channel (a full name), as [`Answer::Presence`].
    Presence(Arc<str>),
    /// The members of every presence channel with one here (cluster mode's refresh of this
    /// node's entries in Redis), as [`Answer::PresenceAll`].
    PresenceAll,
    /// Stop accepting connections, the first step of shutdown; answered once stopped.
    StopAccepting,
}

/// Where a recovering client was, and the position it gives: the protocol's own types.
/// One shard's acknowledgements of one channel, for `/v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRow {
    pub channel: Box<str>,
    pub conns: usize,
    pub offset_min: u64,
    pub offset_max: u64,
}

/// A shard's counters for `/v1/stats`, `/metrics` and `$sys.stats`.
#[derive(Debug)]
pub struct ShardReport {
    pub stats: ShardStats,
    pub acks: Vec<AckRow>,
    /// By namespace index, as [`Delivery::namespace`].
    pub namespaces: Vec<NamespaceStats>,
}

/// One namespace's counters on one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NamespaceStats {
    /// Messages handed to connections (written or queued).
    pub deliveries: u64,
    /// Queued messages dropped for `drop_oldest` (each named in a `gap` notice).
    pub drops: u64,
    /// Queued messages replaced by a newer one of the same key (`conflate`).
    pub conflated: u64,
    /// Connections closed with 4008 by one of this namespace's messages.
    pub slow_consumer_closes: u64,
}

/// A shard's answer to a [`ToShard::Query`].
#[derive(Debug)]
pub enum Answer {
    Stats(Box<ShardReport>),
    StoppedAccepting,
    Channels(Vec<(Box<str>, usize)>),
    Presence(PresenceCount),
    PresenceAll(Vec<(Arc<str>, PresenceCount)>),
}

/// One presence member (PROTOCOL.md, "Presence"): a connection subscribed to the channel by
/// its exact name. Made once when it joins and shared (`Arc`) by the shard's table, its diffs
/// and its answers; it crosses cores only in those, never per delivery.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Member {
    /// The connection's user (its token's `sub`, or `?user=`); `null` when anonymous.
    pub user: Option<Box<str>>,
    /// The connection's `conn_id`, `<shard>-<seq>`: unique on its node.
    pub conn_id: Box<str>,
    /// The token's claim `info`, a JSON object of at most `presence_info_bytes_max` bytes,
    /// kept as its compact text; `null` without one.
    pub info: Option<Box<serde_json::value::RawValue>>,
}

/// Who is subscribed to one channel on one shard (or node): exact counts, and the members,
/// at most `presence_members_max` of them.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct PresenceCount {
    pub connections: usize,
    /// The distinct users among them, so that the ingest core counts users over every shard
    /// exactly (a user with connections on two shards is one user).
    pub users: Vec<Box<str>>,
    pub members: Vec<Arc<Member>>,
}

/// One channel's joins and leaves on a shard over one interval. A connection that joined and
/// left in it is in neither list.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PresenceChange {
    /// The channel's full name.
    pub channel: Arc<str>,
    pub joined: Vec<Arc<Member>>,
    pub left: Vec<Arc<Member>>,
}

/// A connection's identity on its shard: its slab slot and a sequence number that is never
/// reused, so a late reply for a closed connection cannot reach the next one in that slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub slot: u32,
    pub seq: u32,
}

/// A shard's counters, for `/v1/stats`. Plain numbers: only the shard writes them, and the
/// ingest core asks for a copy through the queue.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ShardStats {
    pub shard: ShardId,
    pub connections: usize,
    /// Users with a connection on this shard (a user on two shards counts on each).
    pub users: usize,
    pub subscriptions: usize,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub drops: u64,
    pub slow_consumer_closes: u64,
    /// Client messages refused by the inbound rate limit, answered or dropped silently.
    pub rate_limited_messages: u64,
    /// Connections closed with 4029: a run of refusals reached `inbound_refusals_max`.
    pub rate_limit_closes: u64,
    /// `ack` commands taken.
    pub acks_total: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Accepts that failed (out of file descriptors, say); see [`crate::net::accept`].
    pub accept_errors: u64,
    pub ingest_queue_len: usize,
    /// Presence channels with a member on this shard, and members over all of them.
    pub presence_channels: usize,
    pub presence_members: usize,
    /// Frames waiting in this shard's outboxes, summed over its connections.
    pub outbox_frames: usize,
    /// Bytes of those frames not yet written.
    pub outbox_bytes: usize,
    /// This shard's fan-out times (see [`crate::ingest::metrics`]), in microseconds.
    pub fanout_latency_us: LatencySummary,
}

/// Who a connection is, for counting: its address (an IPv6 address by its /64, which one
/// host commonly owns whole), its tenant, and its user (by the full name of the user's
/// stream, which is unique across tenants), counted only under `connections_per_user_max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub ip: IpAddr,
    pub tenant: Option<Box<str>>,
    pub user: Option<Box<str>>,
}

impl Peer {
    pub fn new(ip: IpAddr, tenant: Option<Box<str>>, user: Option<Box<str>>) -> Self {
        let ip = match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
            v4 => v4,
        };
        Peer { ip, tenant, user }
    }
}

/// Which limit refused a connection. Each variant is the client's (or its tenant's) to wait
/// out: answer with [`Refused::status`] and the message, and count nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `connections_max`: the server is full (503).
    Total(usize),
    /// `connections_per_ip_max`: this address holds its share (429).
    Ip(usize),
    /// `tenant_connections_max`: this tenant holds its share (429).
    Tenant(usize),
    /// `connections_per_user_max`: this user holds its share on this node (429).
    User(usize),
    /// The shard is stopping: no answer will come (503).
    Stopping,
}

impl Refused {
    /// The HTTP status the upgrade gets.
    pub fn status(self) -> http::StatusCode {
        match self {
            Refused::Total(_) | Refused::Stopping => http::StatusCode::SERVICE_UNAVAILABLE,
            Refused::Ip(_) | Refused::Tenant(_) | Refused::User(_) => {
                http::StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// The JSON error code the upgrade gets.
    pub fn code(self) -> &'static str {
        match self {
            Refused::User(_) => "user_connection_limit",
            Refused::Total(_) | Refused::Ip(_) | Refused::Tenant(_) | Refused::Stopping => {
                "too_many_connections"
            }
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Total(max) => {
                write!(
                    f,
                    "the server holds its connections_max = {max} connections"
                )
            }
            Refused::Ip(max) => write!(
                f,
                "this address holds its connections_per_ip_max = {max} connections"
            ),
            Refused::Tenant(max) => write!(
                f,
                "this tenant holds its tenant_connections_max = {max} connections"
            ),
            Refused::User(max) => write!(
                f,
                "this user holds its connections_per_user_max = {max} connections"
            ),
            Refused::Stopping => f.write_str("the server is shutting down"),
        }
    }
}
