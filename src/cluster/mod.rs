//! Cluster mode (`--redis URL`): every node's publishes go through Redis, which numbers them
//! once for the whole cluster, and every node fans out every message locally.
//!
//! Redis holds, under `{corecast}:` (one hash tag, so one slot of a Redis Cluster), the
//! cluster's `epoch`, the node-wide `seq` counter (one for
//! the cluster), each channel's `offset`, and the `log`: a stream of every message with the
//! message's `seq` as its entry ID, bounded to `cluster_log_max` entries. One Lua script
//! ([`PUBLISH_SCRIPT`]) assigns a message its seq and offset, appends it to the log and
//! `PUBLISH`es it on `{corecast}:events`, atomically, so every node receives every message in seq
//! order with the same numbers. A batch is one run of another script
//! ([`PUBLISH_BATCH_SCRIPT`]) that does the same for all of its messages: Redis runs a script
//! whole with nothing between, so the batch's seqs are consecutive, and it has one fate. Each
//! node's ingest core keeps its own history from that stream, so recovery is exact on any node;
//! what a node missed while cut off it reads back from the log by seq.
//!
//! The Redis is found anew at every connect ([`Topology`]): at `redis_url`, or as the master
//! of the `{corecast}` slot of a Redis Cluster, or as the master the sentinels name, so a
//! failover or a resharding is followed. A Redis that holds less of the epoch than a node has
//! taken (it lost writes: a replica that lagged was promoted, an older save was loaded) would
//! number new messages with seqs clients have seen: the node that notices ends the epoch
//! ([`RESET_SCRIPT`]), exactly as when Redis comes back empty.
//!
//! This module is the bridge: three plain threads, never a glommio executor, so a slow or
//! absent Redis never blocks a broadcast shard. The *command* thread runs the publish scripts
//! (pipelined: every request waiting is sent in one round trip), log reads and the node's
//! presence; the *dialer* opens its connections, so the command thread never waits on a
//! connect; the *events* thread holds the `SUBSCRIBE`. They reconnect with backoff and tell
//! the ingest core what happened ([`FromCluster`]); the ingest core decides what clients see.
//! Nothing here parses a client's bytes or touches a connection.
//!
//! Every answer to a publish is true. Each round trip has `redis_timeout_ms` (the requests
//! the command thread takes in one batch share it, so each publish is answered by then,
//! counted from reaching the bridge); past it Redis counts as stalled
//! ([`Health::Stalled`]) and the connection is given up. A publish that was sent and got no
//! answer is [`PublishFailure::Unknown`]: Redis may run it when it resumes, and then every
//! node delivers it in seq order like any other. A publish that was never sent (the bridge
//! had no connection that answers, or the publish waited out its time behind another round
//! trip), or that Redis refused before the script changed anything, is
//! [`PublishFailure::Refused`]: it is certainly not published. While the command connection
//! is down or stalled, publishes are refused at once, never queued behind the stall. A batch
//! is one request, one command and one answer, so all of this holds for the batch as a whole.

use std::io;
use std::sync::mpsc::{Receiver as StdReceiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::msg::{PresenceChange, UserAct};
use crate::queue;
use corecast_proto::Priority;

// Every key and channel carries the hash tag `{corecast}`, so that in a Redis Cluster they
// all live in one slot, on one master, and each script's keys are that slot's.

/// The channel every node subscribes to.
const EVENTS_CHANNEL: &str = "{corecast}:events";
/// The channel of user acts (`POST /v1/users/...`), which every node subscribes to as well:
/// fire and forget, unnumbered, since an act on connections that are gone is void anyway.
const USERS_CHANNEL: &str = "{corecast}:users";
/// The channel of presence diffs: each node's joins and leaves of `join_leave` channels, once
/// per shard per `presence_diff_interval_ms`; fire and forget, like user acts.
const PRESENCE_CHANNEL: &str = "{corecast}:presence";
/// Each node's members of one presence channel: `{corecast}:presence:<node>:<channel>`, a
/// [`crate::msg::PresenceCount`] as JSON, expiring [`NODE_TTL_S`] after its last refresh.
const PRESENCE_KEY_PREFIX: &str = "{corecast}:presence:";
const EPOCH_KEY: &str = "{corecast}:epoch";
const SEQ_KEY: &str = "{corecast}:seq";
const OFFSETS_KEY: &str = "{corecast}:offsets";
const LOG_KEY: &str = "{corecast}:log";
/// Each node's presence: `{corecast}:node:<id>`, expiring unless refreshed.
const NODE_KEY_PREFIX: &str = "{corecast}:node:";
/// The hash tag of every key, whose slot's master a Redis Cluster node is found by.
const HASH_TAG: &str = "{corecast}";

/// Seconds a node's presence (its node key, and its members of each presence channel)
/// outlives its last refresh: a dead node's members are gone from every answer this long
/// after its last refresh, so within 5 s of its death.
pub const NODE_TTL_S: u64 = 5;
/// How often the command thread refreshes this node's presence and reads the others'.
const PRESENCE_PERIOD: Duration = Duration::from_secs(1);
/// Reconnect backoff: doubling from the first, capped. A request that finds the command
/// connection down dials again no sooner than `RETRY_FIRST` after the last dial ended.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);
/// Messages sent to Redis in one pipelined round trip, a batch counting each of its own: the
/// command thread takes no more requests once it holds this many, so a round trip carries at
/// most this many and one batch more (a batch is never split).
const PIPELINE_MAX: usize = 256;
/// Log entries one read returns, at most.
pub const LOG_READ_MAX: usize = 10_000;

/// Error codes with which Redis refuses a script before it changed anything, so the publish
/// is certainly not published: it never ran (`NOSCRIPT`, `LOADING`, `BUSY`, `NOAUTH`; a Redis
/// Cluster node that does not serve the slot: `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`), or
/// its first write was refused (`OOM`, `MISCONF`, `READONLY`, `NOREPLICAS`, `MASTERDOWN`:
/// Redis 7 checks these at a script's first write command, and neither publish script writes
/// anything before it). Any other error (`ERR` from a failing script, `NOPERM` from an ACL
/// that denies a later command) may come after some of its writes: the outcome is unknown.
const REFUSED_BEFORE_RUNNING: [&str; 13] = [
    "MOVED",
    "ASK",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOSCRIPT",
    "LOADING",
    "BUSY",
    "NOAUTH",
    "OOM",
    "MISCONF",
    "READONLY",
    "NOREPLICAS",
    "MASTERDOWN",
];

/// Assigns the next seq and the channel's next offset, appends the message to the log and
/// publishes it to every node; answers `{epoch, seq, offset}`. A Redis that lost its data (a
/// restart without persistence) has no epoch: the caller's proposal becomes the new one, and
/// seq and offsets restart at 1 with it.
/// KEYS: epoch, seq, offsets, log, events. ARGV: channel, data, ts_ms, priority, proposed
/// epoch, log max.
pub const PUBLISH_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[5]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
end
local seq = redis.call('INCR', KEYS[2])
local offset = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], seq .. '-0',
  'e', epoch, 'o', offset, 't', ARGV[3], 'p', ARGV[4], 'c', ARGV[1], 'd', ARGV[2])
redis.call('PUBLISH', KEYS[5], '{"e":"' .. epoch .. '","s":' .. seq .. ',"o":' .. offset ..
  ',"t":' .. ARGV[3] .. ',"p":"' .. ARGV[4] .. '","c":"' .. ARGV[1] .. '","d":' .. ARGV[2] .. '}')
return {epoch, seq, offset}
"#;

/// Starts a new epoch (`ARGV[3]`) in place of `ARGV[1]`, with the seq, the offsets and the log
/// emptied, as a Redis that lost its data does, if Redis's seq of epoch `ARGV[1]` is below
/// `ARGV[2]`, the last seq a node took of it. The check is here, atomic, and after the node
/// read its own: every seq a node took was Redis's once, and Redis's only grows, so it is
/// below only if Redis lost messages (a position the node saw earlier may be below its later
/// seq, and is no proof). Every node that sees the loss asks; the first one's epoch is
/// everyone's. Answers the epoch and seq now.
/// KEYS: epoch, seq, offsets, log.
pub const RESET_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1]
  and tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3])
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
end
return {redis.call('GET', KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0')}
"#;

/// Numbers every message of a batch, in a row, as [`PUBLISH_SCRIPT`] numbers one: the same
/// seq, offset, log entry and event for each, in batch order, all in this one run, so no other
/// publish comes between them. Answers the offsets in order.
///
/// One script rather than `MULTI`, one `EVALSHA` per message and `EXEC`: a transaction does
/// not roll back a command that fails while `EXEC` runs, so one message's failure would leave
/// the others published; a refused `EXEC` leaves the connection inside `MULTI`; and a refused
/// `MULTI` would let the `EVALSHA`s run one by one. A script is one command: Redis runs it
/// whole, or refuses it before it starts (`OOM` included: Redis checks it at a script's first
/// write, and this one writes nothing before).
///
/// Its writes come in three rounds, so that a failure while it runs delivers none of the
/// batch (only a Redis whose `{corecast}:` keys or ACLs something else changed can fail it
/// then; the answer is `outcome_unknown`): first the counters (an `offsets` field that is not
/// a number fails there, the numbers taken so far skipped, as when a single publish fails),
/// then the log entries (the same command on the same key with rising IDs: if one fails, the
/// first does), then the events (`PUBLISH` fails only for an ACL, and then at the first: the
/// whole batch is in the log, none of it delivered live).
/// KEYS: epoch, seq, offsets, log, events. ARGV: proposed epoch, log max, then for each
/// message: channel, data, ts_ms, priority.
pub const PUBLISH_BATCH_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
end
local n = (#ARGV - 2) / 4
local first = redis.call('INCRBY', KEYS[2], n) - n + 1
local offsets = {}
for i = 1, n do
  offsets[i] = redis.call('HINCRBY', KEYS[3], ARGV[4 * i - 1], 1)
end
for i = 1, n do
  local at = 4 * i - 1
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], (first + i - 1) .. '-0',
    'e', epoch, 'o', offsets[i], 't', ARGV[at + 2], 'p', ARGV[at + 3], 'c', ARGV[at],
    'd', ARGV[at + 1])
end
for i = 1, n do
  local at = 4 * i - 1
  redis.call('PUBLISH', KEYS[5], '{"e":"' .. epoch .. '","s":' .. (first + i - 1) .. ',"o":' ..
    offsets[i] .. ',"t":' .. ARGV[at + 2] .. ',"p":"' .. ARGV[at + 3] .. '","c":"' .. ARGV[at] ..
    '","d":' .. ARGV[at + 1] .. '}')
end
return offsets
"#;

/// A message as the cluster numbered it, on its way to every node's ingest core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub epoch: Box<str>,
    pub seq: u64,
    pub offset: u64,
    pub ts_ms: u64,
    pub priority: Priority,
    pub channel: Box<str>,
    /// Raw, validated JSON.
    pub data: Box<str>,
}

/// A publish the ingest core hands the bridge; `token` names its reply.
#[derive(Debug)]
pub struct PublishRequest {
    pub token: u64,
    pub channel: Box<str>,
    pub data: Box<str>,
    pub priority: Priority,
    pub ts_ms: u64,
    /// When it must be answered: `redis_timeout_ms` after the ingest core handed it over.
    /// Still unsent then, it is refused; sent and unanswered then, its outcome is unknown.
    pub answer_by: Instant,
}

/// A batch the ingest core hands the bridge whole: one request, numbered by one run of
/// [`PUBLISH_BATCH_SCRIPT`] and answered once, for all of its messages.
#[derive(Debug)]
pub struct BatchRequest {
    pub token: u64,
    /// Its messages, in order; never empty.
    pub entries: Vec<BatchEntry>,
    /// As [`PublishRequest::answer_by`], for the batch as a whole.
    pub answer_by: Instant,
}

/// One message of a [`BatchRequest`].
#[derive(Debug)]
pub struct BatchEntry {
    pub channel: Box<str>,
    pub data: Box<str>,
    pub priority: Priority,
    pub ts_ms: u64,
}

/// Why a publish has no numbers, as far as the bridge can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishFailure {
    /// Certainly not published: never sent (Redis unreachable or stalled, or the publish
    /// waited out its time behind another round trip), or Redis refused the script before it
    /// changed anything. The publisher may retry it as it is.
    Refused(String),
    /// Sent, with no answer: none within `redis_timeout_ms`, the connection broke, or the
    /// script failed while running. Redis may have published it, or may when it resumes; the
    /// publisher has to look (history) before publishing it again.
    Unknown(String),
}

/// How the command connection stands, as the bridge last found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Connected, and Redis answered the last round trip in time: publishes are sent.
    Ready,
    /// A round trip got no answer within `redis_timeout_ms`: Redis takes connections but does
    /// not answer (stopped, swapping, a long script). Publishes are refused until `Ready`.
    Stalled,
    /// No connection: Redis refused it, or it broke. Publishes are refused until `Ready`.
    Down,
}

/// What the ingest core asks of the bridge.
#[derive(Debug)]
pub enum ToCluster {
    Publish(PublishRequest),
    /// A batch, to be numbered as one (see [`PUBLISH_BATCH_SCRIPT`]).
    PublishBatch(BatchRequest),
    /// Log entries with seq in `after + 1 ..= up_to`, in order.
    ReadLog {
        token: u64,
        after: u64,
        up_to: u64,
    },
    /// This node's connection count, for its presence.
    Presence {
        connections: usize,
    },
    /// A user act for every node, this one included (see [`UserActEvent`]).
    UserAct(UserActEvent),
    /// Redis may hold less than this node has seen of `epoch` (`seq`, the last it took): if
    /// it does (a replica that lagged was promoted, or Redis restarted from an older save),
    /// start a new epoch, unless another node did already ([`RESET_SCRIPT`]).
    Reset {
        epoch: Box<str>,
        seq: u64,
    },
    /// This node's members of every presence channel it has members in, as JSON, to be
    /// written with an expiry of [`NODE_TTL_S`].
    PresenceEntries(Vec<(Arc<str>, String)>),
    /// Every named node's entry for `channel`, answered with `FromCluster::Presence`.
    ReadPresence {
        token: u64,
        channel: Arc<str>,
        nodes: Vec<String>,
    },
    /// This node's joins and leaves, for every other node's diffs.
    PresenceDiff(PresenceDiffEvent),
}

/// One shard's joins and leaves as they cross `{corecast}:presence`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PresenceDiffEvent {
    /// The node they happened on (its own are not merged twice).
    pub node: Arc<str>,
    pub changes: Vec<PresenceChange>,
}

/// A user act as it crosses `{corecast}:users`: the user's stream, and what to do to each of
/// its connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserActEvent {
    /// The full name of the user's stream.
    pub stream: Arc<str>,
    #[serde(flatten)]
    pub act: UserAct,
}

/// One node of the cluster as its presence key says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub ws: String,
    pub connections: usize,
    pub ts_ms: u64,
}

/// What the bridge tells the ingest core.
#[derive(Debug)]
pub enum FromCluster {
    /// The answer to a publish: its numbers, or why it has none.
    Published {
        token: u64,
        result: Result<Numbered, PublishFailure>,
    },
    /// The one answer to a batch: every message's offset, in order, or why none has one.
    PublishedBatch {
        token: u64,
        result: Result<Vec<u64>, PublishFailure>,
    },
    /// The command connection's health changed; `reason` for the log.
    Health { health: Health, reason: String },
    /// A message from `{corecast}:events`, in seq order as Redis sent it.
    Event(Numbered),
    /// The events subscription is (re)established: the cluster's epoch and latest seq as of
    /// then; every later message arrives as an `Event`.
    Subscribed { epoch: Box<str>, seq: u64 },
    /// Redis is unreachable (or the subscription broke); `reason` for the log.
    Lost { reason: String },
    /// The answer to `ReadLog`: the entries found (some may be gone: the log is bounded).
    Log {
        token: u64,
        result: Result<Vec<Numbered>, String>,
    },
    /// Every node's presence, this one included.
    Nodes(Vec<NodeInfo>),
    /// A user act from `{corecast}:users` (any node's, this one's included).
    UserAct(UserActEvent),
    /// The command connection was (re)established with a Redis whose epoch and seq were
    /// these: less than the node has seen means Redis lost messages.
    Position { epoch: Box<str>, seq: u64 },
    /// The answer to [`ToCluster::Reset`]: the cluster's epoch and seq now.
    Reset { epoch: Box<str>, seq: u64 },
    /// The answer to `ReadPresence`: the entries found (JSON), one per node that has one.
    Presence {
        token: u64,
        result: Result<Vec<String>, String>,
    },
    /// A node's joins and leaves from `{corecast}:presence` (this one's included).
    PresenceDiff(PresenceDiffEvent),
}

/// The event published on `{corecast}:events`, as [`PUBLISH_SCRIPT`] writes it.
#[derive(Deserialize)]
struct WireEvent<'a> {
    e: &'a str,
    s: u64,
    o: u64,
    t: u64,
    p: Priority,
    c: &'a str,
    #[serde(borrow)]
    d: sonic_rs::LazyValue<'a>,
}

/// Reads one `{corecast}:events` payload nested at most `depth_max` levels (`json_depth_max`:
/// the event's own `{` is level 1, so every `data` a node with the same limit accepted fits).
pub fn parse_event(payload: &str, depth_max: usize) -> Result<Numbered, String> {
    crate::json::check(payload.as_bytes(), depth_max)
        .map_err(|err| format!("a {{corecast}}:events message is refused: {err}"))?;
    let event: WireEvent = sonic_rs::from_str(payload)
        .map_err(|err| format!("a {{corecast}}:events message is not an event: {err}"))?;
    Ok(Numbered {
        epoch: event.e.into(),
        seq: event.s,
        offset: event.o,
        ts_ms: event.t,
        priority: event.p,
        channel: event.c.into(),
        data: event.d.as_raw_str().into(),
    })
}

/// What reaches the command thread.
enum Inbound {
    Request(ToCluster),
    /// The dialer's new connection and the cluster's position (epoch, seq) as that Redis
    /// had it then, or why there is none.
    Dialed(redis::RedisResult<(redis::Connection, (String, u64))>),
    /// The events subscription broke: the command connection, to the same Redis, may be dead
    /// too. It is checked before anything more is sent on it.
    Probe,
}

impl Inbound {
    /// What it counts against [`PIPELINE_MAX`]: a batch's messages, else one.
    fn weight(&self) -> usize {
        match self {
            Inbound::Request(ToCluster::PublishBatch(batch)) => batch.entries.len(),
            _ => 1,
        }
    }
}

/// The ingest core's way to the bridge's command thread.
#[derive(Clone)]
pub struct Requests(SyncSender<Inbound>);

impl Requests {
    /// Sends `request` without waiting; gives it back when the bridge's queue is full (the
    /// ingest core answers the publish `overloaded`).
    pub fn try_send(&self, request: ToCluster) -> Result<(), ToCluster> {
        self.0
            .try_send(Inbound::Request(request))
            .map_err(|err| match err {
                TrySendError::Full(inbound) | TrySendError::Disconnected(inbound) => {
                    match inbound {
                        Inbound::Request(request) => request,
                        _ => unreachable!("a request comes back a request"),
                    }
                }
            })
    }
}

/// The far end of [`Requests::unattached`]: what the ingest core sent, for its tests.
#[cfg(test)]
pub(crate) struct Unattached(StdReceiver<Inbound>);

#[cfg(test)]
impl Unattached {
    /// The next request sent, if any.
    pub(crate) fn take(&self) -> Option<ToCluster> {
        match self.0.try_recv() {
            Ok(Inbound::Request(request)) => Some(request),
            _ => None,
        }
    }
}

#[cfg(test)]
impl Requests {
    /// A queue of `capacity` requests with no bridge behind it, for the ingest core's tests.
    pub(crate) fn unattached(capacity: usize) -> (Requests, Unattached) {
        let (requests, inbox) = std::sync::mpsc::sync_channel(capacity);
        (Requests(requests), Unattached(inbox))
    }
}

/// The bridge's threads and the ingest core's way to them.
pub struct Bridge {
    requests: Requests,
    threads: Vec<JoinHandle<()>>,
}

/// The priority as the script and the log carry it.
fn priority_name(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Normal => "normal",
    }
}

/// What the bridge needs of the config, read once when it starts: its view of the settings,
/// so that nothing else of the config reaches its threads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `redis_url`.
    pub url: String,
    /// `redis_timeout_ms`: the bound on one round trip, and on a publish's answer.
    pub timeout: Duration,
    /// `queue_items_max`: requests waiting for the command thread, at most.
    pub requests_max: usize,
    /// `json_depth_max`: the nesting the threads parse (log entries, events) and size their
    /// stacks for.
    pub json_depth_max: usize,
    /// `cluster_log_max`: the log's length in Redis.
    pub log_max: usize,
    /// The WebSocket address this node serves, for its presence.
    pub ws: String,
    /// `redis_ca_file`: the CAs to trust over `rediss://` instead of the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// `redis_cert_file` and `redis_key_file`: the client certificate over `rediss://`.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Where the Redis to use is found.
    pub topology: Topology,
}

/// Where the Redis that numbers the cluster's publishes is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// At `redis_url`.
    Single,
    /// In a Redis Cluster that `redis_url` is a node of: the master of the slot of
    /// `{corecast}`, asked of that node at every connect.
    Cluster,
    /// Where the first of `sentinels` that knows `master` says it is, at every connect.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

/// Finds the Redis to connect to, at every connect, so that a failover or a resharding is
/// followed: each of the bridge's threads holds one.
#[derive(Clone)]
struct Locator {
    url: redis::ConnectionInfo,
    tls: Option<redis::TlsCertificates>,
    topology: Topology,
}

/// A bridge error of ours (not Redis's) as the `RedisError` the threads retry on.
fn locate_error(what: &'static str, detail: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, what, detail))
}

impl Locator {
    /// A client for the configured URL, or for `at` in its host's and port's place (the same
    /// scheme, credentials, database and TLS files).
    fn client_at(&self, at: Option<(String, u16)>) -> redis::RedisResult<redis::Client> {
        let mut info = self.url.clone();
        if let Some((host, port)) = at {
            let addr = match info.addr() {
                redis::ConnectionAddr::TcpTls { insecure, .. } => redis::ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: *insecure,
                    tls_params: None,
                },
                _ => redis::ConnectionAddr::Tcp(host, port),
            };
            info = info.set_addr(addr);
        }
        match &self.tls {
            Some(tls) => redis::Client::build_with_tls(info, tls.clone()),
            None => redis::Client::open(info),
        }
    }

    /// A connection, whose every command waits at most `timeout`, to the Redis to use now.
    fn connect(&self, timeout: Duration) -> redis::RedisResult<redis::Connection> {
        match &self.topology {
            Topology::Single => connect(&self.client_at(None)?, timeout),
            Topology::Cluster => {
                let mut seed = connect(&self.client_at(None)?, timeout)?;
                let (host, port) = slot_master(&mut seed)?;
                let seed_host = match self.url.addr() {
                    redis::ConnectionAddr::Tcp(host, _)
                    | redis::ConnectionAddr::TcpTls { host, .. } => host.clone(),
                    _ => String::new(),
                };
                // A node that names no host means its own (`cluster-announce-hostname` unset).
                let host = if host.is_empty() { seed_host } else { host };
                connect(&self.client_at(Some((host, port)))?, timeout)
            }
            Topology::Sentinel { sentinels, master } => {
                let mut last = locate_error("no sentinel answered", sentinels.join(", "));
                for sentinel in sentinels {
                    match self.ask_sentinel(sentinel, master, timeout) {
                        Ok(connection) => return Ok(connection),
                        Err(err) => last = err,
                    }
                }
                Err(last)
            }
        }
    }

    /// A connection to the master `sentinel` names for `master`, once that Redis says it is
    /// one (a sentinel that has not seen a failover yet names the old master, now a replica).
    fn ask_sentinel(
        &self,
        sentinel: &str,
        master: &str,
        timeout: Duration,
    ) -> redis::RedisResult<redis::Connection> {
        let client = match &self.tls {
            Some(tls) if sentinel.starts_with("rediss://") => {
                redis::Client::build_with_tls(sentinel, tls.clone())?
            }
            _ => redis::Client::open(sentinel)?,
        };
        let mut asked = connect(&client, timeout)?;
        let named: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query(&mut asked)?;
        let Some(addr) = named else {
            return Err(locate_error(
                "the sentinel does not monitor the master name",
                format!("{sentinel} knows no master {master:?}"),
            ));
        };
        let shown = format!("{}:{}", addr.0, addr.1);
        let mut connection = connect(&self.client_at(Some(addr))?, timeout)?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut connection)?;
        match role.first() {
            Some(redis::Value::BulkString(role)) if role == b"master" => Ok(connection),
            _ => Err(locate_error(
                "the Redis the sentinel names is not a master (a failover under way)",
                format!("{sentinel} names {shown} for {master:?}"),
            )),
        }
    }
}

/// The host and port of the master of [`HASH_TAG`]'s slot, as the Redis Cluster node
/// `connection` sees it (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`).
fn slot_master(connection: &mut redis::Connection) -> redis::RedisResult<(String, u16)> {
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(HASH_TAG)
        .query(connection)?;
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(connection)?;
    for range in ranges {
        let redis::Value::Array(range) = range else {
            continue;
        };
        let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end)), Some(master)) =
            (range.first(), range.get(1), range.get(2))
        else {
            continue;
        };
        if !(*start..=*end).contains(&slot) {
            continue;
        }
        let redis::Value::Array(master) = master else {
            continue;
        };
        if let (Some(host), Some(redis::Value::Int(port))) = (master.first(), master.get(1)) {
            let host: String = redis::from_redis_value_ref(host)?;
            let port = u16::try_from(*port)
                .map_err(|_| locate_error("CLUSTER SLOTS named a bad port", port.to_string()))?;
            return Ok((host, port));
        }
    }
    Err(locate_error(
        "no master serves corecast's slot (the cluster is down or resharding)",
        format!("slot {slot}"),
    ))
}

impl Settings {
    /// How the bridge finds its Redis: the URL, the TLS files (read here, so that a file the
    /// bridge cannot use stops start-up naming it) and the topology.
    fn locator(&self) -> Result<Locator, String> {
        let url = &self.url;
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map_err(|err| format!("redis_url {url:?} is not a Redis URL: {err}"))?;
        let read = |name: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|err| format!("cannot read {name} {}: {err}", path.display()))
        };
        let tls = if self.ca_file.is_none() && self.client_cert.is_none() {
            None
        } else {
            let root_cert = match &self.ca_file {
                Some(path) => Some(read("redis_ca_file", path)?),
                None => None,
            };
            let client_tls = match &self.client_cert {
                Some((cert, key)) => Some(redis::ClientTlsConfig {
                    client_cert: read("redis_cert_file", cert)?,
                    client_key: read("redis_key_file", key)?,
                }),
                None => None,
            };
            Some(redis::TlsCertificates {
                client_tls,
                root_cert,
            })
        };
        let locator = Locator {
            url: info,
            tls,
            topology: self.topology.clone(),
        };
        // Built once here so that unusable TLS files or URLs stop start-up.
        locator
            .client_at(None)
            .map_err(|err| format!("cannot use redis_url and its TLS files: {err}"))?;
        Ok(locator)
    }

    /// The bridge's view of `config`; `None` without `redis_url` (a single node).
    pub fn from_config(config: &Config) -> Option<Settings> {
        Some(Settings {
            url: config.redis_url.clone()?,
            ca_file: config.redis_ca_file.clone(),
            client_cert: config
                .redis_cert_file
                .clone()
                .zip(config.redis_key_file.clone()),
            topology: match &config.redis_sentinel_master {
                Some(master) => Topology::Sentinel {
                    sentinels: config.redis_sentinels.clone(),
                    master: master.clone(),
                },
                None if config.redis_cluster => Topology::Cluster,
                None => Topology::Single,
            },
            timeout: Duration::from_millis(config.redis_timeout_ms),
            requests_max: config.queue_items_max,
            json_depth_max: config.json_depth_max,
            log_max: config.cluster_log_max,
            ws: config.listen.to_string(),
        })
    }
}

impl Bridge {
    /// Starts the bridge threads for `settings.url`. `to_ingest` is the ingest core's inbox for the
    /// bridge; `node` names this node in the presence keys. Whenever Redis has no epoch (it
    /// lost its data) a fresh one is proposed: never an old one, or a restarted Redis would
    /// look like the same run of offsets.
    pub fn start(
        settings: Settings,
        node: String,
        to_ingest: queue::Sender<FromCluster>,
    ) -> Result<Bridge, String> {
        let locator = settings.locator()?;
        let timeout = settings.timeout;
        let (requests, inbox) = std::sync::mpsc::sync_channel(settings.requests_max);
        let (dialer, dials) = std::sync::mpsc::channel();
        let to_ingest = Arc::new(to_ingest);
        // The command and events threads parse JSON from Redis (log entries, events) up to
        // this depth.
        let depth_max = settings.json_depth_max;
        let stack_bytes = crate::json::thread_stack_bytes(depth_max);
        let commands = {
            let to_ingest = to_ingest.clone();
            std::thread::Builder::new()
                .name("corecast-redis".into())
                .stack_size(stack_bytes)
                .spawn(move || {
                    CommandThread {
                        settings,
                        node,
                        timeout,
                        to_ingest,
                        dialer,
                        told: None,
                    }
                    .run(inbox)
                })
                .map_err(|err| format!("cannot start the Redis command thread: {err}"))?
        };
        let dialing = {
            let locator = locator.clone();
            let requests = requests.clone();
            std::thread::Builder::new()
                .name("corecast-redis-dial".into())
                .spawn(move || run_dialer(&locator, timeout, &dials, &requests))
                .map_err(|err| format!("cannot start the Redis dialer thread: {err}"))?
        };
        let events = {
            let requests = requests.clone();
            std::thread::Builder::new()
                .name("corecast-redis-events".into())
                .stack_size(stack_bytes)
                .spawn(move || run_events(&locator, timeout, &to_ingest, &requests, depth_max))
                .map_err(|err| format!("cannot start the Redis events thread: {err}"))?
        };
        Ok(Bridge {
            requests: Requests(requests),
            threads: vec![commands, dialing, events],
        })
    }

    /// A handle for the ingest core to send requests with.
    pub fn requests(&self) -> Requests {
        self.requests.clone()
    }

    /// The threads run until the process exits; this only names them for the runtime.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

/// Hands `message` to the ingest core, waiting while its inbox is full (this is a plain
/// thread: waiting here slows only the bridge), and wakes it.
fn tell(to_ingest: &queue::Sender<FromCluster>, message: FromCluster) {
    queue_for_ingest(to_ingest, message);
    to_ingest.wake();
}

/// `tell` without the wake-up, for a batch: the caller wakes the ingest core once after it.
fn queue_for_ingest(to_ingest: &queue::Sender<FromCluster>, message: FromCluster) {
    let mut message = message;
    while let Err(back) = to_ingest.try_push(message) {
        message = back;
        to_ingest.wake();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The reconnect delay after `failures` failed attempts in a row.
fn backoff(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << failures.min(8))
        .min(RETRY_CAP)
}

/// What is left until `deadline`, the end of a round trip's time; a timeout error, as a late
/// answer would give, when nothing is.
fn left_until(deadline: Instant) -> redis::RedisResult<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no time left for this round trip (redis_timeout_ms)",
        )
        .into());
    }
    Ok(left)
}

/// Sets the connection's timeouts to what is left until `deadline`. They bound each wait for
/// Redis's bytes, so a command whose answer comes in one piece (every one here, unless Redis
/// trickles) is answered or given up by then.
fn budget(redis: &redis::Connection, deadline: Instant) -> redis::RedisResult<()> {
    let left = left_until(deadline)?;
    redis.set_read_timeout(Some(left))?;
    redis.set_write_timeout(Some(left))
}

/// A connection whose connect and every later command wait at most `timeout` for Redis.
fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let connection = client.get_connection_with_timeout(timeout)?;
    connection.set_read_timeout(Some(timeout))?;
    connection.set_write_timeout(Some(timeout))?;
    Ok(connection)
}

/// Error codes that say this connection is to the wrong Redis now: a failover made it a
/// replica (`READONLY`), or the slot moved (`MOVED`, `ASK`), or its master is gone
/// (`MASTERDOWN`, `CLUSTERDOWN`). The bridge gives the connection up and finds the Redis to
/// use again ([`Locator`]).
const WRONG_REDIS: [&str; 5] = ["READONLY", "MOVED", "ASK", "MASTERDOWN", "CLUSTERDOWN"];

/// What an error answer to the publish script says of the publish.
fn failure_of(err: &redis::ServerError) -> PublishFailure {
    let reason = format!("Redis answered an error: {err}");
    if REFUSED_BEFORE_RUNNING.contains(&err.code()) {
        PublishFailure::Refused(reason)
    } else {
        PublishFailure::Unknown(reason)
    }
}

/// What a failed round trip says about Redis: late, or gone.
fn health_after(err: &redis::RedisError) -> Health {
    if err.is_timeout() {
        Health::Stalled
    } else {
        Health::Down
    }
}

/// The publish scripts, loaded on every command connection; `EVALSHA` after that.
struct Scripts {
    one: redis::Script,
    batch: redis::Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            one: redis::Script::new(PUBLISH_SCRIPT),
            batch: redis::Script::new(PUBLISH_BATCH_SCRIPT),
        }
    }

    fn load(&self, redis: &mut redis::Connection) -> redis::RedisResult<()> {
        self.one.load(redis)?;
        self.batch.load(redis)?;
        Ok(())
    }
}

/// The dialer thread: opens a command connection, with the publish scripts loaded, each time
/// the command thread asks, and hands it over. The whole dial has one `timeout`; the scripts'
/// load is also the proof that Redis answers (a stopped Redis still takes TCP connections).
fn run_dialer(
    locator: &Locator,
    timeout: Duration,
    asks: &StdReceiver<()>,
    commands: &SyncSender<Inbound>,
) {
    let scripts = Scripts::new();
    for () in asks {
        let deadline = Instant::now() + timeout;
        let dialed = locator.connect(timeout).and_then(|mut fresh| {
            budget(&fresh, deadline)?;
            scripts.load(&mut fresh)?;
            let position = cluster_position(&mut fresh, &crate::clock::new_epoch())?;
            Ok((fresh, position))
        });
        if commands.send(Inbound::Dialed(dialed)).is_err() {
            return;
        }
    }
}

/// The events thread: `SUBSCRIBE`, then the cluster's position, then every event, forever.
fn run_events(
    locator: &Locator,
    timeout: Duration,
    to_ingest: &queue::Sender<FromCluster>,
    commands: &SyncSender<Inbound>,
    depth_max: usize,
) {
    let mut failures = 0;
    loop {
        let outcome = subscribe_and_forward(locator, timeout, to_ingest, depth_max, &mut failures);
        let reason = match outcome {
            Ok(()) => "the events subscription ended".to_owned(),
            Err(err) => err.to_string(),
        };
        tracing::warn!(%reason, "Redis events subscription lost; serving local connections, retrying");
        // The command thread hears first, so that a publish sent after the ingest core knew
        // is never written to a connection that died with this one.
        if commands.send(Inbound::Probe).is_err() {
            return;
        }
        tell(to_ingest, FromCluster::Lost { reason });
        std::thread::sleep(backoff(failures));
        failures += 1;
    }
}

fn subscribe_and_forward(
    locator: &Locator,
    timeout: Duration,
    to_ingest: &queue::Sender<FromCluster>,
    depth_max: usize,
    failures: &mut u32,
) -> redis::RedisResult<()> {
    let mut events = locator.connect(timeout)?;
    let mut state = locator.connect(timeout)?;
    let mut pubsub = events.as_pubsub();
    pubsub.subscribe(&[EVENTS_CHANNEL, USERS_CHANNEL, PRESENCE_CHANNEL])?;
    // Subscribed first, so nothing published after this read is missed.
    let (epoch, seq) = cluster_position(&mut state, &crate::clock::new_epoch())?;
    drop(state);
    tracing::info!(%epoch, seq, "subscribed to the cluster's events");
    tell(
        to_ingest,
        FromCluster::Subscribed {
            epoch: epoch.into(),
            seq,
        },
    );
    *failures = 0;
    pubsub.set_read_timeout(None)?;
    loop {
        let message = pubsub.get_message()?;
        let payload: String = message.get_payload()?;
        if message.get_channel_name() == USERS_CHANNEL {
            match serde_json::from_str::<UserActEvent>(&payload) {
                Ok(act) => tell(to_ingest, FromCluster::UserAct(act)),
                Err(err) => tracing::error!(error = %err, "ignoring a malformed user act"),
            }
            continue;
        }
        if message.get_channel_name() == PRESENCE_CHANNEL {
            match serde_json::from_str::<PresenceDiffEvent>(&payload) {
                Ok(diff) => tell(to_ingest, FromCluster::PresenceDiff(diff)),
                Err(err) => tracing::error!(error = %err, "ignoring a malformed presence diff"),
            }
            continue;
        }
        match parse_event(&payload, depth_max) {
            Ok(event) => tell(to_ingest, FromCluster::Event(event)),
            Err(err) => tracing::error!(error = %err, "ignoring a malformed cluster event"),
        }
    }
}

/// Publishes user acts on `{corecast}:users`, one pipeline, by `deadline`.
fn publish_acts(
    redis: &mut redis::Connection,
    deadline: Instant,
    acts: &[UserActEvent],
) -> redis::RedisResult<()> {
    if acts.is_empty() {
        return Ok(());
    }
    budget(redis, deadline)?;
    let mut pipe = redis::pipe();
    for act in acts {
        let text = serde_json::to_string(act).expect("a user act serializes");
        pipe.cmd("PUBLISH").arg(USERS_CHANNEL).arg(text).ignore();
    }
    pipe.query(redis)
}

/// What the command thread does for presence in one round: this node's entries to write
/// (the latest only), the reads to answer and the diffs to publish.
#[derive(Default)]
struct PresenceWork {
    entries: Option<Vec<(Arc<str>, String)>>,
    reads: Vec<(u64, Arc<str>, Vec<String>)>,
    diffs: Vec<PresenceDiffEvent>,
}

impl PresenceWork {
    /// Writes this node's entries (each expiring in [`NODE_TTL_S`]) and publishes the diffs in
    /// one pipeline, then answers each read with one `MGET`, by `deadline`.
    fn run(
        self,
        redis: &mut redis::Connection,
        node: &str,
        deadline: Instant,
        to_ingest: &queue::Sender<FromCluster>,
    ) -> redis::RedisResult<()> {
        let entries = self.entries.unwrap_or_default();
        if !entries.is_empty() || !self.diffs.is_empty() {
            budget(redis, deadline)?;
            let mut pipe = redis::pipe();
            for (channel, entry) in &entries {
                pipe.cmd("SET")
                    .arg(format!("{PRESENCE_KEY_PREFIX}{node}:{channel}"))
                    .arg(entry)
                    .arg("EX")
                    .arg(NODE_TTL_S)
                    .ignore();
            }
            for diff in &self.diffs {
                let text = serde_json::to_string(diff).expect("a presence diff serializes");
                pipe.cmd("PUBLISH").arg(PRESENCE_CHANNEL).arg(text).ignore();
            }
            pipe.query::<()>(redis)?;
        }
        let mut reads = self.reads.into_iter();
        for (token, channel, nodes) in reads.by_ref() {
            let result = if nodes.is_empty() {
                Ok(Vec::new())
            } else {
                let keys: Vec<String> = nodes
                    .iter()
                    .map(|node| format!("{PRESENCE_KEY_PREFIX}{node}:{channel}"))
                    .collect();
                budget(redis, deadline).and_then(|()| {
                    redis::cmd("MGET")
                        .arg(&keys)
                        .query::<Vec<Option<String>>>(redis)
                })
            };
            match result {
                Ok(found) => {
                    let result = Ok(found.into_iter().flatten().collect());
                    tell(to_ingest, FromCluster::Presence { token, result });
                }
                Err(err) => {
                    let result = Err(err.to_string());
                    tell(to_ingest, FromCluster::Presence { token, result });
                    for (token, ..) in reads {
                        let result = Err("the connection to Redis was lost".to_owned());
                        tell(to_ingest, FromCluster::Presence { token, result });
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Answers the reads while Redis is unreachable; what was to be written is dropped (the
    /// next refresh writes it again).
    fn refuse(self, to_ingest: &queue::Sender<FromCluster>) {
        for (token, ..) in self.reads {
            let result = Err("Redis is unreachable".to_owned());
            tell(to_ingest, FromCluster::Presence { token, result });
        }
    }
}

/// The cluster's epoch (set to `proposed` if Redis has none) and its latest seq.
fn cluster_position(
    connection: &mut redis::Connection,
    proposed: &str,
) -> redis::RedisResult<(String, u64)> {
    let _: bool = redis::cmd("SET")
        .arg(EPOCH_KEY)
        .arg(proposed)
        .arg("NX")
        .query(connection)
        .map(|reply: Option<String>| reply.is_some())?;
    let (epoch, seq): (String, Option<u64>) = redis::pipe()
        .get(EPOCH_KEY)
        .get(SEQ_KEY)
        .query(connection)?;
    Ok((epoch, seq.unwrap_or(0)))
}

/// A `ReadLog` request.
struct LogRead {
    token: u64,
    after: u64,
    up_to: u64,
}

/// A publish as the command thread sends it: one message, or a batch as one command.
enum Publish {
    One(PublishRequest),
    Batch(BatchRequest),
}

impl Publish {
    fn answer_by(&self) -> Instant {
        match self {
            Publish::One(publish) => publish.answer_by,
            Publish::Batch(batch) => batch.answer_by,
        }
    }

    /// Appends its script's `EVALSHA` to `packed`; `proposed` is the epoch to take if Redis
    /// has none.
    fn pack(&self, scripts: &Scripts, proposed: &str, log_max: usize, packed: &mut Vec<u8>) {
        let script = match self {
            Publish::One(_) => &scripts.one,
            Publish::Batch(_) => &scripts.batch,
        };
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(script.get_hash())
            .arg(5)
            .arg(EPOCH_KEY)
            .arg(SEQ_KEY)
            .arg(OFFSETS_KEY)
            .arg(LOG_KEY)
            .arg(EVENTS_CHANNEL);
        match self {
            Publish::One(publish) => {
                command
                    .arg(&*publish.channel)
                    .arg(&*publish.data)
                    .arg(publish.ts_ms)
                    .arg(priority_name(publish.priority))
                    .arg(proposed)
                    .arg(log_max);
            }
            Publish::Batch(batch) => {
                assert!(
                    !batch.entries.is_empty(),
                    "the ingest core sends no empty batch"
                );
                command.arg(proposed).arg(log_max);
                for entry in &batch.entries {
                    command
                        .arg(&*entry.channel)
                        .arg(&*entry.data)
                        .arg(entry.ts_ms)
                        .arg(priority_name(entry.priority));
                }
            }
        }
        command.write_packed_command(packed);
    }
}

/// The epoch, seq and offset of one publish from [`PUBLISH_SCRIPT`]'s answer `value`.
fn publish_numbers(value: redis::Value) -> Result<(String, u64, u64), PublishFailure> {
    redis::from_redis_value(value)
        .map_err(|err| PublishFailure::Unknown(format!("Redis answered the script oddly: {err}")))
}

/// The offsets of a batch's `len` messages from [`PUBLISH_BATCH_SCRIPT`]'s answer `value`.
fn batch_offsets(value: redis::Value, len: usize) -> Result<Vec<u64>, PublishFailure> {
    let offsets: Vec<u64> = redis::from_redis_value(value).map_err(|err| {
        PublishFailure::Unknown(format!("Redis answered the batch script oddly: {err}"))
    })?;
    if offsets.len() != len {
        return Err(PublishFailure::Unknown(format!(
            "Redis answered {} offsets for a batch of {len}",
            offsets.len()
        )));
    }
    Ok(offsets)
}

/// Why the command connection was given up: the health that follows, and why.
struct Lost {
    health: Health,
    reason: String,
}

impl From<redis::RedisError> for Lost {
    fn from(err: redis::RedisError) -> Lost {
        Lost {
            health: health_after(&err),
            reason: err.to_string(),
        }
    }
}

/// The command connection, or the way back to one.
enum Link {
    Up(redis::Connection),
    Down(Redial),
}

/// While the command connection is down: the dialing, and the log reads that wait for it
/// (publishes never wait: they are refused).
struct Redial {
    /// A dial is in flight; its outcome comes as [`Inbound::Dialed`].
    dialing: bool,
    /// When to dial next unless a request asks sooner.
    retry_at: Instant,
    /// Failed dials in a row, for the backoff.
    failures: u32,
    /// When the last dial ended (or the connection was lost).
    ended: Instant,
    reads: Vec<LogRead>,
}

impl Redial {
    /// Down from `now`: dial again at once.
    fn now(now: Instant) -> Redial {
        Redial {
            dialing: false,
            retry_at: now,
            failures: 0,
            ended: now,
            reads: Vec::new(),
        }
    }
}

/// The command thread's state.
struct CommandThread {
    settings: Settings,
    node: String,
    /// `redis_timeout_ms`.
    timeout: Duration,
    to_ingest: Arc<queue::Sender<FromCluster>>,
    /// Asks the dialer for a connection.
    dialer: std::sync::mpsc::Sender<()>,
    /// The health the ingest core was last told, so that each change is told once.
    told: Option<Health>,
}

impl CommandThread {
    fn run(mut self, inbox: StdReceiver<Inbound>) {
        let scripts = Scripts::new();
        let mut link = Link::Down(Redial::now(Instant::now()));
        let mut connections = 0;
        let mut next_presence = Instant::now();
        loop {
            let now = Instant::now();
            if let Link::Down(redial) = &mut link {
                if !redial.dialing && now >= redial.retry_at {
                    if self.dialer.send(()).is_err() {
                        return;
                    }
                    redial.dialing = true;
                }
            }
            let wait = match &link {
                Link::Up(_) => next_presence.saturating_duration_since(now),
                // The dial's outcome arrives in the inbox.
                Link::Down(redial) if redial.dialing => PRESENCE_PERIOD,
                Link::Down(redial) => redial.retry_at.saturating_duration_since(now),
            };
            let mut batch = Vec::new();
            let mut weight = 0;
            match inbox.recv_timeout(wait) {
                Ok(first) => {
                    weight += first.weight();
                    batch.push(first);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while weight < PIPELINE_MAX {
                match inbox.try_recv() {
                    Ok(next) => {
                        weight += next.weight();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let mut publishes = Vec::new();
            let mut reads = Vec::new();
            let mut acts = Vec::new();
            let mut resets = Vec::new();
            let mut presence_work = PresenceWork::default();
            let mut probe = false;
            for inbound in batch {
                match inbound {
                    Inbound::Dialed(dialed) => {
                        reads.extend(self.dialed(&mut link, dialed));
                        next_presence = Instant::now();
                    }
                    Inbound::Probe => probe = true,
                    Inbound::Request(ToCluster::Publish(publish)) => {
                        publishes.push(Publish::One(publish))
                    }
                    Inbound::Request(ToCluster::PublishBatch(batch)) => {
                        publishes.push(Publish::Batch(batch))
                    }
                    Inbound::Request(ToCluster::ReadLog {
                        token,
                        after,
                        up_to,
                    }) => reads.push(LogRead {
                        token,
                        after,
                        up_to,
                    }),
                    Inbound::Request(ToCluster::Presence { connections: now }) => connections = now,
                    Inbound::Request(ToCluster::UserAct(act)) => acts.push(act),
                    Inbound::Request(ToCluster::Reset { epoch, seq }) => resets.push((epoch, seq)),
                    Inbound::Request(ToCluster::PresenceEntries(entries)) => {
                        presence_work.entries = Some(entries)
                    }
                    Inbound::Request(ToCluster::ReadPresence {
                        token,
                        channel,
                        nodes,
                    }) => presence_work.reads.push((token, channel, nodes)),
                    Inbound::Request(ToCluster::PresenceDiff(diff)) => {
                        presence_work.diffs.push(diff)
                    }
                }
            }
            // The batch's requests share one round trip's time, so that a request that arrives
            // meanwhile waits at most that long before its turn.
            let deadline = Instant::now() + self.timeout;
            let dead = match &mut link {
                Link::Up(redis) if probe => budget(redis, deadline)
                    .and_then(|()| redis::cmd("PING").query::<String>(redis))
                    .err(),
                _ => None,
            };
            if let Some(err) = dead {
                self.lose(&mut link, err.into());
            }
            let redis = match &mut link {
                Link::Up(redis) => redis,
                Link::Down(redial) => {
                    // Someone wants Redis: dial again soon rather than at the backoff's end.
                    if !publishes.is_empty() || !reads.is_empty() {
                        redial.retry_at = redial.retry_at.min(redial.ended + RETRY_FIRST);
                    }
                    redial.reads.extend(reads);
                    self.refuse_all(publishes);
                    presence_work.refuse(&self.to_ingest);
                    if !acts.is_empty() {
                        tracing::warn!(
                            acts = acts.len(),
                            "user acts dropped: Redis is unreachable"
                        );
                    }
                    continue;
                }
            };
            let presence = (Instant::now() >= next_presence).then(|| {
                next_presence = Instant::now() + PRESENCE_PERIOD;
                connections
            });
            let served = self
                .serve(redis, deadline, &scripts, publishes, reads, presence)
                .and_then(|()| publish_acts(redis, deadline, &acts).map_err(Lost::from))
                .and_then(|()| self.reset(redis, deadline, &resets).map_err(Lost::from))
                .and_then(|()| {
                    presence_work
                        .run(redis, &self.node, deadline, &self.to_ingest)
                        .map_err(Lost::from)
                });
            if let Err(lost) = served {
                self.lose(&mut link, lost);
            }
        }
    }

    /// Takes the dialer's outcome; gives back the log reads that waited for a connection it
    /// brought, and answers them when it brought none.
    fn dialed(
        &mut self,
        link: &mut Link,
        dialed: redis::RedisResult<(redis::Connection, (String, u64))>,
    ) -> Vec<LogRead> {
        let Link::Down(redial) = link else {
            unreachable!("the dialer is asked only while the link is down");
        };
        assert!(redial.dialing, "a dial's outcome follows a dial");
        match dialed {
            Ok((connection, (epoch, seq))) => {
                let reads = std::mem::take(&mut redial.reads);
                *link = Link::Up(connection);
                tell(
                    &self.to_ingest,
                    FromCluster::Position {
                        epoch: epoch.into(),
                        seq,
                    },
                );
                self.tell_health(Health::Ready, "connected, and Redis answers".into());
                reads
            }
            Err(err) => {
                let now = Instant::now();
                redial.dialing = false;
                redial.ended = now;
                redial.retry_at = now + backoff(redial.failures);
                redial.failures += 1;
                let reason = format!("cannot connect to Redis: {err}");
                for read in std::mem::take(&mut redial.reads) {
                    self.fail_read(read, &reason);
                }
                self.tell_health(health_after(&err), reason);
                Vec::new()
            }
        }
    }

    /// Runs [`RESET_SCRIPT`] for each reset asked (one, in practice) and tells the ingest core
    /// where the cluster is now. A reset asked while Redis is unreachable is dropped: the node
    /// asks again when it sees the loss again, at its next connect.
    fn reset(
        &self,
        redis: &mut redis::Connection,
        deadline: Instant,
        resets: &[(Box<str>, u64)],
    ) -> redis::RedisResult<()> {
        for (epoch, node_seq) in resets {
            budget(redis, deadline)?;
            let (now, seq): (String, u64) = redis::Script::new(RESET_SCRIPT)
                .key(EPOCH_KEY)
                .key(SEQ_KEY)
                .key(OFFSETS_KEY)
                .key(LOG_KEY)
                .arg(&**epoch)
                .arg(*node_seq)
                .arg(&*crate::clock::new_epoch())
                .invoke(redis)?;
            tell(
                &self.to_ingest,
                FromCluster::Reset {
                    epoch: now.into(),
                    seq,
                },
            );
        }
        Ok(())
    }

    /// Gives up the connection: every later publish is refused until a dial brings another.
    fn lose(&mut self, link: &mut Link, lost: Lost) {
        *link = Link::Down(Redial::now(Instant::now()));
        self.tell_health(lost.health, lost.reason);
    }

    /// Tells the ingest core the command connection's health, when it changed.
    fn tell_health(&mut self, health: Health, reason: String) {
        if self.told == Some(health) {
            return;
        }
        self.told = Some(health);
        match health {
            Health::Ready => tracing::info!(%reason, "Redis command connection ready"),
            Health::Stalled => {
                tracing::warn!(%reason, "Redis stalled: refusing publishes until it answers")
            }
            Health::Down => {
                tracing::warn!(%reason, "Redis command connection down: refusing publishes, retrying")
            }
        }
        tell(&self.to_ingest, FromCluster::Health { health, reason });
    }

    /// Answers `publish` with Redis's answer to its script (`Ok`, not an error) or why it has
    /// none, and queues the answer for the ingest core (the caller wakes it).
    fn answer(&self, publish: Publish, reply: Result<redis::Value, PublishFailure>) {
        let message = match publish {
            Publish::One(publish) => {
                let result = reply
                    .and_then(publish_numbers)
                    .map(|(epoch, seq, offset)| Numbered {
                        epoch: epoch.into(),
                        seq,
                        offset,
                        ts_ms: publish.ts_ms,
                        priority: publish.priority,
                        channel: publish.channel,
                        data: publish.data,
                    });
                FromCluster::Published {
                    token: publish.token,
                    result,
                }
            }
            Publish::Batch(batch) => FromCluster::PublishedBatch {
                token: batch.token,
                result: reply.and_then(|value| batch_offsets(value, batch.entries.len())),
            },
        };
        queue_for_ingest(&self.to_ingest, message);
    }

    /// Refuses every publish of `publishes`, unsent, while the connection is down.
    fn refuse_all(&self, publishes: Vec<Publish>) {
        if publishes.is_empty() {
            return;
        }
        let reason = match self.told {
            Some(Health::Stalled) => format!(
                "Redis has not answered within redis_timeout_ms = {}; not sent",
                self.timeout.as_millis()
            ),
            _ => "Redis is unreachable; not sent".to_owned(),
        };
        for publish in publishes {
            self.answer(publish, Err(PublishFailure::Refused(reason.clone())));
        }
        self.to_ingest.wake();
    }

    fn fail_read(&self, read: LogRead, reason: &str) {
        tell(
            &self.to_ingest,
            FromCluster::Log {
                token: read.token,
                result: Err(reason.to_owned()),
            },
        );
    }

    /// Does what the requests taken together ask on the live connection: the publishes (a
    /// batch is one) in one pipeline (each answered by its `answer_by`), then the log reads, then the presence refresh when
    /// `presence` (the connection count) is given, all by `deadline`. Every request is
    /// answered whatever happens; `Err` means the connection is no longer usable.
    fn serve(
        &self,
        redis: &mut redis::Connection,
        deadline: Instant,
        scripts: &Scripts,
        publishes: Vec<Publish>,
        reads: Vec<LogRead>,
        presence: Option<usize>,
    ) -> Result<(), Lost> {
        let mut outcome = self.publish_all(redis, scripts, publishes);
        let mut reads = reads.into_iter();
        if outcome.is_ok() {
            for read in reads.by_ref() {
                let depth_max = self.settings.json_depth_max;
                let result = budget(redis, deadline)
                    .and_then(|()| read_log(redis, read.after, read.up_to, depth_max));
                match result {
                    Ok(entries) => tell(
                        &self.to_ingest,
                        FromCluster::Log {
                            token: read.token,
                            result: Ok(entries),
                        },
                    ),
                    Err(err) => {
                        self.fail_read(read, &err.to_string());
                        outcome = Err(err.into());
                        break;
                    }
                }
            }
        }
        for read in reads {
            self.fail_read(read, "the connection to Redis was lost");
        }
        if let (Ok(()), Some(connections)) = (&outcome, presence) {
            match self.presence(redis, connections, deadline) {
                Ok(nodes) => tell(&self.to_ingest, FromCluster::Nodes(nodes)),
                Err(err) => {
                    tracing::warn!(error = %err, "Redis presence update failed");
                    outcome = Err(err.into());
                }
            }
        }
        outcome
    }

    /// Runs the publish script for every request (a batch's for a batch) in one pipeline and
    /// answers each by its `answer_by`: its numbers; refused, when its time ran out before it
    /// was sent or Redis refused it before running; unknown, when it was sent and no answer
    /// came in time.
    fn publish_all(
        &self,
        redis: &mut redis::Connection,
        scripts: &Scripts,
        publishes: Vec<Publish>,
    ) -> Result<(), Lost> {
        if publishes.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let (late, publishes): (Vec<_>, Vec<_>) = publishes
            .into_iter()
            .partition(|publish| publish.answer_by() <= now);
        for publish in late {
            let reason = "it waited out redis_timeout_ms behind another round trip; not sent";
            self.answer(publish, Err(PublishFailure::Refused(reason.into())));
        }
        let outcome = self.send_and_answer(redis, scripts, publishes);
        // One wake-up for the whole pipeline's answers.
        self.to_ingest.wake();
        outcome
    }

    fn send_and_answer(
        &self,
        redis: &mut redis::Connection,
        scripts: &Scripts,
        publishes: Vec<Publish>,
    ) -> Result<(), Lost> {
        let Some(first) = publishes.first() else {
            return Ok(());
        };
        let proposed = crate::clock::new_epoch();
        let mut packed = Vec::new();
        for publish in &publishes {
            publish.pack(scripts, &proposed, self.settings.log_max, &mut packed);
        }
        // Answers come in the order sent, so the first publish has the earliest deadline.
        let sent =
            budget(redis, first.answer_by()).and_then(|()| redis.send_packed_command(&packed));
        let mut publishes = publishes.into_iter();
        if let Err(err) = sent {
            // A write that failed may have got some of the pipeline to Redis.
            let reason = format!("sending to Redis failed: {err}");
            for publish in publishes {
                self.answer(publish, Err(PublishFailure::Unknown(reason.clone())));
            }
            return Err(err.into());
        }
        let mut outcome = Ok(());
        while let Some(publish) = publishes.next() {
            let reply = left_until(publish.answer_by())
                .and_then(|left| redis.set_read_timeout(Some(left)))
                .and_then(|()| redis.recv_response());
            match reply {
                Ok(redis::Value::ServerError(err)) => {
                    if err.code() == "NOSCRIPT" {
                        outcome = Err(Lost {
                            health: Health::Down,
                            reason: "Redis lost the publish scripts (SCRIPT FLUSH or a restart): \
                                     reconnecting to load them"
                                .into(),
                        });
                    } else if WRONG_REDIS.contains(&err.code()) {
                        outcome = Err(Lost {
                            health: Health::Down,
                            reason: format!(
                                "this Redis no longer serves corecast ({err}): finding the one \
                                 that does"
                            ),
                        });
                    }
                    self.answer(publish, Err(failure_of(&err)));
                }
                Ok(value) => self.answer(publish, Ok(value)),
                Err(err) => {
                    let reason = if err.is_timeout() {
                        format!(
                            "Redis did not answer within redis_timeout_ms = {}",
                            self.timeout.as_millis()
                        )
                    } else {
                        format!("the connection to Redis broke before its answer: {err}")
                    };
                    self.answer(publish, Err(PublishFailure::Unknown(reason.clone())));
                    for publish in publishes {
                        self.answer(publish, Err(PublishFailure::Unknown(reason.clone())));
                    }
                    return Err(err.into());
                }
            }
        }
        outcome
    }

    /// Refreshes this node's presence and reads every node's, by `deadline`.
    fn presence(
        &self,
        redis: &mut redis::Connection,
        connections: usize,
        deadline: Instant,
    ) -> redis::RedisResult<Vec<NodeInfo>> {
        let info = NodeInfo {
            node: self.node.clone(),
            ws: self.settings.ws.clone(),
            connections,
            ts_ms: crate::clock::unix_ms(),
        };
        let key = format!("{NODE_KEY_PREFIX}{}", self.node);
        let text = serde_json::to_string(&info).expect("node info serializes");
        budget(redis, deadline)?;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(text)
            .arg("EX")
            .arg(NODE_TTL_S)
            .query(redis)?;
        budget(redis, deadline)?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{NODE_KEY_PREFIX}*"))
            .query(redis)?;
        let mut nodes = Vec::with_capacity(keys.len());
        if !keys.is_empty() {
            budget(redis, deadline)?;
            let texts: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(redis)?;
            nodes.extend(
                texts
                    .into_iter()
                    .flatten()
                    .filter_map(|text| serde_json::from_str(&text).ok()),
            );
        }
        nodes.sort_by(|a: &NodeInfo, b| a.node.cmp(&b.node));
        Ok(nodes)
    }
}

/// Log entries with seq in `after + 1 ..= up_to` (at most [`LOG_READ_MAX`]). An entry whose
/// data nests deeper than its event could (`depth_max - 1`, see [`parse_event`]) is left out,
/// as one the log no longer holds would be.
fn read_log(
    redis: &mut redis::Connection,
    after: u64,
    up_to: u64,
    depth_max: usize,
) -> redis::RedisResult<Vec<Numbered>> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(LOG_KEY)
        .arg(format!("{}-0", after + 1))
        .arg(format!("{up_to}-0"))
        .arg("COUNT")
        .arg(LOG_READ_MAX)
        .query(redis)?;
    let mut numbered = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        let seq = id
            .split_once('-')
            .and_then(|(seq, _)| seq.parse().ok())
            .unwrap_or(0);
        let field = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
                .unwrap_or_default()
        };
        if let Err(err) = crate::json::check(field("d").as_bytes(), depth_max - 1) {
            tracing::error!(seq, error = %err, "ignoring a cluster log entry: its data is refused");
            continue;
        }
        let priority = match field("p") {
            "critical" => Priority::Critical,
            "high" => Priority::High,
            _ => Priority::Normal,
        };
        numbered.push(Numbered {
            epoch: field("e").into(),
            seq,
            offset: field("o").parse().unwrap_or(0),
            ts_ms: field("t").parse().unwrap_or(0),
            priority,
            channel: field("c").into(),
            data: field("d").into(),
        });
    }
    Ok(numbered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_act_crosses_redis_as_flat_json_and_back() {
        let act = UserActEvent {
            stream: "$t:acme.$user.ada".into(),
            act: UserAct::Disconnect("bye".into()),
        };
        let text = serde_json::to_string(&act).unwrap();
        assert_eq!(
            text,
            r#"{"stream":"$t:acme.$user.ada","act":"disconnect","value":"bye"}"#
        );
        assert_eq!(serde_json::from_str::<UserActEvent>(&text).unwrap(), act);
        let subscribe = r#"{"stream":"$user.ada","act":"subscribe","value":"quotes.*"}"#;
        assert_eq!(
            serde_json::from_str::<UserActEvent>(subscribe).unwrap().act,
            UserAct::Subscribe("quotes.*".into())
        );
        assert!(serde_json::from_str::<UserActEvent>(r#"{"stream":"x","act":"explode"}"#).is_err());
    }

    #[test]
    fn events_parse_as_the_script_writes_them() {
        let payload = r#"{"e":"00ff","s":12,"o":3,"t":1700000000000,"p":"critical","c":"a.b","d":{"x":[1, 2]}}"#;
        assert_eq!(
            parse_event(payload, 128),
            Ok(Numbered {
                epoch: "00ff".into(),
                seq: 12,
                offset: 3,
                ts_ms: 1_700_000_000_000,
                priority: Priority::Critical,
                channel: "a.b".into(),
                data: r#"{"x":[1, 2]}"#.into(),
            })
        );
        assert!(parse_event("{}", 128).is_err());
    }

    #[test]
    fn an_event_nests_at_most_depth_max_levels_its_own_brace_included() {
        let event = |depth: usize| {
            let data = "[".repeat(depth) + &"]".repeat(depth);
            format!(r#"{{"e":"00ff","s":1,"o":1,"t":1,"p":"normal","c":"a","d":{data}}}"#)
        };
        assert_eq!(
            parse_event(&event(4), 5).map(|event| event.data),
            Ok("[[[[]]]]".into())
        );
        assert_eq!(
            parse_event(&event(5), 5),
            Err(
                "a {corecast}:events message is refused: nested deeper than json_depth_max = 5 \
                 (at byte 59)"
                    .into()
            )
        );
    }

    /// The script's error answer `line` (RESP), as the bridge reads it.
    fn failure(line: &str) -> PublishFailure {
        match redis::parse_redis_value(format!("{line}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(err)) => failure_of(&err),
            other => panic!("expected an error answer, got {other:?}"),
        }
    }

    #[test]
    fn errors_before_the_script_ran_are_refusals_and_others_unknown() {
        for refused in [
            "-NOSCRIPT No matching script. Please use EVAL.",
            "-BUSY Redis is busy running a script.",
            "-LOADING Redis is loading the dataset in memory",
            "-OOM command not allowed when used memory > 'maxmemory'. script: x, on @user_script:8.",
            "-READONLY You can't write against a read only replica.",
        ] {
            assert!(
                matches!(failure(refused), PublishFailure::Refused(_)),
                "{refused}"
            );
        }
        for unknown in [
            "-ERR user_script:12: Script attempted to access nonexistent global variable",
            "-NOPERM this user has no permissions to run the 'xadd' command",
        ] {
            assert!(
                matches!(failure(unknown), PublishFailure::Unknown(_)),
                "{unknown}"
            );
        }
    }

    #[test]
    fn a_batch_script_error_is_a_refusal_only_before_it_ran() {
        // As Redis 7 answers the batch script: out of memory at its first write, and a
        // counter that something else made not a number.
        let refused = "-OOM command not allowed when used memory > 'maxmemory'. script: \
                       25295507da9a6fe5b60a47724459922afa224aa5, on @user_script:8.";
        assert!(matches!(failure(refused), PublishFailure::Refused(_)));
        let unknown = "-ERR hash value is not an integer script: \
                       25295507da9a6fe5b60a47724459922afa224aa5, on @user_script:11.";
        assert!(matches!(failure(unknown), PublishFailure::Unknown(_)));
    }

    /// `line` (RESP) as the bridge reads an answer.
    fn value(line: &str) -> redis::Value {
        redis::parse_redis_value(line.as_bytes()).expect("RESP")
    }

    #[test]
    fn a_batch_is_answered_with_every_offset_in_order_or_as_unknown() {
        assert_eq!(
            batch_offsets(value("*3\r\n:4\r\n:1\r\n:5\r\n"), 3),
            Ok(vec![4, 1, 5])
        );
        for (odd, len) in [
            ("*3\r\n:4\r\n:1\r\n:5\r\n", 2),
            (":3\r\n", 1),
            ("*1\r\n$1\r\nx\r\n", 1),
        ] {
            assert!(
                matches!(
                    batch_offsets(value(odd), len),
                    Err(PublishFailure::Unknown(_))
                ),
                "{odd:?} for {len}"
            );
        }
    }

    #[test]
    fn a_batch_goes_to_redis_as_one_command() {
        let scripts = Scripts::new();
        let entry = |channel: &str, data: &str| BatchEntry {
            channel: channel.into(),
            data: data.into(),
            priority: Priority::High,
            ts_ms: 7,
        };
        let batch = Publish::Batch(BatchRequest {
            token: 1,
            entries: vec![entry("a.b", "1"), entry("a.c", r#"{"x":2}"#)],
            answer_by: Instant::now(),
        });
        let mut packed = Vec::new();
        batch.pack(&scripts, "ep", 100, &mut packed);
        let mut one = redis::cmd("EVALSHA");
        for arg in [
            scripts.batch.get_hash(),
            "5",
            EPOCH_KEY,
            SEQ_KEY,
            OFFSETS_KEY,
            LOG_KEY,
            EVENTS_CHANNEL,
            "ep",
            "100",
            "a.b",
            "1",
            "7",
            "high",
            "a.c",
            r#"{"x":2}"#,
            "7",
            "high",
        ] {
            one.arg(arg);
        }
        assert_eq!(
            String::from_utf8_lossy(&packed),
            String::from_utf8_lossy(&one.get_packed_command()),
            "one EVALSHA of the batch script, each message's four arguments in order"
        );
    }

    #[test]
    fn the_backoff_doubles_from_the_first_delay_to_the_cap() {
        let delays: Vec<Duration> = (0..8).map(backoff).collect();
        assert_eq!(delays[0], RETRY_FIRST);
        assert_eq!(delays[1], RETRY_FIRST * 2);
        assert_eq!(delays[5], RETRY_FIRST * 32);
        assert_eq!(delays[6], RETRY_CAP, "6.4 s is past the cap");
        assert!(delays.windows(2).all(|pair| pair[0] <= pair[1]));
    }
}
