//! One subscriber connection: connect, upgrade, wait for `connected`, then receive deliveries
//! until told to stop, and close.
//!
//! Owns the socket of one subscriber and the task that drives it; the state every subscriber
//! shares (`Shared`) is single-threaded and lives on the bench's one executor. The receive loop
//! reads into the connection's reused buffer, takes the clock once per read, and hands each
//! delivery's `seq` and `t_us` to the recorder: it never allocates per message and never parses
//! more than those two fields. It sends nothing but the Pong a Ping asks for and a final Close.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::buffer::{FrameError, ReadBuffer};
use super::recorder::{ConnOrder, Recorder};
use super::wire::{
    self, Scanner, UpgradeError, CLOSE_NORMAL_PAYLOAD, CONTROL_FRAME_BYTES_MAX,
    CONTROL_PAYLOAD_BYTES_MAX, OPCODE_CLOSE, OPCODE_PONG,
};

/// What every subscriber task of a run shares.
pub struct Shared {
    /// The server's WebSocket address.
    pub addr: SocketAddr,
    /// The upgrade request, identical for every connection.
    pub request: Vec<u8>,
    pub scanner: Scanner,
    pub recorder: Recorder,
    /// Bounds the connections between TCP connect and the `connected` greeting.
    pub handshakes: Rc<Semaphore>,
    pub stop: Stop,
    /// Connections that have received `connected`.
    pub connected: Cell<u64>,
    /// Subscriber tasks that have not ended.
    pub live: Cell<u64>,
    /// Connections that failed before `connected`.
    pub setup_failed: Cell<u64>,
    /// Connections that ended after `connected` and before the stop.
    pub closed_early: Cell<u64>,
    /// The first failure of either kind, for the operator.
    pub first_error: RefCell<Option<String>>,
}

impl Shared {
    fn fail(&self, id: usize, connected: bool, error: &ConnError) {
        let count = if connected {
            &self.closed_early
        } else {
            &self.setup_failed
        };
        count.set(count.get() + 1);
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            let when = if connected {
                "after subscribing"
            } else {
                "while connecting"
            };
            *first = Some(format!("subscriber {id} failed {when}: {error}"));
        }
    }
}

/// Why a subscriber connection ended early. Every variant ends that connection only; the
/// caller counts it and the run reports loss or a setup failure.
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
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(error) => write!(f, "{error}"),
            Self::Upgrade(error) => write!(f, "{error}"),
            Self::UpgradeTooLong => write!(
                f,
                "upgrade response head is over {} bytes",
                super::buffer::READ_BUFFER_BYTES
            ),
            Self::Frame(error) => write!(f, "{error}"),
            Self::NoGreeting => f.write_str(r#"first text frame is not {"type":"connected"}"#),
            Self::PingTooLong => f.write_str("ping payload over 125 bytes"),
            Self::Closed(Some(code)) => write!(f, "server sent close {code}"),
            Self::Closed(None) => f.write_str("server sent close without a code"),
            Self::Eof => f.write_str("server closed the TCP connection"),
        }
    }
}

impl From<std::io::Error> for ConnError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

impl<T> From<glommio::GlommioError<T>> for ConnError {
    fn from(error: glommio::GlommioError<T>) -> Self {
        Self::Io(error.into())
    }
}

impl From<FrameError> for ConnError {
    fn from(error: FrameError) -> Self {
        Self::Frame(error)
    }
}

/// Tells every subscriber task to close its connection. Waiting costs one stored `Waker` per
/// connection, in a table sized at start, so the wait can be re-armed on every read for free.
pub struct Stop {
    stopped: Cell<bool>,
    wakers: RefCell<Box<[Option<Waker>]>>,
}

impl Stop {
    /// A stop signal for connections `0..subscribers`.
    pub fn new(subscribers: usize) -> Self {
        Self {
            stopped: Cell::new(false),
            wakers: RefCell::new((0..subscribers).map(|_| None).collect()),
        }
    }

    /// Stops every subscriber, now and for any that start later.
    pub fn stop(&self) {
        self.stopped.set(true);
        for waker in self.wakers.borrow_mut().iter_mut() {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
    }

    fn wait(&self, id: usize) -> StopWait<'_> {
        StopWait { stop: self, id }
    }
}

struct StopWait<'a> {
    stop: &'a Stop,
    id: usize,
}

impl Future for StopWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.stopped.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.stop.wakers.borrow_mut();
        let slot = &mut wakers[self.id];
        if !slot
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            *slot = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Runs subscriber `id` to its end; its outcome is left in `shared`.
pub async fn subscriber(id: usize, shared: Rc<Shared>) {
    let mut conn = Conn {
        mask: mask_for(id),
        stream: None,
        buffer: ReadBuffer::default(),
        order: ConnOrder::default(),
        permit: None,
        connected: false,
        pong: [0; CONTROL_PAYLOAD_BYTES_MAX],
        pong_bytes: None,
    };
    let ended = futures_lite::future::or(conn.run(&shared), async {
        shared.stop.wait(id).await;
        Ok(())
    })
    .await;
    let closed_by_server = matches!(ended, Err(ConnError::Closed(_)));
    if let Err(error) = &ended {
        shared.fail(id, conn.connected, error);
    }
    if conn.connected && (ended.is_ok() || closed_by_server) {
        conn.close().await;
    }
    shared.live.set(shared.live.get() - 1);
}

struct Conn {
    /// The masking key of every frame this connection sends.
    mask: [u8; 4],
    stream: Option<TcpStream>,
    buffer: ReadBuffer,
    order: ConnOrder,
    /// Held from TCP connect until `connected`: one of the handshakes in flight.
    permit: Option<StaticPermit>,
    connected: bool,
    /// Payload of the latest Ping not yet answered; RFC 6455 lets a client answer only the
    /// latest of several.
    pong: [u8; CONTROL_PAYLOAD_BYTES_MAX],
    pong_bytes: Option<usize>,
}

impl Conn {
    /// Connects, upgrades, waits for `connected` and receives until the server ends the
    /// connection; it returns only with an error (stopping is done by dropping this future).
    async fn run(&mut self, shared: &Shared) -> Result<(), ConnError> {
        self.permit = Some(shared.handshakes.acquire_static_permit(1).await?);
        let stream = TcpStream::connect(shared.addr).await?;
        stream.set_nodelay(true)?;
        let stream = self.stream.insert(stream);
        stream.write_all(&shared.request).await?;
        loop {
            let spare = self.buffer.spare();
            if spare.is_empty() {
                return Err(ConnError::UpgradeTooLong);
            }
            let read = stream.read(spare).await?;
            if read == 0 {
                return Err(ConnError::Eof);
            }
            self.buffer.commit(read);
            if let Some(head_bytes) =
                wire::parse_upgrade_response(self.buffer.unread()).map_err(ConnError::Upgrade)?
            {
                self.buffer.consume(head_bytes);
                break;
            }
        }
        loop {
            self.take_frames(shared)?;
            let stream = self.stream.as_mut().expect("connected above");
            if let Some(length) = self.pong_bytes.take() {
                let mut frame = [0; CONTROL_FRAME_BYTES_MAX];
                let frame_bytes = wire::encode_control_frame(
                    OPCODE_PONG,
                    &self.pong[..length],
                    self.mask,
                    &mut frame,
                );
                stream.write_all(&frame[..frame_bytes]).await?;
            }
            let read = stream.read(self.buffer.spare()).await?;
            if read == 0 {
                return Err(ConnError::Eof);
            }
            self.buffer.commit(read);
        }
    }

    /// Handles every whole frame in the buffer, stamped with one clock reading.
    fn take_frames(&mut self, shared: &Shared) -> Result<(), ConnError> {
        let receive_us = super::unix_us();
        while let Some(frame) = self.buffer.next_frame()? {
            let payload = self.buffer.payload(&frame);
            match frame.opcode {
                OpCode::Data(Data::Text) if self.connected => {
                    match shared.scanner.delivery(payload) {
                        Some(delivery) => {
                            shared
                                .recorder
                                .record(delivery, receive_us, &mut self.order);
                        }
                        None => shared.recorder.record_foreign(),
                    }
                }
                OpCode::Data(Data::Text) => {
                    if !shared.scanner.is_connected(payload) {
                        return Err(ConnError::NoGreeting);
                    }
                    self.connected = true;
                    self.permit = None;
                    shared.connected.set(shared.connected.get() + 1);
                }
                OpCode::Control(Control::Ping) => {
                    if payload.len() > CONTROL_PAYLOAD_BYTES_MAX {
                        return Err(ConnError::PingTooLong);
                    }
                    self.pong[..payload.len()].copy_from_slice(payload);
                    self.pong_bytes = Some(payload.len());
                }
                OpCode::Control(Control::Close) => {
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
        Ok(())
    }

    /// Sends Close 1000 and reads until the server closes too, so neither side sees a reset.
    /// The caller bounds how long it waits for this.
    async fn close(&mut self) {
        let mut frame = [0; CONTROL_FRAME_BYTES_MAX];
        let frame_bytes =
            wire::encode_control_frame(OPCODE_CLOSE, &CLOSE_NORMAL_PAYLOAD, self.mask, &mut frame);
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        if stream.write_all(&frame[..frame_bytes]).await.is_err() {
            return;
        }
        loop {
            match stream.read(self.buffer.spare()).await {
                Ok(0) | Err(_) => return,
                Ok(read) => self.buffer.commit(read),
            }
            loop {
                match self.buffer.next_frame() {
                    Ok(Some(frame)) if frame.opcode == OpCode::Control(Control::Close) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }
}

/// The masking key of connection `id`. RFC 6455 wants it unpredictable to defeat proxy cache
/// poisoning; the bench talks to its server directly, so a key derived from the id will do.
fn mask_for(id: usize) -> [u8; 4] {
    let id = u32::try_from(id).unwrap_or(u32::MAX);
    id.wrapping_mul(0x9E37_79B9).wrapping_add(1).to_be_bytes()
}
