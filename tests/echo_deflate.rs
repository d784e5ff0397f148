//! The echo endpoint (`echo_path`) and permessage-deflate, end to end against the real binary:
//! the endpoint is absent unless configured and, when it is, sends every message back through the
//! same connection code as `/ws`; deflate is agreed only when enabled, inflates what clients
//! compress (bounded by `message_bytes_max` after inflation: 1009), echoes compressed, and one
//! publish reaches a deflate client as the compressed twin and a plain client as the plain frame.
//! Frames are built and read by hand (`common::raw`) and inflated with flate2, so every byte on
//! the wire is checked.

mod common;

use common::raw::{
    http_exchange, masked, upgrade_request, Frame, RawWs, FIN, OP_BINARY, OP_CONTINUATION, OP_PING,
    OP_PONG, OP_TEXT, RSV1,
};
use common::{assert_connected_shape, watchdog, Server, STEP};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};

const ECHO: [&str; 2] = ["--echo-path", "/echo"];
const DEFLATE: [&str; 2] = ["--permessage-deflate", "true"];
const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// What a sync flush ends with; RFC 7692 section 7.2.1 strips it from every message.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// `payload` deflated without context as a client does it: a sync flush, its tail removed.
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 1024);
    compress
        .compress_vec(payload, &mut out, FlushCompress::Sync)
        .unwrap();
    assert_eq!(compress.total_in() as usize, payload.len());
    assert!(out.ends_with(&TAIL), "a sync flush ends with the tail");
    out.truncate(out.len() - TAIL.len());
    out
}

/// Inflates a compressed message's payload, adding back the stripped tail.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut decompress = Decompress::new(false);
    let mut out = Vec::with_capacity(payload.len() * 4 + 1024);
    loop {
        let consumed = decompress.total_in() as usize;
        decompress
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .unwrap();
        if decompress.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

async fn next_data(raw: &mut RawWs) -> Frame {
    loop {
        let frame = raw
            .next_frame(STEP)
            .await
            .expect("expected a frame, the socket ended");
        if frame.opcode != OP_PING && frame.opcode != OP_PONG {
            return frame;
        }
    }
}

#[tokio::test]
async fn echo_path_is_404_unless_configured() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let request = upgrade_request(server.ws, "/echo");
        let (response, _) = http_exchange(server.ws, request.as_bytes()).await;
        assert_eq!(response.status, 404, "{response:?}");
    })
    .await;
}

#[tokio::test]
async fn echo_path_sends_every_message_back_through_the_real_connection() {
    watchdog(async {
        let server = Server::start(&ECHO).await;
        let mut echo = RawWs::connect(server.ws, "/echo").await;
        // No greeting: the first frame is the echo of the first message.
        echo.send_text(r#"{"type":"ping","id":1}"#).await;
        let frame = next_data(&mut echo).await;
        assert_eq!(
            (frame.fin, frame.rsv, frame.opcode, &frame.payload[..]),
            (true, 0, OP_TEXT, &br#"{"type":"ping","id":1}"#[..]),
            "a command is echoed, not answered"
        );
        // A binary message in fragments, a ping between them: pong, then the whole message.
        echo.send(&masked(OP_BINARY, &[0, 1, 2])).await;
        echo.send(&masked(FIN | OP_PING, b"hb")).await;
        echo.send(&masked(FIN | OP_CONTINUATION, &[255, 254])).await;
        let pong = echo.next_frame(STEP).await.unwrap();
        assert_eq!((pong.opcode, &pong.payload[..]), (OP_PONG, &b"hb"[..]));
        let frame = next_data(&mut echo).await;
        assert_eq!(
            (frame.opcode, &frame.payload[..]),
            (OP_BINARY, &[0, 1, 2, 255, 254][..])
        );
        // Invalid UTF-8 closes 1007, as on /ws.
        echo.send(&masked(FIN | OP_TEXT, b"\xff")).await;
        assert_eq!(echo.expect_close(STEP).await.0, 1007);
        echo.expect_socket_closed(STEP).await;
        // /ws is unchanged beside it.
        let mut normal = RawWs::connect(server.ws, "/ws").await;
        assert_connected_shape(&normal.next_json().await);
    })
    .await;
}

#[tokio::test]
async fn deflate_is_not_agreed_unless_enabled() {
    watchdog(async {
        let server = Server::start(&ECHO).await;
        let (mut raw, response) = RawWs::connect_offering(server.ws, "/echo", OFFER).await;
        assert_eq!(response.header("sec-websocket-extensions"), None);
        // Without the extension RSV1 is a protocol error.
        raw.send(&masked(FIN | RSV1 | OP_TEXT, &deflate(b"hi")))
            .await;
        assert_eq!(raw.expect_close(STEP).await.0, 1002);
    })
    .await;
}

#[tokio::test]
async fn deflate_is_agreed_inflated_and_echoed_compressed() {
    watchdog(async {
        let mut args = ECHO.to_vec();
        args.extend(DEFLATE);
        let server = Server::start(&args).await;
        let (mut raw, response) = RawWs::connect_offering(server.ws, "/echo", OFFER).await;
        assert_eq!(
            response.header("sec-websocket-extensions"),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        let text = "corecast ".repeat(100);
        raw.send(&masked(FIN | RSV1 | OP_TEXT, &deflate(text.as_bytes())))
            .await;
        let frame = next_data(&mut raw).await;
        assert_eq!((frame.fin, frame.rsv, frame.opcode), (true, 4, OP_TEXT));
        assert!(frame.payload.len() < text.len() / 4, "{frame:?}");
        assert_eq!(inflate(&frame.payload), text.as_bytes());
        // A compressed message in two fragments: RSV1 on the first only.
        let compressed = deflate(&[7u8; 3000]);
        let (first, rest) = compressed.split_at(compressed.len() / 2);
        raw.send(&masked(RSV1 | OP_BINARY, first)).await;
        raw.send(&masked(FIN | OP_CONTINUATION, rest)).await;
        let frame = next_data(&mut raw).await;
        assert_eq!((frame.rsv, frame.opcode), (4, OP_BINARY));
        assert_eq!(inflate(&frame.payload), vec![7u8; 3000]);
        // An uncompressed message is still fine on a deflate connection.
        raw.send_text("plain").await;
        let frame = next_data(&mut raw).await;
        assert_eq!(inflate(&frame.payload), b"plain");
    })
    .await;
}

#[tokio::test]
async fn offers_that_cannot_be_honoured_are_declined_or_answered_uncompressed() {
    watchdog(async {
        let mut args = ECHO.to_vec();
        args.extend(DEFLATE);
        let server = Server::start(&args).await;
        // An unknown parameter declines that offer; the next one is taken, and a smaller
        // server window is echoed back and met by not compressing at all.
        let offers = "permessage-deflate; mystery, permessage-deflate; server_max_window_bits=10";
        let (mut raw, response) = RawWs::connect_offering(server.ws, "/echo", offers).await;
        assert_eq!(
            response.header("sec-websocket-extensions"),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=10"
            )
        );
        let text = "window ".repeat(50);
        raw.send(&masked(FIN | RSV1 | OP_TEXT, &deflate(text.as_bytes())))
            .await;
        let frame = next_data(&mut raw).await;
        assert_eq!((frame.rsv, &frame.payload[..]), (0, text.as_bytes()));
        // Nothing acceptable: no extension at all.
        let (_, response) =
            RawWs::connect_offering(server.ws, "/echo", "permessage-deflate; mystery").await;
        assert_eq!(response.header("sec-websocket-extensions"), None);
    })
    .await;
}

#[tokio::test]
async fn a_zip_bomb_is_cut_at_the_inflated_size_with_1009() {
    watchdog(async {
        let mut args = ECHO.to_vec();
        args.extend(DEFLATE);
        args.extend(["--message-bytes-max", "65536"]);
        let server = Server::start(&args).await;
        let (mut raw, _) = RawWs::connect_offering(server.ws, "/echo", OFFER).await;
        // 16 MiB of zeros compress to a few KiB: far under frame_bytes_max, far over the limit.
        let bomb = deflate(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < 65_536, "{} bytes", bomb.len());
        raw.send(&masked(FIN | RSV1 | OP_TEXT, &bomb)).await;
        let (code, reason) = raw.expect_close(STEP).await;
        assert_eq!(code, 1009, "{reason}");
        assert_eq!(reason, "message larger than the 65536-byte limit");
        raw.expect_socket_closed(STEP).await;
        // Exactly at the limit inflates and echoes.
        let (mut raw, _) = RawWs::connect_offering(server.ws, "/echo", OFFER).await;
        raw.send(&masked(
            FIN | RSV1 | OP_BINARY,
            &deflate(&vec![1u8; 65_536]),
        ))
        .await;
        let frame = next_data(&mut raw).await;
        assert_eq!(inflate(&frame.payload), vec![1u8; 65_536]);
    })
    .await;
}

#[tokio::test]
async fn one_publish_reaches_deflate_clients_compressed_and_plain_clients_plain() {
    watchdog(async {
        let server = Server::start(&DEFLATE).await;
        let (mut deflated, response) =
            RawWs::connect_offering(server.ws, "/ws?channels=news", OFFER).await;
        assert!(response.header("sec-websocket-extensions").is_some());
        let hello = next_data(&mut deflated).await;
        assert_eq!(hello.rsv, 0, "replies go uncompressed: {hello:?}");
        assert_connected_shape(&serde_json::from_slice(&hello.payload).unwrap());
        let mut plain = RawWs::connect(server.ws, "/ws?channels=news").await;
        assert_connected_shape(&plain.next_json().await);
        let data = json!({"headline": "deflate ".repeat(40)});
        let offset = server.publish("news", &data).await;
        let compressed = next_data(&mut deflated).await;
        let uncompressed = next_data(&mut plain).await;
        assert_eq!((compressed.rsv, compressed.opcode), (4, OP_TEXT));
        assert_eq!((uncompressed.rsv, uncompressed.opcode), (0, OP_TEXT));
        assert!(compressed.payload.len() < uncompressed.payload.len() / 2);
        assert_eq!(
            inflate(&compressed.payload),
            uncompressed.payload,
            "the same message, byte for byte"
        );
        let message: Value = serde_json::from_slice(&uncompressed.payload).unwrap();
        common::assert_message(&message, "news", offset, &data);
        // A second publish: no context carried over, each inflates alone.
        let offset = server.publish("news", &json!(2)).await;
        let second = next_data(&mut deflated).await;
        let message: Value = serde_json::from_slice(&inflate(&second.payload)).unwrap();
        common::assert_message(&message, "news", offset, &json!(2));
    })
    .await;
}
