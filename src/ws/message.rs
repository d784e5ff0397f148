//! Messages from frames: fragment reassembly, inflation, UTF-8 validation and control-frame
//! events.
//!
//! An [`Assembler`] is the per-connection half of RFC 6455 section 5.4 (and of RFC 7692 section
//! 6.2 when permessage-deflate was negotiated): it accepts frames in order, interleaved control
//! frames included, and yields whole messages, inflated. It owns a buffer (and an inflater) only
//! while a fragmented or compressed message is in flight and gives them back after, so idle
//! connections hold none. `message_bytes_max` bounds what it holds, counted after inflation.
//! Like the frame codec it is pure: no socket, no clock.

use crate::ws::deflate::{InflateError, Inflater};
use crate::ws::frame::{
    parse_close_payload, ClientFrame, ClosePayload, DataKind, Opcode, PartialFrame,
};

/// Bytes of an arriving frame unmasked at once to check their UTF-8 (see
/// [`Assembler::check_arriving`]).
const PEEK_CHUNK_BYTES: usize = 4 * 1024;

/// What a client frame amounts to once reassembled (and inflated).
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message, valid UTF-8.
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A ping to answer with a pong carrying this payload.
    Ping(&'a [u8]),
    /// A pong (proof of life, nothing to do).
    Pong,
    /// The client started or answered the close handshake.
    Close(ClosePayload),
}

/// Why a sequence of frames is not a valid message stream, with the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageError {
    /// A text message that is not UTF-8: close 1007.
    BadUtf8,
    /// A continuation frame with no message in flight: close 1002.
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is in flight: close 1002.
    ExpectedContinuation,
    /// The reassembled (or inflated) message exceeds `message_bytes_max`: close 1009.
    TooBig { max_bytes: usize },
    /// A compressed message that is not a deflate stream: close 1007.
    BadDeflate,
}

impl MessageError {
    /// The close code RFC 6455 and the wire contract assign to this violation.
    pub fn close_code(&self) -> u16 {
        match self {
            MessageError::BadUtf8 | MessageError::BadDeflate => 1007,
            MessageError::TooBig { .. } => 1009,
            MessageError::UnexpectedContinuation | MessageError::ExpectedContinuation => 1002,
        }
    }
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::BadUtf8 => f.write_str("text message is not valid UTF-8"),
            MessageError::UnexpectedContinuation => f.write_str("continuation without a message"),
            MessageError::ExpectedContinuation => {
                f.write_str("new message inside a fragmented one")
            }
            MessageError::TooBig { max_bytes } => {
                write!(f, "message larger than the {max_bytes}-byte limit")
            }
            MessageError::BadDeflate => f.write_str("compressed message cannot be inflated"),
        }
    }
}

/// A message in flight: its kind, and whether its frames carry deflated bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Partial {
    kind: DataKind,
    compressed: bool,
}

/// UTF-8 checked so far of a text frame that has not fully arrived.
#[derive(Debug, Default)]
struct Peek {
    /// Payload bytes of the arriving frame already checked.
    checked: usize,
    /// The start of a character whose other bytes have not arrived yet.
    carry: [u8; 4],
    carry_len: usize,
}

/// Reassembles one connection's fragmented messages and inflates its compressed ones.
///
/// Text is checked as it arrives, fragment by fragment and even inside a frame that is still
/// arriving ([`Assembler::check_arriving`]), so invalid UTF-8 closes the connection at the first
/// bad byte, not at the end of the message (RFC 6455 section 8.1; Autobahn's "fail fast").
#[derive(Debug, Default)]
pub struct Assembler {
    partial: Option<Partial>,
    /// The message so far: reassembled, and inflated when compressed.
    buf: Vec<u8>,
    /// Bytes at the start of `buf` known to be valid UTF-8; what follows is at most the start
    /// of one character.
    checked: usize,
    /// Made for a compressed message and dropped after it, so an idle connection holds none.
    inflater: Option<Box<Inflater>>,
    peek: Peek,
}

impl Assembler {
    /// Feeds one frame (already unmasked) with its payload. Returns the event it completes, if
    /// any: a fragment in the middle of a message completes nothing. Call [`Assembler::clear`]
    /// after handling a `Text` or `Binary` event.
    pub fn push<'a>(
        &'a mut self,
        frame: ClientFrame,
        payload: &'a [u8],
        message_bytes_max: usize,
    ) -> Result<Option<Event<'a>>, MessageError> {
        self.peek = Peek::default();
        let kind = match frame.opcode {
            Opcode::Ping => return Ok(Some(Event::Ping(payload))),
            Opcode::Pong => return Ok(Some(Event::Pong)),
            Opcode::Close => return Ok(Some(Event::Close(parse_close_payload(payload)))),
            Opcode::Text | Opcode::Binary if self.partial.is_some() => {
                return Err(MessageError::ExpectedContinuation)
            }
            Opcode::Continuation => {
                let Some(partial) = self.partial else {
                    return Err(MessageError::UnexpectedContinuation);
                };
                self.append(partial, payload, message_bytes_max)?;
                return self.finish_if(frame.is_final, message_bytes_max);
            }
            Opcode::Text => DataKind::Text,
            Opcode::Binary => DataKind::Binary,
        };
        if frame.is_final && !frame.compressed {
            // A whole message in one frame: no copy.
            return match kind {
                DataKind::Text => {
                    let text = std::str::from_utf8(payload).map_err(|_| MessageError::BadUtf8)?;
                    Ok(Some(Event::Text(text)))
                }
                DataKind::Binary => Ok(Some(Event::Binary(payload))),
            };
        }
        let partial = Partial {
            kind,
            compressed: frame.compressed,
        };
        self.partial = Some(partial);
        self.buf.clear();
        self.checked = 0;
        self.append(partial, payload, message_bytes_max)?;
        self.finish_if(frame.is_final, message_bytes_max)
    }

    /// Adds a frame's payload to the message in flight, inflating it if compressed.
    fn append(
        &mut self,
        partial: Partial,
        payload: &[u8],
        message_bytes_max: usize,
    ) -> Result<(), MessageError> {
        if partial.compressed {
            self.inflater
                .get_or_insert_with(Box::default)
                .push(payload, &mut self.buf, message_bytes_max)
                .map_err(|err| inflate_failure(err, message_bytes_max))?;
        } else {
            check_len(self.buf.len() + payload.len(), message_bytes_max)?;
            self.buf.extend_from_slice(payload);
        }
        if partial.kind == DataKind::Text {
            self.check_utf8(false)?;
        }
        Ok(())
    }

    /// Checks the text added since the last check. An incomplete character at the end is
    /// fine until the message ends (`complete`).
    fn check_utf8(&mut self, complete: bool) -> Result<(), MessageError> {
        match std::str::from_utf8(&self.buf[self.checked..]) {
            Ok(_) => self.checked = self.buf.len(),
            Err(err) if err.error_len().is_some() || complete => return Err(MessageError::BadUtf8),
            Err(err) => self.checked += err.valid_up_to(),
        }
        Ok(())
    }

    fn finish_if<'a>(
        &'a mut self,
        is_final: bool,
        message_bytes_max: usize,
    ) -> Result<Option<Event<'a>>, MessageError> {
        if !is_final {
            return Ok(None);
        }
        let partial = self.partial.take().expect("a message is in flight");
        if partial.compressed {
            let inflater = self.inflater.as_mut().expect("made by the first frame");
            inflater
                .finish(&mut self.buf, message_bytes_max)
                .map_err(|err| inflate_failure(err, message_bytes_max))?;
        }
        match partial.kind {
            DataKind::Binary => Ok(Some(Event::Binary(&self.buf))),
            DataKind::Text => {
                self.check_utf8(true)?;
                let text = std::str::from_utf8(&self.buf).map_err(|_| MessageError::BadUtf8)?;
                Ok(Some(Event::Text(text)))
            }
        }
    }

    /// Checks the UTF-8 of a text frame that has not fully arrived: `head` is its header and
    /// `arrived` the (still masked) payload bytes read so far. Only new bytes are looked at, so
    /// a large frame arriving in many reads is checked once overall. Compressed frames are
    /// checked once inflated, when complete.
    pub fn check_arriving(
        &mut self,
        head: PartialFrame,
        arrived: &[u8],
    ) -> Result<(), MessageError> {
        let uncompressed_text = Some(Partial {
            kind: DataKind::Text,
            compressed: false,
        });
        let is_text = match head.opcode {
            Opcode::Text => !head.compressed && self.partial.is_none(),
            Opcode::Continuation => self.partial == uncompressed_text,
            _ => false,
        };
        if !is_text {
            return Ok(());
        }
        if self.peek.checked == 0 && head.opcode == Opcode::Continuation {
            // A character may have started in the previous fragment.
            let tail = &self.buf[self.checked..];
            self.peek.carry[..tail.len()].copy_from_slice(tail);
            self.peek.carry_len = tail.len();
        }
        let arrived = &arrived[..arrived.len().min(head.payload_len)];
        let mut chunk = [0u8; PEEK_CHUNK_BYTES + 4];
        while self.peek.checked < arrived.len() {
            let take = (arrived.len() - self.peek.checked).min(PEEK_CHUNK_BYTES);
            let carry_len = self.peek.carry_len;
            chunk[..carry_len].copy_from_slice(&self.peek.carry[..carry_len]);
            let new = &arrived[self.peek.checked..self.peek.checked + take];
            for (at, (byte, out)) in new.iter().zip(&mut chunk[carry_len..]).enumerate() {
                *out = byte ^ head.mask[(self.peek.checked + at) % 4];
            }
            let text = &chunk[..carry_len + take];
            self.peek.carry_len = match std::str::from_utf8(text) {
                Ok(_) => 0,
                Err(err) if err.error_len().is_some() => return Err(MessageError::BadUtf8),
                Err(err) => text.len() - err.valid_up_to(),
            };
            let rest = text.len() - self.peek.carry_len;
            self.peek.carry[..self.peek.carry_len].copy_from_slice(&text[rest..]);
            self.peek.checked += take;
        }
        Ok(())
    }

    /// Forgets a finished message. Call after handling [`Event::Text`] or [`Event::Binary`].
    pub fn clear(&mut self) {
        if self.partial.is_some() {
            return;
        }
        self.buf = Vec::new();
        self.checked = 0;
        self.inflater = None;
    }
}

fn check_len(len_bytes: usize, message_bytes_max: usize) -> Result<(), MessageError> {
    if len_bytes > message_bytes_max {
        return Err(MessageError::TooBig {
            max_bytes: message_bytes_max,
        });
    }
    Ok(())
}

fn inflate_failure(err: InflateError, message_bytes_max: usize) -> MessageError {
    match err {
        InflateError::TooBig => MessageError::TooBig {
            max_bytes: message_bytes_max,
        },
        InflateError::Corrupt => MessageError::BadDeflate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: Opcode, is_final: bool, len: usize) -> ClientFrame {
        ClientFrame {
            opcode,
            is_final,
            compressed: false,
            payload_start: 0,
            payload_end: len,
            frame_len: len,
        }
    }

    #[test]
    fn fragments_reassemble_around_an_interleaved_ping() {
        let mut asm = Assembler::default();
        assert_eq!(
            asm.push(frame(Opcode::Text, false, 4), b"{\"ty", 100),
            Ok(None)
        );
        assert_eq!(
            asm.push(frame(Opcode::Ping, true, 1), b"p", 100),
            Ok(Some(Event::Ping(b"p")))
        );
        let done = asm.push(frame(Opcode::Continuation, true, 4), b"pe\"}", 100);
        assert_eq!(done, Ok(Some(Event::Text("{\"type\"}"))));
        asm.clear();
        assert_eq!(
            asm.push(frame(Opcode::Text, true, 2), b"ok", 100),
            Ok(Some(Event::Text("ok")))
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_valid_only_whole() {
        let mut asm = Assembler::default();
        let euro = "€".as_bytes();
        assert_eq!(
            asm.push(frame(Opcode::Text, false, 1), &euro[..1], 100),
            Ok(None)
        );
        assert_eq!(
            asm.push(frame(Opcode::Continuation, true, 2), &euro[1..], 100),
            Ok(Some(Event::Text("€")))
        );
        assert_eq!(
            asm.push(frame(Opcode::Text, true, 1), b"\xff", 100),
            Err(MessageError::BadUtf8)
        );
    }

    fn compressed(opcode: Opcode, is_final: bool) -> ClientFrame {
        ClientFrame {
            compressed: true,
            ..frame(opcode, is_final, 0)
        }
    }

    fn deflated(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::ws::deflate::compress_into(payload, &mut out);
        out
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_has_it() {
        let mut asm = Assembler::default();
        assert_eq!(
            asm.push(frame(Opcode::Text, false, 2), b"ok", 100),
            Ok(None)
        );
        // 0xF4 0x90 starts a code point above U+10FFFF: wrong before the message ends.
        assert_eq!(
            asm.push(frame(Opcode::Continuation, false, 2), b"\xf4\x90", 100),
            Err(MessageError::BadUtf8)
        );
        // A character cut at the end of a fragment is fine until the message ends.
        let mut asm = Assembler::default();
        assert_eq!(
            asm.push(frame(Opcode::Text, false, 1), b"\xe2", 100),
            Ok(None)
        );
        assert_eq!(
            asm.push(frame(Opcode::Continuation, true, 1), b"\x82", 100),
            Err(MessageError::BadUtf8)
        );
    }

    fn masked(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        payload
            .iter()
            .enumerate()
            .map(|(at, byte)| byte ^ mask[at % 4])
            .collect()
    }

    #[test]
    fn a_text_frame_still_arriving_fails_fast() {
        let mask = [1, 2, 3, 4];
        let head = |opcode, payload_len| PartialFrame {
            opcode,
            compressed: false,
            mask,
            payload_start: 6,
            payload_len,
        };
        let payload = masked(b"caf\xc3\xa9 \xf4\x90\x80\x80 end", mask);
        let mut asm = Assembler::default();
        // Arriving a byte at a time: fine up to the bad sequence, refused at its second byte.
        for cut in 0..=5 {
            asm.check_arriving(head(Opcode::Text, payload.len()), &payload[..cut])
                .unwrap();
        }
        asm.check_arriving(head(Opcode::Text, payload.len()), &payload[..7])
            .unwrap();
        assert_eq!(
            asm.check_arriving(head(Opcode::Text, payload.len()), &payload[..8]),
            Err(MessageError::BadUtf8)
        );
        // A continuation picks up the character its message's last fragment started.
        let mut asm = Assembler::default();
        assert_eq!(
            asm.push(frame(Opcode::Text, false, 1), b"\xe2", 100),
            Ok(None)
        );
        let good = masked(b"\x82\xac!", mask);
        asm.check_arriving(head(Opcode::Continuation, 9), &good)
            .unwrap();
        let mut asm = Assembler::default();
        asm.push(frame(Opcode::Text, false, 1), b"\xe2", 100)
            .unwrap();
        let bad = masked(b"\x82A", mask);
        assert_eq!(
            asm.check_arriving(head(Opcode::Continuation, 9), &bad),
            Err(MessageError::BadUtf8)
        );
        // Binary is not text.
        let mut asm = Assembler::default();
        asm.check_arriving(head(Opcode::Binary, 4), &masked(b"\xff\xff", mask))
            .unwrap();
    }

    #[test]
    fn compressed_messages_inflate_whole_or_fragmented() {
        let text = "héllo ".repeat(50);
        let whole = deflated(text.as_bytes());
        let mut asm = Assembler::default();
        assert_eq!(
            asm.push(compressed(Opcode::Text, true), &whole, 1000),
            Ok(Some(Event::Text(&text)))
        );
        asm.clear();
        let (first, rest) = whole.split_at(whole.len() / 2);
        assert_eq!(
            asm.push(compressed(Opcode::Binary, false), first, 1000),
            Ok(None)
        );
        assert_eq!(
            asm.push(frame(Opcode::Continuation, true, rest.len()), rest, 1000),
            Ok(Some(Event::Binary(text.as_bytes())))
        );
        asm.clear();
        assert!(
            asm.inflater.is_none(),
            "an idle connection holds no inflater"
        );
        assert_eq!(
            asm.push(compressed(Opcode::Text, true), &deflated(b"\xff"), 1000),
            Err(MessageError::BadUtf8)
        );
    }

    #[test]
    fn the_inflated_size_is_what_the_limit_counts() {
        let bomb = deflated(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 100 * 1024);
        let mut asm = Assembler::default();
        let err = asm
            .push(compressed(Opcode::Text, true), &bomb, 100 * 1024)
            .unwrap_err();
        assert_eq!(
            err,
            MessageError::TooBig {
                max_bytes: 100 * 1024
            }
        );
        assert_eq!(err.close_code(), 1009);
        let mut asm = Assembler::default();
        assert_eq!(
            asm.push(compressed(Opcode::Text, true), &[0xff, 0xff], 100),
            Err(MessageError::BadDeflate)
        );
    }

    #[test]
    fn stream_violations_are_refused() {
        let mut asm = Assembler::default();
        assert_eq!(
            asm.push(frame(Opcode::Continuation, true, 0), b"", 100),
            Err(MessageError::UnexpectedContinuation)
        );
        assert_eq!(
            asm.push(frame(Opcode::Binary, false, 1), b"x", 100),
            Ok(None)
        );
        assert_eq!(
            asm.push(frame(Opcode::Text, true, 1), b"x", 100),
            Err(MessageError::ExpectedContinuation)
        );
        let err = asm
            .push(frame(Opcode::Continuation, false, 100), &[0; 100], 100)
            .unwrap_err();
        assert_eq!(
            (err, err.close_code()),
            (MessageError::TooBig { max_bytes: 100 }, 1009)
        );
    }
}
