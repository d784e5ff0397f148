//! One subscriber connection: its socket, its protocol state machine and its pending output.
//!
//! Owns one subscriber's nonblocking TCP stream, read buffer, ordering state and the control
//! frame it is writing. A connection goes connect -> upgrade request written -> `101` read ->
//! `connected` greeting -> receiving -> closing, one step per readiness event from the receive
//! loop (`receiver`). The protocol half (`Session`) never touches the socket: bytes come in
//! through the read buffer and bytes to send go out through `output`, so every step is pinned
//! by byte-literal tests below; `Conn` only moves bytes between it and the socket. It never
//! allocates per message, never parses more of a delivery than `seq` and `t_us`, and sends
//! nothing but the upgrade request, the Pong a Ping asks for and a final Close. Over `wss://`
//! a rustls connection sits between the two: the session's output goes into it, its records
//! go to the socket, and what it decrypts goes into the read buffer, so that the session is
//! the same code on either transport and a run's TLS cost is rustls's alone.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::recorder::{ConnOrder, Recorder};
use crate::wire::{
    self, Scanner, UpgradeError, CLOSE_NORMAL_PAYLOAD, CONTROL_FRAME_BYTES_MAX,
    CONTROL_PAYLOAD_BYTES_MAX, OPCODE_CLOSE, OPCODE_PONG,
};
use corecast_proto::buffer::{FrameError, ReadBuffer};

/// Largest server frame the bench accepts, in bytes; a larger one fails the connection. The
/// bench's deliveries are under 1 KiB, so this only stops a runaway server.
const FRAME_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// How a `wss://` run's connections speak TLS.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry: the host of `--ws`.
    pub server_name: ServerName<'static>,
}

/// What every connection of a run reads and never changes.
pub struct Shared {
    /// The server's WebSocket address.
    pub addr: SocketAddr,
    /// `Some` for `wss://`.
    pub tls: Option<Tls>,
    /// The upgrade request, identical for every connection.
    pub request: Vec<u8>,
    pub scanner: Scanner,
    pub recorder: Recorder,
}

/// Why a subscriber connection ended early. Every variant ends that connection only; the
/// receive loop counts it and the run reports loss or a setup failure.
#[derive(Debug)]
pub enum ConnError {
    /// A socket call failed (connect refused, reset, out of file descriptors).
    Io(std::io::Error),
    /// The server did not upgrade the connection.
    Upgrade(UpgradeError),
    /// The upgrade response head did not fit the read buffer.
    UpgradeTooLong,
    /// The server sent bytes that are not acceptable frames.
    Frame(FrameError),
    /// The first text frame was not `{"type":"connected",...}`.
    NoGreeting,
    /// A Ping's payload was over the control-frame maximum.
    PingTooLong,
    /// The server sent a Close frame; carries its status code if any.
    Closed(Option<u16>),
    /// The server closed the TCP connection without a Close frame.
    Eof,
    /// TLS failed: during the handshake (an untrusted certificate, no protocol in common, a
    /// server that speaks no TLS), or after it (a bad record).
    Tls {
        addr: SocketAddr,
        handshaking: bool,
        error: rustls::Error,
    },
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(error) => write!(f, "{error}"),
            Self::Upgrade(error) => write!(f, "{error}"),
            Self::UpgradeTooLong => write!(
                f,
                "upgrade response head is over {} bytes",
                corecast_proto::buffer::READ_BUFFER_BYTES
            ),
            Self::Frame(error) => write!(f, "{error}"),
            Self::NoGreeting => f.write_str(r#"first text frame is not {"type":"connected"}"#),
            Self::PingTooLong => f.write_str("ping payload over 125 bytes"),
            Self::Closed(Some(code)) => write!(f, "server sent close {code}"),
            Self::Closed(None) => f.write_str("server sent close without a code"),
            Self::Eof => f.write_str("server closed the TCP connection"),
            Self::Tls {
                addr,
                handshaking: true,
                error,
            } => write!(f, "TLS handshake with {addr} failed: {error}"),
            Self::Tls {
                addr,
                handshaking: false,
                error,
            } => write!(f, "TLS with {addr}: {error}"),
        }
    }
}

impl From<std::io::Error> for ConnError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

impl From<FrameError> for ConnError {
    fn from(error: FrameError) -> Self {
        Self::Frame(error)
    }
}

/// Where a connection is in its life, in order: a later phase never goes back to an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The nonblocking TCP connect is in progress.
    Connecting,
    /// Connected: writing the upgrade request and reading the response head.
    Upgrading,
    /// Upgraded: waiting for the `connected` text frame.
    Greeting,
    /// Subscribed: every text frame is a delivery.
    Receiving,
    /// Close sent (or being sent): reading until the server's Close or end of stream.
    Closing,
}

/// How far a Close frame has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseState {
    NotQueued,
    /// To be written once the control frame being written is out.
    Queued,
    /// In the control frame buffer (partly or wholly written).
    Encoded,
}

/// What a batch of input did besides recording deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Nothing that ends the connection.
    Continue,
    /// The server answered the bench's Close: the connection is done.
    CloseAcknowledged,
}

/// One connection's protocol state, without the socket.
pub struct Session {
    phase: Phase,
    /// The masking key of every frame this connection sends.
    mask: [u8; 4],
    buffer: ReadBuffer,
    order: ConnOrder,
    /// Length of the upgrade request, and how much of it is written.
    request_bytes: usize,
    request_written: usize,
    /// The control frame being written: `control[control_written..control_bytes]` is unsent.
    control: [u8; CONTROL_FRAME_BYTES_MAX],
    control_bytes: usize,
    control_written: usize,
    /// Payload of the latest Ping not yet answered; RFC 6455 lets a client answer only the
    /// latest of several, so a newer Ping replaces it rather than queueing behind it.
    pong: [u8; CONTROL_PAYLOAD_BYTES_MAX],
    pong_bytes: Option<usize>,
    close: CloseState,
}

impl Session {
    /// A session for connection `id` that will send an upgrade request of `request_bytes`.
    pub fn new(id: usize, request_bytes: usize) -> Self {
        Self {
            phase: Phase::Connecting,
            mask: mask_for(id),
            buffer: ReadBuffer::default(),
            order: ConnOrder::default(),
            request_bytes,
            request_written: 0,
            control: [0; CONTROL_FRAME_BYTES_MAX],
            control_bytes: 0,
            control_written: 0,
            pong: [0; CONTROL_PAYLOAD_BYTES_MAX],
            pong_bytes: None,
            close: CloseState::NotQueued,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The TCP connect finished: the upgrade request is now the output.
    pub fn tcp_connected(&mut self) {
        assert_eq!(self.phase, Phase::Connecting);
        self.phase = Phase::Upgrading;
    }

    /// Room to read into (see `ReadBuffer::spare`).
    pub fn spare(&mut self) -> &mut [u8] {
        self.buffer.spare()
    }

    /// Marks `length` bytes of `spare()` as read.
    pub fn commit(&mut self, length: usize) {
        self.buffer.commit(length);
    }

    /// Consumes every whole unit of input in the buffer: the response head while upgrading,
    /// then frames. Deliveries go to `recorder`, stamped with `receive_us` (microseconds since
    /// the UNIX epoch); a Ping leaves a Pong to write.
    pub fn take_input(
        &mut self,
        scanner: &Scanner,
        recorder: &Recorder,
        receive_us: u64,
    ) -> Result<Input, ConnError> {
        assert!(self.phase > Phase::Connecting, "no input before connect");
        if self.phase == Phase::Upgrading {
            match wire::parse_upgrade_response(self.buffer.unread()).map_err(ConnError::Upgrade)? {
                Some(head_bytes) => {
                    self.buffer.consume(head_bytes);
                    self.phase = Phase::Greeting;
                }
                None if self.buffer.is_full() => return Err(ConnError::UpgradeTooLong),
                None => return Ok(Input::Continue),
            }
        }
        while let Some(frame) = self.buffer.next_frame(FRAME_BYTES_MAX)? {
            let payload = self.buffer.payload(&frame);
            match frame.opcode {
                OpCode::Data(Data::Text) => match self.phase {
                    Phase::Receiving => match scanner.delivery(payload) {
                        Some(delivery) => recorder.record(delivery, receive_us, &mut self.order),
                        None => recorder.record_foreign(),
                    },
                    Phase::Greeting => {
                        if !scanner.is_connected(payload) {
                            return Err(ConnError::NoGreeting);
                        }
                        self.phase = Phase::Receiving;
                    }
                    // Deliveries after the bench's Close are not part of the run.
                    _ => {}
                },
                OpCode::Control(Control::Ping) => {
                    if payload.len() > CONTROL_PAYLOAD_BYTES_MAX {
                        return Err(ConnError::PingTooLong);
                    }
                    if self.close == CloseState::NotQueued {
                        self.pong[..payload.len()].copy_from_slice(payload);
                        self.pong_bytes = Some(payload.len());
                    }
                }
                OpCode::Control(Control::Close) => {
                    if self.phase == Phase::Closing {
                        return Ok(Input::CloseAcknowledged);
                    }
                    let code = payload
                        .get(..2)
                        .map(|code| u16::from_be_bytes([code[0], code[1]]));
                    return Err(ConnError::Closed(code));
                }
                // Pongs answer nothing the bench sent, and binary frames carry nothing the
                // bench measures: both are skipped.
                _ => {}
            }
        }
        Ok(Input::Continue)
    }

    /// Sends Close 1000 after any control frame being written, and stops answering Pings.
    /// Only a subscribed connection closes this way; the caller drops the others.
    pub fn start_close(&mut self) {
        assert_eq!(self.phase, Phase::Receiving);
        self.phase = Phase::Closing;
        self.close = CloseState::Queued;
        self.pong_bytes = None;
    }

    /// The bytes to write next, empty when there are none: the rest of the upgrade request,
    /// then the rest of the control frame being written, then the pending Pong, then Close.
    pub fn output<'a>(&'a mut self, request: &'a [u8]) -> &'a [u8] {
        assert_eq!(request.len(), self.request_bytes);
        if self.phase == Phase::Connecting {
            return &[];
        }
        if self.request_written < self.request_bytes {
            return &request[self.request_written..];
        }
        if self.control_written == self.control_bytes {
            let (opcode, payload) = if let Some(length) = self.pong_bytes.take() {
                (OPCODE_PONG, &self.pong[..length])
            } else if self.close == CloseState::Queued {
                self.close = CloseState::Encoded;
                (OPCODE_CLOSE, &CLOSE_NORMAL_PAYLOAD[..])
            } else {
                return &[];
            };
            self.control_bytes =
                wire::encode_control_frame(opcode, payload, self.mask, &mut self.control);
            self.control_written = 0;
        }
        &self.control[self.control_written..self.control_bytes]
    }

    /// Marks `length` bytes of the latest `output` as written.
    pub fn wrote(&mut self, length: usize) {
        if self.request_written < self.request_bytes {
            assert!(self.request_written + length <= self.request_bytes);
            self.request_written += length;
        } else {
            assert!(self.control_written + length <= self.control_bytes);
            self.control_written += length;
        }
    }
}

/// What one readiness event did to a connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The read bound was reached before the socket was drained: read it again soon, since an
    /// edge-triggered poll will not report it again until more bytes arrive.
    pub unread: bool,
    /// The close exchange is over: drop the connection.
    pub finished: bool,
}

/// One subscriber: its socket and its session.
pub struct Conn {
    /// The subscriber's number, `0..subscribers`, for messages and the masking key.
    pub id: usize,
    pub stream: TcpStream,
    session: Session,
    /// The TLS state of a `wss://` connection; `None` for `ws://`.
    tls: Option<Box<ClientConnection>>,
    /// Whether the receive loop holds this connection in its list of sockets left unread.
    pub queued: bool,
    /// Whether a readiness event said the peer has shut down its side: then a short read no
    /// longer means drained, since the end of stream raises no further edge.
    read_closed: bool,
}

impl Conn {
    /// Starts a nonblocking connect for subscriber `id`; the caller registers the stream.
    pub fn open(id: usize, shared: &Shared) -> std::io::Result<Self> {
        let tls = match &shared.tls {
            Some(tls) => Some(Box::new(
                ClientConnection::new(tls.config.clone(), tls.server_name.clone())
                    .map_err(std::io::Error::other)?,
            )),
            None => None,
        };
        Ok(Self {
            id,
            stream: TcpStream::connect(shared.addr)?,
            session: Session::new(id, shared.request.len()),
            tls,
            queued: false,
            read_closed: false,
        })
    }

    pub fn phase(&self) -> Phase {
        self.session.phase()
    }

    /// Handles a readiness event (or a revisit of an unread socket): finishes the connect,
    /// writes what is pending, and reads at most `reads_max` times, handing every whole frame
    /// to the session with the batch's `receive_us`. `read_closed` is the event's word that the
    /// peer has shut down its side (false on a revisit).
    pub fn on_ready(
        &mut self,
        shared: &Shared,
        receive_us: u64,
        reads_max: usize,
        read_closed: bool,
    ) -> Result<Progress, ConnError> {
        self.read_closed |= read_closed;
        if self.session.phase() == Phase::Connecting && !self.finish_connect()? {
            return Ok(Progress::default());
        }
        self.flush(shared)?;
        let progress = self.read(shared, receive_us, reads_max)?;
        if !progress.finished {
            self.flush(shared)?;
        }
        Ok(progress)
    }

    /// Starts the close, at the end of the run or to answer the server's Close so that neither
    /// side sees a reset. Returns whether the connection should be kept to finish the exchange:
    /// a subscribed connection sends Close 1000 and waits for the server's Close or end of
    /// stream; one still connecting, or whose socket failed, is dropped.
    pub fn close(&mut self, shared: &Shared) -> bool {
        match self.session.phase() {
            Phase::Receiving => {
                self.session.start_close();
                self.flush(shared).is_ok()
            }
            Phase::Closing => true,
            _ => false,
        }
    }

    /// Whether the nonblocking connect has finished, as mio's `TcpStream::connect` describes:
    /// a pending socket error means it failed, and `peer_addr` fails until it is done.
    fn finish_connect(&mut self) -> Result<bool, ConnError> {
        if let Some(error) = self.stream.take_error()? {
            return Err(ConnError::Io(error));
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.stream.set_nodelay(true)?;
                self.session.tcp_connected();
                Ok(true)
            }
            // Linux's `getpeername` says ENOTCONN while the handshake is in flight (mio's other
            // case, EINPROGRESS, is for other systems).
            Err(error) if error.kind() == ErrorKind::NotConnected => Ok(false),
            Err(error) => Err(ConnError::Io(error)),
        }
    }

    /// Writes pending output until it is all out or the socket buffer is full; the rest goes
    /// out on the next writable event, so nothing is ever dropped. Over TLS the session's
    /// output goes into rustls whole, and its records go out the same way.
    fn flush(&mut self, shared: &Shared) -> Result<(), ConnError> {
        let Some(tls) = self.tls.as_mut() else {
            return write_until_blocked(&mut self.stream, &mut self.session, &shared.request);
        };
        if self.session.phase() == Phase::Connecting {
            return Ok(());
        }
        loop {
            let output = self.session.output(&shared.request);
            if output.is_empty() {
                break;
            }
            let length = output.len();
            tls.writer().write_all(output)?;
            self.session.wrote(length);
        }
        flush_tls(tls, &mut self.stream)
    }

    /// Reads until the socket is drained or `reads_max` reads were made. A read shorter than
    /// the room offered counts as drained: TCP's `recvmsg` stops short only when the receive
    /// queue is empty or at the peer's FIN, and a segment arriving after that raises a new
    /// edge (tokio clears readiness the same way), which saves the one `EAGAIN` read per
    /// wake-up. Once the peer has shut down (`read_closed`), reads go on to the end of stream.
    fn read(
        &mut self,
        shared: &Shared,
        receive_us: u64,
        reads_max: usize,
    ) -> Result<Progress, ConnError> {
        if self.tls.is_some() {
            return self.read_tls(shared, receive_us, reads_max);
        }
        for _ in 0..reads_max {
            let spare = self.session.spare();
            let room = spare.len();
            let read = match self.stream.read(spare) {
                Ok(0) if self.session.phase() == Phase::Closing => {
                    return Ok(Progress {
                        unread: false,
                        finished: true,
                    });
                }
                Ok(0) => return Err(ConnError::Eof),
                Ok(read) => read,
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    return Ok(Progress::default());
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.into()),
            };
            self.session.commit(read);
            let input = self
                .session
                .take_input(&shared.scanner, &shared.recorder, receive_us)?;
            if input == Input::CloseAcknowledged {
                return Ok(Progress {
                    unread: false,
                    finished: true,
                });
            }
            if read < room && !self.read_closed {
                return Ok(Progress::default());
            }
        }
        Ok(Progress {
            unread: true,
            finished: false,
        })
    }
}

impl Conn {
    /// `read` over TLS: takes what rustls has decrypted, and reads the socket only when that is
    /// exhausted. A short read proves nothing here (a read may end at a record's edge with
    /// more queued behind it), so only `WouldBlock` counts as drained; `reads_max` bounds the
    /// socket reads.
    fn read_tls(
        &mut self,
        shared: &Shared,
        receive_us: u64,
        reads_max: usize,
    ) -> Result<Progress, ConnError> {
        let tls = self.tls.as_mut().expect("a TLS connection");
        let mut reads = 0;
        loop {
            let read = match tls.reader().read(self.session.spare()) {
                Ok(read) => read,
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    if reads == reads_max {
                        return Ok(Progress {
                            unread: true,
                            finished: false,
                        });
                    }
                    reads += 1;
                    match tls.read_tls(&mut self.stream) {
                        Ok(0) => 0,
                        Ok(_) => {
                            let handshaking = tls.is_handshaking();
                            tls.process_new_packets().map_err(|error| ConnError::Tls {
                                addr: shared.addr,
                                handshaking,
                                error,
                            })?;
                            flush_tls(tls, &mut self.stream)?;
                            continue;
                        }
                        Err(error) if error.kind() == ErrorKind::WouldBlock => {
                            return Ok(Progress::default());
                        }
                        Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                        Err(error) => return Err(error.into()),
                    }
                }
                // The end of the stream without TLS's close_notify first.
                Err(error) if error.kind() == ErrorKind::UnexpectedEof => 0,
                Err(error) => return Err(error.into()),
            };
            if read == 0 {
                return if self.session.phase() == Phase::Closing {
                    Ok(Progress {
                        unread: false,
                        finished: true,
                    })
                } else {
                    Err(ConnError::Eof)
                };
            }
            self.session.commit(read);
            let input = self
                .session
                .take_input(&shared.scanner, &shared.recorder, receive_us)?;
            if input == Input::CloseAcknowledged {
                return Ok(Progress {
                    unread: false,
                    finished: true,
                });
            }
        }
    }
}

/// Writes `session`'s output to a plain `stream` until it is all out or the socket buffer is
/// full.
fn write_until_blocked(
    stream: &mut TcpStream,
    session: &mut Session,
    request: &[u8],
) -> Result<(), ConnError> {
    loop {
        let output = session.output(request);
        if output.is_empty() {
            return Ok(());
        }
        match stream.write(output) {
            Ok(0) => return Err(ConnError::Io(ErrorKind::WriteZero.into())),
            Ok(written) => session.wrote(written),
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// Writes rustls's pending records until none is left or the socket buffer is full (the rest
/// goes out on the next writable event).
fn flush_tls(tls: &mut ClientConnection, stream: &mut TcpStream) -> Result<(), ConnError> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// The masking key of connection `id`. RFC 6455 wants it unpredictable to defeat proxy cache
/// poisoning; the bench talks to its server directly, so a key derived from the id will do.
pub fn mask_for(id: usize) -> [u8; 4] {
    let id = u32::try_from(id).unwrap_or(u32::MAX);
    id.wrapping_mul(0x9E37_79B9).wrapping_add(1).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[u8] = b"GET /ws?channels=c HTTP/1.1\r\n\r\n";
    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
    const GREETING: &[u8] = br#"{"type":"connected","conn_id":"a","shard":0}"#;

    fn text_frame(payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut frame = vec![0x81, payload.len() as u8];
        frame.extend_from_slice(payload);
        frame
    }

    fn delivery_frame(seq: u64, sent_us: u64) -> Vec<u8> {
        let text = format!(
            r#"{{"type":"message","channel":"c","data":{{"seq":{seq},"t_us":{sent_us}}}}}"#
        );
        text_frame(text.as_bytes())
    }

    /// A session past its TCP connect with the request written.
    fn upgrading() -> Session {
        let mut session = Session::new(0, REQUEST.len());
        session.tcp_connected();
        let length = session.output(REQUEST).len();
        session.wrote(length);
        session
    }

    /// Feeds `bytes` as one read and takes the input.
    fn feed(
        session: &mut Session,
        recorder: &Recorder,
        bytes: &[u8],
        receive_us: u64,
    ) -> Result<Input, ConnError> {
        session.spare()[..bytes.len()].copy_from_slice(bytes);
        session.commit(bytes.len());
        session.take_input(&Scanner::default(), recorder, receive_us)
    }

    #[test]
    fn the_request_is_written_after_connect_and_across_partial_writes() {
        let mut session = Session::new(0, REQUEST.len());
        assert!(session.output(REQUEST).is_empty(), "nothing before connect");
        session.tcp_connected();
        assert_eq!(session.output(REQUEST), REQUEST);
        session.wrote(5);
        assert_eq!(session.output(REQUEST), &REQUEST[5..]);
        session.wrote(REQUEST.len() - 5);
        assert!(session.output(REQUEST).is_empty());
    }

    #[test]
    fn upgrade_and_greeting_split_at_every_byte_reach_receiving() {
        let mut stream = HEAD.to_vec();
        stream.extend(text_frame(GREETING));
        stream.extend(delivery_frame(0, 100));
        for split in 1..stream.len() {
            let recorder = Recorder::new(1, 0, 1);
            let mut session = upgrading();
            feed(&mut session, &recorder, &stream[..split], 150).unwrap();
            let expected = if split < HEAD.len() {
                Phase::Upgrading
            } else if split < HEAD.len() + 2 + GREETING.len() {
                Phase::Greeting
            } else {
                Phase::Receiving
            };
            assert_eq!(session.phase(), expected, "split at {split}");
            feed(&mut session, &recorder, &stream[split..], 150).unwrap();
            assert_eq!(session.phase(), Phase::Receiving, "split at {split}");
            assert!(recorder.measured_complete(), "split at {split}");
            assert_eq!(recorder.summary().latency_us_max, 50);
        }
    }

    #[test]
    fn a_refused_upgrade_or_a_missing_greeting_fails_the_connection() {
        let recorder = Recorder::new(1, 0, 1);
        let mut session = upgrading();
        let refused = feed(
            &mut session,
            &recorder,
            b"HTTP/1.1 403 Forbidden\r\n\r\n",
            0,
        );
        assert!(matches!(
            refused,
            Err(ConnError::Upgrade(UpgradeError::Refused(status))) if status == "HTTP/1.1 403 Forbidden"
        ));
        let mut session = upgrading();
        let mut stream = HEAD.to_vec();
        stream.extend(delivery_frame(0, 0));
        assert!(matches!(
            feed(&mut session, &recorder, &stream, 0),
            Err(ConnError::NoGreeting)
        ));
        let mut session = upgrading();
        let endless = vec![b'x'; corecast_proto::buffer::READ_BUFFER_BYTES];
        assert!(matches!(
            feed(&mut session, &recorder, &endless, 0),
            Err(ConnError::UpgradeTooLong)
        ));
    }

    #[test]
    fn a_ping_is_answered_with_a_masked_pong_of_the_latest_payload() {
        let recorder = Recorder::new(1, 0, 1);
        let mut session = upgrading();
        let mut stream = HEAD.to_vec();
        stream.extend(text_frame(GREETING));
        stream.extend([0x89, 0x01, b'a', 0x89, 0x02, b'b', b'c']);
        feed(&mut session, &recorder, &stream, 0).unwrap();
        let mask = mask_for(0);
        let pong = [
            0x8A,
            0x82,
            mask[0],
            mask[1],
            mask[2],
            mask[3],
            b'b' ^ mask[0],
            b'c' ^ mask[1],
        ];
        assert_eq!(session.output(REQUEST), pong);
        session.wrote(3);
        // A Ping arriving while a Pong is half written waits for it to finish.
        feed(&mut session, &recorder, &[0x89, 0x00], 0).unwrap();
        assert_eq!(session.output(REQUEST), &pong[3..]);
        session.wrote(pong.len() - 3);
        assert_eq!(
            session.output(REQUEST),
            [0x8A, 0x80, mask[0], mask[1], mask[2], mask[3]]
        );
        session.wrote(6);
        assert!(session.output(REQUEST).is_empty());
    }

    #[test]
    fn close_is_sent_once_and_ends_at_the_servers_close() {
        let recorder = Recorder::new(1, 0, 1);
        let mut session = upgrading();
        let mut stream = HEAD.to_vec();
        stream.extend(text_frame(GREETING));
        feed(&mut session, &recorder, &stream, 0).unwrap();
        session.start_close();
        let mask = mask_for(0);
        let close = [
            0x88,
            0x82,
            mask[0],
            mask[1],
            mask[2],
            mask[3],
            0x03 ^ mask[0],
            0xE8 ^ mask[1],
        ];
        assert_eq!(session.output(REQUEST), close);
        session.wrote(close.len());
        assert!(session.output(REQUEST).is_empty());
        // Pings and deliveries after the bench's Close are neither answered nor recorded.
        let mut late = vec![0x89, 0x00];
        late.extend(delivery_frame(0, 0));
        assert_eq!(
            feed(&mut session, &recorder, &late, 0).unwrap(),
            Input::Continue
        );
        assert!(session.output(REQUEST).is_empty());
        assert_eq!(recorder.frames(), 0);
        let answer = [0x88, 0x02, 0x03, 0xE8];
        assert_eq!(
            feed(&mut session, &recorder, &answer, 0).unwrap(),
            Input::CloseAcknowledged
        );
    }

    #[test]
    fn a_server_close_carries_its_code() {
        let recorder = Recorder::new(1, 0, 1);
        let mut session = upgrading();
        let mut stream = HEAD.to_vec();
        stream.extend(text_frame(GREETING));
        stream.extend([0x88, 0x02, 0x03, 0xF1]);
        assert!(matches!(
            feed(&mut session, &recorder, &stream, 0),
            Err(ConnError::Closed(Some(1009)))
        ));
        assert_eq!(session.phase(), Phase::Receiving);
    }
}
