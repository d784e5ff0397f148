//! The only link between cores: bounded lock-free single-producer/single-consumer queues.
//!
//! Each direction between the ingest core and a broadcast shard is one `Queue`: a
//! `crossbeam_queue::ArrayQueue` plus a waker for each side. The producer pushes a batch, then
//! calls [`Sender::wake`] once; the consumer drains at most `queue_batch_max` items per poll and
//! yields. glommio accepts wakes from foreign threads (its wakers queue themselves on the owning
//! executor's notifier), so a parked consumer costs nothing until the producer rings.
//!
//! What crosses is only `Send` data: encoded frames as `Bytes`, names as `Box<str>`. This module
//! must never carry per-core state (`Rc`, `RefCell`) or block a thread: a full queue makes the
//! producer's task wait for space, it never spins.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use corecast_proto::Priority;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;

use crate::ingest::admission::{Peer, Refused};
use crate::shard::ShardStats;
use crate::ws::ConnId;

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
    /// Close every connection with 1001 and stop.
    Shutdown,
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
    /// The channel's full name when it is in a tenant's scope (`$t:acme.leads.42`), which the
    /// shard matches subscriptions against; the frame names it as the tenant's clients do
    /// (`leads.42`). `None` when the frame's name is the full name.
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
    /// Where the frame's JSON payload starts (after the WebSocket header).
    pub fn payload_start(&self) -> u8 {
        let start = usize::from(self.channel_start) - crate::ingest::encode::PREFIX.len();
        u8::try_from(start).expect("a frame header is at most 10 bytes")
    }

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
    /// The answer to [`ToShard::Query`].
    Answer {
        query: u64,
        shard: ShardId,
        answer: Answer,
    },
    /// News from the Redis bridge (cluster mode).
    Cluster(crate::cluster::FromCluster),
    /// SIGINT or SIGTERM arrived.
    Shutdown,
}

/// What a [`ToShard::Query`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    Stats,
    Channels,
    /// Stop accepting connections, the first step of shutdown; answered once stopped.
    StopAccepting,
}

/// Where a recovering client was, and the position it gives: the protocol's own types.
pub use corecast_proto::position::{Position, Since};

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
    Stats(ShardReport),
    StoppedAccepting,
    Channels(Vec<(Box<str>, usize)>),
}

/// One direction of a cross-core link. The two wakers sit on their own cache lines because
/// the producer core writes one and the consumer core the other.
struct Queue<T> {
    items: ArrayQueue<T>,
    consumer: CachePadded<AtomicWaker>,
    producer: CachePadded<AtomicWaker>,
}

/// Creates a queue holding at most `items_max` items.
pub fn bounded<T>(items_max: usize) -> (Sender<T>, Receiver<T>) {
    assert!(items_max > 0, "a queue needs room for one item");
    let queue = Arc::new(Queue {
        items: ArrayQueue::new(items_max),
        consumer: CachePadded::new(AtomicWaker::new()),
        producer: CachePadded::new(AtomicWaker::new()),
    });
    (
        Sender {
            queue: queue.clone(),
        },
        Receiver { queue },
    )
}

/// The producing end. Not `Clone`: one producer per queue keeps the wake-up protocol simple.
pub struct Sender<T> {
    queue: Arc<Queue<T>>,
}

impl<T> Sender<T> {
    /// Pushes without waiting; gives the item back when the queue is full.
    /// Call [`Sender::wake`] after the last push of a batch.
    pub fn try_push(&self, item: T) -> Result<(), T> {
        self.queue.items.push(item)
    }

    /// Pushes, waiting for space if the consumer is behind. Wakes the consumer before waiting,
    /// so a full queue always has a consumer on its way.
    pub async fn push(&self, item: T) {
        let mut item = Some(item);
        poll_fn(|cx| {
            let pending = item.take().expect("polled after completion");
            match self.queue.items.push(pending) {
                Ok(()) => Poll::Ready(()),
                Err(back) => {
                    self.queue.producer.register(cx.waker());
                    self.wake();
                    match self.queue.items.push(back) {
                        Ok(()) => Poll::Ready(()),
                        Err(back) => {
                            item = Some(back);
                            Poll::Pending
                        }
                    }
                }
            }
        })
        .await
    }

    /// Rings the consumer if it is parked. Cheap when it is not.
    pub fn wake(&self) {
        self.queue.consumer.wake();
    }

    /// Items waiting right now (for stats; racy by nature).
    pub fn len(&self) -> usize {
        self.queue.items.len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.items.is_empty()
    }
}

/// The consuming end, owned by exactly one task on one core.
pub struct Receiver<T> {
    queue: Arc<Queue<T>>,
}

impl<T> Receiver<T> {
    /// Waits until at least one item is queued.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if !self.queue.items.is_empty() {
                return Poll::Ready(());
            }
            self.queue.consumer.register(cx.waker());
            if self.queue.items.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Takes one item, if any. After a drained batch, wakes a producer waiting for space.
    pub fn pop(&self) -> Option<T> {
        self.queue.items.pop()
    }

    /// Tells a producer waiting in [`Sender::push`] that there is space again.
    pub fn release(&self) {
        self.queue.producer.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_gives_the_item_back() {
        let (tx, rx) = bounded::<u32>(2);
        assert_eq!(tx.try_push(1), Ok(()));
        assert_eq!(tx.try_push(2), Ok(()));
        assert_eq!(tx.try_push(3), Err(3));
        assert_eq!(rx.pop(), Some(1));
        assert_eq!(tx.try_push(3), Ok(()));
        assert_eq!((rx.pop(), rx.pop(), rx.pop()), (Some(2), Some(3), None));
    }

    #[test]
    fn consumer_on_one_executor_wakes_for_a_producer_on_another() {
        let (tx, rx) = bounded::<u64>(4);
        let items_total = 10_000u64;
        let consumer = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let mut sum = 0u64;
                let mut seen = 0u64;
                while seen < items_total {
                    rx.ready().await;
                    while let Some(item) = rx.pop() {
                        assert_eq!(item, seen, "items arrive in push order");
                        sum += item;
                        seen += 1;
                    }
                    rx.release();
                }
                sum
            })
            .unwrap();
        let producer = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                for item in 0..items_total {
                    tx.push(item).await;
                    tx.wake();
                }
            })
            .unwrap();
        producer.join().unwrap();
        assert_eq!(
            consumer.join().unwrap(),
            items_total * (items_total - 1) / 2
        );
    }
}
