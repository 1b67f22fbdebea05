//! cargo-fuzz target `audit_segment`: the body is [`quench_fuzz_targets::audit_segment`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::audit_segment(data));
