//! The runtime's configuration and the deterministic wasmtime engine built from it.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::wasmparser::WasmFeatures;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    WasmBacktraceDetails,
};

use super::abi;
use super::validate::{FEATURES, TABLE_ELEMENTS_MAX, TABLES_MAX};

/// Instance slots kept for apply: apply runs one call at a time, and a deploy's
/// setup call is the one that may overlap it. Queries share the rest.
pub const APPLY_INSTANCES: u32 = 2;
/// Limits and resources of a [`Runtime`](super::Runtime). The per-call budgets in a
/// [`Call`](super::Call) are clamped by the maxima here (the cluster maxima).
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Upper bound on `Call::fuel`: no call runs longer than this.
    pub fuel_per_call_max: u64,
    /// Upper bound on `Call::memory_bytes` and on a module's declared minimum memory;
    /// also the size of every memory slot of the pooling allocator.
    pub memory_bytes_max: u64,
    /// Largest module accepted at deploy.
    pub module_bytes_max: usize,
    /// Largest `output` a call may produce.
    pub output_bytes_max: usize,
    /// Where compiled modules are kept across restarts; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Instances alive at once (pool slots); calls beyond it wait for a free slot.
    /// [`APPLY_INSTANCES`] of them are kept for apply (and deploy setup), so that
    /// queries, however many, never make apply wait.
    pub instances_max: u32,
    /// Wall-clock limit of a `query` (never applies to apply, init or migrate).
    pub query_timeout: Duration,
    /// Compiled modules kept in memory; the least recently used is evicted past it.
    pub modules_cached_max: usize,
    /// Makes compilation fail on demand, as a broken host would (tests).
    pub compile_faults: CompileFaults,
}

/// The seam where tests make this runtime's compilations fail, as a host
/// out of memory or a compiler bug would: apply must then stop the node,
/// never record a refusal the other replicas would not. Clones share the
/// switch; off unless a test turns it on.
#[derive(Clone, Debug, Default)]
pub struct CompileFaults(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl CompileFaults {
    /// Turns the failure on or off.
    pub fn fail(&self, failing: bool) {
        self.0.store(failing, std::sync::atomic::Ordering::Release);
    }

    pub fn failing(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            fuel_per_call_max: 50_000_000,
            memory_bytes_max: 16 << 20,
            module_bytes_max: 8 << 20,
            output_bytes_max: 1 << 20,
            cache_dir: None,
            instances_max: 64,
            query_timeout: Duration::from_secs(5),
            modules_cached_max: 64,
            compile_faults: CompileFaults::default(),
        }
    }
}

/// How often the epoch advances: the resolution of the query timeout.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Why a configuration cannot be used.
pub(crate) fn check(config: &RuntimeConfig) -> Result<(), String> {
    if config.memory_bytes_max == 0 || !config.memory_bytes_max.is_multiple_of(abi::PAGE_BYTES) {
        return Err(format!(
            "memory_bytes_max must be a positive multiple of 64 KiB, not {}",
            config.memory_bytes_max
        ));
    }
    if config.memory_bytes_max > 4 << 30 {
        return Err("memory_bytes_max must be at most 4 GiB (32-bit memories)".to_string());
    }
    if config.instances_max <= APPLY_INSTANCES {
        return Err(format!(
            "instances_max must be at least {}: {APPLY_INSTANCES} are kept for apply and queries need one",
            APPLY_INSTANCES + 1
        ));
    }
    if config.modules_cached_max == 0 {
        return Err("modules_cached_max must be at least 1".to_string());
    }
    if config.query_timeout.is_zero() {
        return Err("query_timeout must be positive".to_string());
    }
    Ok(())
}

/// The engine configuration. Every knob that could change what a guest observes is set
/// explicitly, so all voters built from the same wasmtime behave identically.
pub(crate) fn engine_config(config: &RuntimeConfig, fuel: bool) -> Config {
    let mut engine = Config::new();
    // Determinism (wasmtime docs/examples-deterministic-wasm-execution.md).
    engine.cranelift_nan_canonicalization(true);
    engine.relaxed_simd_deterministic(true);
    engine.wasm_features(WasmFeatures::all(), false);
    engine.wasm_features(FEATURES, true);
    // `Config::wasm_threads` exists only with wasmtime's `threads` feature (off here);
    // this is what it does.
    engine.wasm_features(
        WasmFeatures::THREADS | WasmFeatures::SHARED_EVERYTHING_THREADS,
        false,
    );
    engine.shared_memory(false);
    engine.concurrency_support(false);
    // Limits: fuel is the only execution limit of apply; epochs only time out queries.
    engine.consume_fuel(fuel);
    engine.epoch_interruption(true);
    engine.max_wasm_stack(abi::WASM_STACK_BYTES_MAX);
    // Trap messages carry no backtrace, so they are equal on every replica.
    engine.wasm_backtrace_max_frames(None);
    engine.wasm_backtrace_details(WasmBacktraceDetails::Disable);
    engine.cranelift_opt_level(OptLevel::Speed);

    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(config.instances_max);
    pool.total_memories(config.instances_max);
    pool.total_tables(config.instances_max);
    pool.max_memories_per_module(1);
    pool.max_tables_per_module(TABLES_MAX);
    pool.table_elements(TABLE_ELEMENTS_MAX as usize);
    pool.max_memory_size(usize::try_from(config.memory_bytes_max).unwrap_or(usize::MAX));
    // Reset the first MiB of a slot's memory by zeroing it in place rather than
    // returning the pages to the kernel: a typical module touches a page or two,
    // and re-faulting them costs far more than a memset (about 28 µs against
    // 8 µs for one small call). The guest sees zeroed memory either way.
    pool.linear_memory_keep_resident(MEMORY_KEEP_RESIDENT_BYTES);
    pool.table_keep_resident(TABLE_KEEP_RESIDENT_BYTES);
    engine.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    engine
}

/// Bytes of each memory slot kept resident (zeroed in place) between instances.
const MEMORY_KEEP_RESIDENT_BYTES: usize = 1 << 20;
/// Bytes of each table slot kept resident between instances.
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 << 10;

/// What marks a fingerprint of [`fingerprint`]'s kind; a recorded one
/// without it was made by an earlier release from the host's own engine.
pub const FINGERPRINT_PREFIX: &str = "v2-";

/// Identifies everything that decides how a guest runs, whatever CPU runs
/// it: the compatibility hash (wasmtime version, compiler flags, features,
/// tunables) of an engine built with this configuration for the baseline
/// of this architecture, plus the host ABI's constants. Nodes whose
/// fingerprints differ may diverge and must not vote together; nodes that
/// differ only in CPU extensions (AVX-512 or not) compute the same results
/// and the same fuel, so they share one.
pub(crate) fn fingerprint(config: &RuntimeConfig, metered: bool) -> Result<String, String> {
    let mut reference = engine_config(
        &RuntimeConfig {
            // The pool's size is not part of what a guest sees.
            instances_max: 1,
            ..config.clone()
        },
        metered,
    );
    // An explicit target: wasmtime then infers no CPU feature of the host.
    reference
        .target(&format!(
            "{}-unknown-{}",
            std::env::consts::ARCH,
            std::env::consts::OS
        ))
        .map_err(|error| error.to_string())?;
    let engine = Engine::new(&reference).map_err(|error| error.to_string())?;
    Ok(format!("{FINGERPRINT_PREFIX}{}", engine_hash(&engine)))
}

/// The compatibility hash of `engine` itself, CPU features included: the
/// key of compiled code in the disk cache, which is native to this host.
pub(crate) fn host_fingerprint(engine: &Engine) -> String {
    engine_hash(engine)
}

fn engine_hash(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    "wasmraft-runtime abi-v1".hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    for import in abi::IMPORTS {
        import.name.hash(&mut hasher);
    }
    (
        abi::WASM_STACK_BYTES_MAX,
        abi::KEY_BYTES_MAX,
        abi::VALUE_BYTES_MAX,
        abi::WRITE_SET_BYTES_MAX,
        abi::SCAN_LIMIT_MAX,
        abi::SCAN_PAGE_BYTES_MAX,
        abi::IMPORT_FUEL_BASE,
        abi::ABORT_MESSAGE_BYTES_MAX,
        TABLE_ELEMENTS_MAX,
    )
        .hash(&mut hasher);
    hex::encode(hasher.0.finalize())
}

/// Whether a fingerprint recorded in the state names the engine whose
/// fingerprint is `ours`. One of an earlier release (no
/// [`FINGERPRINT_PREFIX`]) was made from that host's CPU features and is
/// comparable with none: it matches, and the next settings change records
/// the cluster's fingerprint in its place.
pub fn fingerprint_matches(recorded: &str, ours: &str) -> bool {
    recorded.is_empty() || !recorded.starts_with(FINGERPRINT_PREFIX) || recorded == ours
}

/// Feeds `Hash` into sha256, so the fingerprint does not depend on std's hasher.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
