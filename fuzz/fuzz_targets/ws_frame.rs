#![no_main]
//! `stellarchat::fuzzing::ws_frame` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| stellarchat::fuzzing::ws_frame(data));
