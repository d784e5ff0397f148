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
//! This module is the bridge: two plain threads, never a glommio executor, so a slow or absent
//! Redis never blocks a broadcast shard. The *command* thread runs the publish script
//! (pipelined: every request waiting is sent in one round trip), log reads and the node's
//! presence; the *events* thread holds the `SUBSCRIBE`. Both reconnect with backoff and tell
//! the ingest core what happened ([`FromCluster`]); the ingest core decides what clients see.
//! Nothing here parses a client's bytes or touches a connection.

use std::sync::mpsc::{Receiver as StdReceiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::ingest::Priority;
use crate::queue::{self, ToIngest};

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
/// Longest wait for Redis on one command or connect; past it the connection counts as lost.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff: doubling from the first, capped.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);
/// Publishes sent to Redis in one pipelined round trip, at most.
const PIPELINE_MAX: usize = 256;
/// Log entries one read returns, at most.
pub const LOG_READ_MAX: usize = 10_000;

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
    /// The answer to a publish: its numbers, or why Redis could not take it.
    Published {
        token: u64,
        result: Result<Numbered, String>,
    },
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

/// Reads one `corecast:events` payload nested at most `depth_max` levels (`json_depth_max`:
/// the event's own `{` is level 1, so every `data` a node with the same limit accepted fits).
pub fn parse_event(payload: &str, depth_max: usize) -> Result<Numbered, String> {
    crate::json::check(payload.as_bytes(), depth_max)
        .map_err(|err| format!("a corecast:events message is refused: {err}"))?;
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

/// The bridge's two threads and the ingest core's way to them.
pub struct Bridge {
    requests: SyncSender<ToCluster>,
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
        let (requests, inbox) = std::sync::mpsc::sync_channel(config.queue_items_max);
        let to_ingest = Arc::new(to_ingest);
        // Both threads parse JSON from Redis (events, log entries) up to this depth.
        let depth_max = config.json_depth_max;
        let stack_bytes = crate::json::thread_stack_bytes(depth_max);
        let commands = {
            let client = client.clone();
            let to_ingest = to_ingest.clone();
            std::thread::Builder::new()
                .name("corecast-redis".into())
                .stack_size(stack_bytes)
                .spawn(move || {
                    CommandThread {
                        client,
                        config,
                        node,
                        to_ingest,
                    }
                    .run(inbox)
                })
                .map_err(|err| format!("cannot start the Redis command thread: {err}"))?
        };
        let events = std::thread::Builder::new()
            .name("corecast-redis-events".into())
            .stack_size(stack_bytes)
            .spawn(move || run_events(&client, &to_ingest, depth_max))
            .map_err(|err| format!("cannot start the Redis events thread: {err}"))?;
        Ok(Bridge {
            requests,
            threads: vec![commands, events],
        })
    }

    /// A handle for the ingest core to send requests with.
    pub fn requests(&self) -> SyncSender<ToCluster> {
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

/// Sleeps the reconnect delay after `failures` failed attempts in a row.
fn backoff(failures: u32) {
    let delay = RETRY_FIRST.saturating_mul(1 << failures.min(8));
    std::thread::sleep(delay.min(RETRY_CAP));
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let connection = client.get_connection_with_timeout(REDIS_TIMEOUT)?;
    connection.set_read_timeout(Some(REDIS_TIMEOUT))?;
    connection.set_write_timeout(Some(REDIS_TIMEOUT))?;
    Ok(connection)
}

/// The events thread: `SUBSCRIBE`, then the cluster's position, then every event, forever.
fn run_events(client: &redis::Client, to_ingest: &queue::Sender<ToIngest>, depth_max: usize) {
    let mut failures = 0;
    loop {
        let outcome = subscribe_and_forward(client, to_ingest, depth_max, &mut failures);
        let reason = match outcome {
            Ok(()) => "the events subscription ended".to_owned(),
            Err(err) => err.to_string(),
        };
        tracing::warn!(%reason, "Redis events subscription lost; serving local connections, retrying");
        tell(to_ingest, FromCluster::Lost { reason });
        backoff(failures);
        failures += 1;
    }
}

fn subscribe_and_forward(
    client: &redis::Client,
    to_ingest: &queue::Sender<ToIngest>,
    depth_max: usize,
    failures: &mut u32,
) -> redis::RedisResult<()> {
    let mut events = connect(client)?;
    let mut state = connect(client)?;
    let mut pubsub = events.as_pubsub();
    pubsub.subscribe(EVENTS_CHANNEL)?;
    // Subscribed first, so nothing published after this read is missed.
    let (epoch, seq) = cluster_position(&mut state, &crate::runtime::new_epoch())?;
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
        match parse_event(&payload, depth_max) {
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

/// The command thread's state.
struct CommandThread {
    client: redis::Client,
    config: Arc<Config>,
    node: String,
    to_ingest: Arc<queue::Sender<ToIngest>>,
}

impl CommandThread {
    fn run(self, inbox: StdReceiver<ToCluster>) {
        let script = redis::Script::new(PUBLISH_SCRIPT);
        let mut connection: Option<redis::Connection> = None;
        let mut failures = 0;
        let mut connections = 0;
        let mut next_presence = Instant::now();
        loop {
            let first = match inbox.recv_timeout(PRESENCE_PERIOD) {
                Ok(first) => Some(first),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: Vec<ToCluster> = first.into_iter().collect();
            while batch.len() < PIPELINE_MAX {
                match inbox.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            if connection.is_none() {
                // Loaded once per connection; EVALSHA after that.
                let connected = connect(&self.client).and_then(|mut fresh| {
                    script.prepare_invoke().load(&mut fresh)?;
                    Ok(fresh)
                });
                match connected {
                    Ok(fresh) => {
                        connection = Some(fresh);
                        failures = 0;
                    }
                    Err(err) => {
                        self.fail_all(batch, &format!("Redis is unreachable: {err}"));
                        backoff(failures);
                        failures += 1;
                        continue;
                    }
                }
            }
            let redis = connection.as_mut().expect("connected above");
            let mut publishes = Vec::new();
            for request in batch {
                match request {
                    ToCluster::Publish(publish) => publishes.push(publish),
                    ToCluster::Presence { connections: now } => connections = now,
                    ToCluster::ReadLog {
                        token,
                        after,
                        up_to,
                    } => {
                        let depth_max = self.config.json_depth_max;
                        let result =
                            read_log(redis, after, up_to, depth_max).map_err(|err| err.to_string());
                        tell(&self.to_ingest, FromCluster::Log { token, result });
                    }
                }
            }
            if let Err(err) = self.publish_all(redis, &script, publishes) {
                tracing::warn!(error = %err, "Redis command connection lost; retrying");
                connection = None;
                continue;
            }
            if Instant::now() >= next_presence {
                next_presence = Instant::now() + PRESENCE_PERIOD;
                match self.presence(redis, connections) {
                    Ok(nodes) => tell(&self.to_ingest, FromCluster::Nodes(nodes)),
                    Err(err) => {
                        tracing::warn!(error = %err, "Redis presence update failed");
                        connection = None;
                    }
                }
            }
        }
    }

    /// Runs the publish script for every request in one pipeline and answers each.
    fn publish_all(
        &self,
        redis: &mut redis::Connection,
        script: &redis::Script,
        publishes: Vec<PublishRequest>,
    ) -> redis::RedisResult<()> {
        if publishes.is_empty() {
            return Ok(());
        }
        let proposed = crate::runtime::new_epoch();
        let mut pipe = redis::pipe();
        for publish in &publishes {
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
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
                .arg(self.config.cluster_log_max);
        }
        let replies: Result<Vec<(String, u64, u64)>, _> = pipe.query(redis);
        match replies {
            Ok(replies) => {
                for (publish, (epoch, seq, offset)) in publishes.into_iter().zip(replies) {
                    let numbered = Numbered {
                        epoch: epoch.into(),
                        seq,
                        offset,
                        ts_ms: publish.ts_ms,
                        priority: publish.priority,
                        channel: publish.channel,
                        data: publish.data,
                    };
                    queue_for_ingest(
                        &self.to_ingest,
                        FromCluster::Published {
                            token: publish.token,
                            result: Ok(numbered),
                        },
                    );
                }
                // One wake-up for the whole pipeline's answers.
                self.to_ingest.wake();
                Ok(())
            }
            Err(err) => {
                let reason = format!("Redis did not take the publish: {err}");
                self.fail_all(
                    publishes.into_iter().map(ToCluster::Publish).collect(),
                    &reason,
                );
                Err(err)
            }
        }
    }

    /// Answers every request of `batch` with `reason`.
    fn fail_all(&self, batch: Vec<ToCluster>, reason: &str) {
        for request in batch {
            match request {
                ToCluster::Publish(publish) => tell(
                    &self.to_ingest,
                    FromCluster::Published {
                        token: publish.token,
                        result: Err(reason.to_owned()),
                    },
                ),
                ToCluster::ReadLog { token, .. } => tell(
                    &self.to_ingest,
                    FromCluster::Log {
                        token,
                        result: Err(reason.to_owned()),
                    },
                ),
                ToCluster::Presence { .. } => {}
            }
        }
    }

    /// Refreshes this node's presence and reads every node's.
    fn presence(
        &self,
        redis: &mut redis::Connection,
        connections: usize,
    ) -> redis::RedisResult<Vec<NodeInfo>> {
        let info = NodeInfo {
            node: self.node.clone(),
            ws: self.config.listen.to_string(),
            connections,
            ts_ms: crate::ws::conn::unix_ms(),
        };
        let key = format!("{NODE_KEY_PREFIX}{}", self.node);
        let text = serde_json::to_string(&info).expect("node info serializes");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(text)
            .arg("EX")
            .arg(NODE_TTL_S)
            .query(redis)?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{NODE_KEY_PREFIX}*"))
            .query(redis)?;
        let mut nodes = Vec::with_capacity(keys.len());
        for key in keys {
            let text: Option<String> = redis::cmd("GET").arg(&key).query(redis)?;
            if let Some(node) = text.and_then(|text| serde_json::from_str(&text).ok()) {
                nodes.push(node);
            }
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

/// Sends `request` without waiting: `Err` when the bridge's queue is full (the ingest core
/// answers the publish with 503).
pub fn try_send(requests: &SyncSender<ToCluster>, request: ToCluster) -> Result<(), ToCluster> {
    requests.try_send(request).map_err(|err| match err {
        TrySendError::Full(request) | TrySendError::Disconnected(request) => request,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
                "a corecast:events message is refused: nested deeper than json_depth_max = 5 \
                 (at byte 59)"
                    .into()
            )
        );
    }
}
