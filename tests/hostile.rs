//! Hostile clients cost a well-behaved one nothing: while 1,000 slowloris handshakes hang open,
//! a client sends oversized frames and another floods commands without reading its replies, a
//! normal subscriber receives every message published meanwhile, exactly and in order; the
//! oversized frames are closed with 1009, the flooder ends closed by the inbound rate limit
//! (4029), as a slow consumer (4008) or still served, and the slowloris connections are cut at
//! the handshake timeout.

mod common;

use std::time::Duration;

use common::raw::{frame_header, RawWs, FIN, OP_TEXT};
use common::{assert_message, watchdog, Client, Server, STEP};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOWLORIS: usize = 1_000;
const MESSAGES: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_cost_a_normal_subscriber_a_message() {
    watchdog(async {
        let server = Server::start(&[
            "--handshake-timeout-ms",
            "3000",
            "--frame-bytes-max",
            "1024",
            "--outbox-frames-max",
            "64",
        ])
        .await;
        let mut calm = Client::connect(&server).await;
        calm.subscribe("calm.1", 1).await;

        // 1,000 connections that never finish their upgrade.
        let mut slowloris = Vec::with_capacity(SLOWLORIS);
        for _ in 0..SLOWLORIS {
            let mut stream = TcpStream::connect(server.ws).await.expect("connect");
            stream
                .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("a partial request");
            slowloris.push(stream);
        }

        // Oversized frames: a text frame past --frame-bytes-max.
        let mut oversized = RawWs::connect_ready(server.ws).await;
        let payload = vec![b'x'; 4_096];
        let mut frame = frame_header(FIN | OP_TEXT, payload.len(), true);
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(&payload);
        oversized.send_lenient(&frame).await;

        // A flood of pings from a client that never reads the pongs.
        let mut flooder = RawWs::connect_ready_small_buffer(server.ws, 4096).await;
        let flood = async {
            for id in 0..20_000 {
                let ping = format!(r#"{{"type":"ping","id":{id}}}"#);
                let mut frame = frame_header(FIN | OP_TEXT, ping.len(), true);
                frame.extend_from_slice(&[0, 0, 0, 0]);
                frame.extend_from_slice(ping.as_bytes());
                if !flooder.try_send(&frame).await {
                    break;
                }
            }
        };
        let publish = async {
            let datas = (0..MESSAGES).map(|i| json!({ "i": i })).collect();
            server.publish_many("calm.1", datas).await
        };
        let (_, offsets) = tokio::join!(flood, publish);
        for (i, offset) in offsets.into_iter().enumerate() {
            assert_message(&calm.recv().await, "calm.1", offset, &json!({ "i": i }));
        }
        calm.expect_silence("each message once").await;

        let (code, _) = oversized.expect_close(STEP).await;
        assert_eq!(code, 1009, "an oversized frame closes with 1009");

        // The slowloris connections are cut once the handshake timeout passes.
        let mut cut = 0;
        for stream in slowloris.iter_mut().take(20) {
            let mut byte = [0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await;
            if let Ok(Ok(n)) = read {
                assert!(
                    n == 0 || byte.starts_with(b"HTTP/1.1 408"),
                    "expected 408 or a close, got {:?}",
                    String::from_utf8_lossy(&byte[..n])
                );
                cut += 1;
            }
        }
        assert_eq!(cut, 20, "every sampled slowloris connection was cut");
        let health = server.get("/healthz").await;
        assert_eq!(health.status, 200, "{}", health.body);
    })
    .await
}
