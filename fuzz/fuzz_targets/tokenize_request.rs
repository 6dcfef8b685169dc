#![no_main]
//! `stellarchat::fuzzing::tokenize_request` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| stellarchat::fuzzing::tokenize_request(data));
