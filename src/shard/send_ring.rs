//! The shard's send ring: a fan-out's non-blocking writes to many sockets, queued on an
//! io_uring of the shard's own (beside glommio's) and handed to the kernel with one
//! `io_uring_enter` per ring-full, rather than one `send()` system call per socket.
//!
//! Owns the ring, its table of registered sockets, and the results of the last batch. A
//! socket registered in the table ([`SendRing::register`], by its connection's slot) is sent
//! to by slot, which spares the kernel looking its descriptor up and taking a reference to it
//! for every send; it must be unregistered before its descriptor closes, or the table's
//! reference would keep the connection open. Others are sent to by descriptor.
//!
//! It borrows the sockets' descriptors and the buffers from its caller for the length of one [`SendRing::send_all`], and never returns
//! (nor unwinds) while the kernel may still read one of those buffers: every send carries
//! `MSG_DONTWAIT`, so the kernel completes it while it is submitted (the bytes the socket
//! took, or `EAGAIN` when it was full, or the socket's error) and never parks it to wait for
//! room, and `send_all` reaps every completion before it returns. That promise is what makes
//! the `unsafe` pushes below sound. A send that ends short is only reported: what the socket
//! did not take is the caller's to queue, exactly as after a short `send()`.
//!
//! It never blocks, never reads from a socket, and allocates only to grow its result list to
//! the largest batch seen.

// Queueing a send on a ring is `unsafe` in `io-uring`: the kernel reads the buffer after `push`
// returns. No safe crate queues batched sends on borrowed buffers, so this module takes that
// duty itself (see the SAFETY comments and `AbortOnUnwind`); the crate denies unsafe code
// everywhere else.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

use io_uring::opcode::Send;
use io_uring::types::{Fd, Fixed};
use io_uring::IoUring;

/// Submission-queue entries of the ring: the most sends queued per `io_uring_enter`. At 1,024
/// the system call's cost is shared by so many sends that a larger batch gains nothing, while
/// the ring stays small (64 B per submission entry, 16 B per completion entry, twice as many
/// of those: about 100 KiB a shard).
const RING_ENTRIES: u32 = 1_024;

/// `send(2)`'s flags for every send: never wait for room (`MSG_DONTWAIT`), and turn a write to
/// a reset connection into `EPIPE` rather than a `SIGPIPE` (`MSG_NOSIGNAL`).
const SEND_FLAGS: i32 = libc_flags::MSG_DONTWAIT | libc_flags::MSG_NOSIGNAL;

/// The two flags' values, the same on every Linux architecture (`include/linux/socket.h`).
mod libc_flags {
    pub const MSG_DONTWAIT: i32 = 0x40;
    pub const MSG_NOSIGNAL: i32 = 0x4000;
}

/// An io_uring for one shard's sends, and the outcome of its last batch.
pub struct SendRing {
    ring: IoUring,
    /// The descriptor registered in each slot of the ring's file table, `-1` for none; empty
    /// when the kernel gave the ring no table (every send then names its descriptor).
    registered: Vec<RawFd>,
    /// What each send of the last `send_all` did, in the order they were given: the bytes the
    /// socket took, or a negated `errno` (`-EAGAIN` for a full socket).
    results: Vec<i32>,
}

/// A socket to send to: its connection's slot, and its descriptor. The send names the slot
/// when the descriptor is registered there, else the descriptor.
#[derive(Clone, Copy)]
pub struct Socket {
    pub slot: usize,
    pub fd: RawFd,
}

/// The process's soft limit on open files: the most entries the kernel lets a file table hold.
fn open_files_max() -> usize {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
        .unwrap_or(0)
}

/// Held while sends may be in flight. A panic there would unwind out of `send_all` and end the
/// borrows of buffers the kernel may still read, so dropping it aborts the process;
/// `send_all` forgets it once every send has completed.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        eprintln!("corecast: panic with sends in flight on the shard's ring; aborting");
        std::process::abort();
    }
}

impl SendRing {
    /// A ring for the calling thread, which must be the only one that uses it: it is set up
    /// `SINGLE_ISSUER` with `DEFER_TASKRUN` (Linux 6.1+), so the kernel does the ring's work
    /// only when this thread enters it; on an older kernel, without them. Its file table has
    /// `slots` entries (at most the process's open-file limit, which the kernel also applies),
    /// or none where the kernel refuses one (before Linux 5.19). Fails when the kernel refuses
    /// io_uring altogether.
    pub fn new(slots: usize) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))?;
        let slots = u32::try_from(slots.min(open_files_max())).unwrap_or(u32::MAX);
        let registered = match ring.submitter().register_files_sparse(slots) {
            Ok(()) => vec![-1; slots as usize],
            Err(error) => {
                tracing::debug!(%error, "the shard's send ring has no file table: sends name descriptors");
                Vec::new()
            }
        };
        Ok(SendRing {
            ring,
            registered,
            results: Vec::new(),
        })
    }

    /// Registers the socket `fd` in `slot` of the ring's file table, so that sends to it name
    /// the slot. A slot past the table's end, or a kernel that refuses the update, leaves it
    /// unregistered: sends then name the descriptor. The caller must `unregister` the slot
    /// before `fd` closes.
    pub fn register(&mut self, slot: usize, fd: RawFd) {
        let Some(entry) = self.registered.get_mut(slot) else {
            return;
        };
        let offset = u32::try_from(slot).expect("the table's slots fit in u32");
        match self.ring.submitter().register_files_update(offset, &[fd]) {
            Ok(_) => *entry = fd,
            Err(error) => {
                tracing::debug!(%error, slot, "cannot register a socket on the send ring");
            }
        }
    }

    /// Drops the ring's reference to the socket in `slot`, if one is registered there, before
    /// its descriptor closes.
    pub fn unregister(&mut self, slot: usize) {
        let Some(entry) = self.registered.get_mut(slot).filter(|fd| **fd >= 0) else {
            return;
        };
        let offset = u32::try_from(slot).expect("the table's slots fit in u32");
        if let Err(error) = self.ring.submitter().register_files_update(offset, &[-1]) {
            // Only a kernel short of memory fails this; the connection would stay open
            // behind the table's reference, which is worse than a crash of no one's making.
            eprintln!("corecast: cannot unregister a socket from the shard's send ring: {error}");
            std::process::abort();
        }
        *entry = -1;
    }

    /// Sends each buffer to its socket (a connection's slot and descriptor) without blocking,
    /// all of them queued on the ring and submitted with one `io_uring_enter` per ring-full,
    /// and returns what each send did, in the order of `sends`: the bytes the socket took (as
    /// few as 0 with `-EAGAIN` when it was full, or fewer than asked), or a negated `errno`. A
    /// buffer over 4 GiB is sent short.
    ///
    /// Every send has completed when it returns, whatever the results.
    pub fn send_all<'a>(&mut self, sends: impl IntoIterator<Item = (Socket, &'a [u8])>) -> &[i32] {
        self.results.clear();
        let guard = AbortOnUnwind;
        let mut in_flight = 0;
        for (socket, buf) in sends {
            let index = self.results.len();
            self.results.push(0);
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            let entry = match self.registered.get(socket.slot) {
                Some(&fd) if fd == socket.fd => {
                    Send::new(Fixed(socket.slot as u32), buf.as_ptr(), len)
                }
                _ => Send::new(Fd(socket.fd), buf.as_ptr(), len),
            };
            let entry = entry.flags(SEND_FLAGS).build().user_data(index as u64);
            loop {
                // SAFETY: the entry points into `buf`, borrowed for `'a`, which outlives this
                // call. `send_all` returns only once every send it queued has completed and
                // been reaped (`complete` below, which leaves nothing in flight), and a panic
                // before then aborts (`AbortOnUnwind`), so the kernel never reads the buffer
                // after the borrow ends. A descriptor that was closed meanwhile only fails the
                // send (`EBADF`); the shard's thread closes none while it is here, and a slot
                // names a socket only while its descriptor is registered there.
                if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                    break;
                }
                self.complete(&mut in_flight);
            }
            in_flight += 1;
        }
        self.complete(&mut in_flight);
        std::mem::forget(guard);
        &self.results
    }

    /// Submits what is queued and waits until every send in flight has completed, recording
    /// each result. With `MSG_DONTWAIT` the kernel completes every send while it is submitted,
    /// so this waits for nothing; it retries an `io_uring_enter` that was interrupted or found
    /// the kernel short of memory, and aborts on any other failure, after which it could not
    /// tell whether the kernel still holds the caller's buffers.
    fn complete(&mut self, in_flight: &mut usize) {
        while *in_flight > 0 {
            if let Err(error) = self.ring.submit_and_wait(*in_flight) {
                if !matches!(
                    error.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::ResourceBusy
                ) {
                    eprintln!("corecast: io_uring_enter failed on the shard's send ring: {error}");
                    std::process::abort();
                }
            }
            for completion in self.ring.completion() {
                let index = usize::try_from(completion.user_data()).expect("a send's index");
                self.results[index] = completion.result();
                *in_flight -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! `SendRing::send_all` over loopback TCP pairs: every reader gets its exact bytes, a full
    //! socket reports what it took and then `EAGAIN` without blocking, and a reset or closed
    //! peer fails only its own send while the rest of the batch goes through; batches larger
    //! than the ring go whole.

    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    const EAGAIN: i32 = 11;

    fn pairs(count: usize) -> Vec<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        (0..count)
            .map(|_| {
                let client = TcpStream::connect(addr).unwrap();
                let (server, _) = listener.accept().unwrap();
                server.set_nonblocking(true).unwrap();
                (server, client)
            })
            .collect()
    }

    /// An unregistered socket: sent to by descriptor.
    fn socket(stream: &TcpStream) -> Socket {
        Socket {
            slot: 0,
            fd: stream.as_raw_fd(),
        }
    }

    fn read_exact(stream: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut got = vec![0; len];
        stream.read_exact(&mut got).unwrap();
        got
    }

    #[test]
    fn every_socket_gets_its_own_bytes_in_batches_larger_than_the_ring() {
        let count = RING_ENTRIES as usize + 300;
        let mut pairs = pairs(count);
        let frames: Vec<Vec<u8>> = (0..count)
            .map(|i| format!("frame for socket {i}").into_bytes())
            .collect();
        let mut ring = SendRing::new(0).unwrap();
        let results = ring
            .send_all(
                pairs
                    .iter()
                    .zip(&frames)
                    .map(|((server, _), frame)| (socket(server), frame.as_slice())),
            )
            .to_vec();
        assert_eq!(results.len(), count);
        for (i, ((_, client), frame)) in pairs.iter_mut().zip(&frames).enumerate() {
            assert_eq!(results[i], frame.len() as i32, "socket {i}");
            assert_eq!(read_exact(client, frame.len()), *frame, "socket {i}");
        }
    }

    #[test]
    fn a_full_socket_takes_what_fits_then_reports_eagain_without_blocking() {
        let pairs = pairs(1);
        let server = socket(&pairs[0].0);
        let chunk = vec![7u8; 1 << 20];
        let mut ring = SendRing::new(0).unwrap();
        let mut taken = 0;
        let last = loop {
            let result = ring.send_all([(server, chunk.as_slice())])[0];
            if result <= 0 {
                break result;
            }
            taken += result as usize;
            assert!(taken < 1 << 30, "a socket nobody reads must fill up");
        };
        assert_eq!(last, -EAGAIN);
        assert!(taken > 0, "an empty socket takes some of the first chunk");
    }

    #[test]
    fn a_reset_or_closed_peer_fails_only_its_own_send() {
        let (servers, mut clients): (Vec<_>, Vec<_>) = pairs(3).into_iter().unzip();
        let reset = clients.remove(1);
        socket2::SockRef::from(&reset)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(reset);
        let frame = b"still delivered";
        let mut ring = SendRing::new(0).unwrap();
        // The reset reaches the server's socket asynchronously: send until its send fails.
        let mut rounds = 0;
        let failed = loop {
            let results = ring
                .send_all(servers.iter().map(|server| (socket(server), &frame[..])))
                .to_vec();
            rounds += 1;
            assert_eq!(results[0], frame.len() as i32);
            assert_eq!(results[2], frame.len() as i32);
            if results[1] < 0 {
                break results[1];
            }
            assert!(rounds < 1_000, "a send to a reset peer fails");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert!(failed != -EAGAIN, "a reset is an error, not a full socket");
        for client in &mut clients {
            for _ in 0..rounds {
                assert_eq!(read_exact(client, frame.len()), frame);
            }
        }
        let closed = Socket { slot: 0, fd: -1 };
        let results = ring.send_all([(closed, &frame[..])]).to_vec();
        assert_eq!(results, [-9], "a closed descriptor fails with EBADF");
    }

    #[test]
    fn registered_sockets_are_sent_to_by_slot_and_close_once_unregistered() {
        let (servers, mut clients): (Vec<_>, Vec<_>) = pairs(3).into_iter().unzip();
        let mut ring = SendRing::new(2).unwrap();
        assert_eq!(
            ring.registered.len(),
            2,
            "this kernel gives the ring a file table"
        );
        ring.register(0, servers[0].as_raw_fd());
        ring.register(1, servers[1].as_raw_fd());
        // Past the table's end: sent to by descriptor.
        ring.register(2, servers[2].as_raw_fd());
        let frame = b"by slot";
        let sends = servers.iter().enumerate().map(|(slot, server)| {
            let socket = Socket {
                slot,
                fd: server.as_raw_fd(),
            };
            (socket, &frame[..])
        });
        let results = ring.send_all(sends).to_vec();
        assert_eq!(results, [frame.len() as i32; 3]);
        for client in &mut clients {
            assert_eq!(read_exact(client, frame.len()), frame);
        }
        // A slot registered for another descriptor is not used for this one.
        let stale = Socket {
            slot: 0,
            fd: servers[1].as_raw_fd(),
        };
        assert_eq!(ring.send_all([(stale, &frame[..])]), [frame.len() as i32]);
        assert_eq!(read_exact(&mut clients[1], frame.len()), frame);

        ring.unregister(0);
        ring.unregister(0);
        let mut servers = servers.into_iter();
        drop(servers.next());
        let mut rest = [0; 1];
        assert_eq!(
            clients[0].read(&mut rest).unwrap(),
            0,
            "the peer sees the close: the table holds no reference to the socket"
        );
    }
}
