//! Pins down the Rust client (`corecast_client`) against the real server: it receives,
//! reconnects after a TCP cut (made by a proxy in this file between client and server) and
//! resubscribes with `since` so that every offset published during the cut arrives exactly
//! once; it measures the app-level ping, answers the server's pings and replaces a connection
//! whose pongs stop; and `corecast publish` and `corecast subscribe --count` round-trip through
//! the binary. Against a scripted server it pins the exact `since` of every resubscribe
//! (README, "Delivery guarantees", "Clients"). For a connection with a user it pins the
//! `$user` stream (delivered, resumed after a cut with every offset once and in order, kept
//! unsubscribed), the 4010 close (an [`Event::Closed`] and no reconnect), server-side
//! subscriptions as events kept across reconnects, `corecast publish --user`, and the server's
//! resume of a live `$user` that the client relies on. Every wait is bounded and every test
//! runs under the watchdog.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_recent_ms, watchdog, Server, STEP};
use corecast_client::{Client, ClientConfig, Cursor, Event};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// A TCP proxy between the client and the server that can cut every connection it carries,
/// refuse new ones for a while (closed right after accept), or freeze them (bytes read and
/// thrown away, sockets kept open: a dead path).
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    refusing: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links = Arc::new(Mutex::new(Vec::new()));
        let frozen = Arc::new(AtomicBool::new(false));
        let refusing = Arc::new(AtomicBool::new(false));
        let (accept_links, accept_frozen) = (links.clone(), frozen.clone());
        let accept_refusing = refusing.clone();
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                if accept_refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (down_read, down_write) = down.into_split();
                let (up_read, up_write) = up.into_split();
                let to_server = tokio::spawn(pump(down_read, up_write, accept_frozen.clone()));
                let to_client = tokio::spawn(pump(up_read, down_write, accept_frozen.clone()));
                let mut links = accept_links.lock().unwrap();
                links.push(to_server.abort_handle());
                links.push(to_client.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            links,
            refusing,
            frozen,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Closes every connection carried so far, both sides (the client reads end of stream).
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// A client configuration for tests: fast reconnects (windows of 20 ms up to 200 ms).
fn config(url: String) -> ClientConfig {
    let mut config = ClientConfig::new(url);
    config.backoff_base_ms = 20;
    config.backoff_cap_ms = 200;
    config.connect_timeout_ms = 1_000;
    config
}

fn connect(config: ClientConfig) -> Client {
    tokio::task::block_in_place(|| Client::connect(config))
        .unwrap_or_else(|err| panic!("expected the client to connect: {err}"))
}

/// Events until one satisfies `want`, for at most `within`; returns it and the ones before.
fn wait_for(
    client: &Client,
    within: Duration,
    what: &str,
    want: impl Fn(&Event) -> bool,
) -> (Event, Vec<Event>) {
    let deadline = Instant::now() + within;
    let mut before = Vec::new();
    tokio::task::block_in_place(|| loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("expected {what} within {within:?}; got {before:#?}"));
        match client.next_event(left) {
            Some(event) if want(&event) => return (event, before),
            Some(event) => before.push(event),
            None => panic!("expected {what} within {within:?}; got {before:#?}"),
        }
    })
}

fn subscribed(event: &Event, which: &str) -> bool {
    matches!(event, Event::Subscribed { pattern, .. } if pattern == which)
}

/// The data of a message as JSON.
fn data(event: &Event) -> Value {
    let Event::Message(message) = event else {
        panic!("expected a message, got {event:?}")
    };
    serde_json::from_str(message.data.get()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_reconnects_after_a_cut_and_resubscribes() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let proxy = Proxy::start(server.ws).await;
        let client = connect(config(proxy.url()));
        let (first, _) = wait_for(&client, STEP, "connected", |event| {
            matches!(event, Event::Connected { .. })
        });
        assert!(
            matches!(&first, Event::Connected { reconnects: 0, conn_id, .. } if !conn_id.is_empty()),
            "{first:?}"
        );
        client.subscribe("cut.a").unwrap();
        wait_for(&client, STEP, "subscribed cut.a", |e| subscribed(e, "cut.a"));
        server.publish("cut.a", &json!({"n": 1})).await;
        let (message, skipped) = wait_for(&client, STEP, "message 1", |e| {
            matches!(e, Event::Message(_))
        });
        assert!(skipped.is_empty(), "{skipped:?}");
        let Event::Message(delivered) = &message else {
            unreachable!()
        };
        assert_eq!(
            (delivered.channel.as_str(), delivered.offset, data(&message)),
            ("cut.a", 1, json!({"n": 1}))
        );
        assert_recent_ms(&json!(delivered.ts_ms), "ts_ms");

        proxy.cut();
        let (lost, _) = wait_for(&client, STEP, "disconnected", |event| {
            matches!(event, Event::Disconnected { .. })
        });
        let Event::Disconnected { reason, retry_in } = lost else {
            unreachable!()
        };
        assert_eq!(reason, "server closed the TCP connection");
        assert!(retry_in <= Duration::from_millis(20), "{retry_in:?}");
        let (again, _) = wait_for(&client, STEP, "connected again", |event| {
            matches!(event, Event::Connected { .. })
        });
        assert!(
            matches!(again, Event::Connected { reconnects: 1, .. }),
            "{again:?}"
        );
        wait_for(&client, STEP, "resubscribed cut.a", |e| {
            subscribed(e, "cut.a")
        });
        server.publish("cut.a", &json!({"n": 2})).await;
        let (message, skipped) = wait_for(&client, STEP, "message 2", |e| {
            matches!(e, Event::Message(_))
        });
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(data(&message), json!({"n": 2}));
    })
    .await
}

/// Publishes `count` events to each channel, one after the other; cuts the proxy after
/// `cut.start - 1` of them and lets the client back in after `cut.end - 1`, so the events of
/// `cut` are published while it cannot be connected.
async fn publish_through_a_cut(
    server: Arc<Server>,
    proxy: Arc<Proxy>,
    channels: &'static [&'static str],
    count: u64,
    cut: std::ops::Range<u64>,
) {
    for n in 1..=count {
        if n == cut.start {
            proxy.refuse(true);
            proxy.cut();
        }
        if n == cut.end {
            proxy.refuse(false);
        }
        for channel in channels {
            let offset = server.publish(channel, &json!({"n": n})).await;
            assert_eq!(offset, n, "expected offset {n} on {channel}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_offset_published_during_a_cut_arrives_exactly_once() {
    // Needs the server's `since` (README, "Delivery guarantees"): an exact channel resumes by offset, a
    // pattern by seq.
    const CHANNELS: &[&str] = &["rec.exact", "rec2.x"];
    const COUNT: u64 = 40;
    watchdog(async {
        let server = Arc::new(Server::start(&[]).await);
        let proxy = Arc::new(Proxy::start(server.ws).await);
        let client = connect(config(proxy.url()));
        client.subscribe("rec.exact").unwrap();
        client.subscribe("rec2.*").unwrap();
        wait_for(&client, STEP, "subscribed rec.exact", |e| {
            subscribed(e, "rec.exact")
        });
        wait_for(&client, STEP, "subscribed rec2.*", |e| {
            subscribed(e, "rec2.*")
        });

        let publisher = tokio::spawn(publish_through_a_cut(
            server.clone(),
            proxy.clone(),
            CHANNELS,
            COUNT,
            16..26,
        ));
        let mut offsets: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut notices = Vec::new();
        let deadline = Instant::now() + 2 * STEP;
        while offsets.values().map(Vec::len).sum::<usize>() < 2 * COUNT as usize {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!(
                        "expected {COUNT} messages per channel; got {offsets:?} and {notices:#?}"
                    )
                });
            match tokio::task::block_in_place(|| client.next_event(left)) {
                Some(Event::Message(message)) => offsets
                    .entry(message.channel)
                    .or_default()
                    .push(message.offset),
                Some(other) => notices.push(other),
                None => panic!(
                    "expected {COUNT} messages per channel; got {offsets:?} and {notices:#?}"
                ),
            }
        }
        publisher.await.unwrap();
        let expected: Vec<u64> = (1..=COUNT).collect();
        for channel in CHANNELS {
            assert_eq!(
                offsets.get(*channel),
                Some(&expected),
                "expected every offset of {channel} once, in order; notices {notices:#?}"
            );
        }
        // The cut was seen, and both subscriptions came back recovered.
        assert!(
            notices
                .iter()
                .any(|e| matches!(e, Event::Connected { reconnects: 1, .. })),
            "expected a reconnect in {notices:#?}"
        );
        for pattern in ["rec.exact", "rec2.*"] {
            assert!(
                notices.iter().any(|e| matches!(e,
                    Event::Subscribed { pattern: p, recovered: Some(true), reason: None, .. }
                        if p == pattern)),
                "expected {pattern} resubscribed with recovered:true in {notices:#?}"
            );
        }
        // Nothing else is left over: no duplicate, no late message.
        assert!(
            tokio::task::block_in_place(|| client.next_event(common::QUIET)).is_none(),
            "expected nothing after the last offsets"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ping_round_trip_is_measured() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut config = config(server.ws_url("/ws"));
        config.ping_interval_ms = 50;
        let client = connect(config);
        assert_eq!(client.latency(), None, "no pong before the first interval");
        let deadline = Instant::now() + STEP;
        let latency = loop {
            if let Some(latency) = client.latency() {
                break latency;
            }
            assert!(Instant::now() < deadline, "expected a pong within {STEP:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // On one machine a round trip is far below a second; this bounds units, not speed.
        assert!(latency.last < Duration::from_secs(1), "{latency:?}");
        assert!(latency.average < Duration::from_secs(1), "{latency:?}");
        // Several intervals later the connection is still the first one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events: Vec<Event> = tokio::task::block_in_place(|| {
            std::iter::from_fn(|| client.next_event(Duration::ZERO)).collect()
        });
        assert!(
            matches!(events.as_slice(), [Event::Connected { reconnects: 0, .. }]),
            "{events:#?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_are_answered_so_the_idle_timeout_never_fires() {
    watchdog(async {
        // The server pings every second and closes a connection silent for 2 s; the client's
        // own ping is a minute away, so only its Pongs keep the connection.
        let server = Server::start(&["--heartbeat-s", "1", "--idle-timeout-s", "2"]).await;
        let mut config = config(server.ws_url("/ws"));
        config.ping_interval_ms = 60_000;
        let client = connect(config);
        client.subscribe("idle.a").unwrap();
        wait_for(&client, STEP, "subscribed idle.a", |e| {
            subscribed(e, "idle.a")
        });
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        server.publish("idle.a", &json!("still here")).await;
        let (message, before) = wait_for(&client, STEP, "the message", |e| {
            matches!(e, Event::Message(_))
        });
        assert!(
            before.is_empty(),
            "expected no event before it: {before:#?}"
        );
        assert_eq!(data(&message), json!("still here"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_pongs_stop_is_replaced() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let proxy = Proxy::start(server.ws).await;
        let mut config = config(proxy.url());
        config.ping_interval_ms = 100;
        let client = connect(config);
        wait_for(&client, STEP, "connected", |e| {
            matches!(e, Event::Connected { .. })
        });
        proxy.freeze(true);
        let started = Instant::now();
        let (lost, _) = wait_for(&client, STEP, "disconnected", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        let Event::Disconnected { reason, .. } = lost else {
            unreachable!()
        };
        assert_eq!(reason, "no pong within 2 ping intervals (200 ms)");
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "detected after {:?}, before a ping could have gone unanswered",
            started.elapsed()
        );
        proxy.freeze(false);
        let (again, _) = wait_for(&client, STEP, "connected again", |e| {
            matches!(e, Event::Connected { .. })
        });
        assert!(
            matches!(again, Event::Connected { reconnects: 1, .. }),
            "{again:?}"
        );
    })
    .await
}

/// Runs `corecast ARGS` to completion, with a bound.
async fn corecast(args: &[&str]) -> std::process::Output {
    let run = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(args)
        .stdin(Stdio::null())
        .output();
    tokio::time::timeout(STEP, run)
        .await
        .unwrap_or_else(|_| panic!("expected corecast {args:?} to finish within {STEP:?}"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_round_trip_through_the_cli() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let url = server.ws_url("/ws");
        let mut subscriber = Command::new(env!("CARGO_BIN_EXE_corecast"))
            .args(["subscribe", "cli.t", "--url", &url, "--count", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
        let mut next_line = async || -> Value {
            let line = tokio::time::timeout(STEP, lines.next_line())
                .await
                .expect("a line from corecast subscribe")
                .unwrap()
                .expect("corecast subscribe ended early");
            serde_json::from_str(&line).unwrap_or_else(|err| panic!("{line:?}: {err}"))
        };
        let connected = next_line().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        let subscribed = next_line().await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        assert_eq!(subscribed["channel"], "cli.t", "{subscribed}");

        let api = format!("http://{}", server.api);
        let first = corecast(&["publish", "cli.t", r#"{"n":1,"a":[true]}"#, "--api", &api]).await;
        assert_eq!(
            (
                first.status.code(),
                String::from_utf8(first.stdout).unwrap()
            ),
            (
                Some(0),
                "{\"channel\":\"cli.t\",\"offset\":1}\n".to_string()
            )
        );
        let second = corecast(&[
            "publish",
            "cli.t",
            "2",
            "--api",
            &api,
            "--priority",
            "critical",
        ])
        .await;
        assert_eq!(
            (
                second.status.code(),
                String::from_utf8(second.stdout).unwrap()
            ),
            (
                Some(0),
                "{\"channel\":\"cli.t\",\"offset\":2}\n".to_string()
            )
        );
        for (offset, expected) in [(1, json!({"n": 1, "a": [true]})), (2, json!(2))] {
            let mut message = next_line().await;
            assert_recent_ms(&message["ts_ms"], "ts_ms");
            let object = message.as_object_mut().unwrap();
            object.remove("ts_ms");
            // `seq` comes from a server with positions (README, "Delivery guarantees"); its value is the
            // server's, only its presence as an integer is the CLI's business.
            if let Some(seq) = object.remove("seq") {
                assert!(seq.is_u64(), "{seq}");
            }
            assert_eq!(
                message,
                json!({"type": "message", "channel": "cli.t", "offset": offset, "data": expected})
            );
        }
        let status = tokio::time::timeout(STEP, subscriber.wait())
            .await
            .expect("corecast subscribe --count 2 to exit after 2 messages")
            .unwrap();
        assert_eq!(status.code(), Some(0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_name_the_argument_or_carry_the_servers_body() {
    watchdog(async {
        let server = Server::start(&["--publish-body-bytes-max", "64"]).await;
        let api = format!("http://{}", server.api);
        let bad_json = corecast(&["publish", "cli.t", "{nope", "--api", &api]).await;
        assert_eq!(bad_json.status.code(), Some(2));
        let stderr = String::from_utf8(bad_json.stderr).unwrap();
        assert!(
            stderr.starts_with(r#"corecast publish: JSON "{nope" is not valid JSON: "#),
            "{stderr}"
        );
        let bad_channel = corecast(&["publish", "cli.*", "1", "--api", &api]).await;
        assert_eq!(bad_channel.status.code(), Some(2));
        let stderr = String::from_utf8(bad_channel.stderr).unwrap();
        assert!(
            stderr.starts_with(r#"corecast publish: CHANNEL "cli.*": "#),
            "{stderr}"
        );
        let big = format!(r#""{}""#, "x".repeat(100));
        let refused = corecast(&["publish", "cli.t", &big, "--api", &api]).await;
        assert_eq!(refused.status.code(), Some(1));
        assert!(refused.stdout.is_empty());
        let stderr = String::from_utf8(refused.stderr).unwrap();
        let body = stderr
            .strip_prefix(&format!("corecast publish: POST {api}/v1/publish: 413 "))
            .unwrap_or_else(|| panic!("expected the status and body, got {stderr:?}"));
        let body: Value = serde_json::from_str(body.trim_end()).unwrap();
        assert!(body["error"]["code"].is_string(), "{body}");
    })
    .await
}

/// One connection of the scripted server: the WebSocket accepted from `listener`.
async fn scripted_accept(listener: &TcpListener) -> WebSocketStream<TcpStream> {
    let (stream, _) = tokio::time::timeout(STEP, listener.accept())
        .await
        .expect("expected the client to (re)connect")
        .unwrap();
    tokio_tungstenite::accept_async(stream).await.unwrap()
}

async fn scripted_send(ws: &mut WebSocketStream<TcpStream>, frame: Value) {
    ws.send(WsMessage::text(frame.to_string())).await.unwrap();
}

/// The client's next command with its `id` checked (an integer) and removed.
async fn scripted_command(ws: &mut WebSocketStream<TcpStream>) -> Value {
    loop {
        let next = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("expected a command from the client")
            .expect("expected the connection to stay open")
            .unwrap();
        if let WsMessage::Text(text) = next {
            let mut command: Value = serde_json::from_str(text.as_str()).unwrap();
            let id = command.as_object_mut().unwrap().remove("id");
            assert!(id.as_ref().is_some_and(Value::is_u64), "{text}");
            return command;
        }
    }
}

fn hello(epoch: &str) -> Value {
    json!({"type": "connected", "conn_id": "s-1", "shard": 0, "server_time_ms": 1,
           "heartbeat_s": 25, "epoch": epoch})
}

fn subscribe(pattern: &str, since: Value) -> Value {
    let mut command = json!({"type": "subscribe", "channel": pattern});
    if !since.is_null() {
        command["since"] = since;
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribes_carry_the_since_of_each_position() {
    watchdog(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let script = tokio::spawn(async move {
            // 1: plain subscribes; a delivery on each.
            let mut ws = scripted_accept(&listener).await;
            scripted_send(&mut ws, hello("e1")).await;
            assert_eq!(
                scripted_command(&mut ws).await,
                subscribe("rec.exact", Value::Null)
            );
            assert_eq!(
                scripted_command(&mut ws).await,
                subscribe("rec2.*", Value::Null)
            );
            for pattern in ["rec.exact", "rec2.*"] {
                scripted_send(
                    &mut ws,
                    json!({"type": "subscribed", "channel": pattern,
                    "id": 1, "epoch": "e1", "seq": 10}),
                )
                .await;
            }
            scripted_send(
                &mut ws,
                json!({"type": "message", "channel": "rec.exact",
                "offset": 1, "seq": 11, "ts_ms": 1, "data": {"n": 1}}),
            )
            .await;
            scripted_send(
                &mut ws,
                json!({"type": "message", "channel": "rec2.x",
                "offset": 5, "seq": 12, "ts_ms": 1, "data": {"n": 5}}),
            )
            .await;
            drop(ws);
            // 2: offset form for the exact channel, seq form for the pattern; one recovered
            // message, and one refusal.
            let mut ws = scripted_accept(&listener).await;
            scripted_send(&mut ws, hello("e1")).await;
            assert_eq!(
                scripted_command(&mut ws).await,
                subscribe("rec.exact", json!({"epoch": "e1", "offset": 1}))
            );
            assert_eq!(
                scripted_command(&mut ws).await,
                subscribe("rec2.*", json!({"epoch": "e1", "seq": 12}))
            );
            scripted_send(
                &mut ws,
                json!({"type": "subscribed", "channel": "rec.exact", "id": 1,
                "epoch": "e1", "seq": 20, "recovered": true}),
            )
            .await;
            scripted_send(
                &mut ws,
                json!({"type": "message", "channel": "rec.exact",
                "offset": 2, "seq": 13, "ts_ms": 1, "data": {"n": 2}}),
            )
            .await;
            scripted_send(
                &mut ws,
                json!({"type": "subscribed", "channel": "rec2.*", "id": 1,
                "epoch": "e1", "seq": 20, "recovered": false, "reason": "too_many"}),
            )
            .await;
            drop(ws);
            // 3: the refused pattern starts over at the reply's seq; the server restarted.
            let mut ws = scripted_accept(&listener).await;
            scripted_send(&mut ws, hello("e2")).await;
            assert_eq!(
                scripted_command(&mut ws).await,
                subscribe("rec.exact", json!({"epoch": "e1", "offset": 2}))
            );
            assert_eq!(
                scripted_command(&mut ws).await,
                subscribe("rec2.*", json!({"epoch": "e1", "seq": 20}))
            );
            for pattern in ["rec.exact", "rec2.*"] {
                scripted_send(
                    &mut ws,
                    json!({"type": "subscribed", "channel": pattern, "id": 1,
                    "epoch": "e2", "seq": 3, "recovered": false, "reason": "epoch_changed"}),
                )
                .await;
            }
            drop(ws);
            // 4: both resume in the new epoch, by seq (the old offset means nothing there).
            let mut ws = scripted_accept(&listener).await;
            scripted_send(&mut ws, hello("e2")).await;
            assert_eq!(
                scripted_command(&mut ws).await,
                subscribe("rec.exact", json!({"epoch": "e2", "seq": 3}))
            );
            assert_eq!(
                scripted_command(&mut ws).await,
                subscribe("rec2.*", json!({"epoch": "e2", "seq": 3}))
            );
            ws
        });
        let client = connect(config(url));
        client.subscribe("rec.exact").unwrap();
        client.subscribe("rec2.*").unwrap();
        let last = script.await.expect("the scripted server's assertions");

        let mut connected = Vec::new();
        let mut notices = Vec::new();
        let mut messages = Vec::new();
        let deadline = Instant::now() + STEP;
        while connected.len() < 4 {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!("expected 4 connections; got {connected:?} {notices:?} {messages:?}")
                });
            match tokio::task::block_in_place(|| client.next_event(left)) {
                Some(Event::Connected { epoch, .. }) => connected.push(epoch.unwrap()),
                Some(Event::Subscribed {
                    pattern,
                    recovered,
                    reason,
                    ..
                }) => notices.push((pattern, recovered, reason)),
                Some(Event::Message(message)) => messages.push((message.channel, message.offset)),
                Some(Event::Disconnected { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(connected, ["e1", "e1", "e2", "e2"]);
        let not = |reason: &str| (Some(false), Some(reason.to_string()));
        let expected: Vec<(String, Option<bool>, Option<String>)> = [
            ("rec.exact", (None, None)),
            ("rec2.*", (None, None)),
            ("rec.exact", (Some(true), None)),
            ("rec2.*", not("too_many")),
            ("rec.exact", not("epoch_changed")),
            ("rec2.*", not("epoch_changed")),
        ]
        .into_iter()
        .map(|(pattern, (recovered, reason))| (pattern.to_string(), recovered, reason))
        .collect();
        assert_eq!(notices, expected);
        assert_eq!(
            messages,
            [
                ("rec.exact".to_string(), 1),
                ("rec2.x".to_string(), 5),
                ("rec.exact".to_string(), 2)
            ]
        );
        assert_eq!(
            client.position("rec.exact"),
            Some(Cursor {
                epoch: Some("e2".into()),
                seq: Some(3),
                offset: None
            })
        );
        drop(last);
    })
    .await
}

/// Publishes `data` to `user`'s `$user` stream; returns the offset, asserting the exact answer.
async fn publish_to_user(server: &Server, user: &str, data: Value) -> u64 {
    let body = json!({"user": user, "data": data}).to_string();
    let reply = server.post("/v1/publish", &body).await;
    assert_eq!(
        reply.status, 200,
        "expected the publish to {user:?}: {reply:?}"
    );
    let answer = reply.json();
    let offset = answer["offset"].as_u64().expect("an integer offset");
    assert_eq!(answer, json!({"user": user, "offset": offset}));
    offset
}

/// `POST path` with `body`, asserting 200 and the exact answer: `{"user":..}` for a
/// disconnect, the body itself for a subscribe or unsubscribe.
async fn user_act(server: &Server, path: &str, body: Value) {
    let reply = server.post(path, &body.to_string()).await;
    let expected = if path.ends_with("/disconnect") {
        json!({"user": body["user"]})
    } else {
        body.clone()
    };
    assert_eq!(
        (reply.status, reply.json()),
        (200, expected),
        "expected POST {path} {body} to succeed"
    );
}

/// The `$user` offsets and data of a message event, or a panic naming what came instead.
fn user_message(event: &Event) -> (u64, Value) {
    match event {
        Event::Message(message) if message.channel == "$user" => (message.offset, data(event)),
        other => panic!("expected a $user message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_with_since_resumes_the_live_user_stream_without_a_duplicate() {
    // The server's side of the client's resume: `$user` is live from connect, and a
    // `subscribe` with `since` to it recovers only what came before it went live.
    watchdog(async {
        let server = Server::start(&[]).await;
        let mut ada = common::Client::connect_path(&server, "/ws?user=ada").await;
        assert_eq!(ada.hello["user"], "ada", "{}", ada.hello);
        let epoch = ada.hello["epoch"].clone();
        publish_to_user(&server, "ada", json!(1)).await;
        common::assert_message(&ada.recv().await, "$user", 1, &json!(1));
        drop(ada);
        for n in 2..=4 {
            publish_to_user(&server, "ada", json!(n)).await;
        }
        let mut ada = common::Client::connect_path(&server, "/ws?user=ada").await;
        // Published after the connect and before the resume: delivered live, and only so.
        publish_to_user(&server, "ada", json!(5)).await;
        common::assert_message(&ada.recv().await, "$user", 5, &json!(5));
        let reply = ada
            .request(json!({"type": "subscribe", "channel": "$user", "id": 1,
                            "since": {"epoch": epoch, "offset": 1}}))
            .await;
        assert_eq!(
            (&reply["type"], &reply["channel"], &reply["recovered"]),
            (&json!("subscribed"), &json!("$user"), &json!(true)),
            "{reply}"
        );
        for n in 2..=4 {
            common::assert_message(&ada.recv().await, "$user", n, &json!(n));
        }
        ada.expect_silence("offset 5 was sent live, not recovered again")
            .await;
        publish_to_user(&server, "ada", json!(6)).await;
        common::assert_message(&ada.recv().await, "$user", 6, &json!(6));
        ada.expect_silence("one route: a live message arrives once")
            .await;
        // A plain channel's repeat subscribe with since is still only a confirmation.
        ada.subscribe("plain.a", 2).await;
        server.publish("plain.a", &json!("a")).await;
        common::assert_message(&ada.recv().await, "plain.a", 1, &json!("a"));
        let repeat = ada
            .request(json!({"type": "subscribe", "channel": "plain.a", "id": 3,
                            "since": {"epoch": epoch, "offset": 0}}))
            .await;
        assert_eq!(repeat["recovered"], Value::Null, "{repeat}");
        ada.expect_silence("no recovery for a repeat on a channel")
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_user_stream_resumes_after_a_cut_with_nothing_lost_or_repeated() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let proxy = Proxy::start(server.ws).await;
        let client = connect(config(format!("{}?user=ada", proxy.url())));
        let (first, _) = wait_for(&client, STEP, "connected", |e| {
            matches!(e, Event::Connected { .. })
        });
        assert!(
            matches!(&first, Event::Connected { user: Some(user), .. } if user == "ada"),
            "{first:?}"
        );
        assert_eq!(client.user().as_deref(), Some("ada"));
        // The client's first subscribe of the server's $user learns where the stream starts.
        wait_for(&client, STEP, "subscribed $user", |e| {
            subscribed(e, "$user")
        });
        for n in 1..=3 {
            assert_eq!(publish_to_user(&server, "ada", json!(n)).await, n);
        }
        let mut got = Vec::new();
        for _ in 1..=3 {
            let (event, skipped) = wait_for(&client, STEP, "a $user message", |e| {
                matches!(e, Event::Message(_))
            });
            assert!(skipped.is_empty(), "{skipped:?}");
            got.push(user_message(&event));
        }
        proxy.refuse(true);
        proxy.cut();
        wait_for(&client, STEP, "disconnected", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        for n in 4..=7 {
            assert_eq!(publish_to_user(&server, "ada", json!(n)).await, n);
        }
        proxy.refuse(false);
        let (resumed, before) =
            wait_for(&client, STEP, "$user resumed", |e| subscribed(e, "$user"));
        assert!(
            before.iter().any(|e| matches!(
                e,
                Event::Connected {
                    reconnects: 1,
                    user: Some(_),
                    ..
                }
            )),
            "{before:?}"
        );
        assert!(
            matches!(
                resumed,
                Event::Subscribed {
                    recovered: Some(true),
                    server: false,
                    ..
                }
            ),
            "{resumed:?}"
        );
        for _ in 4..=7 {
            let (event, skipped) = wait_for(&client, STEP, "a recovered $user message", |e| {
                matches!(e, Event::Message(_))
            });
            assert!(skipped.is_empty(), "{skipped:?}");
            got.push(user_message(&event));
        }
        assert_eq!(publish_to_user(&server, "ada", json!(8)).await, 8);
        let (event, _) = wait_for(&client, STEP, "a live $user message", |e| {
            matches!(e, Event::Message(_))
        });
        got.push(user_message(&event));
        let expected: Vec<(u64, Value)> = (1..=8).map(|n| (n, json!(n))).collect();
        assert_eq!(got, expected, "every offset once, in order");
        assert_eq!(client.position("$user").unwrap().offset, Some(8));
        assert!(
            tokio::task::block_in_place(|| client.next_event(common::QUIET)).is_none(),
            "expected no duplicate after offset 8"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unsubscribed_user_stream_stays_unsubscribed_across_reconnects() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let proxy = Proxy::start(server.ws).await;
        let client = connect(config(format!("{}?user=ada", proxy.url())));
        wait_for(&client, STEP, "subscribed $user", |e| {
            subscribed(e, "$user")
        });
        client.unsubscribe("$user").unwrap();
        wait_for(
            &client,
            STEP,
            "unsubscribed $user",
            |e| matches!(e, Event::Unsubscribed { pattern, server: false } if pattern == "$user"),
        );
        proxy.cut();
        wait_for(&client, STEP, "connected again", |e| {
            matches!(e, Event::Connected { reconnects: 1, .. })
        });
        // The server subscribed the new connection; the client takes it back.
        wait_for(
            &client,
            STEP,
            "unsubscribed $user again",
            |e| matches!(e, Event::Unsubscribed { pattern, .. } if pattern == "$user"),
        );
        publish_to_user(&server, "ada", json!("unread")).await;
        assert!(
            tokio::task::block_in_place(|| client.next_event(common::QUIET)).is_none(),
            "expected nothing on an unsubscribed $user"
        );
        assert_eq!(client.position("$user"), None);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_disconnected_by_the_server_is_told_and_not_reconnected() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let proxy = Proxy::start(server.ws).await;
        let client = connect(config(format!("{}?user=ada", proxy.url())));
        wait_for(&client, STEP, "subscribed $user", |e| {
            subscribed(e, "$user")
        });
        user_act(
            &server,
            "/v1/users/disconnect",
            json!({"user": "ada", "reason": "signed out"}),
        )
        .await;
        let (closed, before) = wait_for(&client, STEP, "closed", |e| {
            matches!(e, Event::Closed { .. })
        });
        assert!(before.is_empty(), "{before:?}");
        assert!(
            matches!(&closed, Event::Closed { code: 4010, reason } if reason == "signed out"),
            "{closed:?}"
        );
        // The session has ended: next_event answers at once, and nothing connects again
        // (the backoff window is at most 200 ms).
        let started = Instant::now();
        assert!(tokio::task::block_in_place(|| client.next_event(STEP)).is_none());
        assert!(started.elapsed() < STEP / 2, "next_event waited");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            proxy.links.lock().unwrap().len(),
            2,
            "expected the one connection only (two pumps)"
        );
        assert!(matches!(
            client.publish("a.b", &json!(1)),
            Err(corecast_client::ClientError::NotConnected)
        ));

        // Opted in, the client reconnects after 4010 like after any close.
        let mut opted_in = config(format!("{}?user=bob", proxy.url()));
        opted_in.reconnect_after_disconnect = true;
        let bob = connect(opted_in);
        wait_for(&bob, STEP, "subscribed $user", |e| subscribed(e, "$user"));
        user_act(&server, "/v1/users/disconnect", json!({"user": "bob"})).await;
        let (lost, _) = wait_for(&bob, STEP, "disconnected", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        let Event::Disconnected { reason, .. } = lost else {
            unreachable!()
        };
        assert_eq!(
            reason,
            "server closed the connection: 4010 disconnected by the server"
        );
        wait_for(&bob, STEP, "connected again", |e| {
            matches!(e, Event::Connected { reconnects: 1, .. })
        });
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_side_subscriptions_are_events_and_kept_across_reconnects() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let proxy = Proxy::start(server.ws).await;
        let client = connect(config(format!("{}?user=ada", proxy.url())));
        wait_for(&client, STEP, "subscribed $user", |e| {
            subscribed(e, "$user")
        });
        user_act(
            &server,
            "/v1/users/subscribe",
            json!({"user": "ada", "channel": "quotes.*"}),
        )
        .await;
        let (event, before) = wait_for(&client, STEP, "server subscribed", |e| {
            subscribed(e, "quotes.*")
        });
        assert!(before.is_empty(), "{before:?}");
        assert!(
            matches!(
                &event,
                Event::Subscribed {
                    server: true,
                    epoch: Some(_),
                    seq: Some(_),
                    ..
                }
            ),
            "{event:?}"
        );
        server.publish("quotes.eu", &json!(1)).await;
        let (message, _) = wait_for(&client, STEP, "quotes.eu 1", |e| {
            matches!(e, Event::Message(_))
        });
        assert_eq!(data(&message), json!(1));
        assert!(client.position("quotes.*").is_some());

        proxy.refuse(true);
        proxy.cut();
        wait_for(&client, STEP, "disconnected", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        server.publish("quotes.eu", &json!(2)).await;
        proxy.refuse(false);
        let (again, _) = wait_for(&client, STEP, "quotes.* resubscribed", |e| {
            subscribed(e, "quotes.*")
        });
        assert!(
            matches!(
                again,
                Event::Subscribed {
                    server: false,
                    recovered: Some(true),
                    ..
                }
            ),
            "{again:?}"
        );
        let (message, _) = wait_for(&client, STEP, "quotes.eu 2, recovered", |e| {
            matches!(e, Event::Message(_))
        });
        assert_eq!(data(&message), json!(2));

        user_act(
            &server,
            "/v1/users/unsubscribe",
            json!({"user": "ada", "channel": "quotes.*"}),
        )
        .await;
        wait_for(
            &client,
            STEP,
            "server unsubscribed",
            |e| matches!(e, Event::Unsubscribed { pattern, server: true } if pattern == "quotes.*"),
        );
        assert_eq!(client.position("quotes.*"), None);
        server.publish("quotes.eu", &json!(3)).await;
        assert!(
            tokio::task::block_in_place(|| client.next_event(common::QUIET)).is_none(),
            "expected nothing after the server's unsubscribe"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_user_and_subscribe_through_the_cli() {
    watchdog(async {
        let server = Server::start(&[]).await;
        let url = server.ws_url("/ws?user=ada");
        let mut subscriber = Command::new(env!("CARGO_BIN_EXE_corecast"))
            .args(["subscribe", "$user", "--url", &url, "--count", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
        let mut next_line = async || -> Value {
            let line = tokio::time::timeout(STEP, lines.next_line())
                .await
                .expect("a line from corecast subscribe")
                .unwrap()
                .expect("corecast subscribe ended early");
            serde_json::from_str(&line).unwrap_or_else(|err| panic!("{line:?}: {err}"))
        };
        let connected = next_line().await;
        assert_eq!(
            (&connected["type"], &connected["user"]),
            (&json!("connected"), &json!("ada")),
            "{connected}"
        );
        let subscribed = next_line().await;
        assert_eq!(subscribed["channel"], "$user", "{subscribed}");

        let api = format!("http://{}", server.api);
        let published = corecast(&["publish", "--user", "ada", r#"{"n":1}"#, "--api", &api]).await;
        assert_eq!(
            (
                published.status.code(),
                String::from_utf8(published.stdout).unwrap()
            ),
            (Some(0), "{\"user\":\"ada\",\"offset\":1}\n".to_string())
        );
        let mut message = next_line().await;
        let object = message.as_object_mut().unwrap();
        object.remove("ts_ms");
        object.remove("seq");
        assert_eq!(
            message,
            json!({"type": "message", "channel": "$user", "offset": 1, "data": {"n": 1}})
        );
        let status = tokio::time::timeout(STEP, subscriber.wait())
            .await
            .expect("corecast subscribe --count 1 to exit")
            .unwrap();
        assert_eq!(status.code(), Some(0));

        let both = corecast(&["publish", "a.b", "1", "--user", "ada", "--api", &api]).await;
        assert_eq!(both.status.code(), Some(2));
        let stderr = String::from_utf8(both.stderr).unwrap();
        assert!(
            stderr.starts_with("corecast publish: --user publishes to a user, not to a channel"),
            "{stderr}"
        );
    })
    .await
}
