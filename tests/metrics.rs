//! Pins down the observability figures: after a known number of publishes and deliveries,
//! `/v1/stats` and `GET /metrics` report exactly those counts, the fan-out latency histograms
//! (overall and per shard) count exactly one entry per publish, and the `/metrics` text parses
//! with a real Prometheus parser (`prometheus-parse`) into cumulative buckets ending at `+Inf`.
//! A real `corecast` binary with two shards, real WebSocket clients, exact comparisons. And that
//! the Grafana dashboard (`tuning/grafana/corecast.json`) queries only metric names a real
//! server's `/metrics` exposes (cluster mode included), through its data source variable, so it
//! cannot rot when a metric is renamed.

mod common;

use common::{assert_message, watchdog, Client, Server};
use prometheus_parse::{Sample, Scrape, Value as PromValue};
use serde_json::{json, Value};

/// Publishes in the test: enough to fill several latency buckets' worth of samples.
const PUBLISHES: u64 = 25;

/// The fewest subscribers connected, and the most tried while waiting for both shards to get
/// one (the kernel spreads connections over the two `SO_REUSEPORT` listeners by hash).
const SUBSCRIBERS_MIN: usize = 4;
const SUBSCRIBERS_TRIED_MAX: usize = 32;

/// Frames every subscriber is sent: `connected`, `subscribed`, then one per publish.
const FRAMES_PER_SUBSCRIBER: u64 = 2 + PUBLISHES;

fn shard_entry(stats: &Value, shard: u64) -> &Value {
    stats["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("expected {{\"shards\":[..]}} in {stats}"))
        .iter()
        .find(|entry| entry["shard"] == shard)
        .unwrap_or_else(|| panic!("expected shard {shard} in {stats}"))
}

/// Asserts a `fanout_latency_us` object has exactly the summary's keys, `count` as given and
/// ordered percentiles.
fn assert_summary(summary: &Value, count: u64, what: &str) {
    let field = |key: &str| {
        summary[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: expected an integer {key} in {summary}"))
    };
    assert_eq!(
        summary,
        &json!({
            "count": count, "p50": field("p50"), "p95": field("p95"), "p99": field("p99"),
            "p999": field("p999"), "max": field("max"),
        }),
        "{what}: expected exactly count, p50, p95, p99, p999 and max"
    );
    let ordered = [
        field("p50"),
        field("p95"),
        field("p99"),
        field("p999"),
        field("max"),
    ];
    assert!(
        ordered.windows(2).all(|pair| pair[0] <= pair[1]),
        "{what}: expected percentiles in order, got {summary}"
    );
    if count > 0 {
        assert!(
            field("max") > 0,
            "{what}: a fan-out takes time, got {summary}"
        );
    }
}

/// The one sample named `metric` (with `shard` = `shard` when given).
fn sample<'a>(scrape: &'a Scrape, metric: &str, shard: Option<u64>) -> &'a Sample {
    let shard = shard.map(|shard| shard.to_string());
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == metric && sample.labels.get("shard") == shard.as_deref())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {metric} sample for shard {shard:?}, got {found:?}"
    );
    found[0]
}

fn number(scrape: &Scrape, metric: &str, shard: Option<u64>) -> u64 {
    let value = match sample(scrape, metric, shard).value {
        PromValue::Counter(value) | PromValue::Gauge(value) | PromValue::Untyped(value) => value,
        ref other => panic!("expected {metric} to be a plain number, got {other:?}"),
    };
    assert_eq!(value.fract(), 0.0, "expected {metric} to be a whole number");
    value as u64
}

#[tokio::test]
async fn stats_and_metrics_count_publishes_deliveries_and_fanout_latency_exactly() {
    watchdog(async {
        // No heartbeat pings during the test: every frame sent is one the test counts.
        let server = Server::start(&["--heartbeat-s", "3600", "--idle-timeout-s", "7200"]).await;
        let channel = "fanout.all";
        let mut clients: Vec<Client> = Vec::new();
        for tried in 1..=SUBSCRIBERS_TRIED_MAX {
            let mut client = Client::connect(&server).await;
            client.subscribe(channel, 1).await;
            clients.push(client);
            let on = |shard| clients.iter().any(|client| client.shard() == shard);
            if tried >= SUBSCRIBERS_MIN && on(0) && on(1) {
                break;
            }
        }
        let per_shard: Vec<u64> = (0..2)
            .map(|shard| clients.iter().filter(|c| c.shard() == shard).count() as u64)
            .collect();
        let landed = |shard: u64| per_shard[shard as usize];
        let subscribers = clients.len() as u64;

        let datas: Vec<Value> = (0..PUBLISHES).map(|n| json!({"n": n})).collect();
        let offsets = server.publish_many(channel, datas.clone()).await;
        for client in &mut clients {
            for (offset, data) in offsets.iter().zip(&datas) {
                assert_message(&client.recv().await, channel, *offset, data);
            }
        }

        let frames = subscribers * FRAMES_PER_SUBSCRIBER;
        let sum = |stats: &Value, key: &str| -> u64 {
            (0..2)
                .map(|shard| shard_entry(stats, shard)[key].as_u64().unwrap_or(0))
                .sum()
        };
        let stats = server
            .poll_json("/v1/stats", |stats| {
                stats["fanout_latency_us"]["count"] == PUBLISHES
                    && sum(stats, "messages_out") == frames
            })
            .await;
        assert_eq!(stats["ingest"]["published_total"], PUBLISHES, "in {stats}");
        assert_eq!(
            sum(&stats, "messages_out"),
            frames,
            "every frame sent, in {stats}"
        );
        assert_eq!(
            stats["ingest"]["fanout_pending"], 0,
            "no report missing, in {stats}"
        );
        assert_eq!(stats["ingest"]["fanout_untracked_total"], 0, "in {stats}");
        assert_summary(&stats["fanout_latency_us"], PUBLISHES, "overall");
        for shard in 0..2 {
            let entry = shard_entry(&stats, shard);
            let expected = if landed(shard) > 0 { PUBLISHES } else { 0 };
            assert_summary(
                &entry["fanout_latency_us"],
                expected,
                &format!("shard {shard}"),
            );
            assert_eq!(
                entry["messages_out"],
                landed(shard) * FRAMES_PER_SUBSCRIBER,
                "{entry}"
            );
            assert_eq!(entry["connections"], landed(shard), "{entry}");
            assert_eq!(entry["subscriptions"], landed(shard), "{entry}");
            assert_eq!(entry["drops"], 0, "{entry}");
            assert_eq!(
                (&entry["outbox_frames"], &entry["outbox_bytes"]),
                (&json!(0), &json!(0)),
                "every frame was read, so no outbox holds any: {entry}"
            );
        }

        let reply = server.get("/metrics").await;
        assert_eq!(
            reply.status, 200,
            "expected 200 from GET /metrics, got {reply:?}"
        );
        assert!(
            reply.body.ends_with("# EOF\n"),
            "expected the OpenMetrics end marker, got {:?}",
            reply.body
        );
        let lines = reply.body.lines().map(|line| Ok(line.to_string()));
        let scrape = Scrape::parse(lines).expect("the Prometheus parser reads /metrics");
        // The counters did not move since /v1/stats: nothing was sent in between.
        assert_eq!(number(&scrape, "corecast_published_total", None), PUBLISHES);
        for shard in 0..2 {
            let entry = shard_entry(&stats, shard);
            let same = |metric: &str, key: &str| {
                assert_eq!(
                    json!(number(&scrape, metric, Some(shard))),
                    entry[key],
                    "expected {metric}{{shard=\"{shard}\"}} to equal /v1/stats' {key}"
                );
            };
            same("corecast_messages_sent_total", "messages_out");
            same("corecast_bytes_sent_total", "bytes_out");
            same("corecast_connections", "connections");
            same("corecast_subscriptions", "subscriptions");
            same("corecast_drops_total", "drops");
            same(
                "corecast_slow_consumer_closes_total",
                "slow_consumer_closes",
            );
            same(
                "corecast_rate_limited_messages_total",
                "rate_limited_messages",
            );
            same("corecast_rate_limit_closes_total", "rate_limit_closes");
            same(
                "corecast_connections_accepted_total",
                "connections_accepted",
            );
            same("corecast_connections_refused_total", "connections_refused");
            assert_eq!(
                number(&scrape, "corecast_messages_sent_total", Some(shard)),
                landed(shard) * FRAMES_PER_SUBSCRIBER
            );
            assert!(matches!(
                sample(&scrape, "corecast_connections", Some(shard)).value,
                PromValue::Gauge(_)
            ));
            number(&scrape, "corecast_ingest_queue_length", Some(shard));
        }

        let latency = "corecast_fanout_latency_seconds";
        assert_eq!(
            number(&scrape, &format!("{latency}_count"), None),
            PUBLISHES
        );
        let PromValue::Histogram(ref buckets) = sample(&scrape, latency, None).value else {
            panic!("expected {latency} to parse as a histogram");
        };
        let bounds: Vec<f64> = buckets.iter().map(|bucket| bucket.less_than).collect();
        let mut expected_bounds: Vec<f64> = [1, 2, 5]
            .iter()
            .flat_map(|m| (0..5).map(move |e| f64::from(*m) * 10f64.powi(e - 4)))
            .chain([10.0])
            .collect();
        expected_bounds.sort_by(f64::total_cmp);
        expected_bounds.push(f64::INFINITY);
        assert_eq!(bounds.len(), expected_bounds.len(), "bounds {bounds:?}");
        for (got, expected) in bounds.iter().zip(&expected_bounds) {
            assert!(
                (got - expected).abs() <= expected * 1e-9 || got == expected,
                "expected bucket bounds {expected_bounds:?}, got {bounds:?}"
            );
        }
        let counts: Vec<f64> = buckets.iter().map(|bucket| bucket.count).collect();
        assert!(
            counts.windows(2).all(|pair| pair[0] <= pair[1]),
            "expected cumulative buckets, got {counts:?}"
        );
        assert_eq!(
            counts.last(),
            Some(&(PUBLISHES as f64)),
            "+Inf counts every publish"
        );
    })
    .await
}

#[tokio::test]
async fn sys_stats_is_published_every_interval_to_its_own_subscribers_only() {
    watchdog(async {
        let server = Server::start(&["--sys-stats-interval-ms", "200"]).await;
        let mut watcher = Client::connect(&server).await;
        watcher.subscribe("$sys.stats", 1).await;
        let mut firehose = Client::connect(&server).await;
        firehose.subscribe(">", 1).await;
        let mut others = Vec::new();
        for _ in 0..3 {
            others.push(Client::connect(&server).await);
        }
        // The watcher, the firehose and the three others: five connections.
        let tick = loop {
            let message = watcher.recv().await;
            assert_eq!(message["channel"], "$sys.stats", "{message}");
            if message["data"]["connections"] == 5 {
                break message;
            }
        };
        let data = &tick["data"];
        assert_eq!(data["interval_ms"], 200, "{data}");
        assert_eq!(data["epoch"], watcher.hello["epoch"], "{data}");
        let shards = data["shards"].as_array().expect("shards");
        assert_eq!(shards.len(), 2, "{data}");
        let per_shard: u64 = shards
            .iter()
            .map(|shard| shard["connections"].as_u64().unwrap())
            .sum();
        assert_eq!(per_shard, 5, "{data}");
        for key in ["deliveries_per_s", "published_per_s"] {
            assert!(data[key].is_f64() || data[key].is_u64(), "{key} in {data}");
        }
        assert!(data["fanout_latency_us"]["p99"].is_u64(), "{data}");
        assert_eq!(data["namespaces"][0]["namespace"], "default", "{data}");
        firehose
            .expect_silence("`>` does not match the server's $sys channels")
            .await;

        let refused = server
            .post(
                "/v1/publish",
                &json!({"channel": "$sys.stats", "data": 1}).to_string(),
            )
            .await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert_eq!(
            common::assert_http_error_body(&refused, "publish to $sys"),
            "forbidden"
        );
    })
    .await
}

/// The Grafana dashboard, as shipped.
const DASHBOARD: &str = include_str!("../tuning/grafana/corecast.json");

/// Every string under a `key` of `keys` anywhere in `value`: the dashboard's queries.
fn strings_under<'a>(value: &'a Value, keys: &[&str], found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match inner.as_str() {
                    Some(text) if keys.contains(&key.as_str()) => found.push(text),
                    _ => strings_under(inner, keys, found),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| strings_under(item, keys, found)),
        _ => {}
    }
}

/// The metric names a query names: words that start with `corecast_`.
fn metric_names(query: &str) -> Vec<&str> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    query
        .match_indices("corecast_")
        .filter(|(at, _)| !query[..*at].ends_with(is_name))
        .map(|(at, _)| {
            let rest = &query[at..];
            &rest[..rest.find(|c: char| !is_name(c)).unwrap_or(rest.len())]
        })
        .collect()
}

/// The sample names `/metrics` text exposes: those of its sample lines, and, for a family with
/// no series yet (`corecast_tenant_connections` before any tenant connects), those its
/// `# TYPE` line implies (`_total` for a counter, `_bucket`, `_count`, `_sum` for a histogram).
fn exposed_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(descriptor) = line.strip_prefix("# TYPE ") {
            let (family, kind) = descriptor.split_once(' ').expect("# TYPE name kind");
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|suffix| format!("{family}{suffix}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).expect("a sample line has a value");
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[tokio::test]
async fn grafana_dashboard_queries_only_metrics_the_server_exposes() {
    watchdog(async {
        let dashboard: Value =
            serde_json::from_str(DASHBOARD).expect("tuning/grafana/corecast.json is JSON");
        // Importable anywhere: the data source is a variable, never a uid of one Grafana.
        let variables = dashboard["templating"]["list"]
            .as_array()
            .expect("a templating list");
        assert!(
            variables
                .iter()
                .any(|variable| variable["name"] == "datasource"
                    && variable["type"] == "datasource"
                    && variable["query"] == "prometheus"),
            "expected a Prometheus data source variable named datasource"
        );
        let panels = dashboard["panels"].as_array().expect("a panels list");
        let mut ids: Vec<u64> = panels
            .iter()
            .map(|panel| panel["id"].as_u64().expect("a panel id"))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), panels.len(), "expected unique panel ids");
        let queried: Vec<&Value> = panels
            .iter()
            .filter(|panel| panel["type"] != "row")
            .collect();
        for &panel in &queried {
            let targets = panel["targets"].as_array().expect("a panel has targets");
            assert!(
                !targets.is_empty(),
                "expected queries in {}",
                panel["title"]
            );
            for source in std::iter::once(panel).chain(targets) {
                assert_eq!(
                    source["datasource"]["uid"], "${datasource}",
                    "expected {} to query the data source variable",
                    panel["title"]
                );
            }
        }
        let mut queries = Vec::new();
        strings_under(&dashboard, &["expr", "query", "definition"], &mut queries);
        let named: std::collections::BTreeSet<&str> = queries
            .iter()
            .flat_map(|query| metric_names(query))
            .collect();
        assert!(
            named.len() >= 30,
            "expected the dashboard to chart the metric families, it names {named:?}"
        );

        // Cluster mode with its Redis unreachable: the `corecast_cluster_*` families show too.
        let unreachable = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("its address");
        let redis = format!("redis://{unreachable}");
        let server = Server::start(&["--redis", &redis]).await;
        let reply = server.get("/metrics").await;
        assert_eq!(
            reply.status, 200,
            "expected 200 from GET /metrics, got {reply:?}"
        );
        let exposed = exposed_names(&reply.body);
        let missing: Vec<&&str> = named
            .iter()
            .filter(|name| !exposed.contains(**name))
            .collect();
        assert!(
            missing.is_empty(),
            "the dashboard queries {missing:?}, which /metrics does not expose; it exposes \
             {exposed:?}"
        );
    })
    .await
}
