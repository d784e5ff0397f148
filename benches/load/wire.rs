//! The bench's side of the wire: its upgrade requests and the field scan of a delivery, over
//! the client codec it shares with the Rust client, `corecast_proto::wire` (re-exported here:
//! URL parsing, the upgrade answer, masked client frames).
//!
//! Owns the byte formats only the bench reads or writes. It never touches a socket or a clock:
//! each function is pure over bytes, so the formats are pinned by byte-literal tests below and
//! the connection only moves bytes.
//! A delivery is scanned, not parsed: the bench reads `seq` and `t_us` and nothing else, so a
//! received message costs a few `memmem` searches and no allocation.

use memchr::memmem::Finder;

use corecast_proto::wire::request_head;
pub use corecast_proto::wire::{
    encode_control_frame, masked_text_frame, parse_upgrade_response, parse_ws_url, publish_url,
    UpgradeError, WsTarget, CLOSE_NORMAL_PAYLOAD, CONTROL_FRAME_BYTES_MAX,
    CONTROL_PAYLOAD_BYTES_MAX, OPCODE_CLOSE, OPCODE_PONG,
};

/// The `Sec-WebSocket-Key` every bench connection sends. RFC 6455 wants a random nonce to defeat
/// caching proxies; the bench talks to the server directly, so a fixed one is enough.
const HANDSHAKE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The upgrade request for `target` subscribing at connect to `channel`. Built once and sent
/// as is by every connection.
pub fn upgrade_request(target: &WsTarget, channel: &str) -> Vec<u8> {
    let separator = if target.path.contains('?') { '&' } else { '?' };
    let path = format!(
        "{}{separator}channels={}",
        target.path,
        percent_encode(channel)
    );
    request_head(&path, &target.authority, HANDSHAKE_KEY, None)
}

/// The upgrade request of the publisher connection to `target`: its path as written, with no
/// `channels` query, since the publisher subscribes to nothing; what it sends is relayed to
/// every subscriber.
pub fn publisher_upgrade_request(target: &WsTarget) -> Vec<u8> {
    request_head(&target.path, &target.authority, HANDSHAKE_KEY, None)
}

/// Percent-encodes everything outside RFC 3986's unreserved set, so that `+`, `:` or `@` in a
/// channel name reach the server's query decoder unchanged (a bare `+` would decode to a space).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One event as the bench publishes it, read back from a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The event's sequence number, 0-based across warm-up and measured events.
    pub seq: u64,
    /// When the publisher sent it, microseconds since the UNIX epoch.
    pub sent_us: u64,
}

/// Searchers for the few fields the bench reads, built once and shared by every connection.
pub struct Scanner {
    connected: Finder<'static>,
    message: Finder<'static>,
    data: Finder<'static>,
    seq: Finder<'static>,
    sent_us: Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            connected: Finder::new(br#""type":"connected""#),
            message: Finder::new(br#""type":"message""#),
            data: Finder::new(br#""data":"#),
            seq: Finder::new(br#""seq":"#),
            sent_us: Finder::new(br#""t_us":"#),
        }
    }
}

impl Scanner {
    /// Whether a text frame is the server's `connected` greeting.
    pub fn is_connected(&self, text: &[u8]) -> bool {
        self.connected.find(text).is_some()
    }

    /// Reads `seq` and `t_us` out of a `message` frame; `None` for any other text frame or one
    /// whose data is not the bench's. Fields are looked for inside `data` only, so a channel
    /// name can never be mistaken for them.
    pub fn delivery(&self, text: &[u8]) -> Option<Delivery> {
        self.message.find(text)?;
        let data = &text[self.data.find(text)?..];
        let seq = unsigned_after(data, self.seq.find(data)? + self.seq.needle().len())?;
        let sent_us = unsigned_after(data, self.sent_us.find(data)? + self.sent_us.needle().len())?;
        Some(Delivery { seq, sent_us })
    }
}

/// The unsigned decimal starting at `at` (after optional spaces), `None` if there is none or it
/// overflows `u64`.
fn unsigned_after(text: &[u8], at: usize) -> Option<u64> {
    let digits = text.get(at..)?;
    let digits = &digits[digits.iter().take_while(|b| **b == b' ').count()..];
    let length = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if length == 0 {
        return None;
    }
    digits[..length].iter().try_fold(0u64, |value, digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_request_subscribes_with_an_encoded_channel() {
        let target = parse_ws_url("ws://127.0.0.1:8080/ws?x=1").unwrap();
        let request = upgrade_request(&target, "a+b.c");
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "GET /ws?x=1&channels=a%2Bb.c HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
    }

    #[test]
    fn publisher_upgrade_request_keeps_the_path_and_adds_no_channels() {
        let target = parse_ws_url("ws://127.0.0.1:8080/publish?token=t").unwrap();
        assert_eq!(
            String::from_utf8(publisher_upgrade_request(&target)).unwrap(),
            "GET /publish?token=t HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        assert_eq!(target.to_string(), "ws://127.0.0.1:8080/publish?token=t");
        let target = parse_ws_url("ws://example").unwrap();
        assert_eq!(target.to_string(), "ws://example:80/");
    }

    #[test]
    fn delivery_reads_seq_and_sent_time_from_data_only() {
        let scanner = Scanner::default();
        let frame = br#"{"type":"message","channel":"bench.fanout","offset":7,"ts_ms":1,"data":{"seq":42,"t_us":1700000000123456,"pad":"xx"}}"#;
        assert_eq!(
            scanner.delivery(frame),
            Some(Delivery {
                seq: 42,
                sent_us: 1_700_000_000_123_456
            })
        );
        let reordered = br#"{"data":{"pad":"x","seq": 3,"t_us":9},"type":"message"}"#;
        assert_eq!(
            scanner.delivery(reordered),
            Some(Delivery { seq: 3, sent_us: 9 })
        );
        let foreign = br#"{"type":"message","channel":"c","data":{"hello":1}}"#;
        assert_eq!(scanner.delivery(foreign), None);
        let overflow = br#"{"type":"message","data":{"seq":99999999999999999999,"t_us":1}}"#;
        assert_eq!(scanner.delivery(overflow), None);
        let connected = br#"{"type":"connected","conn_id":"a","shard":0}"#;
        assert_eq!(scanner.delivery(connected), None);
        assert!(scanner.is_connected(connected));
        assert!(!scanner.is_connected(frame));
    }
}
