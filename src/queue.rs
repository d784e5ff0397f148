//! The only link between cores: bounded lock-free single-producer/single-consumer queues.
//!
//! Each direction between the ingest core and a broadcast shard is one `Queue`: a
//! `crossbeam_queue::ArrayQueue` plus a waker for each side. The producer pushes a batch, then
//! calls [`Sender::wake`] once; the consumer drains at most `queue_batch_max` items per poll and
//! yields. glommio accepts wakes from foreign threads (its wakers queue themselves on the owning
//! executor's notifier), so a parked consumer costs nothing until the producer rings.
//!
//! The queue knows only `T`: what crosses it is [`crate::msg`]'s business (only `Send` data).
//! This module must never carry per-core state (`Rc`, `RefCell`) or block a thread: a full
//! queue makes the producer's task wait for space, it never spins.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;

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
            if !self.is_empty() {
                return Poll::Ready(());
            }
            self.queue.consumer.register(cx.waker());
            if self.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Items waiting right now; more may arrive at any moment, none can leave but by `pop`.
    pub fn len(&self) -> usize {
        self.queue.items.len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.items.is_empty()
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
