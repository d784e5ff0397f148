//! RFC 6455 frames as pure functions over bytes: parse and unmask client frames, build server frames.
//!
//! This module owns the frame-level rules a server must enforce (masking required, reserved bits
//! and opcodes, control-frame shape, size limits) and the one place server frames are built.
//! tungstenite's `FrameHeader` does the header arithmetic; this module never touches a socket,
//! never allocates on the parse path, and returns `Ok(None)` on partial input, so it can be driven
//! with byte literals in tests and by a fuzzer.

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Largest header a server frame can need (2 bytes plus an 8-byte length; no mask).
pub const SERVER_HEADER_BYTES_MAX: usize = 10;

/// Largest control-frame payload (RFC 6455 section 5.5).
const CONTROL_PAYLOAD_BYTES_MAX: u64 = 125;

/// The kinds of client frame corecast accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

/// A parsed, unmasked client frame. Its payload is `buf[payload_start..payload_end]` of the
/// buffer given to [`parse_client_frame`], and `frame_len` bytes of that buffer were consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFrame {
    pub opcode: Opcode,
    pub is_final: bool,
    /// RSV1 on the first frame of a message: its payload is deflated (RFC 7692).
    pub compressed: bool,
    pub payload_start: usize,
    pub payload_end: usize,
    pub frame_len: usize,
}

/// Why a client frame was refused. Each maps to the close code the connection must send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The client did not mask its frame: close 1002.
    Unmasked,
    /// RSV2 or RSV3 set, or RSV1 without permessage-deflate or on a frame that cannot carry
    /// it (a continuation or control frame): close 1002.
    ReservedBits,
    /// An opcode RFC 6455 reserves: close 1002.
    ReservedOpcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes: close 1002.
    BadControlFrame,
    /// A payload over `frame_bytes_max`: close 1009.
    TooBig { len_bytes: u64, max_bytes: usize },
    /// Bytes tungstenite cannot read as a frame header: close 1002.
    Malformed,
}

impl FrameError {
    /// The close code RFC 6455 and the wire contract assign to this violation.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig { .. } => 1009,
            _ => 1002,
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Unmasked => f.write_str("client frames must be masked"),
            FrameError::ReservedBits => f.write_str("reserved bits set"),
            FrameError::ReservedOpcode(code) => write!(f, "reserved opcode {code}"),
            FrameError::BadControlFrame => {
                f.write_str("control frames must be final and at most 125 bytes")
            }
            FrameError::TooBig {
                len_bytes,
                max_bytes,
            } => write!(f, "frame of {len_bytes} bytes; the limit is {max_bytes}"),
            FrameError::Malformed => f.write_str("malformed frame header"),
        }
    }
}

/// Parses one client frame from the start of `buf` and unmasks its payload in place.
/// Returns `Ok(None)` when `buf` holds only part of a frame; nothing is modified then.
/// The size limit is checked from the header alone, before the payload arrives.
/// `deflate`: the connection negotiated permessage-deflate, so RSV1 may mark the first frame
/// of a data message as compressed.
pub fn parse_client_frame(
    buf: &mut [u8],
    frame_bytes_max: usize,
    deflate: bool,
) -> Result<Option<ClientFrame>, FrameError> {
    let mut cursor = Cursor::new(&*buf);
    let (header, len_bytes) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(tungstenite::Error::Protocol(ProtocolError::InvalidOpcode(code))) => {
            return Err(FrameError::ReservedOpcode(code))
        }
        Err(_) => return Err(FrameError::Malformed),
    };
    let header_len = usize::try_from(cursor.position()).expect("a header is at most 14 bytes");
    if header.rsv2 || header.rsv3 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = match header.opcode {
        OpCode::Data(Data::Continue) => Opcode::Continuation,
        OpCode::Data(Data::Text) => Opcode::Text,
        OpCode::Data(Data::Binary) => Opcode::Binary,
        OpCode::Control(Control::Close) => Opcode::Close,
        OpCode::Control(Control::Ping) => Opcode::Ping,
        OpCode::Control(Control::Pong) => Opcode::Pong,
        OpCode::Data(Data::Reserved(code)) | OpCode::Control(Control::Reserved(code)) => {
            return Err(FrameError::ReservedOpcode(code))
        }
    };
    let is_control = matches!(opcode, Opcode::Close | Opcode::Ping | Opcode::Pong);
    if header.rsv1 && !(deflate && matches!(opcode, Opcode::Text | Opcode::Binary)) {
        return Err(FrameError::ReservedBits);
    }
    if is_control && (!header.is_final || len_bytes > CONTROL_PAYLOAD_BYTES_MAX) {
        return Err(FrameError::BadControlFrame);
    }
    let Some(mask) = header.mask else {
        return Err(FrameError::Unmasked);
    };
    if len_bytes > frame_bytes_max as u64 {
        return Err(FrameError::TooBig {
            len_bytes,
            max_bytes: frame_bytes_max,
        });
    }
    let payload_len = usize::try_from(len_bytes).expect("bounded by frame_bytes_max");
    let frame_len = header_len + payload_len;
    if buf.len() < frame_len {
        return Ok(None);
    }
    unmask(&mut buf[header_len..frame_len], mask);
    Ok(Some(ClientFrame {
        opcode,
        is_final: header.is_final,
        compressed: header.rsv1,
        payload_start: header_len,
        payload_end: frame_len,
        frame_len,
    }))
}

/// The start of a client frame whose payload has not fully arrived: what the connection needs
/// to check the part that has (UTF-8 fails fast, before the frame is complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialFrame {
    pub opcode: Opcode,
    pub compressed: bool,
    pub mask: [u8; 4],
    pub payload_start: usize,
    pub payload_len: usize,
}

/// Reads the header of the incomplete frame at the start of `buf`, for which
/// [`parse_client_frame`] returned `Ok(None)` (so its header, if complete, is valid). `None`
/// while the header itself is incomplete.
pub fn partial_frame(buf: &[u8]) -> Option<PartialFrame> {
    let mut cursor = Cursor::new(buf);
    let (header, len_bytes) = FrameHeader::parse(&mut cursor).ok()??;
    let opcode = match header.opcode {
        OpCode::Data(Data::Continue) => Opcode::Continuation,
        OpCode::Data(Data::Text) => Opcode::Text,
        OpCode::Data(Data::Binary) => Opcode::Binary,
        _ => return None,
    };
    Some(PartialFrame {
        opcode,
        compressed: header.rsv1,
        mask: header.mask?,
        payload_start: cursor.position() as usize,
        payload_len: usize::try_from(len_bytes).ok()?,
    })
}

/// Unmasks a client payload in place (RFC 6455 section 5.3). tungstenite keeps its own masking
/// private, so this is the one codec step written here; four bytes at a time, which the compiler
/// vectorizes.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let mask_word = u32::from_ne_bytes(mask);
    let mut words = payload.chunks_exact_mut(4);
    for word in &mut words {
        let value = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]) ^ mask_word;
        word.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, mask_byte) in words.into_remainder().iter_mut().zip(mask) {
        *byte ^= mask_byte;
    }
}

fn server_header(opcode: OpCode) -> FrameHeader {
    FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    }
}

/// The kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    Text,
    Binary,
}

/// Builds a complete, final server data frame of `kind` whose payload `write_payload` appends
/// to the buffer, with RSV1 set when `compressed` (the payload is then deflated; see
/// [`crate::ws::deflate`]). The payload is written once, after room for the largest header;
/// the header is then written just in front of it, so no byte is copied twice. Returns the
/// frame and its header length.
pub fn data_frame_with(
    kind: DataKind,
    compressed: bool,
    payload_bytes_hint: usize,
    write_payload: impl FnOnce(&mut BytesMut),
) -> (Bytes, usize) {
    let mut buf = BytesMut::with_capacity(SERVER_HEADER_BYTES_MAX + payload_bytes_hint);
    buf.put_bytes(0, SERVER_HEADER_BYTES_MAX);
    write_payload(&mut buf);
    let payload_len = (buf.len() - SERVER_HEADER_BYTES_MAX) as u64;
    let opcode = match kind {
        DataKind::Text => Data::Text,
        DataKind::Binary => Data::Binary,
    };
    let header = FrameHeader {
        rsv1: compressed,
        ..server_header(OpCode::Data(opcode))
    };
    let header_len = header.len(payload_len);
    let start = SERVER_HEADER_BYTES_MAX - header_len;
    header
        .format(payload_len, &mut &mut buf[start..SERVER_HEADER_BYTES_MAX])
        .expect("the header fits the room reserved for it");
    let frame = buf.freeze().slice(start..);
    (frame, header_len)
}

/// A server data frame carrying `payload`, deflated when `compressed`.
pub fn data_frame(kind: DataKind, compressed: bool, payload: &[u8]) -> Bytes {
    let hint = if compressed {
        payload.len() / 2 + 64
    } else {
        payload.len()
    };
    data_frame_with(kind, compressed, hint, |buf| {
        if compressed {
            let mut deflated = Vec::with_capacity(hint);
            crate::ws::deflate::compress_into(payload, &mut deflated);
            buf.extend_from_slice(&deflated);
        } else {
            buf.extend_from_slice(payload);
        }
    })
    .0
}

/// The compressed twin of a complete, uncompressed, final server text frame: the same message
/// deflated without context, RSV1 set. Built once per published message (see `ingest::encode`).
pub fn deflated_twin(frame: &[u8]) -> Bytes {
    assert_eq!(frame[0], 0x81, "a final, uncompressed server text frame");
    let payload = &frame[server_header_len(frame)..];
    data_frame(DataKind::Text, true, payload)
}

/// The header length of a complete server frame (unmasked), read from its length byte.
pub fn server_header_len(frame: &[u8]) -> usize {
    match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// Builds a complete server text frame whose payload `write_payload` appends to the buffer
/// (see [`data_frame_with`]). Returns the frame and its header length.
pub fn text_frame_with(
    payload_bytes_hint: usize,
    write_payload: impl FnOnce(&mut BytesMut),
) -> (Bytes, usize) {
    data_frame_with(DataKind::Text, false, payload_bytes_hint, write_payload)
}

/// Builds a complete server frame of any opcode around `payload`.
fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = server_header(opcode);
    let mut buf = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
    header
        .format(payload.len() as u64, &mut buf)
        .expect("writing to a Vec cannot fail");
    buf.extend_from_slice(payload);
    Bytes::from(buf)
}

/// A server ping with an empty payload.
pub fn ping_frame() -> Bytes {
    frame(OpCode::Control(Control::Ping), &[])
}

/// The pong answering a client ping with `payload`.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    frame(OpCode::Control(Control::Pong), payload)
}

/// A close frame with `code` and `reason`, the reason cut to fit a control frame on a char
/// boundary.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(CONTROL_PAYLOAD_BYTES_MAX as usize - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(OpCode::Control(Control::Close), &payload)
}

/// Why a client's close frame payload is invalid, as the close code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosePayload {
    /// No code given: answer 1000.
    Empty,
    /// A valid code to echo.
    Code(u16),
    /// A 1-byte payload or a code no endpoint may send: answer 1002.
    Invalid,
    /// A reason that is not UTF-8: answer 1007.
    BadUtf8,
}

/// Reads a client close payload (RFC 6455 section 5.5.1 and 7.4).
pub fn parse_close_payload(payload: &[u8]) -> ClosePayload {
    match payload {
        [] => ClosePayload::Empty,
        [_] => ClosePayload::Invalid,
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !CloseCode::from(code).is_allowed() {
                ClosePayload::Invalid
            } else if std::str::from_utf8(reason).is_err() {
                ClosePayload::BadUtf8
            } else {
                ClosePayload::Code(code)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut out = vec![first, 0x80 | payload.len() as u8];
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    #[test]
    fn rfc_example_masked_hello_unmasks_in_place() {
        let mut buf = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let frame = parse_client_frame(&mut buf, 1024, false).unwrap().unwrap();
        assert_eq!(frame.opcode, Opcode::Text);
        assert!(frame.is_final);
        assert_eq!(&buf[frame.payload_start..frame.payload_end], b"Hello");
        assert_eq!(frame.frame_len, 11);
    }

    #[test]
    fn partial_input_needs_more_and_changes_nothing() {
        let full = masked(0x81, b"Hello");
        for cut in 0..full.len() {
            let mut part = full[..cut].to_vec();
            assert_eq!(
                parse_client_frame(&mut part, 1024, false),
                Ok(None),
                "cut at {cut}"
            );
            assert_eq!(part, full[..cut]);
        }
    }

    #[test]
    fn violations_map_to_close_codes() {
        let mut unmasked = vec![0x81, 0x02, b'h', b'i'];
        assert_eq!(
            parse_client_frame(&mut unmasked, 1024, false),
            Err(FrameError::Unmasked)
        );
        let mut rsv = masked(0xC1, b"hi");
        assert_eq!(
            parse_client_frame(&mut rsv, 1024, false),
            Err(FrameError::ReservedBits)
        );
        let mut opcode = masked(0x83, b"hi");
        assert_eq!(
            parse_client_frame(&mut opcode, 1024, false),
            Err(FrameError::ReservedOpcode(3))
        );
        let mut fragmented_ping = masked(0x09, b"");
        assert_eq!(
            parse_client_frame(&mut fragmented_ping, 1024, false),
            Err(FrameError::BadControlFrame)
        );
        let mut big = masked(0x81, &[b'a'; 100]);
        let err = parse_client_frame(&mut big, 99, false).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooBig {
                len_bytes: 100,
                max_bytes: 99
            }
        );
        assert_eq!(err.close_code(), 1009);
    }

    #[test]
    fn rsv1_marks_a_compressed_data_frame_only_with_deflate() {
        let mut text = masked(0xC1, b"hi");
        let frame = parse_client_frame(&mut text, 1024, true).unwrap().unwrap();
        assert!(frame.compressed);
        assert_eq!(frame.opcode, Opcode::Text);
        let mut binary = masked(0x42, b"hi");
        assert!(
            parse_client_frame(&mut binary, 1024, true)
                .unwrap()
                .unwrap()
                .compressed
        );
        let mut plain = masked(0x81, b"hi");
        assert!(
            !parse_client_frame(&mut plain, 1024, true)
                .unwrap()
                .unwrap()
                .compressed
        );
        // RFC 7692 section 6.1: RSV1 on a continuation or control frame is an error.
        for first in [0xC0, 0xC9, 0xC8] {
            let mut bad = masked(first, b"");
            assert_eq!(
                parse_client_frame(&mut bad, 1024, true),
                Err(FrameError::ReservedBits),
                "{first:#x}"
            );
        }
        let mut rsv2 = masked(0xA1, b"hi");
        assert_eq!(
            parse_client_frame(&mut rsv2, 1024, true),
            Err(FrameError::ReservedBits)
        );
    }

    #[test]
    fn a_partial_frame_shows_its_header() {
        let full = masked(0x01, b"Hello");
        assert_eq!(partial_frame(&full[..1]), None);
        let head = partial_frame(&full[..8]).unwrap();
        assert_eq!(
            head,
            PartialFrame {
                opcode: Opcode::Text,
                compressed: false,
                mask: MASK,
                payload_start: 6,
                payload_len: 5,
            }
        );
        assert_eq!(partial_frame(&masked(0x89, b"p")[..4]), None, "not data");
    }

    #[test]
    fn deflated_twin_carries_rsv1_and_the_same_message() {
        let (plain, _) = text_frame_with(0, |buf| buf.put_bytes(b'a', 1000));
        let twin = deflated_twin(&plain);
        assert_eq!(twin[0], 0xC1, "FIN, RSV1, text");
        let header_len = server_header_len(&twin);
        assert!(twin.len() < 100, "{} bytes", twin.len());
        let mut inflater = crate::ws::deflate::Inflater::default();
        let mut out = Vec::new();
        inflater.push(&twin[header_len..], &mut out, 1000).unwrap();
        inflater.finish(&mut out, 1000).unwrap();
        assert_eq!(out, vec![b'a'; 1000]);
        assert_eq!(
            &data_frame(DataKind::Binary, false, b"ab")[..],
            b"\x82\x02ab"
        );
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header_alone() {
        // 64-bit length of 1 GiB, masked, no payload yet.
        let mut buf = vec![0x82, 0xFF, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4];
        assert!(matches!(
            parse_client_frame(&mut buf, 65_536, false),
            Err(FrameError::TooBig { .. })
        ));
    }

    #[test]
    fn server_frames_have_exact_bytes() {
        let (small, header_len) = text_frame_with(2, |buf| buf.extend_from_slice(b"hi"));
        assert_eq!((&small[..], header_len), (&b"\x81\x02hi"[..], 2));
        let (medium, header_len) = text_frame_with(300, |buf| buf.put_bytes(b'x', 300));
        assert_eq!(&medium[..4], &[0x81, 126, 0x01, 0x2C]);
        assert_eq!((medium.len(), header_len), (304, 4));
        let (large, header_len) = text_frame_with(0, |buf| buf.put_bytes(b'y', 70_000));
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!((large.len(), header_len), (70_010, 10));
        assert_eq!(&ping_frame()[..], b"\x89\x00");
        assert_eq!(&pong_frame(b"ab")[..], b"\x8A\x02ab");
        assert_eq!(&close_frame(1001, "going away")[..4], b"\x88\x0c\x03\xe9");
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let frame = close_frame(1000, &reason);
        assert!(frame.len() <= 2 + 125);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(parse_close_payload(b""), ClosePayload::Empty);
        assert_eq!(parse_close_payload(b"\x03"), ClosePayload::Invalid);
        assert_eq!(
            parse_close_payload(b"\x03\xe8bye"),
            ClosePayload::Code(1000)
        );
        assert_eq!(parse_close_payload(b"\x03\xed"), ClosePayload::Invalid); // 1005 is reserved
        assert_eq!(parse_close_payload(b"\x03\xe8\xff"), ClosePayload::BadUtf8);
    }
}
