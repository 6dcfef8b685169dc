#![no_main]
//! `stellarchat::fuzzing::chat_request` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| stellarchat::fuzzing::chat_request(data));
