//! cargo-fuzz target `slack_interaction`: the body is [`quench_fuzz_targets::slack_interaction`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::slack_interaction(data));
