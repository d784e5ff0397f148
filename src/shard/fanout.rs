//! Fan-out: writing frames to the shard's connections. A published message goes to every
//! connection the registry matches ([`Fanout::deliver`]); a reply or control frame to one
//! ([`Fanout::send_to`]); a connection whose outbox overflows is closed as a slow consumer.
//!
//! Each write is tried on the socket at once (`ConnHandle::write_now`) and only what the socket
//! does not take is queued in the connection's outbox, except under the batching window
//! (`batch_window_us`), where non-critical messages wait and [`Fanout::run_batcher`] wakes
//! their connections once it has passed. After each delivery's loop the fan-out time since the
//! ingest core accepted the publish is recorded here (what that covers:
//! [`crate::ingest::metrics`]) and kept for the next report to the ingest core.
//!
//! When the shard finds a message queued behind the one it takes (a burst, a saturating
//! publisher, a fan-out slower than the publishes), the rest of the batch it drains coalesces
//! without a window ([`Fanout::coalesce`]): each delivery queues in the outboxes without waking
//! anyone, and [`Fanout::end_batch`] writes each connection it reached once, all of that
//! batch's frames for it in one `send()` (`ConnHandle::flush_now`). The cost per delivery then
//! falls as the load rises, while a lone event still leaves at once. Its fan-out times are
//! taken when the batch is written.
//!
//! The delivery loop is the shard's hot path: it must allocate nothing per connection, clone no
//! `Rc`, and never wait on a connection.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use bytes::Bytes;
use corecast_proto::Priority;

use super::conn::{self, ConnHandle};
use super::conns::Conns;
use super::interest::Interest;
use super::settings::Settings;
use super::stats::Stats;
use crate::latency::{FanoutLatency, LatencySummary};
use crate::msg::{ConnId, Delivery, FanoutReport, Stamp};
use crate::notify::Notify;
use crate::ws::outbox::{Kind, Shed};
use crate::ws::session::CloseRequest;

/// The fan-out's limits, scratch and latency figures.
pub struct Fanout {
    /// `outbox_frames_max`: a connection's outbox overflows past it.
    outbox_frames_max: usize,
    /// `outbox_bytes_max`: a connection's outbox overflows past it.
    outbox_bytes_max: usize,
    /// `batch_window_us`: how long non-critical messages wait for company.
    batch_window: Duration,
    /// Whether there is a batching window at all (`batch_window_us > 0`).
    batching: bool,
    /// Connections with messages held back for the batching window.
    batched: RefCell<Vec<ConnId>>,
    /// Wakes [`Fanout::run_batcher`] when `batched` gains its first connection.
    batched_ready: Notify,
    /// Set while a batch of more than one message coalesces (never with a batching window).
    coalescing: Cell<bool>,
    /// The connections holding the batch's deliveries, and the batch's publishes, whose
    /// fan-out times are taken once they are written.
    coalesced: RefCell<Vec<ConnId>>,
    coalesced_stamps: RefCell<Vec<Stamp>>,
    /// Where a connection's held frames are gathered into one write.
    gather: RefCell<Vec<u8>>,
    /// The connections one delivery goes to, reused by every delivery.
    matches: RefCell<Vec<ConnId>>,
    /// Fan-out time of every delivery this shard handled.
    latency: RefCell<FanoutLatency>,
    /// Fan-out times not yet reported to the ingest core: at most one batch of the queue.
    reports: RefCell<Vec<FanoutReport>>,
}

impl Fanout {
    pub fn new(settings: &Settings) -> Self {
        Fanout {
            outbox_frames_max: settings.outbox_frames_max,
            outbox_bytes_max: settings.outbox_bytes_max,
            batch_window: settings.batch_window,
            batching: !settings.batch_window.is_zero(),
            batched: RefCell::new(Vec::new()),
            batched_ready: Notify::default(),
            coalescing: Cell::new(false),
            coalesced: RefCell::new(Vec::new()),
            coalesced_stamps: RefCell::new(Vec::new()),
            gather: RefCell::new(Vec::new()),
            matches: RefCell::new(Vec::new()),
            latency: RefCell::new(FanoutLatency::default()),
            reports: RefCell::new(Vec::new()),
        }
    }

    /// Whether messages wait for a batching window, and [`Fanout::run_batcher`] must run.
    pub fn batching(&self) -> bool {
        self.batching
    }

    /// Sends a reply or control `frame` to a connection: at once where its socket takes it
    /// (see `ConnHandle::write_now`), the rest through its outbox and task. A full outbox
    /// closes it as a slow consumer.
    pub fn send_to(&self, handle: &ConnHandle, frame: Bytes, stats: &Stats) {
        let written = handle.write_now(&frame);
        let frames = usize::from(written == frame.len());
        if written > 0 {
            handle.count_written(frames, written);
        }
        if written == 0 {
            if handle
                .push(frame, self.outbox_frames_max, self.outbox_bytes_max)
                .is_err()
            {
                slow_consumer(handle, stats);
            }
        } else if frames == 0 {
            handle.push_started(frame, written);
        }
        stats.count_written(frames, written);
    }

    /// Sends a connection its `connected` frame, held back until its connect-time
    /// subscriptions are live. A full outbox closes it as a slow consumer.
    pub fn release_hello(&self, handle: &ConnHandle, stats: &Stats) {
        if handle
            .release_hello(self.outbox_frames_max, self.outbox_bytes_max)
            .is_err()
        {
            slow_consumer(handle, stats);
        }
    }

    /// Writes a published frame to every local subscriber of its channel, then records the
    /// fan-out time and keeps it for the next report to the ingest core.
    pub fn deliver(&self, delivery: &Delivery, interest: &Interest, conns: &Conns, stats: &Stats) {
        interest.advance_position(delivery.stamp.publish);
        let start = usize::from(delivery.channel_start);
        let kind = Kind::Message {
            channel: delivery
                .frame
                .slice(start..start + usize::from(delivery.channel_len)),
            offset: delivery.offset,
            critical: delivery.priority == Priority::Critical,
            slow: delivery.slow,
        };
        let mut matches = self.matches.borrow_mut();
        interest.collect_matches(delivery.channel(), &mut matches);
        let (mut frames, mut bytes) = (0, 0);
        conns.each_of(&matches, |handle| {
            let (sent_frames, sent_bytes) = self.deliver_to(handle, delivery, &kind, stats);
            frames += sent_frames;
            bytes += sent_bytes;
        });
        stats.count_written(frames, bytes);
        stats.count_deliveries(delivery.namespace, matches.len());
        if self.coalescing.get() {
            self.coalesced_stamps.borrow_mut().push(delivery.stamp);
        } else {
            self.record(delivery.stamp);
        }
    }

    /// Records that the fan-out of the publish `stamp` is done (written, or queued where a
    /// socket was full), for the histogram and the next report to the ingest core.
    fn record(&self, stamp: Stamp) {
        let elapsed = stamp.accepted.elapsed();
        self.latency.borrow_mut().record(elapsed);
        self.reports.borrow_mut().push(FanoutReport {
            publish: stamp.publish,
            elapsed,
        });
    }

    /// More messages wait in the inbox behind the one about to be handled: from it to the
    /// batch's end ([`Fanout::end_batch`]), deliveries coalesce, unless a batching window does
    /// that already. A shard that falls behind thus coalesces from the first message it finds
    /// queued behind another, not only when it wakes to several.
    pub fn coalesce(&self) {
        self.coalescing.set(!self.batching);
    }

    /// Ends the batch: writes each connection's held frames in one `send()` (what the socket
    /// does not take, through its task), then takes the fan-out time of every publish of it.
    pub fn end_batch(&self, conns: &Conns, stats: &Stats) {
        self.coalescing.set(false);
        let (mut frames, mut bytes) = (0, 0);
        let mut gather = self.gather.borrow_mut();
        let mut held = self.coalesced.borrow_mut();
        conns.each_open(&held, |handle| {
            handle.batched.set(false);
            let (sent_frames, sent_bytes) = handle.flush_now(&mut gather);
            frames += sent_frames;
            bytes += sent_bytes;
        });
        held.clear();
        stats.count_written(frames, bytes);
        for stamp in self.coalesced_stamps.borrow_mut().drain(..) {
            self.record(stamp);
        }
    }

    /// Sends one published message to a connection, for `deliver`, which updates the shard's
    /// counters once per fan-out: returns the frames and bytes written at once. A `critical`
    /// message, or any when there is no batching window, is written at once where the socket
    /// takes it; otherwise it queues under its channel's slow-consumer policy, and a batched
    /// one waits for the window's end. A tail the socket did not take queues as the outbox's
    /// started front, outside the policies and the limits: it must follow its head, whole.
    /// While a batch coalesces, every message queues (held for [`Fanout::end_batch`]) and the
    /// connection is flushed first when its outbox holds [`conn::WRITE_COALESCE_BYTES_MAX`] or
    /// has no room for the message: what direct writes would have handed the socket by then
    /// is handed to it, so coalescing never makes a reader a slow consumer.
    #[inline]
    fn deliver_to(
        &self,
        handle: &ConnHandle,
        delivery: &Delivery,
        kind: &Kind,
        stats: &Stats,
    ) -> (usize, usize) {
        // The compressed twin, made once on the ingest core, for every connection that agreed
        // to permessage-deflate; the plain frame for the others.
        let frame = match &delivery.deflated {
            Some(deflated) if handle.compresses() => deflated,
            _ => &delivery.frame,
        };
        let critical = delivery.priority == Priority::Critical;
        let batched = !critical && self.batching;
        let mut held = self.coalescing.get();
        let mut sent = (0, 0);
        if held {
            let (frames, bytes) = handle.outbox_len();
            let room =
                frames < self.outbox_frames_max && bytes + frame.len() <= self.outbox_bytes_max;
            if !room || bytes >= conn::WRITE_COALESCE_BYTES_MAX {
                sent = handle.flush_now(&mut self.gather.borrow_mut());
                // A message with no room behind what is held goes as it would without
                // coalescing: at once where the socket takes it, else under its policy.
                held = room;
            }
        }
        if !batched && !held {
            let written = handle.write_now(frame);
            if written == frame.len() {
                handle.count_written(1, written);
                return (sent.0 + 1, sent.1 + written);
            }
            if written > 0 {
                // The socket took part of it: the rest is the started front of the outbox now.
                handle.count_written(0, written);
                handle.push_started(frame.clone(), written);
                return (sent.0, sent.1 + written);
            }
        }
        let pushed = handle.push_message(
            frame.clone(),
            kind.clone(),
            self.outbox_frames_max,
            self.outbox_bytes_max,
            !batched && !held,
        );
        let shed = match pushed {
            Err(_) => {
                slow_consumer(handle, stats);
                stats.count_namespace_slow_consumer(delivery.namespace);
                return sent;
            }
            Ok(shed) => shed,
        };
        if shed != Shed::default() {
            stats.count_shed(delivery.namespace, shed);
        }
        if batched && !handle.batched.replace(true) {
            let mut waiting = self.batched.borrow_mut();
            if waiting.is_empty() {
                self.batched_ready.notify();
            }
            waiting.push(handle.id);
        }
        if held && !handle.batched.replace(true) {
            self.coalesced.borrow_mut().push(handle.id);
        }
        sent
    }

    /// A `gap` notice for every local subscriber of `channel` (cluster mode: messages this node
    /// never received and cannot read back).
    pub fn gap(
        &self,
        channel: &str,
        frame: Bytes,
        interest: &Interest,
        conns: &Conns,
        stats: &Stats,
    ) {
        let mut matches = self.matches.borrow_mut();
        interest.collect_matches(channel, &mut matches);
        for id in matches.iter() {
            if let Some(handle) = conns.get(*id) {
                self.send_to(&handle, frame.clone(), stats);
            }
        }
    }

    /// The fan-out times gathered since the last call, for a report to the ingest core.
    pub fn take_reports(&self) -> Vec<FanoutReport> {
        std::mem::take(&mut *self.reports.borrow_mut())
    }

    /// Percentiles of every fan-out time recorded so far.
    pub fn latency(&self) -> LatencySummary {
        self.latency.borrow().summary()
    }

    /// Wakes the connections holding batched messages once the batching window has passed
    /// since the first of them was queued; never returns.
    pub async fn run_batcher(&self, conns: &Conns) {
        loop {
            self.batched_ready
                .wait_until(|| !self.batched.borrow().is_empty())
                .await;
            glommio::timer::sleep(self.batch_window).await;
            let waiting = std::mem::take(&mut *self.batched.borrow_mut());
            for id in waiting {
                if let Some(handle) = conns.get(id) {
                    handle.batched.set(false);
                    handle.wake();
                }
            }
        }
    }
}

/// Closes a connection whose outbox overflowed with 4008, counting it and the frame it lost.
pub fn slow_consumer(handle: &ConnHandle, stats: &Stats) {
    tracing::debug!(conn = %handle.name(), "slow consumer: outbox overflowed, closing with 4008");
    stats.count_slow_consumer();
    handle.request_close(CloseRequest::SLOW_CONSUMER);
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::config::Config;
    use crate::msg::Slow;
    use crate::shard::conn::Subscription;

    /// A subscriber of `c` on a socket pair: its handle, lent the server end, and the peer.
    fn subscriber(conns: &Conns, interest: &Interest) -> (Rc<ConnHandle>, UnixStream, UnixStream) {
        let (server, peer) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        // No `connected` to hold back (an echo-style handle): it is greeted from the start.
        let handle =
            conns.insert(|id| Rc::new(ConnHandle::new(id, 0, None, None, None, Instant::now())));
        handle
            .subscriptions
            .borrow_mut()
            .push(Subscription::new("c"));
        interest.make_all_live(&handle);
        handle.lend_fd(server.as_raw_fd());
        (handle, server, peer)
    }

    fn delivery(publish: u64) -> Delivery {
        Delivery {
            frame: Bytes::from(format!("frame {publish};")),
            deflated: None,
            channel_start: 0,
            channel_len: 1,
            scoped: Some("c".into()),
            priority: Priority::Normal,
            offset: publish,
            slow: Slow::Disconnect,
            namespace: 0,
            stamp: crate::msg::Stamp {
                publish,
                accepted: Instant::now(),
            },
        }
    }

    fn read_all(peer: &mut UnixStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        while let Ok(n) = peer.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn a_batch_is_held_then_written_whole_in_order_once_per_connection() {
        let settings = Settings::from_config(&Config::default());
        let (fanout, conns) = (Fanout::new(&settings), Conns::default());
        let (interest, stats) = (Interest::new(0, Arc::from("e")), Stats::new(0, 1));
        let (first, _server1, mut peer1) = subscriber(&conns, &interest);
        let (second, _server2, mut peer2) = subscriber(&conns, &interest);

        fanout.coalesce();
        for publish in 1..=3 {
            fanout.deliver(&delivery(publish), &interest, &conns, &stats);
        }
        assert_eq!(first.outbox_len().0, 3, "held until the batch ends");
        assert_eq!(
            read_all(&mut peer1),
            "",
            "nothing written before the batch ends"
        );
        assert!(fanout.take_reports().is_empty(), "timed when written");

        fanout.end_batch(&conns, &stats);
        assert_eq!(read_all(&mut peer1), "frame 1;frame 2;frame 3;");
        assert_eq!(read_all(&mut peer2), "frame 1;frame 2;frame 3;");
        assert_eq!((first.outbox_len(), second.outbox_len()), ((0, 0), (0, 0)));
        assert_eq!(first.stats().messages_out, 3);
        assert_eq!(stats.totals().messages_out, 6);
        assert_eq!(fanout.take_reports().len(), 3);
    }

    #[test]
    fn a_lone_message_is_written_at_once() {
        let settings = Settings::from_config(&Config::default());
        let (fanout, conns) = (Fanout::new(&settings), Conns::default());
        let (interest, stats) = (Interest::new(0, Arc::from("e")), Stats::new(0, 1));
        let (handle, _server, mut peer) = subscriber(&conns, &interest);

        fanout.deliver(&delivery(1), &interest, &conns, &stats);
        assert_eq!(handle.outbox_len().0, 0);
        assert_eq!(read_all(&mut peer), "frame 1;");
        assert_eq!(fanout.take_reports().len(), 1);
        fanout.end_batch(&conns, &stats);
        assert_eq!(read_all(&mut peer), "");
    }

    #[test]
    fn a_held_connection_whose_outbox_fills_is_flushed_first_not_closed() {
        let config = Config {
            outbox_frames_max: 2,
            ..Config::default()
        };
        let settings = Settings::from_config(&config);
        let (fanout, conns) = (Fanout::new(&settings), Conns::default());
        let (interest, stats) = (Interest::new(0, Arc::from("e")), Stats::new(0, 1));
        let (handle, _server, mut peer) = subscriber(&conns, &interest);

        fanout.coalesce();
        for publish in 1..=5 {
            fanout.deliver(&delivery(publish), &interest, &conns, &stats);
        }
        fanout.end_batch(&conns, &stats);
        assert!(
            !handle.is_closing(),
            "a reader the socket keeps up with is no slow consumer"
        );
        assert_eq!(
            read_all(&mut peer),
            "frame 1;frame 2;frame 3;frame 4;frame 5;"
        );
    }
}
