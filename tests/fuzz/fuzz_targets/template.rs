//! cargo-fuzz target `template`: the body is [`quench_fuzz_targets::template`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::template(data));
