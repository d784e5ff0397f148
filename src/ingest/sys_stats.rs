//! `$sys.stats`: the server's own figures, published by the ingest core to a channel every
//! `sys_stats_interval_ms`, so that a dashboard (`GET /dashboard`) or any client follows them
//! live with the same subscription, history and recovery as any other channel.
//!
//! Each tick asks every shard for its report (the query `/v1/stats` uses), turns counters into
//! rates over the tick, takes the fan-out latency of the publishes since the previous tick, and
//! queues the result as a normal-priority publish. It never waits on a connection; a shard that
//! does not answer within the query timeout is left out of that tick.

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::api::{namespace_summaries, shard_reports, NamespaceSummary};
use super::{IngestCore, Priority};
use crate::latency::LatencySummary;

/// The channel the figures go to.
pub const CHANNEL: &str = "$sys.stats";

/// One shard's figures in a tick.
#[derive(Debug, Serialize)]
struct ShardTick {
    shard: usize,
    connections: usize,
    /// Users with a connection on the shard.
    users: usize,
    /// Presence channels with a member on the shard, and their members.
    presence_channels: usize,
    presence_members: usize,
    /// Messages handed to connections per second over the tick.
    deliveries_per_s: f64,
    slow_consumer_closes: u64,
    rate_limit_closes: u64,
    drops: u64,
    outbox_bytes: usize,
}

/// What one `$sys.stats` message carries.
#[derive(Debug, Serialize)]
struct Tick {
    ts_ms: u64,
    interval_ms: u64,
    epoch: Rc<str>,
    connections: usize,
    deliveries_per_s: f64,
    published_per_s: f64,
    slow_consumer_closes: u64,
    /// Connections closed with 4029 (inbound rate-limit abuse), since start.
    rate_limit_closes: u64,
    /// Fan-out latency of the publishes whose fan-out finished during this tick.
    fanout_latency_us: LatencySummary,
    shards: Vec<ShardTick>,
    namespaces: Vec<NamespaceSummary>,
}

/// Counters as of the previous tick, to turn totals into rates.
#[derive(Default)]
struct Previous {
    at: Option<Instant>,
    published_total: u64,
    /// Per shard, the sum of its namespaces' deliveries.
    deliveries: Vec<u64>,
}

/// Publishes `$sys.stats` every `sys_stats_interval_ms` until the task is cancelled.
pub async fn run(core: Rc<IngestCore>) {
    let interval = Duration::from_millis(core.config.sys_stats_interval_ms);
    let mut previous = Previous::default();
    let channel = channel(&core.config);
    loop {
        glommio::timer::sleep(interval).await;
        let tick = tick(&core, &mut previous).await;
        if let Some(link) = core.cluster_link() {
            link.report_connections(tick.connections);
        }
        let data = sonic_rs::to_string(&tick).expect("stats serialize");
        core.publish_internal(&channel, data.into(), Priority::Normal);
    }
}

/// The channel this node's figures go to: [`CHANNEL`] on a single node; in cluster mode,
/// where every node receives every node's messages, `$sys.stats.<node>`.
pub fn channel(config: &crate::config::Config) -> String {
    match config.redis_url {
        Some(_) => format!("{CHANNEL}.{}", node_token(config)),
        None => CHANNEL.to_owned(),
    }
}

/// This node's name as one channel token: the WebSocket address, `:` and digits kept.
pub fn node_token(config: &crate::config::Config) -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", hostname.trim(), config.listen.port())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == ':' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

async fn tick(core: &IngestCore, previous: &mut Previous) -> Tick {
    let epoch: Rc<str> = Rc::from(&*core.epoch());
    let reports = shard_reports(core).await;
    let now = Instant::now();
    let elapsed_s = previous
        .at
        .map_or(0.0, |at| now.duration_since(at).as_secs_f64());
    let rate = |now: u64, before: u64| {
        if elapsed_s > 0.0 {
            now.saturating_sub(before) as f64 / elapsed_s
        } else {
            0.0
        }
    };
    let ingest = core.stats();
    let mut shards = Vec::with_capacity(reports.len());
    let mut deliveries_now = vec![0; core.shards_len()];
    for report in &reports {
        let stats = &report.stats;
        let delivered: u64 = report.namespaces.iter().map(|n| n.deliveries).sum();
        deliveries_now[stats.shard] = delivered;
        let before = previous.deliveries.get(stats.shard).copied().unwrap_or(0);
        shards.push(ShardTick {
            shard: stats.shard,
            connections: stats.connections,
            users: stats.users,
            presence_channels: stats.presence_channels,
            presence_members: stats.presence_members,
            deliveries_per_s: rate(delivered, before),
            slow_consumer_closes: stats.slow_consumer_closes,
            rate_limit_closes: stats.rate_limit_closes,
            drops: stats.drops,
            outbox_bytes: stats.outbox_bytes,
        });
    }
    let tick = Tick {
        ts_ms: crate::clock::unix_ms(),
        interval_ms: core.config.sys_stats_interval_ms,
        epoch,
        connections: shards.iter().map(|shard| shard.connections).sum(),
        deliveries_per_s: shards.iter().map(|shard| shard.deliveries_per_s).sum(),
        published_per_s: rate(ingest.published_total, previous.published_total),
        slow_consumer_closes: shards.iter().map(|shard| shard.slow_consumer_closes).sum(),
        rate_limit_closes: shards.iter().map(|shard| shard.rate_limit_closes).sum(),
        fanout_latency_us: core.take_interval_fanout(),
        shards,
        namespaces: namespace_summaries(core, &reports),
    };
    *previous = Previous {
        at: Some(now),
        // This tick's own publish is not counted in the next rate.
        published_total: ingest.published_total + 1,
        deliveries: deliveries_now,
    };
    tick
}
