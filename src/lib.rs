//! corecast: a thread-per-core WebSocket fan-out server on glommio (io_uring).
//!
//! Backends publish events over HTTP; every WebSocket client subscribed to a matching channel
//! receives each one, in publish order, with a per-channel offset. The wire contract is
//! `PROTOCOL.md` (shared with client authors); this crate is its server.
//!
//! # Workspace
//! This library is the server alone: it never depends on the tools beside it, so it links none
//! of their dependencies (`cargo build -p corecast --lib --no-default-features`). The layers,
//! bottom to top; a layer may import only those below it (between crates, cargo enforces it):
//! - `corecast-proto` (`src/proto/`): what the server, the client and the bench all speak:
//!   channel names and patterns ([`channel`], re-exported here), positions ([`queue::Since`]),
//!   priorities ([`ingest::Priority`]), error and close codes, and the client-side frame codec.
//! - This crate: [`config`], then the pure stages ([`ws`], [`net`], [`cluster`]), then
//!   [`ingest`] and [`shard`], then [`runtime`].
//! - The tools, crates of their own that depend on `corecast-proto` and never on this one:
//!   `corecast-client` (`src/client/`, the Rust client and `corecast subscribe`/`publish`) and
//!   `corecast-bench` (`benches/load/`, the load generator behind `corecast bench`).
//! - The `corecast` binary (`src/main.rs`, `src/cli.rs`): the command line over all of them,
//!   behind the default feature `cli`.
//!
//! # Layout
//! The folders are the stages a message passes through, in order.
//! - [`net`]: bind with `SO_REUSEPORT`, accept, read the HTTP upgrade under its limits,
//!   [`net::auth`]: the JWT a connection presents and the grant it carries, and
//!   [`net::tls`]: optional TLS, the stream every connection (and the control plane) runs on.
//! - [`ws`]: RFC 6455 frames, reassembled messages, permessage-deflate, JSON commands, the
//!   inbound rate limit, and the connection task (which also serves the optional echo endpoint
//!   for conformance suites).
//! - [`shard`]: a broadcast shard's connections, its subscription [`shard::registry`], fan-out.
//! - [`ingest`]: the control-plane HTTP API (its connections' deadlines and its answers to
//!   what hyper cannot parse: [`ingest::api_stream`]), the sequencer of offsets, encode-once,
//!   [`ingest::history`]: each channel's bounded history, which recoveries read, and
//!   [`ingest::metrics`]: fan-out latency histograms and the Prometheus `/metrics` exposition,
//!   [`ingest::admission`]: the connection limits over every shard (total, per address, per
//!   tenant), which an upgrade asks the ingest core for.
//! - [`queue`]: the only link between cores, bounded lock-free queues with a wake-up.
//! - [`cluster`]: cluster mode's bridge to Redis, three plain threads beside the executors
//!   (the ingest core's side of it is [`ingest::cluster`]).
//! - [`notify`]: the wake-up between tasks of one core (the cross-core one is [`queue`]).
//! - [`rate`]: token buckets, for the rate limits.
//! - [`channel`]: channel names and wildcard patterns, shared by every stage (from
//!   `corecast-proto`).
//! - [`config`], [`runtime`]: settings (the `serve` flags and the TOML file), the core plan and
//!   start-up.
//! - [`json`]: the checks every JSON parse runs first (nesting depth, `\u` escapes), and the
//!   stack a thread that parses JSON needs.
//! - [`tune`]: `corecast tune check`, the host audit against `tuning/`'s recommendations.
//! - [`web`]: the browser client (`/client.js`, `/client.d.ts`) the WebSocket port and the
//!   control plane serve, embedded.
//!
//! # Data flow
//! ```text
//!  HTTP POST /v1/publish ─┐                       ┌─> shard 0 ─> outbox ─> socket, socket, ...
//!                         ├─> ingest core ─ queue ┼─> shard 1 ─> outbox ─> socket, socket, ...
//!  client "publish" ──────┘   lanes by priority,  └─> shard N ─> ...
//!   (via its shard's queue)   offset, encode once
//! ```
//! A publish is sequenced on the ingest core (critical, then high, then normal), gets its
//! channel's next offset, and becomes one complete WebSocket frame (`bytes::Bytes`). The frame
//! crosses to every shard that announced a matching pattern; each shard looks the channel up in
//! its registry and sends the same bytes to every matching connection: straight to the socket
//! when nothing is queued for it, otherwise to its outbox, whose task coalesces the pending
//! frames into one write (under its channel's slow-consumer policy; a critical frame overtakes
//! other channels' queued ones). Subscriptions flow the other way: a shard announces a new
//! pattern to the ingest core and answers `subscribed` once the ingest core routes it. A
//! `subscribe` with `since` goes on to the sequencer, which answers between two publishes with
//! the missed frames from history; the shard makes it live when that answer arrives.
//! In cluster mode (`--redis`) the sequencer hands each publish to [`cluster`]'s bridge
//! instead, and numbers nothing itself: Redis numbers every node's publishes, and each comes
//! back to every node's ingest core, in seq order, to be encoded and fanned out as above.
//! Each delivery carries the `Instant` the ingest core accepted its publish; each shard records
//! its fan-out time and reports it back, and the ingest core keeps the slowest per publish.
//!
//! # Glossary
//! - **core**: a CPU id. Every executor is pinned to one.
//! - **shard**: one pinned glommio executor owning a listener and its connections for life.
//! - **ingest core**: the executor owning the publish API, the sequencer and the routes.
//! - **conn**: one WebSocket connection, owned by one shard.
//! - **channel**: a dotted name events are published to; a *pattern* may hold `*` and `>`.
//! - **frame**: a complete RFC 6455 frame, encoded once and shared as `Bytes`.
//! - **offset**: a channel's message number, +1 per publish, assigned by the ingest core.
//! - **seq**: a message's node-wide number, +1 per publish on any channel.
//! - **epoch**: the name of one run of offsets; a restart starts a new one.
//! - **tenant**: a token's `tenant` claim; its connections live in its own namespace, where a
//!   channel's *full name* carries the scope (`$t:acme.leads.42`) that its clients never see
//!   (see [`channel::TENANT_MARK`]).
#![forbid(unsafe_code)]

pub use corecast_proto::channel;
pub mod cluster;
pub mod config;
pub mod ingest;
pub mod json;
pub mod net;
pub mod notify;
pub mod queue;
pub mod rate;
pub mod runtime;
pub mod shard;
pub mod tune;
pub mod web;
pub mod ws;
