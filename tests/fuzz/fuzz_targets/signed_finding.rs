//! cargo-fuzz target `signed_finding`: the body is [`quench_fuzz_targets::signed_finding`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::signed_finding(data));
