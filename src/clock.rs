//! The wall clock as the wire contract writes it, and the name of one run of offsets.
//!
//! Every stage stamps messages (`ts_ms`, `server_time_ms`) and the cluster proposes epochs, so
//! these live beneath all of them. Nothing here keeps state or sleeps: fan-out latency is
//! measured with `Instant`s where it happens, never with this clock.

use std::sync::Arc;

/// Milliseconds since the UNIX epoch, as the contract's `*_ms` fields use.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// A fresh epoch: 16 hex digits from the OS-seeded keys of a std `RandomState` and the clock,
/// so two starts of the server (even in the same nanosecond) almost surely differ. Clients
/// only compare epochs for equality.
pub fn new_epoch() -> Arc<str> {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_16_hex_digits_and_differ_between_calls() {
        let (first, second) = (new_epoch(), new_epoch());
        assert_eq!(first.len(), 16);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
        assert_ne!(first, second);
    }

    #[test]
    fn the_clock_is_unix_milliseconds() {
        let ms = unix_ms();
        // After 2020-09-13 and before 2286: milliseconds, not seconds or microseconds.
        assert!(
            (1_600_000_000_000..10_000_000_000_000).contains(&ms),
            "{ms}"
        );
    }
}
