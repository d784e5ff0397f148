//! The control plane's connection stream: what hyper reads and writes through, holding what
//! hyper does not bound or does not answer in JSON.
//!
//! [`Guarded`] sits between a connection's [`Transport`](crate::net::tls::Transport) and hyper
//! and owns:
//! - **Deadlines.** A connection waiting for a request (from its start and after each
//!   response) is closed without an answer after `api_idle_timeout_ms`; a request head must be
//!   complete within `api_header_timeout_ms` of its first byte, or it gets 408
//!   `header_timeout`; a response the client does not read is given up after
//!   `api_idle_timeout_ms`. The body's deadline belongs to the route that reads it
//!   (`api::read_body`), which can still answer through hyper.
//! - **JSON for hyper's own errors.** On a request it cannot parse, hyper writes a bodiless
//!   400, 414 or 431 itself (`role.rs` `on_error`), with no hook to change it. The stream
//!   follows the response heads written through it (each of ours carries `content-length`,
//!   so it knows where each ends and the next begins) and swaps a head that is exactly hyper's
//!   (that status, `connection: close`, `content-length: 0` and `date`, nothing else, while
//!   no request is being answered) for the same status with the contract's JSON body. hyper
//!   closes after such an error, so nothing of its follows. Our own responses pass untouched,
//!   at the cost of one `httparse` of each head.
//! - **The HTTP/2 preface**, which hyper's HTTP/1 server meets with silence: a request that
//!   begins `PRI * HTTP/2.0` (as a connection with prior knowledge opens) is answered 505
//!   `version_not_supported`.
//!
//! When it ends a connection itself it records why ([`Ended`]) for the serve loop to count,
//! and after an answer it reads and drops what the client still sends for [`LINGER`] before
//! closing, so the answer is not lost to the reset that unread bytes would cause. It never
//! parses a request (hyper does) and knows nothing of routes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use http::StatusCode;

use crate::net::handshake::Reject;

/// How long a connection is read (and what arrives dropped) after the stream's own answer,
/// or hyper's last response, before it closes.
pub const LINGER: Duration = Duration::from_millis(250);

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 section 3.4), up to
/// where an HTTP/1 parser could still take them for a request line.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Longest response head the stream follows; past it (never, for ours) it stops looking.
const HEAD_SCAN_BYTES_MAX: usize = 64 * 1024;

/// Headers a response head may have for the stream to follow it (ours have at most six).
const HEAD_SCAN_HEADERS_MAX: usize = 32;

/// The deadlines and the limits its answers name.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub head_bytes_max: usize,
}

/// Why the stream ended a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No request began within `api_idle_timeout_ms`: closed without an answer.
    IdleTimeout,
    /// A head took longer than `api_header_timeout_ms`: answered 408.
    HeaderTimeout,
    /// A response waited `api_idle_timeout_ms` for a client that did not read it.
    SendTimeout,
    /// hyper could not parse a request and answered it itself; the answer went out in JSON.
    Malformed,
    /// A request began with the HTTP/2 preface: answered 505.
    Http2,
    /// Over `api_connections_max` at accept: answered 503 (see [`Guarded::refusing`]).
    Refused,
}

/// What the stream and the service of one connection share.
#[derive(Debug, Default)]
pub struct Exchange {
    /// One entry per request the service took whose response has not been written yet, in
    /// order: whether its method was HEAD (its response has no body).
    answering: RefCell<VecDeque<bool>>,
    ended: Cell<Option<Ended>>,
}

impl Exchange {
    /// The service took a request (so its head was complete); `head`: its method is HEAD.
    pub fn took(&self, head: bool) {
        self.answering.borrow_mut().push_back(head);
    }

    /// Why the stream ended the connection, if it did.
    pub fn ended(&self) -> Option<Ended> {
        self.ended.get()
    }
}

/// Where the next byte hyper writes falls in its stream of responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// At the start of a response head (its first bytes in `held` when it came in pieces).
    Head,
    /// Inside a response: `left` more bytes of it (head and body); `interim` for a 1xx.
    Pass { left: u64, interim: bool },
    /// After a head the stream cannot follow: everything passes, nothing more is looked at.
    Blind,
}

/// A response head, as the stream sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// hyper's automatic answer to a request it could not parse.
    Hyper(StatusCode),
    /// A 1xx (hyper's `100 Continue`): no body, the final response follows.
    Interim,
    /// A final response; `None` when it has no `content-length`.
    Final { content_length: Option<u64> },
    /// Not a response head the stream can read.
    Unknown,
}

/// A timer for one instant, made when first polled and made again when the instant changes.
#[derive(Debug, Default)]
struct Deadline {
    armed: Option<(Instant, glommio::timer::Timer)>,
}

impl Deadline {
    /// Ready once `at` has passed; otherwise registers `cx` to be woken then.
    fn poll_until(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        let now = Instant::now();
        if now >= at {
            return Poll::Ready(());
        }
        if self.armed.as_ref().is_none_or(|(when, _)| *when != at) {
            self.armed = Some((at, glommio::timer::Timer::new(at - now)));
        }
        let (_, timer) = self.armed.as_mut().expect("armed above");
        Pin::new(timer).poll(cx).map(|_| ())
    }

    fn clear(&mut self) {
        self.armed = None;
    }
}

/// A control-plane connection's stream, as hyper reads and writes it (see the module doc).
pub struct Guarded<S> {
    inner: S,
    limits: Limits,
    exchange: Rc<Exchange>,
    scan: Scan,
    /// The start of a response head that came in pieces, until it is complete.
    held: Vec<u8>,
    /// Bytes to write before any other: our own answer, or a held head once it is followed.
    staged: Vec<u8>,
    staged_at: usize,
    /// While `Some(n)`: the first `n` bytes of the request being read (of the connection, or
    /// since the last response) are the start of [`HTTP2_PREFACE`].
    preface: Option<usize>,
    /// Since when the connection has waited for a request (its start, or a response's end).
    idle_since: Instant,
    /// When the request being read began (its first byte), until its response ends.
    head_since: Option<Instant>,
    read_deadline: Deadline,
    /// The waker of a read left pending with no deadline (while a request was answered): hyper
    /// does not read again until woken, so the end of the response wakes it to arm the idle
    /// deadline.
    read_waker: Option<Waker>,
    /// Since when writes have made no progress, while they make none.
    stalled_since: Option<Instant>,
    write_deadline: Deadline,
    /// Set once the stream ends the connection itself; hyper's writes are dropped from then.
    ending: Option<Ended>,
    /// Whether the write side is closed, and until when the stream then lingers.
    write_closed: bool,
    linger_until: Option<Instant>,
    /// Whether the goodbye is over: closed, lingered.
    closed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    pub fn new(inner: S, limits: Limits, exchange: Rc<Exchange>) -> Self {
        Guarded {
            inner,
            limits,
            exchange,
            scan: Scan::Head,
            held: Vec::new(),
            staged: Vec::new(),
            staged_at: 0,
            preface: Some(0),
            idle_since: Instant::now(),
            head_since: None,
            read_deadline: Deadline::default(),
            read_waker: None,
            stalled_since: None,
            write_deadline: Deadline::default(),
            ending: None,
            write_closed: false,
            linger_until: None,
            closed: false,
        }
    }

    /// A stream that only delivers `answer` and closes: for a connection refused at accept.
    pub fn refusing(inner: S, limits: Limits, answer: Vec<u8>) -> Self {
        let mut stream = Guarded::new(inner, limits, Rc::default());
        stream.staged = answer;
        stream.ending = Some(Ended::Refused);
        stream
    }

    /// Writes what is staged, closes the write side, and lingers: the end of a connection the
    /// stream ends itself, or of [`Guarded::refusing`]'s. Errors only cut it short.
    pub fn poll_goodbye(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closed {
            return Poll::Ready(());
        }
        if ready!(self.poll_staged(cx)).is_err() {
            self.closed = true;
            return Poll::Ready(());
        }
        ready!(self.poll_close_linger(cx, !self.silent_end()));
        Poll::Ready(())
    }

    /// Whether the connection ends with nobody to answer or to wait for: an idle one, or
    /// one whose client does not read.
    fn silent_end(&self) -> bool {
        matches!(
            self.ending,
            Some(Ended::IdleTimeout) | Some(Ended::SendTimeout)
        )
    }

    /// Closes the write side once, then (`linger`) reads and drops until the client closes
    /// or [`LINGER`] passes.
    fn poll_close_linger(&mut self, cx: &mut Context<'_>, linger: bool) -> Poll<()> {
        if self.closed {
            return Poll::Ready(());
        }
        if !self.write_closed {
            if let Err(err) = ready!(Pin::new(&mut self.inner).poll_close(cx)) {
                tracing::debug!(error = %err, "control-plane close failed");
                self.closed = true;
                return Poll::Ready(());
            }
            self.write_closed = true;
            if !linger {
                self.closed = true;
                return Poll::Ready(());
            }
            self.linger_until = Some(Instant::now() + LINGER);
        }
        let until = self.linger_until.expect("set with write_closed");
        let mut scratch = [0u8; 4096];
        loop {
            match Pin::new(&mut self.inner).poll_read(cx, &mut scratch) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                Poll::Ready(Ok(_)) if Instant::now() >= until => break,
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => {
                    ready!(self.read_deadline.poll_until(cx, until));
                    break;
                }
            }
        }
        self.closed = true;
        Poll::Ready(())
    }

    /// Writes `staged` out; a write that stalls past the idle timeout fails.
    fn poll_staged(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.staged_at < self.staged.len() {
            let written = ready!(self.poll_inner_write(cx, self.staged_at))?;
            self.staged_at += written;
        }
        self.staged.clear();
        self.staged_at = 0;
        Poll::Ready(Ok(()))
    }

    /// One write of `staged[from..]` to the socket, under the stall deadline.
    fn poll_inner_write(&mut self, cx: &mut Context<'_>, from: usize) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, &self.staged[from..]);
        self.after_write(cx, result)
    }

    /// Keeps the stall deadline: cleared on progress, armed while a write waits.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(written)) => {
                if self.stalled_since.take().is_some() {
                    self.write_deadline.clear();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let since = *self.stalled_since.get_or_insert_with(Instant::now);
                let at = since + self.limits.idle_timeout;
                ready!(self.write_deadline.poll_until(cx, at));
                self.end(Ended::SendTimeout);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not read the response within api_idle_timeout_ms",
                )))
            }
        }
    }

    /// Records that the stream ends the connection, for `why` (the first reason stands).
    fn end(&mut self, why: Ended) {
        if self.ending.is_none() {
            self.ending = Some(why);
            self.exchange.ended.set(Some(why));
        }
    }

    /// Ends the connection with our own `answer` to the client.
    fn end_with(&mut self, why: Ended, status: StatusCode, code: &'static str, message: String) {
        self.staged
            .extend_from_slice(&Reject::new(status, code, message).response());
        self.end(why);
    }

    /// Whether a response is being written or a request is being answered.
    fn answering(&self) -> bool {
        !matches!(self.scan, Scan::Head)
            || !self.held.is_empty()
            || !self.exchange.answering.borrow().is_empty()
    }

    /// The read deadline now: of the head under way, or of the wait for a request.
    fn read_deadline(&self) -> Option<(Instant, Ended)> {
        if self.answering() {
            return None;
        }
        Some(match self.head_since {
            Some(since) => (since + self.limits.header_timeout, Ended::HeaderTimeout),
            None => (
                self.idle_since + self.limits.idle_timeout,
                Ended::IdleTimeout,
            ),
        })
    }

    /// A read deadline passed: the idle connection ends quietly, a slow head gets 408.
    fn expire(&mut self, why: Ended) {
        match why {
            Ended::HeaderTimeout => self.end_with(
                why,
                StatusCode::REQUEST_TIMEOUT,
                "header_timeout",
                format!(
                    "the request head did not arrive within api_header_timeout_ms = {}",
                    self.limits.header_timeout.as_millis()
                ),
            ),
            _ => self.end(why),
        }
    }

    /// Checks a request's first bytes for the HTTP/2 preface.
    fn check_preface(&mut self, read: &[u8]) {
        let Some(matched) = self.preface else { return };
        let take = read.len().min(HTTP2_PREFACE.len() - matched);
        if read[..take] != HTTP2_PREFACE[matched..matched + take] {
            self.preface = None;
        } else if matched + take == HTTP2_PREFACE.len() {
            self.preface = None;
            self.end_with(
                Ended::Http2,
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "version_not_supported",
                "the control plane speaks HTTP/1.1 only; HTTP/2 is not supported".into(),
            );
        } else {
            self.preface = Some(matched + take);
        }
    }

    /// What hyper's read gets once the stream has ended the connection.
    fn ended_read(&self) -> io::Result<usize> {
        match self.ending {
            Some(Ended::IdleTimeout) | None => Ok(0),
            Some(why) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the control plane ended the connection: {why:?}"),
            )),
        }
    }

    /// A response written to its end.
    fn response_done(&mut self) {
        if self.exchange.answering.borrow().is_empty() {
            self.idle_since = Instant::now();
            self.head_since = None;
            // The next bytes start a request, which may be the HTTP/2 preface as well.
            self.preface = Some(0);
            if let Some(waker) = self.read_waker.take() {
                waker.wake();
            }
        }
    }

    /// The answer to hyper's bodiless error `status`, in JSON.
    fn replace_hyper_error(&mut self, status: StatusCode) {
        let (code, message) = match status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
                "headers_too_large",
                format!(
                    "the request head exceeds api_head_bytes_max = {} bytes or 100 headers",
                    self.limits.head_bytes_max
                ),
            ),
            StatusCode::URI_TOO_LONG => ("uri_too_long", "the request target is too long".into()),
            _ => (
                "bad_request",
                "the request is not valid HTTP/1.1 (a malformed request line or header, or \
                 conflicting Content-Length or Transfer-Encoding)"
                    .into(),
            ),
        };
        self.end_with(Ended::Malformed, status, code, message);
    }

    /// Follows a write of `buf` at the start of a response head; returns how many bytes of
    /// `buf` hyper may count as written, or `None` when `buf` should go to the socket as it is
    /// (the scan then says how far).
    fn at_head(&mut self, buf: &[u8]) -> Option<usize> {
        // Where the head ends: in `buf` alone (as a rule: hyper writes a head whole), or in
        // `held` and `buf` together.
        let found = if self.held.is_empty() {
            memchr::memmem::find(buf, b"\r\n\r\n").map(|at| at + 4)
        } else {
            let before = self.held.len();
            let start = before.saturating_sub(3);
            self.held.extend_from_slice(buf);
            let end =
                memchr::memmem::find(&self.held[start..], b"\r\n\r\n").map(|at| start + at + 4);
            self.held.truncate(end.unwrap_or(before));
            end.map(|end| end - before)
        };
        let Some(from_buf) = found else {
            self.held.extend_from_slice(buf);
            if self.held.len() > HEAD_SCAN_BYTES_MAX {
                let held = std::mem::take(&mut self.held);
                self.staged.extend_from_slice(&held);
                self.scan = Scan::Blind;
            }
            return Some(buf.len());
        };
        let nobody_answered = self.exchange.answering.borrow().is_empty();
        let head = if self.held.is_empty() {
            classify(&buf[..from_buf], nobody_answered)
        } else {
            classify(&self.held, nobody_answered)
        };
        let body = match head {
            Head::Hyper(status) => {
                self.held.clear();
                self.replace_hyper_error(status);
                return Some(buf.len());
            }
            Head::Interim => Some((0, true)),
            Head::Final { content_length } => {
                let to_head = self.exchange.answering.borrow_mut().pop_front();
                match (to_head, content_length) {
                    (Some(true), _) => Some((0, false)),
                    (_, Some(len)) => Some((len, false)),
                    (_, None) => None,
                }
            }
            Head::Unknown => None,
        };
        if self.held.is_empty() {
            self.scan = match body {
                Some((body, interim)) => Scan::Pass {
                    left: from_buf as u64 + body,
                    interim,
                },
                None => Scan::Blind,
            };
            return None;
        }
        let held = std::mem::take(&mut self.held);
        self.staged.extend_from_slice(&held);
        self.scan = match body {
            Some((body, interim)) => Scan::Pass {
                left: body,
                interim,
            },
            None => Scan::Blind,
        };
        self.after_pass(0);
        Some(from_buf)
    }

    /// `written` more bytes of the response under way went out.
    fn after_pass(&mut self, written: usize) {
        if let Scan::Pass { left, interim } = &mut self.scan {
            *left -= written as u64;
            if *left == 0 {
                let interim = *interim;
                self.scan = Scan::Head;
                if !interim {
                    self.response_done();
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ending.is_some() {
            ready!(this.poll_goodbye(cx));
            return Poll::Ready(this.ended_read());
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(read)) if read > 0 => {
                this.check_preface(&buf[..read]);
                if this.head_since.is_none() && !this.answering() {
                    this.head_since = Some(Instant::now());
                }
                // However often a slow client sends a byte, its deadline holds.
                if let Some((at, why)) = this.read_deadline() {
                    if Instant::now() >= at {
                        this.expire(why);
                    }
                }
                if this.ending.is_some() {
                    ready!(this.poll_goodbye(cx));
                    return Poll::Ready(this.ended_read());
                }
                Poll::Ready(Ok(read))
            }
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => {
                let Some((at, why)) = this.read_deadline() else {
                    this.read_deadline.clear();
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                };
                ready!(this.read_deadline.poll_until(cx, at));
                this.expire(why);
                ready!(this.poll_goodbye(cx));
                Poll::Ready(this.ended_read())
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ending.is_some() {
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(this.poll_staged(cx))?;
        if this.scan == Scan::Head {
            if let Some(taken) = this.at_head(buf) {
                return Poll::Ready(Ok(taken));
            }
        }
        let len = match this.scan {
            Scan::Pass { left, .. } => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            Scan::Blind | Scan::Head => buf.len(),
        };
        let result = Pin::new(&mut this.inner).poll_write(cx, &buf[..len]);
        let written = ready!(this.after_write(cx, result))?;
        this.after_pass(written);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let staged = ready!(this.poll_staged(cx));
        if this.ending.is_some() {
            // What went wrong is for the goodbye to handle: hyper is done with the connection.
            return Poll::Ready(Ok(()));
        }
        staged?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_goodbye(cx));
        Poll::Ready(Ok(()))
    }
}

/// Reads a complete response head. `nobody_answered`: no request of ours awaits its
/// response, as when hyper answers a request it could not parse.
fn classify(head: &[u8], nobody_answered: bool) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; HEAD_SCAN_HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = response.parse(head) else {
        return Head::Unknown;
    };
    let Some(status) = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
    else {
        return Head::Unknown;
    };
    if status.is_informational() {
        return Head::Interim;
    }
    let named = |name: &str| {
        response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    };
    let content_length = named("content-length")
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let hyper_status = matches!(
        status,
        StatusCode::BAD_REQUEST
            | StatusCode::URI_TOO_LONG
            | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let hyper_headers = response.headers.len() == 3
        && named("connection") == Some(b"close")
        && content_length == Some(0)
        && named("date").is_some();
    if nobody_answered && hyper_status && hyper_headers {
        return Head::Hyper(status);
    }
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    Head::Final {
        content_length: if bodiless { Some(0) } else { content_length },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use futures_lite::AsyncWriteExt;

    const DATE: &str = "date: Fri, 04 Dec 2026 03:15:54 GMT\r\n";

    /// A socket that takes at most `step` bytes a write and reads as closed.
    struct Sink {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncRead for Sink {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(0))
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let taken = buf.len().min(this.step);
            this.out.extend_from_slice(&buf[..taken]);
            Poll::Ready(Ok(taken))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn guarded(step: usize) -> Guarded<Sink> {
        let limits = Limits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            head_bytes_max: 16_384,
        };
        Guarded::new(
            Sink {
                out: Vec::new(),
                step,
            },
            limits,
            Rc::default(),
        )
    }

    fn hyper_error(line: &str) -> String {
        format!("HTTP/1.1 {line}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n")
    }

    fn json_answer(status: StatusCode, code: &'static str, message: &str) -> Vec<u8> {
        Reject::new(status, code, message).response()
    }

    const BAD_REQUEST: &str = "the request is not valid HTTP/1.1 (a malformed request line or \
        header, or conflicting Content-Length or Transfer-Encoding)";

    #[test]
    fn our_answers_pass_untouched_and_a_hyper_error_after_them_becomes_json() {
        // Our response, then hyper's 400 for a pipelined request it could not parse, through
        // a socket that takes 7 bytes at a time.
        let ours = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n{DATE}\r\n\
             {{\"status\":\"ok\"}}"
        );
        let mut stream = guarded(7);
        stream.exchange.took(false);
        block_on(async {
            stream.write_all(ours.as_bytes()).await.unwrap();
            stream
                .write_all(hyper_error("400 Bad Request").as_bytes())
                .await
                .unwrap();
            stream.flush().await.unwrap();
            stream.close().await.unwrap();
        });
        let mut expected = ours.into_bytes();
        expected.extend(json_answer(
            StatusCode::BAD_REQUEST,
            "bad_request",
            BAD_REQUEST,
        ));
        assert_eq!(
            String::from_utf8_lossy(&stream.inner.out),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(stream.exchange.ended(), Some(Ended::Malformed));
    }

    #[test]
    fn a_head_written_in_pieces_is_still_recognised() {
        let mut stream = guarded(1_000);
        let error = hyper_error("431 Request Header Fields Too Large");
        block_on(async {
            for piece in error.as_bytes().chunks(5) {
                stream.write_all(piece).await.unwrap();
            }
            stream.close().await.unwrap();
        });
        let expected = json_answer(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request head exceeds api_head_bytes_max = 16384 bytes or 100 headers",
        );
        assert_eq!(
            String::from_utf8_lossy(&stream.inner.out),
            String::from_utf8_lossy(&expected)
        );

        // Our own head in pieces, with its body, passes as it came.
        let mut stream = guarded(3);
        stream.exchange.took(false);
        let ours = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n{DATE}\r\n{{}}"
        );
        block_on(async {
            for piece in ours.as_bytes().chunks(9) {
                stream.write_all(piece).await.unwrap();
            }
            stream.flush().await.unwrap();
        });
        assert_eq!(String::from_utf8_lossy(&stream.inner.out), ours);
        assert_eq!(stream.scan, Scan::Head, "at the next head");
        assert_eq!(stream.exchange.ended(), None);
    }

    #[test]
    fn the_answers_to_head_and_interim_ones_have_no_body() {
        let mut stream = guarded(1_000);
        stream.exchange.took(true);
        stream.exchange.took(false);
        let head_answer = format!(
            "HTTP/1.1 405 Method Not Allowed\r\ncontent-type: application/json\r\n\
             content-length: 70\r\n{DATE}\r\n"
        );
        let interim = "HTTP/1.1 100 Continue\r\n\r\n";
        let final_answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n{DATE}\r\n{{}}"
        );
        block_on(async {
            stream.write_all(head_answer.as_bytes()).await.unwrap();
            stream.write_all(interim.as_bytes()).await.unwrap();
            stream.write_all(final_answer.as_bytes()).await.unwrap();
            stream
                .write_all(hyper_error("414 URI Too Long").as_bytes())
                .await
                .unwrap();
            stream.close().await.unwrap();
        });
        let mut expected = format!("{head_answer}{interim}{final_answer}").into_bytes();
        expected.extend(json_answer(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request target is too long",
        ));
        assert_eq!(
            String::from_utf8_lossy(&stream.inner.out),
            String::from_utf8_lossy(&expected)
        );
    }

    #[test]
    fn hyper_parse_error_heads_are_recognised_exactly() {
        // As hyper 1.12 writes them (captured from the server).
        for (line, status) in [
            ("400 Bad Request", StatusCode::BAD_REQUEST),
            ("414 URI Too Long", StatusCode::URI_TOO_LONG),
            (
                "431 Request Header Fields Too Large",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ),
        ] {
            let head =
                format!("HTTP/1.1 {line}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n");
            assert_eq!(classify(head.as_bytes(), true), Head::Hyper(status));
            assert_eq!(
                classify(head.as_bytes(), false),
                Head::Final {
                    content_length: Some(0)
                },
                "while a request of ours awaits its answer, the head is ours"
            );
        }
    }

    #[test]
    fn our_heads_and_interim_ones_are_followed() {
        let ours = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\
             content-length: 70\r\n{DATE}\r\n"
        );
        assert_eq!(
            classify(ours.as_bytes(), true),
            Head::Final {
                content_length: Some(70)
            }
        );
        let no_content_type =
            format!("HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n");
        assert_eq!(
            classify(no_content_type.as_bytes(), true),
            Head::Final {
                content_length: Some(0)
            },
            "hyper never writes 503 on its own"
        );
        assert_eq!(
            classify(b"HTTP/1.1 100 Continue\r\n\r\n", true),
            Head::Interim
        );
        assert_eq!(
            classify(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false
            ),
            Head::Final {
                content_length: None
            }
        );
        assert_eq!(classify(b"not a head\r\n\r\n", true), Head::Unknown);
    }
}
