//! The host's integration tests, in one binary so that wasmtime is linked once.
//! Each module is one concern; shared helpers live beside them.

mod cluster;
mod compat;
mod examples;
mod fuzz_corpus;
mod history;
mod model;
mod node;
mod state_machine;
mod storage;
mod wasm;
