//! Any bytes through `wasmraft::fuzzing::decoders`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmraft::fuzzing::decoders(data));
