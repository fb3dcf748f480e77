//! Any bytes through `wasmraft::fuzzing::snapshot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmraft::fuzzing::snapshot(data));
