//! The receive threads of a run: one receive loop (see `receiver`) per CPU of `--cpu`, the
//! subscribers dealt round-robin across them. The lead loop runs on the run's own thread, on
//! the first CPU, between the orchestration's steps as a single loop always has; every other
//! CPU gets a follower thread pinned to it that turns its own loop until told to stop.
//!
//! Owns the followers' lifecycle (`start` pins and starts them, `stop` has every loop close
//! its connections, `join` ends and joins them), the progress they report, and the merge of
//! their recorders into the lead's at the end. Nothing on the delivery path crosses threads:
//! each loop records into a recorder of its own, and a follower publishes its progress once
//! per turn (counts and two flags the orchestration polls), never per delivery. Without
//! followers (one CPU, or none) every query is the lead loop's own and the run is the same as
//! a single loop's.
//!
//! Lifecycle: `start`, then `turn` (the lead loop; the followers turn on their own), `stop`
//! and `turn` until `live()` is 0, then `join`; only after `join` does `recorder()` hold every
//! thread's figures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::conn::Tls;
use crate::receiver::{self, Receiver};
use crate::recorder::Recorder;

/// What the receive threads need to start.
pub struct Config {
    pub addr: SocketAddr,
    /// `Some` for `wss://`.
    pub tls: Option<Tls>,
    pub request: Vec<u8>,
    /// Subscribers of the whole run, across the threads.
    pub subscribers: u64,
    pub warmup_events: u64,
    pub events: u64,
    /// Handshakes in flight at once across the threads: each gets an even share, at least 1.
    pub connect_concurrency: usize,
    /// The CPUs of `--cpu`: the lead loop's first (the caller has pinned its thread there),
    /// then one follower each; empty for one unpinned loop.
    pub cpus: Vec<usize>,
    /// How long a follower waits in `poll()` when nothing arrives: how late it notices `stop`
    /// and the end of the run.
    pub tick: Duration,
}

/// The run's receive loops; see the module docs.
pub struct Receivers {
    lead: Receiver,
    followers: Vec<Follower>,
    /// Set by `join`: the lead's recorder then holds every loop's figures.
    joined: bool,
}

/// A follower thread, seen from the lead.
struct Follower {
    status: Arc<Status>,
    /// Warm-up deliveries the follower's subscribers are to receive.
    warmup_expected: u64,
    /// Taken by `join`. The thread returns its loop, or nothing when it could not start.
    thread: Option<JoinHandle<Option<Receiver>>>,
}

/// What a follower and the lead tell each other: the follower writes `progress` after each
/// turn, the lead writes `control`. Each half on its own cache line, so that the lead's polls
/// and the follower's writes do not move one line back and forth.
#[derive(Default)]
struct Status {
    progress: Progress,
    control: Control,
}

/// A follower's counts as of its latest turn; see the `Receiver` methods of the same names.
#[derive(Default)]
#[repr(align(128))]
struct Progress {
    connected: AtomicU64,
    setup_failed: AtomicU64,
    closed_early: AtomicU64,
    live: AtomicU64,
    frames: AtomicU64,
    warmup_received: AtomicU64,
    warmup_complete: AtomicBool,
    measured_complete: AtomicBool,
    /// The follower's first connection failure, set once.
    first_error: OnceLock<String>,
}

/// The lead's word to a follower.
#[derive(Default)]
#[repr(align(128))]
struct Control {
    /// Close every connection (`Receiver::stop`).
    stop: AtomicBool,
    /// End the thread, whatever is still open.
    quit: AtomicBool,
}

impl Receivers {
    /// Starts the followers, each pinned to its CPU, and returns once every one is pinned and
    /// has opened its poll. No connection is opened before a loop's first turn; a follower
    /// turns from the start.
    pub fn start(config: Config) -> Result<Self, String> {
        let loops = config.cpus.len().max(1);
        let loop_config = |index: usize| {
            let subscribers =
                usize::try_from(config.subscribers).expect("bounded by SUBSCRIBERS_MAX");
            let share = |total: usize| total / loops + usize::from(index < total % loops);
            let subscribers_here = share(subscribers);
            receiver::Config {
                addr: config.addr,
                tls: config.tls.clone(),
                request: config.request.clone(),
                recorder: Recorder::new(
                    subscribers_here as u64,
                    config.warmup_events,
                    config.events,
                ),
                subscribers: subscribers_here,
                first_id: index,
                id_step: loops,
                connect_concurrency: share(config.connect_concurrency).max(1),
            }
        };
        let lead = Receiver::start(loop_config(0))
            .map_err(|error| format!("cannot open the receive loop's poll: {error}"))?;
        let mut receivers = Self {
            lead,
            followers: Vec::with_capacity(loops - 1),
            joined: false,
        };
        for (index, &cpu) in config.cpus.iter().enumerate().skip(1) {
            let loop_config = loop_config(index);
            let warmup_expected = loop_config.subscribers as u64 * config.warmup_events;
            let status = Arc::new(Status::default());
            let (started_sink, started) = mpsc::sync_channel(1);
            let thread_status = Arc::clone(&status);
            let tick = config.tick;
            let thread = std::thread::Builder::new()
                .name(format!("bench-recv-{index}"))
                .spawn(move || {
                    let receiver = super::pin_current_thread("cpu", cpu).and_then(|()| {
                        Receiver::start(loop_config)
                            .map_err(|error| format!("cannot open a receive loop's poll: {error}"))
                    });
                    let started = receiver.as_ref().map(|_| ()).map_err(String::clone);
                    // The lead waits for this answer, unless it has failed already.
                    let _ = started_sink.send(started);
                    receiver
                        .ok()
                        .map(|receiver| follow(receiver, &thread_status, tick))
                })
                .map_err(|error| format!("cannot start a receive thread: {error}"))?;
            // Dropping `receivers` on an error tells the followers started so far to quit.
            receivers.followers.push(Follower {
                status,
                warmup_expected,
                thread: Some(thread),
            });
            started.recv().map_err(|_| {
                format!("the receive thread for CPU {cpu} ended before it started")
            })??;
        }
        Ok(receivers)
    }

    /// One wake-up of the lead loop (see `Receiver::turn`).
    pub fn turn(&mut self, timeout: Duration) {
        self.lead.turn(timeout);
    }

    /// Has every loop open no more connections and close its subscribed ones.
    pub fn stop(&mut self) {
        self.lead.stop();
        for follower in &self.followers {
            follower.status.control.stop.store(true, Ordering::Release);
        }
    }

    /// Ends every follower thread, whatever it still has open, and merges its figures into
    /// the lead's recorder. Called once, after the last `turn`.
    pub fn join(&mut self) {
        assert!(!self.joined, "the receive threads are joined once");
        for follower in &mut self.followers {
            follower.status.control.quit.store(true, Ordering::Release);
        }
        for follower in &mut self.followers {
            let thread = follower.thread.take().expect("joined once");
            let receiver = thread
                .join()
                .expect("a receive thread panicked")
                .expect("a follower that is joined has started");
            self.lead.merge(receiver);
        }
        self.joined = true;
    }

    /// Connections still open, across the loops.
    pub fn live(&self) -> usize {
        let followers = self.sum(|progress| &progress.live);
        self.lead.live() + usize::try_from(followers).expect("connections fit in memory")
    }

    /// Connections that have received `connected`, ever, across the loops.
    pub fn connected(&self) -> u64 {
        self.lead.connected() + self.sum(|progress| &progress.connected)
    }

    /// Connections that failed before `connected`, across the loops.
    pub fn setup_failed(&self) -> u64 {
        self.lead.setup_failed() + self.sum(|progress| &progress.setup_failed)
    }

    /// Connections that ended after `connected` and before the stop, across the loops.
    pub fn closed_early(&self) -> u64 {
        self.lead.closed_early() + self.sum(|progress| &progress.closed_early)
    }

    /// A connection failure for the operator: the lead loop's first, else the first of the
    /// first follower that had one.
    pub fn first_error(&self) -> Option<&str> {
        self.lead.first_error().or_else(|| {
            self.followers
                .iter()
                .find_map(|follower| follower.status.progress.first_error.get())
                .map(String::as_str)
        })
    }

    /// Frames seen so far by every loop, of any kind: it grows while the server is still
    /// delivering.
    pub fn frames(&self) -> u64 {
        let followers = sum(self.unmerged(), |progress| &progress.frames);
        self.lead.recorder().frames() + followers
    }

    /// Whether every subscriber has received every warm-up event.
    pub fn warmup_complete(&self) -> bool {
        self.lead.recorder().warmup_complete()
            && all(self.unmerged(), |progress| &progress.warmup_complete)
    }

    /// Whether every subscriber has received every measured event.
    pub fn measured_complete(&self) -> bool {
        self.lead.recorder().measured_complete()
            && all(self.unmerged(), |progress| &progress.measured_complete)
    }

    /// Warm-up deliveries received so far by every loop, and how many are expected.
    pub fn warmup_progress(&self) -> (u64, u64) {
        let (received, expected) = self.lead.recorder().warmup_progress();
        let followers = self.unmerged();
        let followers_expected: u64 = followers.iter().map(|f| f.warmup_expected).sum();
        (
            received + sum(followers, |progress| &progress.warmup_received),
            expected + followers_expected,
        )
    }

    /// Every loop's figures, merged; only once the followers are joined.
    pub fn recorder(&self) -> &Recorder {
        assert!(
            self.joined,
            "the figures are merged when the threads are joined"
        );
        self.lead.recorder()
    }

    /// `count` summed over the followers: connection counts, which the lead's loop never
    /// holds.
    fn sum(&self, count: fn(&Progress) -> &AtomicU64) -> u64 {
        sum(&self.followers, count)
    }

    /// The followers whose recorders are not in the lead's: all of them until `join`, none
    /// after it (the lead's recorder then holds their figures).
    fn unmerged(&self) -> &[Follower] {
        if self.joined {
            &[]
        } else {
            &self.followers
        }
    }
}

/// `count` as the `followers` last published it, summed.
fn sum(followers: &[Follower], count: fn(&Progress) -> &AtomicU64) -> u64 {
    followers
        .iter()
        .map(|follower| count(&follower.status.progress).load(Ordering::Acquire))
        .sum()
}

/// Whether `flag` is set for every one of `followers`.
fn all(followers: &[Follower], flag: fn(&Progress) -> &AtomicBool) -> bool {
    followers
        .iter()
        .all(|follower| flag(&follower.status.progress).load(Ordering::Acquire))
}

impl Drop for Receivers {
    /// Tells followers still running to end (after a failed start, or a panic on the lead's
    /// thread): without it they would turn until the process exits.
    fn drop(&mut self) {
        for follower in &self.followers {
            follower.status.control.quit.store(true, Ordering::Release);
        }
    }
}

/// A follower's thread: turns its loop and publishes its progress after each turn, closes its
/// connections on `stop`, and ends once they are closed or on `quit`. Returns the loop, whose
/// recorder the lead merges.
fn follow(mut receiver: Receiver, status: &Status, tick: Duration) -> Receiver {
    let mut stopped = false;
    let mut warmup = WarmupWatch::default();
    while !status.control.quit.load(Ordering::Acquire) {
        if !stopped && status.control.stop.load(Ordering::Acquire) {
            receiver.stop();
            stopped = true;
        }
        if stopped && receiver.live() == 0 {
            break;
        }
        receiver.turn(tick);
        publish(&receiver, &status.progress, &mut warmup);
    }
    publish(&receiver, &status.progress, &mut warmup);
    receiver
}

/// What a follower knows of its warm-up, so that it scans the warm-up events only while they
/// are incomplete and something arrived since the last scan (a scan is one pass over up to
/// `--warmup-events` slots; the measured phase needs none).
#[derive(Default)]
struct WarmupWatch {
    complete: bool,
    /// `frames()` at the last scan.
    scanned_at_frames: Option<u64>,
}

/// Writes the loop's counts into `progress`.
fn publish(receiver: &Receiver, progress: &Progress, warmup: &mut WarmupWatch) {
    let recorder = receiver.recorder();
    let frames = recorder.frames();
    if !warmup.complete && warmup.scanned_at_frames != Some(frames) {
        warmup.scanned_at_frames = Some(frames);
        let (received, _) = recorder.warmup_progress();
        warmup.complete = recorder.warmup_complete();
        progress.warmup_received.store(received, Ordering::Release);
        progress
            .warmup_complete
            .store(warmup.complete, Ordering::Release);
    }
    progress
        .connected
        .store(receiver.connected(), Ordering::Release);
    progress
        .setup_failed
        .store(receiver.setup_failed(), Ordering::Release);
    progress
        .closed_early
        .store(receiver.closed_early(), Ordering::Release);
    progress
        .live
        .store(receiver.live() as u64, Ordering::Release);
    progress.frames.store(frames, Ordering::Release);
    progress
        .measured_complete
        .store(recorder.measured_complete(), Ordering::Release);
    if let Some(error) = receiver.first_error() {
        if progress.first_error.get().is_none() {
            // Only this thread sets it.
            let _ = progress.first_error.set(error.to_string());
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
    };

    const REQUEST: &[u8] = b"GET /ws?channels=c HTTP/1.1\r\nHost: test\r\n\r\n";
    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
    const SUBSCRIBERS: usize = 5;
    const WARMUP_EVENTS: u64 = 1;
    const EVENTS: u64 = 40;
    /// How long either side of the test may wait before it fails.
    const WATCHDOG: Duration = Duration::from_secs(10);

    fn text_frame(text: &str) -> Vec<u8> {
        assert!(text.len() < 126);
        let mut frame = vec![0x81, text.len() as u8];
        frame.extend_from_slice(text.as_bytes());
        frame
    }

    /// A server that upgrades and greets every subscriber, sends each of them every event
    /// once the test says so (on `go`), and returns the Close frame each one sent, answering it.
    fn fake_server(listener: TcpListener, go: mpsc::Receiver<()>) -> Vec<Vec<u8>> {
        let mut streams: Vec<TcpStream> = (0..SUBSCRIBERS)
            .map(|_| {
                let (mut stream, _) = listener.accept().expect("a subscriber connects");
                stream.set_read_timeout(Some(WATCHDOG)).unwrap();
                let mut request = vec![0; REQUEST.len()];
                stream
                    .read_exact(&mut request)
                    .expect("the request arrives");
                assert_eq!(request, REQUEST);
                let greeting = text_frame(r#"{"type":"connected"}"#);
                stream.write_all(&[HEAD, &greeting].concat()).unwrap();
                stream
            })
            .collect();
        go.recv_timeout(WATCHDOG)
            .expect("the test starts the events");
        for seq in 0..WARMUP_EVENTS + EVENTS {
            let text = format!(
                r#"{{"type":"message","channel":"c","data":{{"seq":{seq},"t_us":{seq}}}}}"#
            );
            for stream in &mut streams {
                stream.write_all(&text_frame(&text)).unwrap();
            }
        }
        streams
            .iter_mut()
            .map(|stream| {
                let mut close = vec![0; 8];
                stream.read_exact(&mut close).expect("the close arrives");
                stream.write_all(&[0x88, 0x02, 0x03, 0xE8]).unwrap();
                close
            })
            .collect()
    }

    fn turn_until(receivers: &mut Receivers, what: &str, done: impl Fn(&Receivers) -> bool) {
        let give_up = Instant::now() + WATCHDOG;
        while !done(receivers) {
            assert!(Instant::now() < give_up, "{what} did not happen");
            assert_eq!(receivers.first_error(), None);
            receivers.turn(Duration::from_millis(10));
        }
    }

    /// Two loops, one a follower on a thread of its own: the five subscribers are dealt 3 and
    /// 2 with the ids 0 to 4 between them (each id's mask is on exactly one Close frame), the
    /// progress the follower reports adds up, and the merged figures count every delivery.
    #[test]
    fn two_loops_split_the_subscribers_and_merge_their_figures() {
        let cores = core_affinity::get_core_ids().unwrap();
        let cpus = vec![cores[0].id, cores[cores.len() - 1].id];
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (go_sink, go) = mpsc::channel();
        let server = std::thread::spawn(move || fake_server(listener, go));
        let mut receivers = Receivers::start(Config {
            addr,
            tls: None,
            request: REQUEST.to_vec(),
            subscribers: SUBSCRIBERS as u64,
            warmup_events: WARMUP_EVENTS,
            events: EVENTS,
            connect_concurrency: 2,
            cpus,
            tick: Duration::from_millis(10),
        })
        .unwrap();
        assert_eq!(receivers.followers.len(), 1);
        turn_until(&mut receivers, "connecting", |r| {
            r.connected() == SUBSCRIBERS as u64
        });
        assert_eq!(receivers.lead.connected(), 3, "ids 0, 2 and 4");
        assert_eq!(receivers.warmup_progress(), (0, SUBSCRIBERS as u64));
        assert!(!receivers.warmup_complete());
        go_sink.send(()).unwrap();
        turn_until(
            &mut receivers,
            "every delivery",
            Receivers::measured_complete,
        );
        assert!(receivers.warmup_complete());
        assert_eq!(receivers.live(), SUBSCRIBERS);
        receivers.stop();
        turn_until(&mut receivers, "the close exchange", |r| r.live() == 0);
        receivers.join();
        let mut sent = server.join().expect("the fake server succeeds");
        let mut expected: Vec<Vec<u8>> = (0..SUBSCRIBERS)
            .map(|id| {
                let mut frame = [0; CONTROL_FRAME_BYTES_MAX];
                let length = encode_control_frame(
                    OPCODE_CLOSE,
                    &CLOSE_NORMAL_PAYLOAD,
                    mask_for(id),
                    &mut frame,
                );
                frame[..length].to_vec()
            })
            .collect();
        sent.sort();
        expected.sort();
        assert_eq!(sent, expected);
        let summary = receivers.recorder().summary();
        assert_eq!(summary.deliveries, SUBSCRIBERS as u64 * EVENTS);
        assert_eq!(
            (summary.lost, summary.duplicated, summary.out_of_order),
            (0, 0, 0)
        );
        assert_eq!(
            receivers.frames(),
            SUBSCRIBERS as u64 * (WARMUP_EVENTS + EVENTS),
            "every loop's frames, counted once after the merge"
        );
        assert_eq!(receivers.closed_early(), 0);
    }
}
