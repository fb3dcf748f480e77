//! Measures what the guest limits bound, on this machine:
//!
//! - `compile`: deploy-time validation (compile and trial instantiation) of a
//!   module at each static limit of ABI v1, with its time and the peak memory
//!   of a process that does only that;
//! - `imports`: the worst patterns of each host import, run to the default
//!   fuel cap, as wall time per million fuel and the time one call at the cap
//!   holds apply.
//!
//! Run: `cargo run --release -p wasmraft-benches --bin wasmraft-limits`
//! (`-- compile` or `-- imports` for one part).

use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmraft::wasm::{Call, EntryPoint, MemoryKv, Runtime, RuntimeConfig};

/// The static limits of ABI v1 (`guest-sdk/ABI.md`).
const FUNCTIONS_MAX: usize = 10_000;
const FUNCTION_BODY_BYTES_MAX: usize = 64 * 1024;
const CODE_BYTES_MAX: usize = 2 * 1024 * 1024;
const LOCALS_PER_FUNCTION_MAX: usize = 1_000;

const PRELUDE: &str = r#"
    (import "wasmraft" "kv_get" (func $kv_get (param i32 i32) (result i64)))
    (import "wasmraft" "kv_set" (func $kv_set (param i32 i32 i32 i32)))
    (import "wasmraft" "kv_delete" (func $kv_delete (param i32 i32)))
    (import "wasmraft" "kv_scan" (func $kv_scan (param i32 i32 i32 i32 i32) (result i64)))
    (import "wasmraft" "result_read" (func $result_read (param i32)))
    (memory (export "memory") 256)
    (func (export "wasmraft_abi_version_1"))
    (func (export "wasmraft_alloc") (param i32) (result i32) (i32.const 1024))
"#;

fn module(items: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {PRELUDE} {items})")).expect("the benchmark's WAT parses")
}

/// A body of about `bytes` bytes that keeps many values live: sums of locals
/// stored to other locals, the pattern that makes register allocation work.
fn busy_body(bytes: usize, locals: usize) -> String {
    let mut body = format!("(func (local{})", " i64".repeat(locals));
    // Each step encodes to 7 bytes, 10 with local indexes above 127.
    let step_bytes = if locals > 128 { 10 } else { 7 };
    for step in 0..bytes / step_bytes {
        let (a, b, c) = (
            step % locals,
            (step * 7 + 3) % locals,
            (step * 13 + 5) % locals,
        );
        body.push_str(&format!(
            " (local.set {c} (i64.add (local.get {a}) (local.get {b})))"
        ));
    }
    body.push(')');
    body
}

fn compile_cases() -> Vec<(&'static str, String)> {
    let small = "(func (result i32) (i32.add (i32.const 1) (i32.const 2)))";
    vec![
        (
            "functions at the limit, small bodies",
            small.repeat(FUNCTIONS_MAX - 3),
        ),
        (
            "the whole code at the limit in bodies of the largest size",
            busy_body(FUNCTION_BODY_BYTES_MAX - 2_000, 64)
                .repeat(CODE_BYTES_MAX / FUNCTION_BODY_BYTES_MAX),
        ),
        (
            "one body of the largest size with the most locals",
            busy_body(FUNCTION_BODY_BYTES_MAX - 4_000, LOCALS_PER_FUNCTION_MAX),
        ),
        (
            "functions at the limit sharing the whole code",
            busy_body(CODE_BYTES_MAX / FUNCTIONS_MAX - 40, 16).repeat(FUNCTIONS_MAX - 3),
        ),
    ]
}

/// Compiles case `index` in this process and prints its figures.
fn compile_one(index: usize) {
    let (name, items) = &compile_cases()[index];
    let wasm = module(&format!(
        "{items} (func (export \"apply\") (param i32 i32) (result i32) (i32.const 0))"
    ));
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let started = Instant::now();
    let verdict = runtime.validate(&wasm);
    let elapsed = started.elapsed();
    println!(
        "{name}: {} KiB, {} in {:.2} s, peak memory {} MiB",
        wasm.len() / 1024,
        match verdict {
            Ok(_) => "validated and compiled".to_owned(),
            Err(error) => format!("refused ({error})"),
        },
        elapsed.as_secs_f64(),
        peak_memory_kib() / 1024
    );
}

fn peak_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn compile() {
    println!("== compile: deploy-time validation at each static limit (one process each)");
    let me = std::env::current_exe().expect("own path");
    for index in 0..compile_cases().len() {
        let status = Command::new(&me)
            .args(["compile-one", &index.to_string()])
            .status()
            .expect("run a case");
        assert!(status.success(), "case {index} failed");
    }
}

/// Runs `apply` of `wasm` once at the default fuel cap against `state`.
fn run_to_cap(name: &str, wasm: &[u8], state: &MemoryKv) {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let hash: [u8; 32] = Sha256::digest(wasm).into();
    let module = runtime
        .load(&hash, wasm)
        .expect("the benchmark module loads");
    let fuel = runtime.config().fuel_per_call_max;
    let call = Call {
        entry: EntryPoint::Apply,
        input: b"",
        caller: "bench",
        timestamp_ms: 0,
        seed: [0; 32],
        fuel,
        memory_bytes: runtime.config().memory_bytes_max,
        output_bytes: usize::MAX,
    };
    // The best of three: the figure is what the work costs, not the noise.
    let mut best = Duration::MAX;
    let mut fuel_used = 0;
    let mut outcome = String::new();
    for _ in 0..3 {
        let started = Instant::now();
        let report = runtime.call(&module, &call, state);
        best = best.min(started.elapsed());
        fuel_used = report.fuel_used;
        outcome = report.outcome.to_string();
    }
    let nanoseconds_per_fuel = best.as_secs_f64() * 1e9 / fuel_used.max(1) as f64;
    println!(
        "{name}: {:.1} ms for {fuel_used} fuel ({outcome}): {:.0} µs per million fuel, {:.0} ms at the cap of {fuel}",
        best.as_secs_f64() * 1e3,
        nanoseconds_per_fuel * 1e3,
        nanoseconds_per_fuel * fuel as f64 / 1e6,
    );
}

/// `apply` repeating `step` until the fuel runs out.
fn forever(setup: &str, step: &str) -> Vec<u8> {
    module(&format!(
        r#"(func (export "apply") (param i32 i32) (result i32)
            (local $i i32)
            {setup}
            (loop $again {step} (br $again))
            (i32.const 0))"#
    ))
}

fn imports() {
    println!("== imports: the worst pattern of each, at the default fuel cap");
    let empty = MemoryKv::new();
    // 20,000 stored keys of 4 bytes with 1 KiB values, and the same keys.
    let mut stored = MemoryKv::new();
    for index in 0u32..20_000 {
        stored.0.insert(index.to_be_bytes().to_vec(), vec![7; 1024]);
    }
    let mut big = MemoryKv::new();
    big.0.insert(b"big".to_vec(), vec![7; 1 << 20]);
    // Memory: 0..4 key, 16.. continuation, 4 MiB at 65536 for results.
    let delete_all = r#"
        (local.set $i (i32.const 0))
        (loop $delete
            (i32.store (i32.const 0) (local.get $i))
            (call $kv_delete (i32.const 0) (i32.const 4))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $delete (i32.lt_u (local.get $i) (i32.const 20000))))"#;
    run_to_cap(
        "baseline: a wasm loop",
        &forever("", "(local.set $i (i32.add (local.get $i) (i32.const 1)))"),
        &empty,
    );
    run_to_cap(
        "kv_scan of 1 entry over 20,000 keys the call deleted",
        &forever(
            delete_all,
            "(drop (call $kv_scan (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 1)))",
        ),
        &stored,
    );
    run_to_cap(
        "kv_scan of 1,024 stored entries of 1 KiB",
        &forever(
            "",
            "(drop (call $kv_scan (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 1024)))",
        ),
        &stored,
    );
    run_to_cap(
        "kv_scan of 1 stored entry (the smallest scan)",
        &forever(
            "",
            "(drop (call $kv_scan (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 1)))",
        ),
        &stored,
    );
    run_to_cap(
        "kv_get of a 1 MiB value, read into memory",
        &forever(
            "(i32.store (i32.const 0) (i32.const 0x00676962))",
            "(drop (call $kv_get (i32.const 0) (i32.const 3))) (call $result_read (i32.const 65536))",
        ),
        &big,
    );
    run_to_cap(
        "kv_get of a missing key",
        &forever("", "(drop (call $kv_get (i32.const 0) (i32.const 4)))"),
        &stored,
    );
    run_to_cap(
        "kv_set of a 1 MiB value to one key",
        &forever(
            "",
            "(call $kv_set (i32.const 0) (i32.const 4) (i32.const 65536) (i32.const 1048576))",
        ),
        &empty,
    );
    run_to_cap(
        "kv_set of a 4-byte value to ever new keys",
        &forever(
            "",
            "(i32.store (i32.const 0) (local.get $i)) (local.set $i (i32.add (local.get $i) (i32.const 1))) (call $kv_set (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 4))",
        ),
        &empty,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("compile-one") => compile_one(args[1].parse().expect("a case index")),
        Some("compile") => compile(),
        Some("imports") => imports(),
        None => {
            imports();
            compile();
        }
        Some(other) => panic!("unknown part `{other}`: use compile or imports"),
    }
}
