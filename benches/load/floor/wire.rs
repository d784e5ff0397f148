//! The floor server's side of the wire: the upgrade request it reads, and the `101` response,
//! greeting, message and Close frames it writes.
//!
//! Owns every byte the floor reads or writes. Like the bench's own `wire`, it never touches a
//! socket or a clock: each function is pure over bytes and a partial request is "need more", so
//! the tests below pin the bytes against RFC 6455's sample key, and the root package's
//! `tests/bench_wire.rs` against corecast's own encoders. The floor must send exactly what
//! corecast sends, byte for byte, or a comparison of the two would measure different workloads.

use std::fmt::Write as _;

/// Headers an upgrade request may carry; more is refused. The bench sends six.
const HEADERS_MAX: usize = 32;

/// Opcode byte of a final text frame (FIN set, opcode 1), as a server sends it: unmasked.
const FIN_TEXT: u8 = 0x81;

/// Largest payload whose length fits the header's 7-bit field; 126 and 127 announce a 16-bit
/// and a 64-bit extended length (RFC 6455 section 5.2).
const PAYLOAD_BYTES_7BIT_MAX: usize = 125;

/// The start of every message's JSON; the channel name, as a JSON string, follows it.
const MESSAGE_PREFIX: &str = r#"{"type":"message","channel":"#;

/// The answer to a request that is not a WebSocket upgrade; the floor then closes.
pub const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A server Close frame with status 1000 (normal closure) and no reason.
pub const CLOSE_NORMAL: [u8; 4] = [0x88, 0x02, 0x03, 0xE8];

/// Why an upgrade request was refused. Every variant ends that connection only: the caller
/// answers `BAD_REQUEST` and closes it, and the subscriber reports the refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The bytes are not an HTTP/1.1 request head (or carry over `HEADERS_MAX` headers).
    Malformed,
    /// The method is not `GET`.
    NotGet,
    /// The request has no `Sec-WebSocket-Key` header.
    NoKey,
}

/// Reads an upgrade request from the start of `input`: `Ok(None)` until the head (through the
/// blank line) is complete, then the value of its `Sec-WebSocket-Key` header. The path, the
/// `channels` query and the other headers are not checked: the floor's only client is the
/// bench, and the floor publishes on the bench's channel whatever the request names.
pub fn parse_upgrade_request(input: &[u8]) -> Result<Option<&[u8]>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(input) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(RequestError::Malformed),
    }
    if request.method != Some("GET") {
        return Err(RequestError::NotGet);
    }
    request
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("sec-websocket-key"))
        .map(|header| Some(header.value))
        .ok_or(RequestError::NoKey)
}

/// Appends the `101 Switching Protocols` response to a request that sent `key`.
pub fn upgrade_response(key: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(tungstenite::handshake::derive_accept_key(key).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends the `connected` greeting of connection `conn_id`, in the shape corecast sends:
/// `{"type":"connected","conn_id":..,"shard":0,"server_time_ms":..,"heartbeat_s":..}`.
/// `conn_id` must need no JSON escaping (the floor's are `floor-N`).
pub fn connected_frame(
    conn_id: &str,
    now_ms: u64,
    heartbeat_s: u64,
    epoch: &str,
    out: &mut Vec<u8>,
) {
    assert!(
        conn_id
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && byte != b'"' && byte != b'\\'),
        "conn_id {conn_id:?} needs no escaping"
    );
    let mut json = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        json,
        r#"{{"type":"connected","conn_id":"{conn_id}","shard":0,"server_time_ms":{now_ms},"heartbeat_s":{heartbeat_s},"epoch":"{epoch}"}}"#
    );
    push_text_header(json.len(), out);
    out.extend_from_slice(json.as_bytes());
}

/// Replaces `frame`'s contents with the complete text frame of one message, the bytes corecast's
/// encode-once step builds for the same publish: `{"type":"message","channel":..,"offset":..,
/// "seq":..,"ts_ms":..,"data":..}`. `channel_json` is the channel as a JSON string, quotes included;
/// `data` is the raw JSON of the event's data. Once `frame` has grown to the size of one
/// frame, this never allocates.
pub fn message_frame(
    frame: &mut Vec<u8>,
    channel_json: &str,
    offset: u64,
    seq: u64,
    ts_ms: u64,
    data: &str,
) {
    let mut offset_text = itoa::Buffer::new();
    let mut seq_text = itoa::Buffer::new();
    let mut ts_text = itoa::Buffer::new();
    let offset_text = offset_text.format(offset);
    let seq_text = seq_text.format(seq);
    let ts_text = ts_text.format(ts_ms);
    let parts = [
        MESSAGE_PREFIX,
        channel_json,
        r#","offset":"#,
        offset_text,
        r#","seq":"#,
        seq_text,
        r#","ts_ms":"#,
        ts_text,
        r#","data":"#,
        data,
        "}",
    ];
    frame.clear();
    push_text_header(parts.iter().map(|part| part.len()).sum(), frame);
    for part in parts {
        frame.extend_from_slice(part.as_bytes());
    }
}

/// Appends the header of an unmasked final text frame carrying `payload_bytes`.
fn push_text_header(payload_bytes: usize, out: &mut Vec<u8>) {
    out.push(FIN_TEXT);
    if payload_bytes <= PAYLOAD_BYTES_7BIT_MAX {
        // At most 125: fits the 7-bit field.
        out.push(payload_bytes as u8);
    } else if let Ok(length) = u16::try_from(payload_bytes) {
        out.push(126);
        out.extend_from_slice(&length.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(payload_bytes as u64).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire as client;

    #[test]
    fn request_key_is_read_once_the_head_is_complete() {
        let target = client::parse_ws_url("ws://127.0.0.1:9/ws").unwrap();
        let request = client::upgrade_request(&target, "bench.fanout");
        assert_eq!(
            parse_upgrade_request(&request[..request.len() - 2]),
            Ok(None)
        );
        assert_eq!(
            parse_upgrade_request(&request),
            Ok(Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..]))
        );
        assert_eq!(
            parse_upgrade_request(b"POST /ws HTTP/1.1\r\nSec-WebSocket-Key: k\r\n\r\n"),
            Err(RequestError::NotGet)
        );
        assert_eq!(
            parse_upgrade_request(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err(RequestError::NoKey)
        );
        assert_eq!(
            parse_upgrade_request(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(RequestError::Malformed)
        );
    }

    #[test]
    fn upgrade_response_carries_the_rfc_6455_sample_accept_key() {
        let mut out = Vec::new();
        upgrade_response(b"dGhlIHNhbXBsZSBub25jZQ==", &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        assert_eq!(client::parse_upgrade_response(&out), Ok(Some(out.len())));
    }

    #[test]
    fn close_is_a_server_close_1000() {
        assert_eq!(&CLOSE_NORMAL[2..], &client::CLOSE_NORMAL_PAYLOAD);
        assert_eq!(CLOSE_NORMAL[0] & 0x0F, client::OPCODE_CLOSE);
    }
}
