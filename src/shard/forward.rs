//! The shard's one way to the ingest core: every message for it goes through [`Forwarder::send`],
//! in order, and nothing that sends here ever waits.
//!
//! A message goes straight into the cross-core queue when the queue has room and nothing is
//! queued ahead of it; otherwise it joins the backlog, which [`Forwarder::run`] (a task of its
//! own) pushes into the queue as space frees up. That keeps the one-way rule of the shard: the
//! task that drains the ingest core's queue never waits on the queue the other way.
//!
//! It owns no knowledge of what it carries beyond counting it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use crate::msg::ToIngest;
use crate::notify::Notify;
use crate::queue::Sender;

/// The queue to the ingest core and the backlog behind it.
pub struct Forwarder {
    to_ingest: Sender<ToIngest>,
    /// Messages for the ingest core that found its queue full, in order.
    backlog: RefCell<VecDeque<ToIngest>>,
    /// Wakes [`Forwarder::run`] when `backlog` gains a message.
    backlog_ready: Notify,
    /// True while the forwarder holds a message taken from `backlog`: later messages must
    /// queue behind it to keep their order.
    forwarding: Cell<bool>,
}

impl Forwarder {
    pub fn new(to_ingest: Sender<ToIngest>) -> Self {
        Forwarder {
            to_ingest,
            backlog: RefCell::new(VecDeque::new()),
            backlog_ready: Notify::default(),
            forwarding: Cell::new(false),
        }
    }

    /// Sends the ingest core a message, in order with every earlier one.
    pub fn send(&self, message: ToIngest) {
        let mut backlog = self.backlog.borrow_mut();
        if backlog.is_empty() && !self.forwarding.get() {
            match self.to_ingest.try_push(message) {
                Ok(()) => {
                    self.to_ingest.wake();
                    return;
                }
                Err(message) => backlog.push_back(message),
            }
        } else {
            backlog.push_back(message);
        }
        self.backlog_ready.notify();
    }

    /// Messages waiting in the backlog, not yet in the queue.
    pub fn backlog_len(&self) -> usize {
        self.backlog.borrow().len()
    }

    /// Messages on their way to the ingest core: in the queue and in the backlog.
    pub fn queue_len(&self) -> usize {
        self.to_ingest.len() + self.backlog_len()
    }

    /// Forwards what found the ingest core's queue full, waiting for space; never returns.
    pub async fn run(&self) {
        loop {
            self.backlog_ready
                .wait_until(|| !self.backlog.borrow().is_empty())
                .await;
            self.forwarding.set(true);
            loop {
                let next = self.backlog.borrow_mut().pop_front();
                let Some(message) = next else { break };
                self.to_ingest.push(message).await;
                self.to_ingest.wake();
            }
            self.forwarding.set(false);
        }
    }
}
