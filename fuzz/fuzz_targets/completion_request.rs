#![no_main]
//! `stellarchat::fuzzing::completion_request` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| stellarchat::fuzzing::completion_request(data));
