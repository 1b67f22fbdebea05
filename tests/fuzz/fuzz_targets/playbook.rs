//! cargo-fuzz target `playbook`: the body is [`quench_fuzz_targets::playbook`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::playbook(data));
