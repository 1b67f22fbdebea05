//! cargo-fuzz target `playbook_test`: the body is [`quench_fuzz_targets::playbook_test`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::playbook_test(data));
