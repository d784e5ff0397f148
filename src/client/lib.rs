//! corecast-client: a blocking Rust client of the wire contract (`PROTOCOL.md`) and its
//! delivery extensions (README, "Delivery guarantees"), and the `corecast subscribe` and
//! `corecast publish` commands built on it.
//!
//! Owns the client side of a connection's life: connect to `ws://host:port/ws` (or `wss://`,
//! TLS with rustls, trusting `ca_file` or Mozilla's roots), present a token if given, read
//! `connected`, subscribe, publish, ack, measure an app-level ping, and reconnect with
//! exponential backoff and full jitter whenever the connection ends, resubscribing every
//! pattern with `since` so the server sends what was missed. One background thread per
//! [`Client`] reads the socket and reconnects; the application's calls write through a shared
//! lock, and events reach it through a bounded channel ([`Client::next_event`]).
//! A connection with a user (PROTOCOL.md, "Users") is subscribed by the server to its `$user`
//! stream at connect; the client tracks `$user` like a subscription of its own, so after a
//! reconnect it asks for it again with `since` and the server sends what the user was sent
//! meanwhile. A close with 4010 (the user disconnected by the server) ends the client instead
//! of a reconnect, unless `reconnect_after_disconnect`.
//! It uses std threads and blocking `std::net` sockets only (no async runtime), never deduplicates or reorders
//! what the server sends (the server guarantees no gap and no duplicate on recovery; a gap it
//! cannot avoid arrives as [`Event::Gap`] or `recovered: false`), and never blocks the
//! application for longer than `write_timeout_ms` on a write. It speaks the protocol through
//! `corecast-proto` alone (channel rules, [`Since`], and the client codec, `wire` and `buffer`,
//! that it shares with the bench) and must never depend on the server's crate: an application
//! that links the client links none of the server.
//!
//! # Layout
//! - [`event`]: the [`Event`]s handed to the application, read from the server's frames.
//! - [`track`]: the subscriptions and their positions, and the `subscribe` commands they make.
//! - [`backoff`]: the reconnect delay.
//! - `session`: the background thread: connection, reading, ping timer, reconnects.
//! - `link`: the byte stream under a connection, plain TCP or TLS.
//! - [`cli`]: `corecast subscribe` and `corecast publish`.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli;
pub mod event;
mod link;
mod session;
pub mod track;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub use corecast_proto::{Position, Since};
pub use event::{Event, Member, Message, Presence};
pub use session::ConnectError;
pub use track::Cursor;

use corecast_proto::channel::{validate_channel, validate_pattern, ChannelError, USER_CHANNEL};
use corecast_proto::{buffer, tls, wire};
use link::Link;
use track::Subscriptions;
use wire::{WsTarget, CLOSE_NORMAL_PAYLOAD, CONTROL_FRAME_BYTES_MAX, OPCODE_CLOSE};

/// How a [`Client`] connects, waits and bounds itself. Every field has the documented default
/// of [`ClientConfig::new`]; [`Client::connect`] refuses out-of-range values by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `ws://host:port/path?query`, or `wss://` for TLS (port 443 by default). Default path:
    /// as written (`/` if none).
    pub url: String,
    /// A connection JWT, sent at every upgrade as `Authorization: Bearer` (default none: a
    /// server with `auth = "jwt"` then answers 401). Not refreshed: once it expires, the
    /// server closes the connection (4001) and refuses the reconnects.
    pub token: Option<String>,
    /// A PEM file of the CA certificates a `wss://` server's certificate must chain to (a
    /// private CA, or a self-signed server's own certificate); default none: Mozilla's roots
    /// (`webpki-roots`), built in. Read once, by [`Client::connect`].
    pub ca_file: Option<PathBuf>,
    /// First reconnect window, ms (default 1,000): a reconnect waits `uniform(0, min(cap,
    /// base * 2^attempt))`. Smaller reconnects sooner after a blip but loads a restarting
    /// server harder when many clients drop at once.
    pub backoff_base_ms: u64,
    /// Largest reconnect window, ms (default 30,000): the longest a client stays away from a
    /// server that is back. At least `backoff_base_ms`.
    pub backoff_cap_ms: u64,
    /// Interval of the app-level `ping`, ms (default 10,000). A connection whose pong is
    /// missing for 2 intervals is treated as dead and replaced; shorter detects a dead path
    /// sooner at the cost of one small frame per interval.
    pub ping_interval_ms: u64,
    /// Longest one attempt may take from TCP connect to the `connected` frame, ms (default
    /// 5,000).
    pub connect_timeout_ms: u64,
    /// Longest one write may block the caller, ms (default 5,000); a write that times out ends
    /// the connection, and the client reconnects.
    pub write_timeout_ms: u64,
    /// Largest server frame accepted, bytes (default 16 MiB); a larger one ends the connection
    /// (and the read buffer never grows past it).
    pub frame_bytes_max: u64,
    /// Capacity of the event channel, events (default 10,000). When it is full the reader
    /// waits for the application instead of dropping events: the socket then fills and the
    /// server's slow-consumer policy applies (disconnect, then recovery on reconnect).
    pub events_max: usize,
    /// Most patterns subscribed at once (default 1,000), `$user` not counted (as the server
    /// counts none); each is resent on every reconnect.
    pub subscriptions_max: usize,
    /// Whether to reconnect after the server closed the connection with 4010 (its user
    /// disconnected by `POST /v1/users/disconnect`); default false: the client ends with
    /// [`Event::Closed`], since a user the server sent away is usually meant to stay away
    /// (signed out, banned) and a reconnect would undo that, or be refused over and over.
    pub reconnect_after_disconnect: bool,
}

impl ClientConfig {
    /// The defaults above, for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            ca_file: None,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 30_000,
            ping_interval_ms: 10_000,
            connect_timeout_ms: 5_000,
            write_timeout_ms: 5_000,
            frame_bytes_max: 16 * 1024 * 1024,
            events_max: 10_000,
            subscriptions_max: 1_000,
            reconnect_after_disconnect: false,
        }
    }

    /// Checks each field and their relationships; the error names the field and the value.
    pub fn validate(&self) -> Result<WsTarget, ClientError> {
        let target = wire::parse_ws_url(&self.url).map_err(ClientError::Config)?;
        let positive = [
            ("backoff_base_ms", self.backoff_base_ms),
            ("ping_interval_ms", self.ping_interval_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("frame_bytes_max", self.frame_bytes_max),
            ("events_max", self.events_max as u64),
            ("subscriptions_max", self.subscriptions_max as u64),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ClientError::Config(format!(
                    "{field} = 0: must be at least 1"
                )));
            }
        }
        if self.backoff_cap_ms < self.backoff_base_ms {
            return Err(ClientError::Config(format!(
                "backoff_cap_ms = {}: must be at least backoff_base_ms ({})",
                self.backoff_cap_ms, self.backoff_base_ms
            )));
        }
        Ok(target)
    }
}

/// Why a [`Client`] call failed. None of these ends the client.
#[derive(Debug)]
pub enum ClientError {
    /// A [`ClientConfig`] field is out of range, the URL is not `ws://` or `wss://`, or the
    /// `ca_file` cannot be used; carries which.
    /// Caller: fix the configuration.
    Config(String),
    /// The first connection failed. Caller: check the URL and the server, then try again
    /// (later connections are retried by the client itself).
    Connect(ConnectError),
    /// A channel name or pattern breaks the contract's rules. Caller: fix the name.
    InvalidChannel { name: String, error: ChannelError },
    /// Subscribing would exceed `subscriptions_max`. Caller: unsubscribe something first.
    TooManySubscriptions { max: usize },
    /// No connection is up right now (a reconnect is pending). Caller: retry after the next
    /// [`Event::Connected`]. Subscriptions do not fail this way: they are sent on connect.
    NotConnected,
    /// The write failed; the connection is being replaced. Caller: as for `NotConnected`.
    Io(std::io::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(why) => write!(f, "client configuration: {why}"),
            Self::Connect(err) => write!(f, "connect: {err}"),
            Self::InvalidChannel { name, error } => write!(f, "{name:?}: {error}"),
            Self::TooManySubscriptions { max } => {
                write!(f, "already {max} subscriptions (subscriptions_max)")
            }
            Self::NotConnected => f.write_str("not connected (reconnecting)"),
            Self::Io(err) => write!(f, "write: {err}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Round-trip time of the app-level ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// The latest ping's round trip.
    pub last: Duration,
    /// Exponentially weighted moving average, each new sample weighing 1/8 (the smoothing of
    /// TCP's SRTT, RFC 6298): steady under one slow sample, current within a few dozen.
    pub average: Duration,
}

/// The write half of the current connection.
struct Writer {
    link: Link,
    /// Reused frame bytes: one allocation per connection, grown to the largest frame sent.
    frame: Vec<u8>,
    /// Masking keys (RFC 6455 wants them unpredictable to intermediaries).
    rng: fastrand::Rng,
}

impl Writer {
    fn new(link: Link) -> Self {
        Self {
            link,
            frame: Vec::new(),
            rng: fastrand::Rng::new(),
        }
    }
}

/// What the application's calls and the session share, behind one lock.
struct State {
    subscriptions: Subscriptions,
    /// `None` between connections.
    writer: Option<Writer>,
    /// The current connection's epoch.
    epoch: Option<String>,
    /// The latest connection's user (kept while reconnecting); `None` when anonymous.
    user: Option<String>,
    /// The application unsubscribed `$user`: every new connection of a user unsubscribes the
    /// stream the server subscribed at connect.
    user_stream_off: bool,
}

impl State {
    /// Writes one masked text frame; a failure shuts the socket down so the session reconnects.
    fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        let writer = self.writer.as_mut().ok_or(ClientError::NotConnected)?;
        let mask = writer.rng.u32(..).to_be_bytes();
        wire::masked_text_frame(&[text], mask, &mut writer.frame);
        let written = writer.link.write_all(&writer.frame);
        Self::check(writer, written)
    }

    /// Writes one masked control frame (`payload` at most 125 bytes).
    fn send_control(&mut self, opcode: u8, payload: &[u8]) -> Result<(), ClientError> {
        let writer = self.writer.as_mut().ok_or(ClientError::NotConnected)?;
        let mut frame = [0; CONTROL_FRAME_BYTES_MAX];
        let mask = writer.rng.u32(..).to_be_bytes();
        let length = wire::encode_control_frame(opcode, payload, mask, &mut frame);
        let written = writer.link.write_all(&frame[..length]);
        Self::check(writer, written)
    }

    fn check(writer: &Writer, written: std::io::Result<()>) -> Result<(), ClientError> {
        written.map_err(|err| {
            // The reader shares this socket: it sees the shutdown and reconnects.
            let _ = writer.link.shutdown();
            ClientError::Io(err)
        })
    }
}

/// Everything the application's thread and the session thread share.
struct Shared {
    config: ClientConfig,
    target: WsTarget,
    /// For `wss://`: the rustls configuration and the name the certificate must carry.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    state: Mutex<State>,
    /// Set once, when the client is dropped.
    stopped: AtomicBool,
    /// Ids of commands and pings, one sequence for all.
    next_id: AtomicU64,
    latency: Mutex<Option<Latency>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock left plain data behind (no invariant spans a write):
        // keep going with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record_latency(&self, sample: Duration) {
        let mut latency = self
            .latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let average = match *latency {
            None => sample,
            Some(previous) => (previous.average * 7 + sample) / 8,
        };
        *latency = Some(Latency {
            last: sample,
            average,
        });
    }
}

/// A connection to a corecast server that survives disconnects. Dropping it closes the
/// connection (Close 1000) and ends its thread.
pub struct Client {
    shared: Arc<Shared>,
    /// `None` only while dropping, so the session's blocked send ends before the join.
    events: Option<Receiver<Event>>,
    session: Option<JoinHandle<()>>,
}

impl Client {
    /// Connects (the first attempt is made here, and its failure returned) and starts the
    /// session thread, which reconnects from then on. The first event is
    /// [`Event::Connected`].
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let target = config.validate()?;
        let tls = if target.tls {
            Some(tls_config(&config, &target)?)
        } else {
            None
        };
        let (sender, events) = mpsc::sync_channel(config.events_max);
        let shared = Arc::new(Shared {
            config,
            target,
            tls,
            state: Mutex::new(State {
                subscriptions: Subscriptions::default(),
                writer: None,
                epoch: None,
                user: None,
                user_stream_off: false,
            }),
            stopped: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            latency: Mutex::new(None),
        });
        let first = session::Connection::open(&shared).map_err(ClientError::Connect)?;
        let session_shared = shared.clone();
        let session = std::thread::Builder::new()
            .name("corecast-client".to_string())
            .spawn(move || session::run(session_shared, sender, first))
            .map_err(|err| ClientError::Connect(ConnectError::Io(err)))?;
        Ok(Client {
            shared,
            events: Some(events),
            session: Some(session),
        })
    }

    /// Subscribes to `pattern` from now on; kept across reconnects (resent with `since`).
    /// Subscribing a pattern twice is a no-op. `$user` is the connection's own user's stream,
    /// subscribed already unless the application unsubscribed it.
    pub fn subscribe(&self, pattern: &str) -> Result<(), ClientError> {
        self.add_subscription(pattern, Cursor::default())
    }

    /// Subscribes to `pattern` resuming after `since` (a position from an earlier run of the
    /// application): the server sends what came after it, or says why it cannot.
    pub fn subscribe_since(&self, pattern: &str, since: Since) -> Result<(), ClientError> {
        self.add_subscription(pattern, since.into())
    }

    fn add_subscription(&self, pattern: &str, position: Cursor) -> Result<(), ClientError> {
        validate_pattern(pattern).map_err(|error| ClientError::InvalidChannel {
            name: pattern.to_string(),
            error,
        })?;
        let mut state = self.shared.lock();
        let max = self.shared.config.subscriptions_max;
        let counted =
            state.subscriptions.count() - usize::from(state.subscriptions.contains(USER_CHANNEL));
        if pattern != USER_CHANNEL && !state.subscriptions.contains(pattern) && counted >= max {
            return Err(ClientError::TooManySubscriptions { max });
        }
        if pattern == USER_CHANNEL {
            state.user_stream_off = false;
        }
        if !state.subscriptions.add(pattern, position) {
            return Ok(());
        }
        let id = self.next_id();
        let command = state
            .subscriptions
            .subscribe_command(pattern, id)
            .expect("added above");
        // Not connected or the write failed: the session sends it on the next connection.
        let _ = state.send_text(&command);
        Ok(())
    }

    /// Stops the subscription to `pattern` (here and on every later connection). For `$user`,
    /// every later connection unsubscribes the stream the server subscribes at connect.
    pub fn unsubscribe(&self, pattern: &str) -> Result<(), ClientError> {
        let mut state = self.shared.lock();
        if pattern == USER_CHANNEL {
            state.user_stream_off = true;
        }
        if !state.subscriptions.remove(pattern) {
            return Ok(());
        }
        let id = self.next_id();
        let command = serde_json::json!({"type": "unsubscribe", "channel": pattern, "id": id});
        // Not connected: the next connection does not resubscribe it, which unsubscribes.
        let _ = state.send_text(&command.to_string());
        Ok(())
    }

    /// Publishes `data` to `channel` through the WebSocket (the server must allow client
    /// publishing there, else [`Event::Error`] `forbidden`). Returns the command's id, echoed
    /// by [`Event::Published`].
    pub fn publish(&self, channel: &str, data: &serde_json::Value) -> Result<u64, ClientError> {
        check_channel(channel)?;
        let id = self.next_id();
        let command =
            serde_json::json!({"type": "publish", "channel": channel, "data": data, "id": id});
        self.shared.lock().send_text(&command.to_string())?;
        Ok(id)
    }

    /// Acknowledges `offset` of `channel` (which a subscription must match). Returns the
    /// command's id, echoed by [`Event::Acked`].
    pub fn ack(&self, channel: &str, offset: u64) -> Result<u64, ClientError> {
        check_channel(channel)?;
        let id = self.next_id();
        let command =
            serde_json::json!({"type": "ack", "channel": channel, "offset": offset, "id": id});
        self.shared.lock().send_text(&command.to_string())?;
        Ok(id)
    }

    /// Asks who is subscribed to `channel` (an exact name this connection is subscribed to, in
    /// a namespace with `presence`). Returns the command's id, echoed by [`Event::Presence`]
    /// (or by [`Event::Error`]: `not_subscribed`, `presence_disabled`).
    pub fn presence(&self, channel: &str) -> Result<u64, ClientError> {
        check_channel(channel)?;
        let id = self.next_id();
        let command = serde_json::json!({"type": "presence", "channel": channel, "id": id});
        self.shared.lock().send_text(&command.to_string())?;
        Ok(id)
    }

    /// The next event, waiting at most `timeout`; `None` when nothing came, and at once after
    /// [`Event::Closed`] (the session has ended).
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        let events = self.events.as_ref().expect("taken only in drop");
        // Disconnected: the session ended after Event::Closed; nothing more will come.
        events.recv_timeout(timeout).ok()
    }

    /// The app-level ping's round trip, once a pong has come back.
    pub fn latency(&self) -> Option<Latency> {
        *self
            .shared
            .latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The epoch of the latest connection (kept while reconnecting); `None` from a server
    /// without positions.
    pub fn epoch(&self) -> Option<String> {
        self.shared.lock().epoch.clone()
    }

    /// The latest connection's user (kept while reconnecting); `None` when anonymous.
    pub fn user(&self) -> Option<String> {
        self.shared.lock().user.clone()
    }

    /// Where the subscription to `pattern` stands: what a reconnect would resume from, and
    /// what an application persists to resume in a later run ([`Client::subscribe_since`]).
    pub fn position(&self, pattern: &str) -> Option<Cursor> {
        self.shared.lock().subscriptions.position(pattern).cloned()
    }

    fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The rustls configuration of a `wss://` target: `ca_file`'s roots or the built-in ones.
fn tls_config(
    config: &ClientConfig,
    target: &WsTarget,
) -> Result<
    (
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
    ClientError,
> {
    let roots = match &config.ca_file {
        Some(path) => std::fs::read(path)
            .map_err(|err| err.to_string())
            .and_then(|pem| tls::roots(Some(&pem)))
            .map_err(|err| ClientError::Config(format!("ca_file {}: {err}", path.display())))?,
        None => tls::roots(None).map_err(ClientError::Config)?,
    };
    let name = tls::server_name(target.host()).map_err(ClientError::Config)?;
    Ok((tls::client_config(roots), name))
}

fn check_channel(channel: &str) -> Result<(), ClientError> {
    validate_channel(channel).map_err(|error| ClientError::InvalidChannel {
        name: channel.to_string(),
        error,
    })
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        {
            let mut state = self.shared.lock();
            // Best effort: the socket is shut down right after either way.
            let _ = state.send_control(OPCODE_CLOSE, &CLOSE_NORMAL_PAYLOAD);
            if let Some(writer) = state.writer.take() {
                let _ = writer.link.shutdown();
            }
        }
        // Unblocks a session waiting for room in the channel.
        drop(self.events.take());
        if let Some(session) = self.session.take() {
            session.thread().unpark();
            // A panic in the session has been printed already; nothing to add while dropping.
            let _ = session.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        let mut config = ClientConfig::new("ws://127.0.0.1:1/ws");
        config.backoff_cap_ms = 10;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "client configuration: backoff_cap_ms = 10: must be at least backoff_base_ms (1000)"
        );
        let mut config = ClientConfig::new("ws://127.0.0.1:1/ws");
        config.events_max = 0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "client configuration: events_max = 0: must be at least 1"
        );
        let config = ClientConfig::new("http://h/ws");
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            r#"client configuration: "http://h/ws": only ws:// and wss:// URLs are supported"#
        );
        let mut config = ClientConfig::new("wss://h/ws");
        config.ca_file = Some("/nonexistent/ca.pem".into());
        let err = Client::connect(config).err().expect("no such file");
        assert!(
            err.to_string()
                .starts_with("client configuration: ca_file /nonexistent/ca.pem: "),
            "{err}"
        );
    }

    #[test]
    fn a_refused_first_connection_is_returned() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut config = ClientConfig::new(format!("ws://{addr}/ws"));
        config.connect_timeout_ms = 2_000;
        let err = Client::connect(config).err().expect("nothing listens");
        assert!(
            matches!(&err, ClientError::Connect(ConnectError::Io(io)) if io.kind() == std::io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
    }

    #[test]
    fn the_latency_average_weighs_each_sample_one_eighth() {
        let shared = Shared {
            config: ClientConfig::new("ws://127.0.0.1:1/ws"),
            target: wire::parse_ws_url("ws://127.0.0.1:1/ws").unwrap(),
            tls: None,
            state: Mutex::new(State {
                subscriptions: Subscriptions::default(),
                writer: None,
                epoch: None,
                user: None,
                user_stream_off: false,
            }),
            stopped: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            latency: Mutex::new(None),
        };
        shared.record_latency(Duration::from_millis(8));
        shared.record_latency(Duration::from_millis(16));
        assert_eq!(
            *shared.latency.lock().unwrap(),
            Some(Latency {
                last: Duration::from_millis(16),
                average: Duration::from_millis(9),
            })
        );
    }
}
