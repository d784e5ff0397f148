//! One connection's WebSocket protocol after its handshake, as a state machine over bytes.
//!
//! A [`Session`] is handed the bytes its connection read and turns them into what the protocol
//! says happened: complete messages for its [`Host`] to answer, pongs for pings, the close
//! handshake, and the close codes of a peer that breaks the rules (1002, 1007, 1009). It
//! buffers only a frame still arriving (nothing while idle), checks a text message's UTF-8 as
//! it arrives, and takes a token of the inbound limit ([`crate::ws::rate`]) for every message
//! and ping: one refused is not executed; the first refusal of a run is answered
//! `rate_limited`, and a run of `inbound_refusals_max` closes with 4029.
//!
//! It never touches a socket, a timer or a shard: the task that owns the connection (the
//! shard's) reads, writes, keeps the close deadline and implements [`Host`], which is where
//! frames go and commands are answered. So this is testable with byte literals, like the
//! codecs beneath it (tungstenite's `WebSocketContext::read(&mut stream)` is the model).
//!
//! Closes arrive whole: a close that discards queued frames (4008, 1001, a protocol violation)
//! asks its host to keep the unwritten tail of a frame the peer already has the head of, and
//! the close frame follows it; the other closes queue it after everything.

use std::borrow::Cow;
use std::time::Instant;

use bytes::Bytes;
use sonic_rs::Value;

use crate::ws::command::{self, ErrorCode, ErrorReply};
use crate::ws::frame::{self, ClosePayload, FrameError};
use crate::ws::message::{Assembler, Event, MessageError};
use crate::ws::rate::{InboundLimit, Refusal};

/// Why and how a connection is to be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    /// At most 123 bytes: what a close frame holds after its code.
    pub reason: Cow<'static, str>,
}

impl CloseRequest {
    pub const GOING_AWAY: CloseRequest = CloseRequest {
        code: 1001,
        reason: Cow::Borrowed("going away"),
    };
    pub const IDLE: CloseRequest = CloseRequest {
        code: 1000,
        reason: Cow::Borrowed("idle timeout"),
    };
    pub const TOKEN_EXPIRED: CloseRequest = CloseRequest {
        code: 4001,
        reason: Cow::Borrowed("token expired: reconnect with a new one, or refresh before exp"),
    };
    pub const EPOCH_CHANGED: CloseRequest = CloseRequest {
        code: 1012,
        reason: Cow::Borrowed("epoch changed: offsets restarted; resubscribe"),
    };
    pub const SLOW_CONSUMER: CloseRequest = CloseRequest {
        code: 4008,
        reason: Cow::Borrowed("slow consumer: outbox overflowed"),
    };
    pub const RATE_LIMITED: CloseRequest = CloseRequest {
        code: 4029,
        reason: Cow::Borrowed("rate limit: too many messages refused in a row"),
    };

    /// Whether this close discards the frames queued ahead of it: a slow consumer cannot take
    /// them, and a shutting-down server will not wait for them.
    fn drops_queued(&self) -> bool {
        *self == CloseRequest::SLOW_CONSUMER || *self == CloseRequest::GOING_AWAY
    }

    /// Closed by the control plane (`POST /v1/users/disconnect`): 4010 with `reason` (which
    /// the API keeps within a close frame's 123 bytes).
    pub fn disconnected(reason: &str) -> CloseRequest {
        CloseRequest {
            code: 4010,
            reason: Cow::Owned(reason.to_owned()),
        }
    }
}

/// Where a connection is in its life. Every phase but `Open` ends at the close deadline
/// (`close_timeout_ms`), which the owning task keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Open,
    /// Our close frame is queued or sent; waiting for the peer's.
    Closing {
        peer_closed: bool,
    },
    /// The peer closed first and our answer is queued, after what was queued before it: the
    /// connection ends once it is written.
    Answered,
    /// The peer broke the protocol and our close frame is queued (RFC 6455 section 7.1.7,
    /// "fail the WebSocket connection"). Its input can no longer be read as frames, so it is
    /// discarded; once the close frame is written the task shuts the socket's sending side (a
    /// FIN right after the close frame, so the peer sees both, [`Session::shut`]), and the
    /// connection ends when the peer closes its side or at the deadline. Closing the socket at
    /// once instead would answer the peer's unread bytes with a reset, which can destroy the
    /// close frame in flight.
    Failed {
        shut: bool,
    },
}

/// What a session needs of the connection it runs on.
pub trait Host {
    /// A complete text message from the client, while the connection is open.
    fn text(&mut self, text: &str);
    /// A complete binary message from the client, while the connection is open.
    fn binary(&mut self, payload: &[u8]);
    /// Queues a frame for the client: a pong, an error reply.
    fn send(&mut self, frame: Bytes);
    /// Counts a message the inbound limit refused.
    fn refused(&mut self, refusal: Refusal);
    /// Queues `close_frame`, the last frame the connection sends, after dropping what is queued
    /// (all but the unwritten tail of a frame the socket started on) when `drop_queued`.
    fn close(&mut self, close_frame: Bytes, drop_queued: bool);
    /// The limits the peer's bytes are read under. Asked for, not kept in the session: they
    /// are the same for every connection of a shard, and an idle connection's every byte
    /// counts.
    fn limits(&self) -> Limits;
}

/// The limits a session reads its peer's bytes under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub frame_bytes_max: usize,
    pub message_bytes_max: usize,
    /// `json_depth_max`: a refused message's `id` is looked for only within it.
    pub json_depth_max: usize,
    /// The upgrade agreed on permessage-deflate: RSV1 marks a compressed message.
    pub deflate: bool,
}

/// One connection's protocol state.
pub struct Session {
    /// Bytes of a frame that has not fully arrived yet; empty (unallocated) most of the time.
    partial: Vec<u8>,
    assembler: Assembler,
    phase: Phase,
    /// Tokens for the client's messages.
    limit: InboundLimit,
}

impl Session {
    /// A session that starts open. `early` holds bytes that arrived with the handshake (a
    /// pipelining client's first frames): a `receive` of no input reads them, and any input
    /// is read after them.
    pub fn new(limit: InboundLimit, early: Vec<u8>) -> Self {
        Session {
            partial: early,
            assembler: Assembler::default(),
            phase: Phase::Open,
            limit,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the connection is over once everything queued is written: our answer to the
    /// peer's close, or our close that the peer answered.
    pub fn done_when_flushed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Answered | Phase::Closing { peer_closed: true }
        )
    }

    /// Whether the task should shut the socket's sending side once the close frame is written
    /// (a failed connection), and has not yet.
    pub fn wants_shutdown(&self) -> bool {
        self.phase == Phase::Failed { shut: false }
    }

    /// The task shut the socket's sending side.
    pub fn shut(&mut self) {
        if let Phase::Failed { shut } = &mut self.phase {
            *shut = true;
        }
    }

    /// Handles `input`, read at `now` (frames are unmasked in place): every complete message
    /// goes to `host`, a frame still arriving is kept for the next input.
    pub fn receive(&mut self, input: &mut [u8], now: Instant, host: &mut impl Host) {
        let failure = if self.partial.is_empty() {
            let (failure, used) = self.frames(input, now, host);
            self.partial.extend_from_slice(&input[used..]);
            failure
        } else {
            let mut pending = std::mem::take(&mut self.partial);
            pending.extend_from_slice(input);
            let (failure, used) = self.frames(&mut pending, now, host);
            pending.drain(..used);
            self.partial = pending;
            failure
        };
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            self.partial = Vec::new();
        }
        if let Some((code, reason)) = failure {
            self.fail(code, &reason, host);
        }
    }

    /// Closes with `request`: our close frame is queued (after dropping what the request
    /// discards) and the session waits for the peer's. Nothing once closing already.
    pub fn close(&mut self, request: CloseRequest, host: &mut impl Host) {
        if self.phase != Phase::Open {
            return;
        }
        host.close(
            frame::close_frame(request.code, &request.reason),
            request.drops_queued(),
        );
        self.phase = Phase::Closing { peer_closed: false };
    }

    /// Handles every complete frame at the start of `buf`; returns how many bytes it used, and
    /// the close code and reason of a protocol violation, if one came.
    fn frames(
        &mut self,
        buf: &mut [u8],
        now: Instant,
        host: &mut impl Host,
    ) -> (Option<(u16, String)>, usize) {
        if matches!(self.phase, Phase::Failed { .. }) {
            // What follows a protocol violation cannot be read as frames: discard it.
            return (None, buf.len());
        }
        let mut used = 0;
        while used < buf.len() {
            let rest = &mut buf[used..];
            let limits = host.limits();
            let frame =
                match frame::parse_client_frame(rest, limits.frame_bytes_max, limits.deflate) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => {
                        // Fail fast: the text of a frame still arriving is checked as it comes.
                        let arriving = frame::partial_frame(rest)
                            .filter(|_| self.phase == Phase::Open)
                            .map(|head| {
                                let arrived = &rest[head.payload_start.min(rest.len())..];
                                self.assembler.check_arriving(head, arrived)
                            });
                        if let Some(Err(err)) = arriving {
                            return (Some(message_failure(err)), buf.len());
                        }
                        break;
                    }
                    Err(err) => return (Some(frame_failure(err)), buf.len()),
                };
            used += frame.frame_len;
            if self.phase == Phase::Answered {
                continue;
            }
            let payload = &rest[frame.payload_start..frame.payload_end];
            let event = match self
                .assembler
                .push(frame, payload, limits.message_bytes_max)
            {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(err) => return (Some(message_failure(err)), buf.len()),
            };
            let open = self.phase == Phase::Open;
            let costs_a_token = matches!(event, Event::Text(_) | Event::Binary(_) | Event::Ping(_));
            if open && costs_a_token {
                if let Err(refusal) = self.limit.check(now) {
                    let id = match (refusal, &event) {
                        (Refusal::Tell { .. }, Event::Text(text)) => {
                            command::salvage_id(text, limits.json_depth_max)
                        }
                        _ => None,
                    };
                    self.assembler.clear();
                    self.refuse(refusal, id, host);
                    continue;
                }
            }
            match event {
                Event::Text(text) if open => host.text(text),
                Event::Binary(payload) if open => host.binary(payload),
                Event::Text(_) | Event::Binary(_) | Event::Pong => {}
                Event::Ping(payload) => host.send(frame::pong_frame(payload)),
                Event::Close(payload) => self.peer_close(payload, host),
            }
            self.assembler.clear();
        }
        (None, used)
    }

    /// A message the inbound limit refused: it is dropped; the first of a run is answered with
    /// `rate_limited` (echoing `id`), and the last closes the connection with 4029 after what
    /// is already queued.
    fn refuse(&mut self, refusal: Refusal, id: Option<Value>, host: &mut impl Host) {
        host.refused(refusal);
        match refusal {
            Refusal::Tell { retry_after } => {
                let message = self.limit.message(retry_after);
                host.send(ErrorReply::new(id, ErrorCode::RateLimited, message).frame());
            }
            Refusal::Drop => {}
            Refusal::Close => self.close(CloseRequest::RATE_LIMITED, host),
        }
    }

    /// The peer sent a close frame: answer it (if we had not closed first) and finish.
    fn peer_close(&mut self, payload: ClosePayload, host: &mut impl Host) {
        match &mut self.phase {
            Phase::Open => {
                let code = match payload {
                    ClosePayload::Empty => 1000,
                    ClosePayload::Code(code) => code,
                    ClosePayload::Invalid => 1002,
                    ClosePayload::BadUtf8 => 1007,
                };
                host.close(frame::close_frame(code, ""), false);
                self.phase = Phase::Answered;
            }
            Phase::Closing { peer_closed } => *peer_closed = true,
            Phase::Answered | Phase::Failed { .. } => {}
        }
    }

    /// A protocol violation: close with `code` right away, dropping whatever was queued but the
    /// rest of a started frame.
    fn fail(&mut self, code: u16, reason: &str, host: &mut impl Host) {
        if self.phase != Phase::Open {
            return;
        }
        host.close(frame::close_frame(code, reason), true);
        self.phase = Phase::Failed { shut: false };
    }
}

fn frame_failure(err: FrameError) -> (u16, String) {
    (err.close_code(), err.to_string())
}

fn message_failure(err: MessageError) -> (u16, String) {
    (err.close_code(), err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::rate::InboundLimit;

    /// A host that writes down what the session asked of it.
    #[derive(Default)]
    struct Recorder {
        texts: Vec<String>,
        binaries: Vec<Vec<u8>>,
        sent: Vec<Bytes>,
        refused: usize,
        closes: Vec<(Bytes, bool)>,
    }

    impl Host for Recorder {
        fn text(&mut self, text: &str) {
            self.texts.push(text.to_owned());
        }
        fn binary(&mut self, payload: &[u8]) {
            self.binaries.push(payload.to_vec());
        }
        fn send(&mut self, frame: Bytes) {
            self.sent.push(frame);
        }
        fn refused(&mut self, _: Refusal) {
            self.refused += 1;
        }
        fn close(&mut self, close_frame: Bytes, drop_queued: bool) {
            self.closes.push((close_frame, drop_queued));
        }
        fn limits(&self) -> Limits {
            LIMITS
        }
    }

    const LIMITS: Limits = Limits {
        frame_bytes_max: 1024,
        message_bytes_max: 4096,
        json_depth_max: 128,
        deflate: false,
    };

    fn session(per_s: u64, burst: u64) -> Session {
        Session::new(
            InboundLimit::new(per_s, burst, 3, Instant::now()),
            Vec::new(),
        )
    }

    /// A masked client frame (mask 1, 2, 3, 4), as browsers send them.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![first, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn close_code(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[2], frame[3]])
    }

    #[test]
    fn messages_split_across_reads_reach_the_host_whole() {
        let mut session = session(100, 100);
        let mut host = Recorder::default();
        let mut bytes = client_frame(0x81, b"{\"type\":\"ping\"}");
        bytes.extend(client_frame(0x82, b"\x01\x02"));
        let (first, second) = bytes.split_at_mut(5);
        session.receive(first, Instant::now(), &mut host);
        assert!(host.texts.is_empty(), "half a frame is kept, not handled");
        session.receive(second, Instant::now(), &mut host);
        assert_eq!(host.texts, ["{\"type\":\"ping\"}"]);
        assert_eq!(host.binaries, [vec![1u8, 2]]);
        assert_eq!(session.phase(), Phase::Open);
    }

    #[test]
    fn a_ping_is_answered_with_its_payload_and_pongs_are_taken_silently() {
        let mut session = session(100, 100);
        let mut host = Recorder::default();
        let mut bytes = client_frame(0x89, b"hi");
        bytes.extend(client_frame(0x8A, b""));
        session.receive(&mut bytes, Instant::now(), &mut host);
        assert_eq!(host.sent, [frame::pong_frame(b"hi")]);
    }

    #[test]
    fn an_unmasked_frame_fails_the_connection_with_1002_dropping_what_is_queued() {
        let mut session = session(100, 100);
        let mut host = Recorder::default();
        let mut bytes = vec![0x81, 0x02, b'h', b'i'];
        session.receive(&mut bytes, Instant::now(), &mut host);
        assert_eq!(session.phase(), Phase::Failed { shut: false });
        assert!(session.wants_shutdown());
        let (close, drop_queued) = &host.closes[0];
        assert_eq!((close_code(close), *drop_queued), (1002, true));
        let mut more = client_frame(0x81, b"after");
        session.receive(&mut more, Instant::now(), &mut host);
        assert!(host.texts.is_empty(), "nothing after a violation is read");
        session.shut();
        assert!(!session.wants_shutdown());
    }

    #[test]
    fn a_peer_close_is_answered_after_what_is_queued_and_ends_once_flushed() {
        let mut session = session(100, 100);
        let mut host = Recorder::default();
        let mut bytes = client_frame(0x88, &4000u16.to_be_bytes());
        bytes.extend(client_frame(0x81, b"late"));
        session.receive(&mut bytes, Instant::now(), &mut host);
        assert_eq!(session.phase(), Phase::Answered);
        assert!(session.done_when_flushed());
        let (close, drop_queued) = &host.closes[0];
        assert_eq!((close_code(close), *drop_queued), (4000, false));
        assert!(
            host.texts.is_empty(),
            "a message after the close is not handled"
        );
    }

    #[test]
    fn our_close_waits_for_the_peers_and_a_slow_consumers_drops_what_is_queued() {
        let mut session = session(100, 100);
        let mut host = Recorder::default();
        session.close(CloseRequest::SLOW_CONSUMER, &mut host);
        session.close(CloseRequest::IDLE, &mut host);
        assert_eq!(host.closes.len(), 1, "the first close wins");
        assert_eq!(
            (close_code(&host.closes[0].0), host.closes[0].1),
            (4008, true)
        );
        assert!(!session.done_when_flushed());
        let mut answer = client_frame(0x88, &4008u16.to_be_bytes());
        session.receive(&mut answer, Instant::now(), &mut host);
        assert!(session.done_when_flushed());

        let mut idle = session_with_close(CloseRequest::IDLE);
        assert!(!idle.1.closes[0].1, "an idle close keeps what is queued");
        idle.0.close(CloseRequest::GOING_AWAY, &mut idle.1);
        assert_eq!(idle.1.closes.len(), 1);
    }

    fn session_with_close(request: CloseRequest) -> (Session, Recorder) {
        let mut session = session(100, 100);
        let mut host = Recorder::default();
        session.close(request, &mut host);
        (session, host)
    }

    #[test]
    fn the_inbound_limit_answers_the_first_refusal_drops_the_next_and_closes_with_4029() {
        let mut session = session(1, 1);
        let mut host = Recorder::default();
        let now = Instant::now();
        let mut bytes = Vec::new();
        for id in 1..=5 {
            bytes.extend(client_frame(
                0x81,
                format!("{{\"type\":\"ping\",\"id\":{id}}}").as_bytes(),
            ));
        }
        session.receive(&mut bytes, now, &mut host);
        assert_eq!(host.texts.len(), 1, "the burst of one was taken");
        assert_eq!(
            host.refused, 3,
            "told, dropped, then closed; the fifth finds it closing"
        );
        let header_len = crate::ws::frame::server_header_len(&host.sent[0]);
        let told = std::str::from_utf8(&host.sent[0][header_len..]).unwrap();
        assert!(
            told.contains("\"code\":\"rate_limited\"") && told.contains("\"id\":2"),
            "{told}"
        );
        assert_eq!(host.sent.len(), 1, "later refusals of the run are dropped");
        assert_eq!(close_code(&host.closes[0].0), 4029);
        assert_eq!(session.phase(), Phase::Closing { peer_closed: false });
    }

    #[test]
    fn early_bytes_from_the_handshake_are_read_without_waiting_for_input() {
        let early = client_frame(0x81, b"first");
        let mut session = Session::new(InboundLimit::new(100, 100, 3, Instant::now()), early);
        let mut host = Recorder::default();
        session.receive(&mut [], Instant::now(), &mut host);
        assert_eq!(host.texts, ["first"], "read with no input");
        let mut next = client_frame(0x81, b"second");
        session.receive(&mut next, Instant::now(), &mut host);
        assert_eq!(host.texts, ["first", "second"]);
    }
}
