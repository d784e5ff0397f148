//! Shared harness of the black-box tests: starts the real `corecast` binary on port 0, reads the
//! ports it prints, and talks to it the way clients do (a real WebSocket client, an HTTP client)
//! plus hand-built bytes (see `raw`) for what client libraries refuse to send.
//!
//! Every helper that waits does so with a bound, so a server that stays silent fails the test with
//! a message saying what was awaited instead of hanging it.

// Each test binary compiles this module and uses only part of it; the rest would warn as dead.
#![allow(dead_code)]

pub mod raw;

use std::future::Future;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest a whole test may run: a hang fails here instead of stalling the suite.
pub const WATCHDOG: Duration = Duration::from_secs(30);
/// Longest wait for one expected frame or HTTP reply on a loaded two-core machine.
pub const STEP: Duration = Duration::from_secs(5);
/// How long "nothing more arrives" is watched for before it is believed.
pub const QUIET: Duration = Duration::from_millis(300);
/// Longest wait for the `listening` line after spawning the binary.
pub const STARTUP: Duration = Duration::from_secs(20);

/// Runs a test body under the [`WATCHDOG`].
pub async fn watchdog<F: Future<Output = ()>>(test: F) {
    if tokio::time::timeout(WATCHDOG, test).await.is_err() {
        panic!("watchdog: the test did not finish within {WATCHDOG:?} (something hung)");
    }
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Asserts `value` is an integer millisecond timestamp within a minute of this machine's clock
/// (server and test share the machine, so anything else is a unit or epoch mistake).
pub fn assert_recent_ms(value: &Value, what: &str) -> u64 {
    let ms = value
        .as_u64()
        .unwrap_or_else(|| panic!("expected {what} to be an integer of milliseconds, got {value}"));
    let now = now_ms();
    assert!(
        ms.abs_diff(now) < 60_000,
        "expected {what} = {ms} to be Unix-epoch milliseconds near now ({now})"
    );
    ms
}

/// Asserts `got` is exactly the delivery `{"type":"message",...}` of `data` on `channel` at
/// `offset`; `seq` must be a positive integer, `ts_ms` a recent one. Returns `ts_ms`.
pub fn assert_message(got: &Value, channel: &str, offset: u64, data: &Value) -> u64 {
    let ts_ms = assert_recent_ms(&got["ts_ms"], &format!("ts_ms of the delivery {got}"));
    let seq = got["seq"]
        .as_u64()
        .filter(|seq| *seq >= 1)
        .unwrap_or_else(|| panic!("expected a positive integer seq in the delivery {got}"));
    let expected = json!({
        "type": "message", "channel": channel, "offset": offset, "seq": seq, "ts_ms": ts_ms,
        "data": data,
    });
    assert_eq!(got, &expected, "expected exactly this delivery");
    ts_ms
}

/// Asserts `got` is exactly `{"type":"error","id":id,"code":code,"message":<non-empty text>}`.
pub fn assert_error(got: &Value, id: Value, code: &str) {
    let message = got["message"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error {code:?} with a text message, got {got}"));
    assert!(
        !message.is_empty(),
        "expected a human-readable message in the error {got}"
    );
    let expected = json!({"type": "error", "id": id, "code": code, "message": message});
    assert_eq!(got, &expected, "expected exactly this error reply");
}

/// Asserts an HTTP error body is exactly `{"error":{"code":<text>,"message":<text>}}` and returns
/// the code.
pub fn assert_http_error_body(reply: &HttpReply, what: &str) -> String {
    let body = reply.json();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected {{\"error\":{{\"code\":..}}}}, got {body}"))
        .to_string();
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected {{\"error\":{{\"message\":..}}}}, got {body}"))
        .to_string();
    assert!(!code.is_empty(), "{what}: expected a non-empty error code");
    assert_eq!(
        body,
        json!({"error": {"code": code, "message": message}}),
        "{what}: expected exactly the error body shape"
    );
    code
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// One `corecast serve` child process. Killed on drop; on a failing test its stderr tail is
/// printed so the failure comes with the server's side of the story.
pub struct Server {
    child: Child,
    /// The WebSocket address from the `listening` line.
    pub ws: SocketAddr,
    /// The control-plane address from the `listening` line.
    pub api: SocketAddr,
    /// The lines printed before `listening` (one per executor).
    pub executor_lines: Vec<String>,
    stderr_tail: Arc<Mutex<Vec<String>>>,
    agent: ureq::Agent,
}

impl Server {
    /// Starts `corecast serve --listen 127.0.0.1:0 --api 127.0.0.1:0 --shards 2 <extra>` and waits
    /// for its `listening ws=ADDR api=ADDR` line.
    pub async fn start(extra: &[&str]) -> Server {
        Server::start_command(Command::new(env!("CARGO_BIN_EXE_corecast")), extra).await
    }

    /// [`Server::start`] with RLIMIT_NOFILE (soft and hard) lowered to `nofile` for the server
    /// process, through util-linux's `prlimit`, which then runs it under the same pid.
    pub async fn start_with_nofile(extra: &[&str], nofile: u64) -> Server {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_corecast"));
        Server::start_command(command, extra).await
    }

    async fn start_command(mut command: Command, extra: &[&str]) -> Server {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--shards",
            "2",
        ];
        args.extend_from_slice(extra);
        let mut child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("expected to spawn corecast {args:?}: {err}"));

        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let tail = stderr_tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut tail = tail.lock().unwrap();
                if tail.len() == 200 {
                    tail.remove(0);
                }
                tail.push(line);
            }
        });

        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut executor_lines = Vec::new();
        let listening = tokio::time::timeout(STARTUP, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("listening ") {
                    return Some(line);
                }
                executor_lines.push(line);
            }
            None
        })
        .await;
        let line = match listening {
            Ok(Some(line)) => line,
            Ok(None) => {
                let status = tokio::time::timeout(STEP, child.wait()).await;
                panic!(
                    "expected a `listening ws=.. api=..` line; stdout ended first (exit {status:?}) \
                     after {executor_lines:?}; stderr:\n{}",
                    stderr_tail.lock().unwrap().join("\n")
                )
            }
            Err(_) => panic!(
                "expected a `listening ws=.. api=..` line within {STARTUP:?}; stdout so far \
                 {executor_lines:?}; stderr:\n{}",
                stderr_tail.lock().unwrap().join("\n")
            ),
        };
        // Keep draining stdout so a chatty server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (ws, api) = parse_listening(&line);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(STEP))
            .build()
            .new_agent();
        Server {
            child,
            ws,
            api,
            executor_lines,
            stderr_tail,
            agent,
        }
    }

    /// `ws://ADDR<path>`, e.g. `path` = `/ws?channels=a,b`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.ws, path)
    }

    /// The child's process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .expect("expected the server to be still running")
    }

    /// Sends SIGTERM and waits up to `within` for the exit status.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        let pid = self.pid().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("expected to run kill");
        assert!(kill.success(), "expected `kill -TERM {pid}` to succeed");
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for the server"),
            Err(_) => panic!("expected the server to exit within {within:?} of SIGTERM"),
        }
    }

    /// The last lines the server logged to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail.lock().unwrap().join("\n")
    }

    // --- control-plane HTTP --------------------------------------------------------------------

    /// One HTTP request to the control-plane; 4xx and 5xx are returned, not raised.
    pub async fn http(&self, method: &str, path: &str, body: Option<&str>) -> HttpReply {
        self.http_with(method, path, body, None).await
    }

    /// [`Server::http`] with `Authorization: Bearer <key>` when `key` is given.
    pub async fn http_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> HttpReply {
        let agent = self.agent.clone();
        let url = format!("http://{}{}", self.api, path);
        let method = method.to_string();
        let body = body.map(str::to_string);
        let bearer = key.map(|key| format!("Bearer {key}"));
        tokio::task::spawn_blocking(move || {
            let mut builder = ureq::http::Request::builder()
                .method(method.as_str())
                .uri(&url);
            if let Some(bearer) = bearer {
                builder = builder.header("authorization", bearer);
            }
            let result = match body {
                Some(body) => agent.run(
                    builder
                        .header("content-type", "application/json")
                        .body(body)
                        .expect("a valid request"),
                ),
                None => agent.run(builder.body(()).expect("a valid request")),
            };
            let mut response = result
                .unwrap_or_else(|err| panic!("expected an HTTP reply to {method} {url}: {err}"));
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .read_to_string()
                .unwrap_or_else(|err| panic!("expected a text body from {method} {url}: {err}"));
            HttpReply { status, body }
        })
        .await
        .expect("the HTTP task")
    }

    pub async fn get(&self, path: &str) -> HttpReply {
        self.http("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> HttpReply {
        self.http("POST", path, Some(body)).await
    }

    /// `POST /v1/publish`; asserts the exact 200 reply and returns its offset.
    pub async fn publish(&self, channel: &str, data: &Value) -> u64 {
        let body = json!({"channel": channel, "data": data}).to_string();
        let reply = self.post("/v1/publish", &body).await;
        assert_publish_reply(&reply, channel)
    }

    /// Many `POST /v1/publish` one after the other (each waits for its reply) on one blocking task;
    /// asserts each exact reply and returns the offsets.
    pub async fn publish_many(&self, channel: &str, datas: Vec<Value>) -> Vec<u64> {
        let agent = self.agent.clone();
        let url = format!("http://{}/v1/publish", self.api);
        let channel = channel.to_string();
        tokio::task::spawn_blocking(move || {
            datas
                .iter()
                .map(|data| {
                    let body = json!({"channel": channel, "data": data}).to_string();
                    let mut response = agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .send(body)
                        .unwrap_or_else(|err| panic!("expected a reply to POST {url}: {err}"));
                    let status = response.status().as_u16();
                    let body = response.body_mut().read_to_string().expect("a text body");
                    assert_publish_reply(&HttpReply { status, body }, &channel)
                })
                .collect()
        })
        .await
        .expect("the HTTP task")
    }

    /// `POST /v1/publish/batch` of `(channel, data)` pairs; asserts the exact 200 reply and
    /// returns the offsets in order.
    pub async fn publish_batch(&self, messages: &[(&str, Value)]) -> Vec<u64> {
        let body = json!({
            "messages": messages
                .iter()
                .map(|(channel, data)| json!({"channel": channel, "data": data}))
                .collect::<Vec<_>>(),
        });
        let reply = self.post("/v1/publish/batch", &body.to_string()).await;
        assert_eq!(
            reply.status, 200,
            "expected 200 from POST /v1/publish/batch, got {} {}",
            reply.status, reply.body
        );
        let got = reply.json();
        let offsets: Vec<u64> = got["results"]
            .as_array()
            .unwrap_or_else(|| panic!("expected {{\"results\":[..]}}, got {got}"))
            .iter()
            .map(|result| {
                result["offset"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("expected an integer offset in {result}"))
            })
            .collect();
        let expected = json!({
            "results": messages
                .iter()
                .zip(&offsets)
                .map(|((channel, _), offset)| json!({"channel": channel, "offset": offset}))
                .collect::<Vec<_>>(),
        });
        assert_eq!(
            got, expected,
            "expected one {{channel, offset}} result per message, in order"
        );
        offsets
    }

    /// `GET /v1/stats` as JSON (asserting 200).
    pub async fn stats(&self) -> Value {
        let reply = self.get("/v1/stats").await;
        assert_eq!(
            reply.status, 200,
            "expected 200 from GET /v1/stats, got {reply:?}"
        );
        reply.json()
    }

    /// Polls `GET <path>` until `done` holds (counters may be rolled up a little later than the
    /// event), for at most [`STEP`]; returns the last body either way.
    pub async fn poll_json(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            let reply = self.get(path).await;
            assert_eq!(
                reply.status, 200,
                "expected 200 from GET {path}, got {reply:?}"
            );
            let body = reply.json();
            if done(&body) || Instant::now() >= deadline {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "--- corecast stderr (last lines) ---\n{}\n---",
                self.stderr_tail()
            );
        }
    }
}

fn parse_listening(line: &str) -> (SocketAddr, SocketAddr) {
    let mut parts = line.split(' ');
    let (word, ws, api, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
    let parse = |part: Option<&str>, key: &str| -> SocketAddr {
        part.and_then(|part| part.strip_prefix(key))
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("expected `listening ws=IP:PORT api=IP:PORT`, got {line:?}"))
    };
    assert_eq!(
        word,
        Some("listening"),
        "expected the listening line, got {line:?}"
    );
    assert_eq!(rest, None, "expected nothing after api=ADDR in {line:?}");
    let (ws, api) = (parse(ws, "ws="), parse(api, "api="));
    assert!(
        ws.port() != 0 && api.port() != 0,
        "expected the real ports, not 0, in {line:?}"
    );
    (ws, api)
}

fn assert_publish_reply(reply: &HttpReply, channel: &str) -> u64 {
    assert_eq!(
        reply.status, 200,
        "expected 200 from POST /v1/publish to {channel}, got {} {}",
        reply.status, reply.body
    );
    let got = reply.json();
    let offset = got["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an integer offset in the publish reply {got}"));
    assert_eq!(
        got,
        json!({"channel": channel, "offset": offset}),
        "expected exactly {{channel, offset}} from POST /v1/publish"
    );
    offset
}

/// Status and body of one HTTP reply.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

impl HttpReply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| {
            panic!(
                "expected a JSON body (status {}), got {:?}: {err}",
                self.status, self.body
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// A well-behaved WebSocket client
// ---------------------------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A real WebSocket client (tokio-tungstenite) that has read its `connected` frame.
pub struct Client {
    pub ws: Ws,
    /// The `connected` frame, already checked for shape.
    pub hello: Value,
}

impl Client {
    /// Connects to `/ws` and checks the first frame.
    pub async fn connect(server: &Server) -> Client {
        Client::connect_path(server, "/ws").await
    }

    /// Connects to `path` (with its query) and checks the first frame is `connected`.
    pub async fn connect_path(server: &Server, path: &str) -> Client {
        let url = server.ws_url(path);
        let (ws, response) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(&url))
            .await
            .unwrap_or_else(|_| panic!("expected the WebSocket handshake to {url} within {STEP:?}"))
            .unwrap_or_else(|err| {
                panic!("expected the WebSocket handshake to {url} to succeed: {err}")
            });
        assert_eq!(response.status().as_u16(), 101, "expected 101 from {url}");
        let mut client = Client {
            ws,
            hello: Value::Null,
        };
        let hello = client.recv().await;
        assert_connected_shape(&hello);
        client.hello = hello;
        client
    }

    /// The shard this connection landed on (from `connected`).
    pub fn shard(&self) -> u64 {
        self.hello["shard"].as_u64().expect("checked in connect")
    }

    pub async fn send(&mut self, command: Value) {
        self.send_text(&command.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        tokio::time::timeout(STEP, self.ws.send(Message::text(text)))
            .await
            .unwrap_or_else(|_| panic!("expected to send {text:?} within {STEP:?}"))
            .unwrap_or_else(|err| panic!("expected to send {text:?}: {err}"));
    }

    /// The next text frame as JSON, waiting at most [`STEP`]; pings and pongs are skipped.
    pub async fn recv(&mut self) -> Value {
        match self.recv_within(STEP).await {
            Some(value) => value,
            None => panic!("expected a JSON text frame within {STEP:?}, got nothing"),
        }
    }

    /// The next text frame as JSON, or `None` if none arrives within `within`. Panics on a close,
    /// a binary frame or an error: a well-behaved client must not see those unasked.
    pub async fn recv_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(text.as_str()).unwrap_or_else(|err| {
                        panic!("expected every text frame to be JSON, got {text:?}: {err}")
                    }))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a JSON text frame, got {other:?}"),
            }
        }
    }

    /// Asserts no text frame arrives for [`QUIET`].
    pub async fn expect_silence(&mut self, why: &str) {
        if let Some(frame) = self.recv_within(QUIET).await {
            panic!("expected no frame ({why}), got {frame}");
        }
    }

    /// Sends `command` and returns the next frame.
    pub async fn request(&mut self, command: Value) -> Value {
        self.send(command).await;
        self.recv().await
    }

    /// Subscribes and asserts the exact `subscribed` reply; returns its `seq`.
    pub async fn subscribe(&mut self, channel: &str, id: u64) -> u64 {
        let reply = self
            .request(json!({"type": "subscribe", "channel": channel, "id": id}))
            .await;
        assert_subscribed(&reply, channel, json!(id))
    }

    /// Unsubscribes and asserts the exact `unsubscribed` reply.
    pub async fn unsubscribe(&mut self, channel: &str, id: u64) {
        let reply = self
            .request(json!({"type": "unsubscribe", "channel": channel, "id": id}))
            .await;
        assert_eq!(
            reply,
            json!({"type": "unsubscribed", "channel": channel, "id": id}),
            "expected the unsubscribe of {channel:?} to be confirmed"
        );
    }

    /// Sends a `ping` command and asserts the exact `pong` reply: proof the connection is alive
    /// and still answering commands.
    pub async fn ping(&mut self, id: u64) {
        let reply = self.request(json!({"type": "ping", "id": id})).await;
        let time = assert_recent_ms(&reply["server_time_ms"], "pong server_time_ms");
        assert_eq!(
            reply,
            json!({"type": "pong", "id": id, "server_time_ms": time}),
            "expected exactly a pong echoing id {id}"
        );
    }

    /// Waits for the server's close frame and returns its code and reason.
    pub async fn expect_close(&mut self, within: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("expected a close frame within {within:?}"));
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.as_str().to_string())
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new())
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

/// Asserts `epoch` is what the server gives: 16 lowercase hex digits.
pub fn assert_epoch(epoch: &Value, what: &str) -> String {
    let epoch = epoch
        .as_str()
        .unwrap_or_else(|| panic!("expected a string epoch in {what}"));
    assert!(
        epoch.len() == 16
            && epoch
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)),
        "expected 16 lowercase hex digits as the epoch in {what}, got {epoch:?}"
    );
    epoch.to_owned()
}

/// Asserts `reply` is exactly a plain `{"type":"subscribed","channel":..,"id":..,"epoch":..,
/// "seq":..}`; returns `seq`.
pub fn assert_subscribed(reply: &Value, channel: &str, id: Value) -> u64 {
    let epoch = assert_epoch(&reply["epoch"], &reply.to_string());
    let seq = reply["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an integer seq in {reply}"));
    assert_eq!(
        reply,
        &json!({"type": "subscribed", "channel": channel, "id": id, "epoch": epoch, "seq": seq}),
        "expected the subscribe of {channel:?} to be confirmed"
    );
    seq
}

/// Asserts the exact shape of `{"type":"connected","conn_id":<string>,"shard":<int>,
/// "server_time_ms":<int>,"heartbeat_s":<int>,"epoch":<hex>}` with `shard` one of the two shards,
/// and `"user":<string>` for a connection with a user.
pub fn assert_connected_shape(hello: &Value) {
    let conn_id = hello["conn_id"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a string conn_id in {hello}"));
    assert!(
        !conn_id.is_empty(),
        "expected a non-empty conn_id in {hello}"
    );
    let shard = hello["shard"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an integer shard in {hello}"));
    assert!(
        shard < 2,
        "expected shard 0 or 1 (the server runs --shards 2), got {hello}"
    );
    let time = assert_recent_ms(&hello["server_time_ms"], "connected server_time_ms");
    let heartbeat_s = hello["heartbeat_s"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an integer heartbeat_s in {hello}"));
    let epoch = assert_epoch(&hello["epoch"], &hello.to_string());
    let mut expected = json!({
        "type": "connected", "conn_id": conn_id, "shard": shard,
        "server_time_ms": time, "heartbeat_s": heartbeat_s, "epoch": epoch,
    });
    if let Some(user) = hello.get("user") {
        assert!(
            user.as_str().is_some_and(|user| !user.is_empty()),
            "expected a connection's user to be a non-empty string in {hello}"
        );
        expected["user"] = user.clone();
    }
    assert_eq!(
        hello, &expected,
        "expected exactly the connected frame first"
    );
}

/// A second, well-behaved subscriber kept beside a misbehaving connection: after the bad input
/// it must still receive a publish made right after.
pub struct Bystander {
    pub client: Client,
    channel: String,
    checks: u64,
}

impl Bystander {
    pub async fn join(server: &Server, channel: &str) -> Bystander {
        let mut client = Client::connect(server).await;
        client.subscribe(channel, 1).await;
        Bystander::from_client(client, channel)
    }

    /// A bystander of a client already subscribed to `channel` (one that needed a token, say).
    pub fn from_client(client: Client, channel: &str) -> Bystander {
        Bystander {
            client,
            channel: channel.to_string(),
            checks: 0,
        }
    }

    /// Publishes over HTTP to the bystander's channel and asserts the exact delivery.
    pub async fn assert_unaffected(&mut self, server: &Server) {
        self.checks += 1;
        let data = json!({"bystander_check": self.checks});
        let offset = server.publish(&self.channel, &data).await;
        let got = self.client.recv().await;
        assert_message(&got, &self.channel, offset, &data);
    }
}

/// Sends an upgrade to `path` with `extra` header lines (each ending `\r\n`) and returns the
/// status and the JSON body of the HTTP answer (`Null` when the body is not JSON).
pub async fn refused_upgrade(server: &Server, path: &str, extra: &str) -> (u16, Value) {
    use tokio::io::AsyncWriteExt;
    let mut stream = TcpStream::connect(server.ws).await.expect("connect");
    let request =
        raw::upgrade_request(server.ws, path).replace("\r\n\r\n", &format!("\r\n{extra}\r\n"));
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the upgrade");
    let mut buf = Vec::new();
    let response = raw::read_http_response(&mut stream, &mut buf).await;
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status, body)
}
