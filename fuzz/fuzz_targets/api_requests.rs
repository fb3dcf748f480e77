//! Any bytes through `wasmraft::fuzzing::api_requests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmraft::fuzzing::api_requests(data));
