#![no_main]
//! `stellarchat::fuzzing::tool_output` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| stellarchat::fuzzing::tool_output(data));
