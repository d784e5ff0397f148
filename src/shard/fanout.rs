//! Fan-out: writing frames to the shard's connections. A published message goes to every
//! connection the registry matches ([`Fanout::deliver`]); a reply or control frame to one
//! ([`Fanout::send_to`]); a connection whose outbox overflows is closed as a slow consumer.
//!
//! Each write is tried on the socket at once and only what the socket does not take is queued
//! in the connection's outbox, except under the batching window (`batch_window_us`), where
//! non-critical messages wait and [`Fanout::run_batcher`] wakes their connections once it has
//! passed. A delivery's writes at once go to the kernel together: the loop over its
//! subscribers queues one send for each connection it can write to on the shard's io_uring
//! ([`SendRing`]), the ring hands them over with one `io_uring_enter`, and the results are
//! settled connection by connection as a `send()`'s would be (a short send's rest, or a
//! frame the socket did not take, queues in the outbox). After each delivery's loop the fan-out time since the
//! ingest core accepted the publish is recorded here (what that covers:
//! [`crate::ingest::metrics`]) and kept for the next report to the ingest core.
//!
//! When the shard finds a message queued behind the one it takes (a burst, a saturating
//! publisher, a fan-out slower than the publishes), the rest of the batch it drains coalesces
//! without a window ([`Fanout::coalesce`]): each delivery queues in the outboxes without waking
//! anyone, and [`Fanout::end_batch`] writes each connection it reached once, all of that
//! batch's frames for it in one send (`ConnHandle::gather_flush`), every connection's send
//! queued on the ring and handed over together. The cost per delivery then falls as the load
//! rises, while a lone event still leaves at once. Its fan-out times are taken when the batch
//! is written.
//!
//! The delivery loop is the shard's hot path: it must allocate nothing per connection, clone no
//! `Rc`, and never wait on a connection.

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Bytes;
use corecast_proto::Priority;

use super::conn::{self, ConnHandle, FlushOut};
use super::conns::Conns;
use super::interest::Interest;
use super::send_ring::{SendRing, Socket};
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
    /// Where the held frames of a batch's connections are gathered, each connection's into one
    /// range: at most [`FLUSH_GATHER_BYTES_MAX`] (and one connection's write) before the
    /// batch's writes so far go to the ring.
    gather: RefCell<Vec<u8>>,
    /// The batch's writes queued for the ring, reused by every batch.
    flushes: RefCell<Vec<Flush>>,
    /// The connections one delivery goes to, reused by every delivery.
    matches: RefCell<Vec<ConnId>>,
    /// The writes of one delivery queued for the ring, reused by every delivery.
    direct: RefCell<Vec<Direct>>,
    /// The shard's io_uring for those writes.
    ring: RefCell<SendRing>,
    /// Fan-out time of every delivery this shard handled.
    latency: RefCell<FanoutLatency>,
    /// Fan-out times not yet reported to the ingest core: at most one batch of the queue.
    reports: RefCell<Vec<FanoutReport>>,
}

/// Bytes gathered from the outboxes of a coalesced batch before its writes so far are handed
/// to the ring: it bounds the gather buffer, while a submission still carries the writes of
/// many connections.
const FLUSH_GATHER_BYTES_MAX: usize = 256 * 1024;

/// A coalesced batch's write to one connection, queued for the ring: the connection, its
/// socket, and what it writes: its outbox's front frame alone, or a range of the gather buffer.
struct Flush {
    id: ConnId,
    socket: Socket,
    front: Option<Bytes>,
    gathered: Range<usize>,
}

/// A delivery's write to one connection, queued for the ring: the connection, the socket the
/// task lent, and whether it takes the compressed twin of the frame.
struct Direct {
    id: ConnId,
    socket: Socket,
    deflated: bool,
}

impl Fanout {
    /// Fails when the kernel refuses the shard its send ring.
    pub fn new(settings: &Settings) -> std::io::Result<Self> {
        Ok(Fanout {
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
            flushes: RefCell::new(Vec::new()),
            matches: RefCell::new(Vec::new()),
            direct: RefCell::new(Vec::new()),
            ring: RefCell::new(SendRing::new(settings.connections_max)?),
            latency: RefCell::new(FanoutLatency::default()),
            reports: RefCell::new(Vec::new()),
        })
    }

    /// Registers the socket a connection's task lends (`fd`) on the ring, by the connection's
    /// slot, so that its sends skip the kernel's descriptor look-up; `forget_socket` must
    /// come before the socket closes.
    pub fn register_socket(&self, id: ConnId, fd: RawFd) {
        self.ring.borrow_mut().register(id.slot as usize, fd);
    }

    /// Drops the ring's reference to a connection's socket before its task closes it.
    pub fn forget_socket(&self, id: ConnId) {
        self.ring.borrow_mut().unregister(id.slot as usize);
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

    /// Writes a published frame to every local subscriber of its channel (the writes at once
    /// as one batch on the ring), then records the fan-out time and keeps it for the next
    /// report to the ingest core.
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
        let mut direct = self.direct.borrow_mut();
        conns.each_of(&matches, |handle| {
            let (sent_frames, sent_bytes) =
                self.deliver_to(handle, delivery, &kind, stats, &mut direct);
            frames += sent_frames;
            bytes += sent_bytes;
        });
        if !direct.is_empty() {
            let (sent_frames, sent_bytes) =
                self.send_direct(&direct, delivery, &kind, conns, stats);
            frames += sent_frames;
            bytes += sent_bytes;
            direct.clear();
        }
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

    /// Ends the batch: writes each connection's held frames in one send, the sends of many
    /// connections queued on the ring together (what a socket does not take, through its
    /// task), then takes the fan-out time of every publish of it.
    pub fn end_batch(&self, conns: &Conns, stats: &Stats) {
        self.coalescing.set(false);
        let (mut frames, mut bytes) = (0, 0);
        let mut gather = self.gather.borrow_mut();
        let mut flushes = self.flushes.borrow_mut();
        let mut held = self.coalesced.borrow_mut();
        gather.clear();
        conns.each_open(&held, |handle| {
            handle.batched.set(false);
            let start = gather.len();
            if let Some((fd, out)) = handle.gather_flush(&mut gather) {
                let front = match out {
                    FlushOut::Front(front) => Some(front),
                    FlushOut::Gathered => None,
                };
                flushes.push(Flush {
                    id: handle.id,
                    socket: socket_of(handle.id, fd),
                    front,
                    gathered: start..gather.len(),
                });
            }
            if gather.len() >= FLUSH_GATHER_BYTES_MAX {
                let (sent_frames, sent_bytes) = self.send_flushes(&mut flushes, &mut gather, conns);
                frames += sent_frames;
                bytes += sent_bytes;
            }
        });
        let (sent_frames, sent_bytes) = self.send_flushes(&mut flushes, &mut gather, conns);
        held.clear();
        stats.count_written(frames + sent_frames, bytes + sent_bytes);
        for stamp in self.coalesced_stamps.borrow_mut().drain(..) {
            self.record(stamp);
        }
    }

    /// Hands the kernel the batch's writes queued so far with one submission on the ring,
    /// settles each connection's (`ConnHandle::settle_flush`), and empties the queue and the
    /// gather buffer. Returns the frames and bytes written.
    fn send_flushes(
        &self,
        flushes: &mut Vec<Flush>,
        gather: &mut Vec<u8>,
        conns: &Conns,
    ) -> (usize, usize) {
        if flushes.is_empty() {
            return (0, 0);
        }
        let mut ring = self.ring.borrow_mut();
        let results = ring.send_all(flushes.iter().map(|flush| {
            let bytes = match &flush.front {
                Some(front) => &front[..],
                None => &gather[flush.gathered.clone()],
            };
            (flush.socket, bytes)
        }));
        let mut results = results.iter();
        let mut sent = (0, 0);
        conns.each_keyed(
            flushes,
            |flush| flush.id,
            |_, handle| {
                let result = *results.next().expect("one result per write");
                let (frames, bytes) = handle.settle_flush(usize::try_from(result).unwrap_or(0));
                sent = (sent.0 + frames, sent.1 + bytes);
            },
        );
        flushes.clear();
        gather.clear();
        sent
    }

    /// Sends one published message to a connection, for `deliver`, which updates the shard's
    /// counters once per fan-out: returns the frames and bytes written. A `critical` message,
    /// or any when there is no batching window, is written at once where the connection can
    /// take a write (`ConnHandle::direct_fd`): that write is queued in `direct` for the ring,
    /// and [`Fanout::send_direct`] settles it. Otherwise it queues under its channel's
    /// slow-consumer policy, and a batched one waits for the window's end. While a batch
    /// coalesces, every message queues (held for [`Fanout::end_batch`]) and the
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
        direct: &mut Vec<Direct>,
    ) -> (usize, usize) {
        let (frame, deflated) = frame_for(delivery, handle.compresses());
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
            if let Some(fd) = handle.direct_fd() {
                direct.push(Direct {
                    id: handle.id,
                    socket: socket_of(handle.id, fd),
                    deflated,
                });
                return sent;
            }
        }
        self.queue_message(handle, delivery, kind, batched, held, stats);
        sent
    }

    /// Hands the kernel a delivery's writes at once with one submission on the ring, then
    /// settles each as a `send()` of it would be: a whole frame counts as written; a tail the
    /// socket did not take queues as the outbox's started front, outside the policies and the
    /// limits (it must follow its head, whole); a frame the socket did not take at all (full,
    /// or failed: the task's own write then finds out) queues under its channel's
    /// slow-consumer policy. Returns the frames and bytes written. Each connection has one
    /// write at most in a submission (the registry matches a connection once per channel),
    /// so no send can follow a short one to the same socket.
    fn send_direct(
        &self,
        direct: &[Direct],
        delivery: &Delivery,
        kind: &Kind,
        conns: &Conns,
        stats: &Stats,
    ) -> (usize, usize) {
        let frame_of = |write: &Direct| frame_for(delivery, write.deflated).0;
        let mut ring = self.ring.borrow_mut();
        let results = ring.send_all(
            direct
                .iter()
                .map(|write| (write.socket, &frame_of(write)[..])),
        );
        let mut sent = (0, 0);
        let mut results = results.iter();
        conns.each_keyed(
            direct,
            |write| write.id,
            |write, handle| {
                let frame = frame_of(write);
                let result = *results.next().expect("one result per write");
                let written = usize::try_from(result).unwrap_or(0);
                if written == frame.len() {
                    handle.count_written(1, written);
                    sent = (sent.0 + 1, sent.1 + written);
                } else if written > 0 {
                    handle.count_written(0, written);
                    handle.push_started(frame.clone(), written);
                    sent.1 += written;
                } else {
                    self.queue_message(handle, delivery, kind, false, false, stats);
                }
            },
        );
        sent
    }

    /// Queues a published message a connection could not take at once under its channel's
    /// slow-consumer policy (an overflow closes it as a slow consumer), held for the
    /// batching window (`batched`) or the coalescing batch's end (`held`), or with its task
    /// woken to write it.
    fn queue_message(
        &self,
        handle: &ConnHandle,
        delivery: &Delivery,
        kind: &Kind,
        batched: bool,
        held: bool,
        stats: &Stats,
    ) {
        let (frame, _) = frame_for(delivery, handle.compresses());
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
                return;
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

/// The socket of connection `id` on the ring: its slot, and the descriptor its task lent.
fn socket_of(id: ConnId, fd: RawFd) -> Socket {
    Socket {
        slot: id.slot as usize,
        fd,
    }
}

/// The frame of `delivery` a connection takes, and whether it is the compressed twin: the twin,
/// made once on the ingest core, for every connection that agreed to permessage-deflate
/// (`compresses`); the plain frame for the others.
fn frame_for(delivery: &Delivery, compresses: bool) -> (&Bytes, bool) {
    match &delivery.deflated {
        Some(deflated) if compresses => (deflated, true),
        _ => (&delivery.frame, false),
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
        let handle = conns.insert(|id| {
            Rc::new(ConnHandle::new(
                id,
                0,
                None,
                None,
                None,
                None,
                Instant::now(),
            ))
        });
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
        let (fanout, conns) = (Fanout::new(&settings).unwrap(), Conns::default());
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
        let (fanout, conns) = (Fanout::new(&settings).unwrap(), Conns::default());
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
        let (fanout, conns) = (Fanout::new(&settings).unwrap(), Conns::default());
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

    #[test]
    fn a_delivery_reaches_every_open_socket_in_one_batch_and_a_gone_peer_costs_nothing() {
        let settings = Settings::from_config(&Config::default());
        let (fanout, conns) = (Fanout::new(&settings).unwrap(), Conns::default());
        let (interest, stats) = (Interest::new(0, Arc::from("e")), Stats::new(0, 1));
        let (first, _server1, mut peer1) = subscriber(&conns, &interest);
        let (gone, _server2, peer2) = subscriber(&conns, &interest);
        let (last, _server3, mut peer3) = subscriber(&conns, &interest);
        drop(peer2);

        fanout.deliver(&delivery(1), &interest, &conns, &stats);
        assert_eq!(read_all(&mut peer1), "frame 1;");
        assert_eq!(read_all(&mut peer3), "frame 1;");
        assert_eq!((first.outbox_len().0, last.outbox_len().0), (0, 0));
        assert_eq!(
            gone.outbox_len().0,
            1,
            "the failed send's frame waits for the task, whose own write finds the error"
        );
        assert!(!gone.is_closing(), "a failed send is no slow consumer");
        assert_eq!(stats.totals().messages_out, 2);

        fanout.deliver(&delivery(2), &interest, &conns, &stats);
        assert_eq!(read_all(&mut peer1), "frame 2;");
        assert_eq!(read_all(&mut peer3), "frame 2;");
        assert_eq!(gone.outbox_len().0, 2, "queued behind the first, in order");
    }

    #[test]
    fn a_short_send_leaves_its_tail_as_the_started_front_and_it_follows_whole() {
        let settings = Settings::from_config(&Config::default());
        let (fanout, conns) = (Fanout::new(&settings).unwrap(), Conns::default());
        let (interest, stats) = (Interest::new(0, Arc::from("e")), Stats::new(0, 1));
        let (handle, _server, mut peer) = subscriber(&conns, &interest);
        let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let delivery = Delivery {
            frame: Bytes::from(big.clone()),
            ..delivery(1)
        };

        fanout.deliver(&delivery, &interest, &conns, &stats);
        let (frames, tail) = handle.outbox_len();
        assert_eq!(
            frames, 1,
            "the socket holds less than 4 MiB: the send is short"
        );
        assert!(0 < tail && tail < big.len());
        assert_eq!(handle.stats().bytes_out as usize, big.len() - tail);

        let mut got = Vec::new();
        let mut buf = Vec::new();
        let mut chunk = vec![0; 1 << 16];
        while got.len() < big.len() {
            handle.flush_now(&mut buf);
            while let Ok(n) = peer.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
        }
        assert!(
            got == big,
            "the frame arrives whole, its tail right after its head"
        );
        assert_eq!(handle.stats().messages_out, 1);
    }
}
