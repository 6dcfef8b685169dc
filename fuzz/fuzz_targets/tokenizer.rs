#![no_main]
//! `stellarchat_model::fuzzing::tokenizer` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| stellarchat_model::fuzzing::tokenizer(data));
