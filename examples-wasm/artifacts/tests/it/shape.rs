//! Every artifact is a valid core module that speaks ABI v1: the marker and required
//! exports with their types, imports only from `wasmraft` with the listed signatures,
//! no start function, and a memory within the default cap.

use wasmtime::wasmparser::{
    CompositeInnerType, ExternalKind, FuncType, Parser, Payload, TypeRef, ValType, Validator,
    WasmFeatures,
};

use wasmraft_examples::{ALL, BANK_WASM, COUNTER_WASM, KV_WASM};

use ValType::{I32, I64};

/// ABI.md's import table.
const IMPORTS: &[(&str, &[ValType], &[ValType])] = &[
    ("kv_get", &[I32, I32], &[I64]),
    ("kv_set", &[I32, I32, I32, I32], &[]),
    ("kv_delete", &[I32, I32], &[]),
    ("kv_scan", &[I32, I32, I32, I32, I32], &[I64]),
    ("caller", &[], &[I32]),
    ("timestamp_ms", &[], &[I64]),
    ("seed", &[I32], &[]),
    ("result_read", &[I32], &[]),
    ("output", &[I32, I32], &[]),
    ("log", &[I32, I32, I32], &[]),
    ("abort", &[I32, I32], &[]),
];

/// Exports with a function type: name, params, results.
const ENTRY: (&[ValType], &[ValType]) = (&[I32, I32], &[I32]);

/// The default memory cap, in pages.
const MEMORY_PAGES_MAX: u64 = 256;

#[derive(Default, Debug)]
struct Shape {
    imports: Vec<(String, String, FuncType)>,
    functions: Vec<(String, FuncType)>,
    memories: Vec<(String, u64)>,
    has_start: bool,
}

fn shape(bytes: &[u8]) -> Shape {
    let mut types = Vec::new();
    let mut function_types = Vec::new();
    let mut memory_minimums = Vec::new();
    let mut shape = Shape::default();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.expect("the module parses") {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub_type in group.expect("a type").into_types() {
                        match sub_type.composite_type.inner {
                            CompositeInnerType::Func(func) => types.push(func),
                            other => panic!("unexpected type {other:?}"),
                        }
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.expect("an import");
                    let TypeRef::Func(index) = import.ty else {
                        panic!("a non-function import: {import:?}");
                    };
                    function_types.push(index);
                    shape.imports.push((
                        import.module.to_string(),
                        import.name.to_string(),
                        types[index as usize].clone(),
                    ));
                }
            }
            Payload::FunctionSection(reader) => {
                for index in reader {
                    function_types.push(index.expect("a function"));
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    memory_minimums.push(memory.expect("a memory").initial);
                }
            }
            Payload::StartSection { .. } => shape.has_start = true,
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.expect("an export");
                    match export.kind {
                        ExternalKind::Func => {
                            let type_index = function_types[export.index as usize];
                            shape.functions.push((
                                export.name.to_string(),
                                types[type_index as usize].clone(),
                            ));
                        }
                        ExternalKind::Memory => shape.memories.push((
                            export.name.to_string(),
                            memory_minimums[export.index as usize],
                        )),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    shape
}

fn signature(func: &FuncType) -> (&[ValType], &[ValType]) {
    (func.params(), func.results())
}

#[test]
fn every_example_is_there() {
    let names: Vec<_> = ALL.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["counter", "kv", "bank"]);
    assert_eq!(wasmraft_examples::by_name("kv"), Some(KV_WASM));
    assert_eq!(wasmraft_examples::by_name("nope"), None);
}

#[test]
fn artifacts_validate_with_the_host_features() {
    // ABI.md, "Module shape": MVP plus these; threads, memory64, multi-memory,
    // exceptions, GC and tail calls off.
    let features = WasmFeatures::MUTABLE_GLOBAL
        | WasmFeatures::SIGN_EXTENSION
        | WasmFeatures::SATURATING_FLOAT_TO_INT
        | WasmFeatures::MULTI_VALUE
        | WasmFeatures::BULK_MEMORY
        | WasmFeatures::REFERENCE_TYPES
        | WasmFeatures::SIMD
        | WasmFeatures::RELAXED_SIMD
        | WasmFeatures::FLOATS;
    for (name, bytes) in ALL {
        assert_eq!(
            &bytes[..8],
            b"\0asm\x01\0\0\0",
            "{name} starts with the wasm magic and version 1"
        );
        Validator::new_with_features(features)
            .validate_all(bytes)
            .unwrap_or_else(|error| panic!("{name} does not validate: {error}"));
        assert!(
            bytes.len() < 512 << 10,
            "{name} is {} bytes; the examples should stay small",
            bytes.len()
        );
    }
}

#[test]
fn artifacts_import_only_the_wasmraft_namespace_with_abi_signatures() {
    for (name, bytes) in ALL {
        let shape = shape(bytes);
        assert!(!shape.imports.is_empty(), "{name} imports something");
        for (module, field, func) in &shape.imports {
            assert_eq!(module, "wasmraft", "{name} imports {module}::{field}");
            let (_, params, results) = IMPORTS
                .iter()
                .find(|(import, _, _)| import == field)
                .unwrap_or_else(|| panic!("{name} imports {field}, which ABI v1 lacks"));
            assert_eq!(
                signature(func),
                (*params, *results),
                "{name}: signature of {field}"
            );
        }
    }
}

#[test]
fn artifacts_export_the_abi() {
    let expected_entries = [
        (COUNTER_WASM, &["apply", "query", "init"][..]),
        (KV_WASM, &["apply", "query"][..]),
        (BANK_WASM, &["apply", "query"][..]),
    ];
    for (bytes, entries) in expected_entries {
        let shape = shape(bytes);
        let function = |name: &str| {
            shape
                .functions
                .iter()
                .find(|(export, _)| export == name)
                .map(|(_, func)| signature(func))
        };
        assert_eq!(function("wasmraft_abi_version_1"), Some((&[][..], &[][..])));
        assert_eq!(function("wasmraft_alloc"), Some((&[I32][..], &[I32][..])));
        for entry in ["apply", "query", "init", "migrate"] {
            let expected = entries.contains(&entry).then_some(ENTRY);
            assert_eq!(function(entry), expected, "export {entry}");
        }
        assert_eq!(shape.memories.len(), 1);
        let (memory, minimum) = &shape.memories[0];
        assert_eq!(memory, "memory");
        assert!(
            *minimum <= MEMORY_PAGES_MAX,
            "declared minimum {minimum} pages"
        );
        assert!(!shape.has_start, "no start function");
    }
}
