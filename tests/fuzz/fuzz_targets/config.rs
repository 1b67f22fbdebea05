//! cargo-fuzz target `config`: the body is [`quench_fuzz_targets::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::config(data));
