//! The client's background thread: one connection at a time, its reading, its ping timer, and
//! the reconnect schedule between connections.
//!
//! Owns the socket's read half, the read buffer and the ping in flight. It reads with a timeout
//! so that the ping timer runs without a second thread, answers the server's WebSocket Pings
//! (the server's idle timeout needs traffic), keeps the subscriptions' positions up to date
//! under the shared lock, and hands events to the application through the bounded channel.
//! It never holds the shared lock while it waits (on the socket or on the application), and
//! it never drops an event: when the application stops taking them, this thread waits, stops
//! reading, and the server's slow-consumer policy decides (the spec's recovery then refills
//! what was missed after the reconnect).

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::backoff::Backoff;
use crate::buffer::{self, ReadBuffer};
use crate::event::{parse_frame, Event, Frame};
use crate::link::Link;
use crate::track::{Cursor, Reply};
use crate::wire::{self, UpgradeError, CONTROL_PAYLOAD_BYTES_MAX, OPCODE_CLOSE, OPCODE_PONG};
use crate::{Shared, Writer};
use corecast_proto::channel::USER_CHANNEL;
use corecast_proto::close;

/// Longest wait on one socket read while connected: the ping timer and a stop request are
/// looked at least this often. Shorter reacts faster, longer wakes an idle client less.
const READ_WAIT_MS_MAX: u64 = 250;

/// Shortest wait on one socket read, so a tiny `ping_interval_ms` does not spin.
const READ_WAIT_MS_MIN: u64 = 5;

/// Why a connection attempt failed before `connected`. The session reports it in
/// [`Event::Disconnected`] and tries again after the backoff delay; only the first attempt's
/// failure reaches the caller, from [`Client::connect`](crate::Client::connect).
#[derive(Debug)]
pub enum ConnectError {
    /// Name resolution, connect or a read or write of the upgrade failed.
    Io(std::io::Error),
    /// Nothing within `connect_timeout_ms` (TCP connect, upgrade and greeting together).
    Timeout,
    /// The server did not upgrade (see [`UpgradeError`]).
    Upgrade(UpgradeError),
    /// The upgrade response head is longer than the read buffer.
    UpgradeTooLong,
    /// The bytes after the upgrade are not acceptable frames.
    Frame(buffer::FrameError),
    /// The first frame was not `{"type":"connected",...}`; carries what was wrong.
    NoGreeting(String),
    /// The TLS handshake of a `wss://` connection failed (an untrusted or mismatched
    /// certificate, no protocol in common, a server that speaks no TLS); carries the address
    /// and rustls's reason.
    Tls { authority: String, reason: String },
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(err) => write!(f, "{err}"),
            Self::Timeout => f.write_str("no connected frame within connect_timeout_ms"),
            Self::Upgrade(err) => write!(f, "{err}"),
            Self::UpgradeTooLong => write!(
                f,
                "upgrade response head is over {} bytes",
                buffer::READ_BUFFER_BYTES
            ),
            Self::Frame(err) => write!(f, "{err}"),
            Self::NoGreeting(why) => write!(f, "no connected frame first: {why}"),
            Self::Tls { authority, reason } => {
                write!(f, "TLS handshake with {authority} failed: {reason}")
            }
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<std::io::Error> for ConnectError {
    fn from(err: std::io::Error) -> Self {
        match err.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Self::Timeout,
            _ => Self::Io(err),
        }
    }
}

/// A connection that has read its `connected` frame.
pub struct Connection {
    link: Link,
    /// Holds whatever followed the greeting in the same reads.
    buffer: ReadBuffer,
    conn_id: String,
    user: Option<String>,
    epoch: Option<String>,
}

impl Connection {
    /// Connects, upgrades and reads the greeting, all within `connect_timeout_ms`.
    pub fn open(shared: &Shared) -> Result<Connection, ConnectError> {
        let config = &shared.config;
        let deadline = Instant::now() + Duration::from_millis(config.connect_timeout_ms);
        let remaining = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
                .ok_or(ConnectError::Timeout)
        };
        let mut last_err = None;
        let mut connected = None;
        for addr in shared.target.authority.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, remaining()?) {
                Ok(stream) => {
                    connected = Some(stream);
                    break;
                }
                Err(err) => last_err = Some(err),
            }
        }
        let stream = match (connected, last_err) {
            (Some(stream), _) => stream,
            (None, Some(err)) => return Err(err.into()),
            (None, None) => {
                return Err(ConnectError::Io(std::io::Error::new(
                    ErrorKind::NotFound,
                    format!("{} resolves to no address", shared.target.authority),
                )))
            }
        };
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_millis(config.write_timeout_ms)))?;
        let mut link = match &shared.tls {
            None => Link::plain(stream),
            Some((tls, server_name)) => {
                stream.set_read_timeout(Some(remaining()?))?;
                Link::tls(stream, tls.clone(), server_name.clone()).map_err(|err| {
                    match ConnectError::from(err) {
                        ConnectError::Io(err) => ConnectError::Tls {
                            authority: shared.target.authority.clone(),
                            reason: err.to_string(),
                        },
                        other => other,
                    }
                })?
            }
        };
        let key = generate_key();
        link.write_all(&wire::request_head(
            &shared.target.path,
            &shared.target.authority,
            &key,
            config.token.as_deref(),
        ))?;

        let mut buffer = ReadBuffer::default();
        loop {
            match wire::parse_upgrade_response(buffer.unread()).map_err(ConnectError::Upgrade)? {
                Some(head_bytes) => {
                    let accept = derive_accept_key(key.as_bytes());
                    if !wire::accept_matches(&buffer.unread()[..head_bytes], &accept) {
                        return Err(ConnectError::Upgrade(UpgradeError::BadAccept));
                    }
                    buffer.consume(head_bytes);
                    break;
                }
                None if buffer.is_full() => return Err(ConnectError::UpgradeTooLong),
                None => read_some(&mut link, &mut buffer, remaining()?)?,
            }
        }
        loop {
            let next = buffer
                .next_frame(config.frame_bytes_max)
                .map_err(ConnectError::Frame)?;
            let Some(frame) = next else {
                read_some(&mut link, &mut buffer, remaining()?)?;
                continue;
            };
            if frame.opcode != OpCode::Data(Data::Text) {
                return Err(ConnectError::NoGreeting(format!(
                    "a {} frame",
                    frame.opcode
                )));
            }
            return match parse_frame(buffer.payload(&frame)) {
                Ok(Frame::Connected {
                    conn_id,
                    user,
                    epoch,
                }) => Ok(Connection {
                    link,
                    buffer,
                    conn_id,
                    user,
                    epoch,
                }),
                Ok(other) => Err(ConnectError::NoGreeting(format!("{other:?}"))),
                Err(err) => Err(ConnectError::NoGreeting(err.to_string())),
            };
        }
    }
}

/// Reads once into `buffer`, waiting at most `wait`; end of stream is an error.
fn read_some(link: &mut Link, buffer: &mut ReadBuffer, wait: Duration) -> Result<(), ConnectError> {
    link.set_read_timeout(Some(wait))?;
    let read = link.read(buffer.spare())?;
    if read == 0 {
        return Err(ConnectError::Io(ErrorKind::UnexpectedEof.into()));
    }
    buffer.commit(read);
    Ok(())
}

/// The thread's body: serve `first`, then reconnect until the client is dropped.
pub fn run(shared: Arc<Shared>, events: SyncSender<Event>, first: Connection) {
    let config = &shared.config;
    let mut backoff = Backoff::new(
        config.backoff_base_ms,
        config.backoff_cap_ms,
        fastrand::Rng::new(),
    );
    let mut next = Some(first);
    let mut reconnects = 0;
    loop {
        let attempt = match next.take() {
            Some(connection) => Ok(connection),
            None => Connection::open(&shared),
        };
        let reason = match attempt {
            Ok(connection) => {
                backoff.reset();
                let ended = serve(&shared, &events, connection, reconnects);
                reconnects += 1;
                match ended {
                    Ended::Lost(reason) => reason,
                    Ended::Closed { code, reason } => {
                        // The last event: dropping `events` afterwards tells next_event.
                        let _ = events.send(Event::Closed { code, reason });
                        return;
                    }
                    Ended::Stopped => return,
                }
            }
            Err(err) => format!("connect to {}: {err}", shared.target),
        };
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let retry_in = backoff.next_delay();
        if events
            .send(Event::Disconnected { reason, retry_in })
            .is_err()
        {
            return;
        }
        let until = Instant::now() + retry_in;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if shared.stopped.load(Ordering::Acquire) {
                return;
            }
            // `Client`'s drop unparks this thread, so a stop does not wait out the delay.
            std::thread::park_timeout(left);
        }
    }
}

/// How a connection ended.
enum Ended {
    /// Lost (closed, reset, silent); carries why. The session reconnects.
    Lost(String),
    /// Closed by the server for good (4010, see `reconnect_after_disconnect`). The session
    /// reports it and ends.
    Closed { code: u16, reason: String },
    /// The application dropped the client. The session ends.
    Stopped,
}

/// The ping in flight on a connection.
struct PingInFlight {
    id: u64,
    sent: Instant,
}

/// Reads one connection until it ends.
fn serve(
    shared: &Shared,
    events: &SyncSender<Event>,
    connection: Connection,
    reconnects: u64,
) -> Ended {
    let Connection {
        mut link,
        mut buffer,
        conn_id,
        user,
        epoch,
    } = connection;
    let config = &shared.config;
    let interval = Duration::from_millis(config.ping_interval_ms);
    let read_wait = Duration::from_millis(
        (config.ping_interval_ms / 4).clamp(READ_WAIT_MS_MIN, READ_WAIT_MS_MAX),
    );
    if let Err(err) = link.set_read_timeout(Some(read_wait)) {
        return Ended::Lost(format!("socket: {err}"));
    }
    let writer = match link.try_clone() {
        Ok(clone) => Writer::new(clone),
        Err(err) => return Ended::Lost(format!("socket: {err}")),
    };
    {
        let mut state = shared.lock();
        if shared.stopped.load(Ordering::Acquire) {
            return Ended::Stopped;
        }
        state.epoch.clone_from(&epoch);
        state.user.clone_from(&user);
        state.writer = Some(writer);
        let next_id = || shared.next_id.fetch_add(1, Ordering::Relaxed);
        if user.is_some() && !state.user_stream_off {
            // Subscribed by the server; tracked so that the next connection resumes it. Its
            // first `subscribe` (no position yet) only learns where the stream starts.
            state.subscriptions.add(USER_CHANNEL, Cursor::default());
        }
        let mut commands = state.subscriptions.resubscribe_commands(next_id);
        if user.is_some() && state.user_stream_off {
            let id = next_id();
            commands.push(
                serde_json::json!({"type": "unsubscribe", "channel": USER_CHANNEL, "id": id})
                    .to_string(),
            );
        }
        for command in commands {
            // A failed write shuts the socket down: the read below sees it and reconnects.
            if state.send_text(&command).is_err() {
                break;
            }
        }
    }
    let connected = Event::Connected {
        conn_id,
        user,
        epoch: epoch.clone(),
        reconnects,
    };
    if events.send(connected).is_err() {
        return Ended::Stopped;
    }

    let mut next_ping = Instant::now() + interval;
    let mut in_flight: Option<PingInFlight> = None;
    let ended = loop {
        if shared.stopped.load(Ordering::Acquire) {
            break Ended::Stopped;
        }
        // Whole frames first: the greeting's reads may have brought more.
        loop {
            let frame = match buffer.next_frame(config.frame_bytes_max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(err) => return lose(shared, format!("{err}")),
            };
            let payload = buffer.payload(&frame);
            match frame.opcode {
                OpCode::Data(Data::Text) => {
                    let event = match parse_frame(payload) {
                        Ok(Frame::Event(event)) => event,
                        Ok(Frame::Pong { id }) => {
                            if let Some(ping) = in_flight.take_if(|ping| Some(ping.id) == id) {
                                shared.record_latency(ping.sent.elapsed());
                            }
                            continue;
                        }
                        Ok(Frame::Connected { .. } | Frame::Unknown) => continue,
                        Err(err) => Event::Error {
                            id: None,
                            code: "bad_frame".to_string(),
                            message: err.to_string(),
                        },
                    };
                    track(shared, epoch.as_deref(), &event);
                    if events.send(event).is_err() {
                        break;
                    }
                }
                OpCode::Control(Control::Ping) => {
                    if payload.len() > CONTROL_PAYLOAD_BYTES_MAX {
                        return lose(shared, "server ping over 125 bytes".to_string());
                    }
                    // A failed write shuts the socket down; the next read reports it.
                    let _ = shared.lock().send_control(OPCODE_PONG, payload);
                }
                OpCode::Control(Control::Close) => {
                    let close = describe_close(payload);
                    let echo = payload.get(..2).unwrap_or_default();
                    let _ = shared.lock().send_control(OPCODE_CLOSE, echo);
                    let ended = lose(shared, format!("server closed the connection: {close}"));
                    return match (ended, close_code(payload)) {
                        (Ended::Lost(_), Some(code))
                            if code == close::USER_DISCONNECTED
                                && !config.reconnect_after_disconnect =>
                        {
                            let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
                            Ended::Closed { code, reason }
                        }
                        (ended, _) => ended,
                    };
                }
                // Pongs answer no WebSocket Ping of ours; binary frames are not in the contract.
                _ => {}
            }
        }
        if shared.stopped.load(Ordering::Acquire) {
            break Ended::Stopped;
        }

        let now = Instant::now();
        if now >= next_ping {
            match &in_flight {
                Some(ping) if now.duration_since(ping.sent) >= 2 * interval => {
                    break Ended::Lost(format!(
                        "no pong within 2 ping intervals ({} ms)",
                        2 * config.ping_interval_ms
                    ));
                }
                Some(_) => {}
                None => {
                    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                    let ping = format!(r#"{{"type":"ping","id":{id}}}"#);
                    if shared.lock().send_text(&ping).is_ok() {
                        in_flight = Some(PingInFlight { id, sent: now });
                    }
                }
            }
            next_ping = now + interval;
        }

        match link.read(buffer.spare()) {
            Ok(0) => break Ended::Lost("server closed the TCP connection".to_string()),
            Ok(read) => buffer.commit(read),
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(err) => break Ended::Lost(format!("read: {err}")),
        }
    };
    match ended {
        Ended::Lost(reason) => lose(shared, reason),
        closed @ Ended::Closed { .. } => closed,
        Ended::Stopped => Ended::Stopped,
    }
}

/// Forgets the connection's writer and returns why it was lost (or that the client stopped).
fn lose(shared: &Shared, reason: String) -> Ended {
    let mut state = shared.lock();
    if let Some(writer) = state.writer.take() {
        // The read half is the same socket: dropping both closes it.
        let _ = writer.link.shutdown();
    }
    if shared.stopped.load(Ordering::Acquire) {
        Ended::Stopped
    } else {
        Ended::Lost(reason)
    }
}

/// Moves the subscriptions' positions for a delivery or a `subscribed` reply, and takes in the
/// subscriptions the server makes or ends for the connection's user.
fn track(shared: &Shared, epoch: Option<&str>, event: &Event) {
    match event {
        Event::Message(message) => shared.lock().subscriptions.on_message(
            epoch,
            &message.channel,
            message.offset,
            message.seq,
        ),
        Event::Subscribed {
            pattern,
            server,
            epoch: reply_epoch,
            seq,
            recovered,
            ..
        } => {
            let mut state = shared.lock();
            let reply_epoch = reply_epoch.as_deref().or(epoch);
            if *server {
                // Resumed from its reply's position on the next connection, like the
                // application's own; a repeat keeps the position it has.
                let start = Cursor {
                    epoch: reply_epoch.map(str::to_string),
                    seq: *seq,
                    offset: None,
                };
                state.subscriptions.add(pattern, start);
            }
            state.subscriptions.on_subscribed(Reply {
                pattern,
                epoch: reply_epoch,
                seq: *seq,
                recovered: *recovered,
            });
        }
        Event::Unsubscribed {
            pattern,
            server: true,
        } => {
            shared.lock().subscriptions.remove(pattern);
        }
        _ => {}
    }
}

/// The status code of a Close payload; `None` for an empty one.
fn close_code(payload: &[u8]) -> Option<u16> {
    match payload {
        [high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
        _ => None,
    }
}

/// `1001 going away`, or `no status` for an empty Close.
fn describe_close(payload: &[u8]) -> String {
    match payload {
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let reason = String::from_utf8_lossy(reason);
            format!("{code} {reason}").trim_end().to_string()
        }
        _ => "no status".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_payloads_are_described_by_code_and_reason() {
        assert_eq!(describe_close(&[0x03, 0xE9, b'b', b'y', b'e']), "1001 bye");
        assert_eq!(describe_close(&[0x0F, 0xA8]), "4008");
        assert_eq!(describe_close(&[]), "no status");
    }
}
