//! One `counter` invoke on a fresh instance — instantiate from the pool, place
//! the input, run `apply` (one KV read, one KV write, JSON in and out) — with
//! fuel metering on, as nodes run it, and off, to show what metering costs.
//!
//! Run: `cargo bench -p wasmraft-benches --bench invoke`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use wasmraft::wasm::{Call, EntryPoint, MemoryKv, Outcome, Runtime, RuntimeConfig};

fn invoke(c: &mut Criterion) {
    let wasm = wasmraft_examples::COUNTER_WASM;
    let hash: [u8; 32] = Sha256::digest(wasm).into();
    let mut group = c.benchmark_group("counter_invoke");
    for (name, runtime) in [
        ("metered", Runtime::new(RuntimeConfig::default()).unwrap()),
        (
            "unmetered",
            Runtime::new_unmetered_for_benchmarks(RuntimeConfig::default()).unwrap(),
        ),
    ] {
        let module = runtime.load(&hash, wasm).unwrap();
        let mut state = MemoryKv::new();
        // Seed the state with the counter's own first write.
        let call = Call {
            entry: EntryPoint::Apply,
            input: br#"{"op":"add","by":1}"#,
            caller: "bench",
            timestamp_ms: 1_700_000_000_000,
            seed: [0; 32],
            fuel: runtime.config().fuel_per_call_max,
            memory_bytes: runtime.config().memory_bytes_max,
            output_bytes: usize::MAX,
        };
        let report = runtime.call(&module, &call, &state);
        assert!(
            matches!(report.outcome, Outcome::Ok(_)),
            "{}",
            report.outcome
        );
        assert_eq!(report.writes.len(), 1);
        state.commit(report.writes);
        group.bench_function(name, |b| {
            b.iter(|| {
                let report = runtime.call(&module, black_box(&call), &state);
                debug_assert!(matches!(report.outcome, Outcome::Ok(_)));
                report
            })
        });
    }
    group.finish();
}

criterion_group!(benches, invoke);
criterion_main!(benches);
