//! Pins down what the server does with bad input on a WebSocket (PROTOCOL.md section 2): the exact
//! error code for bad commands (and that the connection stays usable), the exact close code for
//! frame-level violations, and that a well-behaved subscriber connected at the same time still
//! gets a publish made right after. Bad frames are written byte by byte over a raw TCP socket.

mod common;

use common::raw::{
    frame_header, masked, unmasked, RawWs, FIN, OP_BINARY, OP_CONTINUATION, OP_PING, OP_PONG,
    OP_TEXT, RSV1,
};
use common::{assert_error, watchdog, Bystander, Client, Server, STEP};
use serde_json::{json, Value};

/// Limits small enough to cross with a few KiB, with a message limit above the frame limit so the
/// two are told apart.
const SMALL_FRAMES: &[&str] = &["--frame-bytes-max", "4096", "--message-bytes-max", "8192"];

/// Asserts the server closes `raw` with `code` and then closes the socket.
async fn expect_close_code(raw: &mut RawWs, code: u16, why: &str) {
    let (got, reason) = raw.expect_close(STEP).await;
    assert_eq!(
        got, code,
        "expected close {code} for {why}, got {got} {reason:?}"
    );
    raw.expect_socket_closed(STEP).await;
}

/// The error reply the raw connection gets for `command`.
async fn raw_request(raw: &mut RawWs, command: &str) -> Value {
    raw.send_text(command).await;
    raw.next_json().await
}

/// A `ping` command over the raw connection answers `pong`: the connection is still usable.
async fn raw_ping(raw: &mut RawWs, id: u64) {
    let pong = raw_request(raw, &json!({"type": "ping", "id": id}).to_string()).await;
    assert_eq!(
        pong["type"], "pong",
        "expected a pong after a recoverable error, got {pong}"
    );
    assert_eq!(
        pong["id"], id,
        "expected the pong to echo id {id}, got {pong}"
    );
}

#[tokio::test]
async fn bad_json_is_bad_request_and_keeps_the_connection() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut client = Client::connect(&server).await;
        for text in ["{not json", "", "[1,2", "\"just a string\"", "42", "null"] {
            client.send_text(text).await;
            assert_error(&client.recv().await, Value::Null, "bad_request");
        }
        client.ping(1).await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn unknown_type_is_bad_request_echoing_the_id() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut client = Client::connect(&server).await;
        let reply = client.request(json!({"type": "frobnicate", "id": 6})).await;
        assert_error(&reply, json!(6), "bad_request");
        let reply = client.request(json!({"type": 17, "id": 7})).await;
        assert_error(&reply, json!(7), "bad_request");
        client.ping(8).await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn missing_field_is_bad_request_echoing_the_id() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut client = Client::connect(&server).await;
        let reply = client.request(json!({"type": "subscribe", "id": 7})).await;
        assert_error(&reply, json!(7), "bad_request");
        let reply = client
            .request(json!({"type": "unsubscribe", "id": 8}))
            .await;
        assert_error(&reply, json!(8), "bad_request");
        let reply = client.request(json!({"channel": "a.b", "id": 9})).await;
        assert_error(&reply, json!(9), "bad_request");
        client.ping(11).await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn invalid_channel_names_are_refused_and_255_bytes_is_accepted() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut client = Client::connect(&server).await;
        let too_long = "a".repeat(256);
        let invalid = [
            "a..b", &too_long, "a.>.b", "", ".a", "a.", "a b", "a.*b", "a.b>", "é",
        ];
        for (id, channel) in (100..).zip(invalid) {
            let reply = client
                .request(json!({"type": "subscribe", "channel": channel, "id": id}))
                .await;
            assert_error(&reply, json!(id), "invalid_channel");
        }
        // The longest legal name, and every legal token character.
        client.subscribe(&"a".repeat(255), 1).await;
        client.subscribe("Az09_:@=+-.x", 2).await;
        client.ping(3).await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn one_subscription_over_the_limit_is_too_many_subscriptions() {
    watchdog(async {
        let server = Server::start(&["--subscriptions-per-conn-max", "4"]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut client = Client::connect(&server).await;
        for (id, channel) in (1..).zip(["s.1", "s.2", "s.*", "s.>"]) {
            client.subscribe(channel, id).await;
        }
        let reply = client
            .request(json!({"type": "subscribe", "channel": "s.5", "id": 5}))
            .await;
        assert_error(&reply, json!(5), "too_many_subscriptions");
        // The limit counts live subscriptions: freeing one makes room again.
        client.unsubscribe("s.1", 6).await;
        client.subscribe("s.5", 7).await;
        client.ping(8).await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn frame_over_frame_bytes_max_closes_1009() {
    watchdog(async {
        let server = Server::start(SMALL_FRAMES).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        let payload = format!(r#"{{"type":"ping","id":1,"pad":"{}"}}"#, "x".repeat(5000));
        // The server may close after the header alone, so the payload write may fail.
        raw.send_lenient(&masked(FIN | OP_TEXT, payload.as_bytes()))
            .await;
        expect_close_code(&mut raw, 1009, "a 5 KB frame over --frame-bytes-max 4096").await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn huge_declared_length_closes_1009_without_waiting_for_the_payload() {
    watchdog(async {
        let server = Server::start(SMALL_FRAMES).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        // Declares 1 GiB and sends none of it: the header alone must be enough to refuse.
        raw.send(&frame_header(FIN | OP_TEXT, 1 << 30, true)).await;
        expect_close_code(&mut raw, 1009, "a frame header declaring 1 GiB").await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn frame_at_frame_bytes_max_is_accepted() {
    watchdog(async {
        let mut flags = SMALL_FRAMES.to_vec();
        flags.extend(["--client-publish", "pad.>"]);
        let server = Server::start(&flags).await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        let head = r#"{"type":"publish","channel":"pad.1","id":1,"data":""#;
        let pad = "x".repeat(4096 - head.len() - 2);
        let payload = format!(r#"{head}{pad}"}}"#);
        assert_eq!(payload.len(), 4096);
        let reply = raw_request(&mut raw, &payload).await;
        assert_eq!(
            (&reply["type"], &reply["id"]),
            (&json!("published"), &json!(1)),
            "expected a frame of exactly --frame-bytes-max to be read as a command, got {reply}"
        );
        raw_ping(&mut raw, 2).await;
    })
    .await
}

#[tokio::test]
async fn fragmented_message_over_message_bytes_max_closes_1009() {
    watchdog(async {
        let server = Server::start(SMALL_FRAMES).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        let chunk = vec![b'x'; 3000];
        // Each fragment is under the 4096 frame limit; together they pass the 8192 message limit.
        let mut bytes = masked(OP_TEXT, b"\"");
        bytes.extend(masked(OP_CONTINUATION, &chunk));
        bytes.extend(masked(OP_CONTINUATION, &chunk));
        bytes.extend(masked(OP_CONTINUATION, &chunk));
        bytes.extend(masked(FIN | OP_CONTINUATION, b"\""));
        raw.send_lenient(&bytes).await;
        expect_close_code(
            &mut raw,
            1009,
            "9 KB in fragments over --message-bytes-max 8192",
        )
        .await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn invalid_utf8_text_frame_closes_1007() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        raw.send(&masked(
            FIN | OP_TEXT,
            b"{\"type\":\"ping\",\"id\":\"\xff\xfe\"}",
        ))
        .await;
        expect_close_code(&mut raw, 1007, "invalid UTF-8 in a text frame").await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn invalid_utf8_split_across_fragments_closes_1007() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        // "é" is C3 A9: a lone C3 followed by a plain byte is invalid only once joined.
        let mut bytes = masked(OP_TEXT, b"\"\xc3");
        bytes.extend(masked(FIN | OP_CONTINUATION, b"A\""));
        raw.send(&bytes).await;
        expect_close_code(&mut raw, 1007, "invalid UTF-8 across two fragments").await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn unmasked_client_frame_closes_1002() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        raw.send(&unmasked(FIN | OP_TEXT, br#"{"type":"ping","id":1}"#))
            .await;
        expect_close_code(&mut raw, 1002, "an unmasked client frame").await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn reserved_bits_close_1002() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        // RSV1 without a negotiated extension (none was asked for in the handshake).
        raw.send(&masked(FIN | RSV1 | OP_TEXT, br#"{"type":"ping","id":1}"#))
            .await;
        expect_close_code(&mut raw, 1002, "RSV1 set without an extension").await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn reserved_opcode_closes_1002() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        raw.send(&masked(FIN | 0x3, b"x")).await;
        expect_close_code(&mut raw, 1002, "reserved opcode 0x3").await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn fragmented_control_frame_closes_1002() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        // Control frames must not be fragmented (RFC 6455 5.5).
        raw.send(&masked(OP_PING, b"no fin")).await;
        expect_close_code(&mut raw, 1002, "a ping without FIN").await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn continuation_without_a_start_closes_1002() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        raw.send(&masked(FIN | OP_CONTINUATION, br#"{"type":"ping"}"#))
            .await;
        expect_close_code(
            &mut raw,
            1002,
            "a continuation frame with nothing to continue",
        )
        .await;
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn binary_frame_is_refused_without_harm() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut bystander = Bystander::join(&server, "good.1").await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        raw.send(&masked(FIN | OP_BINARY, br#"{"type":"ping","id":1}"#))
            .await;
        // Commands are JSON text frames. The contract allows either answer: a `bad_request` error
        // (connection kept) or close 1003 (unsupported data).
        let frame = raw
            .next_frame(STEP)
            .await
            .expect("expected an answer to a binary frame, the socket ended");
        match frame.opcode {
            OP_TEXT => {
                let reply: Value = serde_json::from_slice(&frame.payload)
                    .expect("expected a JSON error reply to a binary frame");
                assert_eq!(reply["type"], "error", "expected an error, got {reply}");
                assert_eq!(
                    reply["code"], "bad_request",
                    "expected bad_request, got {reply}"
                );
                raw_ping(&mut raw, 2).await;
            }
            0x8 => {
                let (code, reason) = frame.close_code();
                assert_eq!(
                    code, 1003,
                    "expected close 1003 for a binary frame, got {reason:?}"
                );
                raw.expect_socket_closed(STEP).await;
            }
            _ => panic!("expected a bad_request error or close 1003, got {frame:?}"),
        }
        bystander.assert_unaffected(&server).await;
    })
    .await
}

#[tokio::test]
async fn fragmented_text_command_is_one_command() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        let command = br#"{"type":"ping","id":7}"#;
        let (first, second) = command.split_at(9);
        let mut bytes = masked(OP_TEXT, first);
        bytes.extend(masked(FIN | OP_CONTINUATION, second));
        raw.send(&bytes).await;
        let reply = raw.next_json().await;
        assert_eq!(
            reply["type"], "pong",
            "expected the two fragments to make one ping, got {reply}"
        );
        assert_eq!(
            reply["id"], 7,
            "expected the pong to echo id 7, got {reply}"
        );

        // The same command split in three, sent with pauses between the fragments.
        let (a, rest) = command.split_at(3);
        let (b, c) = rest.split_at(10);
        raw.send(&masked(OP_TEXT, a)).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        raw.send(&masked(OP_CONTINUATION, b)).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        raw.send(&masked(FIN | OP_CONTINUATION, c)).await;
        let reply = raw.next_json().await;
        assert_eq!(
            reply["id"], 7,
            "expected three fragments to make one ping, got {reply}"
        );
        raw_ping(&mut raw, 8).await;
    })
    .await
}

#[tokio::test]
async fn ping_between_fragments_gets_a_pong_and_the_message_still_completes() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        let command = br#"{"type":"ping","id":8}"#;
        let (first, second) = command.split_at(10);
        let mut bytes = masked(OP_TEXT, first);
        bytes.extend(masked(FIN | OP_PING, b"mid-message"));
        raw.send(&bytes).await;
        // The pong must come now, while the text message is still incomplete.
        let pong = loop {
            let frame = raw
                .next_frame(STEP)
                .await
                .expect("expected a pong, the socket ended");
            if frame.opcode != OP_PING {
                break frame;
            }
        };
        assert_eq!(
            (pong.opcode, pong.fin, pong.payload.as_slice()),
            (OP_PONG, true, &b"mid-message"[..]),
            "expected a pong echoing the ping payload mid-message, got {pong:?}"
        );
        raw.send(&masked(FIN | OP_CONTINUATION, second)).await;
        let reply = raw.next_json().await;
        assert_eq!(
            reply["type"], "pong",
            "expected the message to complete as a ping, got {reply}"
        );
        assert_eq!(
            reply["id"], 8,
            "expected the pong to echo id 8, got {reply}"
        );
    })
    .await
}

#[tokio::test]
async fn client_close_is_echoed_and_the_socket_closed() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        raw.send(&masked(FIN | 0x8, &payload)).await;
        let (code, _) = raw.expect_close(STEP).await;
        assert_eq!(code, 1000, "expected the server to echo close 1000");
        raw.expect_socket_closed(STEP).await;
    })
    .await
}
