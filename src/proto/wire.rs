//! The client side of the wire as pure functions over bytes: `ws://`/`wss://` and API URLs,
//! the HTTP upgrade exchange, and masked client frames (control and text).
//!
//! Owns every byte format a client writes on a WebSocket and the upgrade answer it reads (server
//! frames are split by [`crate::buffer`]). Shared by the Rust client (`corecast-client`) and
//! `corecast bench` (`corecast-bench`). It never touches a socket, a clock or a random source:
//! keys and masks come from the caller, each function reports "need more" on partial input, and
//! the formats are pinned by byte-literal tests below, so a connection only moves bytes.

/// Largest payload of a control frame (RFC 6455 section 5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// Largest encoded client control frame: 2 header bytes, 4 mask bytes, the payload.
pub const CONTROL_FRAME_BYTES_MAX: usize = 2 + 4 + CONTROL_PAYLOAD_BYTES_MAX;

/// Opcode of a Pong frame.
pub const OPCODE_PONG: u8 = 0xA;

/// Opcode of a Close frame.
pub const OPCODE_CLOSE: u8 = 0x8;

/// First byte of a final text frame: FIN set, opcode 1.
const FIN_TEXT: u8 = 0x81;

/// Set in a frame's second byte when a masking key follows the length; every client frame
/// carries one (RFC 6455 section 5.3).
const MASK_BIT: u8 = 0x80;

/// Largest payload whose length fits the header's 7-bit field; 126 and 127 announce a 16-bit
/// and a 64-bit extended length (RFC 6455 section 5.2).
const PAYLOAD_BYTES_7BIT_MAX: usize = 125;

/// Where a `ws://` or `wss://` URL points: what to connect to and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsTarget {
    /// `host:port`, for name resolution and the `Host` header.
    pub authority: String,
    /// Path and query as written in the URL, `/` when the URL has none.
    pub path: String,
    /// `wss://`: the connection speaks TLS to `host()` before the upgrade.
    pub tls: bool,
}

impl WsTarget {
    /// The host of `authority` without its port or an IPv6 literal's brackets: the name a TLS
    /// certificate must carry.
    pub fn host(&self) -> &str {
        host_of(&self.authority)
    }
}

impl std::fmt::Display for WsTarget {
    /// The URL again, with the default port written out: what failure messages name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.authority, self.path)
    }
}

/// Splits `ws://host[:port][/path][?query]` (the port defaults to 80) or the same with
/// `wss://` (TLS; the port defaults to 443). The error names the URL; the caller adds which
/// argument it came from.
pub fn parse_ws_url(url: &str) -> Result<WsTarget, String> {
    let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => return Err(format!("{url:?}: only ws:// and wss:// URLs are supported")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url:?}: the URL names no host"));
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(WsTarget {
        authority: with_default_port(authority, if tls { 443 } else { 80 }),
        path,
        tls,
    })
}

/// Checks the `--api` address `http://host[:port]` or `https://host[:port]` and returns the
/// publish endpoint `{api}/v1/publish`.
pub fn publish_url(api: &str) -> Result<String, String> {
    let rest = api
        .strip_prefix("http://")
        .or_else(|| api.strip_prefix("https://"))
        .ok_or_else(|| format!("--api {api:?}: only http:// and https:// URLs are supported"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("--api {api:?}: the URL names no host"));
    }
    Ok(format!("{}/v1/publish", api.trim_end_matches('/')))
}

/// `authority` without its port, and an IPv6 literal without its brackets.
fn host_of(authority: &str) -> &str {
    if let Some(literal) = authority.strip_prefix('[') {
        return literal.split(']').next().unwrap_or(literal);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

fn with_default_port(authority: &str, port: u16) -> String {
    // A bracketed IPv6 literal has colons of its own: only a colon after `]` is a port.
    let host_end = authority.rfind(']').map_or(0, |at| at + 1);
    if authority[host_end..].contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:{port}")
    }
}

/// The upgrade request head for `path` (query included) on `host`, offering `key` as its
/// `Sec-WebSocket-Key`, and `token` (a connection JWT) as `Authorization: Bearer` when given:
/// a header rather than `?token=`, so that the secret stays out of logged URLs.
pub fn request_head(path: &str, host: &str, key: &str, token: Option<&str>) -> Vec<u8> {
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n{authorization}\r\n"
    )
    .into_bytes()
}

/// Why the server's answer to the upgrade request is not a WebSocket.
#[derive(Debug, PartialEq, Eq)]
pub enum UpgradeError {
    /// The status was not 101; carries the status line. Caller: give up on this connection.
    Refused(String),
    /// The head did not look like HTTP. Caller: give up on this connection.
    Malformed,
    /// The `Sec-WebSocket-Accept` header is missing or does not answer the key sent (see
    /// [`accept_matches`]). Caller: give up on this connection; something other than a
    /// WebSocket server answered.
    BadAccept,
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(status) => write!(f, "upgrade refused: {status:?}"),
            Self::Malformed => f.write_str("upgrade answer is not HTTP"),
            Self::BadAccept => f.write_str("upgrade answer does not accept the key sent"),
        }
    }
}

/// Reads an HTTP upgrade response: `Ok(None)` until the head (through the blank line) is all
/// in `input`, then the head's length once the status is `101`. Bytes past the head are the
/// first WebSocket frames.
pub fn parse_upgrade_response(input: &[u8]) -> Result<Option<usize>, UpgradeError> {
    let Some(blank_line) = memchr::memmem::find(input, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head_bytes = blank_line + 4;
    let status_line = &input[..memchr::memmem::find(input, b"\r\n").unwrap_or(blank_line)];
    let status_line = std::str::from_utf8(status_line).map_err(|_| UpgradeError::Malformed)?;
    let mut words = status_line.split(' ');
    let version = words.next().unwrap_or_default();
    let status = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(UpgradeError::Malformed);
    }
    if status != "101" {
        return Err(UpgradeError::Refused(status_line.to_string()));
    }
    Ok(Some(head_bytes))
}

/// Writes one masked client frame (FIN set) carrying `payload` into `out` and returns its
/// length. A control frame's payload is at most 125 bytes, so it fits the 7-bit length.
pub fn encode_control_frame(
    opcode: u8,
    payload: &[u8],
    mask: [u8; 4],
    out: &mut [u8; CONTROL_FRAME_BYTES_MAX],
) -> usize {
    assert!(
        opcode & 0x8 != 0,
        "opcode {opcode:#x} is not a control opcode"
    );
    assert!(payload.len() <= CONTROL_PAYLOAD_BYTES_MAX);
    out[0] = 0x80 | opcode;
    // The length fits in 7 bits: asserted above.
    out[1] = 0x80 | payload.len() as u8;
    out[2..6].copy_from_slice(&mask);
    for (at, byte) in payload.iter().enumerate() {
        out[6 + at] = byte ^ mask[at % 4];
    }
    6 + payload.len()
}

/// Replaces `out`'s contents with one masked final text frame whose payload is `parts` joined,
/// masked with `mask`. The payload comes in pieces so that a caller need not join them first;
/// once `out` has grown to the size of one frame, this never allocates.
pub fn masked_text_frame(parts: &[&str], mask: [u8; 4], out: &mut Vec<u8>) {
    let payload_bytes: usize = parts.iter().map(|part| part.len()).sum();
    out.clear();
    out.push(FIN_TEXT);
    if payload_bytes <= PAYLOAD_BYTES_7BIT_MAX {
        // At most 125: fits the 7-bit field.
        out.push(MASK_BIT | payload_bytes as u8);
    } else if let Ok(length) = u16::try_from(payload_bytes) {
        out.push(MASK_BIT | 126);
        out.extend_from_slice(&length.to_be_bytes());
    } else {
        out.push(MASK_BIT | 127);
        out.extend_from_slice(&(payload_bytes as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let payload_start = out.len();
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
    for (at, byte) in out[payload_start..].iter_mut().enumerate() {
        *byte ^= mask[at % 4];
    }
}

/// Whether the response head `head` (as delimited by [`parse_upgrade_response`]) carries a
/// `Sec-WebSocket-Accept` header equal to `expected`, the accept value of the key sent
/// (`tungstenite::handshake::derive_accept_key`). Header names compare case-insensitively.
pub fn accept_matches(head: &[u8], expected: &str) -> bool {
    head.split(|byte| *byte == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|byte| *byte == b':') else {
            return false;
        };
        line[..colon].eq_ignore_ascii_case(b"sec-websocket-accept")
            && line[colon + 1..].trim_ascii() == expected.as_bytes()
    })
}

/// The payload of a Close frame with status 1000 (normal closure) and no reason.
pub const CLOSE_NORMAL_PAYLOAD: [u8; 2] = crate::close::NORMAL.to_be_bytes();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_splits_authority_and_path() {
        let target = parse_ws_url("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(target.authority, "127.0.0.1:8080");
        assert_eq!(target.path, "/ws");
        let target = parse_ws_url("ws://example").unwrap();
        assert_eq!(target.authority, "example:80");
        assert_eq!(target.path, "/");
        let target = parse_ws_url("ws://[::1]?token=t").unwrap();
        assert_eq!(target.authority, "[::1]:80");
        assert_eq!(target.path, "/?token=t");
        assert!(!target.tls);
        assert_eq!(target.host(), "::1");
        let target = parse_ws_url("wss://host/ws").unwrap();
        assert_eq!(target.authority, "host:443");
        assert!(target.tls);
        assert_eq!(target.host(), "host");
        assert_eq!(target.to_string(), "wss://host:443/ws");
        assert_eq!(parse_ws_url("wss://h:9/").unwrap().host(), "h");
        assert!(parse_ws_url("http://host/ws").is_err());
        assert!(parse_ws_url("ws:///ws").is_err());
        assert!(parse_ws_url("wss:///ws").is_err());
    }

    #[test]
    fn publish_url_appends_the_endpoint() {
        assert_eq!(
            publish_url("http://127.0.0.1:8081/").unwrap(),
            "http://127.0.0.1:8081/v1/publish"
        );
        assert_eq!(
            publish_url("https://127.0.0.1:8081").unwrap(),
            "https://127.0.0.1:8081/v1/publish"
        );
        assert!(publish_url("ftp://127.0.0.1:8081").is_err());
        assert!(publish_url("http://").is_err());
        assert!(publish_url("https://").is_err());
    }

    #[test]
    fn text_frames_are_masked_at_every_header_size() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut frame = Vec::new();
        masked_text_frame(&["ab", "", "c"], mask, &mut frame);
        assert_eq!(
            frame,
            [
                0x81,
                0x83,
                0x11,
                0x22,
                0x33,
                0x44,
                b'a' ^ 0x11,
                b'b' ^ 0x22,
                b'c' ^ 0x33
            ]
        );
        // 7-bit, 16-bit and 64-bit payload lengths, each split unevenly against the mask.
        for (payload_bytes, header) in [
            (125, vec![0x81, 0x80 | 125]),
            (126, vec![0x81, 0x80 | 126, 0, 126]),
            (65_535, vec![0x81, 0x80 | 126, 0xFF, 0xFF]),
            (65_536, vec![0x81, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let text: String = (0..payload_bytes)
                .map(|at| char::from(b'a' + (at % 26) as u8))
                .collect();
            let (head, tail) = text.split_at(3);
            masked_text_frame(&[head, tail], mask, &mut frame);
            assert_eq!(&frame[..header.len()], &header[..], "{payload_bytes} bytes");
            assert_eq!(&frame[header.len()..header.len() + 4], &mask);
            let unmasked: Vec<u8> = frame[header.len() + 4..]
                .iter()
                .enumerate()
                .map(|(at, byte)| byte ^ mask[at % 4])
                .collect();
            assert_eq!(unmasked, text.as_bytes(), "{payload_bytes} bytes");
        }
    }

    #[test]
    fn upgrade_response_needs_the_whole_head_and_status_101() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(parse_upgrade_response(&head[..20]), Ok(None));
        assert_eq!(parse_upgrade_response(head), Ok(Some(head.len())));
        let mut with_frame = head.to_vec();
        with_frame.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(parse_upgrade_response(&with_frame), Ok(Some(head.len())));
        assert_eq!(
            parse_upgrade_response(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Err(UpgradeError::Refused("HTTP/1.1 404 Not Found".into()))
        );
        assert_eq!(
            parse_upgrade_response(b"SSH-2.0\r\n\r\n"),
            Err(UpgradeError::Malformed)
        );
    }

    #[test]
    fn control_frames_are_masked() {
        let mut out = [0u8; CONTROL_FRAME_BYTES_MAX];
        let length = encode_control_frame(OPCODE_PONG, b"ab", [1, 2, 3, 4], &mut out);
        assert_eq!(
            &out[..length],
            &[0x8A, 0x82, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2]
        );
        let length = encode_control_frame(OPCODE_CLOSE, &CLOSE_NORMAL_PAYLOAD, [0; 4], &mut out);
        assert_eq!(&out[..length], &[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]);
    }

    #[test]
    fn the_accept_header_must_answer_the_key() {
        let expected = tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(expected, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let head = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                     sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(accept_matches(head, &expected));
        assert!(!accept_matches(head, "AAAA"));
        assert!(!accept_matches(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            &expected
        ));
    }

    #[test]
    fn request_head_offers_the_key() {
        assert_eq!(
            String::from_utf8(request_head("/ws", "h:1", "a2V5", None)).unwrap(),
            "GET /ws HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        assert_eq!(
            String::from_utf8(request_head("/ws", "h:1", "a2V5", Some("t.k.n"))).unwrap(),
            "GET /ws HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer t.k.n\r\n\r\n"
        );
    }
}
