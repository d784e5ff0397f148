//! The invariants corecast's pure parsers must keep on any input, one checking function per
//! fuzz target.
//!
//! Each `check_*` function takes the raw fuzz input, runs it through the parser the way the
//! server does, and asserts the outcome against an independent model (a reference frame-header
//! decoder, a reference reassembler, the JSON the client sent, `channel::pattern_matches`),
//! never only that nothing panicked. A failed assertion is a bug in the parser or in the model.
//!
//! The same file serves two crates without a copy: the fuzz crate (`tests/fuzz/`, built by
//! `cargo fuzz` with libFuzzer) uses it as its library, and the main crate's
//! `tests/fuzz_corpus.rs` includes it as a module (`#[path]`) to replay the seed corpus on
//! stable Rust. So it uses only what both crates depend on: corecast, httparse, serde,
//! serde_json, sonic-rs and tungstenite.

use corecast::channel;
use corecast::config::defaults;
use corecast::net::handshake::{self, Limits, Reject, Request, Upgrade};
use corecast::registry::Registry;
use corecast::ws::command::{self, Command, ErrorCode, ErrorReply};
use corecast::ws::frame::{
    self, parse_close_payload, ClientFrame, ClosePayload, FrameError, Opcode,
};
use corecast::ws::message::{Assembler, Event, MessageError};
use serde::Deserialize;
use serde_json::value::RawValue;
use sonic_rs::{JsonValueTrait, Value};

/// A checking function: panics if the input makes a parser break an invariant.
pub type Check = fn(&[u8]);

/// Every fuzz target by the name of its binary and corpus folder, with its checking function.
pub const TARGETS: [(&str, Check); 4] = [
    ("handshake", check_handshake),
    ("client_frame", check_client_frames),
    ("command", check_command),
    ("channel", check_channels),
];

// ---------------------------------------------------------------------------------------------
// handshake

/// The limits the server gives `parse_request` by default (`net::handshake_then_serve`).
fn handshake_limits() -> Limits<'static> {
    Limits {
        request_bytes_max: defaults::handshake_bytes_max(),
        channels_max: defaults::subscriptions_per_conn_max(),
        echo_path: None,
        deflate: false,
        channel_bytes_max: defaults::channel_bytes_max(),
        allowed_origins: &[],
    }
}

/// Every status and error code the contract allows an upgrade refusal to carry.
const HANDSHAKE_REFUSALS: [(u16, &str); 9] = [
    (400, "bad_request"),
    (400, "bad_upgrade"),
    (400, "invalid_channel"),
    (400, "too_many_subscriptions"),
    (404, "not_found"),
    (405, "method_not_allowed"),
    (426, "upgrade_required"),
    (426, "unsupported_version"),
    (431, "headers_too_large"),
];

/// `data` is the bytes a client sent on the WebSocket port, as `parse_request` sees them.
/// A complete request is judged on its own bytes alone, every refusal is a complete HTTP
/// response with the contract's status and JSON error, and a request arriving in pieces is
/// answered as if it had arrived whole.
pub fn check_handshake(data: &[u8]) {
    let limits = handshake_limits();
    let outcome = handshake::parse_request(data, limits);
    match &outcome {
        Ok(None) => assert!(
            data.len() < limits.request_bytes_max,
            "asked for more past the {}-byte limit",
            limits.request_bytes_max
        ),
        Ok(Some(Request::Upgrade(upgrade))) => {
            check_upgrade(data, upgrade, limits);
            let alone = handshake::parse_request(&data[..upgrade.request_bytes], limits);
            assert_eq!(alone, outcome, "the bytes after the request changed it");
        }
        Ok(Some(Request::Asset(asset))) => {
            let response = handshake::asset_response(*asset);
            let (status, body) = http_response(&response);
            assert_eq!((status, body), (200, asset.body));
        }
        Err(reject) => check_reject(reject),
    }
    // The server parses its buffer again after every read; an earlier read must have asked for
    // more or already had the same answer.
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        let early = handshake::parse_request(&data[..cut], limits);
        assert!(
            early == Ok(None) || early == outcome,
            "the first {cut} bytes gave {early:?}, all of them {outcome:?}"
        );
    }
}

fn check_upgrade(data: &[u8], upgrade: &Upgrade, limits: Limits) {
    assert!(upgrade.request_bytes <= data.len().min(limits.request_bytes_max));
    assert!(upgrade.channels.len() <= limits.channels_max);
    for pattern in &upgrade.channels {
        assert_eq!(channel::validate_pattern(pattern), Ok(()), "{pattern:?}");
    }
    let mut request_headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut request_headers);
    let parsed = request.parse(&data[..upgrade.request_bytes]);
    assert_eq!(
        parsed,
        Ok(httparse::Status::Complete(upgrade.request_bytes))
    );
    assert_eq!((request.method, request.version), (Some("GET"), Some(1)));
    let key = header(request.headers, "sec-websocket-key").expect("an upgrade has a key");

    let mut response_headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut response_headers);
    let parsed = response.parse(&upgrade.response);
    assert_eq!(
        parsed,
        Ok(httparse::Status::Complete(upgrade.response.len()))
    );
    assert_eq!(response.code, Some(101));
    let accept = header(response.headers, "sec-websocket-accept").expect("a 101 has an accept");
    let expected = tungstenite::handshake::derive_accept_key(key);
    assert_eq!(accept, expected.as_bytes(), "accept key of {key:?}");
}

fn check_reject(reject: &Reject) {
    let status = reject.status.as_u16();
    assert!(
        HANDSHAKE_REFUSALS.contains(&(status, reject.code)),
        "refusal {status} {} is not in the contract",
        reject.code
    );
    let response = reject.response();
    let (response_status, body) = http_response(&response);
    assert_eq!(response_status, status);
    let body: Value = sonic_rs::from_slice(body).expect("the error body is JSON");
    assert_eq!(body["error"]["code"].as_str(), Some(reject.code));
    assert_eq!(body["error"]["message"].as_str(), Some(&*reject.message));
}

/// The first value of header `name` (lower case), if present.
fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value)
}

/// Reads a complete response that closes its connection: its status and its body, which must
/// be exactly `Content-Length` bytes.
fn http_response(response: &[u8]) -> (u16, &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(response) else {
        panic!("not a complete HTTP response: {response:?}");
    };
    assert_eq!(header(parsed.headers, "connection"), Some(&b"close"[..]));
    let length = header(parsed.headers, "content-length").expect("a Content-Length");
    let length: usize = std::str::from_utf8(length).unwrap().parse().unwrap();
    let body = &response[head_len..];
    assert_eq!(body.len(), length, "Content-Length");
    (parsed.code.expect("a status"), body)
}

// ---------------------------------------------------------------------------------------------
// client_frame

/// `(frame_bytes_max, message_bytes_max)` pairs a client-frame input runs under, picked by its
/// first byte: the server's defaults, and small ones `Config::validate` allows (at least 125,
/// message at least frame) so that short inputs reach the size limits.
fn frame_limits(selector: u8) -> (usize, usize) {
    let pairs = [
        (defaults::frame_bytes_max(), defaults::message_bytes_max()),
        (125, 125),
        (125, 300),
        (200, 1000),
    ];
    pairs[usize::from(selector) % pairs.len()]
}

/// A client frame's header as RFC 6455 section 5.2 lays it out, decoded here by hand.
#[derive(Debug)]
struct Header {
    is_final: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload_len: u64,
    header_len: usize,
}

/// Decodes the header at the start of `buf`; `None` if `buf` holds only part of it.
fn reference_header(buf: &[u8]) -> Option<Header> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let (payload_len, mut header_len) = match second & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        short => (u64::from(short), 2),
    };
    let mask = if second & 0x80 != 0 {
        let mask: [u8; 4] = buf.get(header_len..header_len + 4)?.try_into().ok()?;
        header_len += 4;
        Some(mask)
    } else {
        None
    };
    Some(Header {
        is_final: first & 0x80 != 0,
        rsv: first & 0x70,
        opcode: first & 0x0F,
        mask,
        payload_len,
        header_len,
    })
}

/// What `parse_client_frame` must answer for `buf`, in the order the server checks the rules.
fn reference_frame(buf: &[u8], frame_bytes_max: usize) -> Result<Option<Header>, FrameError> {
    let Some(header) = reference_header(buf) else {
        return Ok(None);
    };
    if matches!(header.opcode, 3..=7 | 11..=15) {
        return Err(FrameError::ReservedOpcode(header.opcode));
    }
    if header.rsv != 0 {
        return Err(FrameError::ReservedBits);
    }
    if header.opcode >= 8 && (!header.is_final || header.payload_len > 125) {
        return Err(FrameError::BadControlFrame);
    }
    if header.mask.is_none() {
        return Err(FrameError::Unmasked);
    }
    if header.payload_len > frame_bytes_max as u64 {
        return Err(FrameError::TooBig {
            len_bytes: header.payload_len,
            max_bytes: frame_bytes_max,
        });
    }
    if (buf.len() as u64) < header.header_len as u64 + header.payload_len {
        return Ok(None);
    }
    Ok(Some(header))
}

/// An event with what it carried, owned, so two runs can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close(ClosePayload),
}

/// How a run over a byte stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every complete frame was used; this many bytes wait for the rest of a frame.
    NeedMore { pending_bytes: usize },
    /// The connection closes on a frame violation.
    Frame(FrameError),
    /// The connection closes on a message violation.
    Message(MessageError),
}

/// The reference reassembler: the message in flight as `(is_text, bytes so far)`.
#[derive(Default)]
struct Model {
    in_flight: Option<(bool, Vec<u8>)>,
}

impl Model {
    fn push(
        &mut self,
        opcode: Opcode,
        is_final: bool,
        payload: &[u8],
        message_bytes_max: usize,
    ) -> Result<Option<Seen>, MessageError> {
        let is_text = match opcode {
            Opcode::Ping => return Ok(Some(Seen::Ping(payload.to_vec()))),
            Opcode::Pong => return Ok(Some(Seen::Pong)),
            Opcode::Close => return Ok(Some(Seen::Close(parse_close_payload(payload)))),
            Opcode::Text | Opcode::Binary if self.in_flight.is_some() => {
                return Err(MessageError::ExpectedContinuation)
            }
            Opcode::Continuation if self.in_flight.is_none() => {
                return Err(MessageError::UnexpectedContinuation)
            }
            Opcode::Text => true,
            Opcode::Binary => false,
            Opcode::Continuation => self.in_flight.as_ref().is_some_and(|(text, _)| *text),
        };
        let (_, bytes) = self.in_flight.get_or_insert((is_text, Vec::new()));
        bytes.extend_from_slice(payload);
        if bytes.len() > message_bytes_max {
            return Err(MessageError::TooBig {
                max_bytes: message_bytes_max,
            });
        }
        if !is_final {
            // Text fails fast: a fragment that makes the bytes so far no prefix of valid UTF-8
            // ends the message at once (an incomplete sequence at the end may still complete).
            if is_text {
                if let Err(err) = std::str::from_utf8(bytes) {
                    if err.error_len().is_some() {
                        return Err(MessageError::BadUtf8);
                    }
                }
            }
            return Ok(None);
        }
        let (_, bytes) = self.in_flight.take().expect("a message is in flight");
        if !is_text {
            return Ok(Some(Seen::Binary));
        }
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Some(Seen::Text(text))),
            Err(_) => Err(MessageError::BadUtf8),
        }
    }
}

/// `data` is `[limits, chunk, stream...]`: the first byte picks the limits ([`frame_limits`]),
/// the second the size of the reads the stream arrives in (0: all at once), and the rest is
/// what a client sent after its upgrade. The stream is driven through `parse_client_frame` and
/// an `Assembler` as `ws::session` does; every frame must agree with [`reference_frame`] (header,
/// bounds, unmasking, errors), every event with the [`Model`] (never over `message_bytes_max`,
/// text exactly the UTF-8 of its fragments), and the run must not depend on the read size.
pub fn check_client_frames(data: &[u8]) {
    let [limits, chunk, stream @ ..] = data else {
        return;
    };
    let limits = frame_limits(*limits);
    let chunk_bytes = match *chunk {
        0 => usize::MAX,
        bytes => usize::from(bytes),
    };
    let whole = drive_frames(stream, usize::MAX, limits);
    let in_reads = drive_frames(stream, chunk_bytes, limits);
    assert_eq!(
        whole, in_reads,
        "reads of {chunk_bytes} bytes changed the outcome"
    );
}

/// Feeds `stream` in reads of `chunk_bytes`, keeping a partial frame for the next read as the
/// connection does, and returns the events and how the run ended.
fn drive_frames(
    stream: &[u8],
    chunk_bytes: usize,
    (frame_bytes_max, message_bytes_max): (usize, usize),
) -> (Vec<Seen>, End) {
    let mut pending: Vec<u8> = Vec::new();
    let mut assembler = Assembler::default();
    let mut model = Model::default();
    let mut seen = Vec::new();
    // After the client's close frame the connection reads frames but acts on none (`Answered`).
    let mut answered = false;
    for read in stream.chunks(chunk_bytes) {
        pending.extend_from_slice(read);
        let received = pending.clone();
        let mut used = 0;
        loop {
            let rest = &mut pending[used..];
            let original = &received[used..];
            let expected = reference_frame(original, frame_bytes_max);
            let frame = match frame::parse_client_frame(rest, frame_bytes_max, false) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    assert!(matches!(expected, Ok(None)), "{expected:?}, got None");
                    assert_eq!(rest, original, "a partial frame was modified");
                    break;
                }
                Err(err) => {
                    assert_eq!(expected.err(), Some(err), "frame error");
                    let too_big = matches!(err, FrameError::TooBig { .. });
                    assert_eq!(err.close_code(), if too_big { 1009 } else { 1002 });
                    return (seen, End::Frame(err));
                }
            };
            let header = match expected {
                Ok(Some(header)) => header,
                other => panic!("parsed {frame:?}, the reference says {other:?}"),
            };
            check_frame(&frame, &header, rest, original, frame_bytes_max);
            used += frame.frame_len;
            if answered {
                continue;
            }
            let payload = &rest[frame.payload_start..frame.payload_end];
            let modelled = model.push(frame.opcode, frame.is_final, payload, message_bytes_max);
            let event = assembler
                .push(frame, payload, message_bytes_max)
                .map(|event| event.map(owned));
            assert_eq!(event, modelled, "{frame:?}");
            match event {
                Ok(Some(event)) => {
                    if let Seen::Text(text) = &event {
                        assert!(text.len() <= message_bytes_max);
                        if frame.opcode == Opcode::Continuation {
                            assembler.clear();
                        }
                    }
                    answered = matches!(event, Seen::Close(_));
                    seen.push(event);
                }
                Ok(None) => {}
                Err(err) => {
                    assert!([1002, 1007, 1009].contains(&err.close_code()));
                    return (seen, End::Message(err));
                }
            }
        }
        pending.drain(..used);
    }
    let pending_bytes = pending.len();
    (seen, End::NeedMore { pending_bytes })
}

/// A parsed frame agrees with the reference header, lies within the buffer, and its payload
/// is the received bytes unmasked with the frame's key.
fn check_frame(
    frame: &ClientFrame,
    header: &Header,
    unmasked: &[u8],
    received: &[u8],
    frame_bytes_max: usize,
) {
    let opcode = match frame.opcode {
        Opcode::Continuation => 0,
        Opcode::Text => 1,
        Opcode::Binary => 2,
        Opcode::Close => 8,
        Opcode::Ping => 9,
        Opcode::Pong => 10,
    };
    assert_eq!((opcode, frame.is_final), (header.opcode, header.is_final));
    assert_eq!(frame.payload_start, header.header_len);
    assert_eq!(frame.payload_end, frame.frame_len);
    assert!(frame.frame_len <= received.len());
    let payload_len = frame.payload_end - frame.payload_start;
    assert_eq!(payload_len as u64, header.payload_len);
    assert!(payload_len <= frame_bytes_max);
    let mask = header.mask.expect("a parsed frame is masked");
    for at in frame.payload_start..frame.payload_end {
        let key = mask[(at - frame.payload_start) % 4];
        assert_eq!(unmasked[at], received[at] ^ key, "payload byte {at}");
    }
    assert_eq!(
        unmasked[..frame.payload_start],
        received[..frame.payload_start]
    );
    assert_eq!(unmasked[frame.frame_len..], received[frame.frame_len..]);
}

fn owned(event: Event<'_>) -> Seen {
    match event {
        Event::Text(text) => Seen::Text(text.to_owned()),
        Event::Binary(_) => Seen::Binary,
        Event::Ping(payload) => Seen::Ping(payload.to_vec()),
        Event::Pong => Seen::Pong,
        Event::Close(payload) => Seen::Close(payload),
    }
}

// ---------------------------------------------------------------------------------------------
// command

/// `data` is a text message a client sent (not UTF-8: not a text message, skipped). A command
/// must say what the JSON said (type, channel, offset, `data` as its raw text, a valid `id`),
/// a refusal carries `bad_request` and a one-line message, and every reply the command can get
/// is a complete server text frame of JSON that echoes the `id`.
pub fn check_command(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let depth_max = defaults::json_depth_max();
    let deepest = nesting(data);
    let command = match command::parse(text, depth_max) {
        Ok(command) => command,
        Err(reply) => {
            // Past the limit nothing is parsed (a bad escape anywhere is reported instead);
            // within it, depth is never the reason.
            let too_deep = format!("nested deeper than json_depth_max = {depth_max}");
            if reply.message.contains(&too_deep) {
                assert!(deepest > depth_max, "refused at {deepest} levels");
                assert!(
                    reply.id.is_none(),
                    "a too-deep command is not searched for an id"
                );
            } else if deepest > depth_max {
                assert!(
                    reply.message.contains("invalid \\u escape"),
                    "{}",
                    reply.message
                );
            }
            return check_error_reply(&reply, ErrorCode::BadRequest);
        }
    };
    assert!(
        deepest <= depth_max,
        "accepted a command {deepest} levels deep"
    );
    // serde_json, a second parser, reads what the client said; it accepts only valid JSON.
    let said: Said = serde_json::from_str(text)
        .unwrap_or_else(|err| panic!("a parsed command is JSON, but serde_json says {err}"));
    let (kind, channel, id, reply) = match &command {
        Command::Subscribe { channel, since, id } => {
            if let Some(since) = since {
                assert!(since.epoch.len() <= 64, "epoch {:?}", since.epoch);
                if matches!(since.position, corecast::msg::Position::Offset(_)) {
                    assert!(!channel::is_pattern(channel), "offset on {channel:?}");
                }
            }
            match command::check_pattern(channel, channel::CHANNEL_BYTES_MAX, id) {
                Ok(()) => assert_eq!(channel::validate_pattern(channel), Ok(())),
                Err(reply) => check_error_reply(&reply, ErrorCode::InvalidChannel),
            }
            let reply = command::subscribed_frame(channel, id, "e", 1, None);
            ("subscribe", Some(&**channel), id, reply)
        }
        Command::Unsubscribe { channel, id } => {
            let reply = command::channel_reply_frame("unsubscribed", channel, id);
            ("unsubscribe", Some(&**channel), id, reply)
        }
        Command::Ping { id } => ("ping", None, id, command::pong_reply_frame(id, 1)),
        Command::Presence { channel, id } => {
            let view = command::PresenceView {
                channel,
                connections: 0,
                users: 0,
                members: Some(&[]),
                truncated: false,
            };
            (
                "presence",
                Some(&**channel),
                id,
                command::presence_frame(id, &view),
            )
        }
        Command::GetStats { id } => {
            let acks = [(Box::from("a.b"), 1)];
            let stats = Default::default();
            let reply = command::stats_frame(id, "c1", 0, stats, &acks);
            ("get_stats", None, id, reply)
        }
        Command::Publish { channel, data, id } => {
            let range = text.as_bytes().as_ptr_range();
            assert!(
                range.contains(&data.as_ptr()),
                "`data` is a slice of the message"
            );
            assert_eq!(said.data.map(RawValue::get), Some(*data), "`data` as sent");
            match command::check_channel(channel, channel::CHANNEL_BYTES_MAX, id) {
                Ok(()) => assert_eq!(channel::validate_channel(channel), Ok(())),
                Err(reply) => check_error_reply(&reply, ErrorCode::InvalidChannel),
            }
            let reply = command::published_frame(id, channel, 1);
            ("publish", Some(&**channel), id, reply)
        }
        Command::Ack {
            channel,
            offset,
            id,
        } => {
            assert_eq!(said.offset, Some(*offset));
            let reply = command::acked_frame(id, channel, *offset);
            ("ack", Some(&**channel), id, reply)
        }
        Command::Refresh { token, id } => {
            assert_eq!(said.token.as_deref(), Some(&**token), "`token` as sent");
            ("refresh", None, id, command::refreshed_frame(id, 1))
        }
    };
    assert_eq!(said.r#type.as_deref(), Some(kind));
    if let Some(channel) = channel {
        assert_eq!(said.channel.as_deref(), Some(channel));
    }
    if let Some(id) = id {
        check_id(id);
    }
    let reply = server_text(&reply);
    assert!(reply["type"].is_str());
    if let Some(id) = id {
        assert_eq!(&reply["id"], id, "the reply echoes the id");
    }
}

/// How many `[` and `{` outside strings `json` has open at once at most, read one byte at a
/// time with an "inside a string" and an "after a backslash" flag; an independent model of
/// the depth `json::check` counts.
fn nesting(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &byte in json {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            (false, _, _) => {}
        }
    }
    deepest
}

/// The fields of a command as serde_json reads them, unknown ones skipped.
#[derive(Deserialize)]
struct Said<'a> {
    r#type: Option<String>,
    channel: Option<String>,
    offset: Option<u64>,
    token: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// An `id` the server echoes: a number or a string of at most `ID_BYTES_MAX` bytes of JSON.
fn check_id(id: &Value) {
    assert!(id.is_number() || id.is_str(), "id {id:?}");
    let text = sonic_rs::to_string(id).expect("an id serializes");
    assert!(text.len() <= command::ID_BYTES_MAX, "id {text}");
}

/// A refusal has the expected code, a one-line message and a valid `id`, and its frame is
/// `{"type":"error",...}` carrying exactly those.
fn check_error_reply(reply: &ErrorReply, code: ErrorCode) {
    assert_eq!(reply.code, code, "{}", reply.message);
    assert!(!reply.message.contains('\n'), "{:?}", reply.message);
    if let Some(id) = &reply.id {
        check_id(id);
    }
    let json = server_text(&reply.frame());
    let code = sonic_rs::to_string(&code).expect("a code serializes");
    assert_eq!(json["type"].as_str(), Some("error"));
    assert_eq!(json["code"].as_str(), Some(code.trim_matches('"')));
    assert_eq!(json["message"].as_str(), Some(&*reply.message));
    match &reply.id {
        Some(id) => assert_eq!(&json["id"], id),
        None => assert!(json["id"].is_null()),
    }
}

/// Decodes a complete, final, unmasked server text frame with the shortest length encoding,
/// and returns its payload as JSON.
fn server_text(frame: &[u8]) -> Value {
    let header = reference_header(frame).expect("a complete header");
    assert_eq!(
        (header.is_final, header.rsv, header.opcode, header.mask),
        (true, 0, 1, None)
    );
    let payload = &frame[header.header_len..];
    assert_eq!(payload.len() as u64, header.payload_len);
    let shortest = match payload.len() {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    assert_eq!(header.header_len, shortest);
    let text = std::str::from_utf8(payload).expect("a text frame is UTF-8");
    sonic_rs::from_str(text).expect("a reply is JSON")
}

// ---------------------------------------------------------------------------------------------
// channel

/// Names a channel input may carry; more are ignored, which keeps each run short.
const CHANNEL_NAMES_MAX: usize = 16;

/// `data` is up to [`CHANNEL_NAMES_MAX`] lines, each tried as a channel name and as a pattern
/// (not UTF-8: skipped). Validation must agree with itself (a channel is a pattern without
/// wildcards, errors point at the offending byte), and a registry holding every valid pattern
/// must reach, for every valid channel, exactly the patterns `pattern_matches` accepts.
pub fn check_channels(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let names: Vec<&str> = text.split('\n').take(CHANNEL_NAMES_MAX).collect();
    let mut patterns: Vec<&str> = Vec::new();
    let mut channels: Vec<String> = Vec::new();
    for &name in &names {
        let as_channel = channel::validate_channel(name);
        let as_pattern = channel::validate_pattern(name);
        if let Err(err) = as_channel {
            check_channel_error(name, err);
        }
        match as_pattern {
            Ok(()) => {
                assert!((1..=channel::CHANNEL_BYTES_MAX).contains(&name.len()));
                assert!(!name.split('.').any(str::is_empty), "{name:?}");
                patterns.push(name);
                // A channel each pattern matches, so that matches are common.
                let concrete = name.replace('*', "x").replace('>', "x.y");
                if channel::validate_channel(&concrete).is_ok() {
                    channels.push(concrete);
                }
            }
            Err(err) => check_channel_error(name, err),
        }
        if as_channel.is_ok() {
            assert_eq!(
                as_pattern,
                Ok(()),
                "{name:?} is a channel but not a pattern"
            );
            assert!(!channel::is_pattern(name), "{name:?}");
            assert!(
                channel::pattern_matches(name, name),
                "{name:?} misses itself"
            );
            channels.push(name.to_owned());
        }
    }

    let mut registry: Registry<usize> = Registry::new();
    for (key, pattern) in patterns.iter().enumerate() {
        assert!(registry.insert(pattern, key));
    }
    let mut matched = Vec::new();
    for name in &channels {
        registry.collect_matches(name, &mut matched);
        matched.sort_unstable();
        let expected: Vec<usize> = (0..patterns.len())
            .filter(|&key| channel::pattern_matches(patterns[key], name))
            .collect();
        assert_eq!(matched, expected, "patterns {patterns:?} on {name:?}");
        for pattern in &patterns {
            if !channel::is_pattern(pattern) {
                let same = *pattern == name;
                assert_eq!(channel::pattern_matches(pattern, name), same, "{pattern:?}");
            }
        }
    }
    for (key, pattern) in patterns.iter().enumerate() {
        assert!(registry.remove(pattern, key));
    }
    assert!(registry.is_empty());
}

/// A refusal points at the byte or token that broke the rule.
fn check_channel_error(name: &str, err: channel::ChannelError) {
    use channel::ChannelError as E;
    let bytes = name.as_bytes();
    match err {
        E::Empty => assert!(name.is_empty()),
        E::TooLong {
            len_bytes,
            max_bytes,
        } => {
            assert_eq!(len_bytes, bytes.len());
            assert_eq!(max_bytes, channel::CHANNEL_BYTES_MAX);
            assert!(len_bytes > max_bytes);
        }
        E::EmptyToken { at } => {
            assert!(at == bytes.len() || bytes[at] == b'.', "{name:?} {err:?}");
            assert!(at == 0 || bytes[at - 1] == b'.', "{name:?} {err:?}");
        }
        E::BadByte { byte, at } => assert_eq!(bytes.get(at), Some(&byte)),
        E::Wildcard { at } | E::PartialWildcard { at } | E::MisplacedGreater { at } => {
            assert!(
                matches!(bytes.get(at), Some(b'*' | b'>')),
                "{name:?} {err:?}"
            );
        }
    }
    assert!(!err.to_string().is_empty());
}
