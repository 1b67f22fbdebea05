//! cargo-fuzz target `github_event`: the body is [`quench_fuzz_targets::github_event`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::github_event(data));
