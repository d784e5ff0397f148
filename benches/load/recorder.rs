//! What the bench remembers about deliveries: the latency histogram, per-event receive counts
//! and last receive times, and the loss/duplicate/order counters.
//!
//! Owns every figure the report is computed from. Each receive thread has one of its own, for
//! its own connections, and every connection reaches it through a shared reference, so it uses
//! `Cell`/`RefCell` and never an atomic or a lock; the threads' recorders are merged into one
//! after the run (see `merge`), and the report is computed from that. Recording a delivery must never allocate: everything is sized at start
//! (one slot per event, a histogram with fixed bounds), because a bench that is slower per
//! received message than the server is per sent message measures itself.

use std::cell::{Cell, RefCell};

use hdrhistogram::Histogram;

use crate::wire::Delivery;

/// Highest latency the histogram resolves, in microseconds (one hour); a larger value is
/// recorded as this. Fixed bounds keep `record` from ever resizing the histogram.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Significant decimal digits the histogram keeps: 3 means values within 0.1%.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Points per halving of the distance to the 100th percentile in the latency CDF: 8 gives
/// about 8 points between p50 and p75, and as many between p99 and p99.5, so the tail is drawn
/// as finely as the body (about 200 points for a million deliveries).
const CDF_TICKS_PER_HALF_DISTANCE: u32 = 8;

/// Most points in the fan-out completion CDF (one per event at most).
const CDF_POINTS_MAX: usize = 1_000;

/// One published event as seen by the receivers.
#[derive(Default)]
struct EventSlot {
    /// `t_us` carried by the event, microseconds since the UNIX epoch.
    sent_us: Cell<u64>,
    /// Receive time of the latest delivery so far, microseconds since the UNIX epoch.
    last_receive_us: Cell<u64>,
    /// Deliveries received, duplicates included.
    receive_count: Cell<u64>,
}

/// Per-connection ordering state: the highest `seq` this connection has received.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnOrder {
    last_seq: Option<u64>,
}

/// Delivery figures of one run. Events `0..warmup_events` are warm-up: they are counted only
/// to tell when warm-up is over and never appear in the summary.
pub struct Recorder {
    subscribers: u64,
    warmup_events: u64,
    latency_us: RefCell<Histogram<u64>>,
    events: Box<[EventSlot]>,
    /// Deliveries of measured events, duplicates included.
    deliveries: Cell<u64>,
    /// Measured deliveries whose `seq` equals the connection's previous one.
    duplicated: Cell<u64>,
    /// Measured deliveries whose `seq` is below the connection's previous one.
    out_of_order: Cell<u64>,
    /// Text frames that are not a delivery of one of this run's events.
    foreign_frames: Cell<u64>,
    /// Every frame handed to the recorder, to tell progress from a stall.
    frames: Cell<u64>,
}

/// The delivery figures of a run, as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
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
    pub foreign_frames: u64,
}

impl Recorder {
    /// A recorder for `subscribers` connections and `warmup_events + events` events.
    pub fn new(subscribers: u64, warmup_events: u64, events: u64) -> Self {
        let latency_us = Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        let slots = usize::try_from(warmup_events + events).expect("event count fits in memory");
        Self {
            subscribers,
            warmup_events,
            latency_us: RefCell::new(latency_us),
            events: (0..slots).map(|_| EventSlot::default()).collect(),
            deliveries: Cell::new(0),
            duplicated: Cell::new(0),
            out_of_order: Cell::new(0),
            foreign_frames: Cell::new(0),
            frames: Cell::new(0),
        }
    }

    /// Records one delivery received at `receive_us` (microseconds since the UNIX epoch) on the
    /// connection whose ordering state is `order`.
    pub fn record(&self, delivery: Delivery, receive_us: u64, order: &mut ConnOrder) {
        self.frames.set(self.frames.get() + 1);
        let Some(slot) = usize::try_from(delivery.seq)
            .ok()
            .and_then(|at| self.events.get(at))
        else {
            self.foreign_frames.set(self.foreign_frames.get() + 1);
            return;
        };
        let measured = delivery.seq >= self.warmup_events;
        match order.last_seq {
            Some(last) if delivery.seq == last => {
                if measured {
                    self.duplicated.set(self.duplicated.get() + 1);
                }
            }
            Some(last) if delivery.seq < last => {
                if measured {
                    self.out_of_order.set(self.out_of_order.get() + 1);
                }
            }
            _ => order.last_seq = Some(delivery.seq),
        }
        slot.sent_us.set(delivery.sent_us);
        slot.receive_count.set(slot.receive_count.get() + 1);
        slot.last_receive_us
            .set(slot.last_receive_us.get().max(receive_us));
        if measured {
            self.deliveries.set(self.deliveries.get() + 1);
            self.latency_us
                .borrow_mut()
                .saturating_record(receive_us.saturating_sub(delivery.sent_us));
        }
    }

    /// Counts a text frame that is not one of this run's deliveries.
    pub fn record_foreign(&self) {
        self.frames.set(self.frames.get() + 1);
        self.foreign_frames.set(self.foreign_frames.get() + 1);
    }

    /// Frames seen so far, of any kind: it grows while the server is still delivering.
    pub fn frames(&self) -> u64 {
        self.frames.get()
    }

    /// Adds the figures of `other`, another receive thread's recorder of the same run, as if
    /// one recorder had seen both threads' connections: the subscribers and every count add
    /// up, the histograms merge, and each event's last receive is the later of the two (so its
    /// fan-out completion is the slowest thread's). A connection lives on one thread only, so
    /// its ordering counts need no merging.
    pub fn merge(&mut self, other: Recorder) {
        assert_eq!(
            (self.warmup_events, self.events.len()),
            (other.warmup_events, other.events.len()),
            "recorders of one run cover the same events"
        );
        self.subscribers += other.subscribers;
        self.latency_us
            .get_mut()
            .add(other.latency_us.into_inner())
            .expect("histograms of one run have the same bounds");
        for (slot, theirs) in self.events.iter_mut().zip(other.events.iter()) {
            if theirs.receive_count.get() > 0 {
                // The event's own `t_us`: the same on every thread that received it.
                slot.sent_us.set(theirs.sent_us.get());
            }
            *slot.receive_count.get_mut() += theirs.receive_count.get();
            let last_us = slot.last_receive_us.get().max(theirs.last_receive_us.get());
            slot.last_receive_us.set(last_us);
        }
        for (sum, theirs) in [
            (&mut self.deliveries, &other.deliveries),
            (&mut self.duplicated, &other.duplicated),
            (&mut self.out_of_order, &other.out_of_order),
            (&mut self.foreign_frames, &other.foreign_frames),
            (&mut self.frames, &other.frames),
        ] {
            *sum.get_mut() += theirs.get();
        }
    }

    /// Whether every subscriber has received every warm-up event.
    pub fn warmup_complete(&self) -> bool {
        let warmup = &self.events[..self.warmup_slots()];
        warmup
            .iter()
            .all(|slot| slot.receive_count.get() >= self.subscribers)
    }

    /// Warm-up deliveries received so far, and how many are expected.
    pub fn warmup_progress(&self) -> (u64, u64) {
        let warmup = &self.events[..self.warmup_slots()];
        let received = warmup.iter().map(|slot| slot.receive_count.get()).sum();
        (received, self.subscribers * self.warmup_events)
    }

    /// Whether every subscriber has received every measured event.
    pub fn measured_complete(&self) -> bool {
        self.deliveries.get() - self.duplicated.get() >= self.expected()
    }

    fn warmup_slots(&self) -> usize {
        usize::try_from(self.warmup_events).expect("warm-up slots were allocated")
    }

    fn expected(&self) -> u64 {
        self.subscribers * (self.events.len() as u64 - self.warmup_events)
    }

    /// The figures of the measured events. `lost` is the expected count minus the deliveries
    /// that were not duplicates; a late delivery below a connection's last `seq` counts as
    /// delivered and as out of order (either fails the run).
    pub fn summary(&self) -> Summary {
        let latency = self.latency_us.borrow();
        let measured = &self.events[self.warmup_slots()..];
        let received = || measured.iter().filter(|slot| slot.receive_count.get() > 0);
        let completion_us = self.completion_us();
        let first_sent_us = received().map(|slot| slot.sent_us.get()).min();
        let last_receive_us = received().map(|slot| slot.last_receive_us.get()).max();
        let span_us = match (first_sent_us, last_receive_us) {
            (Some(first), Some(last)) => last.saturating_sub(first),
            _ => 0,
        };
        let deliveries = self.deliveries.get();
        let duplicated = self.duplicated.get();
        Summary {
            deliveries,
            deliveries_per_s: if span_us == 0 {
                0.0
            } else {
                deliveries as f64 * 1e6 / span_us as f64
            },
            latency_us_p50: latency.value_at_quantile(0.50),
            latency_us_p90: latency.value_at_quantile(0.90),
            latency_us_p99: latency.value_at_quantile(0.99),
            latency_us_p999: latency.value_at_quantile(0.999),
            latency_us_max: latency.max(),
            fanout_completion_us_p50: nearest_rank(&completion_us, 0.50),
            fanout_completion_us_p99: nearest_rank(&completion_us, 0.99),
            fanout_completion_us_max: completion_us.last().copied().unwrap_or(0),
            lost: self.expected().saturating_sub(deliveries - duplicated),
            duplicated,
            out_of_order: self.out_of_order.get(),
            foreign_frames: self.foreign_frames.get(),
        }
    }

    /// The measured deliveries' latency distribution, as (microseconds, fraction of deliveries
    /// at or below it) points in ascending order, ending at the maximum with 1; empty when
    /// nothing was delivered.
    pub fn latency_cdf(&self) -> Vec<(u64, f64)> {
        let latency = self.latency_us.borrow();
        if latency.is_empty() {
            return Vec::new();
        }
        let mut points: Vec<(u64, f64)> = latency
            .iter_quantiles(CDF_TICKS_PER_HALF_DISTANCE)
            .map(|step| {
                (
                    latency.highest_equivalent(step.value_iterated_to()),
                    step.percentile() / 100.0,
                )
            })
            .collect();
        points.push((latency.max(), 1.0));
        keep_highest_fraction_per_value(&mut points);
        points
    }

    /// The measured events' fan-out completion distribution (publish to the last delivery),
    /// as (microseconds, fraction of events at or below it) points in ascending order, at most
    /// `CDF_POINTS_MAX` of them, ending at the slowest event with 1; empty when no event arrived.
    pub fn fanout_cdf(&self) -> Vec<(u64, f64)> {
        let completion_us = self.completion_us();
        let count = completion_us.len();
        let step = count.div_ceil(CDF_POINTS_MAX).max(1);
        let mut points: Vec<(u64, f64)> = (1..=count)
            .filter(|rank| rank % step == 0 || *rank == count)
            .map(|rank| (completion_us[rank - 1], rank as f64 / count as f64))
            .collect();
        keep_highest_fraction_per_value(&mut points);
        points
    }

    /// Each measured event's fan-out completion time in microseconds, ascending; events no
    /// subscriber received are left out (they count as lost).
    fn completion_us(&self) -> Vec<u64> {
        let measured = &self.events[self.warmup_slots()..];
        let mut completion_us: Vec<u64> = measured
            .iter()
            .filter(|slot| slot.receive_count.get() > 0)
            .map(|slot| {
                slot.last_receive_us
                    .get()
                    .saturating_sub(slot.sent_us.get())
            })
            .collect();
        completion_us.sort_unstable();
        completion_us
    }
}

/// Merges CDF points of equal value into one with the highest fraction, the later point's:
/// the share of the distribution at or below that value.
fn keep_highest_fraction_per_value(points: &mut Vec<(u64, f64)>) {
    points.dedup_by(|later, earlier| {
        if later.0 == earlier.0 {
            earlier.1 = later.1;
            true
        } else {
            false
        }
    });
}

/// The `quantile` of ascending `sorted` by the nearest-rank method; 0 when empty.
fn nearest_rank(sorted: &[u64], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: u64, sent_us: u64) -> Delivery {
        Delivery { seq, sent_us }
    }

    #[test]
    fn complete_run_has_no_loss_and_exact_figures() {
        let recorder = Recorder::new(2, 1, 2);
        let (mut first, mut second) = (ConnOrder::default(), ConnOrder::default());
        recorder.record(delivery(0, 100), 150, &mut first);
        recorder.record(delivery(0, 100), 160, &mut second);
        assert!(recorder.warmup_complete());
        assert!(!recorder.measured_complete());
        recorder.record(delivery(1, 1_000), 1_010, &mut first);
        recorder.record(delivery(1, 1_000), 1_030, &mut second);
        recorder.record(delivery(2, 2_000), 2_020, &mut first);
        recorder.record(delivery(2, 2_000), 3_000, &mut second);
        assert!(recorder.measured_complete());
        let summary = recorder.summary();
        assert_eq!(summary.deliveries, 4);
        assert_eq!(summary.lost, 0);
        assert_eq!((summary.duplicated, summary.out_of_order), (0, 0));
        assert_eq!(summary.latency_us_p50, 20);
        assert_eq!(summary.latency_us_max, 1_000);
        assert_eq!(summary.fanout_completion_us_p50, 30);
        assert_eq!(summary.fanout_completion_us_max, 1_000);
        // 4 deliveries between the first send (1,000 us) and the last receive (3,000 us).
        assert_eq!(summary.deliveries_per_s, 2_000.0);
    }

    #[test]
    fn duplicates_reordering_and_loss_are_counted() {
        let recorder = Recorder::new(2, 0, 3);
        let mut order = ConnOrder::default();
        recorder.record(delivery(1, 0), 1, &mut order);
        recorder.record(delivery(1, 0), 1, &mut order);
        recorder.record(delivery(0, 0), 1, &mut order);
        recorder.record(delivery(2, 0), 1, &mut order);
        recorder.record(delivery(9, 0), 1, &mut order);
        let summary = recorder.summary();
        assert_eq!(summary.deliveries, 4);
        assert_eq!(summary.duplicated, 1);
        assert_eq!(summary.out_of_order, 1);
        assert_eq!(summary.foreign_frames, 1);
        assert_eq!(summary.lost, 3);
        assert_eq!(recorder.frames(), 5);
    }

    #[test]
    fn cdfs_rise_to_one_at_the_slowest_value() {
        let recorder = Recorder::new(1, 1, 4);
        let mut order = ConnOrder::default();
        assert_eq!(
            (recorder.latency_cdf(), recorder.fanout_cdf()),
            (vec![], vec![])
        );
        recorder.record(delivery(0, 0), 99_999, &mut order);
        for (seq, latency_us) in [(1, 100), (2, 100), (3, 200), (4, 4_000)] {
            recorder.record(delivery(seq, 1_000), 1_000 + latency_us, &mut order);
        }
        assert_eq!(
            recorder.fanout_cdf(),
            vec![(100, 0.5), (200, 0.75), (4_000, 1.0)],
            "the warm-up event is left out, equal values keep the higher fraction"
        );
        let latency = recorder.latency_cdf();
        // 4,000 and 4,001 share a histogram bucket (3 significant digits); its top is reported.
        assert_eq!(latency.last(), Some(&(4_001, 1.0)));
        assert!(latency
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1));
        let at_100 = latency.iter().find(|point| point.0 >= 100).unwrap();
        assert_eq!(at_100.1, 0.5, "{latency:?}");
    }

    #[test]
    fn fanout_cdf_keeps_at_most_its_point_budget() {
        let events = 2_500;
        let recorder = Recorder::new(1, 0, events);
        let mut order = ConnOrder::default();
        for seq in 0..events {
            recorder.record(delivery(seq, 0), seq + 1, &mut order);
        }
        let cdf = recorder.fanout_cdf();
        assert!(cdf.len() <= CDF_POINTS_MAX, "{}", cdf.len());
        assert_eq!(cdf.last(), Some(&(events, 1.0)));
    }

    #[test]
    fn warmup_events_stay_out_of_the_summary() {
        let recorder = Recorder::new(1, 2, 1);
        let mut order = ConnOrder::default();
        recorder.record(delivery(0, 0), 5_000, &mut order);
        assert_eq!(recorder.warmup_progress(), (1, 2));
        assert!(!recorder.warmup_complete());
        let summary = recorder.summary();
        assert_eq!(summary.deliveries, 0);
        assert_eq!(summary.latency_us_max, 0);
        assert_eq!(summary.lost, 1);
    }

    /// Three subscribers' deliveries (one duplicate, one late and out of order, one lost), recorded by
    /// one recorder and by two merged ones that split the subscribers 2 and 1, as two receive
    /// threads do: the figures must be the same, the fan-out completion the later thread's.
    #[test]
    fn merged_recorders_give_the_figures_of_one() {
        // (subscriber, seq, sent_us, receive_us); event 0 is warm-up.
        let deliveries = [
            (0, 0, 0, 40),
            (1, 0, 0, 50),
            (2, 0, 0, 60),
            (0, 1, 1_000, 1_010),
            (1, 1, 1_000, 1_020),
            (0, 2, 2_000, 2_030),
            (0, 2, 2_000, 2_031),
            (2, 2, 2_000, 2_015),
            (2, 1, 1_000, 2_016),
            (1, 3, 3_000, 3_001),
            (0, 3, 3_000, 3_002),
            (2, 3, 3_000, 3_500),
        ];
        let one = Recorder::new(3, 1, 3);
        let mut merged = Recorder::new(2, 1, 3);
        let other = Recorder::new(1, 1, 3);
        let mut orders = [ConnOrder::default(); 3];
        let mut split_orders = [ConnOrder::default(); 3];
        for (subscriber, seq, sent_us, receive_us) in deliveries {
            one.record(delivery(seq, sent_us), receive_us, &mut orders[subscriber]);
            let split = if subscriber < 2 { &merged } else { &other };
            split.record(
                delivery(seq, sent_us),
                receive_us,
                &mut split_orders[subscriber],
            );
        }
        assert!(other.measured_complete());
        assert!(!merged.measured_complete(), "subscriber 1 lost event 2");
        merged.merge(other);
        assert_eq!(merged.summary(), one.summary());
        assert_eq!(merged.latency_cdf(), one.latency_cdf());
        assert_eq!(merged.fanout_cdf(), one.fanout_cdf());
        assert_eq!(merged.frames(), one.frames());
        assert_eq!(merged.warmup_progress(), (3, 3));
        assert!(merged.warmup_complete());
        let summary = merged.summary();
        assert_eq!(
            (summary.duplicated, summary.out_of_order, summary.lost),
            (1, 1, 1)
        );
        // Event 1's last receive is the other thread's late one: 2,016 - 1,000.
        assert_eq!(summary.fanout_completion_us_max, 1_016);
        assert_eq!(summary.deliveries, 9);
    }

    #[test]
    fn nearest_rank_picks_the_covering_sample() {
        let sorted = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(nearest_rank(&sorted, 0.5), 5);
        assert_eq!(nearest_rank(&sorted, 0.99), 10);
        assert_eq!(nearest_rank(&[], 0.5), 0);
    }
}
