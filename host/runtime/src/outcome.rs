//! What a call is given ([`Call`]) and what it returns ([`CallReport`], [`Outcome`]): plain data.

use std::fmt;

use super::kv::{KvError, WriteSet};

/// The guest export a call enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryPoint {
    /// A command from the log: may write, never interrupted by time.
    Apply,
    /// A read: writes trap, bounded by the query wall-clock timeout.
    Query,
    /// First deployment of the module under its name (from the log).
    Init,
    /// A new version replacing a deployed one (from the log).
    Migrate,
}

impl EntryPoint {
    /// The export's name in the guest.
    pub fn export_name(self) -> &'static str {
        match self {
            EntryPoint::Apply => super::abi::EXPORT_APPLY,
            EntryPoint::Query => super::abi::EXPORT_QUERY,
            EntryPoint::Init => super::abi::EXPORT_INIT,
            EntryPoint::Migrate => super::abi::EXPORT_MIGRATE,
        }
    }

    /// Whether the call is read-only: `query` only; every other entry point may write.
    pub fn is_read_only(self) -> bool {
        self == EntryPoint::Query
    }
}

impl fmt::Display for EntryPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.export_name())
    }
}

/// One invocation. Everything the guest can observe comes from here or from the KV
/// source, so equal `Call`s over equal state give equal reports on every replica.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub entry: EntryPoint,
    /// The bytes placed in guest memory through `wasmraft_alloc`.
    pub input: &'a [u8],
    /// The authenticated subject (empty for the system), returned by `caller`.
    pub caller: &'a str,
    /// The leader's timestamp of the log entry (for a query, of the last applied one).
    pub timestamp_ms: i64,
    /// Derived from the log id. Ignored for `query`: the guest sees 32 zero bytes.
    pub seed: [u8; 32],
    /// The fuel budget of the call, clamped to `RuntimeConfig::fuel_per_call_max`.
    pub fuel: u64,
    /// The memory cap of the instance, clamped to `RuntimeConfig::memory_bytes_max`.
    pub memory_bytes: u64,
    /// The largest output the call may produce, clamped to
    /// `RuntimeConfig::output_bytes_max`.
    pub output_bytes: usize,
}

/// The result of one call: deterministic for apply, init and migrate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallReport {
    pub outcome: Outcome,
    /// Fuel consumed by the guest and its imports, for every outcome.
    pub fuel_used: u64,
    /// The call's writes; empty unless `outcome` is [`Outcome::Ok`].
    pub writes: WriteSet,
}

/// How a call ended. Every variant except [`Outcome::Host`] and
/// [`Outcome::Unavailable`] is a deterministic property of the module, the call and
/// the state; those two are failures of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Result code 0, with the bytes last passed to `output`.
    Ok(Vec<u8>),
    /// Result code 1 (message from `output`), `abort` (its message), or a failed
    /// input allocation ("allocation failed").
    GuestError(String),
    /// The fuel budget ran out.
    OutOfFuel,
    /// The guest trapped after the memory cap refused a `memory.grow`, or its declared
    /// minimum is above the call's cap.
    MemoryLimit,
    /// A wasm trap, a misused import or an invalid result code.
    Trap { kind: TrapKind, message: String },
    /// `output` past the output cap (`limit` bytes).
    OutputTooLarge { limit: usize },
    /// A query ran past its wall-clock limit.
    TimedOut,
    /// The module does not export the entry point (`query`, `init` or `migrate`).
    MissingExport(&'static str),
    /// The key-value source failed: fatal for a replica, the caller decides.
    Host(KvError),
    /// This node could not run the call (an instance could not be created for a reason
    /// other than the module's memory). Not deterministic: never record it as the
    /// result of a log entry.
    Unavailable(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(output) => write!(f, "ok ({} output bytes)", output.len()),
            Outcome::GuestError(message) => write!(f, "guest error: {message}"),
            Outcome::OutOfFuel => f.write_str("out of fuel"),
            Outcome::MemoryLimit => f.write_str("memory limit reached"),
            Outcome::Trap { kind, message } => write!(f, "trap ({kind}): {message}"),
            Outcome::OutputTooLarge { limit } => write!(f, "output larger than {limit} bytes"),
            Outcome::TimedOut => f.write_str("query timed out"),
            Outcome::MissingExport(name) => write!(f, "the module has no `{name}` export"),
            Outcome::Host(error) => write!(f, "{error}"),
            Outcome::Unavailable(message) => {
                write!(f, "the node could not run the call: {message}")
            }
        }
    }
}

/// The kind of a trap, independent of wasmtime's own types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrapKind {
    Unreachable,
    StackOverflow,
    MemoryOutOfBounds,
    HeapMisaligned,
    TableOutOfBounds,
    IndirectCallToNull,
    BadSignature,
    IntegerOverflow,
    IntegerDivisionByZero,
    BadConversionToInteger,
    /// A host import was called against the ABI (bad pointer, key too large, a write
    /// in a query, …); the message says which rule.
    ImportMisuse,
    /// The entry point returned a code other than 0 or 1.
    InvalidResultCode,
    /// Any other wasmtime trap code.
    Other,
    /// The host itself failed (a panic inside wasmraft while it served the call): a
    /// bug of the host, logged as such. Every replica runs the same code on the same
    /// input, so it fails alike, and the call ends like a trap instead of stopping
    /// every node.
    HostFault,
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrapKind::Unreachable => "unreachable",
            TrapKind::StackOverflow => "stack overflow",
            TrapKind::MemoryOutOfBounds => "out-of-bounds memory access",
            TrapKind::HeapMisaligned => "misaligned memory access",
            TrapKind::TableOutOfBounds => "out-of-bounds table access",
            TrapKind::IndirectCallToNull => "indirect call to null",
            TrapKind::BadSignature => "indirect call type mismatch",
            TrapKind::IntegerOverflow => "integer overflow",
            TrapKind::IntegerDivisionByZero => "integer division by zero",
            TrapKind::BadConversionToInteger => "invalid conversion to integer",
            TrapKind::ImportMisuse => "import misuse",
            TrapKind::InvalidResultCode => "invalid result code",
            TrapKind::Other => "other",
            TrapKind::HostFault => "host fault",
        })
    }
}
