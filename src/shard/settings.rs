//! The shard's own view of the settings its owners read, taken once at start from the flat
//! [`Config`] (as [`crate::cluster::Settings`] is for the bridge), so that each limit is read
//! where it is named and nothing here reaches back into the whole configuration.
//!
//! It never changes while the shard runs. The connection tasks and the handshake
//! ([`super::conn`], [`super::accept`]) still read the full [`Config`] through
//! `ShardCore::config`: they use many more of its fields, and they are not part of this view.

use std::time::Duration;

use crate::config::Config;

/// What the shard's fan-out, interest, commands and task loops read from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `connections_per_shard_max`: connections this shard holds at most; past it an upgrade
    /// gets HTTP 503.
    pub connections_max: usize,
    /// `outbox_frames_max`: frames a connection may have queued before it closes with 4008.
    pub outbox_frames_max: usize,
    /// `outbox_bytes_max`: bytes a connection may have queued before it closes with 4008.
    pub outbox_bytes_max: usize,
    /// `batch_window_us`: how long a `high` or `normal` message may wait so that a
    /// connection's frames coalesce into one write; zero writes every frame at once.
    pub batch_window: Duration,
    /// `heartbeat_s`: seconds between pings, also told to each client in `connected`.
    pub heartbeat_s: u64,
    /// `idle_timeout_s`: how long a connection may send nothing before it is closed.
    pub idle_timeout: Duration,
    /// `queue_batch_max`: messages taken from the ingest core's queue per wake-up.
    pub queue_batch_max: usize,
    /// `queue_items_max`: at this many messages waiting for the ingest core's queue, a
    /// client's `publish` and `subscribe` with `since` are refused as overloaded.
    pub queue_items_max: usize,
    /// `shutdown_timeout_ms`: how long a stopping shard waits for its connections to close.
    pub shutdown_timeout: Duration,
    /// `channel_bytes_max`: the longest channel name or pattern a command may use.
    pub channel_bytes_max: usize,
    /// `subscriptions_per_conn_max`: subscriptions (and acked channels) per connection.
    pub subscriptions_per_conn_max: usize,
    /// `client_publish`: the patterns a connection without a token may publish to.
    pub client_publish: Vec<String>,
    /// `presence_members_max`: members one presence answer lists at most.
    pub presence_members_max: usize,
    /// `presence_diff_interval_ms`: how often the joins and leaves go to the ingest core.
    pub presence_diff_interval: Duration,
    /// Some namespace has `join_leave`: the shard gathers joins and leaves for diffs.
    pub join_leave: bool,
    /// How many namespaces the shard counts: one per `[[namespaces]]` table, and the default.
    pub namespaces_len: usize,
}

impl Settings {
    /// The shard's view of `config`.
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            connections_max: config.connections_per_shard_max,
            outbox_frames_max: config.outbox_frames_max,
            outbox_bytes_max: config.outbox_bytes_max,
            batch_window: Duration::from_micros(config.batch_window_us),
            heartbeat_s: config.heartbeat_s,
            idle_timeout: Duration::from_secs(config.idle_timeout_s),
            queue_batch_max: config.queue_batch_max,
            queue_items_max: config.queue_items_max,
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
            channel_bytes_max: config.channel_bytes_max,
            subscriptions_per_conn_max: config.subscriptions_per_conn_max,
            client_publish: config.client_publish.clone(),
            presence_members_max: config.presence_members_max,
            presence_diff_interval: Duration::from_millis(config.presence_diff_interval_ms),
            join_leave: config
                .namespaces
                .iter()
                .any(|namespace| namespace.join_leave),
            namespaces_len: config.namespaces.len() + 1,
        }
    }
}
