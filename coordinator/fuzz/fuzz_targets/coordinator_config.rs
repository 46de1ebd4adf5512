#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cartable_coordinator_fuzz::coordinator_config(data));
