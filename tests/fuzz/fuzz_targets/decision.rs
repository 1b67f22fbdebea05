//! cargo-fuzz target `decision`: the body is [`quench_fuzz_targets::decision`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::decision(data));
