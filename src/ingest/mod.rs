//! The ingest core: the control plane, the one sequencer of offsets, and where frames are encoded.
//!
//! Every publish, from the HTTP API or from a client's `publish` command relayed by its shard,
//! becomes a `Job` in one of three priority [`lanes`]. The sequencer task takes `critical` before
//! `high` before `normal` (decided before an offset is assigned, so offsets always follow the
//! order of delivery), assigns the channel's next offset, encodes the frame once, and pushes it
//! to each shard whose interest matches the channel. Shards announce interest by pattern, and the
//! ingest core's [`routes`] use the same [`Registry`](crate::registry::Registry) the shards use,
//! keyed by shard.
//!
//! Each delivery carries the `Instant` its publish was accepted; every shard it was routed to
//! reports its fan-out time back, and the ingest core records the slowest into the overall
//! fan-out latency histogram (see [`fanout`] and [`metrics`]) once all of them have.
//!
//! The [`sequencer`] also keeps every channel's bounded [`history`] and answers recoveries (a
//! `subscribe` with `since`) as one more job in the critical lane: handled between two
//! publishes, its snapshot of history and the shard's queue order together give the client
//! every missed message once, then every later one live. A sweep every
//! `CHANNELS_SWEEP_INTERVAL` (100 ms) forgets channels with no history left and no route (no shard
//! subscribed), `channels_sweep_max` slots at a time, so that `channels_max` bounds the channels
//! live, not those ever published to.
//!
//! A `/v1/publish/batch` is one job: the sequencer numbers all of its messages in a row or, when
//! it cannot take them all (a channel past `channels_max`), none; what is checked at the door
//! (the tenants' rates, room in the lanes) is checked for the whole batch too. In cluster mode
//! the batch goes to Redis as one request, numbered in one script run, and has one answer.
//!
//! This core owns all cross-shard state; it must never touch a connection, and it never waits on
//! a shard except for room in that shard's queue.
//!
//! [`IngestCore`] is one owner per concern, each with its own fields, touched by its own methods
//! only: [`lanes`] (the work waiting, by priority), [`sequencer`] (epoch, seq, offsets, history,
//! encode-once, recoveries), [`routes`] (which shards subscribe to what), [`fanout`] (the reports
//! awaited and the overall fan-out latency), [`queries`] (questions to every shard),
//! [`presence`] (presence answers and the batched join/leave diffs),
//! [`tenants`] (publish limits), [`admission`] (connection limits), [`cluster`] (cluster mode's
//! link) and [`api::Plane`] (the control plane's accounting). What remains in `IngestCore` is
//! the wiring between them: the shards' queues, the tasks that drain the lanes and the inboxes,
//! and the stop protocol; [`Ingest`] is its lifecycle (`start`, `run`, `stop`).

pub mod admission;
pub mod api;
pub mod api_stream;
pub mod cluster;
pub mod encode;
pub mod fanout;
pub mod history;
pub mod lanes;
pub mod metrics;
pub mod presence;
pub mod queries;
pub mod routes;
pub mod sequencer;
pub mod sys_stats;
pub mod tenants;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use serde::Serialize;

use crate::clock::unix_ms;
use crate::cluster::FromCluster;
use crate::config::Config;
use crate::latency::{Buckets, LatencySummary};
use crate::msg::{Answer, QueryKind, Recovered, ShardId, Stamp, ToIngest, ToShard, UserAct};
use crate::notify::Notify;
use crate::queue::{Receiver, Sender};
use crate::ws::command::{self, ErrorCode, ErrorReply, Unrecovered};
use fanout::Fanout;
use lanes::{Batch, BatchOutcome, Job, Lanes, Recovery, Reply, Work};
use queries::Queries;
use routes::Routes;
use sequencer::Sequencer;
use tenants::TenantLimits;

/// How often the sweep of the channel table runs (see [`history::History::sweep`]). With
/// `channels_sweep_max` slots a tick, a table of C channels is gone through every
/// C / channels_sweep_max ticks: 100 s for a million at the default of 1,000, so a channel is
/// forgotten at most that long after it could be.
const CHANNELS_SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// A publish's lane: the protocol's own type.
pub use corecast_proto::Priority;

/// Why a publish was not sequenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The sequencer tracks `channels_max` channels already: 503, retry later or raise the limit.
    ChannelsFull,
    /// The lanes are full: 503, the server is overloaded; retry with backoff.
    Overloaded,
    /// `fanout_queued_max` publishes are held for fan-out already (the shards fan out slower
    /// than they come): 503 `overloaded`, retry after `Retry-After`.
    Backlogged,
    /// The server is shutting down: 503.
    Stopping,
    /// Cluster mode, and the publish was certainly not published (never sent to Redis, or
    /// refused by it before running): 503, retry with backoff.
    ClusterUnavailable,
    /// Cluster mode, and the publish was sent to Redis but no answer came (none within
    /// `redis_timeout_ms`, or the connection broke, or the script failed while running): it
    /// may or may not be published (a batch: whole or not at all). 504: look for it in history
    /// (or let receivers drop duplicates) before publishing it again.
    OutcomeUnknown,
    /// Its tenant is over `tenant_publishes_per_s`: 429 (`rate_limited`), retry after
    /// `retry_ms`.
    RateLimited { retry_ms: u64 },
    /// A batch holds more messages of one tenant than `tenant_publishes_per_s` lets it publish
    /// at once: 413 (`batch_too_large`), split the batch.
    BatchOverRate { messages: usize },
}

impl PublishError {
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::ChannelsFull => "channels_full",
            PublishError::Overloaded | PublishError::Backlogged => "overloaded",
            PublishError::Stopping => "shutting_down",
            PublishError::ClusterUnavailable => "cluster_unavailable",
            PublishError::OutcomeUnknown => "outcome_unknown",
            PublishError::RateLimited { .. } => "rate_limited",
            PublishError::BatchOverRate { .. } => "batch_too_large",
        }
    }

    /// The HTTP status of the control plane's answer.
    pub fn status(&self) -> http::StatusCode {
        match self {
            PublishError::RateLimited { .. } => http::StatusCode::TOO_MANY_REQUESTS,
            // Redis, upstream of this server, gave no answer in time: the publish may have
            // happened, so it is not the "try again" of a 503.
            PublishError::OutcomeUnknown => http::StatusCode::GATEWAY_TIMEOUT,
            PublishError::BatchOverRate { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            _ => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn message(&self, config: &Config) -> String {
        match self {
            PublishError::ChannelsFull => format!(
                "the server already tracks channels_max = {} channels",
                config.channels_max
            ),
            PublishError::RateLimited { retry_ms } => format!(
                "this tenant publishes more than tenant_publishes_per_s = {} a second; \
                 retry in {retry_ms} ms",
                config.tenant_publishes_per_s
            ),
            PublishError::Overloaded => "the publish lanes are full; retry later".into(),
            PublishError::Backlogged => format!(
                "the server holds fanout_queued_max = {} publishes not yet fanned out (they \
                 come faster than its shards deliver them); retry in a second, or slow down",
                config.fanout_queued_max
            ),
            PublishError::Stopping => "the server is shutting down".into(),
            PublishError::ClusterUnavailable => {
                "Redis is unreachable or stalled, so the cluster could not number this publish: \
                 it was not published; retry later"
                    .into()
            }
            PublishError::OutcomeUnknown => format!(
                "Redis gave no answer to this publish (none within redis_timeout_ms = {} ms, or \
                 its connection broke): it may or may not have been published, and Redis may \
                 still run it when it resumes; look for it in GET /v1/history before \
                 publishing it again",
                config.redis_timeout_ms
            ),
            PublishError::BatchOverRate { messages } => format!(
                "the batch holds {messages} messages of one tenant, more than \
                 tenant_publishes_per_s = {} lets it publish at once; split the batch",
                config.tenant_publishes_per_s
            ),
        }
    }

    /// The message of a refused batch. Every refusal comes before any of its messages is
    /// numbered but `outcome_unknown` (cluster mode), after which Redis may have numbered the
    /// batch: all of it, as it runs a batch as one script (see [`cluster`]), or none.
    pub fn batch_message(&self, config: &Config) -> String {
        match self {
            PublishError::OutcomeUnknown => format!(
                "Redis gave no answer to this batch (none within redis_timeout_ms = {} ms, or \
                 its connection broke, or its script failed while running): it may or may not \
                 have been published, but whole or not at all, as Redis runs a batch as one \
                 script, and Redis may still run it when it resumes; look for its messages in \
                 GET /v1/history before publishing it again",
                config.redis_timeout_ms
            ),
            _ => format!(
                "nothing of the batch was published: {}",
                self.message(config)
            ),
        }
    }
}

/// The ingest core's view of the settings it runs by, read once at start from the flat
/// [`Config`] (as [`crate::cluster::Settings`] is the bridge's): each owner is built with its
/// limits from here. The control plane ([`api`]), the namespaces of [`history`], [`admission`]
/// and the messages of [`PublishError`] read the whole config still: between them they use
/// most of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `queue_items_max`: publishes the lanes hold at most, and (two queues' worth, see
    /// [`fanout`]) publishes awaiting fan-out reports.
    pub queue_items_max: usize,
    /// `queue_batch_max`: what one wake-up of the sequencer or of an inbox's drain takes
    /// before it yields.
    pub batch_max: usize,
    /// `fanout_queued_max`: publishes held for fan-out (in the lanes, or awaiting a shard's
    /// report) past which a non-critical one is refused.
    pub fanout_queued_max: usize,
    /// `tenant_publishes_per_s`: each tenant's publishes a second; 0 for no limit.
    pub tenant_publishes_per_s: u32,
    /// `channels_sweep_max`: channel slots one sweep or reclaim examines.
    pub channels_sweep_max: usize,
    /// `recovery_messages_max` and `outbox_bytes_max`: what one recovery sends at most.
    pub recovery_messages_max: usize,
    pub recovery_bytes_max: usize,
    /// `permessage_deflate`: each frame gets its compressed twin.
    pub deflate: bool,
    /// `redis_timeout_ms`: by when the bridge answers a publish (cluster mode).
    pub redis_timeout: Duration,
    /// `history_messages_max`: how much of the cluster's log a joining node reads back, at
    /// least one message.
    pub preload_messages_max: usize,
}

impl Settings {
    /// The ingest core's view of `config`.
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            queue_items_max: config.queue_items_max,
            batch_max: config.queue_batch_max,
            fanout_queued_max: config.fanout_queued_max,
            tenant_publishes_per_s: config.tenant_publishes_per_s,
            channels_sweep_max: config.channels_sweep_max,
            recovery_messages_max: config.recovery_messages_max,
            recovery_bytes_max: config.outbox_bytes_max,
            deflate: config.permessage_deflate,
            redis_timeout: Duration::from_millis(config.redis_timeout_ms),
            preload_messages_max: config.history_messages_max.max(1),
        }
    }
}

/// The ingest core's state, shared by its tasks on its one core: one owner per concern, each
/// touching only its own fields; the methods here wire them together.
pub struct IngestCore {
    pub config: Arc<Config>,
    /// What of `config` the core itself runs by.
    settings: Settings,
    /// Each shard's queue, by [`ShardId`].
    shards: Vec<Sender<ToShard>>,
    /// Work waiting for the sequencer, by priority.
    lanes: Lanes,
    /// The epoch, the seq, every channel's offsets and history.
    sequencer: Sequencer,
    /// Which shards have a subscriber to which patterns.
    routes: Routes,
    /// Publishes awaiting their shards' fan-out reports, and the overall fan-out latency.
    fanout: Fanout,
    /// Questions out to every shard.
    queries: Queries,
    /// Joins and leaves waiting for the next `presence_diff` tick.
    diffs: presence::Diffs,
    /// `presence` commands being answered, at most [`presence::PRESENCE_ASKS_MAX`].
    presence_asks: Cell<usize>,
    /// Cluster mode's state; `None` on a single node.
    cluster: Option<cluster::ClusterLink>,
    /// Connections counted against the limits no shard can keep alone.
    admission: RefCell<admission::Admission>,
    /// Each publishing tenant's bucket, for `tenant_publishes_per_s`.
    tenants: TenantLimits,
    /// Publishes refused `overloaded` (see [`IngestCore::fanout_room`]).
    overloaded_refused_total: Cell<u64>,
    /// The stop protocol's first step: told to stop (a signal, or `ToIngest::Shutdown`).
    stopping: Stopping,
    /// The control plane's connections, body memory and refusals.
    pub api: api::Plane,
}

/// Counters of the ingest core itself, for `/v1/stats`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IngestStats {
    pub published_total: u64,
    /// Channels tracked now (live: with history left or a subscriber), at most `channels_max`.
    pub channels: usize,
    /// Channels forgotten because they had neither.
    pub channels_forgotten_total: u64,
    /// Messages and bytes held in history, over all channels.
    pub history_messages: usize,
    pub history_bytes: usize,
    /// `subscribe` commands with `since` answered, and those answered `recovered:false`.
    pub recoveries_total: u64,
    pub recoveries_failed_total: u64,
    pub lanes_len: [usize; 3],
    pub shard_queues_len: usize,
    /// Publishes waiting for some shard's fan-out report.
    pub fanout_pending: usize,
    /// Publishes not timed overall because `fanout_pending` was at its bound.
    pub fanout_untracked_total: u64,
    /// Publishes refused because their tenant was over `tenant_publishes_per_s`.
    pub tenant_publishes_refused_total: u64,
    /// Publishes refused `overloaded`: the lanes were full, or `fanout_queued_max` publishes
    /// were held for fan-out (a batch counts each of its messages).
    pub overloaded_refused_total: u64,
    /// `presence_diff` frames handed to shards (one per channel, tick and shard routed).
    pub presence_diffs_total: u64,
}

/// Whether the ingest core was told to stop, and the wake-up of [`Ingest::run`] when it is.
#[derive(Default)]
struct Stopping {
    /// Set once, never cleared: publishes are refused `shutting_down` from then on.
    stopping: Cell<bool>,
    /// Wakes [`Ingest::run`] when `stopping` is set.
    stopped: Notify,
}

impl Stopping {
    /// Marks the core stopping and wakes [`Ingest::run`]; false if it was already.
    fn begin(&self) -> bool {
        if self.stopping.replace(true) {
            return false;
        }
        self.stopped.notify();
        true
    }

    /// Whether the core was told to stop.
    fn is_set(&self) -> bool {
        self.stopping.get()
    }

    /// Waits until [`Stopping::begin`].
    async fn wait(&self) {
        self.stopped.wait_until(|| self.stopping.get()).await;
    }
}

impl IngestCore {
    pub fn new(
        config: Arc<Config>,
        epoch: Arc<str>,
        shards: Vec<Sender<ToShard>>,
        cluster: Option<crate::cluster::Requests>,
    ) -> Rc<Self> {
        let settings = Settings::from_config(&config);
        Rc::new(IngestCore {
            shards,
            lanes: Lanes::new(settings.queue_items_max),
            sequencer: Sequencer::new(config.clone(), epoch, &settings),
            routes: Routes::default(),
            fanout: Fanout::new(settings.queue_items_max),
            queries: Queries::default(),
            diffs: presence::Diffs::default(),
            presence_asks: Cell::new(0),
            cluster: cluster.map(|requests| {
                cluster::ClusterLink::new(requests, sys_stats::node_token(&config).into())
            }),
            admission: RefCell::default(),
            tenants: TenantLimits::new(settings.tenant_publishes_per_s),
            overloaded_refused_total: Cell::new(0),
            stopping: Stopping::default(),
            api: api::Plane::default(),
            settings,
            config,
        })
    }

    /// The current epoch.
    pub fn epoch(&self) -> Arc<str> {
        self.sequencer.epoch()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_set()
    }

    pub fn stats(&self) -> IngestStats {
        let sequencer = self.sequencer.stats();
        IngestStats {
            published_total: sequencer.published_total,
            channels: sequencer.channels,
            channels_forgotten_total: sequencer.channels_forgotten_total,
            history_messages: sequencer.history_messages,
            history_bytes: sequencer.history_bytes,
            recoveries_total: sequencer.recoveries_total,
            recoveries_failed_total: sequencer.recoveries_failed_total,
            lanes_len: self.lanes.lens(),
            shard_queues_len: self.shards.iter().map(Sender::len).sum(),
            fanout_pending: self.fanout.pending_len(),
            fanout_untracked_total: self.fanout.untracked_total(),
            tenant_publishes_refused_total: self.tenants.refused_total(),
            overloaded_refused_total: self.overloaded_refused_total.get(),
            presence_diffs_total: self.diffs.sent_total(),
        }
    }

    /// Whether `publishes` more of `priority` may be held for fan-out: at most
    /// `fanout_queued_max` wait in the lanes or for a shard's report, except `critical` ones,
    /// which only the lanes' `queue_items_max` bounds. A refusal is counted.
    fn fanout_room(&self, publishes: usize, priority: Priority) -> Result<(), PublishError> {
        let held = self.lanes.lens().iter().sum::<usize>() + self.fanout.pending_len();
        if priority == Priority::Critical || held + publishes <= self.settings.fanout_queued_max {
            return Ok(());
        }
        self.count_overloaded(publishes);
        Err(PublishError::Backlogged)
    }

    fn count_overloaded(&self, publishes: usize) {
        self.overloaded_refused_total
            .set(self.overloaded_refused_total.get() + publishes as u64);
    }

    /// The overall fan-out latency's percentiles.
    pub fn fanout_summary(&self) -> LatencySummary {
        self.fanout.summary()
    }

    /// The overall fan-out latency in Prometheus buckets.
    pub fn fanout_buckets(&self) -> Buckets {
        self.fanout.buckets()
    }

    /// The fan-out latency recorded since the previous call, which starts a new interval.
    pub fn take_interval_fanout(&self) -> LatencySummary {
        self.fanout.take_interval()
    }

    /// Live connections per tenant, sorted by tenant.
    pub fn tenant_connections(&self) -> Vec<(Box<str>, usize)> {
        self.admission.borrow().tenants()
    }

    /// Broadcast shards.
    pub fn shards_len(&self) -> usize {
        self.shards.len()
    }

    /// Queues the server's own publish to `channel` (a `$sys` one): sequenced, kept in history
    /// and delivered like any other, answered to nobody. Dropped when the lanes are full.
    pub fn publish_internal(&self, channel: &str, data: Box<str>, priority: Priority) {
        let job = Job {
            channel: channel.into(),
            data,
            priority,
            ts_ms: unix_ms(),
            accepted: Instant::now(),
            reply: Reply::None,
        };
        if self.stopping.is_set() || self.lanes.enqueue(Work::Publish(job)).is_err() {
            tracing::debug!(channel, "server publish skipped: stopping or lanes full");
        }
    }

    /// Hands a user act (`POST /v1/users/...`) to every shard here, for each connection of
    /// the user whose stream is `stream`; in cluster mode to the bridge instead, which
    /// passes it through Redis to every node, this one included.
    pub async fn act_on_user(&self, stream: Arc<str>, act: UserAct) -> Result<(), PublishError> {
        if self.stopping.is_set() {
            return Err(PublishError::Stopping);
        }
        if self.cluster.is_some() {
            return self.cluster_user_act(stream, act);
        }
        self.deliver_user_act(stream, act).await;
        Ok(())
    }

    /// Gives a user act to every shard of this node.
    async fn deliver_user_act(&self, stream: Arc<str>, act: UserAct) {
        for shard in &self.shards {
            shard
                .push(ToShard::User {
                    stream: stream.clone(),
                    act: act.clone(),
                })
                .await;
            shard.wake();
        }
    }

    /// The latest offset of `channel`, 0 if it has none.
    pub fn channel_offset(&self, channel: &str) -> u64 {
        self.sequencer.offset(channel)
    }

    /// Up to `limit` messages of `channel` after offset `since`, for `GET /v1/history`.
    pub fn history_page(&self, channel: &str, since: u64, limit: usize) -> history::Page {
        self.sequencer.page(channel, since, limit)
    }

    /// Queues an HTTP publish (channel and data already validated); resolves to its offset.
    pub fn publish(
        &self,
        channel: Box<str>,
        data: Box<str>,
        priority: Priority,
    ) -> oneshot::Receiver<Result<u64, PublishError>> {
        let (done, result) = oneshot::channel();
        if self.stopping.is_set() {
            let _ = done.send(Err(PublishError::Stopping));
            return result;
        }
        if let Err(err) = self
            .fanout_room(1, priority)
            .and_then(|()| self.tenants.allow(&channel))
        {
            let _ = done.send(Err(err));
            return result;
        }
        let job = Job {
            channel,
            data,
            priority,
            ts_ms: unix_ms(),
            accepted: Instant::now(),
            reply: Reply::Http(done),
        };
        if let Err(Work::Publish(job)) = self.lanes.enqueue(Work::Publish(job)) {
            self.count_overloaded(1);
            if let Reply::Http(done) = job.reply {
                let _ = done.send(Err(PublishError::Overloaded));
            }
        }
        result
    }

    /// Queues a `/v1/publish/batch` (each message already validated) to be sequenced whole;
    /// resolves to every offset in order, or to why nothing was published. Refused at once,
    /// whole, when stopping, when a tenant lacks the tokens for all its messages, or when the
    /// lanes lack room for all of them; the sequencer refuses it whole when its new channels do
    /// not fit `channels_max` (cluster mode has its own, see `cluster_publish_batch`).
    pub fn publish_batch(
        &self,
        messages: Vec<(Box<str>, Box<str>, Priority)>,
    ) -> oneshot::Receiver<BatchOutcome> {
        let (done, result) = oneshot::channel();
        if messages.is_empty() {
            let _ = done.send(Ok(Vec::new()));
            return result;
        }
        if self.stopping.is_set() {
            let _ = done.send(Err(PublishError::Stopping));
            return result;
        }
        let priority = messages
            .iter()
            .map(|(_, _, priority)| *priority)
            .min_by_key(|priority| priority.lane())
            .expect("checked: the batch is not empty");
        if let Err(err) = self.fanout_room(messages.len(), priority).and_then(|()| {
            self.tenants
                .allow_batch(messages.iter().map(|(channel, ..)| &**channel))
        }) {
            let _ = done.send(Err(err));
            return result;
        }
        let (ts_ms, accepted) = (unix_ms(), Instant::now());
        let jobs = messages
            .into_iter()
            .map(|(channel, data, priority)| Job {
                channel,
                data,
                priority,
                ts_ms,
                accepted,
                reply: Reply::None,
            })
            .collect();
        let batch = Batch { jobs, done };
        if let Err(Work::Batch(batch)) = self.lanes.enqueue(Work::Batch(batch)) {
            self.count_overloaded(batch.jobs.len());
            let _ = batch.done.send(Err(PublishError::Overloaded));
        }
        result
    }

    /// Asks every shard for `kind` and gathers the answers, in shard order.
    pub async fn query(&self, kind: QueryKind) -> Vec<(ShardId, Answer)> {
        self.queries.ask(&self.shards, kind).await
    }

    /// Who is subscribed to `channel` (a full name) over every shard (and, in cluster mode,
    /// every node): exact counts, at most `presence_members_max` members.
    pub async fn presence(&self, channel: Arc<str>) -> presence::Totals {
        let members_max = self.config.presence_members_max;
        let answers = self.query(QueryKind::Presence(channel.clone())).await;
        let mut totals = presence::Totals::of_answers(answers, members_max);
        if let Some(link) = &self.cluster {
            match link
                .read_presence(channel, self.settings.redis_timeout)
                .await
            {
                Ok(entries) => {
                    for entry in entries {
                        match serde_json::from_str::<crate::msg::PresenceCount>(&entry) {
                            Ok(count) => totals.add(count, members_max),
                            Err(err) => {
                                tracing::warn!(error = %err, "ignoring a malformed presence entry")
                            }
                        }
                    }
                }
                Err(reason) => {
                    tracing::warn!(%reason, "presence without the other nodes' members");
                }
            }
        }
        totals
    }

    /// Cluster mode: writes this node's members of every presence channel to Redis every
    /// second, each entry expiring in `cluster::NODE_TTL_S` (see [`crate::cluster`]).
    async fn run_presence_refresh(self: Rc<Self>) {
        let members_max = self.config.presence_members_max;
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            let Some(link) = &self.cluster else { return };
            let mut channels: hashbrown::HashMap<Arc<str>, presence::Totals> =
                hashbrown::HashMap::new();
            for (_, answer) in self.query(QueryKind::PresenceAll).await {
                if let Answer::PresenceAll(counts) = answer {
                    for (channel, count) in counts {
                        channels.entry(channel).or_default().add(count, members_max);
                    }
                }
            }
            let entries = channels
                .into_iter()
                .map(|(channel, totals)| {
                    let count = crate::msg::PresenceCount {
                        connections: totals.connections,
                        users: totals.users.into_iter().collect(),
                        members: totals.members,
                    };
                    let text = serde_json::to_string(&count).expect("a presence count serializes");
                    (channel, text)
                })
                .collect();
            link.write_presence(entries);
        }
    }

    /// Answers a connection's `presence` command (checked by its shard) on a task of its
    /// own, so that the inbox drain never waits for the shards' answers.
    fn answer_presence(
        self: &Rc<Self>,
        shard: ShardId,
        conn: crate::msg::ConnId,
        id: Option<sonic_rs::Value>,
        channel: Box<str>,
    ) {
        let asks = self.presence_asks.get();
        if asks >= presence::PRESENCE_ASKS_MAX {
            let frame = ErrorReply::new(
                id,
                ErrorCode::RateLimited,
                format!(
                    "{} presence questions are being answered, the most at once; retry later",
                    presence::PRESENCE_ASKS_MAX
                ),
            )
            .frame();
            let core = self.clone();
            glommio::spawn_local(async move {
                core.shards[shard]
                    .push(ToShard::Reply { conn, frame })
                    .await;
                core.shards[shard].wake();
            })
            .detach();
            return;
        }
        self.presence_asks.set(asks + 1);
        let core = self.clone();
        glommio::spawn_local(async move {
            let totals = core.presence(channel.as_ref().into()).await;
            let view = command::PresenceView {
                channel: &channel,
                connections: totals.connections,
                users: totals.users.len(),
                members: Some(&totals.members),
                truncated: totals.truncated,
            };
            let frame = command::presence_frame(&id, &view);
            core.shards[shard]
                .push(ToShard::Reply { conn, frame })
                .await;
            core.shards[shard].wake();
            core.presence_asks.set(core.presence_asks.get() - 1);
        })
        .detach();
    }

    /// Every `presence_diff_interval_ms`: one `presence_diff` frame per channel whose members
    /// changed, encoded once and handed to every shard routed for the channel.
    async fn run_presence_diffs(self: Rc<Self>) {
        let interval = Duration::from_millis(self.config.presence_diff_interval_ms);
        loop {
            glommio::timer::sleep(interval).await;
            self.send_diffs().await;
        }
    }

    async fn send_diffs(&self) {
        let mut touched = vec![false; self.shards.len()];
        for diff in self.diffs.take(self.config.presence_members_max) {
            let frame = command::presence_diff_frame(
                &diff.channel,
                &diff.joined,
                &diff.left,
                diff.truncated,
            );
            let matched = self.routes.take_matches(&diff.channel);
            self.diffs.count_sent(matched.len());
            for &shard in &matched {
                self.shards[shard]
                    .push(ToShard::PresenceDiff {
                        channel: diff.channel.clone(),
                        frame: frame.clone(),
                    })
                    .await;
                touched[shard] = true;
            }
            self.routes.give_back(matched);
        }
        for (shard, touched) in touched.into_iter().enumerate() {
            if touched {
                self.shards[shard].wake();
            }
        }
    }

    /// Sequences one job: offset, encode once, keep in history, route, reply. In cluster mode
    /// Redis numbers it instead, and it fans out when it comes back (see [`cluster`]).
    async fn sequence(&self, job: Job, touched: &mut [bool]) {
        if self.cluster.is_some() {
            self.cluster_publish(job, touched).await;
            return;
        }
        let publish = self.sequencer.next_seq();
        let Ok(assigned) = self.sequencer.assign(&job.channel, publish, &self.routes) else {
            self.reply(job, Err(PublishError::ChannelsFull), touched)
                .await;
            return;
        };
        self.sequence_assigned(&job, assigned, touched).await;
        self.reply(job, Ok(assigned.offset), touched).await;
    }

    /// Numbers, encodes, keeps and routes one message just `assigned` its offset.
    async fn sequence_assigned(
        &self,
        job: &Job,
        assigned: history::Assigned,
        touched: &mut [bool],
    ) {
        let publish = self.sequencer.advance();
        let message = encode::Message {
            channel: &job.channel,
            offset: assigned.offset,
            ts_ms: job.ts_ms,
            data: &job.data,
            priority: job.priority,
            stamp: Stamp {
                publish,
                accepted: job.accepted,
            },
        };
        let delivery = self.sequencer.encode(&message, assigned.policy);
        self.fan_out(delivery, &job.channel, Instant::now(), touched)
            .await;
    }

    /// Sequences a batch whole: when its new channels do not all fit `channels_max` (after a
    /// reclaim), none of its messages is numbered. In cluster mode Redis numbers them.
    async fn sequence_batch(&self, batch: Batch, touched: &mut [bool]) {
        if self.cluster.is_some() {
            self.cluster_publish_batch(batch);
            return;
        }
        if !self.sequencer.fits(&batch.jobs, &self.routes) {
            let _ = batch.done.send(Err(PublishError::ChannelsFull));
            return;
        }
        let mut offsets = Vec::with_capacity(batch.jobs.len());
        for job in &batch.jobs {
            let publish = self.sequencer.next_seq();
            let assigned = self.sequencer.assign_fitted(&job.channel, publish);
            self.sequence_assigned(job, assigned, touched).await;
            offsets.push(assigned.offset);
        }
        let _ = batch.done.send(Ok(offsets));
    }

    /// Sweeps the channel table every [`CHANNELS_SWEEP_INTERVAL`] until the task is cancelled.
    async fn run_channel_sweep(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(CHANNELS_SWEEP_INTERVAL).await;
            self.sequencer.sweep(&self.routes);
        }
    }

    /// Keeps a numbered message in history and sends it to every shard with a subscriber.
    async fn fan_out(
        &self,
        delivery: crate::msg::Delivery,
        channel: &str,
        now: Instant,
        touched: &mut [bool],
    ) {
        let publish = delivery.stamp.publish;
        self.sequencer.record(channel, &delivery, now);
        // One shared `Bytes` goes to every shard, not a copy per shard. `benches/shared_bytes.rs`
        // measured both on the 2-core CI machine (AMD EPYC, 2 shards x 5,000 connections x 400
        // events of 190 bytes, median of 21 interleaved rounds): shared 17.20 ns per delivery,
        // copy per shard 17.36 ns, ratio 0.99 (spread 0.20-1.48, noise dominates). The refcount
        // line does not bounce enough to matter here because each shard clones a frame for all
        // its connections in one burst; so the simpler, allocation-free sharing stays. Re-run
        // the bench on many-core hosts before changing this.
        let matched = self.routes.take_matches(channel);
        // A publish routed to no shard has no fan-out, and records nothing.
        if !matched.is_empty() {
            self.fanout.await_reports(publish, matched.len());
        }
        for &shard in &matched {
            assert!(
                shard < self.shards.len(),
                "routes name existing shards only"
            );
            self.shards[shard]
                .push(ToShard::Deliver(delivery.clone()))
                .await;
            touched[shard] = true;
        }
        self.routes.give_back(matched);
    }

    /// Answers a recovery from the history as of now: everything sequenced so far is either in
    /// the missed frames or past recovering, and every later publish follows in the shard's
    /// queue, where the subscription is live by then.
    async fn recover(&self, recovery: Recovery, touched: &mut [bool]) {
        let (outcome, position) = self.sequencer.recover(&recovery.pattern, &recovery.since);
        let shard = recovery.shard;
        self.send_recovered(recovery, outcome, position).await;
        touched[shard] = true;
    }

    /// Sends a recovery's answer to its shard: `subscribed` with the outcome, then the missed
    /// frames (none when not recovered).
    async fn send_recovered(
        &self,
        recovery: Recovery,
        outcome: Result<history::Recovery, Unrecovered>,
        position: u64,
    ) {
        let (outcome, missed, covered_from) = match outcome {
            Ok(recovered) => (Ok(()), recovered.missed, recovered.since_seq),
            Err(reason) => (Err(reason), Vec::new(), position),
        };
        let reply = command::subscribed_frame(
            &recovery.pattern,
            &recovery.id,
            &self.epoch(),
            position,
            Some(outcome),
        );
        assert!(
            recovery.shard < self.shards.len(),
            "recoveries come from existing shards"
        );
        self.shards[recovery.shard]
            .push(ToShard::Recovered(Box::new(Recovered {
                conn: recovery.conn,
                pattern: recovery.pattern,
                reply,
                missed,
                covered_from,
                position,
            })))
            .await;
    }

    async fn reply(&self, job: Job, outcome: Result<u64, PublishError>, touched: &mut [bool]) {
        match job.reply {
            Reply::None => {}
            Reply::Http(done) => {
                let _ = done.send(outcome);
            }
            Reply::Conn { shard, conn, id } => {
                let frame = match outcome {
                    Ok(offset) => command::published_frame(&id, &job.channel, offset),
                    Err(err) => {
                        let code = match err {
                            // The contract's code for "not now, retry later".
                            PublishError::RateLimited { .. }
                            | PublishError::Overloaded
                            | PublishError::Backlogged => ErrorCode::RateLimited,
                            PublishError::ClusterUnavailable => ErrorCode::ClusterUnavailable,
                            PublishError::OutcomeUnknown => ErrorCode::OutcomeUnknown,
                            _ => ErrorCode::Internal,
                        };
                        ErrorReply::new(id, code, err.message(&self.config)).frame()
                    }
                };
                self.shards[shard]
                    .push(ToShard::Reply { conn, frame })
                    .await;
                touched[shard] = true;
            }
        }
    }

    /// Whether the sequencer has anything to do.
    fn has_work(&self) -> bool {
        !self.lanes.is_empty()
            || self
                .cluster
                .as_ref()
                .is_some_and(cluster::ClusterLink::ready)
    }

    /// The sequencer: drains the lanes, highest priority first, a bounded batch per wake-up.
    /// In cluster mode the messages back from Redis come right after the critical lane: they
    /// are numbered already, and each waits for the one before it.
    async fn run_sequencer(self: Rc<Self>) {
        let mut touched = vec![false; self.shards.len()];
        loop {
            self.lanes.wait_until(|| self.has_work()).await;
            for _ in 0..self.settings.batch_max {
                let critical = self.lanes.dequeue(&[Priority::Critical.lane()]);
                let work = match critical {
                    Some(work) => Some(work),
                    None if self
                        .cluster
                        .as_ref()
                        .is_some_and(cluster::ClusterLink::ready) =>
                    {
                        self.take_arrived(&mut touched).await;
                        continue;
                    }
                    None => self.lanes.dequeue(&[
                        Priority::Critical.lane(),
                        Priority::High.lane(),
                        Priority::Normal.lane(),
                    ]),
                };
                match work {
                    Some(Work::Publish(job)) => self.sequence(job, &mut touched).await,
                    Some(Work::Batch(batch)) => self.sequence_batch(batch, &mut touched).await,
                    Some(Work::Recover(recovery)) => self.recover(recovery, &mut touched).await,
                    None => break,
                }
            }
            for (shard, touched) in touched.iter_mut().enumerate() {
                if std::mem::take(touched) {
                    self.shards[shard].wake();
                }
            }
            glommio::yield_if_needed().await;
        }
    }

    /// Handles one message from a shard (or the signal thread).
    async fn handle(self: &Rc<Self>, message: ToIngest) {
        match message {
            ToIngest::Publish {
                shard,
                conn,
                id,
                channel,
                data,
            } => {
                let job = Job {
                    channel,
                    data,
                    priority: Priority::Normal,
                    ts_ms: unix_ms(),
                    accepted: Instant::now(),
                    reply: Reply::Conn { shard, conn, id },
                };
                let allowed = self
                    .fanout_room(1, job.priority)
                    .and_then(|()| self.tenants.allow(&job.channel));
                let refused = match allowed {
                    Ok(()) => match self.lanes.enqueue(Work::Publish(job)) {
                        Ok(()) => None,
                        Err(Work::Publish(job)) => {
                            self.count_overloaded(1);
                            Some((job, PublishError::Overloaded))
                        }
                        Err(Work::Recover(_) | Work::Batch(_)) => {
                            unreachable!("a publish comes back a publish")
                        }
                    },
                    Err(err) => Some((job, err)),
                };
                if let Some((job, err)) = refused {
                    let mut touched = vec![false; self.shards.len()];
                    self.reply(job, Err(err), &mut touched).await;
                    self.shards[shard].wake();
                }
            }
            ToIngest::Recover {
                shard,
                conn,
                id,
                pattern,
                since,
            } => {
                let recovery = Recovery {
                    shard,
                    conn,
                    id,
                    pattern,
                    since,
                };
                if let Err(Work::Recover(recovery)) = self.lanes.enqueue(Work::Recover(recovery)) {
                    // Live without recovery: later publishes follow this in the queue.
                    let position = self.sequencer.position();
                    self.send_recovered(recovery, Err(Unrecovered::Overloaded), position)
                        .await;
                    self.shards[shard].wake();
                }
            }
            ToIngest::Interest {
                shard,
                pattern,
                add,
                seq,
            } => {
                if add {
                    self.routes.insert(&pattern, shard);
                    let position = self.sequencer.position();
                    self.shards[shard]
                        .push(ToShard::InterestReady {
                            pattern,
                            seq,
                            position,
                        })
                        .await;
                    self.shards[shard].wake();
                } else {
                    self.routes.remove(&pattern, shard);
                }
            }
            ToIngest::Admit {
                shard,
                ticket,
                peer,
            } => {
                let verdict = self.admission.borrow_mut().admit(&self.config, &peer);
                self.shards[shard]
                    .push(ToShard::Admitted { ticket, verdict })
                    .await;
                self.shards[shard].wake();
            }
            ToIngest::Leave(peer) => self.admission.borrow_mut().leave(&peer),
            ToIngest::Presence {
                shard,
                conn,
                id,
                channel,
            } => self.answer_presence(shard, conn, id, channel),
            ToIngest::PresenceChanges { shard, changes } => {
                assert!(
                    shard < self.shards.len(),
                    "changes come from existing shards"
                );
                if let Some(link) = &self.cluster {
                    link.share_changes(changes.clone());
                }
                self.diffs.merge(changes, None);
            }
            ToIngest::Fanout { shard, reports } => {
                assert!(
                    shard < self.shards.len(),
                    "reports come from existing shards"
                );
                self.fanout.reported(&reports);
            }
            ToIngest::Answer {
                query,
                shard,
                answer,
            } => self
                .queries
                .answered(query, shard, answer, self.shards.len()),
            ToIngest::Shutdown => self.stop(),
        }
    }

    fn stop(&self) {
        if self.stopping.begin() {
            tracing::info!("shutting down: closing every connection with 1001");
        }
    }

    /// Drains one inbound queue, a bounded batch per wake-up.
    async fn run_inbox(self: Rc<Self>, inbox: Receiver<ToIngest>) {
        loop {
            inbox.ready().await;
            for _ in 0..self.settings.batch_max {
                let Some(message) = inbox.pop() else { break };
                self.handle(message).await;
            }
            inbox.release();
            glommio::yield_if_needed().await;
        }
    }

    /// Takes the Redis bridge's news (cluster mode), a batch at a time, waking each shard it
    /// sent something to once per batch.
    async fn run_cluster_inbox(self: Rc<Self>, inbox: Receiver<FromCluster>) {
        let mut touched = vec![false; self.shards.len()];
        loop {
            inbox.ready().await;
            for _ in 0..self.settings.batch_max {
                let Some(news) = inbox.pop() else { break };
                self.cluster_news(news, &mut touched).await;
            }
            inbox.release();
            for (shard, touched) in touched.iter_mut().enumerate() {
                if std::mem::take(touched) {
                    self.shards[shard].wake();
                }
            }
            glommio::yield_if_needed().await;
        }
    }
}

/// The ingest core's life: `start` its tasks, `run` until a signal, then `stop` the shards.
pub struct Ingest {
    core: Rc<IngestCore>,
    tasks: Vec<glommio::task::JoinHandle<()>>,
}

impl Ingest {
    /// Starts the API server, the sequencer and one drain task per inbound queue.
    /// `api_tls`: HTTPS on the control plane, when configured.
    pub fn start(
        core: Rc<IngestCore>,
        api: glommio::net::TcpListener,
        api_tls: Option<futures_rustls::TlsAcceptor>,
        inboxes: Vec<Receiver<ToIngest>>,
        cluster_inbox: Option<Receiver<FromCluster>>,
    ) -> Ingest {
        let mut tasks = vec![
            glommio::spawn_local(api::serve(core.clone(), api, api_tls)).detach(),
            glommio::spawn_local(core.clone().run_sequencer()).detach(),
            glommio::spawn_local(core.clone().run_channel_sweep()).detach(),
        ];
        for inbox in inboxes {
            tasks.push(glommio::spawn_local(core.clone().run_inbox(inbox)).detach());
        }
        if let Some(inbox) = cluster_inbox {
            tasks.push(glommio::spawn_local(core.clone().run_cluster_inbox(inbox)).detach());
        }
        if core.config.sys_stats_interval_ms > 0 {
            tasks.push(glommio::spawn_local(sys_stats::run(core.clone())).detach());
        }
        if core
            .config
            .namespaces
            .iter()
            .any(|namespace| namespace.join_leave)
        {
            tasks.push(glommio::spawn_local(core.clone().run_presence_diffs()).detach());
        }
        let presence = core
            .config
            .namespaces
            .iter()
            .any(|namespace| namespace.presence);
        if presence && core.cluster.is_some() {
            tasks.push(glommio::spawn_local(core.clone().run_presence_refresh()).detach());
        }
        Ingest { core, tasks }
    }

    /// Runs until SIGINT or SIGTERM, then stops.
    pub async fn run(self) {
        self.core.stopping.wait().await;
        self.stop().await;
    }

    /// Tells every shard to stop accepting and waits until all have (or the query timeout
    /// passed), so that no connection gets in after any other was told 1001; then tells them
    /// to close their connections, and ends the ingest core's tasks.
    async fn stop(self) {
        self.core.query(QueryKind::StopAccepting).await;
        for shard in &self.core.shards {
            shard.push(ToShard::Shutdown).await;
            shard.wake();
        }
        for task in self.tasks {
            task.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::FanoutReport;
    use crate::queue;

    fn core(shards: usize, queue_items_max: usize) -> Rc<IngestCore> {
        core_with(
            shards,
            Config {
                queue_items_max,
                ..Config::default()
            },
        )
    }

    fn core_with(shards: usize, config: Config) -> Rc<IngestCore> {
        let senders = (0..shards).map(|_| queue::bounded(4).0).collect();
        IngestCore::new(Arc::new(config), "e".into(), senders, None)
    }

    fn batch_of(channels: &[&str]) -> Vec<(Box<str>, Box<str>, Priority)> {
        channels
            .iter()
            .map(|&channel| (channel.into(), "1".into(), Priority::Normal))
            .collect()
    }

    /// A batch's outcome if it was answered already.
    fn answered(mut result: oneshot::Receiver<BatchOutcome>) -> Option<BatchOutcome> {
        result
            .try_recv()
            .expect("the sender is kept until answered")
    }

    #[test]
    fn past_fanout_queued_max_only_critical_publishes_are_taken_and_refusals_are_counted() {
        let core = core_with(
            1,
            Config {
                fanout_queued_max: 4,
                publish_batch_max: 4,
                ..Config::default()
            },
        );
        let mut outcomes: Vec<_> = (0..5)
            .map(|_| core.publish("a".into(), "1".into(), Priority::Normal))
            .collect();
        let refused = outcomes.pop().unwrap().try_recv().unwrap();
        assert_eq!(refused, Some(Err(PublishError::Backlogged)));
        for mut held in outcomes {
            assert_eq!(
                held.try_recv().unwrap(),
                None,
                "held in the lanes, not answered"
            );
        }
        let mut high = core.publish("a".into(), "1".into(), Priority::High);
        assert_eq!(
            high.try_recv().unwrap(),
            Some(Err(PublishError::Backlogged))
        );
        let mut critical = core.publish("a".into(), "1".into(), Priority::Critical);
        assert_eq!(critical.try_recv().unwrap(), None, "critical is taken");
        let batch = core.publish_batch(batch_of(&["b", "c"]));
        assert_eq!(answered(batch), Some(Err(PublishError::Backlogged)));
        let stats = core.stats();
        assert_eq!(stats.lanes_len, [1, 0, 4]);
        assert_eq!(stats.overloaded_refused_total, 4, "1 + 1 + a batch of 2");
        assert_eq!(PublishError::Backlogged.code(), "overloaded");
        assert_eq!(
            PublishError::Backlogged.status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn a_batch_without_room_for_all_of_it_in_the_lanes_is_refused_whole() {
        let core = core(1, 16);
        for _ in 0..10 {
            drop(core.publish("single".into(), "1".into(), Priority::Normal));
        }
        let refused = core.publish_batch(batch_of(&["b"; 7]));
        assert_eq!(answered(refused), Some(Err(PublishError::Overloaded)));
        assert_eq!(
            core.stats().lanes_len,
            [0, 0, 10],
            "nothing of it was queued"
        );
        let mut fits = batch_of(&["b"; 6]);
        fits[3].2 = Priority::High;
        let queued = core.publish_batch(fits);
        assert_eq!(answered(queued), None, "queued, waiting for the sequencer");
        assert_eq!(
            core.stats().lanes_len,
            [0, 6, 10],
            "whole, in the lane of its most urgent message"
        );
    }

    #[test]
    fn a_batch_takes_every_tenant_token_it_needs_or_none() {
        let core = core_with(
            1,
            Config {
                tenant_publishes_per_s: 4,
                ..Config::default()
            },
        );
        let acme = crate::channel::scoped("acme", "x");
        let beta = crate::channel::scoped("beta", "y");
        let queued = core.publish_batch(batch_of(&[acme.as_str(); 4]));
        assert_eq!(answered(queued), None, "acme's four tokens");
        let mixed = core.publish_batch(batch_of(&[&beta, &beta, &acme, &beta, &beta]));
        let Some(Err(PublishError::RateLimited { retry_ms })) = answered(mixed) else {
            panic!("acme has no token left: the whole batch is refused");
        };
        assert!(
            (1..=250).contains(&retry_ms),
            "one token of acme: {retry_ms} ms"
        );
        assert_eq!(core.stats().tenant_publishes_refused_total, 1);
        let beta_alone = core.publish_batch(batch_of(&[beta.as_str(); 4]));
        assert_eq!(
            answered(beta_alone),
            None,
            "the refused batch took none of beta's tokens"
        );
        let over = core.publish_batch(batch_of(&[beta.as_str(); 5]));
        assert_eq!(
            answered(over),
            Some(Err(PublishError::BatchOverRate { messages: 5 })),
            "more than a second's worth can never be taken at once"
        );
        assert_eq!(core.stats().lanes_len, [0, 0, 8]);
    }

    fn job(channel: &str) -> Job {
        Job {
            channel: channel.into(),
            data: "1".into(),
            priority: Priority::Normal,
            ts_ms: 0,
            accepted: Instant::now(),
            reply: Reply::None,
        }
    }

    #[test]
    fn a_new_channel_at_channels_max_reclaims_forgettable_ones_first() {
        let (offsets, forgotten) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                // No history: a channel nobody subscribes to is forgettable at once.
                let core = core_with(
                    1,
                    Config {
                        channels_max: 2,
                        history_messages_max: 0,
                        ..Config::default()
                    },
                );
                let mut touched = [false];
                core.sequence(job("a"), &mut touched).await;
                let (done, result) = oneshot::channel();
                let jobs = vec![job("b"), job("c")];
                core.sequence_batch(Batch { jobs, done }, &mut touched)
                    .await;
                let batch = answered(result).expect("sequenced");
                core.sequence(job("d"), &mut touched).await;
                let offsets = ["a", "b", "c", "d"].map(|name| core.channel_offset(name));
                ((batch, offsets), core.stats().channels_forgotten_total)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            offsets,
            (Ok(vec![2, 3]), [0, 0, 0, 4]),
            "the batch's two channels took a's place and the free one, d theirs"
        );
        assert_eq!(forgotten, 3, "a for the batch, then b and c for d");
    }

    #[test]
    fn a_batch_whose_new_channels_do_not_fit_numbers_none_of_its_messages() {
        let outcomes = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                let core = core_with(
                    1,
                    Config {
                        channels_max: 2,
                        ..Config::default()
                    },
                );
                let mut touched = [false];
                let mut outcomes = Vec::new();
                for channels in [&["a"][..], &["a", "b", "c", "a"], &["b", "a", "b"]] {
                    let (done, result) = oneshot::channel();
                    let jobs = batch_of(channels)
                        .into_iter()
                        .map(|(channel, data, priority)| Job {
                            channel,
                            data,
                            priority,
                            ts_ms: 0,
                            accepted: Instant::now(),
                            reply: Reply::None,
                        })
                        .collect();
                    core.sequence_batch(Batch { jobs, done }, &mut touched)
                        .await;
                    outcomes.push(answered(result).expect("sequenced"));
                    outcomes.push(Ok(vec![
                        core.channel_offset("a"),
                        core.channel_offset("b"),
                        core.sequencer.position(),
                    ]));
                }
                outcomes
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            outcomes,
            [
                Ok(vec![1]),
                Ok(vec![1, 0, 1]),
                Err(PublishError::ChannelsFull),
                Ok(vec![1, 0, 1]),
                Ok(vec![1, 2, 2]),
                Ok(vec![2, 2, 4]),
            ],
            "the refused batch moved no offset and no seq"
        );
    }

    fn report(publish: u64, elapsed_us: u64) -> FanoutReport {
        FanoutReport {
            publish,
            elapsed: Duration::from_micros(elapsed_us),
        }
    }

    #[test]
    fn overall_fanout_is_the_slowest_shard_once_every_shard_reported() {
        let core = core(2, 16);
        core.fanout.await_reports(1, 2);
        core.fanout.reported(&[report(1, 700)]);
        assert_eq!(core.fanout_summary().count, 0, "one shard still to report");
        assert_eq!(core.stats().fanout_pending, 1);
        core.fanout.reported(&[report(1, 300)]);
        let summary = core.fanout_summary();
        assert_eq!((summary.count, summary.max), (1, 700));
        assert_eq!(core.stats().fanout_pending, 0);
    }

    #[test]
    fn a_full_table_counts_untracked_publishes_and_ignores_their_reports() {
        let core = core(1, 1);
        for publish in 1..=fanout::FANOUT_PENDING_QUEUES as u64 + 1 {
            core.fanout.await_reports(publish, 1);
        }
        let stats = core.stats();
        assert_eq!(stats.fanout_pending, fanout::FANOUT_PENDING_QUEUES);
        assert_eq!(stats.fanout_untracked_total, 1);
        let untracked = fanout::FANOUT_PENDING_QUEUES as u64 + 1;
        core.fanout.reported(&[report(untracked, 5), report(1, 10)]);
        let summary = core.fanout_summary();
        assert_eq!((summary.count, summary.max), (1, 10));
    }
}
