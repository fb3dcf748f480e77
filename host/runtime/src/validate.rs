//! Deploy-time checks of a module's bytes against ABI v1: pure, no engine, one error per broken rule.

use std::fmt;

use sha2::{Digest, Sha256};
use wasmtime::wasmparser::{
    CompositeInnerType, Encoding, ExternalKind, FuncType, Parser, Payload, TypeRef, ValType,
    Validator, WasmFeatures,
};

use super::abi::{self, AbiType};

/// The wasm features of ABI v1 ("Module shape"); every other feature is disabled, in the
/// engine and in validation, so that a wasmtime default changing cannot change what runs.
pub(crate) const FEATURES: WasmFeatures = WasmFeatures::MUTABLE_GLOBAL
    .union(WasmFeatures::SATURATING_FLOAT_TO_INT)
    .union(WasmFeatures::SIGN_EXTENSION)
    .union(WasmFeatures::MULTI_VALUE)
    .union(WasmFeatures::BULK_MEMORY)
    .union(WasmFeatures::REFERENCE_TYPES)
    .union(WasmFeatures::SIMD)
    .union(WasmFeatures::RELAXED_SIMD)
    .union(WasmFeatures::FLOATS);

/// Tables a module may define (compilers emit one, for indirect calls).
pub(crate) const TABLES_MAX: u32 = 1;
/// Initial elements of that table; it also cannot grow past this.
pub(crate) const TABLE_ELEMENTS_MAX: u64 = 65_536;

/// The static limits of ABI v1 (`guest-sdk/ABI.md`), checked before a module is
/// compiled, so that compiling any module that passes them stays bounded in time
/// and memory (`benches/src/bin/wasmraft-limits.rs` measures it at every limit).
pub(crate) const FUNCTIONS_MAX: u32 = 10_000;
pub(crate) const FUNCTION_BODY_BYTES_MAX: usize = 64 * 1024;
/// The bytes of all function bodies together.
pub(crate) const CODE_BYTES_MAX: usize = 2 * 1024 * 1024;
pub(crate) const LOCALS_PER_FUNCTION_MAX: u64 = 1_000;
pub(crate) const TYPES_MAX: u32 = 1_000;
pub(crate) const IMPORTS_MAX: u32 = 64;
pub(crate) const EXPORTS_MAX: u32 = 128;
pub(crate) const GLOBALS_MAX: u32 = 1_000;
pub(crate) const DATA_SEGMENTS_MAX: u32 = 1_000;
pub(crate) const ELEMENT_SEGMENTS_MAX: u32 = 1_000;

/// Refuses a section whose item count is above `limit`.
fn at_most(what: &'static str, count: u64, limit: u64) -> Result<(), ValidationError> {
    if count > limit {
        return Err(ValidationError::StaticLimit { what, count, limit });
    }
    Ok(())
}

/// The caps a deploy is checked against besides the static limits of ABI v1:
/// the cluster settings' module size and memory maxima.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeployLimits {
    pub module_bytes_max: usize,
    pub memory_bytes_max: u64,
}

/// What the host learned about a module that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// sha256 of the bytes: the module's content address.
    pub hash: [u8; 32],
    pub size_bytes: usize,
    /// The declared minimum of `memory`, in 64 KiB pages.
    pub memory_pages_min: u64,
    pub has_query: bool,
    pub has_init: bool,
    pub has_migrate: bool,
}

/// Why a module was rejected at deploy. `Display` tells the module author what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValidationError {
    TooLarge {
        size_bytes: usize,
        limit_bytes: usize,
    },
    /// Not a well-formed, valid WebAssembly module with the ABI's features.
    Invalid(String),
    /// A component (or other encoding) rather than a core module.
    NotCoreModule,
    /// An import from a namespace other than `wasmraft` (WASI included).
    ForeignImport {
        module: String,
        name: String,
    },
    /// An import from `wasmraft` that ABI v1 does not define.
    UnknownImport {
        name: String,
    },
    ImportSignature {
        name: String,
        expected: String,
        found: String,
    },
    /// A memory, table, global or tag import.
    NonFunctionImport {
        module: String,
        name: String,
        kind: &'static str,
    },
    SharedMemory,
    Memory64,
    MultipleMemories {
        count: u32,
    },
    MemoryTooLarge {
        pages_min: u64,
        pages_limit: u64,
    },
    /// A static limit of ABI v1 exceeded: `count` of `what` where `limit` are allowed.
    StaticLimit {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    TooManyTables {
        count: u32,
        limit: u32,
    },
    TableTooLarge {
        elements_min: u64,
        elements_limit: u64,
    },
    StartFunction,
    MissingExport {
        name: &'static str,
    },
    ExportType {
        name: &'static str,
        expected: String,
        found: String,
    },
    /// Compilation by the engine failed.
    Compile(String),
    /// The compiled module could not be instantiated within the instance limits.
    DoesNotFit(String),
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValidationError::TooLarge { size_bytes, limit_bytes } => write!(
                f,
                "module is {size_bytes} bytes, above the module size cap of {limit_bytes} bytes"
            ),
            ValidationError::Invalid(message) => {
                write!(f, "not a valid WebAssembly module for ABI v1: {message}")
            }
            ValidationError::NotCoreModule => f.write_str(
                "this is a WebAssembly component; wasmraft runs core modules (build for wasm32-unknown-unknown)",
            ),
            ValidationError::ForeignImport { module, name } => write!(
                f,
                "imports `{module}.{name}`: only functions of the `wasmraft` namespace may be imported (no WASI)"
            ),
            ValidationError::UnknownImport { name } => {
                write!(f, "imports `wasmraft.{name}`, which ABI v1 does not define")
            }
            ValidationError::ImportSignature { name, expected, found } => write!(
                f,
                "imports `wasmraft.{name}` with signature {found}; ABI v1 defines {expected}"
            ),
            ValidationError::NonFunctionImport { module, name, kind } => write!(
                f,
                "imports {kind} `{module}.{name}`: only functions may be imported; define and export your own memory"
            ),
            ValidationError::SharedMemory => {
                f.write_str("declares a shared memory: threads are not supported")
            }
            ValidationError::Memory64 => {
                f.write_str("declares a 64-bit memory (memory64): use a 32-bit memory")
            }
            ValidationError::MultipleMemories { count } => {
                write!(f, "declares {count} memories; exactly one is allowed")
            }
            ValidationError::MemoryTooLarge { pages_min, pages_limit } => write!(
                f,
                "declares a minimum memory of {pages_min} pages, above the cap of {pages_limit} pages (64 KiB each)"
            ),
            ValidationError::StaticLimit { what, count, limit } => write!(
                f,
                "has {count} {what}; ABI v1 allows at most {limit} (see the static limits in ABI.md)"
            ),
            ValidationError::TooManyTables { count, limit } => {
                write!(f, "declares {count} tables; at most {limit} allowed")
            }
            ValidationError::TableTooLarge { elements_min, elements_limit } => write!(
                f,
                "declares a table of {elements_min} elements, above the cap of {elements_limit}"
            ),
            ValidationError::StartFunction => f.write_str(
                "has a start function: not allowed, initialise state in the `init` export instead",
            ),
            ValidationError::MissingExport { name } => {
                write!(f, "does not export `{name}`, which ABI v1 requires")
            }
            ValidationError::ExportType { name, expected, found } => {
                write!(f, "exports `{name}` as {found}; ABI v1 requires {expected}")
            }
            ValidationError::Compile(message) => write!(f, "compilation failed: {message}"),
            ValidationError::DoesNotFit(message) => {
                write!(f, "cannot be instantiated within the instance limits: {message}")
            }
        }
    }
}

impl std::error::Error for ValidationError {}

/// Checks `wasm` against ABI v1 and the caps, without compiling it.
pub(crate) fn check(wasm: &[u8], limits: DeployLimits) -> Result<ModuleInfo, ValidationError> {
    if wasm.len() > limits.module_bytes_max {
        return Err(ValidationError::TooLarge {
            size_bytes: wasm.len(),
            limit_bytes: limits.module_bytes_max,
        });
    }
    let shape = Shape::read(wasm, limits)?;
    Validator::new_with_features(FEATURES)
        .validate_all(wasm)
        .map_err(|error| ValidationError::Invalid(error.to_string()))?;
    shape.check_exports()?;
    Ok(ModuleInfo {
        hash: Sha256::digest(wasm).into(),
        size_bytes: wasm.len(),
        memory_pages_min: shape.memory_pages_min,
        has_query: shape
            .exports
            .iter()
            .any(|(name, ..)| name == abi::EXPORT_QUERY),
        has_init: shape
            .exports
            .iter()
            .any(|(name, ..)| name == abi::EXPORT_INIT),
        has_migrate: shape
            .exports
            .iter()
            .any(|(name, ..)| name == abi::EXPORT_MIGRATE),
    })
}

/// The parts of a module the ABI constrains, read section by section.
#[derive(Default)]
struct Shape {
    /// The module's types; `None` for non-function types.
    types: Vec<Option<FuncType>>,
    /// Type index of every function, imported ones first.
    function_types: Vec<u32>,
    memories: u32,
    memory_pages_min: u64,
    exports: Vec<(String, ExternalKind, u32)>,
}

fn invalid(error: impl fmt::Display) -> ValidationError {
    ValidationError::Invalid(error.to_string())
}

impl Shape {
    fn read(wasm: &[u8], limits: DeployLimits) -> Result<Shape, ValidationError> {
        let mut shape = Shape::default();
        let pages_limit = limits.memory_bytes_max / abi::PAGE_BYTES;
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.map_err(invalid)? {
                Payload::Version { encoding, .. } if encoding != Encoding::Module => {
                    return Err(ValidationError::NotCoreModule);
                }
                Payload::TypeSection(reader) => {
                    at_most("types", reader.count().into(), TYPES_MAX.into())?;
                    for group in reader {
                        for sub_type in group.map_err(invalid)?.into_types() {
                            shape.types.push(match sub_type.composite_type.inner {
                                CompositeInnerType::Func(func_type) => Some(func_type),
                                _ => None,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    at_most("imports", reader.count().into(), IMPORTS_MAX.into())?;
                    for import in reader.into_imports() {
                        let import = import.map_err(invalid)?;
                        shape.check_import(import.module, import.name, import.ty)?;
                    }
                }
                Payload::FunctionSection(reader) => {
                    at_most("functions", reader.count().into(), FUNCTIONS_MAX.into())?;
                    for type_index in reader {
                        shape.function_types.push(type_index.map_err(invalid)?);
                    }
                }
                Payload::TableSection(reader) => {
                    let count = reader.count();
                    if count > TABLES_MAX {
                        return Err(ValidationError::TooManyTables {
                            count,
                            limit: TABLES_MAX,
                        });
                    }
                    for table in reader {
                        let elements_min = table.map_err(invalid)?.ty.initial;
                        if elements_min > TABLE_ELEMENTS_MAX {
                            return Err(ValidationError::TableTooLarge {
                                elements_min,
                                elements_limit: TABLE_ELEMENTS_MAX,
                            });
                        }
                    }
                }
                Payload::MemorySection(reader) => {
                    for memory in reader {
                        let memory = memory.map_err(invalid)?;
                        shape.memories += 1;
                        if memory.shared {
                            return Err(ValidationError::SharedMemory);
                        }
                        if memory.memory64 {
                            return Err(ValidationError::Memory64);
                        }
                        if memory.initial > pages_limit {
                            return Err(ValidationError::MemoryTooLarge {
                                pages_min: memory.initial,
                                pages_limit,
                            });
                        }
                        shape.memory_pages_min = memory.initial;
                    }
                    if shape.memories > 1 {
                        return Err(ValidationError::MultipleMemories {
                            count: shape.memories,
                        });
                    }
                }
                Payload::StartSection { .. } => return Err(ValidationError::StartFunction),
                Payload::ExportSection(reader) => {
                    at_most("exports", reader.count().into(), EXPORTS_MAX.into())?;
                    for export in reader {
                        let export = export.map_err(invalid)?;
                        shape
                            .exports
                            .push((export.name.to_string(), export.kind, export.index));
                    }
                }
                Payload::GlobalSection(reader) => {
                    at_most("globals", reader.count().into(), GLOBALS_MAX.into())?;
                }
                Payload::DataSection(reader) => {
                    at_most(
                        "data segments",
                        reader.count().into(),
                        DATA_SEGMENTS_MAX.into(),
                    )?;
                }
                Payload::ElementSection(reader) => {
                    at_most(
                        "element segments",
                        reader.count().into(),
                        ELEMENT_SEGMENTS_MAX.into(),
                    )?;
                }
                Payload::CodeSectionStart { size, .. } => {
                    at_most(
                        "bytes of function bodies",
                        size.into(),
                        CODE_BYTES_MAX as u64,
                    )?;
                }
                Payload::CodeSectionEntry(body) => {
                    at_most(
                        "bytes in one function body",
                        body.range().len() as u64,
                        FUNCTION_BODY_BYTES_MAX as u64,
                    )?;
                    let mut locals = 0u64;
                    for group in body.get_locals_reader().map_err(invalid)? {
                        let (count, _) = group.map_err(invalid)?;
                        locals = locals.saturating_add(count.into());
                        at_most("locals in one function", locals, LOCALS_PER_FUNCTION_MAX)?;
                    }
                }
                _ => {}
            }
        }
        Ok(shape)
    }

    fn check_import(
        &mut self,
        module: &str,
        name: &str,
        ty: TypeRef,
    ) -> Result<(), ValidationError> {
        let kind = match ty {
            TypeRef::Func(_) => None,
            TypeRef::FuncExact(_) => Some("an exact function"),
            TypeRef::Table(_) => Some("a table"),
            TypeRef::Memory(_) => Some("a memory"),
            TypeRef::Global(_) => Some("a global"),
            TypeRef::Tag(_) => Some("a tag"),
        };
        if let Some(kind) = kind {
            return Err(ValidationError::NonFunctionImport {
                module: module.to_string(),
                name: name.to_string(),
                kind,
            });
        }
        if module != abi::IMPORT_MODULE {
            return Err(ValidationError::ForeignImport {
                module: module.to_string(),
                name: name.to_string(),
            });
        }
        let Some(signature) = abi::import_signature(name) else {
            return Err(ValidationError::UnknownImport {
                name: name.to_string(),
            });
        };
        let TypeRef::Func(type_index) = ty else {
            unreachable!("non-function imports were rejected above");
        };
        let found = self.func_type(type_index)?;
        if !matches_signature(found, signature.params, signature.results) {
            return Err(ValidationError::ImportSignature {
                name: name.to_string(),
                expected: abi::signature_text(signature.params, signature.results),
                found: func_type_text(found),
            });
        }
        self.function_types.push(type_index);
        Ok(())
    }

    fn func_type(&self, type_index: u32) -> Result<&FuncType, ValidationError> {
        self.types
            .get(type_index as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| invalid(format!("type index {type_index} is not a function type")))
    }

    fn export(&self, name: &str) -> Option<(ExternalKind, u32)> {
        self.exports
            .iter()
            .find(|(export, ..)| export == name)
            .map(|(_, kind, index)| (*kind, *index))
    }

    fn check_exports(&self) -> Result<(), ValidationError> {
        match self.export(abi::EXPORT_MEMORY) {
            None => {
                return Err(ValidationError::MissingExport {
                    name: abi::EXPORT_MEMORY,
                });
            }
            Some((ExternalKind::Memory, _)) => {}
            Some((kind, _)) => {
                return Err(ValidationError::ExportType {
                    name: abi::EXPORT_MEMORY,
                    expected: "a memory".to_string(),
                    found: kind_text(kind).to_string(),
                });
            }
        }
        let required = [
            (abi::EXPORT_ABI_MARKER, abi::SIGNATURE_MARKER),
            (abi::EXPORT_ALLOC, abi::SIGNATURE_ALLOC),
            (abi::EXPORT_APPLY, abi::SIGNATURE_ENTRY),
        ];
        for (name, signature) in required {
            self.check_function_export(name, signature, true)?;
        }
        for name in [abi::EXPORT_QUERY, abi::EXPORT_INIT, abi::EXPORT_MIGRATE] {
            self.check_function_export(name, abi::SIGNATURE_ENTRY, false)?;
        }
        Ok(())
    }

    fn check_function_export(
        &self,
        name: &'static str,
        (params, results): (&[AbiType], &[AbiType]),
        required: bool,
    ) -> Result<(), ValidationError> {
        let expected = || format!("a function {}", abi::signature_text(params, results));
        match self.export(name) {
            None if required => Err(ValidationError::MissingExport { name }),
            None => Ok(()),
            Some((ExternalKind::Func, index)) => {
                let type_index = self
                    .function_types
                    .get(index as usize)
                    .ok_or_else(|| invalid(format!("function index {index} out of bounds")))?;
                let found = self.func_type(*type_index)?;
                if matches_signature(found, params, results) {
                    Ok(())
                } else {
                    Err(ValidationError::ExportType {
                        name,
                        expected: expected(),
                        found: format!("a function {}", func_type_text(found)),
                    })
                }
            }
            Some((kind, _)) => Err(ValidationError::ExportType {
                name,
                expected: expected(),
                found: kind_text(kind).to_string(),
            }),
        }
    }
}

fn matches_signature(found: &FuncType, params: &[AbiType], results: &[AbiType]) -> bool {
    let same = |found: &[ValType], wanted: &[AbiType]| {
        found.len() == wanted.len()
            && found.iter().zip(wanted).all(|(found, wanted)| {
                matches!(
                    (found, wanted),
                    (ValType::I32, AbiType::I32) | (ValType::I64, AbiType::I64)
                )
            })
    };
    same(found.params(), params) && same(found.results(), results)
}

fn func_type_text(func_type: &FuncType) -> String {
    let list = |types: &[ValType]| {
        types
            .iter()
            .map(|ty| ty.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "({}) -> ({})",
        list(func_type.params()),
        list(func_type.results())
    )
}

fn kind_text(kind: ExternalKind) -> &'static str {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => "a function",
        ExternalKind::Table => "a table",
        ExternalKind::Memory => "a memory",
        ExternalKind::Global => "a global",
        ExternalKind::Tag => "a tag",
    }
}
