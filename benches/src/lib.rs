//! wasmraft's benchmarks (in `benches/`) and, as it grows, the load generator.
