#![no_main]
//! `stellarchat::fuzzing::responses_request` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| stellarchat::fuzzing::responses_request(data));
