#![no_main]
//! `stellarchat_model::fuzzing::gguf` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| stellarchat_model::fuzzing::gguf(data));
