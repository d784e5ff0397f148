//! The reconnect delay: exponential backoff with full jitter.
//!
//! Owns the attempt counter and the draw of each delay, `uniform(0, min(cap, base * 2^attempt))`
//! (the "full jitter" of the AWS architecture blog, also the spec's rule for every corecast
//! client). Full jitter spreads a crowd of clients cut at the same instant over the whole
//! window, so a restarted server is not met by one synchronized wave per attempt. It never
//! sleeps or reads a clock: the session asks for a delay and waits it out itself, so the
//! distribution is tested below with a seeded generator.

use std::time::Duration;

/// The reconnect schedule of one client.
#[derive(Debug)]
pub struct Backoff {
    base_ms: u64,
    cap_ms: u64,
    /// Failed attempts since the last connection that reached `connected`.
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A schedule starting at attempt 0, drawing from `rng`.
    pub fn new(base_ms: u64, cap_ms: u64, rng: fastrand::Rng) -> Self {
        assert!(base_ms > 0 && base_ms <= cap_ms, "checked by ClientConfig");
        Self {
            base_ms,
            cap_ms,
            attempt: 0,
            rng,
        }
    }

    /// The delay before the next attempt, and counts this attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling_ms = ceiling_ms(self.base_ms, self.cap_ms, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(self.rng.u64(0..=ceiling_ms))
    }

    /// Back to attempt 0: a connection reached `connected`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `min(cap, base * 2^attempt)` in milliseconds, without overflow for any attempt.
pub fn ceiling_ms(base_ms: u64, cap_ms: u64, attempt: u32) -> u64 {
    let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
    base_ms.saturating_mul(factor).min(cap_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_from_base_up_to_cap() {
        let ceilings: Vec<u64> = (0..8).map(|n| ceiling_ms(1_000, 30_000, n)).collect();
        assert_eq!(
            ceilings,
            [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(ceiling_ms(1_000, 30_000, 64), 30_000);
        assert_eq!(ceiling_ms(1_000, 30_000, u32::MAX), 30_000);
        assert_eq!(ceiling_ms(u64::MAX / 2, u64::MAX, 3), u64::MAX);
    }

    #[test]
    fn every_delay_lies_in_zero_to_the_ceiling_of_its_attempt() {
        let mut backoff = Backoff::new(10, 300, fastrand::Rng::with_seed(7));
        for round in 0..200 {
            for attempt in 0..12 {
                let delay_ms = u64::try_from(backoff.next_delay().as_millis()).unwrap();
                let ceiling = ceiling_ms(10, 300, attempt);
                assert!(
                    delay_ms <= ceiling,
                    "round {round}, attempt {attempt}: {delay_ms} ms over {ceiling} ms"
                );
            }
            backoff.reset();
        }
    }

    #[test]
    fn delays_are_spread_over_the_whole_window() {
        // Full jitter, not "ceiling plus a little noise": 10,000 draws at one ceiling cover both
        // ends of [0, ceiling] and average near its middle.
        let mut rng = fastrand::Rng::with_seed(42);
        let draws: Vec<u64> = (0..10_000)
            .map(|_| {
                let mut backoff = Backoff::new(1_000, 30_000, rng.fork());
                u64::try_from(backoff.next_delay().as_millis()).unwrap()
            })
            .collect();
        let min = *draws.iter().min().unwrap();
        let max = *draws.iter().max().unwrap();
        let mean = draws.iter().sum::<u64>() / 10_000;
        assert!(min < 10, "min {min} ms");
        assert!(max > 990 && max <= 1_000, "max {max} ms");
        assert!((450..=550).contains(&mean), "mean {mean} ms");
    }

    #[test]
    fn reset_returns_to_the_base_window() {
        let mut backoff = Backoff::new(5, 1_000, fastrand::Rng::with_seed(1));
        for _ in 0..10 {
            backoff.next_delay();
        }
        assert_eq!(backoff.attempt, 10);
        for _ in 0..100 {
            backoff.reset();
            assert_eq!(backoff.attempt, 0);
            assert!(backoff.next_delay() <= Duration::from_millis(5));
        }
    }
}
