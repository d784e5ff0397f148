//! corecast: a thread-per-core WebSocket fan-out server on glommio (io_uring).
//!
//! Backends publish events over HTTP; every WebSocket client subscribed to a matching channel
//! receives each one, in publish order, with a per-channel offset. The wire contract is
//! `PROTOCOL.md` (shared with client authors); this crate is its server.
//!
//! # Workspace
//! This library is the server alone: it never depends on the tools beside it, so it links none
//! of their dependencies (`cargo build -p corecast --lib --no-default-features`).
//! - `corecast-proto` (`src/proto/`): what the server, the client and the bench all speak:
//!   channel names and patterns ([`channel`], re-exported here), positions ([`msg::Since`]),
//!   priorities ([`ingest::Priority`]), error and close codes, and the client-side frame codec.
//! - This crate, in the layers below.
//! - The tools, crates of their own that depend on `corecast-proto` and never on this one:
//!   `corecast-client` (`src/client/`, the Rust client and `corecast subscribe`/`publish`) and
//!   `corecast-bench` (`benches/load/`, the load generator behind `corecast bench`).
//! - The `corecast` binary (`src/main.rs`, `src/cli.rs`): the command line over all of them,
//!   behind the default feature `cli`.
//!
//! # Layers
//! Bottom to top. A module imports only modules of lower layers, never one of its own layer:
//! so there is no import cycle, and the two cores' halves meet only in the vocabulary and the
//! queue beneath them. `tests/layers.rs` reads every `crate::` path of `src/` and fails on one
//! that breaks this, naming the file and line; between crates, cargo enforces it.
//! 1. Protocol types: [`channel`] (from `corecast-proto`).
//! 2. Shared pieces: [`clock`] (the wall clock and epochs), [`json`] (the checks every JSON
//!    parse runs first), [`notify`] (the wake-up between tasks of one core), [`rate`] (token
//!    buckets), [`web`] (the embedded browser client), [`queue`] (the cross-core transport,
//!    which knows only `T`).
//! 3. Shared pieces over those: [`latency`] (fan-out histograms), [`registry`] (patterns to
//!    keys, for a shard's connections and the ingest core's routes).
//! 4. [`msg`]: the cross-core vocabulary, everything the cores say to each other.
//! 5. [`config`]: the settings (the `serve` flags, the `CORECAST_<KEY>` environment
//!    ([`config::env`]) and the TOML file), validated.
//! 6. Pure stages: [`ws`] (RFC 6455 codecs, the outbox, a connection's protocol state
//!    machine), [`cluster`] (the bridge to Redis: plain threads beside the executors),
//!    [`tune`] (`corecast tune check`, the host audit).
//! 7. [`net`]: bind with `SO_REUSEPORT`, read an HTTP upgrade under its limits ([`net::auth`]:
//!    the JWT it presents and the grant it carries; [`net::tls`]: the stream every connection
//!    runs on), answer and close.
//! 8. The two cores' halves. [`shard`]: a broadcast shard's accept loop ([`shard::accept`]),
//!    its connections' tasks ([`shard::conn`]) and slab ([`shard::conns`]), its interest and
//!    registry ([`shard::interest`]), fan-out ([`shard::fanout`]), the clients' commands
//!    ([`shard::commands`]), admission ([`shard::admission`]), counters ([`shard::stats`]), its
//!    connections by user ([`shard::users`]), its presence members ([`shard::presence`]),
//!    the way to the ingest core
//!    ([`shard::forward`]) and its settings ([`shard::settings`]).
//!    [`ingest`]: the control-plane API ([`ingest::api_stream`]: its connections' deadlines and
//!    its answers to what hyper cannot parse), the priority [`ingest::lanes`], the
//!    [`ingest::sequencer`] of epoch, seq and offsets, encode-once ([`ingest::encode`], the only
//!    owner of the frame layout), [`ingest::history`], [`ingest::routes`] (which shards
//!    subscribe to what), [`ingest::fanout`] (the overall fan-out latency), [`ingest::queries`]
//!    (questions to every shard), [`ingest::presence`] (presence answers and join/leave
//!    diffs), [`ingest::metrics`] (the `/metrics` exposition),
//!    [`ingest::admission`] (the connection limits over every shard), [`ingest::tenants`]
//!    (tenant publish limits) and [`ingest::cluster`] (its side of the bridge).
//! 9. [`runtime`]: the core plan, start-up and shutdown: wiring.
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
//! when nothing is queued for it (every such send of the delivery queued on the shard's own
//! io_uring and handed to the kernel at once, [`shard::send_ring`]), otherwise to its outbox, whose task coalesces the pending
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
//! - **user**: a token's `sub` (or `?user=` without auth). Each user's messages are a stream
//!   of their own, a channel whose full name is `$user.<id>` (in a tenant's scope
//!   `$t:acme.$user.<id>`) and which its connections name `$user` (see
//!   [`channel::USER_CHANNEL`]); the control plane acts on all of a user's connections.
// Unsafe code is denied everywhere but in one module, the shard's io_uring send ring
// (`shard::send_ring`), whose `unsafe` pushes carry SAFETY comments and tests.
#![deny(unsafe_code)]

pub use corecast_proto::channel;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod ingest;
pub mod json;
pub mod latency;
pub mod msg;
pub mod net;
pub mod notify;
pub mod queue;
pub mod rate;
pub mod registry;
pub mod runtime;
pub mod shard;
pub mod tune;
pub mod web;
pub mod ws;
