//! Deploy validation of raw bytes and of modules wasm-smith builds from them
//! (within the features the host enables, with imports of any kind).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasmraft::fuzzing::validate(data);
    let mut unstructured = Unstructured::new(data);
    let Ok(mut config) = wasm_smith::Config::arbitrary(&mut unstructured) else {
        return;
    };
    config.threads_enabled = false;
    config.memory64_enabled = false;
    config.max_memories = 1;
    if let Ok(module) = wasm_smith::Module::new(config, &mut unstructured) {
        wasmraft::fuzzing::validate(&module.to_bytes());
    }
});
