//! Token buckets: how the server says "this many per second, with this much burst".
//!
//! A pure type over explicit instants (no clock inside, no sleeping), so every rule is tested
//! with made-up times. The ingest core keeps one per tenant for `tenant_publishes_per_s`.

use std::time::Instant;

/// Holds up to `burst` tokens and gains `rate_per_s` a second; each event takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_s: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    ///
    /// # Panics
    /// If `rate_per_s` or `burst` is 0: a limit of nothing is no limit to keep (the config
    /// refuses it, or treats 0 as "off" before building one).
    pub fn new(rate_per_s: u32, burst: u32, now: Instant) -> Self {
        assert!(
            rate_per_s > 0 && burst > 0,
            "a bucket needs a rate and room"
        );
        TokenBucket {
            rate_per_s: f64::from(rate_per_s),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed_s = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed_s * self.rate_per_s).min(self.burst);
        self.at = self.at.max(now);
    }

    /// Takes a token if one is there.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely: it remembers nothing a new one would not.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    /// Milliseconds until the next token, for a "retry in" hint.
    pub fn wait_ms(&mut self, now: Instant) -> u64 {
        self.refill(now);
        let missing = (1.0 - self.tokens).max(0.0);
        (missing / self.rate_per_s * 1_000.0).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, start);
        assert!(
            (0..3).all(|_| bucket.take(start)),
            "the burst is there at once"
        );
        assert!(!bucket.take(start), "then it is empty");
        assert_eq!(bucket.wait_ms(start), 100);
        let later = start + Duration::from_millis(250);
        assert!(
            bucket.take(later) && bucket.take(later),
            "2.5 tokens came back"
        );
        assert!(!bucket.take(later));
        assert!(!bucket.is_full(later));
        assert!(
            bucket.is_full(later + Duration::from_secs(1)),
            "capped at the burst"
        );
        let mut full = bucket.clone();
        assert!((0..3).all(|_| full.take(later + Duration::from_secs(5))));
        assert!(
            !full.take(later + Duration::from_secs(5)),
            "never more than the burst"
        );
    }

    #[test]
    fn time_going_backwards_gives_nothing() {
        let start = Instant::now() + Duration::from_secs(1);
        let mut bucket = TokenBucket::new(1, 1, start);
        assert!(bucket.take(start));
        assert!(!bucket.take(start - Duration::from_secs(1)));
    }
}
