//! The Prometheus exposition of `GET /metrics`: every counter of the shards' reports and of the
//! ingest core, and the fan-out latency histogram ([`crate::latency`]) in Prometheus's bucket
//! shape.
//!
//! This module owns the format; it never reads a counter itself, never crosses a core and never
//! writes exposition text by hand: the ingest core hands it a [`Snapshot`], and
//! `prometheus-client` writes the text.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::api::ApiStats;
use super::cluster::ClusterStats;
use super::IngestStats;
use crate::latency::Buckets;
use crate::msg::NamespaceStats;
use crate::msg::ShardStats;

/// The content type of `GET /metrics`: the OpenMetrics text format, which is what
/// `prometheus_client::encoding::text::encode` writes (Prometheus scrapes it natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything `GET /metrics` shows, copied out of the shards' answers and the ingest core:
/// a [`Collector`] that `prometheus-client` encodes.
#[derive(Debug)]
pub struct Snapshot {
    pub shards: Vec<ShardStats>,
    /// Per namespace (its pattern, or `default`), summed over the shards.
    pub namespaces: Vec<(String, NamespaceStats)>,
    /// Live connections per tenant (tenants with none are absent).
    pub tenants: Vec<(Box<str>, usize)>,
    pub ingest: IngestStats,
    /// The control plane's connections and refusals.
    pub api: ApiStats,
    pub fanout: Buckets,
    /// Cluster mode's figures; `None` on a single node, which shows no `corecast_cluster_*`.
    pub cluster: Option<ClusterStats>,
}

/// The per-shard families: name (without `_total`; the encoder adds it to counters), help,
/// type, and the field of [`ShardStats`].
type ShardFamily = (
    &'static str,
    &'static str,
    MetricType,
    fn(&ShardStats) -> u64,
);

const SHARD_FAMILIES: [ShardFamily; 15] = [
    (
        "corecast_connections",
        "Open WebSocket connections.",
        MetricType::Gauge,
        |s| s.connections as u64,
    ),
    (
        "corecast_users",
        "Users with a connection on the shard (a user on two shards counts on each).",
        MetricType::Gauge,
        |s| s.users as u64,
    ),
    (
        "corecast_presence_channels",
        "Presence channels with a member on the shard.",
        MetricType::Gauge,
        |s| s.presence_channels as u64,
    ),
    (
        "corecast_presence_members",
        "Presence members on the shard (a connection in two channels counts twice).",
        MetricType::Gauge,
        |s| s.presence_members as u64,
    ),
    (
        "corecast_subscriptions",
        "Live subscriptions (connection, pattern).",
        MetricType::Gauge,
        |s| s.subscriptions as u64,
    ),
    (
        "corecast_messages_sent",
        "Whole frames written to sockets: connected, replies, deliveries, pings, closes.",
        MetricType::Counter,
        |s| s.messages_out,
    ),
    (
        "corecast_bytes_sent",
        "Bytes written to sockets.",
        MetricType::Counter,
        |s| s.bytes_out,
    ),
    (
        "corecast_drops",
        "Frames dropped: outbox overflows and outboxes cleared by a close.",
        MetricType::Counter,
        |s| s.drops,
    ),
    (
        "corecast_slow_consumer_closes",
        "Connections closed with 4008 because their outbox overflowed.",
        MetricType::Counter,
        |s| s.slow_consumer_closes,
    ),
    (
        "corecast_rate_limited_messages",
        "Client messages refused by the inbound rate limit (answered rate_limited or dropped).",
        MetricType::Counter,
        |s| s.rate_limited_messages,
    ),
    (
        "corecast_rate_limit_closes",
        "Connections closed with 4029: too many refusals in a row by the inbound rate limit.",
        MetricType::Counter,
        |s| s.rate_limit_closes,
    ),
    (
        "corecast_connections_accepted",
        "WebSocket connections accepted.",
        MetricType::Counter,
        |s| s.connections_accepted,
    ),
    (
        "corecast_connections_refused",
        "WebSocket connections refused (shard full or stopping).",
        MetricType::Counter,
        |s| s.connections_refused,
    ),
    (
        "corecast_accept_errors",
        "Accepts of WebSocket connections that failed (out of file descriptors, say).",
        MetricType::Counter,
        |s| s.accept_errors,
    ),
    (
        "corecast_ingest_queue_length",
        "Messages from the shard waiting for the ingest core.",
        MetricType::Gauge,
        |s| s.ingest_queue_len as u64,
    ),
];

/// The control plane's families: name (without `_total`), help, type, field of [`ApiStats`].
type ApiFamily = (&'static str, &'static str, MetricType, fn(&ApiStats) -> u64);

const API_FAMILIES: [ApiFamily; 6] = [
    (
        "corecast_api_connections",
        "Open control-plane connections (at most api_connections_max).",
        MetricType::Gauge,
        |a| a.connections as u64,
    ),
    (
        "corecast_api_connections_refused",
        "Control-plane connections answered 503 at accept: api_connections_max were open.",
        MetricType::Counter,
        |a| a.connections_refused_total,
    ),
    (
        "corecast_api_accept_errors",
        "Accepts of control-plane connections that failed (out of file descriptors, say).",
        MetricType::Counter,
        |a| a.accept_errors_total,
    ),
    (
        "corecast_api_malformed_requests",
        "Control-plane requests that were not valid HTTP/1.1 (400, 414, 431) or were HTTP/2 (505).",
        MetricType::Counter,
        |a| a.malformed_requests_total,
    ),
    (
        "corecast_api_bodies_refused",
        "Control-plane bodies answered 503: api_body_bytes_in_flight_max was reached.",
        MetricType::Counter,
        |a| a.bodies_refused_total,
    ),
    (
        "corecast_api_body_bytes_in_flight",
        "Bytes the control-plane request bodies being read hold.",
        MetricType::Gauge,
        |a| a.body_bytes_in_flight as u64,
    ),
];

/// One phase of `corecast_api_timeouts_total`: its label, and the field of [`ApiStats`].
type ApiTimeoutPhase = (&'static str, fn(&ApiStats) -> u64);

const API_TIMEOUT_PHASES: [ApiTimeoutPhase; 4] = [
    ("idle", |a| a.idle_timeouts_total),
    ("header", |a| a.header_timeouts_total),
    ("body", |a| a.body_timeouts_total),
    ("send", |a| a.send_timeouts_total),
];

/// The per-namespace counter families: name (without `_total`), help, field.
type NamespaceFamily = (&'static str, &'static str, fn(&NamespaceStats) -> u64);

const NAMESPACE_FAMILIES: [NamespaceFamily; 4] = [
    (
        "corecast_namespace_deliveries",
        "Messages handed to connections (written or queued), by channel namespace.",
        |n| n.deliveries,
    ),
    (
        "corecast_namespace_drops",
        "Queued messages dropped by drop_oldest (each named in a gap notice), by namespace.",
        |n| n.drops,
    ),
    (
        "corecast_namespace_conflated",
        "Queued messages replaced by a newer one of the same conflate_key, by namespace.",
        |n| n.conflated,
    ),
    (
        "corecast_namespace_slow_consumer_closes",
        "Connections closed with 4008 by a message of the namespace.",
        |n| n.slow_consumer_closes,
    ),
];

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for (name, help, metric_type, field) in SHARD_FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
            for shard in &self.shards {
                let id = shard.shard.to_string();
                let labels = [("shard", id.as_str())];
                let mut metric = family.encode_family(&labels)?;
                match metric_type {
                    MetricType::Counter => {
                        metric.encode_counter::<NoLabelSet, _, u64>(&field(shard), None)?
                    }
                    _ => metric.encode_gauge(&field(shard))?,
                }
            }
        }
        for (name, help, field) in NAMESPACE_FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (namespace, stats) in &self.namespaces {
                let labels = [("namespace", namespace.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&field(stats), None)?;
            }
        }
        let mut tenants = encoder.encode_descriptor(
            "corecast_tenant_connections",
            "Open WebSocket connections, by the tenant of their token.",
            None,
            MetricType::Gauge,
        )?;
        for (tenant, connections) in &self.tenants {
            let labels = [("tenant", &**tenant)];
            tenants
                .encode_family(&labels)?
                .encode_gauge(&(*connections as u64))?;
        }
        let mut refused = encoder.encode_descriptor(
            "corecast_tenant_publishes_refused",
            "Publishes refused because their tenant was over tenant_publishes_per_s.",
            None,
            MetricType::Counter,
        )?;
        refused.encode_counter::<NoLabelSet, _, u64>(
            &self.ingest.tenant_publishes_refused_total,
            None,
        )?;
        let mut overloaded = encoder.encode_descriptor(
            "corecast_publishes_overloaded",
            "Publishes refused overloaded: the lanes were full, or fanout_queued_max publishes \
             were held for fan-out.",
            None,
            MetricType::Counter,
        )?;
        overloaded
            .encode_counter::<NoLabelSet, _, u64>(&self.ingest.overloaded_refused_total, None)?;
        let mut diffs = encoder.encode_descriptor(
            "corecast_presence_diffs",
            "presence_diff frames handed to shards (one per channel, tick and shard routed).",
            None,
            MetricType::Counter,
        )?;
        diffs.encode_counter::<NoLabelSet, _, u64>(&self.ingest.presence_diffs_total, None)?;
        for (name, help, metric_type, field) in API_FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
            match metric_type {
                MetricType::Counter => {
                    family.encode_counter::<NoLabelSet, _, u64>(&field(&self.api), None)?
                }
                _ => family.encode_gauge(&field(&self.api))?,
            }
        }
        let mut timeouts = encoder.encode_descriptor(
            "corecast_api_timeouts",
            "Control-plane connections ended by a deadline: idle (api_idle_timeout_ms), header \
             (api_header_timeout_ms, 408), body (api_body_timeout_ms, 408), send (a response \
             the client did not read within api_idle_timeout_ms).",
            None,
            MetricType::Counter,
        )?;
        for (phase, field) in API_TIMEOUT_PHASES {
            let labels = [("phase", phase)];
            timeouts
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&field(&self.api), None)?;
        }
        let mut published = encoder.encode_descriptor(
            "corecast_published",
            "Publishes accepted and sequenced by the ingest core.",
            None,
            MetricType::Counter,
        )?;
        published.encode_counter::<NoLabelSet, _, u64>(&self.ingest.published_total, None)?;
        let mut channels = encoder.encode_descriptor(
            "corecast_channels",
            "Channels the sequencer tracks: with history left or a subscriber (at most channels_max).",
            None,
            MetricType::Gauge,
        )?;
        channels.encode_gauge(&(self.ingest.channels as u64))?;
        let mut forgotten = encoder.encode_descriptor(
            "corecast_channels_forgotten",
            "Channels forgotten, their places reused, because they had no history left and no \
             subscriber.",
            None,
            MetricType::Counter,
        )?;
        forgotten
            .encode_counter::<NoLabelSet, _, u64>(&self.ingest.channels_forgotten_total, None)?;
        if let Some(cluster) = &self.cluster {
            encode_cluster(cluster, &mut encoder)?;
        }
        let fanout = &self.fanout;
        let mut latency = encoder.encode_descriptor(
            "corecast_fanout_latency",
            "Time from the ingest core accepting a publish to the slowest shard routed to \
             finishing its fan-out loop (every frame handed to the kernel or queued).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        latency.encode_histogram::<NoLabelSet>(fanout.sum_s, fanout.count, &fanout.buckets, None)
    }
}

/// The `corecast_cluster_*` families: the bridge's state and its refusals.
fn encode_cluster(
    cluster: &ClusterStats,
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    for (name, help, value) in [
        (
            "corecast_cluster_connected",
            "1 while both connections to Redis are up and its last round trip was answered in \
             time.",
            cluster.connected,
        ),
        (
            "corecast_cluster_stalled",
            "1 while Redis is late: a round trip passed redis_timeout_ms and none has been \
             answered since; publishes are refused meanwhile.",
            cluster.stalled,
        ),
    ] {
        encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&u64::from(value))?;
    }
    encoder
        .encode_descriptor(
            "corecast_cluster_oldest_pending",
            "How long the oldest publish handed to Redis has waited for its answer (0: none \
             waits).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?
        .encode_gauge(&(cluster.oldest_pending_ms as f64 / 1e3))?;
    for (name, help, total) in [
        (
            "corecast_cluster_publishes_outcome_unknown",
            "Publishes answered outcome_unknown: sent to Redis, no answer within \
             redis_timeout_ms; they may or may not be published.",
            cluster.publishes_outcome_unknown_total,
        ),
        (
            "corecast_cluster_publishes_unavailable",
            "Publishes answered cluster_unavailable: certainly not published (Redis \
             unreachable or stalled).",
            cluster.publishes_unavailable_total,
        ),
    ] {
        encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&total, None)?;
    }
    Ok(())
}

/// The OpenMetrics text of `snapshot`.
pub fn exposition(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::FanoutLatency;
    use std::time::Duration;

    #[test]
    fn exposition_parses_with_per_shard_labels_and_the_histogram() {
        let shard = |id, messages_out| ShardStats {
            shard: id,
            connections: 2,
            messages_out,
            ..ShardStats::default()
        };
        let mut latency = FanoutLatency::default();
        latency.record(Duration::from_micros(150));
        latency.record(Duration::from_millis(3));
        let text = exposition(Snapshot {
            shards: vec![shard(0, 7), shard(1, 9)],
            namespaces: vec![
                ("default".into(), NamespaceStats::default()),
                (
                    "prices.>".into(),
                    NamespaceStats {
                        deliveries: 12,
                        drops: 0,
                        conflated: 5,
                        slow_consumer_closes: 0,
                    },
                ),
            ],
            tenants: vec![("acme".into(), 3)],
            ingest: IngestStats {
                published_total: 2,
                channels: 1,
                channels_forgotten_total: 6,
                history_messages: 2,
                history_bytes: 200,
                recoveries_total: 0,
                recoveries_failed_total: 0,
                lanes_len: [0; 3],
                shard_queues_len: 0,
                fanout_pending: 0,
                fanout_untracked_total: 0,
                tenant_publishes_refused_total: 4,
                overloaded_refused_total: 8,
                presence_diffs_total: 0,
            },
            api: ApiStats {
                connections: 3,
                header_timeouts_total: 5,
                malformed_requests_total: 6,
                ..ApiStats::default()
            },
            fanout: latency.buckets(),
            cluster: None,
        });
        assert!(
            !text.contains("corecast_cluster_"),
            "a single node shows no cluster families:\n{text}"
        );
        for line in [
            "# TYPE corecast_messages_sent counter",
            "corecast_messages_sent_total{shard=\"0\"} 7",
            "corecast_messages_sent_total{shard=\"1\"} 9",
            "corecast_connections{shard=\"1\"} 2",
            "corecast_published_total 2",
            "# TYPE corecast_channels gauge",
            "corecast_channels 1",
            "# TYPE corecast_channels_forgotten counter",
            "corecast_channels_forgotten_total 6",
            "corecast_tenant_connections{tenant=\"acme\"} 3",
            "corecast_tenant_publishes_refused_total 4",
            "# TYPE corecast_publishes_overloaded counter",
            "corecast_publishes_overloaded_total 8",
            "corecast_namespace_conflated_total{namespace=\"prices.>\"} 5",
            "corecast_namespace_deliveries_total{namespace=\"default\"} 0",
            "corecast_accept_errors_total{shard=\"0\"} 0",
            "corecast_api_connections 3",
            "corecast_api_connections_refused_total 0",
            "corecast_api_malformed_requests_total 6",
            "corecast_api_timeouts_total{phase=\"header\"} 5",
            "corecast_api_timeouts_total{phase=\"idle\"} 0",
            "# TYPE corecast_fanout_latency_seconds histogram",
            "corecast_fanout_latency_seconds_count 2",
            "corecast_fanout_latency_seconds_bucket{le=\"0.0001\"} 0",
            "corecast_fanout_latency_seconds_bucket{le=\"0.0002\"} 1",
            "corecast_fanout_latency_seconds_bucket{le=\"0.002\"} 1",
            "corecast_fanout_latency_seconds_bucket{le=\"0.005\"} 2",
            "corecast_fanout_latency_seconds_bucket{le=\"+Inf\"} 2",
        ] {
            assert!(
                text.lines().any(|got| got == line),
                "no {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("the exposition parses");
        let connections: Vec<_> = scrape
            .samples
            .iter()
            .filter(|sample| sample.metric == "corecast_connections")
            .map(|sample| sample.value.clone())
            .collect();
        assert_eq!(
            connections,
            vec![prometheus_parse::Value::Gauge(2.0); 2],
            "one gauge per shard"
        );
    }

    #[test]
    fn cluster_families_show_the_bridge_state_and_its_refusals() {
        let text = exposition(Snapshot {
            shards: Vec::new(),
            namespaces: Vec::new(),
            tenants: Vec::new(),
            ingest: IngestStats {
                published_total: 0,
                channels: 0,
                channels_forgotten_total: 0,
                history_messages: 0,
                history_bytes: 0,
                recoveries_total: 0,
                recoveries_failed_total: 0,
                lanes_len: [0; 3],
                shard_queues_len: 0,
                fanout_pending: 0,
                fanout_untracked_total: 0,
                tenant_publishes_refused_total: 0,
                overloaded_refused_total: 0,
                presence_diffs_total: 0,
            },
            api: ApiStats::default(),
            fanout: FanoutLatency::default().buckets(),
            cluster: Some(ClusterStats {
                connected: false,
                stalled: true,
                oldest_pending_ms: 1_250,
                publishes_outcome_unknown_total: 2,
                publishes_unavailable_total: 7,
                seq: Some(40),
                nodes: Vec::new(),
            }),
        });
        for line in [
            "# TYPE corecast_cluster_connected gauge",
            "corecast_cluster_connected 0",
            "corecast_cluster_stalled 1",
            "# TYPE corecast_cluster_oldest_pending_seconds gauge",
            "corecast_cluster_oldest_pending_seconds 1.25",
            "# TYPE corecast_cluster_publishes_outcome_unknown counter",
            "corecast_cluster_publishes_outcome_unknown_total 2",
            "corecast_cluster_publishes_unavailable_total 7",
        ] {
            assert!(
                text.lines().any(|got| got == line),
                "no {line:?} in\n{text}"
            );
        }
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("the exposition parses");
    }
}
