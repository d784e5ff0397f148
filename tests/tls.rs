//! TLS against the real binary, with a self-signed certificate made for the test (rcgen): a
//! `wss://` client is greeted, subscribes, and receives a message published over HTTPS to the
//! control plane, byte for byte; a client that speaks plain HTTP or nothing to the TLS port is
//! closed, not left hanging; a stalled `wss://` subscriber closed as a slow consumer reads
//! whole frames and then the close (strictly, as `closes.rs` reads plain TCP); a certificate the
//! server cannot read stops start-up, naming the file.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{raw, watchdog, Server};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A certificate for `localhost` and its key, written to a fresh directory.
struct Certificate {
    der: CertificateDer<'static>,
    cert: PathBuf,
    key: PathBuf,
}

fn certificate(name: &str) -> Certificate {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let dir = std::env::temp_dir().join(format!("corecast-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write the certificate");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write the key");
    Certificate {
        der: certified.cert.der().clone(),
        cert,
        key,
    }
}

/// Opens TLS to `addr`, trusting only `certificate`, for the name `localhost`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    certificate: &Certificate,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tls_over(tcp, certificate).await
}

/// Runs the TLS handshake over `tcp`, trusting only `certificate`, for the name `localhost`.
async fn tls_over(tcp: TcpStream, certificate: &Certificate) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate.der.clone()).expect("a trusted root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS 1.2 and 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the TLS handshake")
}

/// One HTTPS request to the control plane; returns the status and the JSON body.
async fn https(server: &Server, certificate: &Certificate, request: &str) -> (u16, Value) {
    let mut stream = tls_connect(server.api, certificate).await;
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut response = Vec::new();
    // The server may end with a TLS close_notify or just close; either ends the body.
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8(response).expect("a UTF-8 response");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn post(path: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the stream is open")
            .expect("a valid frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

#[tokio::test]
async fn a_wss_client_gets_what_is_published_over_https() {
    watchdog(async {
        let certificate = certificate("e2e");
        let (cert, key) = (
            certificate.cert.to_str().unwrap(),
            certificate.key.to_str().unwrap(),
        );
        let server = Server::start(&[
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--api-tls-cert-file",
            cert,
            "--api-tls-key-file",
            key,
        ])
        .await;
        let stream = tls_connect(server.ws, &certificate).await;
        let (mut ws, response) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
            .await
            .expect("the upgrade over TLS");
        assert_eq!(response.status().as_u16(), 101);
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["type"], "connected", "{hello}");
        ws.send(Message::text(
            json!({"type": "subscribe", "channel": "secure.1", "id": 1}).to_string(),
        ))
        .await
        .expect("send subscribe");
        let subscribed = next_json(&mut ws).await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");

        let (status, body) = https(
            &server,
            &certificate,
            &post(
                "/v1/publish",
                &json!({"channel": "secure.1", "data": {"over": "tls"}}),
            ),
        )
        .await;
        assert_eq!(
            (status, body),
            (200, json!({"channel": "secure.1", "offset": 1}))
        );
        let message = next_json(&mut ws).await;
        common::assert_message(&message, "secure.1", 1, &json!({"over": "tls"}));
        let (status, health) = https(
            &server,
            &certificate,
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!((status, health), (200, json!({"status": "ok"})));
    })
    .await
}

#[tokio::test]
async fn plain_or_silent_clients_on_the_tls_port_are_closed() {
    watchdog(async {
        let certificate = certificate("plain");
        let server = Server::start(&[
            "--tls-cert-file",
            certificate.cert.to_str().unwrap(),
            "--tls-key-file",
            certificate.key.to_str().unwrap(),
            "--handshake-timeout-ms",
            "500",
        ])
        .await;
        let mut plain = TcpStream::connect(server.ws).await.expect("connect");
        plain
            .write_all(common::raw::upgrade_request(server.ws, "/ws").as_bytes())
            .await
            .expect("send a plain upgrade");
        let mut silent = TcpStream::connect(server.ws).await.expect("connect");
        for stream in [&mut plain, &mut silent] {
            let mut buf = [0u8; 256];
            let ended = tokio::time::timeout(Duration::from_secs(3), async {
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    }
                }
            })
            .await;
            assert!(ended.is_ok(), "expected the server to close within 3 s");
        }
    })
    .await
}

/// The next text frame on a raw `wss://` connection, as JSON; bytes past it stay in `buf`.
async fn next_raw_json(stream: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>) -> Value {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(frame) = raw::parse_frame(buf) {
            assert_eq!(
                frame.opcode,
                raw::OP_TEXT,
                "expected a text frame: {frame:?}"
            );
            return serde_json::from_slice(&frame.payload).expect("JSON");
        }
        let read = tokio::time::timeout(common::STEP, stream.read(&mut chunk))
            .await
            .expect("a frame within STEP")
            .expect("the stream is open");
        assert!(read > 0, "expected a frame, the stream ended");
        buf.extend_from_slice(&chunk[..read]);
    }
}

/// Over TLS the connection's task writes every frame through rustls, which takes a frame's
/// plaintext in part when its record buffer fills: the close must wait for the rest of it.
#[tokio::test]
async fn a_stalled_wss_subscriber_reads_whole_frames_then_4008() {
    watchdog(async {
        let certificate = certificate("stalled");
        let server = Server::start(&[
            "--tls-cert-file",
            certificate.cert.to_str().unwrap(),
            "--tls-key-file",
            certificate.key.to_str().unwrap(),
            "--outbox-frames-max",
            "64",
            "--outbox-bytes-max",
            "65536",
            "--close-timeout-ms",
            "5000",
        ])
        .await;
        // A small window, so that the subscriber backs up into the server within ~100 KB.
        let tcp = raw::connect_small_window(server.ws, 4096, 1024);
        let mut stream = tls_over(tcp, &certificate).await;
        stream
            .write_all(raw::upgrade_request(server.ws, "/ws").as_bytes())
            .await
            .expect("send the upgrade");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let read = stream.read(&mut chunk).await.expect("the upgrade response");
            assert!(read > 0, "expected a response to the upgrade");
            buf.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        buf.drain(..head_end);
        let hello = next_raw_json(&mut stream, &mut buf).await;
        common::assert_connected_shape(&hello);
        let subscribe = json!({"type": "subscribe", "channel": "stalled.1", "id": 1});
        stream
            .write_all(&raw::masked(
                raw::FIN | raw::OP_TEXT,
                subscribe.to_string().as_bytes(),
            ))
            .await
            .expect("send subscribe");
        let subscribed = next_raw_json(&mut stream, &mut buf).await;
        common::assert_subscribed(&subscribed, "stalled.1", json!(1));

        // One message at a time, so that the task writes between them (a batch would overflow
        // the outbox in one fan-out, before anything was written).
        let data = |i: usize| json!({"i": i, "pad": "x".repeat(20_000)});
        let mut published = 0;
        loop {
            server.publish("stalled.1", &data(published)).await;
            published += 1;
            let stats = server.stats().await;
            let closes: u64 = stats["shards"]
                .as_array()
                .unwrap()
                .iter()
                .map(|shard| shard["slow_consumer_closes"].as_u64().unwrap())
                .sum();
            if closes > 0 {
                break;
            }
            assert!(
                published < 4_000,
                "expected a slow-consumer close, got {stats}"
            );
        }
        let ending = raw::read_strictly(&mut stream, buf, common::STEP).await;
        assert_eq!(
            ending.cut.len(),
            0,
            "expected the stream to end between frames, after {} frames",
            ending.frames.len()
        );
        assert!(
            matches!(ending.error, None | Some(std::io::ErrorKind::UnexpectedEof)),
            "expected the stream to end at EOF (with or without close_notify), got {:?}",
            ending.error
        );
        assert_eq!(
            ending.close(),
            Some((4008, "slow consumer: outbox overflowed".to_string())),
            "expected the last frame to be the close 4008, got {:?}",
            ending.frames.last().map(raw::Frame::summary)
        );
        let texts = ending.texts();
        assert!(
            (1..published).contains(&texts.len()),
            "expected some but not all of {published} messages, got {}",
            texts.len()
        );
        for (i, got) in texts.iter().enumerate() {
            common::assert_message(got, "stalled.1", 1 + i as u64, &data(i));
        }
    })
    .await
}

#[test]
fn a_certificate_the_server_cannot_read_stops_start_up_naming_the_file() {
    let certificate = certificate("bad");
    let missing = certificate.cert.with_file_name("missing.pem");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .arg("--tls-cert-file")
        .arg(&missing)
        .arg("--tls-key-file")
        .arg(&certificate.key)
        .output()
        .expect("corecast runs");
    assert!(!output.status.success(), "start-up must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tls_cert_file") && stderr.contains("missing.pem"),
        "{stderr}"
    );
    let half = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .arg("--tls-cert-file")
        .arg(&certificate.cert)
        .output()
        .expect("corecast runs");
    assert!(!half.status.success());
    let stderr = String::from_utf8_lossy(&half.stderr);
    assert!(
        stderr.contains("tls_cert_file and tls_key_file go together"),
        "{stderr}"
    );
}
