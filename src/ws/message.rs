//! Messages from frames: fragment reassembly, UTF-8 validation and control-frame events.
//!
//! An [`Assembler`] is the per-connection half of RFC 6455 section 5.4: it accepts frames in
//! order, interleaved control frames included, and yields whole messages. It owns a buffer only
//! while a fragmented message is in flight and gives it back after, so idle connections hold none.
//! Like the frame codec it is pure: no socket, no clock.

use crate::ws::frame::{parse_close_payload, ClientFrame, ClosePayload, Opcode};

/// A buffer this large or larger is freed once its message is done, not kept for the next one.
const REASSEMBLY_KEEP_BYTES_MAX: usize = 4 * 1024;

/// What a client frame amounts to once reassembled.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message, valid UTF-8.
    Text(&'a str),
    /// A whole binary message (corecast commands are text, so only its arrival matters).
    Binary,
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
    /// The reassembled message exceeds `message_bytes_max`: close 1009.
    TooBig { max_bytes: usize },
}

impl MessageError {
    /// The close code RFC 6455 and the wire contract assign to this violation.
    pub fn close_code(&self) -> u16 {
        match self {
            MessageError::BadUtf8 => 1007,
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
        }
    }
}

/// The kind of a fragmented message in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Partial {
    Text,
    Binary { len_bytes: usize },
}

/// Reassembles one connection's fragmented messages.
#[derive(Debug, Default)]
pub struct Assembler {
    partial: Option<Partial>,
    text: Vec<u8>,
}

impl Assembler {
    /// Feeds one frame (already unmasked) with its payload. Returns the event it completes, if
    /// any: a fragment in the middle of a message completes nothing.
    pub fn push<'a>(
        &'a mut self,
        frame: ClientFrame,
        payload: &'a [u8],
        message_bytes_max: usize,
    ) -> Result<Option<Event<'a>>, MessageError> {
        match frame.opcode {
            Opcode::Ping => Ok(Some(Event::Ping(payload))),
            Opcode::Pong => Ok(Some(Event::Pong)),
            Opcode::Close => Ok(Some(Event::Close(parse_close_payload(payload)))),
            Opcode::Text | Opcode::Binary if self.partial.is_some() => {
                Err(MessageError::ExpectedContinuation)
            }
            Opcode::Text if frame.is_final => {
                let text = std::str::from_utf8(payload).map_err(|_| MessageError::BadUtf8)?;
                Ok(Some(Event::Text(text)))
            }
            Opcode::Binary if frame.is_final => Ok(Some(Event::Binary)),
            Opcode::Text => {
                self.check_len(payload.len(), message_bytes_max)?;
                self.text.extend_from_slice(payload);
                self.partial = Some(Partial::Text);
                Ok(None)
            }
            Opcode::Binary => {
                self.check_len(payload.len(), message_bytes_max)?;
                self.partial = Some(Partial::Binary {
                    len_bytes: payload.len(),
                });
                Ok(None)
            }
            Opcode::Continuation => self.continue_message(frame, payload, message_bytes_max),
        }
    }

    fn continue_message<'a>(
        &'a mut self,
        frame: ClientFrame,
        payload: &[u8],
        message_bytes_max: usize,
    ) -> Result<Option<Event<'a>>, MessageError> {
        let Some(partial) = self.partial else {
            return Err(MessageError::UnexpectedContinuation);
        };
        let so_far = match partial {
            Partial::Text => self.text.len(),
            Partial::Binary { len_bytes } => len_bytes,
        };
        self.check_len(so_far + payload.len(), message_bytes_max)?;
        match partial {
            Partial::Text => self.text.extend_from_slice(payload),
            Partial::Binary { len_bytes } => {
                self.partial = Some(Partial::Binary {
                    len_bytes: len_bytes + payload.len(),
                })
            }
        }
        if !frame.is_final {
            return Ok(None);
        }
        self.partial = None;
        match partial {
            Partial::Binary { .. } => Ok(Some(Event::Binary)),
            Partial::Text => {
                if self.text.capacity() > REASSEMBLY_KEEP_BYTES_MAX {
                    self.text.shrink_to(REASSEMBLY_KEEP_BYTES_MAX);
                }
                let text = std::str::from_utf8(&self.text).map_err(|_| MessageError::BadUtf8)?;
                Ok(Some(Event::Text(text)))
            }
        }
    }

    fn check_len(&self, len_bytes: usize, message_bytes_max: usize) -> Result<(), MessageError> {
        if len_bytes > message_bytes_max {
            return Err(MessageError::TooBig {
                max_bytes: message_bytes_max,
            });
        }
        Ok(())
    }

    /// Forgets a finished text message. Call after handling [`Event::Text`] from fragments.
    pub fn clear(&mut self) {
        self.text.clear();
        if self.text.capacity() > 0 && self.partial.is_none() {
            self.text = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: Opcode, is_final: bool, len: usize) -> ClientFrame {
        ClientFrame {
            opcode,
            is_final,
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
