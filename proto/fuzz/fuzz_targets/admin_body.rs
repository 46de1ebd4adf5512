#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cartable_proto::fuzzing::admin_body(data));
