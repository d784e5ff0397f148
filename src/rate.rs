//! Token buckets: "this many a second, in bursts of up to that many".
//!
//! Pure arithmetic over the instants it is given (no clock inside, no sleeping), so tests say
//! exactly when each event happens. Used by each connection's inbound limit
//! ([`crate::ws::rate`]) and by the ingest core's per-tenant publish limit.

use std::time::{Duration, Instant};

/// A token is this many units, so that a refill of `per_s` tokens a second adds exactly
/// `per_s` units a nanosecond: integer arithmetic, nothing lost to rounding between refills.
const UNITS_PER_TOKEN: u64 = 1_000_000_000;

/// Tokens refilled at a steady rate, up to a capacity.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens held, in units (see [`UNITS_PER_TOKEN`]).
    level_units: u64,
    capacity_units: u64,
    per_s: u64,
    /// When `level_units` was last brought up to date.
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_s` tokens a second. Both must be at
    /// least 1 (`Config::validate` sees to it) and `burst` at most `u64::MAX / 10^9`.
    pub fn full(per_s: u64, burst: u64, now: Instant) -> Self {
        assert!(
            per_s >= 1 && burst >= 1,
            "a bucket refills and holds a token"
        );
        let capacity_units = burst
            .checked_mul(UNITS_PER_TOKEN)
            .expect("burst fits the bucket's units");
        TokenBucket {
            level_units: capacity_units,
            capacity_units,
            per_s,
            at: now,
        }
    }

    /// Takes a token if one is there at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.level_units < UNITS_PER_TOKEN {
            return false;
        }
        self.level_units -= UNITS_PER_TOKEN;
        true
    }

    /// How long after the last `take` until a token is there again (zero if one is).
    pub fn next_token_in(&self) -> Duration {
        let missing_units = UNITS_PER_TOKEN.saturating_sub(self.level_units);
        Duration::from_nanos(missing_units.div_ceil(self.per_s))
    }

    /// Whether the bucket is full at `now`: it then remembers nothing a new one would not.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level_units == self.capacity_units
    }

    fn refill(&mut self, now: Instant) {
        if now <= self.at {
            return;
        }
        let elapsed_ns = now.duration_since(self.at).as_nanos();
        let added_units = elapsed_ns.saturating_mul(u128::from(self.per_s));
        let room_units = u128::from(self.capacity_units - self.level_units);
        // Bounded by the room left, so it fits a u64.
        self.level_units += added_units.min(room_units) as u64;
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(at: u64) -> Duration {
        Duration::from_millis(at)
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_refills_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(10, 3, start);
        assert!((0..3).all(|_| bucket.take(start)), "the burst at once");
        assert!(!bucket.take(start), "then nothing");
        assert_eq!(bucket.next_token_in(), ms(100));
        assert!(!bucket.take(start + ms(99)), "a token is 100 ms at 10/s");
        assert_eq!(bucket.next_token_in(), ms(1));
        assert!(bucket.take(start + ms(100)));
        assert!(!bucket.take(start + ms(100)));
        // A long pause refills to the burst, no more.
        let later = start + Duration::from_secs(3_600);
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }

    #[test]
    fn refills_add_up_exactly_across_many_small_steps() {
        // 3 tokens a second do not divide a second into whole nanoseconds; steps of 1 ms must
        // still add up to exactly one token per 333.33.. ms. (A burst of 2, so that the bucket
        // is never full: what accrues while it is full is lost, as it should be.)
        let start = Instant::now();
        let mut bucket = TokenBucket::full(3, 2, start);
        assert!(bucket.take(start) && bucket.take(start));
        let mut taken = 0;
        for step in 1..=1_000 {
            if bucket.take(start + ms(step)) {
                taken += 1;
            }
        }
        assert_eq!(taken, 3, "three tokens in the second after the first");
        assert_eq!(bucket.next_token_in(), Duration::from_nanos(333_333_334));
    }

    #[test]
    fn a_time_before_the_last_one_refills_nothing() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(1_000, 1, start + ms(10));
        assert!(bucket.take(start + ms(10)));
        assert!(!bucket.take(start), "an earlier reading of the clock");
        assert!(bucket.take(start + ms(11)));
    }

    #[test]
    fn a_bucket_is_full_again_after_its_burst_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(10, 2, start);
        assert!(bucket.is_full(start));
        assert!(bucket.take(start));
        assert!(!bucket.is_full(start + ms(99)));
        assert!(bucket.is_full(start + ms(100)));
    }
}
