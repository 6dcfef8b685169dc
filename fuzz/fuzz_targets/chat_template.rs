#![no_main]
//! `stellarchat_model::fuzzing::chat_template` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| stellarchat_model::fuzzing::chat_template(data));
