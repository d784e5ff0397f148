//! One WebSocket connection after its handshake, as its shard holds it: the only code that reads
//! and writes its socket.
//!
//! A connection is two halves. [`ConnHandle`] is what its shard sees: the outbox, the counters,
//! the subscriptions, a waker, and a close request slot. [`serve`] is the glommio task that owns
//! the stream: it flushes the outbox (coalescing pending frames into one write), reads into the
//! shard's scratch buffer and hands the bytes to the connection's protocol state machine
//! ([`crate::ws::session`]), answers the commands it yields, and keeps the close deadline
//! (`close_timeout_ms`). Both halves live on the shard's core for the connection's whole life.
//!
//! Writes take a short cut when nothing is queued: [`ConnHandle::write_now`] sends a frame from
//! the shard's fan-out loop with one non-blocking `send()` on the socket's descriptor, and only
//! what the socket does not take goes to the outbox, as its started front frame, and wakes the
//! task. A fan-out is then one loop of sends, as in the floor of `corecast bench --baseline`,
//! instead of one task wake-up, poll and write per connection (measured in the README's
//! Performance section). The task lends the descriptor for as long as it owns the open stream
//! and takes it back before the stream closes (see [`serve`]), so a descriptor number the kernel
//! hands to a new socket is never written to; and the short cut is only taken with an empty
//! outbox and no close under way, so bytes never overtake queued ones.
//!
//! Closes arrive whole: a close that discards queued frames (4008, 1001, a protocol violation)
//! keeps the unwritten tail of a frame the peer already has the head of, whether the task or a
//! direct write started it, and queues the close frame after it; the other closes queue it after
//! everything. If the socket cannot take them within `close_timeout_ms`, the connection ends
//! without a close frame: the peer may see its last frame cut by the end of the TCP stream, but
//! never close bytes inside a frame. TLS keeps the same order: the outbox counts what rustls
//! took as written, and rustls sends the records of it before those of the close frame.
//!
//! The same task serves the echo endpoint (`echo_path`, off by default): there every text or
//! binary message goes back as the same kind of message instead of being read as a command, so
//! a conformance suite such as Autobahn drives exactly this code: frames, fragments, UTF-8,
//! control frames, the close handshake, the limits, and permessage-deflate. A connection that
//! negotiated permessage-deflate gets its echoes compressed and published messages as their
//! compressed twin ([`crate::ws::deflate`]); replies to commands go uncompressed, which the RFC
//! allows for any message.
//!
//! An idle connection holds no buffer: input is read into a per-shard scratch buffer and only a
//! partial frame is kept per connection, until it completes. Nothing here waits on another
//! connection, so one stalled peer costs nobody else anything.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite, Future};
use glommio::timer::Timer;
use nix::sys::socket::MsgFlags;

use super::ShardCore;
use crate::channel;
use crate::msg::{ConnId, ShardId};
use crate::net::auth::Grant;
use crate::net::tls::Transport;
use crate::ws::command::{self, Command, ConnStats, ErrorCode, ErrorReply};
use crate::ws::deflate::Deflate;
use crate::ws::frame::{self, DataKind};
use crate::ws::outbox::{Kind, Outbox, Overflow, Shed};
use crate::ws::rate::{InboundLimit, Refusal};
use crate::ws::session::{self, CloseRequest, Host, Phase, Session};

/// Bytes one write may coalesce from a connection's outbox. Larger frames go out alone, uncopied.
pub const WRITE_COALESCE_BYTES_MAX: usize = 64 * 1024;

/// What one write of a connection's held frames takes (see [`ConnHandle::gather_flush`]).
pub enum FlushOut {
    /// The outbox's front frame alone, uncopied.
    Front(Bytes),
    /// The frames gathered onto the end of the caller's buffer.
    Gathered,
}

/// Reads one connection may do per wake-up before it yields to the others on its shard.
const READS_PER_POLL_MAX: usize = 16;

/// One of a connection's subscriptions.
#[derive(Debug)]
pub struct Subscription {
    pub pattern: Box<str>,
    /// The `seq` after which every message matching `pattern` was or will be sent on this
    /// connection (live, or recovered); [`Subscription::PENDING`] until it is live. A recovery
    /// leaves out what another subscription covers, so overlapping ones deliver once.
    pub covered_from: Cell<u64>,
}

impl Subscription {
    /// Not live yet: covers nothing.
    pub const PENDING: u64 = u64::MAX;

    pub fn new(pattern: &str) -> Self {
        Subscription {
            pattern: pattern.into(),
            covered_from: Cell::new(Self::PENDING),
        }
    }
}

/// The shard's view of a connection.
pub struct ConnHandle {
    pub id: ConnId,
    /// The shard it belongs to, for its name ([`ConnHandle::name`]).
    shard: ShardId,
    outbox: RefCell<Outbox>,
    /// The socket's descriptor while the task owns the open stream, for `write_now`.
    fd: Cell<Option<RawFd>>,
    waker: RefCell<Option<Waker>>,
    close: RefCell<Option<CloseRequest>>,
    /// Set once the close frame is queued: nothing else is sent after it.
    closing: Cell<bool>,
    last_seen: Cell<Instant>,
    last_ping: Cell<Instant>,
    /// Every pattern this connection subscribed to, live or awaiting the ingest core.
    pub subscriptions: RefCell<Vec<Subscription>>,
    /// The `connected` frame, held back until the connect-time subscriptions are live.
    hello: RefCell<Option<Bytes>>,
    /// Connect-time subscriptions still waiting for the ingest core.
    pub hello_waits: Cell<u32>,
    /// Set while the shard holds this connection's messages for the batching window, or for
    /// the end of a coalescing batch of its inbox (never both: there is no coalescing under
    /// a window).
    pub batched: Cell<bool>,
    /// What the connection's token allows; `None` without auth. Boxed: a connection without
    /// a token pays one pointer for it, not the grant's hundred bytes.
    pub grant: RefCell<Option<Box<Grant>>>,
    /// The connection's user (PROTOCOL.md, "Users"): its token's `sub`, or `?user=`.
    pub user: Option<Box<str>>,
    /// The echo endpoint's connection: messages are sent back, not read as commands.
    echo: bool,
    /// permessage-deflate, if the upgrade agreed on it.
    deflate: Option<Deflate>,
    /// The highest offset acked per channel; at most `subscriptions_per_conn_max` channels.
    pub acks: RefCell<Vec<(Box<str>, u64)>>,
    messages_in: Cell<u64>,
    messages_out: Cell<u64>,
    bytes_out: Cell<u64>,
}

impl ConnHandle {
    /// `hello`: the `connected` frame to send once subscribed; `None` for the echo endpoint,
    /// which greets no one and is an echo connection.
    pub fn new(
        id: ConnId,
        shard: ShardId,
        hello: Option<Bytes>,
        deflate: Option<Deflate>,
        grant: Option<Grant>,
        user: Option<Box<str>>,
        now: Instant,
    ) -> Self {
        ConnHandle {
            id,
            shard,
            outbox: RefCell::new(Outbox::default()),
            fd: Cell::new(None),
            waker: RefCell::new(None),
            close: RefCell::new(None),
            closing: Cell::new(false),
            last_seen: Cell::new(now),
            last_ping: Cell::new(now),
            subscriptions: RefCell::new(Vec::new()),
            echo: hello.is_none(),
            hello: RefCell::new(hello),
            hello_waits: Cell::new(0),
            batched: Cell::new(false),
            grant: RefCell::new(grant.map(Box::new)),
            user,
            deflate,
            acks: RefCell::new(Vec::new()),
            messages_in: Cell::new(0),
            messages_out: Cell::new(0),
            bytes_out: Cell::new(0),
        }
    }

    /// `conn_id` as clients see it, `<shard>-<seq>`: made when it is shown (in `connected`, in
    /// `stats`, in logs), not kept.
    pub fn name(&self) -> ConnName {
        ConnName {
            shard: self.shard,
            seq: self.id.seq,
        }
    }

    /// The full name of a channel or pattern as this connection names it: in the scope of its
    /// token's tenant, if it has one (a `refresh` cannot change the tenant); `$user` is its
    /// own user's stream.
    pub fn full_name<'a>(&self, name: &'a str) -> Cow<'a, str> {
        let grant = self.grant.borrow();
        let tenant = grant.as_ref().and_then(|grant| grant.tenant.as_deref());
        match (&self.user, tenant) {
            (Some(user), _) if name == channel::USER_CHANNEL => {
                Cow::Owned(channel::user_stream(tenant, user))
            }
            (_, Some(tenant)) => Cow::Owned(channel::scoped(tenant, name)),
            (_, None) => Cow::Borrowed(name),
        }
    }

    /// The full name of this connection's user's stream, if it has a user.
    pub fn user_stream(&self) -> Option<String> {
        self.user
            .as_ref()
            .map(|_| self.full_name(channel::USER_CHANNEL).into_owned())
    }

    /// Its subscriptions, less its own `$user`, which no limit counts.
    pub fn counted_subscriptions(&self) -> usize {
        self.subscriptions
            .borrow()
            .iter()
            .filter(|subscription| {
                !channel::is_user_stream(channel::split_scope(&subscription.pattern).1)
            })
            .count()
    }

    /// The socket to write a frame to at once, from the shard's fan-out loop, when nothing is
    /// queued ahead of it: the connection is greeted, its outbox is empty, no close is under
    /// way, and the task has lent the descriptor. A write to it that the socket does not take
    /// whole queues the rest (`push_started`) or the frame (`push_message`).
    pub fn direct_fd(&self) -> Option<RawFd> {
        let fd = self.fd.get()?;
        let ready = !self.closing.get()
            && self.close.borrow().is_none()
            && self.hello_sent()
            && self.outbox.borrow().frames_len() == 0;
        ready.then_some(fd)
    }

    /// Sends as much of `frame` as the socket takes at once, without blocking, when nothing is
    /// queued ahead of it: the connection is greeted, its outbox is empty, no close is under
    /// way, and the task has lent the descriptor. Returns the bytes sent, 0 when it could not
    /// send (or the socket is full, or failed: the task's own write then finds out and closes).
    /// The caller queues a frame it could not send with `push`, and the rest of one it sent
    /// part of with `push_started`.
    pub fn write_now(&self, frame: &[u8]) -> usize {
        let Some(fd) = self.direct_fd() else {
            return 0;
        };
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        nix::sys::socket::send(fd, frame, flags).unwrap_or(0)
    }

    /// Writes what the outbox holds with one non-blocking `send()` from the shard's fan-out
    /// loop (what `gather_flush` takes, through `buf`, settled by `settle_flush`): the early
    /// flush of a connection whose held frames fill its outbox. Returns the frames and bytes
    /// sent.
    pub fn flush_now(&self, buf: &mut Vec<u8>) -> (usize, usize) {
        buf.clear();
        let Some((fd, out)) = self.gather_flush(buf) else {
            return (0, 0);
        };
        let bytes = match &out {
            FlushOut::Front(front) => &front[..],
            FlushOut::Gathered => &buf[..],
        };
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        let sent = nix::sys::socket::send(fd, bytes, flags).unwrap_or(0);
        self.settle_flush(sent)
    }

    /// Takes what the outbox holds for one write from the shard's fan-out loop: how a
    /// coalesced batch of deliveries leaves in one write per connection. Returns the socket
    /// and what to write to it: the front frame alone, uncopied (the only one queued, or too
    /// large to coalesce), or the frames appended to `buf` (whole frames past the first, up to
    /// [`WRITE_COALESCE_BYTES_MAX`]). `None` when nothing is queued, or when this short cut
    /// cannot be taken (no descriptor lent, not greeted yet, closing): the task is woken then
    /// for what is queued, and its own write finds out. The caller reports the write's
    /// outcome to `settle_flush`, before anything else touches the outbox.
    pub fn gather_flush(&self, buf: &mut Vec<u8>) -> Option<(RawFd, FlushOut)> {
        let outbox = self.outbox.borrow();
        if outbox.frames_len() == 0 {
            return None;
        }
        let open = !self.closing.get() && self.close.borrow().is_none() && self.hello_sent();
        let Some(fd) = self.fd.get().filter(|_| open) else {
            drop(outbox);
            self.wake();
            return None;
        };
        let front = outbox.front_frame().expect("checked: a frame is queued");
        if outbox.frames_len() == 1 || front.len() >= WRITE_COALESCE_BYTES_MAX {
            return Some((fd, FlushOut::Front(front)));
        }
        outbox.gather(buf, WRITE_COALESCE_BYTES_MAX);
        Some((fd, FlushOut::Gathered))
    }

    /// Settles a write of what `gather_flush` took: the socket took `sent` bytes of it (0 when
    /// it was full or the send failed). Returns the frames and bytes written; what is left
    /// stays queued, and the task is woken for it.
    pub fn settle_flush(&self, sent: usize) -> (usize, usize) {
        let mut outbox = self.outbox.borrow_mut();
        let frames = outbox.advance(sent);
        let left = outbox.frames_len() > 0;
        drop(outbox);
        self.count_written(frames, sent);
        if left {
            self.wake();
        }
        (frames, sent)
    }

    /// Lends `fd` as the task does, for tests that drive the shard's writes without one.
    #[cfg(test)]
    pub fn lend_fd(&self, fd: RawFd) {
        self.fd.set(Some(fd));
    }

    /// Whether this connection takes compressed messages: it negotiated permessage-deflate
    /// with a window corecast compresses with.
    pub fn compresses(&self) -> bool {
        self.deflate.is_some_and(|deflate| deflate.compresses())
    }

    /// Whether the connection has a subscription to exactly `pattern`.
    pub fn is_subscribed(&self, pattern: &str) -> bool {
        self.subscriptions
            .borrow()
            .iter()
            .any(|subscription| *subscription.pattern == *pattern)
    }

    /// Marks the subscription to `pattern` live, covering every message after `seq`.
    pub fn cover_from(&self, pattern: &str, seq: u64) {
        if let Some(subscription) = self
            .subscriptions
            .borrow()
            .iter()
            .find(|subscription| *subscription.pattern == *pattern)
        {
            subscription.covered_from.set(seq);
        }
    }

    /// Whether a message of `channel` numbered `seq` was or will be sent on this connection
    /// through a live subscription other than `pattern`.
    pub fn covered_elsewhere(&self, pattern: &str, channel: &str, seq: u64) -> bool {
        self.subscriptions.borrow().iter().any(|subscription| {
            *subscription.pattern != *pattern
                && seq > subscription.covered_from.get()
                && crate::channel::pattern_matches(&subscription.pattern, channel)
        })
    }

    /// Counts what was written for this connection, by `write_now` or its task.
    pub fn count_written(&self, frames: usize, bytes: usize) {
        self.bytes_out.set(self.bytes_out.get() + bytes as u64);
        self.messages_out
            .set(self.messages_out.get() + frames as u64);
    }

    /// Queues a reply or control frame. A closing connection takes nothing more (and that is
    /// not an overflow).
    pub fn push(&self, frame: Bytes, frames_max: usize, bytes_max: usize) -> Result<(), Overflow> {
        if self.is_closing() {
            return Ok(());
        }
        self.outbox
            .borrow_mut()
            .push(frame, Kind::Control, frames_max, bytes_max)?;
        self.wake();
        Ok(())
    }

    /// Queues a published message under its channel's slow-consumer policy (see
    /// [`Outbox::push_message`]). With `wake` false the task is not woken: the shard flushes
    /// it when its batching window ends.
    pub fn push_message(
        &self,
        frame: Bytes,
        kind: Kind,
        frames_max: usize,
        bytes_max: usize,
        wake: bool,
    ) -> Result<Shed, Overflow> {
        if self.is_closing() {
            return Ok(Shed::default());
        }
        let shed = self
            .outbox
            .borrow_mut()
            .push_message(frame, kind, frames_max, bytes_max)?;
        if wake {
            self.wake();
        }
        Ok(shed)
    }

    /// Queues the rest of `frame` after `write_now` sent its first `written_bytes`: the outbox's
    /// started front, past its limits, so that it follows its head whole even if the connection
    /// closes now (see [`Outbox::push_started`]).
    pub fn push_started(&self, frame: Bytes, written_bytes: usize) {
        self.outbox.borrow_mut().push_started(frame, written_bytes);
        self.wake();
    }

    /// Queues recovered history past the outbox limits: the ingest core bounded it to
    /// `outbox_bytes_max` already, and it must not be refused after the subscription went live.
    pub fn push_recovered(&self, frames: Bytes) {
        if self.is_closing() || frames.is_empty() {
            return;
        }
        self.outbox.borrow_mut().push_unbounded(frames);
        self.wake();
    }

    /// Sends the held-back `connected` frame; the connection starts reading after it.
    pub fn release_hello(&self, frames_max: usize, bytes_max: usize) -> Result<(), Overflow> {
        let hello = self.hello.borrow_mut().take();
        match hello {
            Some(hello) => self.push(hello, frames_max, bytes_max),
            None => Ok(()),
        }
    }

    fn hello_sent(&self) -> bool {
        self.hello.borrow().is_none()
    }

    /// Asks the connection's task to close it with `request`; the first request wins.
    pub fn request_close(&self, request: CloseRequest) {
        if self.close.borrow().is_none() && !self.closing.get() {
            *self.close.borrow_mut() = Some(request);
            self.wake();
        }
    }

    pub fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub fn last_seen(&self) -> Instant {
        self.last_seen.get()
    }

    pub fn last_ping(&self) -> Instant {
        self.last_ping.get()
    }

    pub fn set_last_ping(&self, at: Instant) {
        self.last_ping.set(at);
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get() || self.close.borrow().is_some()
    }

    /// Frames and bytes waiting in the outbox.
    pub fn outbox_len(&self) -> (usize, usize) {
        let outbox = self.outbox.borrow();
        (outbox.frames_len(), outbox.bytes_len())
    }

    pub fn stats(&self) -> ConnStats {
        let outbox = self.outbox.borrow();
        ConnStats {
            messages_in: self.messages_in.get(),
            messages_out: self.messages_out.get(),
            bytes_out: self.bytes_out.get(),
            subscriptions: self.subscriptions.borrow().len(),
            outbox_frames: outbox.frames_len(),
            outbox_bytes: outbox.bytes_len(),
        }
    }
}

/// A connection's `conn_id`, `<shard>-<seq>`, as it is shown.
pub struct ConnName {
    pub shard: ShardId,
    pub seq: u32,
}

impl std::fmt::Display for ConnName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.shard, self.seq)
    }
}

/// The task half of a connection.
struct Conn {
    shard: Rc<ShardCore>,
    handle: Rc<ConnHandle>,
    stream: Transport,
    session: Session,
    /// Armed when the session leaves `Open`: the connection ends by `close_timeout_ms`.
    deadline: Option<Timer>,
    /// Frames arrived with the handshake and wait in the session: read them once the
    /// connection is greeted, without waiting for more input.
    early: bool,
}

/// Serves a connection until it closes, then removes it from its shard.
/// `early` holds bytes that arrived with the handshake (a pipelining client's first frames).
///
/// The task's future is the connection itself (`Conn`), a hand-written `Future`: an async fn
/// would hold its arguments in its state twice, as they came and as moved into its body
/// (rustc does not overlap the two), which is what an idle connection's task costs.
pub fn serve(
    shard: Rc<ShardCore>,
    handle: Rc<ConnHandle>,
    stream: Transport,
    early: Vec<u8>,
) -> impl Future<Output = ()> {
    let config = &shard.config;
    let limit = InboundLimit::new(
        config.inbound_messages_per_s,
        config.inbound_messages_burst,
        config.inbound_refusals_max,
        handle.last_seen(),
    );
    // A TLS connection lends no descriptor: its bytes must go through rustls. The fan-out
    // registers a lent one on its send ring. `Conn`'s `drop` takes the descriptor back and
    // unregisters it before its stream closes it, even if the task is dropped mid-way.
    let fd = stream.plain_fd();
    handle.fd.set(fd);
    if let Some(fd) = fd {
        shard.register_socket(handle.id, fd);
    }
    Conn {
        early: !early.is_empty(),
        session: Session::new(limit, early),
        shard,
        handle,
        stream,
        deadline: None,
    }
}

impl Future for Conn {
    type Output = ();

    /// Serves the connection; once it is done, removes it from its shard. Its stream closes
    /// as the task drops it, right after (and `drop` takes the descriptor back first).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let conn = &mut *self;
        let served = conn.serve(cx);
        if served.is_ready() {
            conn.shard.remove_conn(&conn.handle);
        }
        served
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.handle.fd.take().is_some() {
            self.shard.forget_socket(self.handle.id);
        }
    }
}

/// The session's host: where its frames go and who answers its messages.
struct Answering<'a> {
    shard: &'a ShardCore,
    handle: &'a Rc<ConnHandle>,
}

impl Host for Answering<'_> {
    fn text(&mut self, text: &str) {
        if self.handle.echo {
            echo(self.shard, self.handle, DataKind::Text, text.as_bytes());
        } else {
            handle_command(self.shard, self.handle, text);
        }
    }

    fn binary(&mut self, payload: &[u8]) {
        if self.handle.echo {
            echo(self.shard, self.handle, DataKind::Binary, payload);
        } else {
            let reply = ErrorReply::new(
                None,
                ErrorCode::BadRequest,
                "commands are JSON text frames; binary frames are not accepted",
            );
            self.shard.send_to(self.handle, reply.frame());
        }
    }

    fn send(&mut self, frame: Bytes) {
        self.shard.send_to(self.handle, frame);
    }

    fn refused(&mut self, refusal: Refusal) {
        self.shard.count_rate_limited(refusal);
        if refusal == Refusal::Close {
            tracing::debug!(conn = %self.handle.name(), "rate limit: closing with 4029");
        }
    }

    fn limits(&self) -> session::Limits {
        let config = &self.shard.config;
        session::Limits {
            frame_bytes_max: config.frame_bytes_max,
            message_bytes_max: config.message_bytes_max,
            json_depth_max: config.json_depth_max,
            deflate: self.handle.deflate.is_some(),
        }
    }

    fn close(&mut self, close_frame: Bytes, drop_queued: bool) {
        let mut outbox = self.handle.outbox.borrow_mut();
        if drop_queued {
            self.shard.count_dropped(outbox.drop_unstarted());
        }
        // Past the outbox limits: it is the last frame this connection sends.
        self.handle.closing.set(true);
        outbox.push_unbounded(close_frame);
    }
}

impl Conn {
    /// Runs the connection until it is done: reads, writes, closes and deadlines.
    fn serve(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut waker = self.handle.waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        for _ in 0..READS_PER_POLL_MAX {
            let request = self.handle.close.borrow_mut().take();
            if let Some(request) = request {
                let mut host = Answering {
                    shard: &self.shard,
                    handle: &self.handle,
                };
                self.session.close(request, &mut host);
            }
            let flushed = self.poll_flush(cx);
            match flushed {
                Poll::Ready(Err(err)) => {
                    tracing::debug!(conn = %self.handle.name(), error = %err, "write failed: dropping the connection");
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) if self.session.done_when_flushed() => {
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
            if self.session.wants_shutdown()
                && flushed.is_ready()
                && self.handle.outbox.borrow().frames_len() == 0
            {
                self.session.shut();
                let fd = self.stream.raw_fd();
                if let Err(err) = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write)
                {
                    tracing::debug!(conn = %self.handle.name(), error = %err, "shutdown failed");
                    return Poll::Ready(());
                }
            }
            if self.deadline_passed(cx) {
                return Poll::Ready(());
            }
            if !self.handle.hello_sent() {
                return Poll::Pending;
            }
            if std::mem::take(&mut self.early) {
                let mut host = Answering {
                    shard: &self.shard,
                    handle: &self.handle,
                };
                self.session.receive(&mut [], Instant::now(), &mut host);
                continue;
            }
            match self.poll_input(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(())) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Whether a closing connection's `close_timeout_ms` ran out; arms it when the session has
    /// just left `Open`.
    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        if self.session.phase() == Phase::Open {
            return false;
        }
        let timeout = Duration::from_millis(self.shard.config.close_timeout_ms);
        let deadline = self.deadline.get_or_insert_with(|| Timer::new(timeout));
        Pin::new(deadline).poll(cx).is_ready()
    }

    /// Writes queued frames until the outbox is empty or the socket is full.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let mut outbox = self.handle.outbox.borrow_mut();
            let Some(front) = outbox.front() else {
                // TLS may still hold records the socket did not take; plain TCP holds none.
                return Pin::new(&mut self.stream).poll_flush(cx);
            };
            let written = if outbox.frames_len() == 1 || front.len() >= WRITE_COALESCE_BYTES_MAX {
                Pin::new(&mut self.stream).poll_write(cx, front)
            } else {
                let mut buf = self.shard.write_buf.borrow_mut();
                buf.clear();
                outbox.gather(&mut buf, WRITE_COALESCE_BYTES_MAX);
                Pin::new(&mut self.stream).poll_write(cx, &buf)
            };
            match written {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(bytes)) => {
                    let frames = outbox.advance(bytes);
                    self.handle.count_written(frames, bytes);
                    self.shard.count_written(frames, bytes);
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Reads once and hands the bytes to the session. `Ready(Err)` means the socket is done.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let shard = self.shard.clone();
        let mut scratch = shard.read_buf.borrow_mut();
        let read_bytes = match Pin::new(&mut self.stream).poll_read(cx, &mut scratch) {
            Poll::Ready(Ok(0)) => {
                tracing::debug!(conn = %self.handle.name(), "the peer closed its end of the socket");
                return Poll::Ready(Err(()));
            }
            Poll::Ready(Err(err)) => {
                tracing::debug!(conn = %self.handle.name(), error = %err, "read failed: dropping the connection");
                return Poll::Ready(Err(()));
            }
            Poll::Ready(Ok(bytes)) => bytes,
            Poll::Pending => return Poll::Pending,
        };
        let now = Instant::now();
        self.handle.last_seen.set(now);
        let was_open = self.session.phase() == Phase::Open;
        let mut host = Answering {
            shard: &shard,
            handle: &self.handle,
        };
        self.session
            .receive(&mut scratch[..read_bytes], now, &mut host);
        if was_open && matches!(self.session.phase(), Phase::Failed { .. }) {
            tracing::debug!(conn = %self.handle.name(), "closing on protocol violation");
        }
        Poll::Ready(Ok(()))
    }
}

/// Sends a message back on the echo endpoint, as the same kind, compressed when the
/// connection negotiated permessage-deflate.
fn echo(shard: &ShardCore, handle: &ConnHandle, kind: DataKind, payload: &[u8]) {
    handle.messages_in.set(handle.messages_in.get() + 1);
    shard.send_to(
        handle,
        frame::data_frame(kind, handle.compresses(), payload),
    );
}

/// Answers one client command. Recoverable errors become `error` frames on this connection.
fn handle_command(shard: &ShardCore, handle: &Rc<ConnHandle>, text: &str) {
    handle.messages_in.set(handle.messages_in.get() + 1);
    let reply = match command::parse(text, shard.config.json_depth_max) {
        Ok(Command::Subscribe { channel, since, id }) => {
            shard.subscribe(handle, &channel, since, id)
        }
        Ok(Command::Ack {
            channel,
            offset,
            id,
        }) => shard.ack(handle, &channel, offset, id),
        Ok(Command::Refresh { token, id }) => shard.refresh(handle, &token, id),
        Ok(Command::Presence { channel, id }) => shard.presence_command(handle, &channel, id),
        Ok(Command::Unsubscribe { channel, id }) => shard.unsubscribe(handle, &channel, id),
        Ok(Command::Publish { channel, data, id }) => {
            shard.client_publish(handle, &channel, data, id)
        }
        Ok(Command::Ping { id }) => Ok(Some(command::pong_reply_frame(
            &id,
            crate::clock::unix_ms(),
        ))),
        Ok(Command::GetStats { id }) => Ok(Some(command::stats_frame(
            &id,
            &handle.name().to_string(),
            shard.id,
            handle.stats(),
            &handle.acks.borrow(),
        ))),
        Err(err) => Err(err),
    };
    match reply {
        Ok(Some(frame)) => shard.send_to(handle, frame),
        Ok(None) => {}
        Err(err) => shard.send_to(handle, err.frame()),
    }
}
