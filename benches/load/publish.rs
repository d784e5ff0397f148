//! The publisher: one plain thread that sends the bench's events to the server at fixed
//! intervals, either as requests to corecast's control-plane API or as text messages on one
//! publisher WebSocket connection that the server relays to every subscriber (a peer without
//! that API).
//!
//! Owns both ways of publishing, the event formats (the API's body, and the message text
//! corecast delivers, which the WebSocket publisher sends as is), and the handle (`Publisher`)
//! through which the run drives any target's publishing, this thread's or the floor's (see
//! `floor`). It never runs on the receive thread, because a blocking write or HTTP round trip
//! there would stall every subscriber's reads and show up as latency; it is pinned to the
//! bench's CPU like the receive thread, so that it never takes time from the server it
//! measures. It takes `t_us` right before each event is built and sent, so the measured
//! latency starts when the server can first see the event. Ticks are scheduled from the
//! phase's start (tick k at start + k * interval), so a slow request delays one event, not all
//! later ones. It never reads what a server sends on the publisher connection: a drain thread
//! discards it, so that the server can never block on a publisher that does not read.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write as _};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wire::{self, WsTarget, CLOSE_NORMAL_PAYLOAD, CONTROL_FRAME_BYTES_MAX, OPCODE_CLOSE};

/// Longest one publish may take, in milliseconds, before the run fails: an HTTP request, the
/// publisher connection's connect and upgrade, or the write of one message.
const PUBLISH_TIMEOUT_MS: u64 = 5_000;

/// Largest publish response the publisher reads, in bytes; an error body is quoted in the
/// failure message up to this size.
const RESPONSE_BYTES_MAX: u64 = 4_096;

/// Largest answer head to the publisher connection's upgrade, in bytes; a server whose head
/// is longer is refused. Servers answer with a few hundred.
const UPGRADE_ANSWER_BYTES_MAX: usize = 4_096;

/// Read size of the publisher connection's drain thread, in bytes. Servers send a publisher
/// little or nothing (a greeting, pings); a larger buffer would only save wake-ups on traffic
/// the bench does not measure.
const DRAIN_BUFFER_BYTES: usize = 4_096;

/// Commands queued to the publisher at once: the receive thread sends one per phase and waits
/// for it.
const COMMANDS_QUEUED_MAX: usize = 1;

/// What to publish and where.
#[derive(Debug, Clone)]
pub struct Plan {
    pub via: Via,
    /// ureq's TLS settings, for an https:// API (unused otherwise).
    pub api_tls: ureq::tls::TlsConfig,
    /// The channel name as a JSON string, quotes included.
    pub channel_json: String,
    /// Size of the JSON `data` value, in bytes.
    pub payload_bytes: usize,
    /// Time between two publishes of a phase.
    pub interval: Duration,
}

/// How the events reach the server.
#[derive(Debug, Clone)]
pub enum Via {
    /// One POST per event to corecast's control-plane API; carries the full
    /// `{api}/v1/publish` URL.
    Http(String),
    /// One text message per event on a publisher WebSocket connection to this URL, which the
    /// server relays unchanged to every subscriber. The message is the text corecast delivers
    /// for the same publish, so that every target carries the same bytes per delivery.
    WebSocket(WsTarget),
}

/// A phase for the publisher: events `first_seq..first_seq + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    pub first_seq: u64,
    pub count: u64,
}

/// How a phase ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every event of the phase was handed to the server.
    Published(Published),
    /// A publish failed; the publisher has stopped. Carries what to tell the operator.
    Failed(String),
}

/// A phase every event of which was handed to the server: accepted by its API (this module),
/// or written to every subscriber's socket (the floor, see `floor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub phase: Phase,
    /// CPU time the publishing thread spent on the phase, in nanoseconds, when that thread is
    /// the server (the floor); `None` here, where it is part of the bench.
    pub cpu_ns: Option<u64>,
}

/// The receive thread's handle on whatever publishes the events: the publisher thread here,
/// or the floor server's thread. Both take one phase at a time on `phases` and answer each
/// on `outcomes`; both end once `phases` is dropped.
pub struct Publisher {
    pub phases: SyncSender<Phase>,
    pub outcomes: Receiver<Outcome>,
    /// Dropped after `phases`, since fields drop in declaration order: it wakes a thread that
    /// may be blocked somewhere `phases` cannot reach (the floor in `accept`).
    pub _wake: Option<WakeAccept>,
}

/// Connects once to its address when dropped, to wake a thread blocked in `accept` there.
pub struct WakeAccept(pub std::net::SocketAddr);

impl Drop for WakeAccept {
    fn drop(&mut self) {
        // Refused once the thread has stopped listening: then it did not need waking.
        let _ = std::net::TcpStream::connect(self.0);
    }
}

/// Starts the publisher thread pinned to `cpu` (the first of the bench's `--cpu`; unpinned
/// when `None`), and returns once it is pinned. It ends after its current phase once `phases`
/// is dropped, or with the process: it is never joined, so that a request stuck on a dead
/// server cannot hold the report back. Nor is the publisher connection's drain thread, which
/// ends with the connection.
pub fn spawn(plan: Plan, cpu: Option<usize>) -> Result<Publisher, String> {
    let (phases, phase_source) = mpsc::sync_channel(COMMANDS_QUEUED_MAX);
    let (outcome_sink, outcomes) = mpsc::sync_channel(COMMANDS_QUEUED_MAX);
    let (pinned_sink, pinned) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("bench-publish".into())
        .spawn(move || {
            let pin = cpu.map_or(Ok(()), |cpu| super::pin_current_thread("cpu", cpu));
            let pinned = pin.is_ok();
            if pinned_sink.send(pin).is_ok() && pinned {
                match &plan.via {
                    Via::Http(url) => run_http(&plan, url, &phase_source, &outcome_sink),
                    Via::WebSocket(target) => {
                        run_websocket(&plan, target, cpu, &phase_source, &outcome_sink);
                    }
                }
            }
        })
        .map_err(|error| format!("cannot start the publisher thread: {error}"))?;
    pinned
        .recv()
        .map_err(|_| "the publisher thread ended before it started".to_string())??;
    Ok(Publisher {
        phases,
        outcomes,
        _wake: None,
    })
}

/// Answers every phase from `phases` with `publish_phase`'s outcome, until `phases` is
/// dropped, the receive thread stops listening, or a phase fails.
fn answer_phases(
    phases: impl IntoIterator<Item = Phase>,
    outcomes: &SyncSender<Outcome>,
    mut publish_phase: impl FnMut(Phase) -> Outcome,
) {
    for phase in phases {
        let outcome = publish_phase(phase);
        let failed = matches!(outcome, Outcome::Failed(_));
        if outcomes.send(outcome).is_err() || failed {
            return;
        }
    }
}

fn run_http(plan: &Plan, url: &str, phases: &Receiver<Phase>, outcomes: &SyncSender<Outcome>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(PUBLISH_TIMEOUT_MS)))
        .tls_config(plan.api_tls.clone())
        .build()
        .into();
    let mut body = String::new();
    answer_phases(phases, outcomes, |phase| {
        post_phase(plan, url, &agent, &mut body, phase)
    });
}

fn post_phase(
    plan: &Plan,
    url: &str,
    agent: &ureq::Agent,
    body: &mut String,
    phase: Phase,
) -> Outcome {
    let start = Instant::now();
    for index in 0..phase.count {
        sleep_until_tick(start, plan.interval, index);
        let seq = phase.first_seq + index;
        let sent_us = super::unix_us();
        write_body(body, &plan.channel_json, seq, sent_us, plan.payload_bytes);
        let response = agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.as_str());
        let mut response = match response {
            Ok(response) => response,
            Err(error) => {
                return Outcome::Failed(format!("publish seq {seq} to {url}: {error}"));
            }
        };
        // Read the answer to the end so the agent can reuse the connection.
        let answer = response
            .body_mut()
            .with_config()
            .limit(RESPONSE_BYTES_MAX)
            .read_to_string()
            .unwrap_or_default();
        if response.status() != 200 {
            return Outcome::Failed(format!(
                "publish seq {seq} to {url}: HTTP {}: {answer}",
                response.status()
            ));
        }
    }
    Outcome::Published(Published {
        phase,
        cpu_ns: None,
    })
}

/// Opens the publisher connection when the first phase arrives, so that a server that
/// refuses it fails that phase; keeps it for the whole run, and closes it once `phases` is
/// dropped or a phase has failed.
fn run_websocket(
    plan: &Plan,
    target: &WsTarget,
    cpu: Option<usize>,
    phases: &Receiver<Phase>,
    outcomes: &SyncSender<Outcome>,
) {
    let Ok(first) = phases.recv() else {
        return;
    };
    let mut conn = match RelayConn::open(target, cpu) {
        Ok(conn) => conn,
        Err(message) => {
            // When the run has stopped listening, nobody is left to tell.
            let _ = outcomes.send(Outcome::Failed(message));
            return;
        }
    };
    answer_phases(std::iter::once(first).chain(phases), outcomes, |phase| {
        conn.publish_phase(plan, phase)
    });
    conn.close();
}

/// The publisher connection to a server that relays its text messages to every subscriber.
/// Only the publisher thread writes to it; a drain thread reads whatever the server sends on
/// it and discards it.
struct RelayConn {
    stream: TcpStream,
    /// The URL, for failure messages.
    url: String,
    /// Set before the Close is sent: from then on the drain thread ends at its next read
    /// timeout, should the server never close.
    closing: Arc<AtomicBool>,
    masks: Masks,
    /// The event's `data`, rebuilt for every event.
    data: String,
    /// The event's frame, rebuilt for every event.
    frame: Vec<u8>,
}

impl RelayConn {
    /// Connects to `target`, upgrades without subscribing to anything, and starts the drain
    /// thread, pinned to `cpu` like the publisher thread. Every failure names the URL.
    fn open(target: &WsTarget, cpu: Option<usize>) -> Result<Self, String> {
        let url = target.to_string();
        let fail = |what: String| format!("publisher connection to {url}: {what}");
        let mut stream = connect(&target.authority)
            .map_err(|error| fail(format!("cannot connect: {}", describe(&error))))?;
        let timeout = Some(Duration::from_millis(PUBLISH_TIMEOUT_MS));
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(timeout))
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(|error| fail(format!("cannot set up the socket: {error}")))?;
        stream
            .write_all(&wire::publisher_upgrade_request(target))
            .map_err(|error| {
                fail(format!(
                    "cannot send the upgrade request: {}",
                    describe(&error)
                ))
            })?;
        read_upgrade_answer(&mut stream).map_err(fail)?;
        let source = stream
            .try_clone()
            .map_err(|error| fail(format!("cannot share the socket: {error}")))?;
        let closing = Arc::new(AtomicBool::new(false));
        let drain_closing = Arc::clone(&closing);
        std::thread::Builder::new()
            .name("bench-publish-drain".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    // The publisher thread was pinned to the same CPU, so this cannot fail for
                    // want of the CPU; and unpinned the drain is still correct, only noisier.
                    let _ = super::pin_current_thread("cpu", cpu);
                }
                drain(source, &drain_closing);
            })
            .map_err(|error| fail(format!("cannot start its drain thread: {error}")))?;
        Ok(Self {
            stream,
            url,
            closing,
            masks: Masks::seeded(),
            data: String::new(),
            frame: Vec::new(),
        })
    }

    /// Sends one masked text frame per event of `phase` on the publisher's schedule. Once the
    /// buffers have grown to one event's size, this never allocates.
    fn publish_phase(&mut self, plan: &Plan, phase: Phase) -> Outcome {
        let start = Instant::now();
        for index in 0..phase.count {
            sleep_until_tick(start, plan.interval, index);
            let seq = phase.first_seq + index;
            let sent_us = super::unix_us();
            self.data.clear();
            write_data(&mut self.data, seq, sent_us, plan.payload_bytes);
            let mut offset_text = itoa::Buffer::new();
            let mut ts_ms_text = itoa::Buffer::new();
            // corecast numbers a channel's messages from 1 and stamps them in milliseconds; with
            // the bench its only publisher, a message's node-wide seq is its offset.
            let offset_text = offset_text.format(seq + 1);
            let parts = message_parts(
                &plan.channel_json,
                offset_text,
                offset_text,
                ts_ms_text.format(sent_us / 1_000),
                &self.data,
            );
            wire::masked_text_frame(&parts, self.masks.next_mask(), &mut self.frame);
            if let Err(error) = self.stream.write_all(&self.frame) {
                return Outcome::Failed(format!(
                    "publish seq {seq} on {}: {}",
                    self.url,
                    describe(&error)
                ));
            }
        }
        Outcome::Published(Published {
            phase,
            cpu_ns: None,
        })
    }

    /// Sends Close 1000 and shuts the sending side down. The drain thread reads on until the
    /// server closes too (or for one read timeout), so that the server's Close is read rather
    /// than reset away, and the socket ends when that thread drops its handle.
    fn close(mut self) {
        self.closing.store(true, Ordering::Relaxed);
        let mut frame = [0; CONTROL_FRAME_BYTES_MAX];
        let length = wire::encode_control_frame(
            OPCODE_CLOSE,
            &CLOSE_NORMAL_PAYLOAD,
            self.masks.next_mask(),
            &mut frame,
        );
        // The run is over: a server that is already gone needs no Close.
        let _ = self.stream.write_all(&frame[..length]);
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Connects to the first address of `authority` that answers within `PUBLISH_TIMEOUT_MS`.
fn connect(authority: &str) -> std::io::Result<TcpStream> {
    let timeout = Duration::from_millis(PUBLISH_TIMEOUT_MS);
    let mut last_error = None;
    for addr in authority.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(ErrorKind::NotFound, "the host resolves to no address")
    }))
}

/// Reads the answer to the upgrade request up to the end of its head, at most
/// `UPGRADE_ANSWER_BYTES_MAX` bytes, and checks that it is `101`. Bytes read past the head are
/// the server's first frames to the publisher, dropped as the drain thread would drop them.
fn read_upgrade_answer(stream: &mut impl Read) -> Result<(), String> {
    let mut answer = [0; UPGRADE_ANSWER_BYTES_MAX];
    let mut filled = 0;
    loop {
        match wire::parse_upgrade_response(&answer[..filled]) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if filled == answer.len() => {
                return Err(format!(
                    "the answer to the upgrade has no end of head within \
                     {UPGRADE_ANSWER_BYTES_MAX} bytes"
                ));
            }
            Ok(None) => {}
            Err(error) => return Err(error.to_string()),
        }
        match stream.read(&mut answer[filled..]) {
            Ok(0) => return Err("the server closed the connection before answering".into()),
            Ok(read) => filled += read,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(format!("no answer to the upgrade: {}", describe(&error))),
        }
    }
}

/// Reads and discards whatever the server sends on the publisher connection, so that its
/// sends can never fill the socket and block it; it answers nothing (the publisher is no
/// subscriber). Ends at end of stream or on an error, or at a read timeout once `closing` is
/// set.
fn drain(mut source: TcpStream, closing: &AtomicBool) {
    let mut buffer = [0; DRAIN_BUFFER_BYTES];
    loop {
        match source.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) if is_timeout(&error) && !closing.load(Ordering::Relaxed) => {}
            Err(_) => return,
        }
    }
}

/// Whether a socket call gave up at its timeout: a blocking read or write past its timeout
/// reports `WouldBlock` on Unix, a connect `TimedOut`.
fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// An I/O error for the operator, a timeout spelt out.
fn describe(error: &std::io::Error) -> String {
    if is_timeout(error) {
        format!("no progress within {PUBLISH_TIMEOUT_MS} ms (timed out)")
    } else {
        error.to_string()
    }
}

/// Masking keys for the publisher connection's frames, from an xorshift64 generator seeded
/// from the clock. RFC 6455 wants keys from a strong source of entropy, so that a script in a
/// browser cannot steer the bytes a proxy sees; a load generator talking straight to the server
/// it measures has no such adversary, and a cheap generator keeps masking off its own cost.
struct Masks(u64);

impl Masks {
    fn seeded() -> Self {
        // xorshift stays at zero from a zero state: the low bit keeps it away from it.
        Self(super::unix_us() | 1)
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let mut state = self.0;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        self.0 = state;
        let bytes = state.to_le_bytes();
        [bytes[0], bytes[1], bytes[2], bytes[3]]
    }
}

/// The JSON text corecast delivers for one publish, as consecutive pieces:
/// `{"type":"message","channel":..,"offset":..,"ts_ms":..,"data":..}`, the bytes its
/// encode-once step builds (pinned against it in `tests/bench_wire.rs`). `channel_json` is the
/// channel as a JSON string, quotes included; `data` is the raw JSON of the event's data, as
/// `write_data` builds it.
pub fn message_parts<'a>(
    channel_json: &'a str,
    offset_text: &'a str,
    seq_text: &'a str,
    ts_ms_text: &'a str,
    data: &'a str,
) -> [&'a str; 11] {
    [
        r#"{"type":"message","channel":"#,
        channel_json,
        r#","offset":"#,
        offset_text,
        r#","seq":"#,
        seq_text,
        r#","ts_ms":"#,
        ts_ms_text,
        r#","data":"#,
        data,
        "}",
    ]
}

/// Sleeps until tick `index` of a phase started at `start`: start + index * interval. Shared by
/// every target's publishing, so that all of them follow the same schedule.
pub fn sleep_until_tick(start: Instant, interval: Duration, index: u64) {
    let tick = start + interval * u32::try_from(index).unwrap_or(u32::MAX);
    std::thread::sleep(tick.saturating_duration_since(Instant::now()));
}

/// Writes the publish body for event `seq` into `body`: the channel, and `data` as
/// `write_data` builds it.
pub fn write_body(
    body: &mut String,
    channel_json: &str,
    seq: u64,
    sent_us: u64,
    payload_bytes: usize,
) {
    body.clear();
    body.push_str(r#"{"channel":"#);
    body.push_str(channel_json);
    body.push_str(r#","data":"#);
    write_data(body, seq, sent_us, payload_bytes);
    body.push('}');
}

/// Appends event `seq`'s `data` value to `out`, `{"seq":..,"t_us":..,"pad":"xx.."}`, padded to
/// `payload_bytes` bytes (or with an empty `pad` when the fields alone are longer). Both ways
/// of publishing and the floor build `data` here, so that every target carries the same bytes.
pub fn write_data(out: &mut String, seq: u64, sent_us: u64, payload_bytes: usize) {
    let start = out.len();
    // Writing to a String cannot fail.
    let _ = write!(out, r#"{{"seq":{seq},"t_us":{sent_us},"pad":""#);
    let closing = r#""}"#;
    let unpadded = out.len() - start + closing.len();
    out.extend(std::iter::repeat_n(
        'x',
        payload_bytes.saturating_sub(unpadded),
    ));
    out.push_str(closing);
}

#[cfg(test)]
mod tests {
    //! The event formats byte for byte, and the WebSocket publisher against a tungstenite
    //! server on a port of its own: what it asks for, every message it sends, its Close, and
    //! its failures. Each network test carries a watchdog.

    use std::net::{SocketAddr, TcpListener};

    use tungstenite::handshake::server::{Request, Response};
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::Message;

    use super::*;
    use crate::wire::Scanner;

    use crate::tests::WATCHDOG;

    /// Bytes the fake server sends the publisher before reading anything: more than loopback
    /// socket buffers hold, so that it blocks, and the test hangs, unless the publisher drains
    /// its connection.
    const UNREAD_BYTES: usize = 16 * 1024 * 1024;

    /// Runs `body` under the bench tests' watchdog.
    fn within_watchdog<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
        crate::tests::within_watchdog(WATCHDOG, body)
    }

    fn relay_plan(url: &str, payload_bytes: usize) -> Plan {
        Plan {
            via: Via::WebSocket(wire::parse_ws_url(url).unwrap()),
            api_tls: ureq::tls::TlsConfig::default(),
            channel_json: r#""bench.relay""#.into(),
            payload_bytes,
            interval: Duration::from_millis(1),
        }
    }

    /// Publishes one phase through a publisher for `plan` and returns how it ended.
    fn publish_one_phase(plan: Plan, phase: Phase) -> (Publisher, Outcome) {
        let publisher = spawn(plan, None).unwrap();
        publisher.phases.send(phase).unwrap();
        let outcome = publisher.outcomes.recv().unwrap();
        (publisher, outcome)
    }

    /// What the fake relay server saw of one publisher connection.
    struct Seen {
        /// Path and query of the upgrade request.
        path: String,
        texts: Vec<String>,
        close: Option<CloseCode>,
    }

    /// Accepts one publisher connection on `listener`, sends it `UNREAD_BYTES` it must drain,
    /// then reads `messages` messages, which must be text, and the frame after them, which
    /// must be a Close.
    fn relay_server(listener: TcpListener, messages: usize) -> std::thread::JoinHandle<Seen> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(WATCHDOG)).unwrap();
            let mut path = String::new();
            // tungstenite's handshake callback type fixes its error as a whole HTTP response.
            #[allow(clippy::result_large_err)]
            let mut ws = tungstenite::accept_hdr(stream, |request: &Request, response| {
                path = request.uri().to_string();
                Ok::<Response, _>(response)
            })
            .unwrap();
            ws.send(Message::binary(vec![0u8; UNREAD_BYTES])).unwrap();
            let texts = (0..messages)
                .map(|_| match ws.read().unwrap() {
                    Message::Text(text) => text.as_str().to_owned(),
                    other => panic!("a text message, not {other:?}"),
                })
                .collect();
            let close = match ws.read().unwrap() {
                Message::Close(frame) => frame.map(|frame| frame.code),
                other => panic!("a Close, not {other:?}"),
            };
            Seen { path, texts, close }
        })
    }

    #[test]
    fn websocket_publisher_sends_each_event_as_corecast_delivers_it_then_closes() {
        let seen = within_watchdog(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("ws://{}/publish?token=t", listener.local_addr().unwrap());
            let server = relay_server(listener, 3);
            let phase = Phase {
                first_seq: 5,
                count: 3,
            };
            let (publisher, outcome) = publish_one_phase(relay_plan(&url, 200), phase);
            assert_eq!(
                outcome,
                Outcome::Published(Published {
                    phase,
                    cpu_ns: None
                })
            );
            drop(publisher);
            server.join().unwrap()
        });
        assert_eq!(seen.path, "/publish?token=t", "no channels query");
        assert_eq!(seen.close, Some(CloseCode::Normal));
        for (text, seq) in seen.texts.iter().zip(5u64..) {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(value["type"], "message");
            assert_eq!(value["channel"], "bench.relay");
            assert_eq!(value["offset"], seq + 1);
            assert_eq!(value["data"]["seq"], seq);
            let sent_us = value["data"]["t_us"].as_u64().unwrap();
            assert_eq!(value["ts_ms"], sent_us / 1_000);
            assert_eq!(value["data"].to_string().len(), 200);
            let delivery = Scanner::default().delivery(text.as_bytes()).unwrap();
            assert_eq!((delivery.seq, delivery.sent_us), (seq, sent_us));
        }
        assert_eq!(seen.texts.len(), 3);
    }

    #[test]
    fn a_refused_upgrade_fails_the_phase_quoting_the_status_line_and_url() {
        let (url, outcome) = within_watchdog(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("ws://{}/publish", listener.local_addr().unwrap());
            let server = std::thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                stream.set_read_timeout(Some(WATCHDOG)).unwrap();
                let mut request = Vec::new();
                let mut byte = [0; 1];
                while !request.ends_with(b"\r\n\r\n") {
                    stream.read_exact(&mut byte).unwrap();
                    request.push(byte[0]);
                }
                stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
            });
            let phase = Phase {
                first_seq: 0,
                count: 1,
            };
            let (_publisher, outcome) = publish_one_phase(relay_plan(&url, 64), phase);
            server.join().unwrap();
            (url, outcome)
        });
        assert_eq!(
            outcome,
            Outcome::Failed(format!(
                r#"publisher connection to {url}: upgrade refused: "HTTP/1.1 404 Not Found""#
            ))
        );
    }

    #[test]
    fn a_closed_port_fails_the_phase_naming_the_url() {
        let (url, outcome) = within_watchdog(|| {
            let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            // The listener is dropped: nothing listens on its port any more.
            let url = format!("ws://{addr}/publish");
            let phase = Phase {
                first_seq: 0,
                count: 1,
            };
            let (_publisher, outcome) = publish_one_phase(relay_plan(&url, 64), phase);
            (url, outcome)
        });
        let Outcome::Failed(message) = outcome else {
            panic!("a failure, not {outcome:?}")
        };
        // The rest is the operating system's wording, "Connection refused (os error 111)" on
        // Linux.
        let expected = format!("publisher connection to {url}: cannot connect: Connection refused");
        assert!(message.starts_with(&expected), "{message}");
    }

    #[test]
    fn masks_change_from_frame_to_frame() {
        let mut masks = Masks(1);
        let first = masks.next_mask();
        let second = masks.next_mask();
        assert_ne!(first, second);
        assert_ne!(masks.0, 0);
    }

    #[test]
    fn body_pads_data_to_the_payload_size() {
        let mut body = String::new();
        write_body(
            &mut body,
            r#""bench.fanout""#,
            7,
            1_700_000_000_000_000,
            100,
        );
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["channel"], "bench.fanout");
        assert_eq!(value["data"]["seq"], 7);
        assert_eq!(value["data"]["t_us"], 1_700_000_000_000_000u64);
        assert_eq!(value["data"].to_string().len(), 100);
    }

    #[test]
    fn body_with_a_tiny_payload_has_an_empty_pad() {
        let mut body = String::new();
        write_body(&mut body, r#""c""#, 1, 2, 0);
        assert_eq!(
            body,
            r#"{"channel":"c","data":{"seq":1,"t_us":2,"pad":""}}"#
        );
    }
}
