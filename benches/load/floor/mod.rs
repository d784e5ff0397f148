//! The floor servers of `corecast bench --baseline`: the least a server can do to fan one event
//! out to every subscriber on this host, on a pinned thread of the bench's own process.
//!
//! Owns a loopback listener, one blocking socket per subscriber and the thread that serves
//! them. It accepts the subscribers one after another, answers each upgrade with `101` and the
//! `connected` greeting corecast sends, and then, for every event of a phase, on the HTTP
//! publisher's schedule: stamps `t_us`, builds once the frame corecast would build for the same
//! publish, and writes it to every socket. How it writes is the one thing its two kinds do
//! differently:
//! - `floor-write` ([`Kind::Write`]): a plain blocking `write_all` loop, one `send()` syscall
//!   per subscriber, each paying the loopback path and the wake-up of the receiver on its CPU.
//! - `floor-uring` ([`Kind::Uring`]): the same sends queued on an io_uring of its own and
//!   submitted in batches, one `io_uring_enter` for up to 4,096 of them (see [`uring`]): the
//!   kernel's send path without the cost of a syscall per subscriber, as an io_uring server
//!   such as corecast (on glommio) could at best reach.
//!
//! Either is a floor: no event loop, queue, cross-core hop or allocation around the sends. A
//! server's figures are read against it: on a small host the kernel's send path dominates, and
//! a fan-out time means little until one knows how much of it the kernel alone costs.
//!
//! It must never do more than that, or the floor rises and flatters the server: it reads
//! nothing after the upgrade (the subscribers' Pongs and Closes stay unread), never allocates
//! per socket, and takes no lock on the write path. It runs in the bench's process so that the
//! receiver, the recorder and the report are the same code for every target and two runs
//! differ by the server alone; its CPU time is its own thread's, which it reads itself around
//! each phase (io_uring runs the sends in the submitting thread; only a send that must block
//! would go to the kernel's io-wq threads, which that time leaves out).
//!
//! Lifecycle: `start` binds, sets up the ring of `floor-uring` (and fails if the kernel refuses
//! io_uring) and starts the pinned thread; the run takes its `Publisher` and drives phases
//! through it as it drives the HTTP publisher's; dropping that handle (after the subscribers
//! have sent Close) makes the thread answer every subscriber with Close and end, even from
//! `accept` (the handle's `WakeAccept` connects once); `stop` joins the thread.

mod uring;
pub(crate) mod wire;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::probe;
use crate::publish::{self, Outcome, Phase, Published, Publisher, WakeAccept};

/// How a floor writes each event's frame to its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A blocking `write_all` loop: one `send()` syscall per subscriber.
    Write,
    /// Sends queued on an io_uring in batches, one `io_uring_enter` per batch.
    Uring,
}

impl Kind {
    /// What the report calls a floor of this kind.
    pub fn name(self) -> &'static str {
        match self {
            Self::Write => "floor-write",
            Self::Uring => "floor-uring",
        }
    }

    /// Why this host cannot run a floor of this kind, if it cannot: the kernel refuses the
    /// io_uring floor its ring. A comparison skips such a floor rather than failing.
    pub fn unavailable(self) -> Option<String> {
        match self {
            Self::Write => None,
            Self::Uring => uring::Ring::new(1)
                .err()
                .map(|error| uring_refused(self, &error)),
        }
    }
}

/// What a floor of `kind` says when the kernel refuses it a ring.
fn uring_refused(kind: Kind, error: &str) -> String {
    format!(
        "{}: cannot set up io_uring: {error} (is kernel.io_uring_disabled set?)",
        kind.name()
    )
}

/// The path subscribers ask for, as they would of corecast.
pub const PATH: &str = "/ws";

/// Largest upgrade request the floor reads, in bytes; a longer one is refused. The bench's
/// request is under 250 bytes.
const REQUEST_BYTES_MAX: usize = 4_096;

/// Longest a subscriber may take to send its upgrade request once accepted, in milliseconds;
/// then the floor drops it and the subscriber reports the failure.
const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Longest one write may block on a full socket, in milliseconds (with `Kind::Uring`, one
/// event's batched sends to every socket). The receiver drains every socket continuously, so a
/// write that waits this long means it has stopped reading: the phase fails rather than hang
/// the run.
const WRITE_TIMEOUT_MS: u64 = 5_000;

/// The heartbeat the greeting announces, in seconds: corecast's default. The floor never
/// pings; the subscribers only read the field.
const HEARTBEAT_S: u64 = 25;

/// The epoch the floor greets with: as long as corecast's, so the greeting's bytes match.
const FLOOR_EPOCH: &str = "0000000000000000";

/// Commands queued to the floor thread at once: one phase at a time, as for the publisher.
const COMMANDS_QUEUED_MAX: usize = 1;

/// What the floor needs to start.
#[derive(Debug)]
pub struct Config {
    /// How it writes the frames.
    pub kind: Kind,
    /// The CPU its thread is pinned to (the first of `--server-cpus`, checked by the caller).
    pub cpu: usize,
    /// Subscribers to accept before the first phase.
    pub subscribers: usize,
    /// The channel events are published on, as a JSON string, quotes included.
    pub channel_json: String,
    /// Size of each event's `data` value, in bytes.
    pub payload_bytes: usize,
    /// Time between two events of a phase.
    pub interval: Duration,
    /// Most handshakes the receiver has in flight (`--connect-concurrency`): the listen
    /// backlog, so that no connect waits out a dropped SYN's 1 s retransmit. The kernel caps
    /// it at `net.core.somaxconn`.
    pub connect_concurrency: usize,
}

/// The run's handle on the floor thread.
pub struct Floor {
    kind: Kind,
    addr: SocketAddr,
    cpu: usize,
    /// Taken once by the run; dropping it ends the thread.
    publisher: Option<Publisher>,
    thread: Option<JoinHandle<()>>,
}

impl Floor {
    /// Listens on `127.0.0.1:0`, sets up the ring of a `Kind::Uring` floor and starts the
    /// thread pinned to `config.cpu`; returns once it is pinned.
    pub fn start(config: Config) -> Result<Self, String> {
        let kind = config.kind;
        let sender = Sender::new(kind, config.subscribers)?;
        let listener = listen(config.connect_concurrency)
            .map_err(|error| format!("--baseline: cannot listen on 127.0.0.1: {error}"))?;
        let addr = listener
            .local_addr()
            .map_err(|error| format!("--baseline: the listener has no address: {error}"))?;
        let (phases, phase_source) = mpsc::sync_channel(COMMANDS_QUEUED_MAX);
        let (outcome_sink, outcomes) = mpsc::sync_channel(COMMANDS_QUEUED_MAX);
        let (pinned_sink, pinned) = mpsc::sync_channel(1);
        let cpu = config.cpu;
        let thread = std::thread::Builder::new()
            .name("bench-floor".into())
            .spawn(move || {
                let pin = super::pin_current_thread("server-cpus", config.cpu);
                let pinned = pin.is_ok();
                if pinned_sink.send(pin).is_ok() && pinned {
                    run(listener, sender, &config, &phase_source, &outcome_sink);
                }
            })
            .map_err(|error| format!("cannot start the floor thread: {error}"))?;
        pinned
            .recv()
            .map_err(|_| "the floor thread ended before it started".to_string())??;
        Ok(Self {
            kind,
            addr,
            cpu,
            publisher: Some(Publisher {
                phases,
                outcomes,
                _wake: Some(WakeAccept(addr)),
            }),
            thread: Some(thread),
        })
    }

    /// What the report calls it: its kind's name.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CPU its thread is pinned to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The handle the run publishes through; there is one per floor.
    pub fn take_publisher(&mut self) -> Publisher {
        self.publisher
            .take()
            .expect("the run takes the floor's publisher once")
    }

    /// Waits for the thread to end, once the run has dropped the publisher. It ends within one
    /// event interval and one write timeout of that.
    pub fn stop(&mut self) -> Result<(), String> {
        assert!(
            self.publisher.is_none(),
            "the floor ends when its publisher is dropped"
        );
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| "the floor thread panicked".to_string()),
            None => Ok(()),
        }
    }
}

/// A std listener on `127.0.0.1:0` with room for `backlog` connections awaiting `accept`
/// (`TcpListener::bind` allows 128, fewer than the receiver's default 256 handshakes).
fn listen(backlog: usize) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// The thread: accept every subscriber and close the listener (one file descriptor fewer),
/// then publish phase after phase until the run drops its handle, then answer every
/// subscriber with Close.
fn run(
    listener: TcpListener,
    sender: Sender,
    config: &Config,
    phases: &Receiver<Phase>,
    outcomes: &SyncSender<Outcome>,
) {
    let accepted = accept_all(&listener, sender, config.subscribers, phases);
    drop(listener);
    let mut sockets = match accepted {
        Ok(Some(sockets)) => sockets,
        Ok(None) => return,
        Err(message) => {
            let _ = outcomes.send(Outcome::Failed(message));
            return;
        }
    };
    for phase in phases {
        match sockets.publish(config, phase, phases) {
            Ok(Some(published)) => {
                if outcomes.send(Outcome::Published(published)).is_err() {
                    break;
                }
            }
            // The run ended during the phase.
            Ok(None) => break,
            Err(message) => {
                // The run stops on a failure: wait for its Closes to go out first, so that no
                // subscriber sees the floor go away while it is still receiving.
                if outcomes.send(Outcome::Failed(message)).is_ok() {
                    while phases.recv().is_ok() {}
                }
                break;
            }
        }
    }
    sockets.close();
}

/// How the frame reaches every socket: the one part of the thread that differs by `Kind`.
enum Sender {
    /// A blocking `write_all` per socket.
    Write,
    /// Batched sends on the floor's own ring (boxed: the ring is some 300 bytes of
    /// pointers, and this is the only variant that has any).
    Uring(Box<uring::Ring>),
}

impl Sender {
    /// The sender of a floor of `kind` for `subscribers` sockets; a `Kind::Uring` one fails
    /// when the kernel refuses io_uring.
    fn new(kind: Kind, subscribers: usize) -> Result<Self, String> {
        match kind {
            Kind::Write => Ok(Self::Write),
            Kind::Uring => uring::Ring::new(subscribers)
                .map(|ring| Self::Uring(Box::new(ring)))
                .map_err(|error| uring_refused(kind, &error)),
        }
    }
}

/// The subscribers' sockets, how they are written, and the buffers every event is built in.
struct Sockets {
    streams: Vec<TcpStream>,
    sender: Sender,
    /// The event's `data` value.
    data: String,
    /// The event's complete frame, built once and written to every socket.
    frame: Vec<u8>,
}

/// Accepts and upgrades `subscribers` connections, in turn. `Ok(None)` when the run ended
/// first. A connection whose upgrade fails is dropped (its subscriber reports why) and the
/// floor goes on accepting.
fn accept_all(
    listener: &TcpListener,
    sender: Sender,
    subscribers: usize,
    phases: &Receiver<Phase>,
) -> Result<Option<Sockets>, String> {
    let mut streams = Vec::with_capacity(subscribers);
    let mut request = vec![0; REQUEST_BYTES_MAX];
    let mut answer = Vec::new();
    while streams.len() < subscribers {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            // The client gave up between its connect and this accept.
            Err(error) if error.kind() == ErrorKind::ConnectionAborted => continue,
            Err(error) => return Err(format!("the floor cannot accept: {error}")),
        };
        match phases.try_recv() {
            Err(TryRecvError::Empty) => {}
            // The run has ended (this connection may be its `WakeAccept`).
            Err(TryRecvError::Disconnected) => return Ok(None),
            Ok(phase) => panic!("{phase:?} sent before every subscriber was connected"),
        }
        let conn_id = format!("floor-{}", streams.len());
        if handshake(&mut stream, &conn_id, &mut request, &mut answer).is_ok() {
            streams.push(stream);
        }
    }
    Ok(Some(Sockets {
        streams,
        sender,
        data: String::new(),
        frame: Vec::new(),
    }))
}

/// Reads one upgrade request and answers it with `101` and the greeting, in one write; leaves
/// the socket blocking, with Nagle off and the write timeout set.
fn handshake(
    stream: &mut TcpStream,
    conn_id: &str,
    request: &mut [u8],
    answer: &mut Vec<u8>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(HANDSHAKE_TIMEOUT_MS)))?;
    stream.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)))?;
    let mut filled = 0;
    let key = loop {
        if filled == request.len() {
            stream.write_all(wire::BAD_REQUEST)?;
            return Err(ErrorKind::InvalidData.into());
        }
        let read = stream.read(&mut request[filled..])?;
        if read == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        filled += read;
        match wire::parse_upgrade_request(&request[..filled]) {
            Ok(Some(key)) => break key,
            Ok(None) => {}
            Err(_) => {
                stream.write_all(wire::BAD_REQUEST)?;
                return Err(ErrorKind::InvalidData.into());
            }
        }
    };
    answer.clear();
    wire::upgrade_response(key, answer);
    wire::connected_frame(
        conn_id,
        super::unix_us() / 1_000,
        HEARTBEAT_S,
        FLOOR_EPOCH,
        answer,
    );
    stream.write_all(answer)
}

impl Sockets {
    /// Publishes `phase` on the publisher's schedule and returns it with this thread's CPU
    /// time over it; `Ok(None)` when the run ended during it.
    fn publish(
        &mut self,
        config: &Config,
        phase: Phase,
        phases: &Receiver<Phase>,
    ) -> Result<Option<Published>, String> {
        let cpu_before_ns = probe::thread_cpu_time_ns()?;
        let start = Instant::now();
        for index in 0..phase.count {
            publish::sleep_until_tick(start, config.interval, index);
            match phases.try_recv() {
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return Ok(None),
                Ok(next) => panic!("{next:?} sent during {phase:?}"),
            }
            let seq = phase.first_seq + index;
            let sent_us = super::unix_us();
            self.data.clear();
            publish::write_data(&mut self.data, seq, sent_us, config.payload_bytes);
            // corecast numbers a channel's messages from 1 and stamps them in milliseconds; with
            // the bench its only publisher, a message's node-wide seq is its offset.
            wire::message_frame(
                &mut self.frame,
                &config.channel_json,
                seq + 1,
                seq + 1,
                sent_us / 1_000,
                &self.data,
            );
            self.send_frame()
                .map_err(|error| format!("the floor cannot write event {seq} {error}"))?;
        }
        let cpu_ns = probe::thread_cpu_time_ns()?.saturating_sub(cpu_before_ns);
        Ok(Some(Published {
            phase,
            cpu_ns: Some(cpu_ns),
        }))
    }

    /// Writes the frame to every socket, each within `WRITE_TIMEOUT_MS`; the error names the
    /// socket and reads after "cannot write event N".
    fn send_frame(&mut self) -> Result<(), String> {
        match &mut self.sender {
            Sender::Write => {
                for (id, stream) in self.streams.iter_mut().enumerate() {
                    stream
                        .write_all(&self.frame)
                        .map_err(|error| format!("to floor-{id}: {error}"))?;
                }
                Ok(())
            }
            Sender::Uring(ring) => {
                let timeout = Duration::from_millis(WRITE_TIMEOUT_MS);
                // The count of `io_uring_enter` calls is for the tests; the report has no use for it.
                ring.send_all(&self.streams, &self.frame, timeout)
                    .map(|_enters| ())
                    .map_err(|error| format!("with io_uring: {error}"))
            }
        }
    }

    /// Sends Close 1000 to every subscriber, then drops the sockets. A subscriber already
    /// gone is skipped; the first write that times out ends the round, so that closing takes
    /// at most one write timeout.
    fn close(self) {
        for mut stream in self.streams {
            if let Err(error) = stream.write_all(&wire::CLOSE_NORMAL) {
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The floor's thread against plain blocking clients: the exact bytes of a whole session,
    //! and its end from `accept` when the run gives up early. Each test carries a watchdog.

    use super::*;
    use crate::wire::{self as client, Scanner};

    pub(super) use crate::tests::WATCHDOG;

    fn config(kind: Kind, subscribers: usize) -> Config {
        Config {
            kind,
            cpu: core_affinity::get_core_ids().unwrap()[0].id,
            subscribers,
            channel_json: r#""bench.floor""#.into(),
            payload_bytes: 64,
            interval: Duration::from_millis(1),
            connect_concurrency: 4,
        }
    }

    /// Runs `body` under the bench tests' watchdog. `uring`'s tests use it too.
    pub(super) fn within_watchdog<T: Send + 'static>(
        body: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        crate::tests::within_watchdog(WATCHDOG, body)
    }

    fn read_exactly(stream: &mut TcpStream, bytes: usize) -> Vec<u8> {
        let mut out = vec![0; bytes];
        stream.read_exact(&mut out).unwrap();
        out
    }

    /// Reads one unmasked final text frame of under 64 KiB and returns its payload.
    fn read_text(stream: &mut TcpStream) -> Vec<u8> {
        let header = read_exactly(stream, 2);
        assert_eq!(header[0], 0x81, "a final text frame");
        let length = match header[1] {
            126 => {
                let extended = read_exactly(stream, 2);
                usize::from(u16::from_be_bytes([extended[0], extended[1]]))
            }
            length => usize::from(length),
        };
        read_exactly(stream, length)
    }

    #[test]
    fn a_write_session_upgrades_publishes_one_frame_per_event_and_closes() {
        a_session_upgrades_publishes_one_frame_per_event_and_closes(Kind::Write);
    }

    #[test]
    fn a_uring_session_upgrades_publishes_one_frame_per_event_and_closes() {
        a_session_upgrades_publishes_one_frame_per_event_and_closes(Kind::Uring);
    }

    /// A whole session with a floor of `kind`: the same bytes whatever the kind.
    fn a_session_upgrades_publishes_one_frame_per_event_and_closes(kind: Kind) {
        within_watchdog(move || {
            let mut floor = Floor::start(config(kind, 2)).unwrap();
            assert_eq!(floor.name(), kind.name());
            let target = client::parse_ws_url(&format!("ws://{}{PATH}", floor.addr())).unwrap();
            let request = client::upgrade_request(&target, "bench.floor");
            let mut streams: Vec<TcpStream> = (0..2)
                .map(|_| {
                    let mut stream = TcpStream::connect(floor.addr()).unwrap();
                    stream.set_read_timeout(Some(WATCHDOG)).unwrap();
                    stream.write_all(&request).unwrap();
                    stream
                })
                .collect();
            let mut response = Vec::new();
            wire::upgrade_response(b"dGhlIHNhbXBsZSBub25jZQ==", &mut response);
            for (id, stream) in streams.iter_mut().enumerate() {
                assert_eq!(read_exactly(stream, response.len()), response);
                let greeting = read_text(stream);
                assert!(Scanner::default().is_connected(&greeting));
                let conn_id = format!(r#""conn_id":"floor-{id}""#);
                assert!(String::from_utf8(greeting).unwrap().contains(&conn_id));
            }
            let publisher = floor.take_publisher();
            let phase = Phase {
                first_seq: 3,
                count: 2,
            };
            publisher.phases.send(phase).unwrap();
            let published = match publisher.outcomes.recv().unwrap() {
                Outcome::Published(published) => published,
                Outcome::Failed(message) => panic!("{message}"),
            };
            assert_eq!(published.phase, phase);
            assert!(published.cpu_ns.is_some());
            for stream in &mut streams {
                for seq in 3..5 {
                    let text = read_text(stream);
                    let delivery = Scanner::default().delivery(&text).unwrap();
                    assert_eq!(delivery.seq, seq);
                    let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
                    assert_eq!(value["offset"], seq + 1);
                    assert_eq!(value["channel"], "bench.floor");
                    assert_eq!(value["data"].to_string().len(), 64);
                }
            }
            drop(publisher);
            for stream in &mut streams {
                assert_eq!(read_exactly(stream, 4), wire::CLOSE_NORMAL);
                assert_eq!(stream.read(&mut [0; 1]).unwrap(), 0, "then end of stream");
            }
            floor.stop().unwrap();
        });
    }

    #[test]
    fn dropping_the_publisher_ends_the_floor_while_it_accepts() {
        within_watchdog(|| {
            let mut floor = Floor::start(config(Kind::Write, 3)).unwrap();
            let addr = floor.addr();
            drop(floor.take_publisher());
            floor.stop().unwrap();
            assert_eq!(
                TcpStream::connect(addr).unwrap_err().kind(),
                ErrorKind::ConnectionRefused,
                "the listener is closed"
            );
        });
    }

    #[test]
    fn a_request_that_is_not_an_upgrade_gets_400_and_the_floor_goes_on() {
        within_watchdog(|| {
            let mut floor = Floor::start(config(Kind::Write, 1)).unwrap();
            let mut bad = TcpStream::connect(floor.addr()).unwrap();
            bad.set_read_timeout(Some(WATCHDOG)).unwrap();
            bad.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut answer = Vec::new();
            bad.read_to_end(&mut answer).unwrap();
            assert_eq!(answer, wire::BAD_REQUEST);
            let target = client::parse_ws_url(&format!("ws://{}{PATH}", floor.addr())).unwrap();
            let mut good = TcpStream::connect(floor.addr()).unwrap();
            good.set_read_timeout(Some(WATCHDOG)).unwrap();
            good.write_all(&client::upgrade_request(&target, "c"))
                .unwrap();
            let mut head = [0; 12];
            good.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 101");
            drop(floor.take_publisher());
            floor.stop().unwrap();
        });
    }
}
