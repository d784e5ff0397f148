//! The bench's result: one flat record printed as a table on stdout and written as JSON.
//!
//! Owns the report's field names (units last) and both renderings, so the table and the JSON
//! can never disagree. It never measures anything: the figures come from the recorder and the
//! host probes.

use std::io::Write;

use serde::Serialize;

use crate::recorder::Summary;

/// Everything a run reports. Optional fields are left out of the JSON when not measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was measured: the server `--ws` names (its URL), or `floor-write` for the floor
    /// server of `--baseline`.
    pub target: String,
    pub subscribers: u64,
    pub events: u64,
    pub warmup_events: u64,
    pub payload_bytes: u64,
    pub interval_ms: u64,
    /// The CPU the bench's threads were pinned to, when `--cpu` named one: the report of a
    /// single receive thread, as before `--cpu` took a list. Absent when unbound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bench_cpu: Option<usize>,
    /// The CPUs of the bench's receive threads, one each, when `--cpu` named more than one
    /// (the publisher ran on the first). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bench_cpus: Option<Vec<usize>>,
    pub connect_time_ms: u64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub latency_us_p50: u64,
    pub latency_us_p90: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
    pub fanout_completion_us_p50: u64,
    pub fanout_completion_us_p99: u64,
    pub fanout_completion_us_max: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// CPU time of the bench during the measured phase, per delivery: the whole process, less
    /// the floor server's thread with `--baseline`.
    pub bench_cpu_per_delivery_ns: u64,
    /// CPU time of the server during the measured phase, per delivery: the process
    /// `--server-pid` names, or the floor server's thread with `--baseline`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_per_delivery_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_kib_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_kib_idle: Option<u64>,
    /// Signed: the server may hand memory back between the two readings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_per_conn_bytes: Option<i64>,
    /// Fan-out completion p50 over the plain-write floor's, measured in the same
    /// `--baseline` or `--compare` run (see `set_ratios`); absent in a run of one target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout_p50_vs_floor_write: Option<f64>,
    /// Fan-out completion p99 over the plain-write floor's, in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout_p99_vs_floor_write: Option<f64>,
    /// Fan-out completion p50 over the io_uring floor's, in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout_p50_vs_floor_uring: Option<f64>,
}

/// What the run was asked to do, for the report's first fields.
#[derive(Debug, Clone)]
pub struct Load {
    pub subscribers: u64,
    pub events: u64,
    pub warmup_events: u64,
    pub payload_bytes: u64,
    pub interval_ms: u64,
    /// The CPUs of `--cpu`, one receive thread each; empty when unpinned (one thread).
    pub bench_cpus: Vec<usize>,
}

/// CPU time spent during the measured phase, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub bench_cpu_ns: u64,
    /// Absent for a server without `--server-pid`.
    pub server_cpu_ns: Option<u64>,
}

/// The server's resident memory at two points of the run, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct ServerRss {
    /// Before the first connection.
    pub before_kib: u64,
    /// With every subscriber connected, before the first publish.
    pub idle_kib: u64,
}

impl Report {
    pub fn new(
        target: String,
        load: Load,
        connect_time_ms: u64,
        summary: &Summary,
        cost: Cost,
        rss: Option<ServerRss>,
    ) -> Self {
        let per_delivery = |cpu_ns: u64| cpu_ns.checked_div(summary.deliveries).unwrap_or(0);
        let per_conn_bytes = rss.and_then(|rss| {
            let idle = i64::try_from(rss.idle_kib).ok()?;
            let before = i64::try_from(rss.before_kib).ok()?;
            Some((idle - before) * 1024 / i64::try_from(load.subscribers).ok()?)
        });
        Self {
            target,
            subscribers: load.subscribers,
            events: load.events,
            warmup_events: load.warmup_events,
            payload_bytes: load.payload_bytes,
            interval_ms: load.interval_ms,
            bench_cpu: match load.bench_cpus[..] {
                [cpu] => Some(cpu),
                _ => None,
            },
            bench_cpus: (load.bench_cpus.len() > 1).then(|| load.bench_cpus.clone()),
            connect_time_ms,
            deliveries: summary.deliveries,
            deliveries_per_s: (summary.deliveries_per_s * 10.0).round() / 10.0,
            latency_us_p50: summary.latency_us_p50,
            latency_us_p90: summary.latency_us_p90,
            latency_us_p99: summary.latency_us_p99,
            latency_us_p999: summary.latency_us_p999,
            latency_us_max: summary.latency_us_max,
            fanout_completion_us_p50: summary.fanout_completion_us_p50,
            fanout_completion_us_p99: summary.fanout_completion_us_p99,
            fanout_completion_us_max: summary.fanout_completion_us_max,
            lost: summary.lost,
            duplicated: summary.duplicated,
            out_of_order: summary.out_of_order,
            bench_cpu_per_delivery_ns: per_delivery(cost.bench_cpu_ns),
            server_cpu_per_delivery_ns: cost.server_cpu_ns.map(per_delivery),
            server_rss_kib_before: rss.map(|rss| rss.before_kib),
            server_rss_kib_idle: rss.map(|rss| rss.idle_kib),
            server_rss_per_conn_bytes: per_conn_bytes,
            fanout_p50_vs_floor_write: None,
            fanout_p99_vs_floor_write: None,
            fanout_p50_vs_floor_uring: None,
        }
    }

    /// Sets the ratios of this report's fan-out completion to the floors' of the same run,
    /// rounded to two decimals; a floor that was not measured, or measured as 0, leaves its
    /// ratios out.
    pub fn set_ratios(&mut self, floor_write: Option<&Report>, floor_uring: Option<&Report>) {
        fn ratio(value: u64, floor: u64) -> Option<f64> {
            (floor > 0).then(|| (value as f64 / floor as f64 * 100.0).round() / 100.0)
        }
        self.fanout_p50_vs_floor_write = floor_write.and_then(|floor| {
            ratio(
                self.fanout_completion_us_p50,
                floor.fanout_completion_us_p50,
            )
        });
        self.fanout_p99_vs_floor_write = floor_write.and_then(|floor| {
            ratio(
                self.fanout_completion_us_p99,
                floor.fanout_completion_us_p99,
            )
        });
        self.fanout_p50_vs_floor_uring = floor_uring.and_then(|floor| {
            ratio(
                self.fanout_completion_us_p50,
                floor.fanout_completion_us_p50,
            )
        });
    }

    /// Whether every expected delivery arrived exactly once and in order.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
    }

    /// Every measured field as (JSON name, rendered value), in JSON field order.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("target", self.target.clone()),
            ("subscribers", self.subscribers.to_string()),
            ("events", self.events.to_string()),
            ("warmup_events", self.warmup_events.to_string()),
            ("payload_bytes", self.payload_bytes.to_string()),
            ("interval_ms", self.interval_ms.to_string()),
        ];
        if let Some(cpu) = self.bench_cpu {
            fields.push(("bench_cpu", cpu.to_string()));
        }
        if let Some(cpus) = &self.bench_cpus {
            let list = serde_json::to_string(cpus).expect("a list of numbers serializes");
            fields.push(("bench_cpus", list));
        }
        fields.extend([
            ("connect_time_ms", self.connect_time_ms.to_string()),
            ("deliveries", self.deliveries.to_string()),
            ("deliveries_per_s", format!("{:.1}", self.deliveries_per_s)),
            ("latency_us_p50", self.latency_us_p50.to_string()),
            ("latency_us_p90", self.latency_us_p90.to_string()),
            ("latency_us_p99", self.latency_us_p99.to_string()),
            ("latency_us_p999", self.latency_us_p999.to_string()),
            ("latency_us_max", self.latency_us_max.to_string()),
            (
                "fanout_completion_us_p50",
                self.fanout_completion_us_p50.to_string(),
            ),
            (
                "fanout_completion_us_p99",
                self.fanout_completion_us_p99.to_string(),
            ),
            (
                "fanout_completion_us_max",
                self.fanout_completion_us_max.to_string(),
            ),
            ("lost", self.lost.to_string()),
            ("duplicated", self.duplicated.to_string()),
            ("out_of_order", self.out_of_order.to_string()),
            (
                "bench_cpu_per_delivery_ns",
                self.bench_cpu_per_delivery_ns.to_string(),
            ),
        ]);
        let measured = [
            (
                "server_cpu_per_delivery_ns",
                self.server_cpu_per_delivery_ns.map(|ns| ns.to_string()),
            ),
            (
                "server_rss_kib_before",
                self.server_rss_kib_before.map(|kib| kib.to_string()),
            ),
            (
                "server_rss_kib_idle",
                self.server_rss_kib_idle.map(|kib| kib.to_string()),
            ),
            (
                "server_rss_per_conn_bytes",
                self.server_rss_per_conn_bytes
                    .map(|bytes| bytes.to_string()),
            ),
            (
                "fanout_p50_vs_floor_write",
                self.fanout_p50_vs_floor_write
                    .map(|ratio| ratio.to_string()),
            ),
            (
                "fanout_p99_vs_floor_write",
                self.fanout_p99_vs_floor_write
                    .map(|ratio| ratio.to_string()),
            ),
            (
                "fanout_p50_vs_floor_uring",
                self.fanout_p50_vs_floor_uring
                    .map(|ratio| ratio.to_string()),
            ),
        ];
        fields.extend(
            measured
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?))),
        );
        fields
    }

    /// Writes the report as a two-column table, one field a line, in JSON field order.
    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let fields = self.fields();
        let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        for (name, value) in &fields {
            writeln!(out, "{name:<width$}  {value}")?;
        }
        Ok(())
    }

    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).expect("a report serializes");
        text.push('\n');
        std::fs::write(path, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            deliveries: 10,
            deliveries_per_s: 1234.56,
            latency_us_p50: 1,
            latency_us_p90: 2,
            latency_us_p99: 3,
            latency_us_p999: 4,
            latency_us_max: 5,
            fanout_completion_us_p50: 6,
            fanout_completion_us_p99: 7,
            fanout_completion_us_max: 8,
            lost: 0,
            duplicated: 0,
            out_of_order: 0,
            foreign_frames: 0,
        }
    }

    fn load() -> Load {
        Load {
            subscribers: 2,
            events: 5,
            warmup_events: 1,
            payload_bytes: 100,
            interval_ms: 20,
            bench_cpus: Vec::new(),
        }
    }

    const TARGET: &str = "floor-write";

    const BENCH_ONLY: Cost = Cost {
        bench_cpu_ns: 50_000,
        server_cpu_ns: None,
    };

    const WITH_SERVER: Cost = Cost {
        bench_cpu_ns: 50_000,
        server_cpu_ns: Some(30_000),
    };

    #[test]
    fn cpu_cost_is_per_delivery() {
        let report = Report::new(TARGET.into(), load(), 7, &summary(), WITH_SERVER, None);
        assert_eq!(report.bench_cpu_per_delivery_ns, 5_000);
        assert_eq!(report.server_cpu_per_delivery_ns, Some(3_000));
        let mut nothing = summary();
        nothing.deliveries = 0;
        let report = Report::new(TARGET.into(), load(), 7, &nothing, WITH_SERVER, None);
        assert_eq!(report.bench_cpu_per_delivery_ns, 0);
    }

    #[test]
    fn one_bench_cpu_is_reported_as_before_and_several_as_a_list() {
        let report_on = |cpus: Vec<usize>| {
            let mut load = load();
            load.bench_cpus = cpus;
            let report = Report::new(TARGET.into(), load, 7, &summary(), BENCH_ONLY, None);
            serde_json::to_value(report).unwrap()
        };
        let one = report_on(vec![3]);
        assert_eq!(one["bench_cpu"], 3);
        assert!(one.get("bench_cpus").is_none());
        let several = report_on(vec![8, 9, 10]);
        assert!(several.get("bench_cpu").is_none());
        assert_eq!(several["bench_cpus"], serde_json::json!([8, 9, 10]));
    }

    #[test]
    fn server_fields_appear_only_when_measured() {
        let without = serde_json::to_value(Report::new(
            TARGET.into(),
            load(),
            7,
            &summary(),
            BENCH_ONLY,
            None,
        ))
        .unwrap();
        assert!(without.get("server_rss_kib_before").is_none());
        assert!(without.get("server_cpu_per_delivery_ns").is_none());
        assert!(without.get("bench_cpu").is_none());
        assert!(without.get("bench_cpus").is_none());
        assert_eq!(without["deliveries_per_s"], 1234.6);
        let rss = ServerRss {
            before_kib: 1_000,
            idle_kib: 1_010,
        };
        let with = serde_json::to_value(Report::new(
            TARGET.into(),
            load(),
            7,
            &summary(),
            WITH_SERVER,
            Some(rss),
        ))
        .unwrap();
        assert_eq!(with["server_cpu_per_delivery_ns"], 3_000);
        assert_eq!(with["server_rss_kib_before"], 1_000);
        assert_eq!(with["server_rss_kib_idle"], 1_010);
        assert_eq!(with["server_rss_per_conn_bytes"], 5_120);
    }

    #[test]
    fn table_lists_every_field_in_order() {
        let mut table = Vec::new();
        Report::new(TARGET.into(), load(), 7, &summary(), BENCH_ONLY, None)
            .write_table(&mut table)
            .unwrap();
        let table = String::from_utf8(table).unwrap();
        let width = "bench_cpu_per_delivery_ns".len();
        let first: Vec<&str> = table.lines().take(3).collect();
        assert_eq!(
            first,
            [
                format!("{:<width$}  floor-write", "target"),
                format!("{:<width$}  2", "subscribers"),
                format!("{:<width$}  5", "events")
            ]
        );
        assert!(table.contains(&format!("\n{:<width$}  4\n", "latency_us_p999")));
        assert_eq!(table.lines().count(), 21);
    }

    #[test]
    fn ratios_are_to_the_floors_of_the_same_run() {
        let floor = Report::new(TARGET.into(), load(), 7, &summary(), BENCH_ONLY, None);
        let mut slower = summary();
        slower.fanout_completion_us_p50 = 9;
        slower.fanout_completion_us_p99 = 21;
        let mut report = Report::new("corecast".into(), load(), 7, &slower, BENCH_ONLY, None);
        report.set_ratios(Some(&floor), None);
        assert_eq!(report.fanout_p50_vs_floor_write, Some(1.5));
        assert_eq!(report.fanout_p99_vs_floor_write, Some(3.0));
        assert_eq!(report.fanout_p50_vs_floor_uring, None);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["fanout_p50_vs_floor_write"], 1.5);
        assert!(json.get("fanout_p50_vs_floor_uring").is_none());
        let mut zero = floor.clone();
        zero.fanout_completion_us_p50 = 0;
        report.set_ratios(Some(&zero), Some(&floor));
        assert_eq!(report.fanout_p50_vs_floor_write, None);
        assert_eq!(report.fanout_p50_vs_floor_uring, Some(1.5));
    }

    #[test]
    fn table_and_json_name_the_same_fields() {
        let rss = ServerRss {
            before_kib: 1,
            idle_kib: 2,
        };
        let mut load = load();
        load.bench_cpus = vec![1];
        let mut several = self::load();
        several.bench_cpus = vec![0, 2, 3];
        for report in [
            Report::new(TARGET.into(), load, 7, &summary(), WITH_SERVER, Some(rss)),
            Report::new(TARGET.into(), self::load(), 7, &summary(), BENCH_ONLY, None),
            Report::new(TARGET.into(), several, 7, &summary(), BENCH_ONLY, None),
        ] {
            let json = serde_json::to_string(&report).unwrap();
            let fields = report.fields();
            let mut at = 0;
            for (name, value) in &fields {
                // The one text field is a JSON string; the others are numbers.
                let value = if *name == "target" {
                    serde_json::to_string(value).unwrap()
                } else {
                    value.clone()
                };
                let entry = format!("\"{name}\":{value}");
                let found = json[at..]
                    .find(&entry)
                    .unwrap_or_else(|| panic!("{entry} in {json}"));
                at += found + entry.len();
            }
            let keys = serde_json::from_str::<serde_json::Value>(&json).unwrap();
            assert_eq!(keys.as_object().unwrap().len(), fields.len());
        }
    }
}
