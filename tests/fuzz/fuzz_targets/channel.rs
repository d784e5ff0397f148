//! Fuzzes `channel`: every input goes through [`corecast_fuzz::check_channels`], which asserts the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corecast_fuzz::check_channels(data));
