//! Fan-out latency: the HDR histogram every shard and the ingest core keep, its percentile
//! summary for `/v1/stats`, and its counts in the buckets `/metrics` shows.
//!
//! The figure is the time from the ingest core accepting a publish (the `Instant` stamped before
//! it is queued for sequencing) to the end of a shard's fan-out loop for it: every matching
//! connection's frame has then either been handed to the kernel with a non-blocking `send()`,
//! or queued in that connection's outbox because its socket was full or frames were already
//! waiting there. A queued frame's later write is not in the figure. A shard records its own
//! figure; the ingest core records, per publish, the slowest of the shards it routed the publish
//! to, once they have all reported (a publish routed to no shard records nothing).
//!
//! Both cores' halves keep one, so it lives beneath them; it is plain single-threaded data that
//! crosses cores only as the [`LatencySummary`] copies in the shards' reports.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency a histogram tells apart, in microseconds: 60 s. Anything slower is
/// recorded as 60 s; a fan-out that slow means a stalled core, and the exact figure no longer
/// matters.
const LATENCY_US_MAX: u64 = 60_000_000;

/// Significant decimal digits the histogram keeps: 3 means every value within 0.1 %, at about
/// 140 KiB per histogram for the range above.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Upper bounds of `corecast_fanout_latency_seconds`'s buckets, in microseconds: 100 µs to 10 s,
/// 1-2-5 per decade. Loopback fan-outs land in the first few; the top ones show stalls.
pub const BUCKET_BOUNDS_US: [u64; 16] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000,
];

/// A fan-out latency histogram, in microseconds, with the exact sum Prometheus wants beside it.
#[derive(Debug, Clone)]
pub struct FanoutLatency {
    histogram: Histogram<u64>,
    sum_us: u64,
}

impl Default for FanoutLatency {
    fn default() -> Self {
        FanoutLatency {
            histogram: Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
                .expect("the bounds are valid constants"),
            sum_us: 0,
        }
    }
}

/// Percentiles of a [`FanoutLatency`], in microseconds, as `/v1/stats` shows them.
/// All zero while `count` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// A histogram in the shape Prometheus wants: the sum in seconds, the count, and for each bound
/// of [`BUCKET_BOUNDS_US`] then `+Inf`, the values in that bucket alone (the encoder makes them
/// cumulative).
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    pub sum_s: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

impl FanoutLatency {
    /// Records one fan-out's `elapsed` time, clamped to `LATENCY_US_MAX` (60 s).
    pub fn record(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .min(LATENCY_US_MAX);
        self.histogram.saturating_record(us);
        self.sum_us += us;
    }

    pub fn summary(&self) -> LatencySummary {
        let histogram = &self.histogram;
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p95: histogram.value_at_quantile(0.95),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }

    /// Reads the histogram's counts into [`BUCKET_BOUNDS_US`]. A recorded value sits in an HDR
    /// bucket of values equal at 3 digits (1 µs wide below 2,048 µs, 4 µs wide around 5 ms); it
    /// is counted under the first bound at or above the highest value of that bucket. So no
    /// value is ever counted under a bound it exceeds, and a value at a bound whose HDR bucket
    /// reaches past it (5 ms and up) is counted in the next bucket up: an error of at most 0.1 %.
    pub fn buckets(&self) -> Buckets {
        let mut counts = [0u64; BUCKET_BOUNDS_US.len() + 1];
        for value in self.histogram.iter_recorded() {
            let highest = value.value_iterated_to();
            let at = BUCKET_BOUNDS_US.partition_point(|&bound| bound < highest);
            counts[at] += value.count_at_value();
        }
        let bounds = BUCKET_BOUNDS_US
            .iter()
            .map(|&bound_us| bound_us as f64 / 1e6)
            .chain([f64::INFINITY]);
        Buckets {
            sum_s: self.sum_us as f64 / 1e6,
            count: self.histogram.len(),
            buckets: bounds.zip(counts).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(buckets: &Buckets) -> Vec<u64> {
        buckets.buckets.iter().map(|(_, count)| *count).collect()
    }

    #[test]
    fn empty_histogram_has_empty_buckets_and_zero_summary() {
        let latency = FanoutLatency::default();
        let buckets = latency.buckets();
        assert_eq!(buckets.count, 0);
        assert_eq!(buckets.sum_s, 0.0);
        assert_eq!(counts(&buckets), vec![0; BUCKET_BOUNDS_US.len() + 1]);
        assert_eq!(buckets.buckets.last().unwrap().0, f64::INFINITY);
        assert_eq!(latency.summary(), LatencySummary::default());
    }

    #[test]
    fn values_land_in_the_first_bucket_at_or_above_them() {
        let mut latency = FanoutLatency::default();
        for us in [0, 40, 100, 101, 199, 4_999, 5_000, 9_000_000, 11_000_000] {
            latency.record(Duration::from_micros(us));
        }
        let buckets = latency.buckets();
        let mut expected = vec![0u64; BUCKET_BOUNDS_US.len() + 1];
        expected[0] = 3; // 0, 40, 100 <= 100 µs
        expected[1] = 2; // 101, 199 <= 200 µs
        expected[5] = 1; // 4,999 <= 5 ms
        expected[6] = 1; // 5,000 shares its HDR bucket with 5,001-5,003: the 10 ms one
        expected[15] = 1; // 9 s <= 10 s
        expected[16] = 1; // 11 s: +Inf
        assert_eq!(counts(&buckets), expected);
        assert_eq!(buckets.count, 9);
        let sum_us = 40 + 100 + 101 + 199 + 4_999 + 5_000 + 9_000_000 + 11_000_000;
        assert!((buckets.sum_s - sum_us as f64 / 1e6).abs() < 1e-9);
        assert_eq!(buckets.buckets[0].0, 0.0001);
        assert_eq!(buckets.buckets[15].0, 10.0);
    }

    #[test]
    fn a_value_just_above_a_bound_is_never_counted_below_it() {
        let mut latency = FanoutLatency::default();
        // 3 digits: values from 4,096 µs up are kept in steps of 4 µs, so 5,001 shares
        // 5,000's HDR bucket [5,000, 5,003] and must not be counted under 5 ms.
        latency.record(Duration::from_micros(5_001));
        let counts = counts(&latency.buckets());
        assert_eq!((counts[5], counts[6]), (0, 1));
    }

    #[test]
    fn slow_values_clamp_to_the_histogram_range() {
        let mut latency = FanoutLatency::default();
        latency.record(Duration::from_secs(3_600));
        let summary = latency.summary();
        assert_eq!(summary.count, 1);
        assert!(summary.max >= LATENCY_US_MAX && summary.max <= LATENCY_US_MAX * 1001 / 1000);
        assert_eq!(counts(&latency.buckets())[16], 1);
    }

    #[test]
    fn summary_reports_percentiles_in_microseconds() {
        let mut latency = FanoutLatency::default();
        for us in 1..=1_000 {
            latency.record(Duration::from_micros(us));
        }
        let summary = latency.summary();
        assert_eq!(
            summary,
            LatencySummary {
                count: 1_000,
                p50: 500,
                p95: 950,
                p99: 990,
                p999: 999,
                max: 1_000,
            }
        );
    }
}
