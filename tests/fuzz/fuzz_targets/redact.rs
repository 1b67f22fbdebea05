//! cargo-fuzz target `redact`: the body is [`quench_fuzz_targets::redact`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::redact(data));
