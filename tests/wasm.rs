//! The wasm runtime (`wasmraft::wasm`) against hand-written ABI v1 modules: outcomes, deploy checks, KV semantics, determinism, caches.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wasmraft::wasm::{
    Call, CallReport, EntryPoint, KvError, KvSource, MemoryKv, Outcome, Runtime, RuntimeConfig,
    TrapKind, ValidationError,
};

/// A module's committed state, prefilled with string keys and values.
fn memory_kv(entries: &[(&str, &str)]) -> MemoryKv {
    MemoryKv(
        entries
            .iter()
            .map(|(key, value)| (key.as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect(),
    )
}

/// A source whose storage has failed.
struct BrokenKv;

impl KvSource for BrokenKv {
    fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Err(KvError::new("disk on fire"))
    }

    fn scan(
        &self,
        _start: &[u8],
        _end: Option<&[u8]>,
        _limit: usize,
        _bytes_max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        Err(KvError::new("disk on fire"))
    }
}

fn wasm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/wasm")
}

fn wat_file(name: &str) -> Vec<u8> {
    wat::parse_file(wasm_dir().join(name)).expect("test WAT parses")
}

fn test_config() -> RuntimeConfig {
    RuntimeConfig {
        instances_max: 4,
        ..RuntimeConfig::default()
    }
}

fn runtime() -> Runtime {
    Runtime::new(test_config()).expect("runtime builds")
}

fn call(entry: EntryPoint, input: &[u8]) -> Call<'_> {
    Call {
        entry,
        input,
        caller: "alice",
        timestamp_ms: 1_700_000_000_000,
        seed: [7; 32],
        fuel: 1_000_000,
        memory_bytes: 1 << 20,
        output_bytes: usize::MAX,
    }
}

/// Deploys (validates) and loads `wasm`, then runs one call.
fn run(runtime: &Runtime, wasm: &[u8], call: &Call<'_>, kv: &dyn KvSource) -> CallReport {
    let info = runtime.validate(wasm).expect("module passes validation");
    let module = runtime.load(&info.hash, wasm).expect("module loads");
    runtime.call(&module, call, kv)
}

fn trap(kind: TrapKind, message: &str) -> Outcome {
    Outcome::Trap {
        kind,
        message: message.to_string(),
    }
}

/// A module with the ABI skeleton (imports, memory, marker, allocator) around `items`.
pub(crate) fn guest(items: &str) -> Vec<u8> {
    let memory = if items.contains("(memory (export") {
        ""
    } else {
        r#"(memory (export "memory") 1)"#
    };
    let alloc = if items.contains("wasmraft_alloc") {
        ""
    } else {
        r#"(func (export "wasmraft_alloc") (param i32) (result i32) (i32.const 1024))"#
    };
    let text = format!(
        r#"(module
            (import "wasmraft" "output" (func $output (param i32 i32)))
            (import "wasmraft" "abort" (func $abort (param i32 i32)))
            (import "wasmraft" "kv_set" (func $kv_set (param i32 i32 i32 i32)))
            (import "wasmraft" "kv_scan" (func $kv_scan (param i32 i32 i32 i32 i32) (result i64)))
            (import "wasmraft" "timestamp_ms" (func $timestamp_ms (result i64)))
            (import "wasmraft" "result_read" (func $result_read (param i32)))
            (import "wasmraft" "log" (func $log (param i32 i32 i32)))
            {memory}
            (data (i32.const 0) "hello")
            (func (export "wasmraft_abi_version_1"))
            {alloc}
            {items})"#
    );
    wat::parse_str(text).expect("test WAT parses")
}

pub(crate) struct CallRow {
    pub(crate) name: &'static str,
    pub(crate) items: &'static str,
    pub(crate) entry: EntryPoint,
    pub(crate) fuel: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) expected: Outcome,
}

const FUEL: u64 = 1_000_000;
const MEMORY: u64 = 1 << 20;

pub(crate) fn call_rows() -> Vec<CallRow> {
    use EntryPoint::{Apply, Init, Query};
    let row = |name, items, expected| CallRow {
        name,
        items,
        entry: Apply,
        fuel: FUEL,
        memory_bytes: MEMORY,
        expected,
    };
    vec![
        row(
            "ok with output",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $output (i32.const 0) (i32.const 5)) (i32.const 0))"#,
            Outcome::Ok(b"hello".to_vec()),
        ),
        row(
            "input is placed where the allocator said",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $output (local.get 0) (local.get 1)) (i32.const 0))"#,
            Outcome::Ok(b"the input".to_vec()),
        ),
        row(
            "result code 1 is a guest error with the output as message",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $output (i32.const 0) (i32.const 5)) (i32.const 1))"#,
            Outcome::GuestError("hello".to_string()),
        ),
        row(
            // Once a cluster-wide panic: the write set's range refused an
            // inverted range, and every replica stopped on the same entry.
            "a scan whose start is above its end, after a write, is an empty page",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $kv_set (i32.const 0) (i32.const 1) (i32.const 1) (i32.const 1))
                (i64.store (i32.const 100)
                    (call $kv_scan (i32.const 4) (i32.const 1) (i32.const 1) (i32.const 1) (i32.const 10)))
                (call $output (i32.const 100) (i32.const 8)) (i32.const 0))"#,
            Outcome::Ok(1u64.to_le_bytes().to_vec()),
        ),
        row(
            "an inverted scan of the stored state alone is an empty page too",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (i64.store (i32.const 100)
                    (call $kv_scan (i32.const 4) (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 1)))
                (call $output (i32.const 100) (i32.const 8)) (i32.const 0))"#,
            Outcome::Ok(1u64.to_le_bytes().to_vec()),
        ),
        row(
            // A message this long does not fit a gRPC status: the node cuts it.
            "a guest error of 20,000 bytes",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $output (i32.const 4096) (i32.const 20000)) (i32.const 1))"#,
            Outcome::GuestError("\0".repeat(20_000)),
        ),
        row(
            "abort with a message",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $abort (i32.const 0) (i32.const 5)) (i32.const 0))"#,
            Outcome::GuestError("hello".to_string()),
        ),
        row(
            "result code 7 is invalid",
            r#"(func (export "apply") (param i32 i32) (result i32) (i32.const 7))"#,
            trap(TrapKind::InvalidResultCode, "invalid result code 7"),
        ),
        row(
            "infinite loop runs out of fuel",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (loop $spin (br $spin)) (i32.const 0))"#,
            Outcome::OutOfFuel,
        ),
        CallRow {
            fuel: 1_500,
            ..row(
                "fuel charged by imports runs out",
                r#"(func (export "apply") (param i32 i32) (result i32)
                    (drop (call $timestamp_ms)) (drop (call $timestamp_ms)) (i32.const 0))"#,
                Outcome::OutOfFuel,
            )
        },
        row(
            "memory growth bomb",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
                unreachable)"#,
            Outcome::MemoryLimit,
        ),
        CallRow {
            memory_bytes: 0,
            ..row(
                "declared memory above the call's cap",
                r#"(func (export "apply") (param i32 i32) (result i32) (i32.const 0))"#,
                Outcome::MemoryLimit,
            )
        },
        row(
            "deep recursion overflows the stack",
            r#"(func $deep (export "apply") (param i32 i32) (result i32)
                (call $deep (local.get 0) (local.get 1)))"#,
            trap(TrapKind::StackOverflow, "wasm trap: call stack exhausted"),
        ),
        row(
            "unreachable",
            r#"(func (export "apply") (param i32 i32) (result i32) unreachable)"#,
            trap(
                TrapKind::Unreachable,
                "wasm trap: wasm `unreachable` instruction executed",
            ),
        ),
        row(
            "integer division by zero",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (i32.div_u (i32.const 1) (i32.load (i32.const 100))))"#,
            trap(
                TrapKind::IntegerDivisionByZero,
                "wasm trap: integer divide by zero",
            ),
        ),
        row(
            "out-of-bounds load",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (i32.load (i32.const 65536)))"#,
            trap(
                TrapKind::MemoryOutOfBounds,
                "wasm trap: out of bounds memory access",
            ),
        ),
        row(
            "writes followed by a trap leave no write",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $kv_set (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 5))
                unreachable)"#,
            trap(
                TrapKind::Unreachable,
                "wasm trap: wasm `unreachable` instruction executed",
            ),
        ),
        row(
            "oversized output",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $output (i32.const 0) (i32.const 1048577)) (i32.const 0))"#,
            Outcome::OutputTooLarge { limit: 1 << 20 },
        ),
        row(
            "guest pointer outside memory",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $output (i32.const 65530) (i32.const 10)) (i32.const 0))"#,
            trap(TrapKind::ImportMisuse, "out-of-bounds guest pointer"),
        ),
        row(
            "empty key",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $kv_set (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 5)) (i32.const 0))"#,
            trap(TrapKind::ImportMisuse, "empty key"),
        ),
        row(
            "key too large",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $kv_set (i32.const 0) (i32.const 4097) (i32.const 0) (i32.const 5)) (i32.const 0))"#,
            trap(TrapKind::ImportMisuse, "key too large"),
        ),
        row(
            "value too large",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $kv_set (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 1048577)) (i32.const 0))"#,
            trap(TrapKind::ImportMisuse, "value too large"),
        ),
        row(
            "scan limit 0",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (drop (call $kv_scan (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 0)))
                (i32.const 0))"#,
            trap(
                TrapKind::ImportMisuse,
                "scan limit out of range (1 to 1024)",
            ),
        ),
        row(
            "result_read without a pending result",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (call $result_read (i32.const 0)) (i32.const 0))"#,
            trap(
                TrapKind::ImportMisuse,
                "result_read without a pending result",
            ),
        ),
        row(
            "allocator returning 0",
            r#"(func (export "wasmraft_alloc") (param i32) (result i32) (i32.const 0))
               (func (export "apply") (param i32 i32) (result i32) (i32.const 0))"#,
            Outcome::GuestError("allocation failed".to_string()),
        ),
        row(
            "a flood of log lines is dropped past the limit",
            r#"(func (export "apply") (param i32 i32) (result i32)
                (local $i i32)
                (loop $again
                  (call $log (i32.const 2) (i32.const 0) (i32.const 5))
                  (local.set $i (i32.add (local.get $i) (i32.const 1)))
                  (br_if $again (i32.lt_u (local.get $i) (i32.const 200))))
                (i32.const 0))"#,
            Outcome::Ok(Vec::new()),
        ),
        CallRow {
            entry: Query,
            ..row(
                "a write inside query",
                r#"(func (export "apply") (param i32 i32) (result i32) (i32.const 0))
                   (func (export "query") (param i32 i32) (result i32)
                    (call $kv_set (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 5)) (i32.const 0))"#,
                trap(TrapKind::ImportMisuse, "write in a read-only query"),
            )
        },
        CallRow {
            entry: Query,
            ..row(
                "query without a query export",
                r#"(func (export "apply") (param i32 i32) (result i32) (i32.const 0))"#,
                Outcome::MissingExport("query"),
            )
        },
        CallRow {
            entry: Init,
            ..row(
                "init without an init export",
                r#"(func (export "apply") (param i32 i32) (result i32) (i32.const 0))"#,
                Outcome::MissingExport("init"),
            )
        },
    ]
}

#[test]
fn call_outcomes() {
    let runtime = runtime();
    let mut failures = Vec::new();
    for row in call_rows() {
        let wasm = guest(row.items);
        let input = b"the input";
        let call = Call {
            fuel: row.fuel,
            memory_bytes: row.memory_bytes,
            output_bytes: usize::MAX,
            ..call(row.entry, input)
        };
        let report = run(&runtime, &wasm, &call, &MemoryKv::default());
        if report.outcome != row.expected {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                row.name, row.expected, report.outcome
            ));
        }
        if !report.outcome.is_ok() && !report.writes.is_empty() {
            failures.push(format!(
                "{}: writes survived {:?}",
                row.name, report.outcome
            ));
        }
        if report.outcome == Outcome::OutOfFuel && report.fuel_used != row.fuel {
            failures.push(format!(
                "{}: out of fuel after {} of {}",
                row.name, report.fuel_used, row.fuel
            ));
        }
        let entered = !matches!(
            report.outcome,
            Outcome::MissingExport(_) | Outcome::MemoryLimit
        );
        if entered && report.fuel_used == 0 {
            failures.push(format!("{}: no fuel reported", row.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_key_value_failure_is_reported_as_a_host_error() {
    let runtime = runtime();
    let report = run(
        &runtime,
        &wat_file("counter.wat"),
        &call(EntryPoint::Apply, b""),
        &BrokenKv,
    );
    assert_eq!(report.outcome, Outcome::Host(KvError::new("disk on fire")));
    assert!(report.writes.is_empty());
}

#[test]
fn a_query_past_its_wall_clock_limit_times_out() {
    let config = RuntimeConfig {
        fuel_per_call_max: u64::MAX,
        query_timeout: Duration::from_millis(30),
        ..test_config()
    };
    let runtime = Runtime::new(config).unwrap();
    let wasm = guest(
        r#"(func $spin (param i32 i32) (result i32) (loop $spin (br $spin)) (i32.const 0))
           (export "apply" (func $spin)) (export "query" (func $spin))"#,
    );
    let query = Call {
        fuel: u64::MAX,
        ..call(EntryPoint::Query, b"")
    };
    let report = run(&runtime, &wasm, &query, &MemoryKv::default());
    assert_eq!(report.outcome, Outcome::TimedOut);
    // Apply is never interrupted by time: with a bounded budget it runs out of fuel.
    let apply = Call {
        fuel: 20_000_000,
        ..call(EntryPoint::Apply, b"")
    };
    let report = run(&runtime, &wasm, &apply, &MemoryKv::default());
    assert_eq!(
        (report.outcome, report.fuel_used),
        (Outcome::OutOfFuel, 20_000_000)
    );
}

#[test]
fn the_guest_sees_caller_timestamp_and_seed_from_the_call() {
    let runtime = runtime();
    let wasm = wat_file("environment.wat");
    let apply = call(EntryPoint::Apply, b"");
    let report = run(&runtime, &wasm, &apply, &MemoryKv::default());
    let mut expected = 1_700_000_000_000i64.to_le_bytes().to_vec();
    expected.extend_from_slice(&[7; 32]);
    expected.extend_from_slice(b"alice");
    assert_eq!(report.outcome, Outcome::Ok(expected));
    // A query sees zero seed bytes, whatever the caller passes.
    let query = Call {
        caller: "",
        ..call(EntryPoint::Query, b"")
    };
    let report = run(&runtime, &wasm, &query, &MemoryKv::default());
    let mut expected = 1_700_000_000_000i64.to_le_bytes().to_vec();
    expected.extend_from_slice(&[0; 32]);
    assert_eq!(report.outcome, Outcome::Ok(expected));
}

/// What a deploy-time check is expected to say.
pub(crate) enum Rejection {
    Exactly(ValidationError),
    /// Not a valid module; the validator's message contains this.
    InvalidWith(&'static str),
}

const MARKER: &str = r#"(func (export "wasmraft_abi_version_1"))"#;
const ALLOC: &str = r#"(func (export "wasmraft_alloc") (param i32) (result i32) (i32.const 0))"#;
const APPLY: &str = r#"(func (export "apply") (param i32 i32) (result i32) (i32.const 0))"#;
const MEMORY_EXPORT: &str = r#"(memory (export "memory") 1)"#;

fn module_text(parts: &[&str]) -> Vec<u8> {
    wat::parse_str(format!("(module {})", parts.join("\n"))).expect("test WAT parses")
}

pub(crate) fn validation_rows() -> Vec<(&'static str, Vec<u8>, Rejection)> {
    use Rejection::{Exactly, InvalidWith};
    use ValidationError as E;
    // Imports come first in the text format.
    let all = |extra: &str| module_text(&[extra, MEMORY_EXPORT, MARKER, ALLOC, APPLY]);
    vec![
        (
            "bytes that are not wasm",
            b"not wasm at all".to_vec(),
            InvalidWith("magic header not detected"),
        ),
        (
            "truncated module",
            module_text(&[MEMORY_EXPORT, MARKER, ALLOC, APPLY])[..20].to_vec(),
            InvalidWith("unexpected end"),
        ),
        (
            "a component",
            wat::parse_str("(component)").unwrap(),
            Exactly(E::NotCoreModule),
        ),
        (
            // Compiling is the host's work: a module of a million empty
            // functions once took 79 s and 5.5 GB to compile.
            "10,001 functions",
            all(&"(func)".repeat(10_001)),
            Exactly(E::StaticLimit {
                what: "functions",
                count: 10_001 + 3,
                limit: 10_000,
            }),
        ),
        (
            "a function with 1,001 locals",
            all(&format!("(func (local{}))", " i32".repeat(1_001))),
            Exactly(E::StaticLimit {
                what: "locals in one function",
                count: 1_001,
                limit: 1_000,
            }),
        ),
        (
            "1,001 globals",
            all(&"(global i32 (i32.const 0))".repeat(1_001)),
            Exactly(E::StaticLimit {
                what: "globals",
                count: 1_001,
                limit: 1_000,
            }),
        ),
        (
            "a start function that loops",
            all("(func $spin (loop $again (br $again))) (start $spin)"),
            Exactly(E::StartFunction),
        ),
        (
            "a WASI import",
            all(
                r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
            ),
            Exactly(E::ForeignImport {
                module: "wasi_snapshot_preview1".to_string(),
                name: "fd_write".to_string(),
            }),
        ),
        (
            "an unknown wasmraft import",
            all(r#"(import "wasmraft" "nope" (func))"#),
            Exactly(E::UnknownImport {
                name: "nope".to_string(),
            }),
        ),
        (
            "a wrong import signature",
            all(r#"(import "wasmraft" "kv_get" (func (param i32) (result i64)))"#),
            Exactly(E::ImportSignature {
                name: "kv_get".to_string(),
                expected: "(i32, i32) -> (i64)".to_string(),
                found: "(i32) -> (i64)".to_string(),
            }),
        ),
        (
            "an imported memory",
            module_text(&[
                r#"(import "wasmraft" "memory" (memory 1))"#,
                MARKER,
                ALLOC,
                APPLY,
            ]),
            Exactly(E::NonFunctionImport {
                module: "wasmraft".to_string(),
                name: "memory".to_string(),
                kind: "a memory",
            }),
        ),
        (
            "an imported global",
            all(r#"(import "env" "g" (global i32))"#),
            Exactly(E::NonFunctionImport {
                module: "env".to_string(),
                name: "g".to_string(),
                kind: "a global",
            }),
        ),
        (
            "no memory export",
            module_text(&["(memory 1)", MARKER, ALLOC, APPLY]),
            Exactly(E::MissingExport { name: "memory" }),
        ),
        (
            "no ABI marker",
            module_text(&[MEMORY_EXPORT, ALLOC, APPLY]),
            Exactly(E::MissingExport {
                name: "wasmraft_abi_version_1",
            }),
        ),
        (
            "no allocator",
            module_text(&[MEMORY_EXPORT, MARKER, APPLY]),
            Exactly(E::MissingExport {
                name: "wasmraft_alloc",
            }),
        ),
        (
            "no apply",
            module_text(&[MEMORY_EXPORT, MARKER, ALLOC]),
            Exactly(E::MissingExport { name: "apply" }),
        ),
        (
            "apply of the wrong type",
            module_text(&[
                MEMORY_EXPORT,
                MARKER,
                ALLOC,
                r#"(func (export "apply") (param i32) (result i32) (i32.const 0))"#,
            ]),
            Exactly(E::ExportType {
                name: "apply",
                expected: "a function (i32, i32) -> (i32)".to_string(),
                found: "a function (i32) -> (i32)".to_string(),
            }),
        ),
        (
            "query of the wrong type",
            all(r#"(func (export "query") (param i32 i32))"#),
            Exactly(E::ExportType {
                name: "query",
                expected: "a function (i32, i32) -> (i32)".to_string(),
                found: "a function (i32, i32) -> ()".to_string(),
            }),
        ),
        (
            "memory exported as a global",
            module_text(&[
                "(memory 1)",
                r#"(global (export "memory") i32 (i32.const 0))"#,
                MARKER,
                ALLOC,
                APPLY,
            ]),
            Exactly(E::ExportType {
                name: "memory",
                expected: "a memory".to_string(),
                found: "a global".to_string(),
            }),
        ),
        (
            "declared memory above the cap",
            module_text(&[r#"(memory (export "memory") 257)"#, MARKER, ALLOC, APPLY]),
            Exactly(E::MemoryTooLarge {
                pages_min: 257,
                pages_limit: 256,
            }),
        ),
        (
            "a shared memory",
            module_text(&[
                r#"(memory (export "memory") 1 1 shared)"#,
                MARKER,
                ALLOC,
                APPLY,
            ]),
            Exactly(E::SharedMemory),
        ),
        (
            "atomics (threads)",
            all(r#"(func (drop (i32.atomic.load (i32.const 0))))"#),
            InvalidWith("threads support is not enabled"),
        ),
        (
            "a 64-bit memory",
            module_text(&[r#"(memory (export "memory") i64 1)"#, MARKER, ALLOC, APPLY]),
            Exactly(E::Memory64),
        ),
        (
            "two memories",
            module_text(&[MEMORY_EXPORT, "(memory 1)", MARKER, ALLOC, APPLY]),
            Exactly(E::MultipleMemories { count: 2 }),
        ),
        (
            "two tables",
            all("(table 1 funcref) (table 1 funcref)"),
            Exactly(E::TooManyTables { count: 2, limit: 1 }),
        ),
        (
            "a huge table",
            all("(table 100000 funcref)"),
            Exactly(E::TableTooLarge {
                elements_min: 100_000,
                elements_limit: 65_536,
            }),
        ),
        (
            "tail calls",
            all("(func $f (return_call $f))"),
            InvalidWith("tail calls support is not enabled"),
        ),
    ]
}

#[test]
fn deploy_rejections() {
    let runtime = runtime();
    let mut failures = Vec::new();
    for (name, wasm, expected) in validation_rows() {
        let result = runtime.validate(&wasm);
        let matched = match (&result, &expected) {
            (Err(error), Rejection::Exactly(expected)) => error == expected,
            (Err(ValidationError::Invalid(message)), Rejection::InvalidWith(part)) => {
                message.contains(part)
            }
            _ => false,
        };
        if !matched {
            let wanted = match &expected {
                Rejection::Exactly(error) => format!("{error:?}"),
                Rejection::InvalidWith(part) => format!("Invalid(…{part}…)"),
            };
            failures.push(format!("{name}: expected {wanted}, got {result:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_module_above_the_size_cap_is_rejected() {
    let config = RuntimeConfig {
        module_bytes_max: 64 << 10,
        ..test_config()
    };
    let runtime = Runtime::new(config).unwrap();
    let data = "x".repeat(70_000);
    let wasm = module_text(&[
        MEMORY_EXPORT,
        MARKER,
        ALLOC,
        APPLY,
        &format!(r#"(data (i32.const 0) "{data}")"#),
    ]);
    assert_eq!(
        runtime.validate(&wasm),
        Err(ValidationError::TooLarge {
            size_bytes: wasm.len(),
            limit_bytes: 64 << 10
        })
    );
}

#[test]
fn rejections_name_what_to_fix() {
    let rows = [
        (
            ValidationError::ForeignImport {
                module: "wasi_snapshot_preview1".into(),
                name: "fd_write".into(),
            },
            "imports `wasi_snapshot_preview1.fd_write`: only functions of the `wasmraft` namespace may be imported (no WASI)",
        ),
        (
            ValidationError::UnknownImport {
                name: "nope".into(),
            },
            "imports `wasmraft.nope`, which ABI v1 does not define",
        ),
        (
            ValidationError::StartFunction,
            "has a start function: not allowed, initialise state in the `init` export instead",
        ),
        (
            ValidationError::MemoryTooLarge {
                pages_min: 257,
                pages_limit: 256,
            },
            "declares a minimum memory of 257 pages, above the cap of 256 pages (64 KiB each)",
        ),
    ];
    for (error, message) in rows {
        assert_eq!(error.to_string(), message);
    }
}

#[test]
fn valid_modules_are_described() {
    let runtime = runtime();
    let info = runtime.validate(&wat_file("counter.wat")).unwrap();
    assert_eq!(
        (
            info.memory_pages_min,
            info.has_query,
            info.has_init,
            info.has_migrate
        ),
        (1, true, false, false)
    );
    let script = wat_file("script.wat");
    let info = runtime.validate(&script).unwrap();
    assert_eq!((info.memory_pages_min, info.size_bytes), (4, script.len()));
}

/// The hand-written counter: ABI v1 is writable without the SDK.
#[test]
fn hand_written_counter() {
    let runtime = runtime();
    let wasm = wat_file("counter.wat");
    let info = runtime.validate(&wasm).unwrap();
    let module = runtime.load(&info.hash, &wasm).unwrap();
    let mut kv = MemoryKv::default();
    for (input, expected) in [
        (&b""[..], 1u64),
        (&5u64.to_le_bytes()[..], 6),
        (&b"x"[..], 7),
    ] {
        let report = runtime.call(&module, &call(EntryPoint::Apply, input), &kv);
        assert_eq!(report.outcome, Outcome::Ok(expected.to_le_bytes().to_vec()));
        let written: Vec<_> = report
            .writes
            .iter()
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(
            written,
            vec![(b"n".to_vec(), Some(expected.to_le_bytes().to_vec()))]
        );
        kv.commit(report.writes);
    }
    let report = runtime.call(&module, &call(EntryPoint::Query, b""), &kv);
    assert_eq!(report.outcome, Outcome::Ok(7u64.to_le_bytes().to_vec()));
    assert!(report.writes.is_empty());
}

/// One operation of `script.wat`.
enum Op<'a> {
    Set(&'a str, &'a str),
    Delete(&'a str),
    Get(&'a str),
    Scan(&'a str, Option<&'a str>, u8),
    Log(&'a str),
}

fn script(ops: &[Op<'_>]) -> Vec<u8> {
    fn push(bytes: &mut Vec<u8>, op: u8, key: &str) {
        bytes.push(op);
        bytes.push(key.len() as u8);
        bytes.extend_from_slice(key.as_bytes());
    }
    let mut bytes = Vec::new();
    for op in ops {
        match op {
            Op::Set(key, value) => {
                push(&mut bytes, b'S', key);
                bytes.push(value.len() as u8);
                bytes.extend_from_slice(value.as_bytes());
            }
            Op::Delete(key) => push(&mut bytes, b'D', key),
            Op::Get(key) => push(&mut bytes, b'G', key),
            Op::Log(line) => push(&mut bytes, b'L', line),
            Op::Scan(start, end, limit) => {
                push(&mut bytes, b'N', start);
                match end {
                    Some(end) => {
                        bytes.push(end.len() as u8);
                        bytes.extend_from_slice(end.as_bytes());
                    }
                    None => bytes.push(255),
                }
                bytes.push(*limit);
            }
        }
    }
    bytes
}

/// What a script's G and N operations produced, decoded.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Value(Option<String>),
    Page {
        more: bool,
        entries: Vec<(String, String)>,
    },
}

fn decode_reads(ops: &[Op<'_>], output: &[u8]) -> Vec<Read> {
    let mut rest = output;
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head.to_vec()
    };
    let mut reads = Vec::new();
    for op in ops {
        let is_scan = match op {
            Op::Get(_) => false,
            Op::Scan(..) => true,
            _ => continue,
        };
        let length = i32::from_le_bytes(take(4).try_into().unwrap());
        if !is_scan {
            let value = (length >= 0).then(|| String::from_utf8(take(length as usize)).unwrap());
            reads.push(Read::Value(value));
            continue;
        }
        let page = take(length as usize);
        let mut entries = Vec::new();
        let mut cursor = &page[1..];
        let field = |cursor: &mut &[u8]| {
            let length = u32::from_le_bytes(cursor[..4].try_into().unwrap()) as usize;
            let text = String::from_utf8(cursor[4..4 + length].to_vec()).unwrap();
            *cursor = &cursor[4 + length..];
            text
        };
        while !cursor.is_empty() {
            let key = field(&mut cursor);
            entries.push((key, field(&mut cursor)));
        }
        reads.push(Read::Page {
            more: page[0] == 1,
            entries,
        });
    }
    assert!(rest.is_empty(), "output fully decoded");
    reads
}

fn page(more: bool, entries: &[(&str, &str)]) -> Read {
    Read::Page {
        more,
        entries: entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn value(value: Option<&str>) -> Read {
    Read::Value(value.map(str::to_string))
}

#[test]
fn reads_see_the_calls_own_writes() {
    use Op::{Delete, Get, Log, Scan, Set};
    let base = memory_kv(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")]);
    let rows: Vec<(&str, Vec<Op<'_>>, Vec<Read>)> = vec![
        (
            "get sees a set, a delete and the base",
            vec![
                Set("a", "new"),
                Delete("b"),
                Get("a"),
                Get("b"),
                Get("c"),
                Get("zz"),
            ],
            vec![
                value(Some("new")),
                value(None),
                value(Some("3")),
                value(None),
            ],
        ),
        (
            "a delete then a set of the same key",
            vec![Delete("c"), Set("c", "back"), Get("c")],
            vec![value(Some("back"))],
        ),
        (
            "scan merges new keys and hides deleted base keys",
            vec![
                Delete("b"),
                Set("bb", "x"),
                Set("d", "44"),
                Delete("e"),
                Scan("", None, 10),
            ],
            vec![page(
                false,
                &[("a", "1"), ("bb", "x"), ("c", "3"), ("d", "44")],
            )],
        ),
        (
            "pages continued from the last key plus a zero byte",
            vec![
                Set("ab", "x"),
                Scan("", None, 2),
                Scan("ab\0", None, 2),
                Scan("c\0", None, 2),
                Scan("d\0", None, 2),
            ],
            vec![
                page(true, &[("a", "1"), ("ab", "x")]),
                page(true, &[("b", "2"), ("c", "3")]),
                // Exactly the end of the range: nothing more.
                page(false, &[("d", "4"), ("e", "5")]),
                page(false, &[("e", "5")]),
            ],
        ),
        (
            "a page exactly at the end of the range has no more",
            vec![Scan("b", Some("d"), 2)],
            vec![page(false, &[("b", "2"), ("c", "3")])],
        ),
        (
            "deletes hiding a whole base page",
            vec![Delete("a"), Delete("b"), Delete("c"), Scan("", None, 1)],
            vec![page(true, &[("d", "4")])],
        ),
        (
            "everything deleted",
            vec![
                Delete("a"),
                Delete("b"),
                Delete("c"),
                Delete("d"),
                Delete("e"),
                Scan("", None, 3),
            ],
            vec![page(false, &[])],
        ),
        (
            "bounded scan over new keys only",
            vec![
                Set("x1", "1"),
                Set("x2", "2"),
                Set("y", "3"),
                Scan("x", Some("y"), 5),
                Log("scanned"),
            ],
            vec![page(false, &[("x1", "1"), ("x2", "2")])],
        ),
    ];
    let runtime = runtime();
    let wasm = wat_file("script.wat");
    let info = runtime.validate(&wasm).unwrap();
    let module = runtime.load(&info.hash, &wasm).unwrap();
    for (name, ops, expected) in rows {
        let input = script(&ops);
        let report = runtime.call(&module, &call(EntryPoint::Apply, &input), &base);
        let Outcome::Ok(output) = &report.outcome else {
            panic!("{name}: {:?}", report.outcome);
        };
        assert_eq!(decode_reads(&ops, output), expected, "{name}");
    }
}

#[test]
fn write_set_is_returned_in_key_order() {
    use Op::{Delete, Set};
    let runtime = runtime();
    let wasm = wat_file("script.wat");
    let ops = [Set("m", "1"), Set("a", "2"), Delete("z"), Set("m", "3")];
    let report = run(
        &runtime,
        &wasm,
        &call(EntryPoint::Apply, &script(&ops)),
        &MemoryKv::default(),
    );
    assert_eq!(report.outcome, Outcome::Ok(Vec::new()));
    let writes: Vec<_> = report
        .writes
        .iter()
        .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
        .collect();
    assert_eq!(
        writes,
        vec![
            (b"a".to_vec(), Some(b"2".to_vec())),
            (b"m".to_vec(), Some(b"3".to_vec())),
            (b"z".to_vec(), None)
        ]
    );
}

/// The canonical NaNs: what every replica must compute, whatever its CPU does natively.
const F32_CANONICAL_NAN: u32 = 0x7fc0_0000;
const F64_CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

#[test]
fn nans_are_canonical() {
    let runtime = runtime();
    let report = run(
        &runtime,
        &wat_file("floats.wat"),
        &call(EntryPoint::Apply, b""),
        &MemoryKv::default(),
    );
    let Outcome::Ok(bits) = report.outcome else {
        panic!("{:?}", report.outcome)
    };
    let f32_at = |at: usize| u32::from_le_bytes(bits[at..at + 4].try_into().unwrap());
    let f64_at = |at: usize| u64::from_le_bytes(bits[at..at + 8].try_into().unwrap());
    assert_eq!(f32_at(0), F32_CANONICAL_NAN, "f32 0/0");
    assert_eq!(f64_at(4), F64_CANONICAL_NAN, "f64 0/0");
    assert_eq!(f32_at(12), F32_CANONICAL_NAN, "f32 sqrt(-1)");
    assert_eq!(f64_at(16), F64_CANONICAL_NAN, "f64 sqrt(-1)");
    assert_eq!(f32_at(24), F32_CANONICAL_NAN, "f32 NaN payload + 1");
    assert_eq!(f64_at(28), F64_CANONICAL_NAN, "promoted NaN");
    assert_eq!(f32_at(36), F32_CANONICAL_NAN, "demoted NaN");
    for lane in 0..4 {
        assert_eq!(
            f32_at(40 + 4 * lane),
            F32_CANONICAL_NAN,
            "f32x4 0/0 lane {lane}"
        );
    }
    assert_eq!(report.writes.get(b"floats"), Some(Some(&bits[..])));
}

/// The same calls on two independent runtimes (separate engines and caches) give
/// byte-identical reports: outcomes, write sets and fuel.
#[test]
fn two_runtimes_agree_byte_for_byte() {
    use Op::{Delete, Get, Scan, Set};
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    let runtimes = [first_dir.path(), second_dir.path()].map(|dir| {
        Runtime::new(RuntimeConfig {
            cache_dir: Some(dir.to_path_buf()),
            ..test_config()
        })
        .unwrap()
    });
    assert_eq!(
        runtimes[0].engine_fingerprint(),
        runtimes[1].engine_fingerprint()
    );

    let counter = wat_file("counter.wat");
    let script_wasm = wat_file("script.wat");
    let floats = wat_file("floats.wat");
    let spin = guest(
        r#"(func (export "apply") (param i32 i32) (result i32) (loop $spin (br $spin)) (i32.const 0))"#,
    );
    let recursion = guest(
        r#"(func $deep (export "apply") (param i32 i32) (result i32) (call $deep (local.get 0) (local.get 1)))"#,
    );
    let script_input = script(&[
        Set("k1", "v"),
        Get("k1"),
        Delete("n"),
        Scan("", None, 4),
        Set("k2", "w"),
    ]);
    let five = 5u64.to_le_bytes();
    let steps: Vec<(&[u8], EntryPoint, &[u8])> = vec![
        (&counter, EntryPoint::Apply, b""),
        (&counter, EntryPoint::Apply, &five),
        (&floats, EntryPoint::Apply, b""),
        (&script_wasm, EntryPoint::Apply, &script_input),
        (&spin, EntryPoint::Apply, b""),
        (&recursion, EntryPoint::Apply, b""),
        (&counter, EntryPoint::Apply, b""),
        (&counter, EntryPoint::Query, b""),
    ];
    let mut histories = Vec::new();
    for runtime in &runtimes {
        let mut kv = MemoryKv::default();
        let mut history = Vec::new();
        for (wasm, entry, input) in &steps {
            let report = run(runtime, wasm, &call(*entry, input), &kv);
            history.push(report.clone());
            kv.commit(report.writes);
        }
        histories.push((history, kv));
    }
    assert_eq!(histories[0], histories[1]);
    let (history, _) = &histories[0];
    assert!(history.iter().all(|report| report.fuel_used > 0));
    assert_eq!(history[4].outcome, Outcome::OutOfFuel);
}

#[test]
fn a_restart_loads_from_the_disk_cache_and_distrusts_a_corrupted_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = || RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..test_config()
    };
    let wasm = wat_file("counter.wat");
    let apply = call(EntryPoint::Apply, b"");

    let first = Runtime::new(config()).unwrap();
    let info = first.validate(&wasm).unwrap();
    let module = first.load(&info.hash, &wasm).unwrap();
    assert!(!module.from_disk_cache());
    assert_eq!(
        first.stats().compilations,
        1,
        "validate compiled once, load reused it"
    );
    let expected = first.call(&module, &apply, &MemoryKv::default());

    let files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "cwasm")
        })
        .collect();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&hex::encode(info.hash)), "{name}");
    // The file is keyed by this host's own engine hash, not the cluster-wide
    // fingerprint: a compiled artifact may use CPU features of this machine.
    assert!(!name.contains(&first.engine_fingerprint()), "{name}");

    // A restart: a new runtime over the same directory does not compile.
    let second = Runtime::new(config()).unwrap();
    assert!(second.cached(&[9; 32]).is_none());
    let module = second
        .cached(&info.hash)
        .expect("the disk cache has it, no wasm needed");
    assert!(module.from_disk_cache());
    assert_eq!(
        (second.stats().compilations, second.stats().disk_cache_hits),
        (0, 1)
    );
    assert_eq!(second.call(&module, &apply, &MemoryKv::default()), expected);

    // A corrupted file is detected, not trusted: recompiled and rewritten.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    let third = Runtime::new(config()).unwrap();
    let module = third.load(&info.hash, &wasm).unwrap();
    assert!(!module.from_disk_cache());
    let stats = third.stats();
    assert_eq!((stats.disk_cache_rejections, stats.compilations), (1, 1));
    assert_eq!(third.call(&module, &apply, &MemoryKv::default()), expected);

    let fourth = Runtime::new(config()).unwrap();
    assert!(fourth.load(&info.hash, &wasm).unwrap().from_disk_cache());
}

#[test]
fn load_checks_the_hash_and_validates() {
    let runtime = runtime();
    let wasm = wat_file("counter.wat");
    let error = runtime.load(&[0; 32], &wasm).unwrap_err();
    assert!(error.to_string().contains("hash to"), "{error}");
    let start = module_text(&[MEMORY_EXPORT, MARKER, ALLOC, APPLY, "(func $s) (start $s)"]);
    let hash = sha2_digest(&start);
    assert!(matches!(
        runtime.load(&hash, &start),
        Err(wasmraft::wasm::RuntimeError::Invalid(
            ValidationError::StartFunction
        ))
    ));
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[test]
fn a_runtime_without_fuel_metering_has_another_fingerprint() {
    let metered = runtime();
    let unmetered = Runtime::new_unmetered_for_benchmarks(test_config()).unwrap();
    assert_ne!(metered.engine_fingerprint(), unmetered.engine_fingerprint());
    let fingerprint = metered.engine_fingerprint();
    let hash = fingerprint
        .strip_prefix(wasmraft::wasm::FINGERPRINT_PREFIX)
        .expect("prefixed");
    assert_eq!(hash.len(), 64, "{fingerprint}");
    assert!(hash.bytes().all(|byte| byte.is_ascii_hexdigit()));
}

#[test]
fn calls_run_concurrently_from_many_threads() {
    let runtime = runtime();
    let wasm = wat_file("counter.wat");
    let info = runtime.validate(&wasm).unwrap();
    let module = runtime.load(&info.hash, &wasm).unwrap();
    let kv = memory_kv(&[("n", "\u{1}\0\0\0\0\0\0\0")]);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..20 {
                    let report = runtime.call(&module, &call(EntryPoint::Query, b""), &kv);
                    assert_eq!(report.outcome, Outcome::Ok(1u64.to_le_bytes().to_vec()));
                }
            });
        }
    });
}

/// A key-value source whose reads wait until the test opens its gate, so a
/// query can be held inside its instance for as long as the test needs.
struct GatedKv {
    state: std::sync::Mutex<(bool, bool)>,
    changed: std::sync::Condvar,
}

impl GatedKv {
    fn new() -> GatedKv {
        GatedKv {
            state: std::sync::Mutex::new((false, false)),
            changed: std::sync::Condvar::new(),
        }
    }

    /// Waits until a read is waiting at the gate.
    fn wait_for_reader(&self) {
        let state = self.state.lock().unwrap();
        let (_state, timeout) = self
            .changed
            .wait_timeout_while(state, Duration::from_secs(60), |(entered, _)| !*entered)
            .unwrap();
        assert!(!timeout.timed_out(), "the query never read");
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

impl KvSource for GatedKv {
    fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let mut state = self.state.lock().unwrap();
        state.0 = true;
        self.changed.notify_all();
        while !state.1 {
            state = self.changed.wait(state).unwrap();
        }
        Ok(None)
    }

    fn scan(
        &self,
        _start: &[u8],
        _end: Option<&[u8]>,
        _limit: usize,
        _bytes_max: usize,
    ) -> Result<wasmraft::wasm::KvEntries, KvError> {
        Ok(Vec::new())
    }
}

/// Apply has instances of its own: with every query instance held by a
/// query that does not finish, an apply still runs at once.
#[test]
fn apply_runs_while_queries_hold_every_query_instance() {
    let runtime = Runtime::new(RuntimeConfig {
        instances_max: wasmraft::wasm::APPLY_INSTANCES + 1,
        ..test_config()
    })
    .unwrap();
    let wasm = wat::parse_str(
        r#"(module
            (import "wasmraft" "kv_get" (func $kv_get (param i32 i32) (result i64)))
            (memory (export "memory") 1)
            (data (i32.const 0) "k")
            (func (export "wasmraft_abi_version_1"))
            (func (export "wasmraft_alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "apply") (param i32 i32) (result i32) (i32.const 0))
            (func (export "query") (param i32 i32) (result i32)
              (drop (call $kv_get (i32.const 0) (i32.const 1)))
              (i32.const 0)))"#,
    )
    .unwrap();
    let info = runtime.validate(&wasm).unwrap();
    let module = runtime.load(&info.hash, &wasm).unwrap();
    let gate = std::sync::Arc::new(GatedKv::new());
    let held = {
        let (runtime, module, gate) = (runtime.clone(), module.clone(), gate.clone());
        std::thread::spawn(move || {
            runtime
                .call(&module, &call(EntryPoint::Query, b""), gate.as_ref())
                .outcome
        })
    };
    gate.wait_for_reader();
    assert_eq!(runtime.stats().query_instances_in_use, 1);
    let (done, applied) = std::sync::mpsc::channel();
    {
        let (runtime, module) = (runtime.clone(), module.clone());
        std::thread::spawn(move || {
            let report = runtime.call(&module, &call(EntryPoint::Apply, b""), &MemoryKv::new());
            let _ = done.send(report.outcome);
        });
    }
    let outcome = applied
        .recv_timeout(Duration::from_secs(60))
        .expect("apply waited for the query's instance");
    assert!(matches!(outcome, Outcome::Ok(_)), "{outcome:?}");
    assert_eq!(
        runtime.stats().query_instances_in_use,
        1,
        "the query was still running"
    );
    gate.open();
    assert!(matches!(held.join().unwrap(), Outcome::Ok(_)));
}
