//! The receive loop: one thread, one `mio::Poll` (epoll, edge-triggered), every subscriber
//! connection of that thread in a `Slab` keyed by its poll token. A run has one loop per CPU
//! of `--cpu` (see `receivers`); each owns its share of the subscribers and shares nothing
//! with the others.
//!
//! Owns the connections, their admission (at most `--connect-concurrency` between TCP connect
//! and `connected`), the list of sockets left unread, and the connection counters the run
//! checks. It never blocks except in `poll()`, never reads the clock more than once per
//! wake-up, and never lets one socket hold the loop: each gets at most `READS_PER_WAKE_MAX`
//! reads per turn, then waits behind the others. It exists because glommio's io_uring polls
//! made every arriving segment signal the bench's CPU (one rescheduling IPI per delivery, paid
//! inside the server's `send()`); epoll only wakes a thread that sleeps in `epoll_wait`, and
//! while the loop is busy, readiness just joins the ready list. Waking the loop from sleep
//! still costs the sender a remote wake-up: on the 2-core development VM, with 1,000 and
//! 10,000 subscribers at 100 ms between events, about 0.3 function-call IPIs per delivery
//! against 0.9 rescheduling IPIs with glommio.
//!
//! Lifecycle: `start` opens the poll, `turn` runs one wake-up (admit, poll, read, write), and
//! `stop` sends Close to every subscribed connection; the caller turns until `live()` is 0.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

use crate::conn::{Conn, ConnError, Phase, Shared, Tls};
use crate::recorder::Recorder;
use crate::wire::Scanner;

/// Most readiness events taken from one `poll()`. They share one receive time, taken when
/// `poll()` returns and so after each of them became readable; a larger batch means fewer
/// `epoll_wait` calls but more time from the stamp to the reads of its last sockets (about
/// 6 us each, measured, mostly the kernel's receive path). A bench that keeps up sees small
/// batches: about one socket per `poll()` in the development VM's runs.
const EVENTS_PER_POLL_MAX: usize = 1_024;

/// Most reads of one socket per turn. A connection gets one read per delivery burst in a
/// healthy run; this only stops one flooded socket from starving the others. Smaller means
/// fairer and more turns, larger means fewer revisits.
const READS_PER_WAKE_MAX: usize = 16;

/// What the receive loop needs to start.
pub struct Config {
    pub addr: SocketAddr,
    /// `Some` for `wss://`.
    pub tls: Option<Tls>,
    pub request: Vec<u8>,
    /// The loop's own recorder, for its `subscribers`.
    pub recorder: Recorder,
    /// Connections this loop opens.
    pub subscribers: usize,
    /// Their ids in the run: `first_id`, then every `id_step`th (round-robin across the
    /// loops; 0 and 1 for a single loop). The id picks the connection's mask and names it in
    /// errors.
    pub first_id: usize,
    pub id_step: usize,
    /// Most of this loop's handshakes in flight at once.
    pub connect_concurrency: usize,
}

/// The receive loop's state; see the module docs.
pub struct Receiver {
    poll: Poll,
    events: Events,
    conns: Conns,
}

/// Everything but the poll, so that events can be handled while `Events` is borrowed.
struct Conns {
    shared: Shared,
    slab: Slab<Conn>,
    subscribers: usize,
    connect_concurrency: usize,
    /// See `Config`.
    first_id: usize,
    id_step: usize,
    /// Connections opened so far; the next one gets the id `first_id + opened * id_step`.
    opened: usize,
    /// Connections between TCP connect and `connected`.
    handshakes: usize,
    /// Set by `stop`: no connection is opened any more.
    stopping: bool,
    /// Keys of connections that reached the read bound and must be read again without waiting
    /// for an edge; a key whose connection has gone or been replaced is skipped (its `queued`
    /// flag is clear). `unread_now` is the list being worked through in this turn.
    unread: Vec<usize>,
    unread_now: Vec<usize>,
    counters: Counters,
}

/// How the connections have fared.
#[derive(Default)]
struct Counters {
    /// Connections that have received `connected`.
    connected: u64,
    /// Connections that failed before `connected`.
    setup_failed: u64,
    /// Connections that ended after `connected` and before the stop.
    closed_early: u64,
    /// The first failure of either kind, for the operator.
    first_error: Option<String>,
}

impl Receiver {
    /// Opens the poll. No connection is opened before the first `turn`.
    pub fn start(config: Config) -> std::io::Result<Self> {
        Ok(Self {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_PER_POLL_MAX),
            conns: Conns {
                shared: Shared {
                    addr: config.addr,
                    tls: config.tls,
                    request: config.request,
                    scanner: Scanner::default(),
                    recorder: config.recorder,
                },
                slab: Slab::with_capacity(config.subscribers),
                subscribers: config.subscribers,
                connect_concurrency: config.connect_concurrency,
                first_id: config.first_id,
                id_step: config.id_step,
                opened: 0,
                handshakes: 0,
                stopping: false,
                unread: Vec::with_capacity(config.subscribers),
                unread_now: Vec::with_capacity(config.subscribers),
                counters: Counters::default(),
            },
        })
    }

    /// One wake-up: opens connections up to the handshake limit, waits up to `timeout` for
    /// readiness (not at all when sockets were left unread), stamps the batch with one clock
    /// reading, then serves every ready socket and every socket left unread last turn.
    pub fn turn(&mut self, timeout: Duration) {
        self.conns.admit(self.poll.registry());
        let timeout = if self.conns.unread.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            // A signal: the caller turns again.
            Err(error) if error.kind() == ErrorKind::Interrupted => return,
            Err(error) => panic!("epoll_wait failed on a valid poll: {error}"),
        }
        let receive_us = super::unix_us();
        std::mem::swap(&mut self.conns.unread, &mut self.conns.unread_now);
        for event in &self.events {
            self.conns
                .serve(event.token().0, receive_us, event.is_read_closed());
        }
        while let Some(key) = self.conns.unread_now.pop() {
            let Some(conn) = self.conns.slab.get_mut(key) else {
                continue;
            };
            if conn.queued {
                conn.queued = false;
                self.conns.serve(key, receive_us, false);
            }
        }
    }

    /// Opens no more connections, sends Close to every subscribed one and drops the others.
    pub fn stop(&mut self) {
        let conns = &mut self.conns;
        conns.stopping = true;
        let shared = &conns.shared;
        conns.slab.retain(|_, conn| conn.close(shared));
    }

    /// Connections still open.
    pub fn live(&self) -> usize {
        self.conns.slab.len()
    }

    /// Connections that have received `connected`, ever.
    pub fn connected(&self) -> u64 {
        self.conns.counters.connected
    }

    /// Connections that failed before `connected`.
    pub fn setup_failed(&self) -> u64 {
        self.conns.counters.setup_failed
    }

    /// Connections that ended after `connected` and before the stop.
    pub fn closed_early(&self) -> u64 {
        self.conns.counters.closed_early
    }

    /// The first connection failure, for the operator.
    pub fn first_error(&self) -> Option<&str> {
        self.conns.counters.first_error.as_deref()
    }

    pub fn recorder(&self) -> &Recorder {
        &self.conns.shared.recorder
    }

    /// Adds the figures of another loop of the same run, which has finished, to this one's
    /// recorder (see `Recorder::merge`).
    pub fn merge(&mut self, other: Receiver) {
        self.conns
            .shared
            .recorder
            .merge(other.conns.shared.recorder);
    }
}

impl Conns {
    /// Opens connections until the handshakes in flight reach the limit or all are open.
    fn admit(&mut self, registry: &Registry) {
        while !self.stopping
            && self.handshakes < self.connect_concurrency
            && self.opened < self.subscribers
        {
            let id = self.first_id + self.opened * self.id_step;
            self.opened += 1;
            let entry = self.slab.vacant_entry();
            let opened = Conn::open(id, &self.shared).and_then(|mut conn| {
                registry.register(
                    &mut conn.stream,
                    Token(entry.key()),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(conn)
            });
            match opened {
                Ok(conn) => {
                    entry.insert(conn);
                    self.handshakes += 1;
                }
                Err(error) => self.counters.fail(id, false, &ConnError::Io(error)),
            }
        }
    }

    /// Serves the connection under `key` once: finish its connect, write, read.
    /// `read_closed` is the event's word that the peer has shut down its side.
    fn serve(&mut self, key: usize, receive_us: u64, read_closed: bool) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        let before = conn.phase();
        let result = conn.on_ready(&self.shared, receive_us, READS_PER_WAKE_MAX, read_closed);
        let after = conn.phase();
        if before < Phase::Receiving && after >= Phase::Receiving {
            self.counters.connected += 1;
            self.handshakes -= 1;
        }
        match result {
            Ok(progress) if progress.finished => {
                self.slab.remove(key);
            }
            Ok(progress) => {
                if progress.unread && !conn.queued {
                    conn.queued = true;
                    self.unread.push(key);
                }
            }
            Err(error) => self.fail(key, &error),
        }
    }

    /// Ends the connection under `key` after `error`, or answers the server's Close on a
    /// subscribed one. An error while closing is the end of the exchange, not a failure.
    fn fail(&mut self, key: usize, error: &ConnError) {
        let conn = &mut self.slab[key];
        let phase = conn.phase();
        if phase == Phase::Closing {
            self.slab.remove(key);
            return;
        }
        let subscribed = phase == Phase::Receiving;
        self.counters.fail(conn.id, subscribed, error);
        if !subscribed {
            self.handshakes -= 1;
        }
        let keep = matches!(error, ConnError::Closed(_)) && conn.close(&self.shared);
        if !keep {
            // Dropping the stream closes its socket, which takes it out of the epoll set.
            self.slab.remove(key);
        }
    }
}

impl Counters {
    fn fail(&mut self, id: usize, subscribed: bool, error: &ConnError) {
        if subscribed {
            self.closed_early += 1;
        } else {
            self.setup_failed += 1;
        }
        if self.first_error.is_none() {
            let when = if subscribed {
                "after subscribing"
            } else {
                "while connecting"
            };
            self.first_error = Some(format!("subscriber {id} failed {when}: {error}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    use super::*;
    use crate::conn::mask_for;
    use crate::wire::{
        encode_control_frame, CLOSE_NORMAL_PAYLOAD, CONTROL_FRAME_BYTES_MAX, OPCODE_CLOSE,
        OPCODE_PONG,
    };

    const REQUEST: &[u8] = b"GET /ws?channels=c HTTP/1.1\r\nHost: test\r\n\r\n";
    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
    const GREETING: &str = r#"{"type":"connected"}"#;
    /// Enough deliveries (about 200 KiB) to overflow one turn's read bound.
    const EVENTS: u64 = 3_000;
    /// How long either side of a test may wait before the test fails.
    const WATCHDOG: Duration = Duration::from_secs(10);

    fn text_frame(text: &str) -> Vec<u8> {
        assert!(text.len() < 126);
        let mut frame = vec![0x81, text.len() as u8];
        frame.extend_from_slice(text.as_bytes());
        frame
    }

    fn read_request(stream: &mut TcpStream) {
        let mut request = Vec::new();
        let mut byte = [0];
        while !request.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("the request arrives");
            request.push(byte[0]);
        }
        assert_eq!(request, REQUEST);
    }

    /// A server that upgrades each connection in turn (checking that the second one waits for
    /// the first one's greeting), pings, sends every event with the last frame split across
    /// two writes, and returns what each client sent after its request.
    fn fake_server(listener: TcpListener) -> Vec<Vec<u8>> {
        let mut streams = Vec::new();
        for index in 0..2 {
            let (mut stream, _) = listener.accept().expect("a subscriber connects");
            stream.set_read_timeout(Some(WATCHDOG)).unwrap();
            read_request(&mut stream);
            if index == 0 {
                listener.set_nonblocking(true).unwrap();
                std::thread::sleep(Duration::from_millis(100));
                assert_eq!(
                    listener.accept().map(|_| ()).unwrap_err().kind(),
                    ErrorKind::WouldBlock,
                    "with --connect-concurrency 1 the second connect waits for the greeting"
                );
                listener.set_nonblocking(false).unwrap();
                stream.write_all(&HEAD[..10]).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                stream.write_all(&HEAD[10..]).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                stream.write_all(&text_frame(GREETING)).unwrap();
            } else {
                stream
                    .write_all(&[HEAD, &text_frame(GREETING)].concat())
                    .unwrap();
            }
            streams.push(stream);
        }
        for stream in &mut streams {
            let mut bytes = vec![0x89, 0x02, b'h', b'i'];
            for seq in 0..EVENTS {
                let text = format!(
                    r#"{{"type":"message","channel":"c","data":{{"seq":{seq},"t_us":1}}}}"#
                );
                bytes.extend(text_frame(&text));
            }
            let (most, last) = bytes.split_at(bytes.len() - 5);
            stream.write_all(most).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            stream.write_all(last).unwrap();
        }
        streams
            .iter_mut()
            .map(|stream| {
                // A masked Pong "hi" and a masked Close 1000, 8 bytes each.
                let mut sent = vec![0; 16];
                stream.read_exact(&mut sent).expect("pong and close arrive");
                stream.write_all(&[0x88, 0x02, 0x03, 0xE8]).unwrap();
                sent
            })
            .collect()
    }

    fn masked(opcode: u8, payload: &[u8], id: usize) -> Vec<u8> {
        let mut frame = [0; CONTROL_FRAME_BYTES_MAX];
        let length = encode_control_frame(opcode, payload, mask_for(id), &mut frame);
        frame[..length].to_vec()
    }

    #[test]
    fn every_delivery_arrives_and_each_connection_answers_and_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || fake_server(listener));
        let mut receiver = Receiver::start(Config {
            tls: None,
            addr,
            request: REQUEST.to_vec(),
            recorder: Recorder::new(2, 0, EVENTS),
            subscribers: 2,
            first_id: 0,
            id_step: 1,
            connect_concurrency: 1,
        })
        .unwrap();
        let give_up = Instant::now() + WATCHDOG;
        while !receiver.recorder().measured_complete() {
            assert!(Instant::now() < give_up, "deliveries did not all arrive");
            assert_eq!(receiver.first_error(), None);
            receiver.turn(Duration::from_millis(10));
        }
        assert_eq!(receiver.connected(), 2);
        receiver.stop();
        while receiver.live() > 0 {
            assert!(
                Instant::now() < give_up,
                "the close exchange did not finish"
            );
            receiver.turn(Duration::from_millis(10));
        }
        let sent = server.join().expect("the fake server succeeds");
        for (id, sent) in sent.iter().enumerate() {
            let expected = [
                masked(OPCODE_PONG, b"hi", id),
                masked(OPCODE_CLOSE, &CLOSE_NORMAL_PAYLOAD, id),
            ]
            .concat();
            assert_eq!(sent, &expected, "subscriber {id}");
        }
        let summary = receiver.recorder().summary();
        assert_eq!(summary.deliveries, 2 * EVENTS);
        assert_eq!(
            (summary.lost, summary.duplicated, summary.out_of_order),
            (0, 0, 0)
        );
        assert_eq!(receiver.first_error(), None);
    }

    #[test]
    fn an_end_of_stream_right_behind_the_last_bytes_is_noticed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("a subscriber connects");
            stream.set_read_timeout(Some(WATCHDOG)).unwrap();
            read_request(&mut stream);
            let delivery = r#"{"type":"message","data":{"seq":0,"t_us":1}}"#;
            let bytes = [HEAD, &text_frame(GREETING), &text_frame(delivery)].concat();
            stream.write_all(&bytes).unwrap();
        });
        let mut receiver = Receiver::start(Config {
            tls: None,
            addr,
            request: REQUEST.to_vec(),
            recorder: Recorder::new(1, 0, 1),
            subscribers: 1,
            first_id: 0,
            id_step: 1,
            connect_concurrency: 1,
        })
        .unwrap();
        let give_up = Instant::now() + WATCHDOG;
        while receiver.closed_early() == 0 {
            assert!(
                Instant::now() < give_up,
                "the end of stream was not noticed"
            );
            receiver.turn(Duration::from_millis(10));
        }
        server.join().expect("the fake server succeeds");
        assert!(receiver.recorder().measured_complete());
        assert_eq!(receiver.live(), 0);
        assert_eq!(
            receiver.first_error(),
            Some("subscriber 0 failed after subscribing: server closed the TCP connection")
        );
    }

    #[test]
    fn a_refused_connect_is_a_setup_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut receiver = Receiver::start(Config {
            tls: None,
            addr,
            request: REQUEST.to_vec(),
            recorder: Recorder::new(1, 0, 1),
            subscribers: 1,
            first_id: 0,
            id_step: 1,
            connect_concurrency: 1,
        })
        .unwrap();
        let give_up = Instant::now() + WATCHDOG;
        while receiver.setup_failed() == 0 {
            assert!(
                Instant::now() < give_up,
                "the refused connect was not noticed"
            );
            receiver.turn(Duration::from_millis(10));
        }
        assert_eq!(receiver.live(), 0);
        let error = receiver.first_error().unwrap();
        assert!(
            error.starts_with("subscriber 0 failed while connecting: "),
            "{error}"
        );
    }
}
