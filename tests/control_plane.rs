//! No client can wedge the control plane, and every error it sends is JSON: slow heads, slow
//! bodies, idle keep-alive connections and clients that do not read are cut at their deadlines
//! (with 408 and a JSON body where an answer can still be sent); connections past
//! `api_connections_max` and bodies past `api_body_bytes_in_flight_max` are refused with 503;
//! what hyper itself refuses (malformed heads, oversized heads, the HTTP/2 preface) gets its
//! status with the contract's JSON body; and out of file descriptors the accept loops back off,
//! warn a bounded number of times, leave descriptors for WebSocket upgrades and recover. All
//! against the real binary, over raw TCP for what HTTP clients refuse to send, with exact
//! statuses, headers, error codes and `/v1/stats` counters.

mod common;

use std::time::{Duration, Instant};

use common::raw::{self, HttpResponse};
use common::{watchdog, Client, Server, STEP};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How much later than its deadline a connection may close on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(2_000);

/// Asserts `response` is `status` with `content-type: application/json` and exactly the body
/// `{"error":{"code":code,"message":<text>}}`.
fn assert_json_error(response: &HttpResponse, status: u16, code: &str, what: &str) {
    assert_eq!(
        response.status, status,
        "{what}: expected {status}, got {response:?}"
    );
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{what}: expected a JSON content type in {:?}",
        response.head
    );
    let body: Value = serde_json::from_slice(&response.body).unwrap_or_else(|err| {
        panic!(
            "{what}: expected a JSON body, got {:?}: {err}",
            String::from_utf8_lossy(&response.body)
        )
    });
    let message = body["error"]["message"]
        .as_str()
        .filter(|message| !message.is_empty())
        .unwrap_or_else(|| panic!("{what}: expected a message in {body}"));
    assert_eq!(
        body,
        json!({"error": {"code": code, "message": message}}),
        "{what}: expected exactly this error body"
    );
}

/// Asserts the server closes `stream` within `within`, sending nothing more.
async fn assert_closed(stream: &mut TcpStream, within: Duration, what: &str) {
    let rest = raw::read_until_closed(stream, within).await;
    assert!(
        rest.is_empty(),
        "{what}: expected nothing after the answer, got {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// `GET path` on a connection of its own (`connection: close`), so no pooled connection is
/// left to race a short idle timeout; returns the JSON body. A 503 `too_many_connections`
/// (the connections a test just closed may not be counted out yet) is retried for [`STEP`].
async fn get_json(server: &Server, path: &str) -> Value {
    let request = format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    let deadline = Instant::now() + STEP;
    loop {
        let (response, _) = raw::http_exchange(server.api, request.as_bytes()).await;
        if response.status == 503 && Instant::now() < deadline {
            assert_json_error(&response, 503, "too_many_connections", path);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        assert_eq!(
            response.status, 200,
            "expected 200 from {path}: {response:?}"
        );
        return serde_json::from_slice(&response.body).expect("a JSON body");
    }
}

/// The control plane's counters from `/v1/stats`.
async fn api_stats(server: &Server) -> Value {
    get_json(server, "/v1/stats").await["api"].clone()
}

/// `GET /metrics` on a connection of its own, as lines.
async fn metrics(server: &Server) -> Vec<String> {
    let request = b"GET /metrics HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n";
    let (response, _) = raw::http_exchange(server.api, request).await;
    assert_eq!(response.status, 200, "expected 200 from /metrics");
    String::from_utf8(response.body)
        .expect("UTF-8 metrics")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_metric(lines: &[String], line: &str) {
    assert!(
        lines.iter().any(|got| got == line),
        "expected the line {line:?} in /metrics:\n{}",
        lines.join("\n")
    );
}

/// Polls `/v1/stats` until `done` holds of its `api` object (a connection's end is counted
/// just after the client sees it), for at most [`STEP`]; returns the last one.
async fn api_stats_when(server: &Server, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let stats = api_stats(server).await;
        if done(&stats) || Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_slow_head_gets_408_header_timeout_and_is_closed() {
    watchdog(async {
        let server = Server::start(&["--api-header-timeout-ms", "400"]).await;
        let mut stream = raw::connect(server.api).await;
        let started = Instant::now();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: api\r\n")
            .await
            .unwrap();
        // A header byte every 100 ms until the answer starts: however often bytes come, the
        // deadline holds.
        stream.write_all(b"X-Slow: ").await.unwrap();
        let answered = loop {
            let mut first = [0; 1];
            let peek = tokio::time::timeout(Duration::from_millis(100), stream.peek(&mut first));
            if peek.await.is_ok() {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_millis(400) + SLACK,
                "expected an answer to the slow head"
            );
            // The server may have answered and closed meanwhile: that is seen at the next peek.
            let _ = stream.write_all(b"a").await;
        };
        let mut buf = Vec::new();
        let response = raw::read_http_response(&mut stream, &mut buf).await;
        let elapsed = answered;
        assert_json_error(&response, 408, "header_timeout", "a slow head");
        assert_eq!(response.header("connection"), Some("close"));
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(400) + SLACK,
            "expected the 408 at api_header_timeout_ms = 400 ms, got it after {elapsed:?}"
        );
        assert_closed(&mut stream, SLACK, "after the 408").await;
        let stats = api_stats_when(&server, |api| api["header_timeouts_total"] == 1).await;
        assert_eq!(stats["header_timeouts_total"], 1, "{stats}");
        assert_metric(
            &metrics(&server).await,
            "corecast_api_timeouts_total{phase=\"header\"} 1",
        );
    })
    .await
}

#[tokio::test]
async fn a_slow_body_gets_408_body_timeout_and_is_closed() {
    watchdog(async {
        let server = Server::start(&["--api-body-timeout-ms", "400"]).await;
        let mut stream = raw::connect(server.api).await;
        stream
            .write_all(
                b"POST /v1/publish HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n\
                  Content-Length: 100\r\n\r\n{\"channel\":",
            )
            .await
            .unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let response = raw::read_http_response(&mut stream, &mut buf).await;
        let elapsed = started.elapsed();
        assert_json_error(&response, 408, "body_timeout", "a body 11 bytes of 100");
        assert_eq!(response.header("connection"), Some("close"));
        assert!(
            elapsed >= Duration::from_millis(350) && elapsed < Duration::from_millis(400) + SLACK,
            "expected the 408 at api_body_timeout_ms = 400 ms, got it after {elapsed:?}"
        );
        assert_closed(&mut stream, SLACK, "after the 408").await;
        let stats = api_stats(&server).await;
        assert_eq!(stats["body_timeouts_total"], 1, "{stats}");
        assert_eq!(
            stats["body_bytes_in_flight"], 0,
            "the body's share is given back"
        );
        assert_metric(
            &metrics(&server).await,
            "corecast_api_timeouts_total{phase=\"body\"} 1",
        );
        // Nothing was published.
        assert_eq!(server.publish("after.slow", &json!(1)).await, 1);
    })
    .await
}

#[tokio::test]
async fn idle_connections_are_closed_without_an_answer() {
    watchdog(async {
        let server = Server::start(&["--api-idle-timeout-ms", "400"]).await;
        // A keep-alive connection after its response.
        let mut kept = raw::connect(server.api).await;
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let response = raw::read_http_response(&mut kept, &mut buf).await;
        let answered = Instant::now();
        assert_eq!(response.status, 200, "{response:?}");
        // A connection that never sends a byte.
        let mut silent = raw::connect(server.api).await;
        let opened = Instant::now();
        assert_closed(
            &mut kept,
            Duration::from_millis(400) + SLACK,
            "an idle keep-alive",
        )
        .await;
        let kept_for = answered.elapsed();
        assert_closed(
            &mut silent,
            Duration::from_millis(400) + SLACK,
            "a silent one",
        )
        .await;
        let silent_for = opened.elapsed();
        for (what, open) in [("keep-alive", kept_for), ("silent", silent_for)] {
            assert!(
                open >= Duration::from_millis(350),
                "expected the {what} connection to stay open until api_idle_timeout_ms = 400 ms, \
                 closed after {open:?}"
            );
        }
        let stats = api_stats_when(&server, |api| api["idle_timeouts_total"] == 2).await;
        assert_eq!(stats["idle_timeouts_total"], 2, "{stats}");
        assert_eq!(stats["header_timeouts_total"], 0, "{stats}");
    })
    .await
}

#[tokio::test]
async fn a_client_that_does_not_read_its_responses_is_cut_at_the_idle_timeout() {
    watchdog(async {
        let server = Server::start(&["--api-idle-timeout-ms", "500"]).await;
        // A small receive buffer, fixed before connecting, and 400 pipelined requests for the
        // 22 KB client.js never read: the server's writes stall within a few responses.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(server.api).await.unwrap();
        let request = b"GET /client.js HTTP/1.1\r\nHost: api\r\n\r\n".repeat(400);
        stream.write_all(&request).await.unwrap();
        let stats = api_stats_when(&server, |api| api["send_timeouts_total"] == 1).await;
        assert_eq!(stats["send_timeouts_total"], 1, "{stats}");
        // What was written comes out, then the end: the connection is gone.
        raw::read_until_closed(&mut stream, STEP).await;
        let stats = api_stats_when(&server, |api| api["connections"] == 1).await;
        assert_eq!(
            stats["connections"], 1,
            "only the stats request itself: {stats}"
        );
    })
    .await
}

#[tokio::test]
async fn connections_past_api_connections_max_get_503_until_a_place_frees() {
    watchdog(async {
        let server = Server::start(&["--api-connections-max", "3"]).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(raw::connect(server.api).await);
        }
        // The server counts a connection when it accepts it: wait until all three are.
        let mut stream = loop {
            let mut stream = raw::connect(server.api).await;
            let mut buf = Vec::new();
            let response = raw::read_http_response(&mut stream, &mut buf).await;
            if response.status == 503 {
                assert_json_error(&response, 503, "too_many_connections", "a 4th connection");
                break stream;
            }
        };
        assert_closed(&mut stream, SLACK, "the refused connection").await;
        // A publisher's connection is refused the same way while the three stay.
        let reply = server
            .post("/v1/publish", r#"{"channel":"cap.1","data":1}"#)
            .await;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(
            common::assert_http_error_body(&reply, "the publish"),
            "too_many_connections"
        );
        // One place frees: a publish then gets through.
        held.pop();
        let deadline = Instant::now() + STEP;
        let offset = loop {
            let reply = server
                .post("/v1/publish", r#"{"channel":"cap.1","data":2}"#)
                .await;
            if reply.status == 200 {
                break reply.json()["offset"].clone();
            }
            assert_eq!(reply.status, 503, "{reply:?}");
            assert!(
                Instant::now() < deadline,
                "expected a place to free within {STEP:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(offset, 1, "the refused publish was not sequenced");
        drop(held);
        let stats = api_stats_when(&server, |api| api["connections"] == 2).await;
        assert_eq!(
            stats["connections"], 2,
            "the publisher's kept-alive connection and the stats request: {stats}"
        );
        let refused = stats["connections_refused_total"].as_u64().unwrap();
        assert!(
            refused >= 2,
            "the 4th connection and the publish were refused: {stats}"
        );
        assert_metric(
            &metrics(&server).await,
            &format!("corecast_api_connections_refused_total {refused}"),
        );
    })
    .await
}

#[tokio::test]
async fn bodies_past_api_body_bytes_in_flight_max_get_503_and_the_share_comes_back() {
    watchdog(async {
        let server = Server::start(&[
            "--publish-body-bytes-max",
            "65536",
            "--api-body-bytes-in-flight-max",
            "131072",
        ])
        .await;
        let body = |len: usize| {
            let head = r#"{"channel":"big.1","data":""#;
            format!(r#"{head}{}"}}"#, "x".repeat(len - head.len() - 2))
        };
        let full = body(65536);
        // Two bodies of 64 KiB each under way hold the whole 128 KiB.
        let mut slow = Vec::new();
        for _ in 0..2 {
            let mut stream = raw::connect(server.api).await;
            let head =
                "POST /v1/publish HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n\
                        Content-Length: 65536\r\n\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&full.as_bytes()[..1000]).await.unwrap();
            slow.push(stream);
        }
        let stats = api_stats_when(&server, |api| api["body_bytes_in_flight"] == 131072).await;
        assert_eq!(stats["body_bytes_in_flight"], 131072, "{stats}");
        // A third, however small, finds no room.
        let request =
            "POST /v1/publish HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n\
                       Content-Length: 29\r\n\r\n{\"channel\":\"big.2\",\"data\":1}";
        let (response, mut stream) = raw::http_exchange(server.api, request.as_bytes()).await;
        assert_json_error(&response, 503, "overloaded", "a body past the bound");
        assert_eq!(response.header("retry-after"), Some("1"));
        assert_eq!(response.header("connection"), Some("close"));
        assert_closed(&mut stream, SLACK, "the refused body's connection").await;
        // One slow body completes: published, and its share is given back.
        let mut first = slow.remove(0);
        first.write_all(&full.as_bytes()[1000..]).await.unwrap();
        let mut buf = Vec::new();
        let response = raw::read_http_response(&mut first, &mut buf).await;
        assert_eq!(response.status, 200, "{response:?}");
        let published: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(published, json!({"channel": "big.1", "offset": 1}));
        assert_eq!(server.publish("big.2", &json!(1)).await, 1, "room again");
        // The other closes half-sent: its share comes back too.
        drop(slow);
        let stats = api_stats_when(&server, |api| api["body_bytes_in_flight"] == 0).await;
        assert_eq!(stats["body_bytes_in_flight"], 0, "{stats}");
        assert_eq!(stats["bodies_refused_total"], 1, "{stats}");
    })
    .await
}

/// Sends `request` on a fresh connection (from a task of its own, as the server may stop
/// reading) and reads the one answer, then the close.
async fn answer_to(server: &Server, request: Vec<u8>) -> HttpResponse {
    let stream = raw::connect(server.api).await;
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        // The server may close before taking it all: what matters is its answer.
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut buf = Vec::new();
    let response = read_response_half(&mut reader, &mut buf).await;
    let rest = read_to_end_half(&mut reader).await;
    assert!(
        buf.is_empty() && rest.is_empty(),
        "expected nothing after the answer, got {:?}",
        String::from_utf8_lossy(&[buf, rest].concat())
    );
    drop(sender.await);
    response
}

/// [`raw::read_http_response`] on a read half (the answers here carry `content-length`).
async fn read_response_half(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> HttpResponse {
    use tokio::io::AsyncReadExt;
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(STEP, reader.read(&mut chunk))
            .await
            .expect("expected an answer within STEP")
            .expect("expected to read the answer");
        assert!(
            read > 0,
            "the socket ended after {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8(buf.drain(..head_end).collect()).expect("an ASCII head");
    let status = head[9..12].parse().expect("a status code");
    let mut response = HttpResponse {
        status,
        head,
        body: Vec::new(),
    };
    let len: usize = response
        .header("content-length")
        .expect("a content-length")
        .parse()
        .unwrap();
    while buf.len() < len {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(STEP, reader.read(&mut chunk))
            .await
            .expect("expected the body within STEP")
            .expect("expected to read the body");
        assert!(read > 0, "expected {len} body bytes");
        buf.extend_from_slice(&chunk[..read]);
    }
    response.body = buf.drain(..len).collect();
    response
}

/// Reads until the server closes (EOF or a reset), within [`STEP`].
async fn read_to_end_half(reader: &mut tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(STEP, reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(read)) => all.extend_from_slice(&chunk[..read]),
            Err(_) => panic!("expected the server to close the connection within {STEP:?}"),
        }
    }
}

#[tokio::test]
async fn what_hyper_refuses_gets_its_status_with_a_json_body() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let many_headers: Vec<u8> = (0..10_000)
            .flat_map(|at| format!("X-Header-{at}: v\r\n").into_bytes())
            .collect();
        let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            (
                "duplicate Content-Length",
                b"POST /v1/publish HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\
                  Content-Length: 6\r\n\r\nhello!"
                    .to_vec(),
                400,
                "bad_request",
            ),
            (
                "a garbage request line",
                b"GARBAGE\r\n\r\n".to_vec(),
                400,
                "bad_request",
            ),
            (
                "10,000 headers",
                [
                    b"GET /healthz HTTP/1.1\r\n".as_slice(),
                    &many_headers,
                    b"\r\n",
                ]
                .concat(),
                431,
                "headers_too_large",
            ),
            (
                "a 2 MB header",
                [
                    b"GET /healthz HTTP/1.1\r\nX-Big: ".as_slice(),
                    &vec![b'a'; 2 << 20],
                    b"\r\n\r\n",
                ]
                .concat(),
                431,
                "headers_too_large",
            ),
            (
                "the HTTP/2 preface",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                505,
                "version_not_supported",
            ),
        ];
        let count = cases.len();
        for (what, request, status, code) in cases {
            let response = answer_to(&server, request).await;
            assert_json_error(&response, status, code, what);
            assert_eq!(response.header("connection"), Some("close"), "{what}");
        }
        let stats = api_stats_when(&server, |api| api["malformed_requests_total"] == count).await;
        assert_eq!(stats["malformed_requests_total"], count, "{stats}");
        assert_metric(
            &metrics(&server).await,
            &format!("corecast_api_malformed_requests_total {count}"),
        );
    })
    .await
}

#[tokio::test]
async fn hyper_errors_after_answered_requests_are_json_too() {
    watchdog(async {
        let server = Server::start(&[]).await;
        // A keep-alive request, a HEAD (answered without its body), then garbage: the stream
        // follows each answer to its end and still knows hyper's own.
        let mut stream = raw::connect(server.api).await;
        stream
            .write_all(
                b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n\
                  HEAD /v1/stats HTTP/1.1\r\nHost: api\r\n\r\n\
                  NOT HTTP\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = Vec::new();
        let health = raw::read_http_response(&mut stream, &mut buf).await;
        assert_eq!(health.status, 200, "{health:?}");
        assert_eq!(health.body, br#"{"status":"ok"}"#);
        // The HEAD answer has a content-length but no body: read its head alone.
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(
                raw::read_some(&mut stream, &mut buf, STEP)
                    .await
                    .is_some_and(|n| n > 0),
                "expected the HEAD answer"
            );
        };
        let head = String::from_utf8(buf.drain(..head_end).collect()).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{head:?}"
        );
        let garbage = raw::read_http_response(&mut stream, &mut buf).await;
        assert_json_error(&garbage, 400, "bad_request", "garbage after two requests");
        assert_closed(&mut stream, SLACK, "after the 400").await;

        // The HTTP/2 preface after an answered request is answered too (hyper alone closes).
        let mut stream = raw::connect(server.api).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            raw::read_http_response(&mut stream, &mut buf).await.status,
            200
        );
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let preface = raw::read_http_response(&mut stream, &mut buf).await;
        assert_json_error(
            &preface,
            505,
            "version_not_supported",
            "the preface, second",
        );
        assert_closed(&mut stream, SLACK, "after the 505").await;
    })
    .await
}

/// The server's open file descriptors.
fn open_fds(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .expect("expected to read the server's /proc/PID/fd")
        .count()
}

#[tokio::test]
async fn out_of_descriptors_the_accept_loops_back_off_and_everything_recovers() {
    watchdog(async {
        // 256 descriptors: 56 the server keeps for itself (3 executors), 64 for the control
        // plane, the rest for WebSocket connections.
        let server = Server::start_with_nofile(
            &[
                "--api-connections-max",
                "64",
                "--api-idle-timeout-ms",
                "20000",
                "--handshake-timeout-ms",
                "20000",
                "--sys-stats-interval-ms",
                "0",
            ],
            256,
        )
        .await;
        // 70 idle API connections: the cap holds 64, the other 6 are refused at once.
        let mut idle = Vec::new();
        for _ in 0..64 {
            idle.push(raw::connect(server.api).await);
        }
        let mut refused = 0;
        for _ in 0..6 {
            let mut stream = raw::connect(server.api).await;
            let mut buf = Vec::new();
            let response = raw::read_http_response(&mut stream, &mut buf).await;
            assert_json_error(&response, 503, "too_many_connections", "past the cap");
            refused += 1;
        }
        assert_eq!(refused, 6);
        // The control plane is full, and a WebSocket upgrade still has descriptors.
        let mut client = Client::connect(&server).await;
        client.ping(1).await;

        // Now use every descriptor left, with connections that never finish their upgrade,
        // and some more, which wait in the backlogs: both shards' accepts and the control
        // plane's then fail.
        let spare = 256usize.saturating_sub(open_fds(&server));
        let mut hogs = Vec::new();
        for _ in 0..spare + 40 {
            hogs.push(raw::connect(server.ws).await);
        }
        let deadline = Instant::now() + STEP;
        while open_fds(&server) < 256 {
            assert!(
                Instant::now() < deadline,
                "expected the shards to take every descriptor"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut waiting = raw::connect(server.api).await;
        waiting
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let warnings = |server: &Server| {
            server
                .stderr_tail()
                .lines()
                .filter(|line| line.contains("accept failed"))
                .count()
        };
        let during = warnings(&server);
        assert!(
            (1..=3).contains(&during),
            "expected one warning per accept loop that failed (3 loops), got {during}:\n{}",
            server.stderr_tail()
        );

        // The idle API connections close: the descriptors and places they free let the API
        // connection that waited in the backlog be accepted and served.
        drop(idle);
        let mut buf = Vec::new();
        let response = raw::read_http_response(&mut waiting, &mut buf).await;
        assert_eq!(
            response.status, 200,
            "the waiting request, once accepted: {response:?}"
        );
        // Then the rest: the server is whole again.
        drop(hogs);
        assert_eq!(server.publish("recovered.1", &json!(1)).await, 1);
        let mut late = Client::connect(&server).await;
        late.ping(2).await;
        let stats = get_json(&server, "/v1/stats").await;
        let shard_errors: u64 = stats["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .map(|shard| shard["accept_errors"].as_u64().expect("accept_errors"))
            .sum();
        assert!(
            shard_errors >= 1,
            "expected the shards to count failed accepts: {stats}"
        );
        let api_errors = stats["api"]["accept_errors_total"].as_u64().unwrap();
        assert!(
            api_errors >= 1,
            "expected the control plane to count failed accepts: {stats}"
        );
        assert_eq!(stats["api"]["connections_refused_total"], 6, "{stats}");
        // However many accepts failed, the log holds no more warnings than before.
        assert_eq!(
            warnings(&server),
            during,
            "expected no more warnings within the interval, after {} failed accepts",
            shard_errors + api_errors
        );
    })
    .await
}
