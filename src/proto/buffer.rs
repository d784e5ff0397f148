//! A client connection's read buffer and the server-frame splitter over it.
//!
//! Owns the bytes a client (the Rust client's `Client` or a bench subscriber) has read but
//! not yet consumed. It never touches the socket: the connection reads into `spare()` and then
//! takes whole frames out with `next_frame()`, which says "need more" on partial input. The
//! buffer is allocated once per connection and reused for every read; it grows only when one
//! frame is larger than it, up to the caller's frame maximum, so steady-state receiving
//! allocates nothing.

use std::io::Cursor;
use std::ops::Range;

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Initial size of each connection's read buffer, in bytes. It holds the upgrade response and
/// a burst of small deliveries; larger means fewer reads when the reader falls behind, smaller
/// means less memory across the bench's 10,000 connections (4 KiB each is 40 MiB).
pub const READ_BUFFER_BYTES: usize = 4_096;

/// A frame header and where its payload sits in the buffer.
#[derive(Debug)]
pub struct Frame {
    pub opcode: OpCode,
    pub payload: Range<usize>,
}

/// Why the server's bytes are not frames a client can take. Every variant ends the
/// connection: the caller records it and stops reading (the Rust client's `Client` then
/// reconnects).
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The header is not RFC 6455 (a reserved opcode). Carries the parser's message.
    Malformed(String),
    /// A server frame carried a mask, which RFC 6455 forbids.
    Masked,
    /// A reserved bit was set: no client here negotiates an extension.
    ReservedBits,
    /// A message came in fragments; the contract says server frames have FIN set.
    Fragmented,
    /// A frame longer than the caller's maximum; carries its length and that maximum in bytes.
    TooLong { length_bytes: u64, max_bytes: u64 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed frame: {why}"),
            Self::Masked => f.write_str("server frame is masked"),
            Self::ReservedBits => f.write_str("server frame sets reserved bits"),
            Self::Fragmented => f.write_str("server sent a fragmented message"),
            Self::TooLong {
                length_bytes,
                max_bytes,
            } => write!(
                f,
                "server frame of {length_bytes} bytes is over the maximum of {max_bytes}"
            ),
        }
    }
}

/// Bytes read and not yet consumed live in `bytes[head..tail]`.
pub struct ReadBuffer {
    bytes: Vec<u8>,
    head: usize,
    tail: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        Self {
            bytes: vec![0; READ_BUFFER_BYTES],
            head: 0,
            tail: 0,
        }
    }
}

impl ReadBuffer {
    /// Room to read into: the unconsumed bytes are first moved to the front, so the room is
    /// never empty while a frame is incomplete (`next_frame` grows the buffer to fit it).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.head > 0 {
            self.bytes.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        &mut self.bytes[self.tail..]
    }

    /// Marks `length` bytes of `spare()` as read.
    pub fn commit(&mut self, length: usize) {
        assert!(self.tail + length <= self.bytes.len());
        self.tail += length;
    }

    /// The bytes read and not yet consumed.
    pub fn unread(&self) -> &[u8] {
        &self.bytes[self.head..self.tail]
    }

    /// Whether the unread bytes fill the whole buffer, so that a read has no room left.
    pub fn is_full(&self) -> bool {
        self.tail - self.head == self.bytes.len()
    }

    /// Consumes `length` unread bytes (the upgrade response head).
    pub fn consume(&mut self, length: usize) {
        assert!(self.head + length <= self.tail);
        self.head += length;
    }

    /// The payload bytes of a frame returned by `next_frame`, valid until the next `spare`.
    pub fn payload(&self, frame: &Frame) -> &[u8] {
        &self.bytes[frame.payload.clone()]
    }

    /// Takes the next whole frame, `Ok(None)` when more bytes are needed. A frame whose
    /// payload is over `frame_bytes_max` is refused before the buffer grows for it.
    pub fn next_frame(&mut self, frame_bytes_max: u64) -> Result<Option<Frame>, FrameError> {
        let mut cursor = Cursor::new(&self.bytes[self.head..self.tail]);
        let parsed = FrameHeader::parse(&mut cursor)
            .map_err(|error| FrameError::Malformed(error.to_string()))?;
        let Some((header, length)) = parsed else {
            return Ok(None);
        };
        if header.mask.is_some() {
            return Err(FrameError::Masked);
        }
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(FrameError::ReservedBits);
        }
        if !header.is_final || header.opcode == OpCode::Data(Data::Continue) {
            return Err(FrameError::Fragmented);
        }
        if length > frame_bytes_max {
            return Err(FrameError::TooLong {
                length_bytes: length,
                max_bytes: frame_bytes_max,
            });
        }
        let header_bytes =
            usize::try_from(cursor.position()).expect("a header is 14 bytes at most");
        let frame_bytes =
            header_bytes + usize::try_from(length).expect("bounded by frame_bytes_max");
        if self.tail - self.head < frame_bytes {
            if self.bytes.len() < frame_bytes {
                self.bytes.resize(frame_bytes, 0);
            }
            return Ok(None);
        }
        let start = self.head + header_bytes;
        self.head += frame_bytes;
        Ok(Some(Frame {
            opcode: header.opcode,
            payload: start..self.head,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::Control;

    /// The frame maximum of these tests, in bytes.
    const FRAME_BYTES_MAX: u64 = 16 * 1024 * 1024;

    fn feed(buffer: &mut ReadBuffer, bytes: &[u8]) {
        buffer.spare()[..bytes.len()].copy_from_slice(bytes);
        buffer.commit(bytes.len());
    }

    #[test]
    fn frames_come_out_whole_across_reads() {
        let mut buffer = ReadBuffer::default();
        feed(
            &mut buffer,
            &[0x81, 0x03, b'a', b'b', b'c', 0x89, 0x02, b'p'],
        );
        let text = buffer.next_frame(FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(text.opcode, OpCode::Data(Data::Text));
        assert_eq!(buffer.payload(&text), b"abc");
        assert!(buffer.next_frame(FRAME_BYTES_MAX).unwrap().is_none());
        feed(&mut buffer, b"q");
        let ping = buffer.next_frame(FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(ping.opcode, OpCode::Control(Control::Ping));
        assert_eq!(buffer.payload(&ping), b"pq");
        assert!(buffer.unread().is_empty());
    }

    #[test]
    fn a_frame_larger_than_the_buffer_grows_it_once() {
        let mut buffer = ReadBuffer::default();
        let length = READ_BUFFER_BYTES + 10;
        let mut frame = vec![0x81, 126];
        frame.extend_from_slice(&u16::try_from(length).unwrap().to_be_bytes());
        frame.extend(std::iter::repeat_n(b'x', length));
        let mut sent = 0;
        let mut reads = 0;
        let taken = loop {
            if let Some(taken) = buffer.next_frame(FRAME_BYTES_MAX).unwrap() {
                break taken;
            }
            let room = buffer.spare().len().min(frame.len() - sent);
            assert!(room > 0, "an incomplete frame always leaves room to read");
            feed(&mut buffer, &frame[sent..sent + room]);
            sent += room;
            reads += 1;
        };
        assert_eq!(reads, 2);
        assert_eq!(buffer.payload(&taken).len(), length);
    }

    #[test]
    fn forbidden_frames_are_refused() {
        let cases: [(&[u8], FrameError); 4] = [
            (&[0x81, 0x80, 0, 0, 0, 0], FrameError::Masked),
            (&[0xC1, 0x00], FrameError::ReservedBits),
            (&[0x01, 0x00], FrameError::Fragmented),
            (
                &[0x82, 127, 0, 0, 0, 0, 0x01, 0, 0, 1],
                FrameError::TooLong {
                    length_bytes: FRAME_BYTES_MAX + 1,
                    max_bytes: FRAME_BYTES_MAX,
                },
            ),
        ];
        for (bytes, expected) in cases {
            let mut buffer = ReadBuffer::default();
            feed(&mut buffer, bytes);
            assert_eq!(buffer.next_frame(FRAME_BYTES_MAX).unwrap_err(), expected);
        }
        let mut buffer = ReadBuffer::default();
        feed(&mut buffer, &[0x83, 0x00]);
        assert!(matches!(
            buffer.next_frame(FRAME_BYTES_MAX),
            Err(FrameError::Malformed(_))
        ));
    }
}
