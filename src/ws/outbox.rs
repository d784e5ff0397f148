//! A connection's bounded queue of encoded frames waiting for the socket.
//!
//! The outbox holds `Bytes` only (shared with every other connection that gets the same frame)
//! and enforces both limits, in frames and in bytes. It never blocks and never grows past its
//! limits: a push that would overflow is refused, and the caller closes the connection with
//! 4008, so one slow client costs nobody else anything. It also knows how much of its front
//! frame the socket has already taken, which is what lets a writer coalesce frames into one
//! write and resume after a partial one.

use std::collections::VecDeque;

use bytes::Bytes;

/// The outbox refused a frame: the connection is a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Frames queued for one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Bytes>,
    /// Bytes of all queued frames, the written part of the front one included.
    bytes: usize,
    /// Bytes of the front frame already written to the socket.
    front_written: usize,
}

impl Outbox {
    /// Queues `frame`, unless that would pass `frames_max` or `bytes_max`.
    pub fn push(
        &mut self,
        frame: Bytes,
        frames_max: usize,
        bytes_max: usize,
    ) -> Result<(), Overflow> {
        if self.frames.len() >= frames_max || self.bytes + frame.len() > bytes_max {
            return Err(Overflow);
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn frames_len(&self) -> usize {
        self.frames.len()
    }

    pub fn bytes_len(&self) -> usize {
        self.bytes
    }

    /// The unwritten part of the front frame, if any.
    pub fn front(&self) -> Option<&[u8]> {
        self.frames
            .front()
            .map(|frame| &frame[self.front_written..])
    }

    /// Appends the unwritten bytes of queued frames to `out`, in order, stopping before the
    /// frame that would take `out` past `bytes_max` (but always taking at least the first).
    pub fn gather(&self, out: &mut Vec<u8>, bytes_max: usize) {
        for (i, frame) in self.frames.iter().enumerate() {
            let part = if i == 0 {
                &frame[self.front_written..]
            } else {
                &frame[..]
            };
            if i > 0 && out.len() + part.len() > bytes_max {
                break;
            }
            out.extend_from_slice(part);
        }
    }

    /// Records that the socket took `written_bytes` from the front; returns the whole frames
    /// that finished.
    pub fn advance(&mut self, mut written_bytes: usize) -> usize {
        let mut frames_done = 0;
        while written_bytes > 0 {
            let front = self
                .frames
                .front()
                .expect("cannot write more than was queued");
            let left = front.len() - self.front_written;
            if written_bytes < left {
                self.front_written += written_bytes;
                self.bytes -= written_bytes;
                break;
            }
            written_bytes -= left;
            self.bytes -= left;
            self.front_written = 0;
            self.frames.pop_front();
            frames_done += 1;
        }
        frames_done
    }

    /// Drops every queued frame (the connection is closing); returns how many were dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.frames.len();
        *self = Outbox::default();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_in_frames_and_bytes_refuse_without_queueing() {
        let mut outbox = Outbox::default();
        let frame = Bytes::from_static(b"0123456789");
        assert_eq!(outbox.push(frame.clone(), 2, 100), Ok(()));
        assert_eq!(outbox.push(frame.clone(), 2, 100), Ok(()));
        assert_eq!(outbox.push(frame.clone(), 2, 100), Err(Overflow));
        assert_eq!(outbox.push(frame.clone(), 10, 25), Err(Overflow));
        assert_eq!((outbox.frames_len(), outbox.bytes_len()), (2, 20));
    }

    #[test]
    fn partial_writes_resume_mid_frame_and_gather_coalesces() {
        let mut outbox = Outbox::default();
        for frame in [&b"aaaa"[..], b"bb", b"cccccc"] {
            outbox.push(Bytes::copy_from_slice(frame), 10, 100).unwrap();
        }
        let mut out = Vec::new();
        outbox.gather(&mut out, 7);
        assert_eq!(out, b"aaaabb");
        assert_eq!(outbox.advance(5), 1);
        assert_eq!(outbox.front(), Some(&b"b"[..]));
        assert_eq!(outbox.bytes_len(), 7);
        out.clear();
        outbox.gather(&mut out, 100);
        assert_eq!(out, b"bcccccc");
        assert_eq!(outbox.advance(7), 2);
        assert!(outbox.is_empty());
        assert_eq!(outbox.bytes_len(), 0);
    }
}
