#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cartable_node_fuzz::node_config(data));
