//! cargo-fuzz target `finding`: the body is [`quench_fuzz_targets::finding`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::finding(data));
