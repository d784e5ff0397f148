//! The effective configuration: every limit the server enforces, with its default and trade-off.
//!
//! One struct serves all three faces: it is the TOML file (`--config FILE`), the `serve` flags
//! and the `CORECAST_<KEY>` environment variables ([`env`](mod@env), named from
//! [`Config::keys`]). Each default lives in one function of [`defaults`], named after its field,
//! used by serde and by clap alike, so the two can never disagree. A flag wins over the environment, the environment
//! over the file, the file over the default (see `cli.rs`).
//! [`Config::validate`] refuses bad combinations at start-up with a message that names the field,
//! the value and the allowed range; nothing downstream re-checks them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::channel;
use crate::json;

pub mod env;

/// Every tunable of `corecast serve`. Units are last in every name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// WebSocket address every broadcast shard binds with SO_REUSEPORT.
    #[arg(long, default_value_t = defaults::listen())]
    pub listen: SocketAddr,

    /// Control-plane HTTP address (publish API, health, stats), served by the ingest core.
    /// Without `api_keys` it serves every request, so keep it on loopback or a private network
    /// then; with them every route but `/healthz`, the dashboard page and the client files needs
    /// a key.
    #[arg(long, default_value_t = defaults::api())]
    pub api: SocketAddr,

    /// Number of broadcast shards. Default: one per CPU in `cores`, or per online CPU.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,

    /// CPUs for the broadcast shards, e.g. `0,1,2` or `2-5`. Default: every online CPU.
    /// With fewer CPUs than shards the list is reused round-robin.
    #[arg(long, value_parser = parse_cpu_list)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<CpuList>,

    /// CPU for the ingest core (control plane, sequencer). Default: the first shard CPU, shared.
    /// A dedicated CPU keeps publish latency steady under heavy fan-out.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest_core: Option<usize>,

    /// Seconds between server pings on each connection. Lower finds dead peers sooner and costs
    /// one small frame per connection per period.
    #[arg(long, default_value_t = defaults::heartbeat_s())]
    pub heartbeat_s: u64,

    /// Seconds a connection may send nothing (no pong, no frame) before close 1000 "idle timeout".
    /// Must exceed `heartbeat_s`, or healthy clients are dropped between pings.
    #[arg(long, default_value_t = defaults::idle_timeout_s())]
    pub idle_timeout_s: u64,

    /// Milliseconds a client has to complete the HTTP upgrade; slowloris clients are cut here.
    #[arg(long, default_value_t = defaults::handshake_timeout_ms())]
    pub handshake_timeout_ms: u64,

    /// Largest upgrade request (request line plus headers) in bytes; larger gets 431.
    #[arg(long, default_value_t = defaults::handshake_bytes_max())]
    pub handshake_bytes_max: usize,

    /// Largest client frame payload in bytes; larger closes the connection with 1009.
    #[arg(long, default_value_t = defaults::frame_bytes_max())]
    pub frame_bytes_max: usize,

    /// Largest reassembled client message in bytes (all fragments); larger closes with 1009.
    /// Commands are small: a larger limit only lets clients make the server buffer more.
    #[arg(long, default_value_t = defaults::message_bytes_max())]
    pub message_bytes_max: usize,

    /// Deepest nesting of any JSON the server parses: a client's command, a control-plane
    /// body, an event back from the cluster. Every `[` or `{` open at once counts, the
    /// document's own outermost one too, so a command's `data` may nest one level less (a
    /// batch entry's three less). Deeper is refused whole, `bad_request` on the socket, 400 on
    /// the control plane, before a parser sees it: the parser recurses once per level. Each
    /// thread that parses JSON reserves stack for this many levels (1 KiB each in a release
    /// build, see `json::STACK_BYTES_PER_LEVEL`), so a larger limit costs address space on
    /// every executor and lets a client make its shard recurse deeper. Default 128, as
    /// serde_json (whose limit of 128 lets 127 levels through); at most 1024.
    #[arg(long, default_value_t = defaults::json_depth_max())]
    pub json_depth_max: usize,

    /// Frames a connection may have queued for sending before it is closed with 4008.
    /// Larger rides out longer client stalls and costs memory for every slow client.
    #[arg(long, default_value_t = defaults::outbox_frames_max())]
    pub outbox_frames_max: usize,

    /// Bytes a connection may have queued for sending before it is closed with 4008.
    #[arg(long, default_value_t = defaults::outbox_bytes_max())]
    pub outbox_bytes_max: usize,

    /// Subscriptions one connection may hold; one more gets `too_many_subscriptions`.
    #[arg(long, default_value_t = defaults::subscriptions_per_conn_max())]
    pub subscriptions_per_conn_max: usize,

    /// Messages a second one connection may send, sustained: the refill rate of its token
    /// bucket. Each text or binary message and each ping takes a token; one that finds none is
    /// refused (`rate_limited`). Default 100: far above what a subscriber sends (subscribes,
    /// acks, pings). Higher lets a connection that publishes over the socket go faster, and
    /// lets any client make its shard parse and answer more.
    #[arg(long, default_value_t = defaults::inbound_messages_per_s())]
    pub inbound_messages_per_s: u64,

    /// Messages one connection may send at once, with a full bucket: its capacity (a
    /// connection starts full). Default 200: a client subscribing to many channels at start
    /// sends them in one go. Larger absorbs bigger bursts; a client can spend all of it in
    /// one read.
    #[arg(long, default_value_t = defaults::inbound_messages_burst())]
    pub inbound_messages_burst: u64,

    /// Refusals in a row (no message accepted between them) after which a connection is closed
    /// with 4029. Only the first of a run is answered; the rest are read, counted and dropped.
    /// Default 100. Lower closes abusers sooner and is harsher on a client that ignores one
    /// `rate_limited`; 1 closes at the first refusal, without the error.
    #[arg(long, default_value_t = defaults::inbound_refusals_max())]
    pub inbound_refusals_max: u64,

    /// Connections one broadcast shard accepts; past it new connections get HTTP 503.
    #[arg(long, default_value_t = defaults::connections_per_shard_max())]
    pub connections_per_shard_max: usize,

    /// Largest control-plane request body in bytes; larger gets 413.
    #[arg(long, default_value_t = defaults::publish_body_bytes_max())]
    pub publish_body_bytes_max: usize,

    /// Messages one `/v1/publish/batch` may carry; more gets 413. A batch waits whole in the
    /// ingest lanes, so it is at most `queue_items_max`.
    #[arg(long, default_value_t = defaults::publish_batch_max())]
    pub publish_batch_max: usize,

    /// Control-plane connections open at once (TLS handshakes included); one more is answered
    /// 503 `too_many_connections` and closed. Default 1024: far more than the backends that
    /// publish need. It may be at most half the file descriptors left after the server's own
    /// (checked against RLIMIT_NOFILE at start-up), so a flood of API connections always leaves
    /// the other half to WebSocket upgrades. Higher serves more publishers at once and lets
    /// idle ones hold more descriptors.
    #[arg(long, default_value_t = defaults::api_connections_max())]
    pub api_connections_max: usize,

    /// Largest control-plane request head (request line and headers) in bytes; larger gets 431
    /// `headers_too_large` (as do more than 100 headers). It is also the most hyper buffers per
    /// connection while reading, so at most `api_connections_max` times this is held by
    /// partial heads. Larger admits bigger headers and costs that memory per slow client.
    #[arg(long, default_value_t = defaults::api_head_bytes_max())]
    pub api_head_bytes_max: usize,

    /// Milliseconds from a request's first byte to the end of its head; past it the client
    /// gets 408 `header_timeout` and the connection is closed (slow-header clients). Longer
    /// tolerates slower links and lets a slowloris hold a connection longer.
    #[arg(long, default_value_t = defaults::api_header_timeout_ms())]
    pub api_header_timeout_ms: u64,

    /// Milliseconds from the end of a request's head to the end of its body; past it the
    /// client gets 408 `body_timeout` and the connection is closed. Default 30000: a
    /// `publish_body_bytes_max` body at 300 kbit/s. Longer tolerates slower uploads and lets a
    /// slow sender hold its share of `api_body_bytes_in_flight_max` longer.
    #[arg(long, default_value_t = defaults::api_body_timeout_ms())]
    pub api_body_timeout_ms: u64,

    /// Milliseconds a control-plane connection may wait with no request in progress (after it
    /// opens and after each response), and a response may wait for a client that does not
    /// read it; past it the connection is closed without an answer (there is no request to
    /// answer). Shorter frees idle connections' places sooner; keep it above the idle timeout
    /// of the publishers' connection pools, or they will now and then send on a connection
    /// being closed and have to retry.
    #[arg(long, default_value_t = defaults::api_idle_timeout_ms())]
    pub api_idle_timeout_ms: u64,

    /// Bytes that control-plane request bodies being read may hold together. A body that
    /// declares its length reserves it before it is read; one that does not (chunked) reserves
    /// as it arrives. One that finds no room gets 503 `overloaded` (retry later) and the
    /// connection is closed. At least `publish_body_bytes_max`. Default 64 MiB: 64 bodies of
    /// the largest size at once. Larger lets more big publishes upload at once and lets slow
    /// uploads hold more memory.
    #[arg(long, default_value_t = defaults::api_body_bytes_in_flight_max())]
    pub api_body_bytes_in_flight_max: usize,

    /// Channels the sequencer tracks at once; a publish to a new channel past it gets 503
    /// `channels_full`. A channel with no history left and no subscriber is forgotten and its
    /// place reused, so this bounds the channels live, not those ever seen. Each costs the
    /// ingest core about 110 bytes with its name, and about 80 more while it holds history
    /// (`benches/channels.rs`; the messages' own bytes are `history_*`'s). Lower bounds the
    /// ingest core's memory and refuses new channels sooner.
    #[arg(long, default_value_t = defaults::channels_max())]
    pub channels_max: usize,

    /// Channels the sweep examines every 100 ms, forgetting those with no history left and no
    /// subscriber (the expired history of a channel nobody reads is trimmed there); a new
    /// channel that finds `channels_max` reached examines as many once more before it is
    /// refused. Default 1000: a million channels are gone through in 100 s. Higher frees the
    /// places of idle channels sooner and makes each tick (and a refusal) take longer on the
    /// ingest core (well under a microsecond a channel); lower spreads the work thinner.
    #[arg(long, default_value_t = defaults::channels_sweep_max())]
    pub channels_sweep_max: usize,

    /// Channel patterns clients may publish to over the socket (repeat the flag). Empty: none.
    #[arg(long = "client-publish")]
    pub client_publish: Vec<String>,

    /// Longest channel name or pattern a client or a publish may use, in bytes (at most 255,
    /// the contract's limit). Lower bounds what history and subscriptions cost per channel.
    #[arg(long, default_value_t = defaults::channel_bytes_max())]
    pub channel_bytes_max: usize,

    /// Connections over all shards; past it new connections get HTTP 503. 0 (the default):
    /// only `connections_per_shard_max` bounds them. Set, every upgrade asks the ingest core
    /// for a place first (one cross-core round trip, some microseconds, per connect).
    #[arg(long, default_value_t = defaults::connections_max())]
    pub connections_max: usize,

    /// Connections from one client address (IPv4, or an IPv6 /64); past it new ones get HTTP
    /// 429. 0 (the default): no limit, since clients behind one proxy or NAT share an address
    /// and a benchmark opens thousands from one. Set it on a server facing browsers directly.
    #[arg(long, default_value_t = defaults::connections_per_ip_max())]
    pub connections_per_ip_max: usize,

    /// Connections one tenant (a token's `tenant` claim) may hold; past it its new ones get
    /// HTTP 429. 0 (the default): no limit.
    #[arg(long, default_value_t = defaults::tenant_connections_max())]
    pub tenant_connections_max: usize,

    /// Connections one user (a token's `sub`, or `?user=` without auth) may hold on this node;
    /// past it the next upgrade gets HTTP 429 `user_connection_limit`. 0 (the default): no
    /// limit. In cluster mode each node counts its own.
    #[arg(long, default_value_t = defaults::connections_per_user_max())]
    pub connections_per_user_max: usize,

    /// Largest token claim `info` (a JSON object, shown as a presence member's `info`), in
    /// bytes; a token with a larger one is refused at the upgrade with 401.
    #[arg(long, default_value_t = defaults::presence_info_bytes_max())]
    pub presence_info_bytes_max: usize,

    /// Members one presence answer lists at most (`GET /v1/presence`, the `presence` command)
    /// and joins plus leaves one `presence_diff` carries at most; past it the answer has
    /// `"truncated":true` (the counts stay exact). Each member is about 60 bytes plus its
    /// `info`: a larger bound makes answers and diffs of crowded channels bigger frames.
    #[arg(long, default_value_t = defaults::presence_members_max())]
    pub presence_members_max: usize,

    /// How often joins and leaves are gathered into one `presence_diff` per channel (in
    /// `join_leave` namespaces), in milliseconds. Shorter shows joins sooner and costs every
    /// subscriber more frames in a reconnect storm; longer batches more per frame.
    #[arg(long, default_value_t = defaults::presence_diff_interval_ms())]
    pub presence_diff_interval_ms: u64,

    /// Publishes per second one tenant may make, over the control plane and its clients
    /// together (a token bucket holding one second's worth); past it a publish gets 429 or
    /// `rate_limited`. 0 (the default): no limit.
    #[arg(long, default_value_t = defaults::tenant_publishes_per_s())]
    pub tenant_publishes_per_s: u32,

    /// `Origin`s a browser may connect from (repeat the flag), exact (`https://app.example.com`)
    /// or with a leading wildcard label (`https://*.example.com`). Empty (the default): any.
    /// An upgrade from any other origin gets HTTP 403; a client that sends no `Origin` (not a
    /// browser) is not checked, since only browsers are made to send it.
    #[arg(long = "allowed-origin")]
    pub allowed_origins: Vec<String>,

    /// Items each cross-core queue holds (one queue per direction per shard). When a shard's
    /// queue is full the ingest core waits for it: a bigger queue absorbs longer bursts.
    #[arg(long, default_value_t = defaults::queue_items_max())]
    pub queue_items_max: usize,

    /// Publishes the server may hold for fan-out at once: accepted and waiting in the ingest
    /// lanes, or sent to shards that have not reported their fan-out yet. Past it a `high` or
    /// `normal` publish is refused (HTTP 503 `overloaded` with `Retry-After`, or a client's
    /// `rate_limited` error) instead of joining a backlog that delays every later one;
    /// `critical` ones are taken up to `queue_items_max`. A backlog of N takes N divided by
    /// the events a second the shards fan out to drain: lower bounds the latency a saturating
    /// publisher can build, higher absorbs longer bursts.
    #[arg(long, default_value_t = defaults::fanout_queued_max())]
    pub fanout_queued_max: usize,

    /// Items a core takes from one queue before it yields to its sockets; smaller is fairer,
    /// larger amortises the wake-up better. It also bounds a coalesced batch: a shard that
    /// wakes with more than one delivery queued writes each connection once per batch.
    #[arg(long, default_value_t = defaults::queue_batch_max())]
    pub queue_batch_max: usize,

    /// Milliseconds a closing connection has to write the rest of a frame it started, then its
    /// close frame, and to get the client's close reply (or, when the client closed first, to
    /// write what was queued and the answer). Past it the socket is dropped; a client
    /// whose socket had not taken the close frame by then sees the stream end without one (its
    /// last frame possibly cut short, never with close bytes inside). Longer lets slower readers
    /// see the close code; shorter frees the sockets of stalled clients sooner.
    #[arg(long, default_value_t = defaults::close_timeout_ms())]
    pub close_timeout_ms: u64,

    /// Milliseconds from SIGINT/SIGTERM to exit; clients get 1001 first.
    #[arg(long, default_value_t = defaults::shutdown_timeout_ms())]
    pub shutdown_timeout_ms: u64,

    /// io_uring buffer memory per executor in bytes (glommio `io_memory`). corecast does its socket
    /// I/O without registered buffers, so a small value is enough; it counts against memlock.
    #[arg(long, default_value_t = defaults::io_memory_bytes())]
    pub io_memory_bytes: usize,

    /// Log output: `text` or `json`. The filter comes from `RUST_LOG` (default `info`).
    #[arg(long, default_value_t = defaults::log_format())]
    pub log_format: LogFormat,

    /// Messages of history kept per channel, for recovery and `/v1/history` (0: none). A
    /// namespace may set its own. More lets clients recover from longer outages; each message
    /// costs its frame's bytes on the ingest core.
    #[arg(long, default_value_t = defaults::history_messages_max())]
    pub history_messages_max: usize,

    /// Bytes of history (encoded frames) kept per channel; the oldest go first.
    #[arg(long, default_value_t = defaults::history_bytes_max())]
    pub history_bytes_max: usize,

    /// Seconds a message stays in history; older ones are trimmed before any read.
    #[arg(long, default_value_t = defaults::history_age_s())]
    pub history_age_s: u64,

    /// Bytes of history over all channels. Past it the oldest message of any channel goes
    /// first, so the ingest core's memory stays bounded however many channels there are.
    #[arg(long, default_value_t = defaults::history_total_bytes_max())]
    pub history_total_bytes_max: usize,

    /// Messages one recovery (`subscribe` with `since`) or one `/v1/history` page may return.
    /// A client that missed more is told `recovered:false` ("too_many") and should reload.
    #[arg(long, default_value_t = defaults::recovery_messages_max())]
    pub recovery_messages_max: usize,

    /// Microseconds a `high` or `normal` message may wait on a shard so that a connection's
    /// frames coalesce into one write; `critical` never waits. 0 writes every frame at once:
    /// lowest latency, one `send` per frame and subscriber (see the README for the measurement).
    #[arg(long, default_value_t = defaults::batch_window_us())]
    pub batch_window_us: u64,

    /// What happens to a client whose outbox overflows, for channels no namespace names:
    /// `disconnect` (close 4008), `drop_oldest` or `conflate` (see `namespaces`).
    #[arg(long, default_value_t = defaults::slow_consumer())]
    pub slow_consumer: SlowConsumer,

    /// The `data` field whose value identifies what a message updates, for `conflate`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflate_key: Option<String>,

    /// Milliseconds between two `$sys.stats` messages (the server's figures, which
    /// `/dashboard` draws); 0 publishes none. Each costs one publish and one stats query.
    #[arg(long, default_value_t = defaults::sys_stats_interval_ms())]
    pub sys_stats_interval_ms: u64,

    /// Cluster mode: a Redis URL (`redis://host:6379/0`, or `rediss://` for TLS). Every
    /// node's publishes are numbered by Redis and every node delivers every message; without
    /// it the node stands alone and needs no external service.
    #[arg(long = "redis")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,

    /// Cluster mode on a Redis Cluster: `redis_url` is one of its nodes, from which the bridge
    /// finds the master of the one slot every corecast key hashes to (`{corecast}`), and finds
    /// it again after a failover or a resharding. One slot is one master: a Redis Cluster
    /// gives corecast failover, not more throughput than one Redis.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub redis_cluster: bool,

    /// Cluster mode through Redis Sentinel: the sentinels' URLs (repeat the flag), asked in
    /// turn for the address of `redis_sentinel_master`, and again after every lost
    /// connection, so a failover is followed. `redis_url` is then the template of the master's
    /// connection (its scheme, user, password and database; its host and port are replaced by
    /// what the sentinels say).
    #[arg(long = "redis-sentinel")]
    pub redis_sentinels: Vec<String>,

    /// The master name the sentinels monitor (`sentinel monitor <name> ...`), with
    /// `redis_sentinels`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_sentinel_master: Option<String>,

    /// Cluster mode over `rediss://`: a PEM file of the CA certificates to trust for Redis's
    /// certificate instead of the system's (a private CA, a managed Redis's own). Unset: the
    /// system's trust store.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Cluster mode over `rediss://`: a PEM client certificate chain, with `redis_key_file`
    /// its key, for a Redis that asks clients for one (`tls-auth-clients yes`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cert_file: Option<std::path::PathBuf>,

    /// The PEM private key of `redis_cert_file`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_key_file: Option<std::path::PathBuf>,

    /// Cluster mode: messages the cluster's log in Redis keeps (approximately: Redis trims
    /// whole stream nodes). Nodes read it to catch up after a break and to fill their history
    /// when they join; more covers longer breaks and costs Redis memory.
    #[arg(long, default_value_t = defaults::cluster_log_max())]
    pub cluster_log_max: usize,

    /// Cluster mode: milliseconds Redis has to answer one round trip (a connect, a pipeline of
    /// publishes, a log read, the presence refresh). Past it Redis counts as stalled: the
    /// publishes already sent are answered `outcome_unknown` (Redis may still run them when it
    /// resumes), and later ones `cluster_unavailable` at once until Redis answers again. A
    /// publish is answered within this of reaching the bridge. Lower answers publishers sooner
    /// in a stall, but takes a merely slow Redis (a fork for a save, a long command) for a
    /// stalled one; higher rides out such pauses and keeps publishers waiting as long.
    #[arg(long, default_value_t = defaults::redis_timeout_ms())]
    pub redis_timeout_ms: u64,

    /// Who may connect: `none` (anyone, for local use: start-up warns loudly) or `jwt` (a
    /// token at the upgrade, `?token=` or `Authorization: Bearer`; its claims `channels` and
    /// `publish` bound what the connection may do, `exp` when it is closed with 4001).
    #[arg(long, default_value_t = defaults::auth())]
    pub auth: AuthMode,

    /// `auth = "jwt"`: the HS256 shared secret.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,

    /// `auth = "jwt"`: a PEM public key, RSA (RS256) or EC P-256 (ES256).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// `auth = "jwt"`: a JWKS file of RS256/ES256 keys, chosen by the token's `kid`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<std::path::PathBuf>,

    /// A path on the WebSocket port (e.g. `/echo`) that sends every text or binary message back
    /// as the same kind of message: no `connected` greeting, no commands, no subscriptions, but
    /// the same connection code and limits as `/ws`. For conformance suites (Autobahn, in CI);
    /// unset (the default) it does not exist and answers 404 like any unknown path.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo_path: Option<String>,

    /// Agree to permessage-deflate (RFC 7692) when a client offers it. Off by default: it costs
    /// the ingest core one compression per publish (about 3 µs, against 0.13 µs for the plain
    /// encode of a 200-byte message; measured in the README), paid whether or not any client
    /// negotiated it, while the small JSON messages corecast typically carries shrink little
    /// without a shared context. Turn it on when messages are large or repetitive and client
    /// bandwidth matters more than ingest CPU.
    #[arg(long, default_value_t = defaults::permessage_deflate(), action = clap::ArgAction::Set)]
    pub permessage_deflate: bool,

    /// TLS on the WebSocket port (`wss://`): a PEM certificate chain, leaf first, and with
    /// `tls_key_file` its PEM private key. Unset (the default): plain `ws://`. A TLS
    /// connection encrypts every frame on its own, so it costs CPU per delivery that a plain
    /// one does not (see the README's TLS section); terminate TLS in front of corecast
    /// instead when that matters more than one hop less.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// The PEM private key of `tls_cert_file` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<std::path::PathBuf>,

    /// HTTPS on the control plane: a PEM certificate chain, with `api_tls_key_file`. Unset
    /// (the default): plain HTTP, for loopback or a private network.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_tls_cert_file: Option<std::path::PathBuf>,

    /// The PEM private key of `api_tls_cert_file`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_tls_key_file: Option<std::path::PathBuf>,

    /// Per channel namespace: history limits and slow-consumer policy, in the TOML file only
    /// (`[[namespaces]]` tables). The first namespace whose pattern matches a channel applies;
    /// what it leaves out comes from the top-level settings above.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Namespace>,

    /// Bearer keys of the control plane, in the TOML file only (`[[api_keys]]` tables: `key`,
    /// and `tenant` to scope it). Empty (the default): the control plane serves every request,
    /// so keep `api` on loopback or a private network. Set: every route but `/healthz`, the
    /// dashboard page and the client files needs `Authorization: Bearer <key>` (401 without);
    /// a tenant's key may only publish into its tenant and read its history (403 otherwise).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKey>,
}

/// A control-plane key: unscoped (the operator's) or one tenant's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Who may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone, for anything (subject to `client_publish`): local use only.
    None,
    /// A valid JWT at the upgrade; its claims bound the connection.
    Jwt,
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMode::None => "none",
            AuthMode::Jwt => "jwt",
        })
    }
}

/// What to do with a client that cannot keep up with a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// Close the connection with 4008; the client reconnects and recovers from history.
    Disconnect,
    /// Drop the channel's queued messages and send a `gap` notice naming their offsets.
    DropOldest,
    /// Keep only the newest queued message per value of the `conflate_key` field of `data`.
    Conflate,
}

impl std::fmt::Display for SlowConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlowConsumer::Disconnect => "disconnect",
            SlowConsumer::DropOldest => "drop_oldest",
            SlowConsumer::Conflate => "conflate",
        })
    }
}

/// Settings for the channels matching `pattern`, e.g. `prices.>`; unset fields are inherited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_messages_max: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_bytes_max: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_age_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_consumer: Option<SlowConsumer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflate_key: Option<String>,
    /// Track who is subscribed to each channel of the namespace (`GET /v1/presence`, the
    /// `presence` command). Off by default: ordinary channels pay nothing for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub presence: bool,
    /// Push a `presence_diff` of joins and leaves to the channel's subscribers every
    /// `presence_diff_interval_ms`; needs `presence`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join_leave: bool,
}

/// What a namespace tracks of who is subscribed (`presence`, `join_leave`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceMode {
    /// Nothing: the default.
    Off,
    /// Its members, for `GET /v1/presence` and the `presence` command.
    Members,
    /// Its members, and a `presence_diff` of joins and leaves every interval.
    JoinLeave,
}

/// The settings one channel lives under: a namespace's, completed from the top level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPolicy {
    pub history_messages_max: usize,
    pub history_bytes_max: usize,
    pub history_age_s: u64,
    pub slow_consumer: SlowConsumer,
    pub conflate_key: Option<Box<str>>,
}

/// A list of CPU ids, written `0,2,4-7` on the command line and `[0, 2, 4]` in TOML.
pub type CpuList = Vec<usize>;

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The default of every field, one function each, shared by serde and clap.
pub mod defaults {
    use std::net::SocketAddr;

    use super::{AuthMode, LogFormat, SlowConsumer};

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8080))
    }
    pub fn api() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8081))
    }
    pub fn heartbeat_s() -> u64 {
        25
    }
    pub fn idle_timeout_s() -> u64 {
        60
    }
    pub fn handshake_timeout_ms() -> u64 {
        5_000
    }
    pub fn handshake_bytes_max() -> usize {
        8 * 1024
    }
    pub fn frame_bytes_max() -> usize {
        64 * 1024
    }
    pub fn message_bytes_max() -> usize {
        64 * 1024
    }
    pub fn json_depth_max() -> usize {
        128
    }
    pub fn outbox_frames_max() -> usize {
        1024
    }
    pub fn outbox_bytes_max() -> usize {
        1024 * 1024
    }
    pub fn subscriptions_per_conn_max() -> usize {
        512
    }
    pub fn inbound_messages_per_s() -> u64 {
        100
    }
    pub fn inbound_messages_burst() -> u64 {
        200
    }
    pub fn inbound_refusals_max() -> u64 {
        100
    }
    pub fn connections_per_shard_max() -> usize {
        200_000
    }
    pub fn publish_body_bytes_max() -> usize {
        1024 * 1024
    }
    pub fn publish_batch_max() -> usize {
        1_000
    }
    pub fn api_connections_max() -> usize {
        1_024
    }
    pub fn api_head_bytes_max() -> usize {
        16 * 1024
    }
    pub fn api_header_timeout_ms() -> u64 {
        10_000
    }
    pub fn api_body_timeout_ms() -> u64 {
        30_000
    }
    pub fn api_idle_timeout_ms() -> u64 {
        30_000
    }
    pub fn api_body_bytes_in_flight_max() -> usize {
        64 * 1024 * 1024
    }
    pub fn channels_max() -> usize {
        1_000_000
    }
    pub fn channels_sweep_max() -> usize {
        1_000
    }
    pub fn channel_bytes_max() -> usize {
        crate::channel::CHANNEL_BYTES_MAX
    }
    pub fn connections_max() -> usize {
        0
    }
    pub fn connections_per_ip_max() -> usize {
        0
    }
    pub fn tenant_connections_max() -> usize {
        0
    }
    pub fn connections_per_user_max() -> usize {
        0
    }
    pub fn presence_info_bytes_max() -> usize {
        1_024
    }
    pub fn presence_members_max() -> usize {
        1_000
    }
    pub fn presence_diff_interval_ms() -> u64 {
        1_000
    }
    pub fn tenant_publishes_per_s() -> u32 {
        0
    }
    pub fn queue_items_max() -> usize {
        65_536
    }
    pub fn fanout_queued_max() -> usize {
        4_096
    }
    pub fn queue_batch_max() -> usize {
        256
    }
    pub fn close_timeout_ms() -> u64 {
        1_000
    }
    pub fn shutdown_timeout_ms() -> u64 {
        5_000
    }
    pub fn io_memory_bytes() -> usize {
        1024 * 1024
    }
    pub fn log_format() -> LogFormat {
        LogFormat::Text
    }
    pub fn history_messages_max() -> usize {
        1_000
    }
    pub fn history_bytes_max() -> usize {
        1024 * 1024
    }
    pub fn history_age_s() -> u64 {
        300
    }
    pub fn history_total_bytes_max() -> usize {
        256 * 1024 * 1024
    }
    pub fn recovery_messages_max() -> usize {
        1_000
    }
    pub fn batch_window_us() -> u64 {
        0
    }
    pub fn slow_consumer() -> SlowConsumer {
        SlowConsumer::Disconnect
    }
    pub fn sys_stats_interval_ms() -> u64 {
        1_000
    }
    pub fn cluster_log_max() -> usize {
        100_000
    }
    pub fn redis_timeout_ms() -> u64 {
        1_000
    }
    pub fn auth() -> AuthMode {
        AuthMode::None
    }
    pub fn permessage_deflate() -> bool {
        false
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: defaults::listen(),
            api: defaults::api(),
            shards: None,
            cores: None,
            ingest_core: None,
            heartbeat_s: defaults::heartbeat_s(),
            idle_timeout_s: defaults::idle_timeout_s(),
            handshake_timeout_ms: defaults::handshake_timeout_ms(),
            handshake_bytes_max: defaults::handshake_bytes_max(),
            frame_bytes_max: defaults::frame_bytes_max(),
            message_bytes_max: defaults::message_bytes_max(),
            json_depth_max: defaults::json_depth_max(),
            outbox_frames_max: defaults::outbox_frames_max(),
            outbox_bytes_max: defaults::outbox_bytes_max(),
            subscriptions_per_conn_max: defaults::subscriptions_per_conn_max(),
            inbound_messages_per_s: defaults::inbound_messages_per_s(),
            inbound_messages_burst: defaults::inbound_messages_burst(),
            inbound_refusals_max: defaults::inbound_refusals_max(),
            connections_per_shard_max: defaults::connections_per_shard_max(),
            publish_body_bytes_max: defaults::publish_body_bytes_max(),
            publish_batch_max: defaults::publish_batch_max(),
            api_connections_max: defaults::api_connections_max(),
            api_head_bytes_max: defaults::api_head_bytes_max(),
            api_header_timeout_ms: defaults::api_header_timeout_ms(),
            api_body_timeout_ms: defaults::api_body_timeout_ms(),
            api_idle_timeout_ms: defaults::api_idle_timeout_ms(),
            api_body_bytes_in_flight_max: defaults::api_body_bytes_in_flight_max(),
            channels_max: defaults::channels_max(),
            channels_sweep_max: defaults::channels_sweep_max(),
            client_publish: Vec::new(),
            channel_bytes_max: defaults::channel_bytes_max(),
            connections_max: defaults::connections_max(),
            connections_per_ip_max: defaults::connections_per_ip_max(),
            tenant_connections_max: defaults::tenant_connections_max(),
            connections_per_user_max: defaults::connections_per_user_max(),
            presence_info_bytes_max: defaults::presence_info_bytes_max(),
            presence_members_max: defaults::presence_members_max(),
            presence_diff_interval_ms: defaults::presence_diff_interval_ms(),
            tenant_publishes_per_s: defaults::tenant_publishes_per_s(),
            allowed_origins: Vec::new(),
            queue_items_max: defaults::queue_items_max(),
            fanout_queued_max: defaults::fanout_queued_max(),
            queue_batch_max: defaults::queue_batch_max(),
            close_timeout_ms: defaults::close_timeout_ms(),
            shutdown_timeout_ms: defaults::shutdown_timeout_ms(),
            io_memory_bytes: defaults::io_memory_bytes(),
            log_format: defaults::log_format(),
            history_messages_max: defaults::history_messages_max(),
            history_bytes_max: defaults::history_bytes_max(),
            history_age_s: defaults::history_age_s(),
            history_total_bytes_max: defaults::history_total_bytes_max(),
            recovery_messages_max: defaults::recovery_messages_max(),
            batch_window_us: defaults::batch_window_us(),
            slow_consumer: defaults::slow_consumer(),
            conflate_key: None,
            sys_stats_interval_ms: defaults::sys_stats_interval_ms(),
            redis_url: None,
            redis_cluster: false,
            redis_sentinels: Vec::new(),
            redis_sentinel_master: None,
            redis_ca_file: None,
            redis_cert_file: None,
            redis_key_file: None,
            cluster_log_max: defaults::cluster_log_max(),
            redis_timeout_ms: defaults::redis_timeout_ms(),
            auth: defaults::auth(),
            jwt_secret: None,
            jwt_public_key_file: None,
            jwks_file: None,
            echo_path: None,
            permessage_deflate: defaults::permessage_deflate(),
            tls_cert_file: None,
            tls_key_file: None,
            api_tls_cert_file: None,
            api_tls_key_file: None,
            namespaces: Vec::new(),
            api_keys: Vec::new(),
        }
    }
}

/// A configuration the server refuses to start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// `echo_path` must be a plain absolute path that no other endpoint of the WebSocket port uses.
fn check_echo_path(path: &str) -> Result<(), ConfigError> {
    let plain = path.starts_with('/')
        && path.len() <= 255
        && path
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && byte != b'?' && byte != b'#');
    if !plain {
        return Err(ConfigError(format!(
            "echo_path = {path:?} is invalid: allowed a path starting with '/', \
             at most 255 printable ASCII bytes, without '?' or '#'"
        )));
    }
    if path == "/" || path == "/ws" || crate::web::asset(path).is_some() {
        return Err(ConfigError(format!(
            "echo_path = {path:?} is taken: /, /ws and the browser client's files keep their meaning"
        )));
    }
    Ok(())
}

fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError(format!(
            "{field} = {value} is out of range: allowed {min} to {max}"
        )));
    }
    Ok(())
}

impl Config {
    /// Whether a connection of `tenant` must ask the ingest core for a place under the
    /// connection limits over every shard (`ingest::admission`): only when one applies to it.
    pub fn admission_needed(&self, tenant: Option<&str>, user: bool) -> bool {
        self.connections_max > 0
            || self.connections_per_ip_max > 0
            || tenant.is_some()
            || (user && self.connections_per_user_max > 0)
    }

    /// Checks every field and every relationship between fields, naming the field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("heartbeat_s", self.heartbeat_s, 1, 3_600)?;
        check_range("idle_timeout_s", self.idle_timeout_s, 2, 86_400)?;
        if self.idle_timeout_s <= self.heartbeat_s {
            return Err(ConfigError(format!(
                "idle_timeout_s = {} must be greater than heartbeat_s = {}, \
                 or healthy clients are closed between two pings",
                self.idle_timeout_s, self.heartbeat_s
            )));
        }
        check_range(
            "handshake_timeout_ms",
            self.handshake_timeout_ms,
            10,
            120_000,
        )?;
        check_range(
            "handshake_bytes_max",
            self.handshake_bytes_max,
            256,
            1 << 20,
        )?;
        check_range("frame_bytes_max", self.frame_bytes_max, 125, 64 << 20)?;
        check_range(
            "message_bytes_max",
            self.message_bytes_max,
            self.frame_bytes_max,
            256 << 20,
        )?;
        if !(1..=json::DEPTH_MAX_LIMIT).contains(&self.json_depth_max) {
            return Err(ConfigError(format!(
                "json_depth_max = {} is out of range: allowed 1 to {} (each level reserves {} \
                 bytes of stack on every thread that parses JSON)",
                self.json_depth_max,
                json::DEPTH_MAX_LIMIT,
                json::STACK_BYTES_PER_LEVEL
            )));
        }
        check_range("outbox_frames_max", self.outbox_frames_max, 2, 1 << 20)?;
        check_range("outbox_bytes_max", self.outbox_bytes_max, 1024, 1 << 30)?;
        check_range(
            "subscriptions_per_conn_max",
            self.subscriptions_per_conn_max,
            1,
            1 << 20,
        )?;
        check_range(
            "inbound_messages_per_s",
            self.inbound_messages_per_s,
            1,
            10_000_000,
        )?;
        check_range(
            "inbound_messages_burst",
            self.inbound_messages_burst,
            1,
            10_000_000,
        )?;
        check_range(
            "inbound_refusals_max",
            self.inbound_refusals_max,
            1,
            1_000_000,
        )?;
        check_range(
            "connections_per_shard_max",
            self.connections_per_shard_max,
            1,
            10_000_000,
        )?;
        check_range(
            "publish_body_bytes_max",
            self.publish_body_bytes_max,
            64,
            256 << 20,
        )?;
        check_range("publish_batch_max", self.publish_batch_max, 1, 1_000_000)?;
        check_range(
            "api_connections_max",
            self.api_connections_max,
            1,
            1_000_000,
        )?;
        check_range(
            "api_head_bytes_max",
            self.api_head_bytes_max,
            API_HEAD_BYTES_MIN,
            1 << 20,
        )?;
        check_range(
            "api_header_timeout_ms",
            self.api_header_timeout_ms,
            10,
            600_000,
        )?;
        check_range("api_body_timeout_ms", self.api_body_timeout_ms, 10, 600_000)?;
        check_range(
            "api_idle_timeout_ms",
            self.api_idle_timeout_ms,
            10,
            3_600_000,
        )?;
        check_range(
            "api_body_bytes_in_flight_max",
            self.api_body_bytes_in_flight_max,
            self.publish_body_bytes_max,
            1 << 36,
        )?;
        check_range("channels_max", self.channels_max, 1, 100_000_000)?;
        check_range("channels_sweep_max", self.channels_sweep_max, 1, 1_000_000)?;
        check_range("queue_items_max", self.queue_items_max, 16, 1 << 24)?;
        if self.publish_batch_max > self.queue_items_max {
            return Err(ConfigError(format!(
                "publish_batch_max = {} must be at most queue_items_max = {}: a batch waits \
                 whole in the ingest lanes, so a larger one could never be taken",
                self.publish_batch_max, self.queue_items_max
            )));
        }
        check_range(
            "queue_batch_max",
            self.queue_batch_max,
            1,
            self.queue_items_max,
        )?;
        check_range("fanout_queued_max", self.fanout_queued_max, 1, 1 << 24)?;
        if self.publish_batch_max > self.fanout_queued_max {
            return Err(ConfigError(format!(
                "publish_batch_max = {} must be at most fanout_queued_max = {}: a batch is held \
                 for fan-out whole, so a larger one would always be refused overloaded",
                self.publish_batch_max, self.fanout_queued_max
            )));
        }
        check_range("close_timeout_ms", self.close_timeout_ms, 1, 60_000)?;
        check_range("shutdown_timeout_ms", self.shutdown_timeout_ms, 1, 600_000)?;
        check_range("io_memory_bytes", self.io_memory_bytes, 64 * 1024, 1 << 30)?;
        if let Some(shards) = self.shards {
            check_range("shards", shards, 1, 1_024)?;
        }
        if let Some(cores) = &self.cores {
            if cores.is_empty() {
                return Err(ConfigError("cores is empty: name at least one CPU".into()));
            }
        }
        check_range(
            "history_messages_max",
            self.history_messages_max,
            0,
            10_000_000,
        )?;
        check_range("history_bytes_max", self.history_bytes_max, 0, 1 << 34)?;
        check_range("history_age_s", self.history_age_s, 1, 30 * 86_400)?;
        check_range(
            "history_total_bytes_max",
            self.history_total_bytes_max,
            0,
            1 << 40,
        )?;
        check_range(
            "recovery_messages_max",
            self.recovery_messages_max,
            1,
            1_000_000,
        )?;
        check_range("batch_window_us", self.batch_window_us, 0, 1_000_000)?;
        check_policy("", self.slow_consumer, self.conflate_key.as_deref())?;
        if self.sys_stats_interval_ms != 0 {
            check_range(
                "sys_stats_interval_ms",
                self.sys_stats_interval_ms,
                100,
                3_600_000,
            )?;
        }
        if let Some(path) = &self.echo_path {
            check_echo_path(path)?;
        }
        check_range("namespaces", self.namespaces.len(), 0, 1_000)?;
        check_range("cluster_log_max", self.cluster_log_max, 1_000, 100_000_000)?;
        check_range("redis_timeout_ms", self.redis_timeout_ms, 10, 60_000)?;
        if let Some(url) = &self.redis_url {
            if !["redis://", "rediss://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                return Err(ConfigError(format!(
                    "redis_url = {url:?} is not a Redis URL: use redis://host:port[/db] \
                     (rediss:// for TLS)"
                )));
            }
        }
        let sentinel = !self.redis_sentinels.is_empty();
        if sentinel != self.redis_sentinel_master.is_some() {
            return Err(ConfigError(
                "redis_sentinels and redis_sentinel_master go together: the sentinels to ask \
                 and the master name they monitor"
                    .into(),
            ));
        }
        if (sentinel || self.redis_cluster) && self.redis_url.is_none() {
            return Err(ConfigError(
                "redis_sentinels and redis_cluster need a redis_url: the Redis Cluster node to \
                 start from, or the template of the master's connection"
                    .into(),
            ));
        }
        if sentinel && self.redis_cluster {
            return Err(ConfigError(
                "redis_cluster and redis_sentinels exclude each other: a Redis Cluster fails \
                 over on its own"
                    .into(),
            ));
        }
        for url in &self.redis_sentinels {
            if !["redis://", "rediss://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                return Err(ConfigError(format!(
                    "redis_sentinels: {url:?} is not a Redis URL: use redis://host:26379"
                )));
            }
        }
        let tls_to_redis = self
            .redis_url
            .as_deref()
            .is_some_and(|url| url.starts_with("rediss://"));
        for (name, file) in [
            ("redis_ca_file", &self.redis_ca_file),
            ("redis_cert_file", &self.redis_cert_file),
        ] {
            if file.is_some() && !tls_to_redis {
                return Err(ConfigError(format!(
                    "{name} is for TLS to Redis: give a rediss:// redis_url with it"
                )));
            }
        }
        for (at, namespace) in self.namespaces.iter().enumerate() {
            let field = format!("namespaces[{at}]");
            channel::validate_pattern(&namespace.pattern).map_err(|err| {
                ConfigError(format!(
                    "{field}.pattern {:?} is invalid: {err}",
                    namespace.pattern
                ))
            })?;
            if let Some(max) = namespace.history_messages_max {
                check_range(&format!("{field}.history_messages_max"), max, 0, 10_000_000)?;
            }
            if let Some(max) = namespace.history_bytes_max {
                check_range(&format!("{field}.history_bytes_max"), max, 0, 1 << 34)?;
            }
            if let Some(age) = namespace.history_age_s {
                check_range(&format!("{field}.history_age_s"), age, 1, 30 * 86_400)?;
            }
            if namespace.join_leave && !namespace.presence {
                return Err(ConfigError(format!(
                    "{field}.join_leave = true needs {field}.presence = true: diffs are of \
                     the members presence tracks"
                )));
            }
            let policy = self.policy(at + 1);
            check_policy(
                &format!("{field}."),
                policy.slow_consumer,
                policy.conflate_key.as_deref(),
            )?;
        }
        check_range(
            "channel_bytes_max",
            self.channel_bytes_max,
            1,
            channel::CHANNEL_BYTES_MAX,
        )?;
        check_range("connections_max", self.connections_max, 0, 100_000_000)?;
        check_range(
            "connections_per_ip_max",
            self.connections_per_ip_max,
            0,
            100_000_000,
        )?;
        check_range(
            "tenant_connections_max",
            self.tenant_connections_max,
            0,
            100_000_000,
        )?;
        check_range(
            "connections_per_user_max",
            self.connections_per_user_max,
            0,
            1_000_000,
        )?;
        check_range(
            "presence_info_bytes_max",
            self.presence_info_bytes_max,
            2,
            65_536,
        )?;
        check_range(
            "presence_members_max",
            self.presence_members_max,
            1,
            100_000,
        )?;
        check_range(
            "presence_diff_interval_ms",
            self.presence_diff_interval_ms,
            10,
            60_000,
        )?;
        check_range(
            "tenant_publishes_per_s",
            self.tenant_publishes_per_s,
            0,
            10_000_000,
        )?;
        for origin in &self.allowed_origins {
            check_origin(origin)?;
        }
        for (at, key) in self.api_keys.iter().enumerate() {
            if key.key.len() < API_KEY_BYTES_MIN || !key.key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError(format!(
                    "api_keys[{at}].key is too weak or unprintable: use at least \
                     {API_KEY_BYTES_MIN} printable ASCII bytes, e.g. `openssl rand -hex 32`"
                )));
            }
            if let Some(tenant) = &key.tenant {
                channel::validate_tenant(tenant)
                    .map_err(|why| ConfigError(format!("api_keys[{at}].tenant: {why}")))?;
            }
            if self.api_keys[..at].iter().any(|other| other.key == key.key) {
                return Err(ConfigError(format!(
                    "api_keys[{at}].key repeats an earlier key: each key names one scope"
                )));
            }
        }
        for (cert, key, cert_name, key_name) in [
            (
                &self.tls_cert_file,
                &self.tls_key_file,
                "tls_cert_file",
                "tls_key_file",
            ),
            (
                &self.api_tls_cert_file,
                &self.api_tls_key_file,
                "api_tls_cert_file",
                "api_tls_key_file",
            ),
            (
                &self.redis_cert_file,
                &self.redis_key_file,
                "redis_cert_file",
                "redis_key_file",
            ),
        ] {
            if cert.is_some() != key.is_some() {
                return Err(ConfigError(format!(
                    "{cert_name} and {key_name} go together: give both (TLS) or neither"
                )));
            }
        }
        for pattern in &self.client_publish {
            channel::validate_pattern(pattern).map_err(|err| {
                ConfigError(format!(
                    "client_publish pattern {pattern:?} is invalid: {err}"
                ))
            })?;
        }
        Ok(())
    }

    /// Policies of every namespace, by index: 0 is the top level, `i + 1` is `namespaces[i]`.
    pub fn policy(&self, index: usize) -> ChannelPolicy {
        let top = ChannelPolicy {
            history_messages_max: self.history_messages_max,
            history_bytes_max: self.history_bytes_max,
            history_age_s: self.history_age_s,
            slow_consumer: self.slow_consumer,
            conflate_key: self.conflate_key.as_deref().map(Box::from),
        };
        let Some(namespace) = index.checked_sub(1).map(|at| &self.namespaces[at]) else {
            return top;
        };
        ChannelPolicy {
            history_messages_max: namespace
                .history_messages_max
                .unwrap_or(top.history_messages_max),
            history_bytes_max: namespace.history_bytes_max.unwrap_or(top.history_bytes_max),
            history_age_s: namespace.history_age_s.unwrap_or(top.history_age_s),
            slow_consumer: namespace.slow_consumer.unwrap_or(top.slow_consumer),
            conflate_key: namespace
                .conflate_key
                .as_deref()
                .map(Box::from)
                .or(top.conflate_key),
        }
    }

    /// The index (for [`Config::policy`]) of the policy `channel` lives under: the first
    /// namespace whose pattern matches it, else the top level.
    pub fn policy_index(&self, channel: &str) -> usize {
        self.namespaces
            .iter()
            .position(|namespace| channel::pattern_matches(&namespace.pattern, channel))
            .map_or(0, |at| at + 1)
    }

    /// What presence `channel` (a full name: the namespaces are in the tenants' own names)
    /// lives under: its namespace's `presence` and `join_leave`. Read when a subscription
    /// starts or ends, never per delivery.
    pub fn presence_of(&self, channel: &str) -> PresenceMode {
        let index = self.policy_index(channel::visible(channel));
        match index.checked_sub(1).map(|at| &self.namespaces[at]) {
            Some(namespace) if namespace.join_leave => PresenceMode::JoinLeave,
            Some(namespace) if namespace.presence => PresenceMode::Members,
            _ => PresenceMode::Off,
        }
    }

    /// Every key of the TOML file, in the order of the fields: serde's own list of them, so a
    /// field added to `Config` is a key here, and has its `CORECAST_` variable
    /// ([`env`](mod@env)), without anyone listing it.
    pub fn keys() -> &'static [&'static str] {
        let mut keys: &'static [&'static str] = &[];
        let refused = Config::deserialize(FieldNames(&mut keys));
        assert!(
            refused.is_err() && !keys.is_empty(),
            "Config deserializes as a struct with fields"
        );
        keys
    }

    /// Reads a TOML file into a table (not yet a `Config`: the environment and the flags are
    /// laid over it first).
    pub fn read_table(path: &std::path::Path) -> Result<toml::Table, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| ConfigError(format!("cannot read config {}: {err}", path.display())))?;
        text.parse::<toml::Table>()
            .map_err(|err| ConfigError(format!("config {} is not TOML: {err}", path.display())))
    }

    /// Builds a `Config` from a table, refusing unknown keys and wrong types by name.
    pub fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
        Config::deserialize(table).map_err(|err| ConfigError(format!("config: {err}")))
    }

    /// The effective configuration as TOML, every default spelled out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serializes")
    }
}

/// The shortest control-plane key accepted: 16 bytes, so that guessing one is hopeless.
const API_KEY_BYTES_MIN: usize = 16;

/// The smallest `api_head_bytes_max`: hyper's read buffer cannot be smaller (it panics).
const API_HEAD_BYTES_MIN: usize = 8 * 1024;

/// File descriptors the server keeps open whatever its load: stdio, the signal pipe, files
/// read at start-up, cluster mode's Redis connections.
const FDS_RESERVED: u64 = 32;

/// File descriptors each executor keeps open: its listener, io_uring rings and eventfds
/// (7 measured on Linux 6.x with glommio 0.9).
const FDS_PER_EXECUTOR: u64 = 8;

impl Config {
    /// Checks the limits that depend on the open-file limit `nofile` (RLIMIT_NOFILE, as raised
    /// at start-up) for a server of `executors` executors: the control plane may hold at most
    /// half of the descriptors left after the server's own, so that however many API
    /// connections are opened, the other half stays for WebSocket upgrades.
    pub fn check_file_limit(&self, nofile: u64, executors: usize) -> Result<(), ConfigError> {
        let reserved = FDS_RESERVED + FDS_PER_EXECUTOR * executors as u64;
        let api = self.api_connections_max as u64;
        let needed = 2 * api + reserved;
        if nofile < needed {
            return Err(ConfigError(format!(
                "api_connections_max = {api} needs RLIMIT_NOFILE of at least {needed} (twice it, \
                 so WebSocket upgrades keep the other half, plus {reserved} for the server's own \
                 descriptors), and this process may open {nofile} files: lower \
                 api_connections_max to at most {} or raise the limit (LimitNOFILE=, \
                 limits.conf; see tuning/)",
                nofile.saturating_sub(reserved) / 2
            )));
        }
        Ok(())
    }
}

/// An `allowed_origins` entry: `scheme://host[:port]`, the host's first label possibly `*`.
fn check_origin(origin: &str) -> Result<(), ConfigError> {
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let plain = host.is_some_and(|host| {
        let host = host.strip_prefix("*.").unwrap_or(host);
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    });
    if !plain {
        return Err(ConfigError(format!(
            "allowed_origins entry {origin:?} is invalid: use scheme://host[:port], as browsers \
             send it (no path, no trailing slash), e.g. https://app.example.com or \
             https://*.example.com"
        )));
    }
    Ok(())
}

/// `conflate` needs a key to conflate by; `prefix` names where the policy was set.
fn check_policy(
    prefix: &str,
    slow_consumer: SlowConsumer,
    conflate_key: Option<&str>,
) -> Result<(), ConfigError> {
    if slow_consumer == SlowConsumer::Conflate && conflate_key.is_none_or(str::is_empty) {
        return Err(ConfigError(format!(
            "{prefix}slow_consumer = \"conflate\" needs {prefix}conflate_key: the `data` field \
             whose value names what a message updates"
        )));
    }
    Ok(())
}

/// A deserializer that answers nothing and keeps the field names a struct asks it for: how
/// [`Config::keys`] reads serde's list of `Config`'s fields.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom(
            "only a struct's field names are read",
        ))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom(
            "only a struct's field names are read",
        ))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Parses `0,2,4-7` into `[0, 2, 4, 5, 6, 7]`; shared with `corecast tune` and the bench.
pub use corecast_proto::host::parse_cpu_list;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip_through_toml() {
        let config = Config::default();
        config.validate().unwrap();
        let table: toml::Table = config.to_toml().parse().unwrap();
        assert_eq!(Config::from_table(table).unwrap(), config);
    }

    #[test]
    fn idle_timeout_must_exceed_heartbeat() {
        let config = Config {
            heartbeat_s: 30,
            idle_timeout_s: 30,
            ..Config::default()
        };
        let err = config.validate().unwrap_err().0;
        assert!(err.contains("idle_timeout_s = 30"), "{err}");
    }

    #[test]
    fn a_batch_must_fit_the_ingest_lanes_and_the_sweep_its_range() {
        let config = Config {
            publish_batch_max: 2_000,
            queue_items_max: 1_024,
            ..Config::default()
        };
        let err = config.validate().unwrap_err().0;
        assert!(
            err.starts_with("publish_batch_max = 2000 must be at most queue_items_max = 1024"),
            "{err}"
        );
        let config = Config {
            channels_sweep_max: 0,
            ..Config::default()
        };
        assert_eq!(
            config.validate().unwrap_err().0,
            "channels_sweep_max = 0 is out of range: allowed 1 to 1000000"
        );
    }

    #[test]
    fn out_of_range_names_field_value_and_range() {
        let config = Config {
            outbox_frames_max: 1,
            ..Config::default()
        };
        assert_eq!(
            config.validate().unwrap_err().0,
            "outbox_frames_max = 1 is out of range: allowed 2 to 1048576"
        );
    }

    #[test]
    fn json_depth_max_is_refused_past_what_a_thread_stack_is_sized_for() {
        for depth_max in [1, 128, json::DEPTH_MAX_LIMIT] {
            let config = Config {
                json_depth_max: depth_max,
                ..Config::default()
            };
            config.validate().unwrap();
        }
        for depth_max in [0, json::DEPTH_MAX_LIMIT + 1, 100_000] {
            let config = Config {
                json_depth_max: depth_max,
                ..Config::default()
            };
            assert_eq!(
                config.validate().unwrap_err().0,
                format!(
                    "json_depth_max = {depth_max} is out of range: allowed 1 to 1024 (each \
                     level reserves {} bytes of stack on every thread that parses JSON)",
                    json::STACK_BYTES_PER_LEVEL
                )
            );
        }
    }

    #[test]
    fn redis_timeout_is_refused_out_of_range_by_name() {
        for (redis_timeout_ms, says) in [
            (
                9,
                "redis_timeout_ms = 9 is out of range: allowed 10 to 60000",
            ),
            (
                60_001,
                "redis_timeout_ms = 60001 is out of range: allowed 10 to 60000",
            ),
        ] {
            let config = Config {
                redis_timeout_ms,
                ..Config::default()
            };
            assert_eq!(config.validate().unwrap_err().0, says);
        }
    }

    #[test]
    fn inbound_limits_are_refused_out_of_range_by_name() {
        for (config, says) in [
            (
                Config {
                    inbound_messages_per_s: 0,
                    ..Config::default()
                },
                "inbound_messages_per_s = 0 is out of range: allowed 1 to 10000000",
            ),
            (
                Config {
                    inbound_messages_burst: 10_000_001,
                    ..Config::default()
                },
                "inbound_messages_burst = 10000001 is out of range: allowed 1 to 10000000",
            ),
            (
                Config {
                    inbound_refusals_max: 0,
                    ..Config::default()
                },
                "inbound_refusals_max = 0 is out of range: allowed 1 to 1000000",
            ),
        ] {
            assert_eq!(config.validate().unwrap_err().0, says);
        }
    }

    #[test]
    fn echo_path_must_be_a_free_plain_path() {
        let with = |path: &str| Config {
            echo_path: Some(path.into()),
            ..Config::default()
        };
        with("/echo").validate().unwrap();
        with("/conformance/echo").validate().unwrap();
        for bad in ["echo", "/e?x=1", "/a b", "", "/#"] {
            let err = with(bad).validate().unwrap_err().0;
            assert!(
                err.starts_with(&format!("echo_path = {bad:?} is invalid")),
                "{err}"
            );
        }
        for taken in ["/", "/ws", "/client.js"] {
            let err = with(taken).validate().unwrap_err().0;
            assert!(err.contains("is taken"), "{err}");
        }
        let table: toml::Table = "echo_path = \"/echo\"\npermessage_deflate = true"
            .parse()
            .unwrap();
        let config = Config::from_table(table).unwrap();
        assert_eq!(config.echo_path.as_deref(), Some("/echo"));
        assert!(config.permessage_deflate);
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let table: toml::Table = "outbox_frame_max = 3".parse().unwrap();
        let err = Config::from_table(table).unwrap_err().0;
        assert!(err.contains("outbox_frame_max"), "{err}");
    }

    #[test]
    fn presence_is_per_namespace_in_the_tenants_names_and_join_leave_needs_it() {
        let table: toml::Table = r#"
            [[namespaces]]
            pattern = "room.*"
            presence = true
            join_leave = true
            [[namespaces]]
            pattern = "doc.>"
            presence = true
        "#
        .parse()
        .unwrap();
        let config = Config::from_table(table).unwrap();
        config.validate().unwrap();
        assert_eq!(config.presence_of("room.1"), PresenceMode::JoinLeave);
        assert_eq!(
            config.presence_of("$t:acme.room.1"),
            PresenceMode::JoinLeave
        );
        assert_eq!(config.presence_of("doc.a.b"), PresenceMode::Members);
        assert_eq!(config.presence_of("leads.1"), PresenceMode::Off);
        let table: toml::Table = config.to_toml().parse().unwrap();
        assert_eq!(Config::from_table(table).unwrap(), config, "round trip");

        let table: toml::Table = "[[namespaces]]\npattern = \"x.*\"\njoin_leave = true"
            .parse()
            .unwrap();
        let err = Config::from_table(table).unwrap().validate().unwrap_err().0;
        assert!(
            err.starts_with("namespaces[0].join_leave = true needs namespaces[0].presence"),
            "{err}"
        );
    }

    #[test]
    fn namespaces_inherit_the_top_level_and_conflate_needs_a_key() {
        let table: toml::Table = r#"
            history_messages_max = 50
            [[namespaces]]
            pattern = "prices.>"
            slow_consumer = "conflate"
            conflate_key = "symbol"
            [[namespaces]]
            pattern = "prices.eu.*"
            history_messages_max = 0
        "#
        .parse()
        .unwrap();
        let config = Config::from_table(table).unwrap();
        config.validate().unwrap();
        assert_eq!(config.policy_index("prices.eu.gas"), 1, "first match wins");
        assert_eq!(config.policy_index("leads.1"), 0);
        let prices = config.policy(1);
        assert_eq!(prices.slow_consumer, SlowConsumer::Conflate);
        assert_eq!(prices.conflate_key.as_deref(), Some("symbol"));
        assert_eq!(prices.history_messages_max, 50, "inherited");
        assert_eq!(config.policy(2).history_messages_max, 0);
        let table: toml::Table = config.to_toml().parse().unwrap();
        assert_eq!(Config::from_table(table).unwrap(), config, "round trip");

        let keyless = Config {
            namespaces: vec![Namespace {
                pattern: "p.>".into(),
                history_messages_max: None,
                history_bytes_max: None,
                history_age_s: None,
                slow_consumer: Some(SlowConsumer::Conflate),
                conflate_key: None,
                presence: false,
                join_leave: false,
            }],
            ..Config::default()
        };
        let err = keyless.validate().unwrap_err().0;
        assert!(
            err.starts_with(
                "namespaces[0].slow_consumer = \"conflate\" needs namespaces[0].conflate_key"
            ),
            "{err}"
        );
    }

    #[test]
    fn control_plane_limits_are_range_checked_by_name() {
        for (config, says) in [
            (
                Config {
                    api_connections_max: 0,
                    ..Config::default()
                },
                "api_connections_max = 0 is out of range: allowed 1 to 1000000",
            ),
            (
                Config {
                    api_head_bytes_max: 4096,
                    ..Config::default()
                },
                "api_head_bytes_max = 4096 is out of range: allowed 8192 to 1048576",
            ),
            (
                Config {
                    api_header_timeout_ms: 5,
                    ..Config::default()
                },
                "api_header_timeout_ms = 5 is out of range: allowed 10 to 600000",
            ),
            (
                Config {
                    api_body_timeout_ms: 600_001,
                    ..Config::default()
                },
                "api_body_timeout_ms = 600001 is out of range: allowed 10 to 600000",
            ),
            (
                Config {
                    api_idle_timeout_ms: 0,
                    ..Config::default()
                },
                "api_idle_timeout_ms = 0 is out of range: allowed 10 to 3600000",
            ),
            (
                Config {
                    api_body_bytes_in_flight_max: 1024,
                    ..Config::default()
                },
                "api_body_bytes_in_flight_max = 1024 is out of range: allowed 1048576 to \
                 68719476736",
            ),
        ] {
            assert_eq!(config.validate().unwrap_err().0, says);
        }
    }

    #[test]
    fn the_control_plane_may_hold_half_the_file_descriptors_left() {
        let config = Config {
            api_connections_max: 100,
            ..Config::default()
        };
        // 3 executors: 32 + 3 x 8 = 56 descriptors of the server's own.
        config.check_file_limit(256, 3).unwrap();
        assert_eq!(
            config.check_file_limit(255, 3).unwrap_err().0,
            "api_connections_max = 100 needs RLIMIT_NOFILE of at least 256 (twice it, so \
             WebSocket upgrades keep the other half, plus 56 for the server's own descriptors), \
             and this process may open 255 files: lower api_connections_max to at most 99 or \
             raise the limit (LimitNOFILE=, limits.conf; see tuning/)"
        );
        Config::default().check_file_limit(20_000, 3).unwrap();
        assert!(Config::default().check_file_limit(1_024, 3).is_err());
    }

    #[test]
    fn cpu_lists_parse_ranges_and_reject_garbage() {
        assert_eq!(parse_cpu_list("0,2,4-6").unwrap(), vec![0, 2, 4, 5, 6]);
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
