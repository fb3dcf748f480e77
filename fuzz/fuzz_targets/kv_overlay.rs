//! Any bytes through `wasmraft::fuzzing::kv_overlay`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmraft::fuzzing::kv_overlay(data));
