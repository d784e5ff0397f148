//! Pins down a connection's and the server's life cycle (PROTOCOL.md sections 1 and 2): the start-up
//! lines, heartbeat pings that keep an answering client alive, close 1000 "idle timeout" for a
//! silent one, and SIGTERM's close 1001 "going away" to every client followed by exit status 0
//! within the shutdown timeout — by timing a real `corecast` process and its sockets.

mod common;

use std::time::{Duration, Instant};

use common::raw::{masked, RawWs, FIN, OP_CLOSE, OP_PING, OP_TEXT};
use common::{watchdog, Client, Server, STEP};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn start_up_prints_executor_lines_then_listening() {
    watchdog(async {
        let server = Server::start(&[]).await;
        // `Server::start` has parsed `listening ws=IP:PORT api=IP:PORT` with real ports.
        assert!(
            server.executor_lines.len() >= 2,
            "expected one line per executor (at least the 2 shards) before `listening`, got {:?}",
            server.executor_lines
        );
        assert!(
            server.ws.ip().is_loopback() && server.api.ip().is_loopback(),
            "expected the addresses asked for, got ws={} api={}",
            server.ws,
            server.api
        );
        assert_ne!(server.ws, server.api, "expected two distinct ports");
        Client::connect(&server).await;
        assert_eq!(
            server.get("/healthz").await.status,
            200,
            "expected /healthz to answer"
        );
    })
    .await
}

#[tokio::test]
async fn heartbeat_pings_keep_an_answering_client_connected() {
    watchdog(async {
        let server = Server::start(&["--heartbeat-s", "1", "--idle-timeout-s", "3"]).await;
        let mut client = Client::connect(&server).await;
        assert_eq!(
            client.hello["heartbeat_s"], 1,
            "expected heartbeat_s 1 in {}",
            client.hello
        );
        let started = Instant::now();
        let mut pings = Vec::new();
        // Read (and so answer every ping, which tokio-tungstenite does by itself) for 4 s, longer
        // than the 3 s idle timeout.
        while started.elapsed() < Duration::from_secs(4) {
            let left = Duration::from_secs(4).saturating_sub(started.elapsed());
            match tokio::time::timeout(left, client.ws.next()).await {
                Err(_) => break,
                Ok(Some(Ok(Message::Ping(_)))) => pings.push(started.elapsed()),
                Ok(other) => panic!("expected only pings while idle, got {other:?}"),
            }
        }
        assert!(
            pings
                .first()
                .is_some_and(|first| *first <= Duration::from_millis(2500)),
            "expected a ping within ~2 s with --heartbeat-s 1, got pings at {pings:?}"
        );
        assert!(
            pings.len() >= 2,
            "expected a ping every second for 4 s, got pings at {pings:?}"
        );
        // Still connected past the idle timeout, because the pongs count as traffic.
        client.ping(1).await;
    })
    .await
}

#[tokio::test]
async fn silent_client_gets_close_1000_idle_timeout() {
    watchdog(async {
        let server = Server::start(&["--heartbeat-s", "1", "--idle-timeout-s", "3"]).await;
        let started = Instant::now();
        let mut raw = RawWs::connect_ready(server.ws).await;
        // Read everything, answer nothing: not the pings, not anything else.
        let mut pings = 0;
        let close = loop {
            let frame = raw
                .next_frame(Duration::from_secs(10))
                .await
                .expect("expected a close frame before the socket ended");
            match frame.opcode {
                OP_PING => pings += 1,
                OP_CLOSE => break frame,
                _ => panic!("expected only pings then a close, got {frame:?}"),
            }
        };
        let elapsed = started.elapsed();
        assert_eq!(
            close.close_code(),
            (1000, "idle timeout".to_string()),
            "expected close 1000 \"idle timeout\""
        );
        assert!(
            elapsed >= Duration::from_millis(2500) && elapsed <= Duration::from_secs(7),
            "expected the close near --idle-timeout-s 3, it came after {elapsed:?}"
        );
        assert!(
            pings >= 1,
            "expected heartbeat pings before the idle close, got {pings}"
        );
        // Answer the close as a client should; the server must then drop the socket.
        raw.send_lenient(&masked(FIN | OP_CLOSE, &1000u16.to_be_bytes()))
            .await;
        raw.expect_socket_closed(STEP).await;
    })
    .await
}

#[tokio::test]
async fn sending_commands_counts_as_activity() {
    watchdog(async {
        let server = Server::start(&["--heartbeat-s", "1", "--idle-timeout-s", "2"]).await;
        let mut raw = RawWs::connect_ready(server.ws).await;
        // Never answers pings, but sends a command every 500 ms for 3.5 s: never idle for 2 s.
        for id in 0..7u64 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            raw.send(&masked(
                FIN | OP_TEXT,
                format!(r#"{{"type":"ping","id":{id}}}"#).as_bytes(),
            ))
            .await;
            let pong = raw.next_json().await;
            assert_eq!(
                pong["id"], id,
                "expected a pong for ping {id} (not closed), got {pong}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn sigterm_closes_clients_1001_and_exits_0() {
    watchdog(async {
        let mut server = Server::start(&["--shutdown-timeout-ms", "2000"]).await;
        let mut first = Client::connect(&server).await;
        let mut second = Client::connect(&server).await;
        first.subscribe("bye.1", 1).await;
        let pid = server.pid();
        let started = Instant::now();
        let exit = {
            let terminate = server.terminate(Duration::from_secs(2) + STEP);
            let closes = async {
                (
                    first.expect_close(STEP).await,
                    second.expect_close(STEP).await,
                )
            };
            let (exit, (first_close, second_close)) = tokio::join!(terminate, closes);
            for close in [first_close, second_close] {
                assert_eq!(
                    close,
                    (1001, "going away".to_string()),
                    "expected every client to get close 1001 \"going away\" on SIGTERM"
                );
            }
            exit
        };
        assert_eq!(
            exit.code(),
            Some(0),
            "expected corecast (pid {pid}) to exit 0 on SIGTERM, got {exit:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2) + Duration::from_secs(3),
            "expected the exit within --shutdown-timeout-ms 2000 plus slack, took {:?}",
            started.elapsed()
        );
    })
    .await
}

#[tokio::test]
async fn sigterm_exits_0_in_time_even_when_a_client_never_answers() {
    watchdog(async {
        let mut server = Server::start(&["--shutdown-timeout-ms", "1000"]).await;
        // Completes the handshake, then never reads nor answers the close.
        let _deaf = RawWs::connect(server.ws, "/ws").await;
        let mut polite = Client::connect(&server).await;
        let url = server.ws_url("/ws");
        let started = Instant::now();
        let terminate = server.terminate(Duration::from_secs(1) + STEP);
        let clients = async {
            let close = polite.expect_close(STEP).await;
            // Shutdown stops accepting before it closes clients: a newcomer now must not get in.
            let newcomer = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(&url)).await;
            let newcomer = match newcomer {
                Ok(Ok(_)) => "connected",
                Ok(Err(_)) => "refused",
                Err(_) => "hung",
            };
            (close, newcomer)
        };
        let (exit, (close, newcomer)) = tokio::join!(terminate, clients);
        assert_eq!(
            close,
            (1001, "going away".to_string()),
            "expected close 1001 \"going away\""
        );
        assert_eq!(
            newcomer, "refused",
            "expected a WebSocket connect after SIGTERM to be refused (the server stops accepting)"
        );
        assert_eq!(exit.code(), Some(0), "expected exit status 0, got {exit:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1) + Duration::from_secs(3),
            "expected the exit within --shutdown-timeout-ms 1000 plus slack despite a deaf client, \
             took {:?}",
            started.elapsed()
        );
    })
    .await
}

#[tokio::test]
async fn sigterm_right_after_start_exits_0_in_time() {
    watchdog(async {
        let mut server = Server::start(&["--shutdown-timeout-ms", "2000"]).await;
        // Straight after `listening`: the signal handling must already be in place by then.
        let exit = server.terminate(Duration::from_secs(2) + STEP).await;
        assert_eq!(exit.code(), Some(0), "expected exit status 0, got {exit:?}");
    })
    .await
}

#[tokio::test]
async fn a_second_server_on_a_busy_port_refuses_to_start() {
    watchdog(async {
        let first = Server::start(&[]).await;
        for (ws, api, busy) in [
            (first.ws.to_string(), "127.0.0.1:0".to_owned(), "WebSocket"),
            ("127.0.0.1:0".to_owned(), first.api.to_string(), "API"),
        ] {
            let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
                .args(["serve", "--listen", &ws, "--api", &api, "--shards", "2"])
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(Duration::from_secs(10), second)
                .await
                .expect("a refused start exits promptly")
                .expect("corecast runs");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(1),
                "expected exit 1 when the {busy} port is taken; stderr: {stderr}"
            );
            assert!(
                stderr.contains(&format!("cannot use the {busy} port")),
                "expected the error to name the busy {busy} port; stderr: {stderr}"
            );
            assert!(
                !String::from_utf8_lossy(&output.stdout).contains("listening"),
                "expected no `listening` line from the refused server"
            );
        }
        Client::connect(&first).await;
    })
    .await
}
