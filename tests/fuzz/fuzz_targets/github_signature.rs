//! cargo-fuzz target `github_signature`: the body is [`quench_fuzz_targets::github_signature`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::github_signature(data));
