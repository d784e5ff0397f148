//! Cluster mode (`--redis URL`): every node's publishes go through Redis, which numbers them
//! once for the whole cluster, and every node fans out every message locally.
//!
//! Redis holds, under `corecast:`, the cluster's `epoch`, the node-wide `seq` counter (one for
//! the cluster), each channel's `offset`, and the `log`: a stream of every message with the
//! message's `seq` as its entry ID, bounded to `cluster_log_max` entries. One Lua script
//! ([`PUBLISH_SCRIPT`]) assigns a message its seq and offset, appends it to the log and
//! `PUBLISH`es it on `corecast:events`, atomically, so every node receives every message in seq
//! order with the same numbers. Each node's ingest core keeps its own history from that stream,
//! so recovery is exact on any node; what a node missed while cut off it reads back from the
//! log by seq.
//!
//! This module is the bridge: three plain threads, never a glommio executor, so a slow or
//! absent Redis never blocks a broadcast shard. The *command* thread runs the publish script
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
//! is down or stalled, publishes are refused at once, never queued behind the stall.

use std::io;
use std::sync::mpsc::{Receiver as StdReceiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::msg::ToIngest;
use crate::queue;
use corecast_proto::Priority;

/// The channel every node subscribes to.
const EVENTS_CHANNEL: &str = "corecast:events";
const EPOCH_KEY: &str = "corecast:epoch";
const SEQ_KEY: &str = "corecast:seq";
const OFFSETS_KEY: &str = "corecast:offsets";
const LOG_KEY: &str = "corecast:log";
/// Each node's presence: `corecast:node:<id>`, expiring unless refreshed.
const NODE_KEY_PREFIX: &str = "corecast:node:";

/// Seconds a node's presence outlives its last refresh.
const NODE_TTL_S: u64 = 5;
/// How often the command thread refreshes this node's presence and reads the others'.
const PRESENCE_PERIOD: Duration = Duration::from_secs(1);
/// Reconnect backoff: doubling from the first, capped. A request that finds the command
/// connection down dials again no sooner than `RETRY_FIRST` after the last dial ended.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);
/// Publishes sent to Redis in one pipelined round trip, at most.
const PIPELINE_MAX: usize = 256;
/// Log entries one read returns, at most.
pub const LOG_READ_MAX: usize = 10_000;

/// Error codes with which Redis refuses a script before it changed anything, so the publish
/// is certainly not published: it never ran (`NOSCRIPT`, `LOADING`, `BUSY`, `NOAUTH`), or its
/// first write was refused (`OOM`, `MISCONF`, `READONLY`, `NOREPLICAS`, `MASTERDOWN`: Redis 7
/// checks these at a script's first write command, and [`PUBLISH_SCRIPT`] writes nothing
/// before it). Any other error (`ERR` from a failing script, `NOPERM` from an ACL that denies
/// a later command) may come after some of its writes: the outcome is unknown.
const REFUSED_BEFORE_RUNNING: [&str; 9] = [
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
    /// The command connection's health changed; `reason` for the log.
    Health { health: Health, reason: String },
    /// A message from `corecast:events`, in seq order as Redis sent it.
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
}

/// The event published on `corecast:events`, as [`PUBLISH_SCRIPT`] writes it.
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

/// Reads one `corecast:events` payload.
pub fn parse_event(payload: &str) -> Result<Numbered, String> {
    let event: WireEvent = sonic_rs::from_str(payload)
        .map_err(|err| format!("a corecast:events message is not an event: {err}"))?;
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
    /// The dialer's new connection, or why there is none.
    Dialed(redis::RedisResult<redis::Connection>),
    /// The events subscription broke: the command connection, to the same Redis, may be dead
    /// too. It is checked before anything more is sent on it.
    Probe,
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

impl Bridge {
    /// Starts the bridge threads for `url`. `to_ingest` is the ingest core's inbox for the
    /// bridge; `node` names this node in the presence keys. Whenever Redis has no epoch (it
    /// lost its data) a fresh one is proposed: never an old one, or a restarted Redis would
    /// look like the same run of offsets.
    pub fn start(
        config: Arc<Config>,
        url: &str,
        node: String,
        to_ingest: queue::Sender<ToIngest>,
    ) -> Result<Bridge, String> {
        let client = redis::Client::open(url)
            .map_err(|err| format!("redis_url {url:?} is not a Redis URL: {err}"))?;
        let timeout = Duration::from_millis(config.redis_timeout_ms);
        let (requests, inbox) = std::sync::mpsc::sync_channel(config.queue_items_max);
        let (dialer, dials) = std::sync::mpsc::channel();
        let to_ingest = Arc::new(to_ingest);
        let commands = {
            let to_ingest = to_ingest.clone();
            std::thread::Builder::new()
                .name("corecast-redis".into())
                .spawn(move || {
                    CommandThread {
                        config,
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
            let client = client.clone();
            let requests = requests.clone();
            std::thread::Builder::new()
                .name("corecast-redis-dial".into())
                .spawn(move || run_dialer(&client, timeout, &dials, &requests))
                .map_err(|err| format!("cannot start the Redis dialer thread: {err}"))?
        };
        let events = {
            let requests = requests.clone();
            std::thread::Builder::new()
                .name("corecast-redis-events".into())
                .spawn(move || run_events(&client, timeout, &to_ingest, &requests))
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
fn tell(to_ingest: &queue::Sender<ToIngest>, message: FromCluster) {
    queue_for_ingest(to_ingest, message);
    to_ingest.wake();
}

/// `tell` without the wake-up, for a batch: the caller wakes the ingest core once after it.
fn queue_for_ingest(to_ingest: &queue::Sender<ToIngest>, message: FromCluster) {
    let mut message = ToIngest::Cluster(message);
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

/// The dialer thread: opens a command connection, with the publish script loaded, each time
/// the command thread asks, and hands it over. The whole dial has one `timeout`; the script's
/// load is also the proof that Redis answers (a stopped Redis still takes TCP connections).
fn run_dialer(
    client: &redis::Client,
    timeout: Duration,
    asks: &StdReceiver<()>,
    commands: &SyncSender<Inbound>,
) {
    let script = redis::Script::new(PUBLISH_SCRIPT);
    for () in asks {
        let deadline = Instant::now() + timeout;
        let dialed = connect(client, timeout).and_then(|mut fresh| {
            budget(&fresh, deadline)?;
            // Loaded once per connection; EVALSHA after that.
            script.load(&mut fresh)?;
            Ok(fresh)
        });
        if commands.send(Inbound::Dialed(dialed)).is_err() {
            return;
        }
    }
}

/// The events thread: `SUBSCRIBE`, then the cluster's position, then every event, forever.
fn run_events(
    client: &redis::Client,
    timeout: Duration,
    to_ingest: &queue::Sender<ToIngest>,
    commands: &SyncSender<Inbound>,
) {
    let mut failures = 0;
    loop {
        let outcome = subscribe_and_forward(client, timeout, to_ingest, &mut failures);
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
    client: &redis::Client,
    timeout: Duration,
    to_ingest: &queue::Sender<ToIngest>,
    failures: &mut u32,
) -> redis::RedisResult<()> {
    let mut events = connect(client, timeout)?;
    let mut state = connect(client, timeout)?;
    let mut pubsub = events.as_pubsub();
    pubsub.subscribe(EVENTS_CHANNEL)?;
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
        match parse_event(&payload) {
            Ok(event) => tell(to_ingest, FromCluster::Event(event)),
            Err(err) => tracing::error!(error = %err, "ignoring a malformed cluster event"),
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
    config: Arc<Config>,
    node: String,
    /// `redis_timeout_ms`.
    timeout: Duration,
    to_ingest: Arc<queue::Sender<ToIngest>>,
    /// Asks the dialer for a connection.
    dialer: std::sync::mpsc::Sender<()>,
    /// The health the ingest core was last told, so that each change is told once.
    told: Option<Health>,
}

impl CommandThread {
    fn run(mut self, inbox: StdReceiver<Inbound>) {
        let script = redis::Script::new(PUBLISH_SCRIPT);
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
            match inbox.recv_timeout(wait) {
                Ok(first) => batch.push(first),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < PIPELINE_MAX {
                match inbox.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let mut publishes = Vec::new();
            let mut reads = Vec::new();
            let mut probe = false;
            for inbound in batch {
                match inbound {
                    Inbound::Dialed(dialed) => {
                        reads.extend(self.dialed(&mut link, dialed));
                        next_presence = Instant::now();
                    }
                    Inbound::Probe => probe = true,
                    Inbound::Request(ToCluster::Publish(publish)) => publishes.push(publish),
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
                    continue;
                }
            };
            let presence = (Instant::now() >= next_presence).then(|| {
                next_presence = Instant::now() + PRESENCE_PERIOD;
                connections
            });
            let served = self.serve(
                redis,
                deadline,
                script.get_hash(),
                publishes,
                reads,
                presence,
            );
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
        dialed: redis::RedisResult<redis::Connection>,
    ) -> Vec<LogRead> {
        let Link::Down(redial) = link else {
            unreachable!("the dialer is asked only while the link is down");
        };
        assert!(redial.dialing, "a dial's outcome follows a dial");
        match dialed {
            Ok(connection) => {
                let reads = std::mem::take(&mut redial.reads);
                *link = Link::Up(connection);
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

    /// Answers `publish` and queues the answer for the ingest core (the caller wakes it).
    fn answer(&self, publish: PublishRequest, result: Result<(String, u64, u64), PublishFailure>) {
        let result = result.map(|(epoch, seq, offset)| Numbered {
            epoch: epoch.into(),
            seq,
            offset,
            ts_ms: publish.ts_ms,
            priority: publish.priority,
            channel: publish.channel,
            data: publish.data,
        });
        queue_for_ingest(
            &self.to_ingest,
            FromCluster::Published {
                token: publish.token,
                result,
            },
        );
    }

    /// Refuses every publish of `publishes`, unsent, while the connection is down.
    fn refuse_all(&self, publishes: Vec<PublishRequest>) {
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

    /// Does what a batch asks on the live connection: the publishes in one pipeline (each
    /// answered by its `answer_by`), then the log reads, then the presence refresh when
    /// `presence` (the connection count) is given, all by `deadline`. Every request is
    /// answered whatever happens; `Err` means the connection is no longer usable.
    fn serve(
        &self,
        redis: &mut redis::Connection,
        deadline: Instant,
        script_hash: &str,
        publishes: Vec<PublishRequest>,
        reads: Vec<LogRead>,
        presence: Option<usize>,
    ) -> Result<(), Lost> {
        let mut outcome = self.publish_all(redis, script_hash, publishes);
        let mut reads = reads.into_iter();
        if outcome.is_ok() {
            for read in reads.by_ref() {
                let result =
                    budget(redis, deadline).and_then(|()| read_log(redis, read.after, read.up_to));
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

    /// Runs the publish script for every request in one pipeline and answers each by its
    /// `answer_by`: its numbers; refused, when its time ran out before it was sent or Redis
    /// refused it before running; unknown, when it was sent and no answer came in time.
    fn publish_all(
        &self,
        redis: &mut redis::Connection,
        script_hash: &str,
        publishes: Vec<PublishRequest>,
    ) -> Result<(), Lost> {
        if publishes.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let (late, publishes): (Vec<_>, Vec<_>) = publishes
            .into_iter()
            .partition(|publish| publish.answer_by <= now);
        for publish in late {
            let reason = "it waited out redis_timeout_ms behind another round trip; not sent";
            self.answer(publish, Err(PublishFailure::Refused(reason.into())));
        }
        let outcome = self.send_and_answer(redis, script_hash, publishes);
        // One wake-up for the whole pipeline's answers.
        self.to_ingest.wake();
        outcome
    }

    fn send_and_answer(
        &self,
        redis: &mut redis::Connection,
        script_hash: &str,
        publishes: Vec<PublishRequest>,
    ) -> Result<(), Lost> {
        let Some(first) = publishes.first() else {
            return Ok(());
        };
        let proposed = crate::clock::new_epoch();
        let mut packed = Vec::new();
        for publish in &publishes {
            redis::cmd("EVALSHA")
                .arg(script_hash)
                .arg(5)
                .arg(EPOCH_KEY)
                .arg(SEQ_KEY)
                .arg(OFFSETS_KEY)
                .arg(LOG_KEY)
                .arg(EVENTS_CHANNEL)
                .arg(&*publish.channel)
                .arg(&*publish.data)
                .arg(publish.ts_ms)
                .arg(priority_name(publish.priority))
                .arg(&*proposed)
                .arg(self.config.cluster_log_max)
                .write_packed_command(&mut packed);
        }
        // Answers come in the order sent, so the first publish has the earliest deadline.
        let sent = budget(redis, first.answer_by).and_then(|()| redis.send_packed_command(&packed));
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
            let reply = left_until(publish.answer_by)
                .and_then(|left| redis.set_read_timeout(Some(left)))
                .and_then(|()| redis.recv_response());
            match reply {
                Ok(redis::Value::ServerError(err)) => {
                    if err.code() == "NOSCRIPT" {
                        outcome = Err(Lost {
                            health: Health::Down,
                            reason: "Redis lost the publish script (SCRIPT FLUSH or a restart): \
                                     reconnecting to load it"
                                .into(),
                        });
                    }
                    self.answer(publish, Err(failure_of(&err)));
                }
                Ok(value) => {
                    let numbers = redis::from_redis_value(value).map_err(|err| {
                        PublishFailure::Unknown(format!("Redis answered the script oddly: {err}"))
                    });
                    self.answer(publish, numbers);
                }
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
            ws: self.config.listen.to_string(),
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

/// Log entries with seq in `after + 1 ..= up_to` (at most [`LOG_READ_MAX`]).
fn read_log(
    redis: &mut redis::Connection,
    after: u64,
    up_to: u64,
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
    fn events_parse_as_the_script_writes_them() {
        let payload = r#"{"e":"00ff","s":12,"o":3,"t":1700000000000,"p":"critical","c":"a.b","d":{"x":[1, 2]}}"#;
        assert_eq!(
            parse_event(payload),
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
        assert!(parse_event("{}").is_err());
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
    fn the_backoff_doubles_from_the_first_delay_to_the_cap() {
        let delays: Vec<Duration> = (0..8).map(backoff).collect();
        assert_eq!(delays[0], RETRY_FIRST);
        assert_eq!(delays[1], RETRY_FIRST * 2);
        assert_eq!(delays[5], RETRY_FIRST * 32);
        assert_eq!(delays[6], RETRY_CAP, "6.4 s is past the cap");
        assert!(delays.windows(2).all(|pair| pair[0] <= pair[1]));
    }
}
