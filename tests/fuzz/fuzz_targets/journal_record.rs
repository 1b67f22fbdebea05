//! cargo-fuzz target `journal_record`: the body is [`quench_fuzz_targets::journal_record`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quench_fuzz_targets::journal_record(data));
