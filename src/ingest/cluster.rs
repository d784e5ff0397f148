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

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Instant;

use hashbrown::HashMap;

use super::history::{History, Unnumbered};
use super::{IngestCore, Job, PublishError};
use crate::cluster::{self, FromCluster, NodeInfo, Numbered, PublishRequest, ToCluster};
use crate::queue::ToShard;
use crate::ws::command;

/// What a read of the cluster's log is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogUse {
    /// Joining: the recent past goes into history only (nobody here was subscribed to it).
    Preload { up_to: u64 },
    /// Catching up after a broken subscription: fanned out, before what arrived since.
    Fill { up_to: u64 },
}

/// The ingest core's cluster state.
pub struct ClusterLink {
    requests: SyncSender<ToCluster>,
    /// Publishes sent to Redis, waiting for their numbers, by token.
    pending: RefCell<HashMap<u64, Job>>,
    next_token: Cell<u64>,
    /// Messages from Redis not fanned out yet, in seq order.
    pub(super) arrived: RefCell<VecDeque<Numbered>>,
    /// The seq of the last message taken; `None` until the node has synced with the cluster.
    last_seq: Cell<Option<u64>>,
    /// A log read in flight: its token and use. Arrived messages wait for it.
    log_wait: Cell<Option<(u64, LogUse)>>,
    /// Missing seqs up to this one are gone from the log: take the jump.
    jump_until: Cell<u64>,
    connected: Cell<bool>,
    nodes: RefCell<Vec<NodeInfo>>,
}

/// `cluster` in `/v1/stats`.
#[derive(Debug, serde::Serialize)]
pub struct ClusterStats {
    pub connected: bool,
    pub seq: Option<u64>,
    pub nodes: Vec<NodeInfo>,
}

impl ClusterLink {
    pub fn new(requests: SyncSender<ToCluster>) -> ClusterLink {
        ClusterLink {
            requests,
            pending: RefCell::new(HashMap::new()),
            next_token: Cell::new(0),
            arrived: RefCell::new(VecDeque::new()),
            last_seq: Cell::new(None),
            log_wait: Cell::new(None),
            jump_until: Cell::new(0),
            connected: Cell::new(false),
            nodes: RefCell::new(Vec::new()),
        }
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

    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            connected: self.connected.get(),
            seq: self.last_seq.get(),
            nodes: self.nodes.borrow().clone(),
        }
    }

    /// This node's connection count, for its presence key.
    pub fn report_connections(&self, connections: usize) {
        // Best effort: a full queue skips one refresh.
        let _ = cluster::try_send(&self.requests, ToCluster::Presence { connections });
    }

    /// Asks for the log after `after` up to `up_to`, for `purpose`.
    fn read_log(&self, after: u64, up_to: u64, purpose: LogUse) {
        let token = self.token();
        let request = ToCluster::ReadLog {
            token,
            after,
            up_to: up_to.min(after + cluster::LOG_READ_MAX as u64),
        };
        if cluster::try_send(&self.requests, request).is_ok() {
            self.log_wait.set(Some((token, purpose)));
        }
    }
}

impl IngestCore {
    fn link(&self) -> &ClusterLink {
        self.cluster
            .as_ref()
            .expect("cluster paths run in cluster mode only")
    }

    /// Cluster mode's publish: Redis numbers it; the reply waits for those numbers, and the
    /// fan-out for the message's return on `corecast:events`.
    pub(super) async fn cluster_publish(&self, job: Job, touched: &mut [bool]) {
        let link = self.link();
        let token = link.token();
        let request = ToCluster::Publish(PublishRequest {
            token,
            channel: job.channel.clone(),
            data: job.data.clone(),
            priority: job.priority,
            ts_ms: job.ts_ms,
        });
        if cluster::try_send(&link.requests, request).is_err() {
            self.reply(job, Err(PublishError::Overloaded), touched)
                .await;
            return;
        }
        link.pending.borrow_mut().insert(token, job);
    }

    /// Handles news from the bridge.
    pub(super) async fn cluster_news(&self, news: FromCluster, touched: &mut [bool]) {
        let link = self.link();
        match news {
            FromCluster::Published { token, result } => {
                let Some(job) = link.pending.borrow_mut().remove(&token) else {
                    return;
                };
                let outcome = match result {
                    Ok(numbered) => Ok(numbered.offset),
                    Err(reason) => {
                        tracing::warn!(%reason, channel = %job.channel, "cluster publish failed");
                        Err(PublishError::ClusterUnavailable)
                    }
                };
                self.reply(job, outcome, touched).await;
            }
            FromCluster::Event(event) => {
                link.arrived.borrow_mut().push_back(event);
                self.lanes_ready.notify();
            }
            FromCluster::Subscribed { epoch, seq } => {
                link.connected.set(true);
                if *epoch != *self.epoch() {
                    self.adopt_epoch(epoch.into()).await;
                }
                match link.last_seq.get() {
                    Some(last) if seq > last => {
                        link.read_log(last, seq, LogUse::Fill { up_to: seq })
                    }
                    Some(_) => {}
                    None => {
                        let window = self.config.history_messages_max.max(1) as u64;
                        let after = seq.saturating_sub(window.min(cluster::LOG_READ_MAX as u64));
                        link.read_log(after, seq, LogUse::Preload { up_to: seq });
                        if link.log_wait.get().is_none() {
                            self.joined_at(seq, after);
                        }
                    }
                }
            }
            FromCluster::Lost { reason } => {
                if link.connected.replace(false) {
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
                self.lanes_ready.notify();
            }
            FromCluster::Nodes(nodes) => *link.nodes.borrow_mut() = nodes,
        }
    }

    /// A node that joined at `seq` holds nothing at or before `after`.
    fn joined_at(&self, seq: u64, after: u64) {
        let link = self.link();
        self.history.borrow_mut().set_floor(after);
        self.published_total.set(seq);
        link.last_seq.set(Some(seq));
    }

    /// Keeps the log's recent past in history, without fanning it out.
    fn preload(&self, entries: Vec<Numbered>, up_to: u64) {
        let after = entries
            .first()
            .map_or(up_to, |first| first.seq.saturating_sub(1));
        let now = Instant::now();
        for entry in &entries {
            if *entry.epoch != *self.epoch() {
                continue;
            }
            let assigned =
                self.history
                    .borrow_mut()
                    .assign_numbered(&entry.channel, entry.offset, entry.seq);
            let Ok((assigned, _)) = assigned else {
                continue;
            };
            let delivery = self.encode_numbered(entry, assigned.policy, now);
            self.history.borrow_mut().record(
                &entry.channel,
                entry.offset,
                entry.seq,
                delivery.frame.clone(),
                delivery.payload_start(),
                now,
            );
        }
        tracing::info!(
            messages = entries.len(),
            up_to,
            "history preloaded from the cluster's log"
        );
        self.joined_at(up_to, after);
    }

    /// A new epoch: Redis lost its data and numbers from 1 again.
    async fn adopt_epoch(&self, epoch: Arc<str>) {
        tracing::warn!(%epoch, "the cluster's epoch changed: offsets restart, clients reconnect");
        *self.epoch.borrow_mut() = epoch.clone();
        *self.history.borrow_mut() = History::new(self.config.clone());
        self.published_total.set(0);
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
        if *event.epoch != *self.epoch() {
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
        self.published_total.set(event.seq);
        let now = Instant::now();
        let assigned =
            self.history
                .borrow_mut()
                .assign_numbered(&event.channel, event.offset, event.seq);
        let (assigned, gap) = match assigned {
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
            for shard in self.routed(&event.channel) {
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
    ) -> crate::queue::Delivery {
        self.encode(
            &event.channel,
            event.offset,
            event.ts_ms,
            &event.data,
            event.priority,
            policy,
            crate::queue::Stamp {
                publish: event.seq,
                accepted: now,
            },
        )
    }

    /// The cluster state, `None` on a single node.
    pub fn cluster_link(&self) -> Option<&ClusterLink> {
        self.cluster.as_ref()
    }

    /// `cluster` in `/v1/stats`, `None` on a single node.
    pub fn cluster_stats(&self) -> Option<ClusterStats> {
        self.cluster.as_ref().map(ClusterLink::stats)
    }
}
