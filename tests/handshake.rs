//! Pins down the WebSocket port's answers to anything that is not a good upgrade (PROTOCOL.md
//! section 2): the exact HTTP status for each kind of bad request, that a response always arrives
//! (never a hang), that oversized and slow handshakes are cut off, and that the port keeps
//! accepting good clients afterwards. Requests are written byte by byte over raw TCP.

mod common;

use std::time::{Duration, Instant};

use common::raw::{
    connect, http_exchange, read_until_closed, upgrade_request, HttpResponse, RawWs,
};
use common::{watchdog, Client, Server, STEP};
use tokio::io::AsyncWriteExt;

/// An HTTP error on this port comes with a short body.
fn assert_short_error(response: &HttpResponse, status: u16, what: &str) {
    assert_eq!(
        response.status, status,
        "expected {status} for {what}, got {}",
        response.head
    );
    assert!(
        !response.body.is_empty() && response.body.len() < 1024,
        "expected a short body with the {status} for {what}, got {} bytes",
        response.body.len()
    );
}

#[tokio::test]
async fn get_ws_without_upgrade_headers_is_426() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let request = format!("GET /ws HTTP/1.1\r\nHost: {}\r\n\r\n", server.ws);
        let (response, _) = http_exchange(server.ws, request.as_bytes()).await;
        assert_short_error(&response, 426, "a plain GET /ws");
        Client::connect(&server).await;
    })
    .await
}

#[tokio::test]
async fn unknown_path_with_upgrade_headers_is_404() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let request = upgrade_request(server.ws, "/nope");
        let (response, _) = http_exchange(server.ws, request.as_bytes()).await;
        assert_short_error(&response, 404, "an upgrade to /nope");
        Client::connect(&server).await;
    })
    .await
}

#[tokio::test]
async fn root_path_upgrades_like_ws() {
    watchdog(async {
        let server = Server::start(&[]).await;
        // Asserts 101 and the RFC 6455 accept value.
        let mut raw = RawWs::connect(server.ws, "/").await;
        let hello = raw.next_json().await;
        common::assert_connected_shape(&hello);
    })
    .await
}

#[tokio::test]
async fn malformed_request_lines_are_400() {
    watchdog(async {
        let server = Server::start(&[]).await;
        for request in [
            "GARBAGE\r\n\r\n",
            "GET /ws\r\n\r\n",
            "GET /ws HTTP/1.1\r\nthis header has no colon\r\n\r\n",
        ] {
            let (response, _) = http_exchange(server.ws, request.as_bytes()).await;
            assert_short_error(&response, 400, &format!("{request:?}"));
        }
        Client::connect(&server).await;
    })
    .await
}

#[tokio::test]
async fn upgrade_without_a_key_is_400() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.ws
        );
        let (response, _) = http_exchange(server.ws, request.as_bytes()).await;
        assert_short_error(&response, 400, "an upgrade without Sec-WebSocket-Key");
    })
    .await
}

#[tokio::test]
async fn upgrade_with_an_unknown_version_is_refused() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let request = upgrade_request(server.ws, "/ws")
            .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
        let (response, _) = http_exchange(server.ws, request.as_bytes()).await;
        // RFC 6455 4.2.2 suggests 426 with `Sec-WebSocket-Version: 13`; the contract's "400 bad
        // upgrade" also fits. Anything but a switch is acceptable, a 101 is not.
        assert!(
            [400, 426].contains(&response.status),
            "expected 400 or 426 for Sec-WebSocket-Version: 8, got {}",
            response.head
        );
    })
    .await
}

#[tokio::test]
async fn headers_over_handshake_bytes_max_are_refused_and_closed() {
    watchdog(async {
        let server = Server::start(&["--handshake-bytes-max", "8192"]).await;
        let pad = "p".repeat(9000);
        let request = upgrade_request(server.ws, "/ws")
            .replace("\r\n\r\n", &format!("\r\nX-Pad: {pad}\r\n\r\n"));
        let mut stream = connect(server.ws).await;
        // The server may answer and close before reading everything: a failed write is fine.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut buf = Vec::new();
        let response = common::raw::read_http_response(&mut stream, &mut buf).await;
        assert!(
            [400, 431].contains(&response.status),
            "expected 431 (or 400) for 9 KB of headers over --handshake-bytes-max 8192, got {}",
            response.head
        );
        read_until_closed(&mut stream, STEP).await;
        Client::connect(&server).await;
    })
    .await
}

#[tokio::test]
async fn headers_just_under_handshake_bytes_max_upgrade() {
    watchdog(async {
        let server = Server::start(&["--handshake-bytes-max", "8192"]).await;
        let base = upgrade_request(server.ws, "/ws");
        let extra = "\r\nX-Pad: \r\n\r\n".len() - "\r\n\r\n".len();
        let pad = "p".repeat(8000 - base.len() - extra);
        let request = base.replace("\r\n\r\n", &format!("\r\nX-Pad: {pad}\r\n\r\n"));
        assert_eq!(request.len(), 8000);
        let (response, _) = http_exchange(server.ws, request.as_bytes()).await;
        assert_eq!(
            response.status, 101,
            "expected an 8000-byte upgrade under --handshake-bytes-max 8192 to switch, got {}",
            response.head
        );
    })
    .await
}

#[tokio::test]
async fn slowloris_half_request_line_is_cut_at_handshake_timeout() {
    watchdog(async {
        let server = Server::start(&["--handshake-timeout-ms", "500"]).await;
        let started = Instant::now();
        let mut stream = connect(server.ws).await;
        stream.write_all(b"GET /ws HT").await.expect("write half a request line");
        let bytes = read_until_closed(&mut stream, Duration::from_millis(500) + STEP).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(400),
            "expected the server to wait out --handshake-timeout-ms 500, it closed after {elapsed:?}"
        );
        // A 408 before closing is polite and allowed; anything else is not.
        assert!(
            bytes.is_empty() || bytes.starts_with(b"HTTP/1.1 4"),
            "expected silence or a 4xx before the close, got {:?}",
            String::from_utf8_lossy(&bytes)
        );
        Client::connect(&server).await;
    })
    .await
}

#[tokio::test]
async fn slowloris_trickling_bytes_is_still_cut_at_handshake_timeout() {
    watchdog(async {
        let server = Server::start(&["--handshake-timeout-ms", "500"]).await;
        let started = Instant::now();
        let mut stream = connect(server.ws).await;
        // One byte every 100 ms never completes the head; the timeout is for the whole handshake,
        // not per read, so the server must cut it near 500 ms all the same.
        let request = upgrade_request(server.ws, "/ws");
        for byte in request.as_bytes() {
            if started.elapsed() > Duration::from_millis(500) + STEP
                || stream.write_all(&[*byte]).await.is_err()
            {
                break;
            }
            let mut probe = Vec::new();
            if let Ok(Some(0) | None) = tokio::time::timeout(
                Duration::from_millis(100),
                common::raw::read_some_or_end(&mut stream, &mut probe),
            )
            .await
            {
                break;
            }
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(500) + Duration::from_secs(3),
            "expected a trickling handshake to be cut near --handshake-timeout-ms 500, \
             it lasted {elapsed:?}"
        );
        read_until_closed(&mut stream, STEP).await;
    })
    .await
}

#[tokio::test]
async fn upgrade_past_connections_per_shard_max_is_503_until_one_leaves() {
    watchdog(async {
        let server = Server::start(&["--connections-per-shard-max", "2"]).await;
        // Two shards of two connections each: the kernel spreads upgrades by hash, so a 503
        // comes after two to four accepted ones, when one lands on a full shard.
        let request = upgrade_request(server.ws, "/ws");
        let mut open = Vec::new();
        let refused = loop {
            let (response, stream) = http_exchange(server.ws, request.as_bytes()).await;
            if response.status != 101 {
                break response;
            }
            open.push(stream);
            assert!(
                open.len() <= 4,
                "expected at most 4 connections on 2 full shards"
            );
        };
        assert_short_error(&refused, 503, "an upgrade past connections_per_shard_max");
        assert!(
            open.len() >= 2,
            "expected each shard to take 2 before refusing"
        );
        let stats = server.get("/v1/stats").await;
        let refused: u64 = stats.json()["shards"]
            .as_array()
            .expect("a shards array")
            .iter()
            .map(|shard| shard["connections_refused"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(refused, 1, "expected the refusal to be counted once");
        drop(open);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (response, _) = http_exchange(server.ws, request.as_bytes()).await;
            if response.status == 101 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "expected room again once the clients left, still got {}",
                response.head
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// The browser client is served on this port by plain GET (no upgrade), byte for byte what the
/// binary embeds, then the connection closes; an upgrade to another path is still 404.
#[tokio::test]
async fn get_client_js_and_types_are_served_and_other_paths_keep_their_answers() {
    watchdog(async {
        let server = Server::start(&[]).await;
        for (path, content_type, file) in [
            (
                "/client.js",
                "text/javascript; charset=utf-8",
                &include_bytes!("../src/web/client.js")[..],
            ),
            (
                "/client.d.ts",
                "application/typescript; charset=utf-8",
                &include_bytes!("../src/web/client.d.ts")[..],
            ),
        ] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", server.ws);
            let (response, mut stream) = http_exchange(server.ws, request.as_bytes()).await;
            assert_eq!(response.status, 200, "GET {path}: {}", response.head);
            assert_eq!(response.header("content-type"), Some(content_type));
            assert_eq!(response.header("access-control-allow-origin"), Some("*"));
            assert_eq!(
                response.body, file,
                "GET {path}: expected the embedded file"
            );
            let rest = read_until_closed(&mut stream, STEP).await;
            assert!(
                rest.is_empty(),
                "GET {path}: expected a close, got {rest:?}"
            );
        }
        let request = format!("POST /client.js HTTP/1.1\r\nHost: {}\r\n\r\n", server.ws);
        let (response, _) = http_exchange(server.ws, request.as_bytes()).await;
        assert_short_error(&response, 405, "a POST /client.js");
        let request = upgrade_request(server.ws, "/client.mjs");
        let (response, _) = http_exchange(server.ws, request.as_bytes()).await;
        assert_short_error(&response, 404, "an upgrade to /client.mjs");
        Client::connect(&server).await;
    })
    .await
}

#[tokio::test]
async fn a_command_sent_with_the_upgrade_is_answered_without_waiting_for_more_input() {
    watchdog(async {
        // The heartbeat is far off, so nothing but the pipelined frame itself can wake the
        // connection: the answer must not wait for the client's next bytes.
        let server = Server::start(&["--heartbeat-s", "60", "--idle-timeout-s", "120"]).await;
        let mut stream = connect(server.ws).await;
        let mut request = upgrade_request(server.ws, "/ws").into_bytes();
        let subscribe = br#"{"type":"subscribe","channel":"early.1","id":7}"#;
        request.extend(common::raw::masked(
            common::raw::FIN | common::raw::OP_TEXT,
            subscribe,
        ));
        stream.write_all(&request).await.unwrap();
        let mut buf = Vec::new();
        let response = common::raw::read_http_response(&mut stream, &mut buf).await;
        assert_eq!(response.status, 101, "{}", response.head);
        let mut texts = Vec::new();
        while texts.len() < 2 {
            while let Some(frame) = common::raw::parse_frame(&mut buf) {
                texts.push(serde_json::from_slice::<serde_json::Value>(&frame.payload).unwrap());
            }
            if texts.len() < 2 {
                let read = common::raw::read_some(&mut stream, &mut buf, STEP).await;
                assert!(
                    read.is_some_and(|n| n > 0),
                    "expected connected and subscribed"
                );
            }
        }
        assert_eq!(texts[0]["type"], "connected", "{}", texts[0]);
        common::assert_subscribed(&texts[1], "early.1", serde_json::json!(7));
    })
    .await
}
