//! The guest ABI v1 as data: import signatures, export names and the fixed limits of `guest-sdk/ABI.md`.
//!
//! Validation, the host imports and the engine fingerprint all read these constants, so
//! the contract lives in one place on the host side.

/// A wasm value type as the ABI uses it (the ABI needs only these two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AbiType {
    I32,
    I64,
}

impl AbiType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            AbiType::I32 => "i32",
            AbiType::I64 => "i64",
        }
    }
}

/// One host function of the `wasmraft` namespace.
#[derive(Debug)]
pub(crate) struct ImportSignature {
    pub(crate) name: &'static str,
    pub(crate) params: &'static [AbiType],
    pub(crate) results: &'static [AbiType],
}

use AbiType::{I32, I64};

/// The only import module a guest may name.
pub(crate) const IMPORT_MODULE: &str = "wasmraft";

/// Every import of ABI v1, exactly as ABI.md lists them.
pub(crate) const IMPORTS: &[ImportSignature] = &[
    ImportSignature {
        name: "kv_get",
        params: &[I32, I32],
        results: &[I64],
    },
    ImportSignature {
        name: "kv_set",
        params: &[I32, I32, I32, I32],
        results: &[],
    },
    ImportSignature {
        name: "kv_delete",
        params: &[I32, I32],
        results: &[],
    },
    ImportSignature {
        name: "kv_scan",
        params: &[I32, I32, I32, I32, I32],
        results: &[I64],
    },
    ImportSignature {
        name: "caller",
        params: &[],
        results: &[I32],
    },
    ImportSignature {
        name: "timestamp_ms",
        params: &[],
        results: &[I64],
    },
    ImportSignature {
        name: "seed",
        params: &[I32],
        results: &[],
    },
    ImportSignature {
        name: "result_read",
        params: &[I32],
        results: &[],
    },
    ImportSignature {
        name: "output",
        params: &[I32, I32],
        results: &[],
    },
    ImportSignature {
        name: "log",
        params: &[I32, I32, I32],
        results: &[],
    },
    ImportSignature {
        name: "abort",
        params: &[I32, I32],
        results: &[],
    },
];

/// The exported linear memory.
pub(crate) const EXPORT_MEMORY: &str = "memory";
/// The ABI marker: its name is the ABI version.
pub(crate) const EXPORT_ABI_MARKER: &str = "wasmraft_abi_version_1";
/// The guest allocator the host calls to place the input.
pub(crate) const EXPORT_ALLOC: &str = "wasmraft_alloc";
pub(crate) const EXPORT_APPLY: &str = "apply";
pub(crate) const EXPORT_QUERY: &str = "query";
pub(crate) const EXPORT_INIT: &str = "init";
pub(crate) const EXPORT_MIGRATE: &str = "migrate";

/// `() -> ()`
pub(crate) const SIGNATURE_MARKER: (&[AbiType], &[AbiType]) = (&[], &[]);
/// `(len) -> ptr`
pub(crate) const SIGNATURE_ALLOC: (&[AbiType], &[AbiType]) = (&[I32], &[I32]);
/// `(ptr, len) -> result code`
pub(crate) const SIGNATURE_ENTRY: (&[AbiType], &[AbiType]) = (&[I32, I32], &[I32]);

/// A wasm page, in bytes.
pub(crate) const PAGE_BYTES: u64 = 65_536;

/// Keys are 1 to 4,096 bytes.
pub(crate) const KEY_BYTES_MAX: usize = 4_096;
/// A scan bound may be a continuation key: the last key followed by a zero byte.
pub(crate) const SCAN_BOUND_BYTES_MAX: usize = KEY_BYTES_MAX + 1;
/// Values are at most 1 MiB.
pub(crate) const VALUE_BYTES_MAX: usize = 1 << 20;
/// The write set of one call holds at most 16 MiB of keys and values.
pub(crate) const WRITE_SET_BYTES_MAX: usize = 16 << 20;
/// `kv_scan`'s `limit` is 1 to 1,024.
pub(crate) const SCAN_LIMIT_MAX: usize = 1_024;
/// A scan page never exceeds 4 MiB.
pub(crate) const SCAN_PAGE_BYTES_MAX: usize = 4 << 20;
/// At most 64 log lines per call; the rest are dropped.
pub(crate) const LOG_LINES_MAX: u32 = 64;
/// At most 16 KiB of log text per call; the rest is dropped.
pub(crate) const LOG_BYTES_MAX: usize = 16 << 10;
/// `abort` messages are truncated to 4 KiB.
pub(crate) const ABORT_MESSAGE_BYTES_MAX: usize = 4 << 10;
/// Every import call costs this much fuel, plus one unit per byte it moves.
pub(crate) const IMPORT_FUEL_BASE: u64 = 1_000;
/// `kv_scan` charges this much for every entry it walks — stored entries read, and
/// the call's own writes passed over, deletes included — plus one unit per byte of
/// the entry's key and value.
pub(crate) const SCAN_ENTRY_FUEL: u64 = 100;
/// The wasm stack each call may use.
pub(crate) const WASM_STACK_BYTES_MAX: usize = 512 << 10;

// The page must hold at least one entry of the largest size, or a scan could never
// make progress.
const _: () = assert!(1 + 8 + KEY_BYTES_MAX + VALUE_BYTES_MAX <= SCAN_PAGE_BYTES_MAX);
const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX <= WRITE_SET_BYTES_MAX);

pub(crate) fn import_signature(name: &str) -> Option<&'static ImportSignature> {
    IMPORTS.iter().find(|import| import.name == name)
}

/// `(i32, i64) -> (i32)` as a person reads it.
pub(crate) fn signature_text(params: &[AbiType], results: &[AbiType]) -> String {
    let list = |types: &[AbiType]| {
        types
            .iter()
            .map(|ty| ty.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(params), list(results))
}
