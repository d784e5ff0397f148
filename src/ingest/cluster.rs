//! The ingest core's side of cluster mode (see [`crate::cluster`]): publishes go to Redis to be
//! numbered; messages come back from Redis, every node's, in seq order, and are fanned out and
//! kept in history here exactly as a single node does with its own.
//!
//! The ingest core follows the cluster's seq. A message past the next one means this node
//! missed some (its subscription to Redis broke): it reads them back from the cluster's log
//! and fans them out first, in order. What the log no longer holds is gone: each channel that
//! lost messages trims its history through them and sends its subscribers a `gap` notice. A
//! new epoch (Redis lost its data) empties the history and closes every connection with 1012,
//! so clients reconnect and learn from `recovered:false` that their positions are void. On
//! joining, a node reads the log's recent past into its history, so a client that moves to it
//! recovers as it would on the node it left.
//!
//! Each answer to a publish says what the bridge knows: its offset; `cluster_unavailable`
//! when it was certainly not published; `outcome_unknown` when it was sent and Redis gave no
//! answer in time (it may still be published, and is then delivered here like any other).
//! A batch is handed to the bridge as one request, which Redis numbers in one script run, and
//! gets one of the same three answers for all of its messages: every offset, or one refusal.
//! Both refusals are counted (a batch's once per message), and `/v1/stats` shows a stall as
//! soon as a publish waits past `redis_timeout_ms`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use hashbrown::HashMap;

use super::encode;
use super::history::Unnumbered;
use super::lanes::{Batch, BatchOutcome, Job};
use super::{IngestCore, PublishError};
use crate::cluster::{
    self, BatchEntry, BatchRequest, FromCluster, Health, NodeInfo, Numbered, PresenceDiffEvent,
    PublishFailure, PublishRequest, Requests, ToCluster, UserActEvent,
};
use crate::msg::{ToShard, UserAct};
use crate::ws::command;

/// What a read of the cluster's log is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogUse {
    /// Joining: the recent past goes into history only (nobody here was subscribed to it).
    Preload { up_to: u64 },
    /// Catching up after a broken subscription: fanned out, before what arrived since.
    Fill { up_to: u64 },
}

/// What waits for the bridge's answer to a publish.
enum Waiting {
    /// A publish: its answer goes where its job says.
    One(Job),
    /// A batch of `len` messages: one answer for all of them.
    Batch {
        done: oneshot::Sender<BatchOutcome>,
        len: usize,
    },
}

/// Other nodes' presence entries of one channel (JSON), or why there are none.
type PresenceEntries = Result<Vec<String>, String>;

/// The ingest core's cluster state.
pub struct ClusterLink {
    requests: Requests,
    /// Publishes and batches handed to the bridge, waiting for their answer, by token, with
    /// when they were handed over.
    pending: RefCell<HashMap<u64, (Waiting, Instant)>>,
    next_token: Cell<u64>,
    /// Messages from Redis not fanned out yet, in seq order.
    arrived: RefCell<VecDeque<Numbered>>,
    /// The seq of the last message taken; `None` until the node has synced with the cluster.
    last_seq: Cell<Option<u64>>,
    /// A log read in flight: its token and use. Arrived messages wait for it.
    log_wait: Cell<Option<(u64, LogUse)>>,
    /// Missing seqs up to this one are gone from the log: take the jump.
    jump_until: Cell<u64>,
    /// The events subscription is up.
    subscribed: Cell<bool>,
    /// The command connection's health, as the bridge last told it.
    health: Cell<Health>,
    /// Publishes answered `outcome_unknown`, and `cluster_unavailable`.
    outcome_unknown_total: Cell<u64>,
    unavailable_total: Cell<u64>,
    nodes: RefCell<Vec<NodeInfo>>,
    /// This node's name in the presence keys and diffs (`sys_stats::node_token`).
    node: Arc<str>,
    /// Presence reads handed to the bridge, by token: every other node's entries of a channel.
    presence_reads: RefCell<HashMap<u64, oneshot::Sender<PresenceEntries>>>,
}

/// `cluster` in `/v1/stats`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClusterStats {
    /// Both of the bridge's connections are up: the events subscription, and the command
    /// connection, whose last round trip was answered in time.
    pub connected: bool,
    /// Redis is late: a publish has waited past `redis_timeout_ms`, or the last round trip
    /// did and none has been answered since. Publishes are refused meanwhile.
    pub stalled: bool,
    /// How long the oldest publish handed to the bridge has waited for its answer; 0 when
    /// none waits.
    pub oldest_pending_ms: u64,
    /// Publishes answered `outcome_unknown` (sent, no answer in time) and
    /// `cluster_unavailable` (certainly not published); a batch counts each of its messages.
    pub publishes_outcome_unknown_total: u64,
    pub publishes_unavailable_total: u64,
    pub seq: Option<u64>,
    pub nodes: Vec<NodeInfo>,
}

impl ClusterLink {
    pub fn new(requests: Requests, node: Arc<str>) -> ClusterLink {
        ClusterLink {
            requests,
            pending: RefCell::new(HashMap::new()),
            next_token: Cell::new(0),
            arrived: RefCell::new(VecDeque::new()),
            last_seq: Cell::new(None),
            log_wait: Cell::new(None),
            jump_until: Cell::new(0),
            subscribed: Cell::new(false),
            health: Cell::new(Health::Down),
            outcome_unknown_total: Cell::new(0),
            unavailable_total: Cell::new(0),
            nodes: RefCell::new(Vec::new()),
            node,
            presence_reads: RefCell::new(HashMap::new()),
        }
    }

    /// Hands this node's presence entries to the bridge (dropped when its queue is full: the
    /// next refresh brings them again).
    pub(super) fn write_presence(&self, entries: Vec<(Arc<str>, String)>) {
        let _ = self.requests.try_send(ToCluster::PresenceEntries(entries));
    }

    /// Hands one shard's joins and leaves to the bridge, for the other nodes' diffs.
    pub(super) fn share_changes(&self, changes: Vec<crate::msg::PresenceChange>) {
        let diff = PresenceDiffEvent {
            node: self.node.clone(),
            changes,
        };
        if self
            .requests
            .try_send(ToCluster::PresenceDiff(diff))
            .is_err()
        {
            tracing::debug!("presence diff not shared: the bridge's queue is full");
        }
    }

    /// Every other live node's entry for `channel` (a full name), as JSON: at most
    /// `timeout` later, or an error saying why none came.
    pub(super) async fn read_presence(
        &self,
        channel: Arc<str>,
        timeout: Duration,
    ) -> PresenceEntries {
        let nodes: Vec<String> = self
            .nodes
            .borrow()
            .iter()
            .filter(|info| *info.node != *self.node)
            .map(|info| info.node.clone())
            .collect();
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let token = self.token();
        let (done, answer) = oneshot::channel();
        self.presence_reads.borrow_mut().insert(token, done);
        let request = ToCluster::ReadPresence {
            token,
            channel,
            nodes,
        };
        if self.requests.try_send(request).is_err() {
            self.presence_reads.borrow_mut().remove(&token);
            return Err("the bridge's queue is full".into());
        }
        let answered = glommio::timer::timeout(timeout, async {
            Ok(answer
                .await
                .unwrap_or_else(|_| Err("the bridge dropped the read".into())))
        })
        .await;
        self.presence_reads.borrow_mut().remove(&token);
        answered.unwrap_or_else(|_| Err("Redis did not answer within redis_timeout_ms".into()))
    }

    fn token(&self) -> u64 {
        let token = self.next_token.get() + 1;
        self.next_token.set(token);
        token
    }

    /// Whether arrived messages may be taken now: synced, and no log read in flight.
    pub fn ready(&self) -> bool {
        self.last_seq.get().is_some()
            && self.log_wait.get().is_none()
            && !self.arrived.borrow().is_empty()
    }

    /// The figures of `/v1/stats`, as of `now`, with `timeout` = `redis_timeout_ms`.
    pub fn stats(&self, now: Instant, timeout: Duration) -> ClusterStats {
        let oldest = self
            .pending
            .borrow()
            .values()
            .map(|(_, handed)| now.saturating_duration_since(*handed))
            .max()
            .unwrap_or_default();
        let health = self.health.get();
        ClusterStats {
            connected: self.subscribed.get() && health == Health::Ready,
            stalled: health == Health::Stalled || oldest > timeout,
            oldest_pending_ms: u64::try_from(oldest.as_millis()).unwrap_or(u64::MAX),
            publishes_outcome_unknown_total: self.outcome_unknown_total.get(),
            publishes_unavailable_total: self.unavailable_total.get(),
            seq: self.last_seq.get(),
            nodes: self.nodes.borrow().clone(),
        }
    }

    /// This node's connection count, for its presence key.
    pub fn report_connections(&self, connections: usize) {
        // Best effort: a full queue skips one refresh.
        let _ = self.requests.try_send(ToCluster::Presence { connections });
    }

    /// What the publisher of `messages` messages (one, or a batch's) is told of `failure`;
    /// counted once per message.
    fn publish_error(&self, failure: &PublishFailure, messages: usize) -> PublishError {
        let messages = messages as u64;
        match failure {
            PublishFailure::Refused(_) => {
                self.unavailable_total
                    .set(self.unavailable_total.get() + messages);
                PublishError::ClusterUnavailable
            }
            PublishFailure::Unknown(_) => {
                self.outcome_unknown_total
                    .set(self.outcome_unknown_total.get() + messages);
                PublishError::OutcomeUnknown
            }
        }
    }

    /// Takes what waits for the answer `token`, if anything does.
    fn answered(&self, token: u64) -> Option<Waiting> {
        self.pending
            .borrow_mut()
            .remove(&token)
            .map(|(waiting, _)| waiting)
    }

    /// Asks for the log after `after` up to `up_to`, for `purpose`.
    fn read_log(&self, after: u64, up_to: u64, purpose: LogUse) {
        let token = self.token();
        let request = ToCluster::ReadLog {
            token,
            after,
            up_to: up_to.min(after + cluster::LOG_READ_MAX as u64),
        };
        if self.requests.try_send(request).is_ok() {
            self.log_wait.set(Some((token, purpose)));
        }
    }
}

/// The sequencer's cluster-mode paths, beside the single node's in `mod.rs`: handing publishes
/// and batches to the bridge, taking its news, and numbering, keeping and fanning out what
/// comes back from Redis in the cluster's seq order. They work on the link's fields here and on
/// the other owners (sequencer, routes, lanes, shards) through their methods only.
impl IngestCore {
    fn link(&self) -> &ClusterLink {
        self.cluster
            .as_ref()
            .expect("cluster paths run in cluster mode only")
    }

    /// Cluster mode's publish: Redis numbers it; the reply waits for those numbers (at most
    /// `redis_timeout_ms`: the bridge answers by then), and the fan-out for the message's
    /// return on `{corecast}:events`.
    pub(super) async fn cluster_publish(&self, job: Job, touched: &mut [bool]) {
        let link = self.link();
        let token = link.token();
        let handed = Instant::now();
        let request = ToCluster::Publish(PublishRequest {
            token,
            channel: job.channel.clone(),
            data: job.data.clone(),
            priority: job.priority,
            ts_ms: job.ts_ms,
            answer_by: handed + self.settings.redis_timeout,
        });
        if link.requests.try_send(request).is_err() {
            self.reply(job, Err(PublishError::Overloaded), touched)
                .await;
            return;
        }
        link.pending
            .borrow_mut()
            .insert(token, (Waiting::One(job), handed));
    }

    /// Cluster mode's batch: handed to the bridge as one request, which Redis numbers in one
    /// run of [`cluster::PUBLISH_BATCH_SCRIPT`] (all of it in a row, or none), and answered
    /// once by the bridge's one answer (by `redis_timeout_ms`): every offset in order,
    /// `cluster_unavailable` or `outcome_unknown` for the whole batch. Refused `overloaded`
    /// when the bridge's queue is full. Its messages fan out as they come back from Redis,
    /// like any others.
    pub(super) fn cluster_publish_batch(&self, batch: Batch) {
        assert!(
            !batch.jobs.is_empty(),
            "an empty batch is answered before it is queued"
        );
        let link = self.link();
        let token = link.token();
        let handed = Instant::now();
        let len = batch.jobs.len();
        let entries = batch
            .jobs
            .into_iter()
            .map(|job| BatchEntry {
                channel: job.channel,
                data: job.data,
                priority: job.priority,
                ts_ms: job.ts_ms,
            })
            .collect();
        let request = ToCluster::PublishBatch(BatchRequest {
            token,
            entries,
            answer_by: handed + self.settings.redis_timeout,
        });
        if link.requests.try_send(request).is_err() {
            let _ = batch.done.send(Err(PublishError::Overloaded));
            return;
        }
        let waiting = Waiting::Batch {
            done: batch.done,
            len,
        };
        link.pending.borrow_mut().insert(token, (waiting, handed));
    }

    /// Handles news from the bridge.
    pub(super) async fn cluster_news(&self, news: FromCluster, touched: &mut [bool]) {
        let link = self.link();
        match news {
            FromCluster::Published { token, result } => {
                let Some(waiting) = link.answered(token) else {
                    return;
                };
                let Waiting::One(job) = waiting else {
                    unreachable!("the bridge answers a publish with Published");
                };
                let outcome = result.map(|numbered| numbered.offset).map_err(|failure| {
                    log_failure(&failure, format_args!("to {}", job.channel));
                    link.publish_error(&failure, 1)
                });
                self.reply(job, outcome, touched).await;
            }
            FromCluster::PublishedBatch { token, result } => {
                let Some(waiting) = link.answered(token) else {
                    return;
                };
                let Waiting::Batch { done, len } = waiting else {
                    unreachable!("the bridge answers a batch with PublishedBatch");
                };
                let outcome = match result {
                    Ok(offsets) => {
                        assert_eq!(offsets.len(), len, "the bridge checks the batch's offsets");
                        Ok(offsets)
                    }
                    Err(failure) => {
                        log_failure(&failure, format_args!("a batch of {len}"));
                        Err(link.publish_error(&failure, len))
                    }
                };
                let _ = done.send(outcome);
            }
            FromCluster::Health { health, reason } => {
                link.health.set(health);
                tracing::debug!(?health, %reason, "Redis command connection health");
            }
            FromCluster::Event(event) => {
                link.arrived.borrow_mut().push_back(event);
                self.lanes.wake();
            }
            FromCluster::Subscribed { epoch, seq } => {
                link.subscribed.set(true);
                self.sync_with(epoch, seq).await;
            }
            FromCluster::Reset { epoch, seq } => self.sync_with(epoch, seq).await,
            FromCluster::Position { epoch, seq } => {
                if self.sequencer.in_epoch(&epoch) {
                    self.check_lost(&epoch, seq);
                }
            }
            FromCluster::Lost { reason } => {
                if link.subscribed.replace(false) {
                    tracing::warn!(%reason, "cluster unreachable: serving local connections only");
                }
            }
            FromCluster::Log { token, result } => {
                let Some((waiting, purpose)) = link.log_wait.get() else {
                    return;
                };
                if waiting != token {
                    return;
                }
                link.log_wait.set(None);
                let entries = match result {
                    Ok(entries) => entries,
                    Err(reason) => {
                        tracing::warn!(%reason, "cannot read the cluster's log; waiting to resync");
                        // The next `Subscribed` asks again.
                        Vec::new()
                    }
                };
                match purpose {
                    LogUse::Preload { up_to } => self.preload(entries, up_to),
                    LogUse::Fill { up_to } => {
                        link.jump_until.set(up_to);
                        let mut arrived = link.arrived.borrow_mut();
                        for entry in entries.into_iter().rev() {
                            arrived.push_front(entry);
                        }
                    }
                }
                self.lanes.wake();
            }
            FromCluster::Nodes(nodes) => *link.nodes.borrow_mut() = nodes,
            FromCluster::Presence { token, result } => {
                if let Some(done) = link.presence_reads.borrow_mut().remove(&token) {
                    let _ = done.send(result);
                }
            }
            FromCluster::PresenceDiff(PresenceDiffEvent { node, changes }) => {
                if *node != *link.node {
                    self.diffs.merge(changes, Some(&node));
                }
            }
            FromCluster::UserAct(UserActEvent { stream, act }) => {
                self.deliver_user_act(stream, act).await;
            }
        }
    }

    /// Follows the cluster to `epoch` and `seq`, as the events subscription or a reset found
    /// it: a new epoch is adopted; a seq past this node's is read from the log; one short of
    /// it means Redis lost messages this node has seen ([`IngestCore::check_lost`]).
    async fn sync_with(&self, epoch: Box<str>, seq: u64) {
        let link = self.link();
        if !self.sequencer.in_epoch(&epoch) {
            self.adopt_epoch(epoch.clone().into()).await;
        }
        match link.last_seq.get() {
            Some(last) if seq > last => link.read_log(last, seq, LogUse::Fill { up_to: seq }),
            Some(_) => self.check_lost(&epoch, seq),
            None => {
                let window = self.settings.preload_messages_max as u64;
                let after = seq.saturating_sub(window.min(cluster::LOG_READ_MAX as u64));
                link.read_log(after, seq, LogUse::Preload { up_to: seq });
                if link.log_wait.get().is_none() {
                    self.joined_at(seq, after);
                }
            }
        }
    }

    /// Redis's `seq` of this node's `epoch`, as read at a connect, is below the last message
    /// this node took: Redis may have lost messages (a replica that lagged was promoted, or it
    /// restarted from an older save), and would then number new ones with seqs and offsets
    /// clients have already seen. Or the position is merely older than this node's last
    /// message (it was read on another connection before the node took more): the bridge's
    /// [`RESET_SCRIPT`] checks again, atomically, against the node's last seq now. If Redis
    /// lost them the epoch is over: the bridge starts a new one unless another node did,
    /// every node adopts it, and every client learns with `recovered:false` that its
    /// positions are void.
    fn check_lost(&self, epoch: &str, seq: u64) {
        let link = self.link();
        let Some(last) = link.last_seq.get().filter(|last| seq < *last) else {
            return;
        };
        tracing::warn!(
            epoch,
            redis_seq = seq,
            node_seq = last,
            "Redis's seq is below this node's: checking whether Redis lost messages"
        );
        if link
            .requests
            .try_send(ToCluster::Reset {
                epoch: epoch.into(),
                seq: last,
            })
            .is_err()
        {
            tracing::warn!("the bridge's queue is full: the new epoch waits for the next connect");
        }
    }

    /// A node that joined at `seq` holds nothing at or before `after`.
    fn joined_at(&self, seq: u64, after: u64) {
        self.sequencer.set_floor(after);
        self.sequencer.set_position(seq);
        self.link().last_seq.set(Some(seq));
    }

    /// Keeps the log's recent past in history, without fanning it out.
    fn preload(&self, entries: Vec<Numbered>, up_to: u64) {
        let after = entries
            .first()
            .map_or(up_to, |first| first.seq.saturating_sub(1));
        let now = Instant::now();
        for entry in &entries {
            if !self.sequencer.in_epoch(&entry.epoch) {
                continue;
            }
            let Ok((assigned, _)) = self.sequencer.assign_numbered(entry, &self.routes) else {
                continue;
            };
            let delivery = self.encode_numbered(entry, assigned.policy, now);
            self.sequencer.record(&entry.channel, &delivery, now);
        }
        tracing::info!(
            messages = entries.len(),
            up_to,
            "history preloaded from the cluster's log"
        );
        self.joined_at(up_to, after);
    }

    /// Hands a user act to the bridge, for every node: refused with `cluster_unavailable`
    /// while Redis is unreachable (it would reach no node), `overloaded` when the bridge's
    /// queue is full.
    pub(super) fn cluster_user_act(
        &self,
        stream: Arc<str>,
        act: UserAct,
    ) -> Result<(), PublishError> {
        let link = self.link();
        if !(link.subscribed.get() && link.health.get() == Health::Ready) {
            return Err(PublishError::ClusterUnavailable);
        }
        link.requests
            .try_send(ToCluster::UserAct(UserActEvent { stream, act }))
            .map_err(|_| PublishError::Overloaded)
    }

    /// A new epoch: Redis lost its data and numbers from 1 again.
    async fn adopt_epoch(&self, epoch: Arc<str>) {
        tracing::warn!(%epoch, "the cluster's epoch changed: offsets restart, clients reconnect");
        self.sequencer.adopt_epoch(epoch.clone());
        let link = self.link();
        link.last_seq.set(None);
        link.jump_until.set(0);
        for shard in &self.shards {
            shard.push(ToShard::Epoch(epoch.clone())).await;
            shard.wake();
        }
    }

    /// Takes the next arrived message: in order, fanned out, kept in history.
    pub(super) async fn take_arrived(&self, touched: &mut [bool]) {
        let link = self.link();
        let Some(event) = link.arrived.borrow_mut().pop_front() else {
            return;
        };
        if !self.sequencer.in_epoch(&event.epoch) {
            // Redis lost its data without our subscription breaking (a FLUSHALL): take the
            // new epoch from here, with nothing before this message.
            self.adopt_epoch(event.epoch.clone().into()).await;
            self.joined_at(event.seq - 1, event.seq - 1);
        }
        let Some(last) = link.last_seq.get() else {
            // Not synced yet (the join's log read is in flight or failed): keep it for later.
            link.arrived.borrow_mut().push_front(event);
            return;
        };
        if event.seq <= last {
            return;
        }
        if event.seq > last + 1 && event.seq > link.jump_until.get() + 1 {
            let up_to = event.seq - 1;
            link.arrived.borrow_mut().push_front(event);
            link.read_log(last, up_to, LogUse::Fill { up_to });
            return;
        }
        link.last_seq.set(Some(event.seq));
        self.sequencer.set_position(event.seq);
        let now = Instant::now();
        let (assigned, gap) = match self.sequencer.assign_numbered(&event, &self.routes) {
            Ok(assigned) => assigned,
            Err(Unnumbered::Stale) => return,
            Err(Unnumbered::ChannelsFull) => {
                tracing::warn!(channel = %event.channel, "channels_max reached: a cluster message is not delivered here");
                return;
            }
        };
        if let Some((from, to)) = gap {
            tracing::warn!(channel = %event.channel, from, to, "messages lost to this node: gap notice");
            let frame = command::gap_frame(&event.channel, from, to);
            for shard in self.routes.routed(&event.channel) {
                self.shards[shard]
                    .push(ToShard::Gap {
                        channel: event.channel.clone(),
                        frame: frame.clone(),
                    })
                    .await;
                touched[shard] = true;
            }
        }
        let delivery = self.encode_numbered(&event, assigned.policy, now);
        self.fan_out(delivery, &event.channel, now, touched).await;
    }

    /// The encoded frame of a numbered message, stamped as accepted `now` (its fan-out latency
    /// on this node starts when it arrived from Redis).
    fn encode_numbered(
        &self,
        event: &Numbered,
        policy: usize,
        now: Instant,
    ) -> crate::msg::Delivery {
        let message = encode::Message {
            channel: &event.channel,
            offset: event.offset,
            ts_ms: event.ts_ms,
            data: &event.data,
            priority: event.priority,
            stamp: crate::msg::Stamp {
                publish: event.seq,
                accepted: now,
            },
        };
        self.sequencer.encode(&message, policy)
    }

    /// The cluster state, `None` on a single node.
    pub fn cluster_link(&self) -> Option<&ClusterLink> {
        self.cluster.as_ref()
    }

    /// `cluster` in `/v1/stats`, `None` on a single node.
    pub fn cluster_stats(&self) -> Option<ClusterStats> {
        let timeout = self.settings.redis_timeout;
        self.cluster
            .as_ref()
            .map(|link| link.stats(Instant::now(), timeout))
    }
}

/// Logs why a publish (`what` it was) has no numbers: a refusal at debug (one per publish
/// while Redis is away: the bridge logs the stall), an unknown outcome as a warning.
fn log_failure(failure: &PublishFailure, what: std::fmt::Arguments<'_>) {
    match failure {
        PublishFailure::Refused(reason) => {
            tracing::debug!(%reason, publish = %what, "cluster publish refused");
        }
        PublishFailure::Unknown(reason) => {
            tracing::warn!(%reason, publish = %what, "cluster publish outcome unknown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ingest::lanes::Reply;
    use crate::ingest::Priority;
    use crate::queue;

    fn batch_of(channels: &[&str]) -> (Batch, oneshot::Receiver<BatchOutcome>) {
        let (done, result) = oneshot::channel();
        let jobs = channels
            .iter()
            .map(|&channel| Job {
                channel: channel.into(),
                data: "1".into(),
                priority: Priority::Normal,
                ts_ms: 5,
                accepted: Instant::now(),
                reply: Reply::None,
            })
            .collect();
        (Batch { jobs, done }, result)
    }

    /// A batch's outcome if it was answered already.
    fn answered(result: &mut oneshot::Receiver<BatchOutcome>) -> Option<BatchOutcome> {
        result
            .try_recv()
            .expect("the sender is kept until answered")
    }

    #[test]
    fn a_cluster_batch_is_one_request_with_one_answer_for_all_of_it() {
        let (outcomes, stats) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                let (requests, bridge) = Requests::unattached(1);
                let config = Arc::new(Config::default());
                let shards = vec![queue::bounded(4).0];
                let core = IngestCore::new(config, "e".into(), shards, Some(requests));
                let mut touched = [false];
                let mut outcomes = Vec::new();
                for answer in [
                    Ok(vec![7, 1, 8]),
                    Err(PublishFailure::Refused("not sent".into())),
                    Err(PublishFailure::Unknown("no answer".into())),
                ] {
                    let (first, mut result) = batch_of(&["a", "b", "a"]);
                    core.sequence_batch(first, &mut touched).await;
                    let Some(ToCluster::PublishBatch(request)) = bridge.take() else {
                        panic!("expected the batch handed to the bridge as one request");
                    };
                    assert!(bridge.take().is_none(), "and nothing more");
                    let channels: Vec<&str> = request
                        .entries
                        .iter()
                        .map(|entry| &*entry.channel)
                        .collect();
                    assert_eq!(channels, ["a", "b", "a"], "in batch order");
                    assert!(request.entries.iter().all(|entry| entry.ts_ms == 5));
                    assert_eq!(answered(&mut result), None, "waiting for the bridge");
                    // While it waits, the bridge's queue (of one) is free: a second batch
                    // takes it, and a third finds it full.
                    let (second, mut second_result) = batch_of(&["c"]);
                    core.sequence_batch(second, &mut touched).await;
                    let (third, mut third_result) = batch_of(&["d"]);
                    core.sequence_batch(third, &mut touched).await;
                    assert_eq!(
                        answered(&mut third_result),
                        Some(Err(PublishError::Overloaded))
                    );
                    let Some(ToCluster::PublishBatch(second)) = bridge.take() else {
                        panic!("expected the second batch");
                    };
                    let news = FromCluster::PublishedBatch {
                        token: request.token,
                        result: answer,
                    };
                    core.cluster_news(news, &mut touched).await;
                    outcomes.push(answered(&mut result));
                    let news = FromCluster::PublishedBatch {
                        token: second.token,
                        result: Ok(vec![1]),
                    };
                    core.cluster_news(news, &mut touched).await;
                    assert_eq!(answered(&mut second_result), Some(Ok(vec![1])));
                }
                let stats = core
                    .cluster_stats()
                    .expect("cluster mode has cluster stats");
                (outcomes, stats)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            outcomes,
            [
                Some(Ok(vec![7, 1, 8])),
                Some(Err(PublishError::ClusterUnavailable)),
                Some(Err(PublishError::OutcomeUnknown)),
            ],
            "the bridge's one answer is the batch's"
        );
        assert_eq!(
            (
                stats.publishes_unavailable_total,
                stats.publishes_outcome_unknown_total,
                stats.oldest_pending_ms,
            ),
            (3, 3, 0),
            "each refusal counts the batch's three messages; nothing waits"
        );
    }

    #[test]
    fn a_refused_cluster_batch_says_nothing_of_it_was_published_and_an_unknown_one_whole_or_none() {
        let config = Config::default();
        let unavailable = PublishError::ClusterUnavailable;
        assert_eq!(
            (unavailable.status(), unavailable.code()),
            (http::StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable")
        );
        assert!(unavailable
            .batch_message(&config)
            .starts_with("nothing of the batch was published: "));
        let unknown = PublishError::OutcomeUnknown;
        assert_eq!(
            (unknown.status(), unknown.code()),
            (http::StatusCode::GATEWAY_TIMEOUT, "outcome_unknown")
        );
        let message = unknown.batch_message(&config);
        for said in [
            "may or may not",
            "whole or not at all",
            "redis_timeout_ms = 1000 ms",
            "GET /v1/history",
        ] {
            assert!(message.contains(said), "{said:?} in {message:?}");
        }
        assert!(!message.contains("nothing of the batch"), "{message}");
    }
}
