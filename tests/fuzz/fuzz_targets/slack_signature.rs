//! cargo-fuzz target `slack_signature`: the body is [`quench_fuzz_targets::slack_signature`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::slack_signature(data));
