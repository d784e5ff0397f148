//! The inbound rate limit of one connection: a token bucket ([`crate::rate`]), and the run of
//! refusals that decides what each refused message gets.
//!
//! Every message a client sends takes a token: each complete text or binary message, and each
//! ping (it costs a pong). Tokens come back at `inbound_messages_per_s`, up to
//! `inbound_messages_burst`, and a connection starts with a full bucket. A message that finds
//! no token is refused and not executed. Only the first refusal of a run is answered
//! (`rate_limited`); the others are dropped without a word, so that refusals never make the
//! server send more than the client does. A run ends at the next accepted message, and a run
//! that reaches `inbound_refusals_max` refusals closes the connection with 4029.
//!
//! Pure arithmetic over times it is given, so tests say exactly when each message arrives. It
//! never touches a socket or the shard: `ws::session` acts on its verdicts.

use std::time::{Duration, Instant};

use crate::rate::TokenBucket;

/// What to do with a message the limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The first refusal of a run: drop the message and answer `rate_limited`, saying that a
    /// token is there again after `retry_after`.
    Tell { retry_after: Duration },
    /// A later refusal of the run: drop the message without a word.
    Drop,
    /// The run reached `inbound_refusals_max`: drop the message and close with 4029.
    Close,
}

/// One connection's inbound limit: its bucket and its current run of refusals.
#[derive(Debug, Clone)]
pub struct InboundLimit {
    bucket: TokenBucket,
    per_s: u64,
    burst: u64,
    refusals_max: u64,
    /// Refusals since the last accepted message.
    refusals: u64,
}

impl InboundLimit {
    /// `per_s` and `burst` as for [`TokenBucket::full`]; `refusals_max` at least 1.
    pub fn new(per_s: u64, burst: u64, refusals_max: u64, now: Instant) -> Self {
        assert!(refusals_max >= 1, "a run of refusals ends somewhere");
        InboundLimit {
            bucket: TokenBucket::full(per_s, burst, now),
            per_s,
            burst,
            refusals_max,
            refusals: 0,
        }
    }

    /// Takes a token for a message that arrived at `now`: `Ok` to handle it, or how to
    /// refuse it.
    pub fn check(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.bucket.take(now) {
            self.refusals = 0;
            return Ok(());
        }
        self.refusals = self.refusals.saturating_add(1);
        if self.refusals >= self.refusals_max {
            Err(Refusal::Close)
        } else if self.refusals == 1 {
            Err(Refusal::Tell {
                retry_after: self.bucket.next_token_in(),
            })
        } else {
            Err(Refusal::Drop)
        }
    }

    /// The `rate_limited` error's text: the limit, when to retry, and what persisting costs.
    pub fn message(&self, retry_after: Duration) -> String {
        let retry_ms = retry_after.as_nanos().div_ceil(1_000_000);
        format!(
            "rate limited: messages are limited to {}/s in bursts of up to {}; this one was \
             dropped, as are the next until a token is free (retry in {retry_ms} ms); {} \
             refused in a row close the connection with 4029",
            self.per_s, self.burst, self.refusals_max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(at: u64) -> Duration {
        Duration::from_millis(at)
    }

    #[test]
    fn a_run_is_told_once_dropped_after_and_closed_at_refusals_max() {
        let start = Instant::now();
        let mut limit = InboundLimit::new(10, 2, 4, start);
        assert_eq!(limit.check(start), Ok(()));
        assert_eq!(limit.check(start), Ok(()));
        assert_eq!(
            limit.check(start),
            Err(Refusal::Tell {
                retry_after: ms(100)
            })
        );
        assert_eq!(limit.check(start + ms(50)), Err(Refusal::Drop));
        assert_eq!(limit.check(start + ms(60)), Err(Refusal::Drop));
        assert_eq!(limit.check(start + ms(70)), Err(Refusal::Close));
    }

    #[test]
    fn an_accepted_message_ends_the_run() {
        let start = Instant::now();
        let mut limit = InboundLimit::new(10, 1, 3, start);
        assert_eq!(limit.check(start), Ok(()));
        assert!(matches!(limit.check(start), Err(Refusal::Tell { .. })));
        assert_eq!(limit.check(start), Err(Refusal::Drop));
        assert_eq!(limit.check(start + ms(100)), Ok(()), "a token came back");
        // A new run: told again, and counted from one again.
        assert_eq!(
            limit.check(start + ms(100)),
            Err(Refusal::Tell {
                retry_after: ms(100)
            })
        );
        assert_eq!(limit.check(start + ms(100)), Err(Refusal::Drop));
        assert_eq!(limit.check(start + ms(100)), Err(Refusal::Close));
    }

    #[test]
    fn a_client_at_its_rate_is_never_refused() {
        let start = Instant::now();
        let mut limit = InboundLimit::new(100, 1, 1, start);
        for message in 0..10_000 {
            assert_eq!(limit.check(start + ms(10 * message)), Ok(()), "{message}");
        }
    }

    #[test]
    fn refusals_max_of_one_closes_at_the_first_refusal() {
        let start = Instant::now();
        let mut limit = InboundLimit::new(1, 1, 1, start);
        assert_eq!(limit.check(start), Ok(()));
        assert_eq!(limit.check(start), Err(Refusal::Close));
    }

    #[test]
    fn the_message_names_the_limit_and_when_to_retry() {
        let limit = InboundLimit::new(100, 200, 50, Instant::now());
        assert_eq!(
            limit.message(Duration::from_micros(9_001)),
            "rate limited: messages are limited to 100/s in bursts of up to 200; this one was \
             dropped, as are the next until a token is free (retry in 10 ms); 50 refused in a \
             row close the connection with 4029"
        );
    }
}
