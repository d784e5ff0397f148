//! One WebSocket connection after its handshake: the only code that reads and writes its socket.
//!
//! A connection is two halves. [`ConnHandle`] is what its shard sees: the outbox, the counters,
//! the subscriptions, a waker, and a close request slot. [`serve`] is the glommio task that owns
//! the `TcpStream`: it flushes the outbox (coalescing pending frames into one write), reads and
//! parses client frames into the shard's scratch buffer, answers commands, and runs the close
//! handshake. Both halves live on the shard's core for the connection's whole life.
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
//! Every message a client sends, and every ping, first takes a token from the connection's
//! inbound limit ([`crate::ws::rate`]): one refused is not executed; the first refusal of a run
//! is answered `rate_limited`, and a run of `inbound_refusals_max` closes with 4029.
//!
//! An idle connection holds no buffer: input is read into a per-shard scratch buffer and only a
//! partial frame is kept per connection, until it completes. Nothing here waits on another
//! connection, so one stalled peer costs nobody else anything.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite, Future};
use glommio::timer::Timer;
use nix::sys::socket::MsgFlags;

use crate::net::auth::Grant;
use crate::net::tls::Transport;
use crate::shard::ShardCore;
use crate::ws::command::{self, Command, ConnStats, ErrorCode, ErrorReply};
use crate::ws::deflate::Deflate;
use crate::ws::frame::{self, ClosePayload, DataKind, FrameError};
use crate::ws::message::{Assembler, Event, MessageError};
use crate::ws::outbox::{Kind, Outbox, Overflow, Shed};
use crate::ws::rate::{InboundLimit, Refusal};

/// Bytes one write may coalesce from a connection's outbox. Larger frames go out alone, uncopied.
const WRITE_COALESCE_BYTES_MAX: usize = 64 * 1024;

/// Reads one connection may do per wake-up before it yields to the others on its shard.
const READS_PER_POLL_MAX: usize = 16;

/// A connection's identity on its shard: its slab slot and a sequence number that is never
/// reused, so a late reply for a closed connection cannot reach the next one in that slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub slot: u32,
    pub seq: u32,
}

/// Why and how a connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseRequest {
    pub const GOING_AWAY: CloseRequest = CloseRequest {
        code: 1001,
        reason: "going away",
    };
    pub const IDLE: CloseRequest = CloseRequest {
        code: 1000,
        reason: "idle timeout",
    };
    pub const TOKEN_EXPIRED: CloseRequest = CloseRequest {
        code: 4001,
        reason: "token expired: reconnect with a new one, or refresh before exp",
    };
    pub const EPOCH_CHANGED: CloseRequest = CloseRequest {
        code: 1012,
        reason: "epoch changed: offsets restarted; resubscribe",
    };
    pub const SLOW_CONSUMER: CloseRequest = CloseRequest {
        code: 4008,
        reason: "slow consumer: outbox overflowed",
    };
    pub const RATE_LIMITED: CloseRequest = CloseRequest {
        code: 4029,
        reason: "rate limit: too many messages refused in a row",
    };
}

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
    /// `conn_id` as clients see it: `<shard>-<seq>`.
    pub name: Box<str>,
    outbox: RefCell<Outbox>,
    /// The socket's descriptor while the task owns the open stream, for `write_now`.
    fd: Cell<Option<RawFd>>,
    waker: RefCell<Option<Waker>>,
    close: Cell<Option<CloseRequest>>,
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
    /// Set while the shard holds this connection's messages for the batching window.
    pub batched: Cell<bool>,
    /// What the connection's token allows; `None` without auth.
    pub grant: RefCell<Option<Grant>>,
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
        name: Box<str>,
        hello: Option<Bytes>,
        deflate: Option<Deflate>,
        grant: Option<Grant>,
        now: Instant,
    ) -> Self {
        ConnHandle {
            id,
            name,
            outbox: RefCell::new(Outbox::default()),
            fd: Cell::new(None),
            waker: RefCell::new(None),
            close: Cell::new(None),
            closing: Cell::new(false),
            last_seen: Cell::new(now),
            last_ping: Cell::new(now),
            subscriptions: RefCell::new(Vec::new()),
            echo: hello.is_none(),
            hello: RefCell::new(hello),
            hello_waits: Cell::new(0),
            batched: Cell::new(false),
            grant: RefCell::new(grant),
            deflate,
            acks: RefCell::new(Vec::new()),
            messages_in: Cell::new(0),
            messages_out: Cell::new(0),
            bytes_out: Cell::new(0),
        }
    }

    /// The full name of a channel or pattern as this connection names it: in the scope of its
    /// token's tenant, if it has one (a `refresh` cannot change the tenant).
    pub fn full_name<'a>(&self, name: &'a str) -> Cow<'a, str> {
        match self
            .grant
            .borrow()
            .as_ref()
            .and_then(|grant| grant.tenant.as_deref())
        {
            Some(tenant) => Cow::Owned(crate::channel::scoped(tenant, name)),
            None => Cow::Borrowed(name),
        }
    }

    /// Sends as much of `frame` as the socket takes at once, without blocking, when nothing is
    /// queued ahead of it: the connection is greeted, its outbox is empty, no close is under
    /// way, and the task has lent the descriptor. Returns the bytes sent, 0 when it could not
    /// send (or the socket is full, or failed: the task's own write then finds out and closes).
    /// The caller queues a frame it could not send with `push`, and the rest of one it sent
    /// part of with `push_started`.
    pub fn write_now(&self, frame: &[u8]) -> usize {
        let Some(fd) = self.fd.get() else {
            return 0;
        };
        if self.closing.get()
            || self.close.get().is_some()
            || !self.hello_sent()
            || self.outbox.borrow().frames_len() > 0
        {
            return 0;
        }
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        nix::sys::socket::send(fd, frame, flags).unwrap_or(0)
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
        if self.close.get().is_none() && !self.closing.get() {
            self.close.set(Some(request));
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
        self.closing.get() || self.close.get().is_some()
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

/// Where a connection is in its life.
enum State {
    Open,
    /// Our close frame is queued or sent; waiting for the peer's (or the deadline).
    Closing {
        deadline: Timer,
        peer_closed: bool,
    },
    /// The peer closed first and our answer is queued, after what was queued before it: close
    /// the socket once it is written, or at the deadline if the peer stops reading.
    Answered {
        deadline: Timer,
    },
    /// The peer broke the protocol and our close frame is queued (RFC 6455 section 7.1.7,
    /// "fail the WebSocket connection"). Its input can no longer be read as frames, so it is
    /// discarded; once the close frame is written the socket's sending side is shut (a FIN
    /// right after the close frame, so the peer sees both), and the connection ends when the
    /// peer closes its side or at the deadline. Closing the socket at once instead would answer
    /// the peer's unread bytes with a reset, which can destroy the close frame in flight.
    Failed {
        deadline: Timer,
        shut: bool,
    },
}

/// The task half of a connection.
struct Conn {
    shard: Rc<ShardCore>,
    handle: Rc<ConnHandle>,
    stream: Transport,
    /// Bytes of a frame that has not fully arrived yet; empty (unallocated) most of the time.
    partial: Vec<u8>,
    assembler: Assembler,
    state: State,
    /// Tokens for the client's messages (see [`crate::ws::rate`]).
    limit: InboundLimit,
}

/// Serves a connection until it closes, then removes it from its shard.
/// `early` holds bytes that arrived with the handshake (a pipelining client's first frames).
pub async fn serve(
    shard: Rc<ShardCore>,
    handle: Rc<ConnHandle>,
    stream: Transport,
    early: Vec<u8>,
) {
    let fd = stream.plain_fd();
    let config = &shard.config;
    let limit = InboundLimit::new(
        config.inbound_messages_per_s,
        config.inbound_messages_burst,
        config.inbound_refusals_max,
        handle.last_seen(),
    );
    let mut conn = Conn {
        shard: shard.clone(),
        handle: handle.clone(),
        stream,
        partial: early,
        assembler: Assembler::default(),
        state: State::Open,
        limit,
    };
    // Declared after `conn`, so that it is dropped first even if this future is dropped
    // mid-way: the descriptor is taken back before the stream closes it. A TLS connection
    // lends none: its bytes must go through rustls.
    let lent = fd.map(|fd| LentFd::lend(&handle, fd));
    poll_fn(|cx| conn.poll(cx)).await;
    drop(lent);
    drop(conn);
    shard.remove_conn(&handle);
}

/// The socket's descriptor lent to the connection's handle for `write_now`, taken back when
/// dropped.
struct LentFd<'a>(&'a ConnHandle);

impl<'a> LentFd<'a> {
    fn lend(handle: &'a ConnHandle, fd: RawFd) -> Self {
        handle.fd.set(Some(fd));
        LentFd(handle)
    }
}

impl Drop for LentFd<'_> {
    fn drop(&mut self) {
        self.0.fd.set(None);
    }
}

/// What handling some input asks of the connection next.
enum Flow {
    Continue,
    Close(u16, String),
}

impl Conn {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut waker = self.handle.waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        for _ in 0..READS_PER_POLL_MAX {
            if let Some(request) = self.handle.close.take() {
                self.start_close(request.code, request.reason);
            }
            let flushed = self.poll_flush(cx);
            match flushed {
                Poll::Ready(Err(err)) => {
                    tracing::debug!(conn = %self.handle.name, error = %err, "write failed: dropping the connection");
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) if matches!(self.state, State::Answered { .. }) => {
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {
                    if let State::Closing {
                        peer_closed: true, ..
                    } = self.state
                    {
                        return Poll::Ready(());
                    }
                }
                Poll::Pending => {}
            }
            if let State::Failed { shut, .. } = &mut self.state {
                if !*shut && flushed.is_ready() && self.handle.outbox.borrow().frames_len() == 0 {
                    *shut = true;
                    let fd = self.stream.raw_fd();
                    if let Err(err) =
                        nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write)
                    {
                        tracing::debug!(conn = %self.handle.name, error = %err, "shutdown failed");
                        return Poll::Ready(());
                    }
                }
            }
            if let State::Closing { deadline, .. }
            | State::Failed { deadline, .. }
            | State::Answered { deadline } = &mut self.state
            {
                if Pin::new(deadline).poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            if !self.handle.hello_sent() {
                return Poll::Pending;
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

    /// Reads once and handles every complete frame. `Ready(Err)` means the socket is done.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let shard = self.shard.clone();
        let mut scratch = shard.read_buf.borrow_mut();
        let read_bytes = match Pin::new(&mut self.stream).poll_read(cx, &mut scratch) {
            Poll::Ready(Ok(0)) => {
                tracing::debug!(conn = %self.handle.name, "the peer closed its end of the socket");
                return Poll::Ready(Err(()));
            }
            Poll::Ready(Err(err)) => {
                tracing::debug!(conn = %self.handle.name, error = %err, "read failed: dropping the connection");
                return Poll::Ready(Err(()));
            }
            Poll::Ready(Ok(bytes)) => bytes,
            Poll::Pending => return Poll::Pending,
        };
        self.handle.last_seen.set(Instant::now());
        let flow = if self.partial.is_empty() {
            let (flow, used) = self.handle_frames(&mut scratch[..read_bytes]);
            self.partial.extend_from_slice(&scratch[used..read_bytes]);
            flow
        } else {
            let mut pending = std::mem::take(&mut self.partial);
            pending.extend_from_slice(&scratch[..read_bytes]);
            let (flow, used) = self.handle_frames(&mut pending);
            pending.drain(..used);
            self.partial = pending;
            flow
        };
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            self.partial = Vec::new();
        }
        if let Flow::Close(code, reason) = flow {
            self.fail(code, &reason);
        }
        Poll::Ready(Ok(()))
    }

    /// Handles every complete frame at the start of `buf`; returns how many bytes it used.
    fn handle_frames(&mut self, buf: &mut [u8]) -> (Flow, usize) {
        if matches!(self.state, State::Failed { .. }) {
            // What follows a protocol violation cannot be read as frames: discard it.
            return (Flow::Continue, buf.len());
        }
        let mut used = 0;
        while used < buf.len() {
            let rest = &mut buf[used..];
            let max = self.shard.config.frame_bytes_max;
            let deflate = self.handle.deflate.is_some();
            let frame = match frame::parse_client_frame(rest, max, deflate) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    // Fail fast: the text of a frame still arriving is checked as it comes.
                    let arriving = frame::partial_frame(rest)
                        .filter(|_| matches!(self.state, State::Open))
                        .map(|head| {
                            let arrived = &rest[head.payload_start.min(rest.len())..];
                            self.assembler.check_arriving(head, arrived)
                        });
                    if let Some(Err(err)) = arriving {
                        return (message_failure(err), buf.len());
                    }
                    break;
                }
                Err(err) => return (frame_failure(err), buf.len()),
            };
            used += frame.frame_len;
            if matches!(self.state, State::Answered { .. }) {
                continue;
            }
            let payload = &rest[frame.payload_start..frame.payload_end];
            let max = self.shard.config.message_bytes_max;
            let event = match self.assembler.push(frame, payload, max) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(err) => return (message_failure(err), buf.len()),
            };
            let open = matches!(self.state, State::Open);
            let costs_a_token = matches!(event, Event::Text(_) | Event::Binary(_) | Event::Ping(_));
            if open && costs_a_token {
                // The time of the read that brought this message.
                if let Err(refusal) = self.limit.check(self.handle.last_seen()) {
                    let id = match (refusal, &event) {
                        (Refusal::Tell { .. }, Event::Text(text)) => {
                            command::salvage_id(text, self.shard.config.json_depth_max)
                        }
                        _ => None,
                    };
                    self.assembler.clear();
                    self.refuse(refusal, id);
                    continue;
                }
            }
            let flow = match event {
                Event::Text(text) if open && self.handle.echo => {
                    echo(&self.shard, &self.handle, DataKind::Text, text.as_bytes())
                }
                Event::Binary(payload) if open && self.handle.echo => {
                    echo(&self.shard, &self.handle, DataKind::Binary, payload)
                }
                Event::Text(text) => {
                    if open {
                        handle_command(&self.shard, &self.handle, text)
                    } else {
                        Flow::Continue
                    }
                }
                Event::Binary(_) => {
                    if open {
                        let reply = ErrorReply::new(
                            None,
                            ErrorCode::BadRequest,
                            "commands are JSON text frames; binary frames are not accepted",
                        );
                        self.shard.send_to(&self.handle, reply.frame());
                    }
                    Flow::Continue
                }
                Event::Ping(payload) => {
                    self.shard.send_to(&self.handle, frame::pong_frame(payload));
                    Flow::Continue
                }
                Event::Pong => Flow::Continue,
                Event::Close(payload) => {
                    self.peer_close(payload);
                    Flow::Continue
                }
            };
            self.assembler.clear();
            if let Flow::Close(..) = flow {
                return (flow, buf.len());
            }
        }
        (Flow::Continue, used)
    }

    /// A message the inbound limit refused: it is dropped; the first of a run is answered with
    /// `rate_limited` (echoing `id`), and the last closes the connection with 4029 after what
    /// is already queued.
    fn refuse(&mut self, refusal: Refusal, id: Option<sonic_rs::Value>) {
        self.shard.count_rate_limited(refusal);
        match refusal {
            Refusal::Tell { retry_after } => {
                let message = self.limit.message(retry_after);
                let reply = ErrorReply::new(id, ErrorCode::RateLimited, message);
                self.shard.send_to(&self.handle, reply.frame());
            }
            Refusal::Drop => {}
            Refusal::Close => {
                let request = CloseRequest::RATE_LIMITED;
                tracing::debug!(conn = %self.handle.name, "rate limit: closing with 4029");
                self.start_close(request.code, request.reason);
            }
        }
    }

    /// The peer sent a close frame: answer it (if we had not closed first) and finish.
    fn peer_close(&mut self, payload: ClosePayload) {
        match &mut self.state {
            State::Open => {
                let code = match payload {
                    ClosePayload::Empty => 1000,
                    ClosePayload::Code(code) => code,
                    ClosePayload::Invalid => 1002,
                    ClosePayload::BadUtf8 => 1007,
                };
                self.queue_close_frame(code, "");
                let timeout = Duration::from_millis(self.shard.config.close_timeout_ms);
                self.state = State::Answered {
                    deadline: Timer::new(timeout),
                };
            }
            State::Closing { peer_closed, .. } => *peer_closed = true,
            State::Answered { .. } | State::Failed { .. } => {}
        }
    }

    /// A protocol violation: close with `code` right away, dropping whatever was queued but the
    /// rest of a started frame. Once closing, the close frame is already queued and the deadline
    /// ends the connection.
    fn fail(&mut self, code: u16, reason: &str) {
        if !matches!(self.state, State::Open) {
            return;
        }
        tracing::debug!(conn = %self.handle.name, code, reason, "closing on protocol violation");
        self.drop_queued();
        self.queue_close_frame(code, reason);
        let timeout = Duration::from_millis(self.shard.config.close_timeout_ms);
        self.state = State::Failed {
            deadline: Timer::new(timeout),
            shut: false,
        };
    }

    /// Queues our close frame and waits (bounded) for the peer's. A slow consumer's and a
    /// shutdown's close go out as soon as a started frame is whole; the others after everything
    /// queued.
    fn start_close(&mut self, code: u16, reason: &str) {
        if !matches!(self.state, State::Open) {
            return;
        }
        if code == CloseRequest::SLOW_CONSUMER.code || code == CloseRequest::GOING_AWAY.code {
            self.drop_queued();
        }
        self.queue_close_frame(code, reason);
        let timeout = Duration::from_millis(self.shard.config.close_timeout_ms);
        self.state = State::Closing {
            deadline: Timer::new(timeout),
            peer_closed: false,
        };
    }

    /// Drops the queued frames a close discards, counting them: all but the unwritten tail of a
    /// frame the socket has started on, which must come whole before the close frame.
    fn drop_queued(&mut self) {
        let dropped = self.handle.outbox.borrow_mut().drop_unstarted();
        self.shard.count_dropped(dropped);
    }

    /// Queues a close frame past the outbox limits: it is the last frame this connection sends.
    fn queue_close_frame(&mut self, code: u16, reason: &str) {
        self.handle.closing.set(true);
        self.handle
            .outbox
            .borrow_mut()
            .push_unbounded(frame::close_frame(code, reason));
    }
}

fn frame_failure(err: FrameError) -> Flow {
    Flow::Close(err.close_code(), err.to_string())
}

fn message_failure(err: MessageError) -> Flow {
    Flow::Close(err.close_code(), err.to_string())
}

/// Milliseconds since the UNIX epoch, as the contract's `*_ms` fields use.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Sends a message back on the echo endpoint, as the same kind, compressed when the
/// connection negotiated permessage-deflate.
fn echo(shard: &ShardCore, handle: &ConnHandle, kind: DataKind, payload: &[u8]) -> Flow {
    handle.messages_in.set(handle.messages_in.get() + 1);
    shard.send_to(
        handle,
        frame::data_frame(kind, handle.compresses(), payload),
    );
    Flow::Continue
}

/// Answers one client command. Recoverable errors become `error` frames on this connection.
fn handle_command(shard: &ShardCore, handle: &Rc<ConnHandle>, text: &str) -> Flow {
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
        Ok(Command::Unsubscribe { channel, id }) => shard.unsubscribe(handle, &channel, id),
        Ok(Command::Publish { channel, data, id }) => {
            shard.client_publish(handle, &channel, data, id)
        }
        Ok(Command::Ping { id }) => Ok(Some(command::pong_reply_frame(&id, unix_ms()))),
        Ok(Command::GetStats { id }) => Ok(Some(command::stats_frame(
            &id,
            &handle.name,
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
    Flow::Continue
}
