//! The io_uring floor's sender: one frame queued to many sockets as batched `send`s on a ring
//! of its own, with one `io_uring_enter` per batch.
//!
//! Owns the ring and the per-socket progress of the frame being sent. It borrows the sockets
//! and the frame from the floor for the length of one `Ring::send_all`, and must never return
//! (nor unwind) while the kernel may still read that frame or use those sockets: every path
//! out, the failing ones included, first cancels what is in flight and reaps every
//! completion. That promise is what makes the `unsafe` pushes below sound; a send still in
//! the kernel after `send_all` returned would read a buffer the floor is rewriting.
//!
//! It never reads from a socket, never allocates once its buffers have grown to the number of
//! sockets, and never blocks past the caller's timeout, but to wait out its own cancellation.

// Queueing a send on a ring is `unsafe` in `io-uring` (and would be in any crate that does it
// without owning the buffer): the kernel reads the buffer after `push` returns. No safe crate
// queues batched sends on borrowed buffers, so this module takes that duty itself; see the
// SAFETY comments and `AbortOnUnwind`. The crate denies unsafe code everywhere else.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use io_uring::opcode::{AsyncCancel2, Send};
use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::IoUring;

/// Fewest submission-queue entries a ring has; the kernel wants a power of two, and a tiny
/// ring saves nothing.
const RING_ENTRIES_MIN: usize = 8;

/// Most submission-queue entries a ring has, so sends queued per `io_uring_enter`. At 4,096
/// the syscall's cost is already shared by so many sends that a larger batch gains nothing
/// measurable, while the ring's memory (64 B per submission entry, 16 B per completion entry,
/// twice as many of those) stays near 400 KiB. The kernel allows 32,768.
const RING_ENTRIES_MAX: usize = 4_096;

/// How long one wait for cancelled sends lasts before the cancel is issued again, in
/// milliseconds. A cancelled send completes at once in practice; the retry covers one the
/// kernel was running at the time, which it cannot stop.
const CANCEL_RETRY_MS: u64 = 100;

/// The `user_data` of a cancel; a send's is its socket's index, which is never this large.
const CANCEL_USER_DATA: u64 = u64::MAX;

/// `send(2)`'s flag that turns a write to a reset connection into `EPIPE` rather than a
/// `SIGPIPE`, as std's own writes do. Its value is the same on every Linux architecture
/// (`include/linux/socket.h`); `libc` is not a dependency of this crate.
const MSG_NOSIGNAL: i32 = 0x4000;

/// An io_uring of the floor's own, and the progress of the frame `send_all` is sending.
pub struct Ring {
    ring: IoUring,
    /// Bytes of the current frame each socket has taken so far, by socket index.
    sent: Vec<usize>,
    /// Sockets whose last send was short, waiting to be queued again with the rest.
    retry: Vec<usize>,
}

/// What one `send_all` has under way; every count is of sends, never of cancels.
#[derive(Default)]
struct Batch {
    /// The first socket never queued; those before it are done, in flight or in `retry`.
    next: usize,
    /// Sends queued on the ring whose completion has not been reaped.
    in_flight: usize,
    /// Sockets that have taken the whole frame.
    done: usize,
    /// `io_uring_enter` calls made.
    enters: usize,
}

/// Held while sends may be in flight. A panic there is a bug, and unwinding would end the
/// borrows of a frame and sockets the kernel still uses, so dropping it aborts the process;
/// `send_all` forgets it once nothing is in flight.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        eprintln!("bench::floor::uring: panic with sends in flight; aborting");
        std::process::abort();
    }
}

impl Ring {
    /// A ring for `subscribers` sockets: entries for all of them, up to `RING_ENTRIES_MAX`,
    /// rounded up to a power of two. Fails when the kernel refuses io_uring (it is off with
    /// `kernel.io_uring_disabled`, or in a container's seccomp profile) or is older than
    /// Linux 5.19, which this ring's timeouts and cancels need.
    pub fn new(subscribers: usize) -> Result<Self, String> {
        let entries = subscribers
            .clamp(RING_ENTRIES_MIN, RING_ENTRIES_MAX)
            .next_power_of_two();
        let entries = u32::try_from(entries).expect("at most RING_ENTRIES_MAX");
        let ring = IoUring::new(entries).map_err(|error| error.to_string())?;
        if !ring.params().is_feature_ext_arg() {
            return Err("the kernel's io_uring cannot time out a wait (Linux 5.11+)".into());
        }
        let mut ring = Self {
            ring,
            sent: Vec::with_capacity(subscribers),
            retry: Vec::with_capacity(subscribers),
        };
        ring.check_cancel_any()?;
        Ok(ring)
    }

    /// Sends all of `frame` to every socket of `sockets`, batched: it queues one send per
    /// socket, as many as the ring holds, and submits them and waits for their completions
    /// with one `io_uring_enter`; a short send is queued again with the rest of the frame.
    /// Returns the number of `io_uring_enter` calls made, 1 when the ring holds every socket
    /// and every send completes at once.
    ///
    /// Fails with the first socket whose send fails, naming its index and the error, or when
    /// `timeout` passes first (a subscriber has stopped reading). Either way it cancels every
    /// send still in flight and waits for their completions before it returns, so the frame
    /// and the sockets are the caller's again; some sockets may then have taken part of the
    /// frame, as with a failed blocking write.
    pub fn send_all<S: AsFd>(
        &mut self,
        sockets: &[S],
        frame: &[u8],
        timeout: Duration,
    ) -> Result<usize, String> {
        assert!(!frame.is_empty(), "a frame holds at least its header");
        let deadline = Instant::now() + timeout;
        self.sent.clear();
        self.sent.resize(sockets.len(), 0);
        self.retry.clear();
        let capacity = self.ring.params().sq_entries() as usize;
        let mut batch = Batch::default();
        let guard = AbortOnUnwind;
        let outcome = loop {
            self.queue(sockets, frame, capacity, &mut batch);
            if batch.in_flight == 0 {
                assert_eq!(batch.done, sockets.len(), "nothing in flight, nothing left");
                break Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(self.timed_out(timeout, frame.len(), &batch));
            }
            let wait = Timespec::from(deadline - now);
            batch.enters += 1;
            let entered = self
                .ring
                .submitter()
                .submit_with_args(batch.in_flight, &SubmitArgs::new().timespec(&wait));
            // A wait that timed out (`ETIME`) is caught by the deadline above on the next
            // turn, as are interruptions and a busy kernel: they are retried.
            if let Err(error) = entered {
                if Instant::now() < deadline && !is_transient(&error) {
                    break Err(format!("io_uring_enter failed: {error}"));
                }
            }
            if let Err(message) = self.reap(frame.len(), &mut batch) {
                break Err(message);
            }
        };
        if outcome.is_err() {
            self.cancel_all(&mut batch);
        }
        assert_eq!(batch.in_flight, 0, "nothing in flight on the way out");
        std::mem::forget(guard);
        outcome.map(|()| batch.enters)
    }

    /// Queues a send for every socket that has a short send to finish or was never queued,
    /// while the ring has room (`capacity` sends in flight, so that their completions always
    /// fit the completion queue, which is twice as large).
    fn queue<S: AsFd>(&mut self, sockets: &[S], frame: &[u8], capacity: usize, batch: &mut Batch) {
        let mut submission = self.ring.submission();
        while batch.in_flight < capacity {
            let index = match self.retry.pop() {
                Some(index) => index,
                None if batch.next < sockets.len() => {
                    batch.next += 1;
                    batch.next - 1
                }
                None => break,
            };
            let rest = &frame[self.sent[index]..];
            // A send takes at most 4 GiB; a short one is queued again with the rest.
            let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            let fd = Fd(sockets[index].as_fd().as_raw_fd());
            let entry = Send::new(fd, rest.as_ptr(), len)
                .flags(MSG_NOSIGNAL)
                .build()
                .user_data(index as u64);
            // SAFETY: the entry points into `frame` and names a socket of `sockets`, both
            // borrowed by `send_all` for its whole length. `send_all` returns only once
            // every send it queued has completed and been reaped (`in_flight == 0`, after
            // `cancel_all` on a failure), and a panic before then aborts (`AbortOnUnwind`),
            // so the kernel never reads the frame nor uses the socket after the borrows end.
            let pushed = unsafe { submission.push(&entry) };
            pushed.expect("at most `capacity` sends are in flight, so the queue has room");
            batch.in_flight += 1;
        }
    }

    /// Reaps every completion ready: adds a send's bytes to its socket's progress and queues
    /// a short one again. Every completion is reaped even after a failure, which names the
    /// first socket whose send failed.
    fn reap(&mut self, frame_bytes: usize, batch: &mut Batch) -> Result<(), String> {
        let mut failed = None;
        for completion in self.ring.completion() {
            batch.in_flight -= 1;
            let index = usize::try_from(completion.user_data()).expect("a socket's index");
            match usize::try_from(completion.result()) {
                Ok(bytes) => {
                    self.sent[index] += bytes;
                    assert!(
                        self.sent[index] <= frame_bytes,
                        "a send took more than asked"
                    );
                    if self.sent[index] == frame_bytes {
                        batch.done += 1;
                    } else {
                        self.retry.push(index);
                    }
                }
                Err(_) => {
                    let error = std::io::Error::from_raw_os_error(-completion.result());
                    failed.get_or_insert_with(|| format!("send to subscriber {index}: {error}"));
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// The message of a `send_all` whose `timeout` passed, naming the first socket that has
    /// not taken the whole frame.
    fn timed_out(&self, timeout: Duration, frame_bytes: usize, batch: &Batch) -> String {
        let first = self
            .sent
            .iter()
            .position(|&sent| sent < frame_bytes)
            .expect("a send is still in flight");
        format!(
            "sends timed out after {timeout:?}: {} of {} subscribers have not taken the \
             whole frame, the first is subscriber {first} (has it stopped reading?)",
            self.sent.len() - batch.done,
            self.sent.len(),
        )
    }

    /// Cancels every send in flight and waits until all have completed, issuing the cancel
    /// again every `CANCEL_RETRY_MS` while some remain. It has no other way out: returning
    /// earlier would leave the kernel reading a frame its caller may free.
    fn cancel_all(&mut self, batch: &mut Batch) {
        let retry = Timespec::from(Duration::from_millis(CANCEL_RETRY_MS));
        let mut cancel_in_flight = false;
        while batch.in_flight > 0 || cancel_in_flight {
            if !cancel_in_flight && batch.in_flight > 0 {
                let entry = AsyncCancel2::new(CancelBuilder::any())
                    .build()
                    .user_data(CANCEL_USER_DATA);
                // SAFETY: a cancel points to no memory. When the queue is full it waits for
                // the next turn, after this one's `io_uring_enter` has emptied it.
                cancel_in_flight = unsafe { self.ring.submission().push(&entry) }.is_ok();
            }
            batch.enters += 1;
            let want = batch.in_flight + usize::from(cancel_in_flight);
            // Whatever the enter returns, the loop goes on until every completion is reaped.
            let _ = self
                .ring
                .submitter()
                .submit_with_args(want, &SubmitArgs::new().timespec(&retry));
            for completion in self.ring.completion() {
                if completion.user_data() == CANCEL_USER_DATA {
                    cancel_in_flight = false;
                } else {
                    batch.in_flight -= 1;
                }
            }
        }
    }

    /// Checks that the kernel can cancel every request of a ring with one entry (Linux 5.19+,
    /// which `cancel_all` relies on), by cancelling on the empty ring: the count cancelled, 0,
    /// (or `ENOENT`) when it can, `EINVAL` when it cannot.
    fn check_cancel_any(&mut self) -> Result<(), String> {
        let entry = AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(CANCEL_USER_DATA);
        // SAFETY: a cancel points to no memory, and the ring is empty.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| "the new ring has no room for one entry".to_string())?;
        self.ring
            .submit_and_wait(1)
            .map_err(|error| format!("io_uring_enter failed: {error}"))?;
        let completion = self
            .ring
            .completion()
            .next()
            .ok_or("the cancel on the empty ring did not complete")?;
        if completion.result() >= 0 {
            return Ok(());
        }
        let error = std::io::Error::from_raw_os_error(-completion.result());
        match error.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(format!(
                "the kernel's io_uring cannot cancel every request at once (Linux 5.19+): {error}"
            )),
        }
    }
}

/// Whether a failed `io_uring_enter` is worth retrying: interrupted by a signal, or the
/// kernel short of memory or of completion-queue room for a moment.
fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::ResourceBusy
    )
}

#[cfg(test)]
mod tests {
    //! `Ring::send_all` over loopback TCP pairs: the exact bytes at every reader, one
    //! `io_uring_enter` per batch, short sends finished in order, a reset subscriber named by
    //! its index, and a stalled one timed out with nothing left in flight (its socket closes,
    //! short of the frame, and the ring serves the next call). Each test carries a watchdog.

    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    use socket2::{Domain, Protocol, SockRef, Socket, Type};

    use super::*;
    use crate::floor::tests::{within_watchdog, WATCHDOG};

    /// The socket buffer sizes, in bytes, that make a large frame's send short: the kernel
    /// doubles them and rounds up to its minimum of a few KiB.
    const BUFFER_BYTES_SMALL: usize = 4_096;

    /// A frame far larger than a small socket buffer and the loopback window behind it.
    const FRAME_BYTES_LARGE: usize = 4 << 20;

    /// A send's timeout that only a subscriber that stopped reading reaches.
    const SEND_TIMEOUT: Duration = Duration::from_secs(5);

    /// `count` connected loopback pairs: the floor's ends (accepted) and the subscribers'
    /// ends, whose receive buffer is `BUFFER_BYTES_SMALL` when `small` (set before connecting,
    /// so that the window stays small too).
    fn pairs(count: usize, small: bool) -> (Vec<TcpStream>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut floor_ends, mut subscriber_ends) = (Vec::new(), Vec::new());
        for _ in 0..count {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
            if small {
                socket.set_recv_buffer_size(BUFFER_BYTES_SMALL).unwrap();
            }
            socket.connect(&addr.into()).unwrap();
            let subscriber: TcpStream = socket.into();
            subscriber.set_read_timeout(Some(WATCHDOG)).unwrap();
            subscriber_ends.push(subscriber);
            let (floor_end, _) = listener.accept().unwrap();
            if small {
                SockRef::from(&floor_end)
                    .set_send_buffer_size(BUFFER_BYTES_SMALL)
                    .unwrap();
            }
            floor_ends.push(floor_end);
        }
        (floor_ends, subscriber_ends)
    }

    /// `bytes` bytes that differ from their neighbours, so that a byte lost, doubled or out of
    /// order shows.
    fn frame(bytes: usize) -> Vec<u8> {
        (0..bytes).map(|index| (index % 251) as u8).collect()
    }

    /// Everything a subscriber receives until the floor's end closes.
    fn read_all(subscriber: &mut TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        subscriber.read_to_end(&mut received).unwrap();
        received
    }

    #[test]
    fn one_enter_sends_the_frame_to_64_sockets() {
        within_watchdog(|| {
            let (floor_ends, mut subscribers) = pairs(64, false);
            let frame = frame(1_000);
            let mut ring = Ring::new(64).unwrap();
            let enters = ring.send_all(&floor_ends, &frame, SEND_TIMEOUT).unwrap();
            assert_eq!(enters, 1, "64 sends, one io_uring_enter");
            drop(floor_ends);
            for subscriber in &mut subscribers {
                assert_eq!(read_all(subscriber), frame);
            }
        });
    }

    #[test]
    fn sockets_beyond_the_ring_go_in_one_enter_per_batch() {
        within_watchdog(|| {
            let (floor_ends, mut subscribers) = pairs(20, false);
            let frame = frame(1_000);
            // 8 entries: batches of 8, 8 and 4.
            let mut ring = Ring::new(8).unwrap();
            let enters = ring.send_all(&floor_ends, &frame, SEND_TIMEOUT).unwrap();
            assert_eq!(enters, 3);
            drop(floor_ends);
            for subscriber in &mut subscribers {
                assert_eq!(read_all(subscriber), frame);
            }
        });
    }

    #[test]
    fn a_short_send_is_queued_again_with_the_rest_of_the_frame() {
        within_watchdog(|| {
            let (floor_ends, mut subscribers) = pairs(1, true);
            let frame = frame(FRAME_BYTES_LARGE);
            let mut subscriber = subscribers.pop().unwrap();
            let reader = std::thread::spawn(move || {
                let mut received = Vec::new();
                let mut chunk = [0; 4_096];
                // Slowly: a pause every 64 KiB, so that the floor's sends keep coming up short.
                for turn in 0.. {
                    let read = subscriber.read(&mut chunk).unwrap();
                    if read == 0 {
                        break;
                    }
                    received.extend_from_slice(&chunk[..read]);
                    if turn % 16 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                received
            });
            let mut ring = Ring::new(1).unwrap();
            let enters = ring.send_all(&floor_ends, &frame, SEND_TIMEOUT).unwrap();
            assert!(enters > 1, "the first send was short, so another followed");
            drop(floor_ends);
            let received = reader.join().unwrap();
            assert_eq!(received.len(), frame.len());
            assert!(received == frame, "every byte, in order");
        });
    }

    #[test]
    fn a_reset_subscriber_fails_the_send_by_its_index_and_the_others_get_the_frame() {
        within_watchdog(|| {
            let (floor_ends, mut subscribers) = pairs(8, false);
            let reset = subscribers.remove(5);
            SockRef::from(&reset)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(reset);
            // Waits until the floor's end has seen the reset, so that its send fails for sure.
            floor_ends[5].set_read_timeout(Some(WATCHDOG)).unwrap();
            let peeked = floor_ends[5].peek(&mut [0; 1]);
            assert!(matches!(peeked, Err(_) | Ok(0)), "{peeked:?}");
            let frame = frame(1_000);
            let mut ring = Ring::new(8).unwrap();
            let error = ring
                .send_all(&floor_ends, &frame, SEND_TIMEOUT)
                .unwrap_err();
            assert!(error.starts_with("send to subscriber 5: "), "{error}");
            assert!(error.contains("os error"), "{error}");
            drop(floor_ends);
            for subscriber in &mut subscribers {
                assert_eq!(read_all(subscriber), frame);
            }
        });
    }

    #[test]
    fn a_stalled_subscriber_times_out_and_nothing_stays_in_flight() {
        within_watchdog(|| {
            let (mut floor_ends, mut subscribers) = pairs(1, true);
            let frame = frame(FRAME_BYTES_LARGE);
            let mut ring = Ring::new(1).unwrap();
            let timeout = Duration::from_millis(200);
            let started = Instant::now();
            let error = ring.send_all(&floor_ends, &frame, timeout).unwrap_err();
            let took = started.elapsed();
            assert!(error.starts_with("sends timed out after 200ms"), "{error}");
            assert!(error.contains("the first is subscriber 0"), "{error}");
            // Bounded: the timeout, then one round trip to cancel; a loaded host may add some.
            assert!(took >= timeout && took < timeout * 10, "{took:?}");
            // Had a send stayed in flight, the kernel would hold the socket open and finish
            // the frame once read: the subscriber would see the whole frame and no close.
            drop(floor_ends.pop());
            let received = read_all(&mut subscribers[0]);
            assert!(received.len() < frame.len(), "the send was cancelled");
            assert!(received == frame[..received.len()], "a prefix, in order");
            // The ring holds no stale entry or completion: the next call counts one enter.
            let (floor_ends, mut subscribers) = pairs(4, false);
            let frame = &frame[..1_000];
            assert_eq!(ring.send_all(&floor_ends, frame, SEND_TIMEOUT), Ok(1));
            drop(floor_ends);
            for subscriber in &mut subscribers {
                assert_eq!(read_all(subscriber), frame);
            }
        });
    }

    #[test]
    fn no_sockets_need_no_enter() {
        let mut ring = Ring::new(0).unwrap();
        let sockets: [TcpStream; 0] = [];
        assert_eq!(ring.send_all(&sockets, b"\x81\x00", SEND_TIMEOUT), Ok(0));
    }
}
