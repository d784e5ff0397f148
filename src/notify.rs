//! A wake-up between tasks of one core: one task waits for a condition, others notify it.
//!
//! The ingest core and every shard need the same small thing several times (the sequencer
//! waiting for jobs, a forwarder waiting for a backlog, an executor waiting to be told to stop).
//! This is it, single-threaded on purpose: it is `!Send`, so it can never be used across cores,
//! where `queue.rs` with its atomic wakers is the only link.

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Wakes the one task waiting in [`Notify::wait_until`].
#[derive(Debug, Default)]
pub struct Notify {
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Wakes the waiting task, if there is one, so it checks its condition again.
    pub fn notify(&self) {
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits until `ready()` is true, checking it again after every [`Notify::notify`].
    pub async fn wait_until(&self, ready: impl Fn() -> bool) {
        poll_fn(|cx| {
            if ready() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
