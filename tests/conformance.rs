//! The connection behaviours Autobahn|Testsuite found wrong or lax, pinned on `/ws` with
//! hand-built frames so they hold without the suite: after a protocol violation the server sends
//! its close frame and then ends its side of the TCP connection at once, without waiting for a
//! close reply it can no longer parse (case 3.4); and invalid UTF-8 closes 1007 as soon as the
//! bad bytes arrive, even in the middle of a frame that has not fully arrived (cases 6.4.x, "fail
//! fast"). Each test sets `close_timeout_ms` far above its own wait, so passing proves the
//! behaviour and not a timeout.

mod common;

use std::time::Duration;

use common::raw::{frame_header, masked, read_until_closed, RawWs, FIN, OP_CONTINUATION, OP_TEXT};
use common::{watchdog, Server};

const SLOW_CLOSE: [&str; 2] = ["--close-timeout-ms", "20000"];
/// Well under `SLOW_CLOSE`: what "at once" means here.
const SOON: Duration = Duration::from_secs(3);

/// The mask `common::raw::masked` uses, to mask frames sent in pieces.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn masked_bytes(payload: &[u8]) -> Vec<u8> {
    payload
        .iter()
        .enumerate()
        .map(|(at, byte)| byte ^ MASK[at % 4])
        .collect()
}

#[tokio::test]
async fn after_a_violation_the_close_frame_is_followed_by_the_end_of_the_socket() {
    watchdog(async {
        let server = Server::start(&SLOW_CLOSE).await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        // A header with RSV2 set (case 3.4), then the rest of that frame and a ping arriving
        // byte by byte:
        // none of it can be read as frames any more, and none of it may delay the close.
        let mut bad = masked(FIN | 0x20 | OP_TEXT, b"Hello, world!");
        bad.extend_from_slice(&masked(FIN | 0x09, b""));
        raw.send(&bad[..6]).await;
        let (code, _) = raw.expect_close(SOON).await;
        assert_eq!(code, 1002);
        for byte in &bad[6..] {
            raw.send_lenient(std::slice::from_ref(byte)).await;
        }
        // No close reply from us: the server still ends the connection now, not in 20 s.
        read_until_closed(&mut raw.stream, SOON).await;
    })
    .await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007_before_its_frame_has_fully_arrived() {
    watchdog(async {
        let server = Server::start(&SLOW_CLOSE).await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        // One 100-byte text frame; only its first 10 payload bytes are sent, the last two of
        // them start a code point above U+10FFFF.
        let mut payload = b"valid \xce\xba\xf4\x90".to_vec();
        payload.resize(100, b'x');
        let mut frame = frame_header(OP_TEXT | FIN, payload.len(), true);
        frame.extend_from_slice(&masked_bytes(&payload));
        raw.send(&frame[..6 + 10]).await;
        let (code, reason) = raw.expect_close(SOON).await;
        assert_eq!(
            (code, reason.as_str()),
            (1007, "text message is not valid UTF-8")
        );
        read_until_closed(&mut raw.stream, SOON).await;

        // The same inside a continuation, where a character started in the previous fragment.
        let mut raw = RawWs::connect_ready(server.ws).await;
        raw.send(&masked(OP_TEXT, b"ok \xe2")).await;
        let mut frame = frame_header(OP_CONTINUATION | FIN, 50, true);
        frame.extend_from_slice(&masked_bytes(b"\x82A"));
        raw.send(&frame).await;
        assert_eq!(raw.expect_close(SOON).await.0, 1007);
    })
    .await;
}
