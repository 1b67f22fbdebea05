//! cargo-fuzz target `ocsf_finding`: the body is [`quench_fuzz_targets::ocsf_finding`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::ocsf_finding(data));
