//! wasmraft-runtime: the WebAssembly runtime — validates, compiles, caches and calls guest state machines (ABI v1).
//!
//! It owns the wasmtime engine (configured for determinism), the pooling allocator,
//! the compiled-module caches (memory and disk) and the `wasmraft` host imports.
//!
//! **Invariant: the runtime knows nothing about Raft or redb** (it depends on neither; the
//! compiler holds it to that). It takes module bytes, a
//! [`Call`] and a [`KvSource`], and returns a [`CallReport`]: an [`Outcome`], the fuel
//! used and a [`WriteSet`] that is empty unless the call succeeded. The same module,
//! call and state give the same report on every node whose
//! [`Runtime::engine_fingerprint`] is equal; the caller commits the write set.
//!
//! Boundary: [`Runtime::validate`] (deploy, before the log), [`Runtime::load`] and
//! [`Runtime::call`] (apply and query), [`Runtime::engine_fingerprint`] (joining peers).

mod abi;
mod cache;
mod config;
pub mod fuzzing;
mod imports;
pub(crate) mod kv;
mod outcome;
mod validate;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, InstancePre, Linker, Module, ModuleExport, Store, Trap};

pub use self::config::{
    APPLY_INSTANCES, CompileFaults, FINGERPRINT_PREFIX, RuntimeConfig, fingerprint_matches,
};
pub use self::kv::{KvEntries, KvError, KvSource, MemoryKv, WriteSet};
pub use self::outcome::{Call, CallReport, EntryPoint, Outcome, TrapKind};
pub use self::validate::{DeployLimits, ModuleInfo, ValidationError};

use self::cache::{DiskCache, MemoryCache};
use self::imports::{CallSetup, CallState, HostExit, KvRef};

/// Why the runtime could not be built or a module could not be loaded. Not a guest
/// outcome: these are failures of the node or of its input.
#[derive(Debug)]
pub enum RuntimeError {
    /// The configuration is unusable; the message names the setting.
    Config(String),
    /// wasmtime refused the engine configuration, or a thread could not be started.
    Engine(String),
    /// The disk cache directory could not be created.
    CacheDir {
        path: std::path::PathBuf,
        message: String,
    },
    /// The bytes given to [`Runtime::load`] do not hash to the given hash.
    HashMismatch { expected: String, actual: String },
    /// The module does not pass validation (it should have been rejected at deploy).
    Invalid(ValidationError),
    /// Compilation failed.
    Compile(String),
    /// The host imports could not be linked to the module.
    Link(String),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::Config(message) => write!(f, "invalid runtime configuration: {message}"),
            RuntimeError::Engine(message) => write!(f, "cannot build the wasm engine: {message}"),
            RuntimeError::CacheDir { path, message } => {
                write!(
                    f,
                    "cannot use module cache directory {}: {message}",
                    path.display()
                )
            }
            RuntimeError::HashMismatch { expected, actual } => {
                write!(
                    f,
                    "module bytes hash to {actual}, not the expected {expected}"
                )
            }
            RuntimeError::Invalid(error) => write!(f, "module rejected: {error}"),
            RuntimeError::Compile(message) => write!(f, "module compilation failed: {message}"),
            RuntimeError::Link(message) => write!(f, "module linking failed: {message}"),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// Counters of the module caches, for metrics and for tests that prove a restart does
/// not recompile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Modules compiled by this runtime (by `load` or `validate`).
    pub compilations: u64,
    /// `load`s answered from memory.
    pub memory_cache_hits: u64,
    /// `load`s answered from the disk cache.
    pub disk_cache_hits: u64,
    /// Disk cache files found corrupted or incompatible (removed and recompiled).
    pub disk_cache_rejections: u64,
    /// Instances running queries (and deploy trials) now.
    pub query_instances_in_use: u32,
    /// Instances running apply, init or migrate now.
    pub apply_instances_in_use: u32,
}

#[derive(Debug, Default)]
struct Counters {
    compilations: AtomicU64,
    memory_cache_hits: AtomicU64,
    disk_cache_hits: AtomicU64,
    disk_cache_rejections: AtomicU64,
}

/// How a [`LoadedModule`] reached this runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleOrigin {
    /// Compiled from the wasm bytes.
    Compiled,
    /// Deserialized from the disk cache: no compilation happened.
    DiskCache,
}

/// A compiled module, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct LoadedModule {
    inner: Arc<LoadedInner>,
}

struct LoadedInner {
    hash: [u8; 32],
    /// The first 8 bytes of the hash in hex, for spans and guest log events.
    short: Arc<str>,
    origin: ModuleOrigin,
    pre: InstancePre<CallState>,
    memory: ModuleExport,
    alloc: ModuleExport,
    apply: ModuleExport,
    query: Option<ModuleExport>,
    init: Option<ModuleExport>,
    migrate: Option<ModuleExport>,
}

impl fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModule")
            .field("hash", &hex::encode(self.inner.hash))
            .field("origin", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

impl LoadedModule {
    pub fn hash(&self) -> &[u8; 32] {
        &self.inner.hash
    }

    pub fn origin(&self) -> ModuleOrigin {
        self.inner.origin
    }

    /// Whether this module was read from the disk cache rather than compiled.
    pub fn from_disk_cache(&self) -> bool {
        self.inner.origin == ModuleOrigin::DiskCache
    }

    /// Whether the module exports `entry`.
    pub fn has_entry(&self, entry: EntryPoint) -> bool {
        self.entry(entry).is_some()
    }

    fn entry(&self, entry: EntryPoint) -> Option<&ModuleExport> {
        match entry {
            EntryPoint::Apply => Some(&self.inner.apply),
            EntryPoint::Query => self.inner.query.as_ref(),
            EntryPoint::Init => self.inner.init.as_ref(),
            EntryPoint::Migrate => self.inner.migrate.as_ref(),
        }
    }
}

/// A cached module and whether it is on disk yet (modules compiled by `validate` are
/// written to disk only once `load`ed, that is once they are in the log).
#[derive(Clone)]
struct CacheEntry {
    module: LoadedModule,
    on_disk: bool,
}

/// The wasm runtime of a node. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    config: RuntimeConfig,
    engine: Engine,
    linker: Linker<CallState>,
    fingerprint: String,
    /// Whether the engine meters fuel (always, except for benchmark comparisons).
    metered: bool,
    disk: Option<DiskCache>,
    modules: Mutex<MemoryCache<CacheEntry>>,
    counters: Counters,
    /// Instances for queries and deploy-time trial instantiations.
    query_slots: Slots,
    /// Instances for apply, init and migrate only: queries never hold them.
    apply_slots: Slots,
    /// Tells the epoch ticker thread to stop.
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .field("fingerprint", &self.inner.fingerprint)
            .finish_non_exhaustive()
    }
}

/// An epoch deadline no query or apply reaches: apply is never interrupted by time.
const EPOCH_DEADLINE_NEVER: u64 = u64::MAX / 2;

/// The KV source of a call that never reads (the trial instantiation of `validate`).
struct NoKv;

impl KvSource for NoKv {
    fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(None)
    }

    fn scan(
        &self,
        _start: &[u8],
        _end: Option<&[u8]>,
        _limit: usize,
        _bytes_max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        Ok(Vec::new())
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        Runtime::build(config, true)
    }

    /// A runtime whose engine does not meter fuel: guests can loop forever. Only for
    /// measuring what metering costs; never use it to apply commands.
    #[doc(hidden)]
    pub fn new_unmetered_for_benchmarks(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        Runtime::build(config, false)
    }

    fn build(config: RuntimeConfig, metered: bool) -> Result<Runtime, RuntimeError> {
        config::check(&config).map_err(RuntimeError::Config)?;
        let engine = Engine::new(&config::engine_config(&config, metered))
            .map_err(|error| RuntimeError::Engine(error.to_string()))?;
        let mut linker = Linker::new(&engine);
        imports::define(&mut linker).map_err(|error| RuntimeError::Engine(error.to_string()))?;
        let fingerprint = config::fingerprint(&config, metered).map_err(RuntimeError::Engine)?;
        let disk = match &config.cache_dir {
            Some(dir) => Some(
                DiskCache::open(dir, &config::host_fingerprint(&engine)).map_err(|error| {
                    RuntimeError::CacheDir {
                        path: dir.clone(),
                        message: error.to_string(),
                    }
                })?,
            ),
            None => None,
        };
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(&engine, Arc::clone(&ticker_stop))?;
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                modules: Mutex::new(MemoryCache::new(config.modules_cached_max)),
                query_slots: Slots::new(config.instances_max - config::APPLY_INSTANCES),
                apply_slots: Slots::new(config::APPLY_INSTANCES),
                config,
                engine,
                linker,
                fingerprint,
                metered,
                disk,
                counters: Counters::default(),
                ticker_stop,
            }),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Identifies the engine and host ABI constants (hex sha256 over wasmtime's
    /// `precompile_compatibility_hash` and the limits of ABI v1). Voters must agree.
    pub fn engine_fingerprint(&self) -> String {
        self.inner.fingerprint.clone()
    }

    /// How many queries may run at once: the instances not kept for apply.
    pub fn query_instances_max(&self) -> u32 {
        self.inner.query_slots.capacity
    }

    pub fn stats(&self) -> RuntimeStats {
        let counters = &self.inner.counters;
        RuntimeStats {
            compilations: counters.compilations.load(Ordering::Relaxed),
            memory_cache_hits: counters.memory_cache_hits.load(Ordering::Relaxed),
            disk_cache_hits: counters.disk_cache_hits.load(Ordering::Relaxed),
            disk_cache_rejections: counters.disk_cache_rejections.load(Ordering::Relaxed),
            query_instances_in_use: self.inner.query_slots.in_use(),
            apply_instances_in_use: self.inner.apply_slots.in_use(),
        }
    }

    /// The runtime's own ceilings, for callers that pass no cluster limits.
    fn limits(&self) -> DeployLimits {
        DeployLimits {
            module_bytes_max: self.inner.config.module_bytes_max,
            memory_bytes_max: self.inner.config.memory_bytes_max,
        }
    }

    /// `limits` within the runtime's ceilings.
    fn clamped(&self, limits: DeployLimits) -> DeployLimits {
        DeployLimits {
            module_bytes_max: limits
                .module_bytes_max
                .min(self.inner.config.module_bytes_max),
            memory_bytes_max: limits
                .memory_bytes_max
                .min(self.inner.config.memory_bytes_max),
        }
    }

    fn modules(&self) -> MutexGuard<'_, MemoryCache<CacheEntry>> {
        // The cache holds no invariant a panicking holder could break halfway.
        self.inner
            .modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The deterministic part of validation: the module against ABI v1 and the
    /// static limits, by wasmparser alone. The same verdict on every replica, so
    /// apply may replicate it; compiling and instantiating are the node's own.
    pub fn check(&self, wasm: &[u8]) -> Result<ModuleInfo, ValidationError> {
        validate::check(wasm, self.limits())
    }

    /// [`Runtime::check`] against the cluster's limits (clamped by the runtime's).
    pub fn check_within(
        &self,
        wasm: &[u8],
        limits: DeployLimits,
    ) -> Result<ModuleInfo, ValidationError> {
        validate::check(wasm, self.clamped(limits))
    }

    /// Deploy-time validation, before the module enters the log: the ABI rules, then a
    /// compilation and a trial instantiation within the instance limits. The compiled
    /// module stays in the memory cache, so the `load` that follows is free.
    pub fn validate(&self, wasm: &[u8]) -> Result<ModuleInfo, ValidationError> {
        self.validate_within(wasm, self.limits())
    }

    /// [`Runtime::validate`] against the cluster's limits (clamped by the runtime's).
    pub fn validate_within(
        &self,
        wasm: &[u8],
        limits: DeployLimits,
    ) -> Result<ModuleInfo, ValidationError> {
        let limits = self.clamped(limits);
        let info = validate::check(wasm, limits)?;
        let cached = self.modules().get(&info.hash);
        let module = match cached {
            Some(entry) => entry.module,
            None => {
                let module = self
                    .compile(&info.hash, wasm)
                    .map_err(|error| match error {
                        RuntimeError::Compile(message) => ValidationError::Compile(message),
                        other => ValidationError::DoesNotFit(other.to_string()),
                    })?;
                self.modules().insert(
                    info.hash,
                    CacheEntry {
                        module: module.clone(),
                        on_disk: false,
                    },
                );
                module
            }
        };
        self.trial_instantiate(&module, limits.memory_bytes_max)?;
        Ok(info)
    }

    fn trial_instantiate(
        &self,
        module: &LoadedModule,
        memory_bytes_max: u64,
    ) -> Result<(), ValidationError> {
        let _slot = self.inner.query_slots.acquire();
        let setup = self.setup(module, true, "", 0, [0; 32], (memory_bytes_max, 0));
        let mut store = Store::new(&self.inner.engine, CallState::new(KvRef::new(&NoKv), setup));
        store.limiter(|state| &mut state.memory_cap);
        store.set_epoch_deadline(EPOCH_DEADLINE_NEVER);
        if self.inner.metered {
            // No start function: instantiation runs no guest code.
            let _ = store.set_fuel(0);
        }
        match module.inner.pre.instantiate(&mut store) {
            Ok(_) => Ok(()),
            Err(_) if store.data().memory_cap.hit => {
                let pages_min = module_memory_pages_min(module);
                Err(ValidationError::MemoryTooLarge {
                    pages_min,
                    pages_limit: memory_bytes_max / abi::PAGE_BYTES,
                })
            }
            Err(error) => Err(ValidationError::DoesNotFit(error.to_string())),
        }
    }

    /// The compiled module for `hash` if a cache has it: memory, else the disk cache
    /// (keyed by hash and engine fingerprint). Needs no wasm bytes, so a caller can skip
    /// reading the module's blob; `None` means [`Runtime::load`] must compile.
    pub fn cached(&self, hash: &[u8; 32]) -> Option<LoadedModule> {
        let cached = self.modules().get(hash);
        if let Some(entry) = cached {
            self.inner
                .counters
                .memory_cache_hits
                .fetch_add(1, Ordering::Relaxed);
            if !entry.on_disk {
                self.persist(hash, &entry.module);
                self.modules().insert(
                    *hash,
                    CacheEntry {
                        module: entry.module.clone(),
                        on_disk: true,
                    },
                );
            }
            return Some(entry.module);
        }
        let disk = self.inner.disk.as_ref()?;
        match disk.load(&self.inner.engine, hash) {
            Ok(Some(module)) => match self.link(hash, module, ModuleOrigin::DiskCache) {
                Ok(loaded) => {
                    self.inner
                        .counters
                        .disk_cache_hits
                        .fetch_add(1, Ordering::Relaxed);
                    self.modules().insert(
                        *hash,
                        CacheEntry {
                            module: loaded.clone(),
                            on_disk: true,
                        },
                    );
                    Some(loaded)
                }
                Err(error) => {
                    tracing::warn!(module = %hex::encode(hash), %error, "cached module does not link; recompiling");
                    None
                }
            },
            Ok(None) => None,
            Err(reason) => {
                self.inner
                    .counters
                    .disk_cache_rejections
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    module = %hex::encode(hash),
                    %reason,
                    "compiled module in the disk cache rejected; recompiling"
                );
                None
            }
        }
    }

    /// The compiled module for `hash`: from [`Runtime::cached`], else compiled from
    /// `wasm` (checked against `hash` and validated) and written to the disk cache.
    pub fn load(&self, hash: &[u8; 32], wasm: &[u8]) -> Result<LoadedModule, RuntimeError> {
        if let Some(module) = self.cached(hash) {
            return Ok(module);
        }
        let actual: [u8; 32] = Sha256::digest(wasm).into();
        if actual != *hash {
            return Err(RuntimeError::HashMismatch {
                expected: hex::encode(hash),
                actual: hex::encode(actual),
            });
        }
        validate::check(wasm, self.limits()).map_err(RuntimeError::Invalid)?;
        let loaded = self.compile(hash, wasm)?;
        self.persist(hash, &loaded);
        self.modules().insert(
            *hash,
            CacheEntry {
                module: loaded.clone(),
                on_disk: true,
            },
        );
        Ok(loaded)
    }

    fn compile(&self, hash: &[u8; 32], wasm: &[u8]) -> Result<LoadedModule, RuntimeError> {
        if self.inner.config.compile_faults.failing() {
            return Err(RuntimeError::Compile(
                "the compiler failed (a fault injected by a test)".to_owned(),
            ));
        }
        let module = Module::from_binary(&self.inner.engine, wasm)
            .map_err(|error| RuntimeError::Compile(error.to_string()))?;
        self.inner
            .counters
            .compilations
            .fetch_add(1, Ordering::Relaxed);
        self.link(hash, module, ModuleOrigin::Compiled)
    }

    /// Writes the module to the disk cache; a failure only costs a recompilation later.
    fn persist(&self, hash: &[u8; 32], module: &LoadedModule) {
        if let Some(disk) = &self.inner.disk
            && let Err(reason) = disk.store(hash, module.inner.pre.module())
        {
            tracing::warn!(module = %hex::encode(hash), %reason, "cannot write the module cache");
        }
    }

    fn link(
        &self,
        hash: &[u8; 32],
        module: Module,
        origin: ModuleOrigin,
    ) -> Result<LoadedModule, RuntimeError> {
        let export = |name: &str| module.get_export_index(name);
        let required = |name: &str| {
            export(name).ok_or_else(|| RuntimeError::Link(format!("no `{name}` export")))
        };
        let memory = required(abi::EXPORT_MEMORY)?;
        let alloc = required(abi::EXPORT_ALLOC)?;
        let apply = required(abi::EXPORT_APPLY)?;
        let query = export(abi::EXPORT_QUERY);
        let init = export(abi::EXPORT_INIT);
        let migrate = export(abi::EXPORT_MIGRATE);
        let pre = self
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|error| RuntimeError::Link(error.to_string()))?;
        Ok(LoadedModule {
            inner: Arc::new(LoadedInner {
                hash: *hash,
                short: Arc::from(hex::encode(&hash[..8])),
                origin,
                pre,
                memory,
                alloc,
                apply,
                query,
                init,
                migrate,
            }),
        })
    }

    fn setup<'a>(
        &self,
        module: &LoadedModule,
        read_only: bool,
        caller: &'a str,
        timestamp_ms: i64,
        seed: [u8; 32],
        (memory_bytes, output_bytes): (u64, usize),
    ) -> CallSetup<'a> {
        CallSetup {
            read_only,
            metered: self.inner.metered,
            caller,
            timestamp_ms,
            seed,
            output_bytes_max: output_bytes,
            memory_bytes_max: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            module: Arc::clone(&module.inner.short),
        }
    }

    /// Runs one call on a fresh instance. Never panics on guest behaviour: every way a
    /// guest can end is an [`Outcome`]. The write set is empty unless the outcome is
    /// [`Outcome::Ok`].
    pub fn call(&self, module: &LoadedModule, call: &Call<'_>, kv: &dyn KvSource) -> CallReport {
        let span = tracing::info_span!(
            "wasm_call",
            module = %module.inner.short,
            entry = %call.entry,
            fuel_used = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let _entered = span.enter();
        // Defence in depth: no guest behaviour should reach a panic of the host,
        // and if one does it must not take the replica (and every other) down.
        let report = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.call_in_span(module, call, kv)
        })) {
            Ok(report) => report,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    module = %module.inner.short,
                    entry = %call.entry,
                    panic = %what,
                    "a wasmraft bug: the host panicked while running a guest call; the call ends as a host fault"
                );
                CallReport {
                    outcome: Outcome::Trap {
                        kind: TrapKind::HostFault,
                        message: "the host failed while running the call (a wasmraft bug, \
                                  logged by the node); the call's writes are dropped"
                            .to_owned(),
                    },
                    fuel_used: call.fuel,
                    writes: WriteSet::new(),
                }
            }
        };
        span.record("fuel_used", report.fuel_used);
        span.record("outcome", outcome_label(&report.outcome));
        report
    }

    fn call_in_span(
        &self,
        module: &LoadedModule,
        call: &Call<'_>,
        kv: &dyn KvSource,
    ) -> CallReport {
        let failed = |outcome| CallReport {
            outcome,
            fuel_used: 0,
            writes: WriteSet::new(),
        };
        if !Engine::same(module.inner.pre.module().engine(), &self.inner.engine) {
            return failed(Outcome::Unavailable(
                "the module was loaded by another runtime".to_string(),
            ));
        }
        let Some(entry_export) = module.entry(call.entry) else {
            return failed(Outcome::MissingExport(call.entry.export_name()));
        };
        let config = &self.inner.config;
        let fuel = call.fuel.min(config.fuel_per_call_max);
        let memory_bytes = call.memory_bytes.min(config.memory_bytes_max);
        let output_bytes = call.output_bytes.min(config.output_bytes_max);
        let read_only = call.entry.is_read_only();
        // A query sees zero seed bytes whatever the caller passed (ABI v1).
        let seed = if read_only { [0; 32] } else { call.seed };
        let setup = self.setup(
            module,
            read_only,
            call.caller,
            call.timestamp_ms,
            seed,
            (memory_bytes, output_bytes),
        );

        let _slot = match call.entry {
            EntryPoint::Query => self.inner.query_slots.acquire(),
            EntryPoint::Apply | EntryPoint::Init | EntryPoint::Migrate => {
                self.inner.apply_slots.acquire()
            }
        };
        // The store, and the `KvRef` inside it, are dropped before this function
        // returns, so the erased borrow of `kv` never outlives it.
        let mut store = Store::new(&self.inner.engine, CallState::new(KvRef::new(kv), setup));
        store.limiter(|state| &mut state.memory_cap);
        if self.inner.metered
            && let Err(error) = store.set_fuel(fuel)
        {
            return failed(Outcome::Unavailable(error.to_string()));
        }
        store.set_epoch_deadline(match call.entry {
            EntryPoint::Query => query_deadline_ticks(config.query_timeout),
            EntryPoint::Apply | EntryPoint::Init | EntryPoint::Migrate => EPOCH_DEADLINE_NEVER,
        });

        let result = run(&mut store, module, entry_export, call.input);
        let fuel_used = if self.inner.metered {
            fuel.saturating_sub(store.get_fuel().unwrap_or(0))
        } else {
            0
        };
        let state = store.into_data();
        let memory_hit = state.memory_cap.hit;
        let outcome = match result {
            Ok(0) => Outcome::Ok(state.output),
            Ok(1) => Outcome::GuestError(String::from_utf8_lossy(&state.output).into_owned()),
            Ok(code) => Outcome::Trap {
                kind: TrapKind::InvalidResultCode,
                message: format!("invalid result code {code}"),
            },
            Err(RunError::AllocationFailed) => Outcome::GuestError("allocation failed".to_string()),
            Err(RunError::Instantiate(_)) if memory_hit => Outcome::MemoryLimit,
            Err(RunError::Instantiate(error)) => Outcome::Unavailable(error.to_string()),
            Err(RunError::Guest(error)) => classify(&error, output_bytes),
        };
        let outcome = match outcome {
            // A trap after a refused `memory.grow` is the memory cap's doing (ABI v1).
            Outcome::Trap { .. } if memory_hit => Outcome::MemoryLimit,
            other => other,
        };
        let writes = if outcome.is_ok() {
            state.writes
        } else {
            WriteSet::new()
        };
        CallReport {
            outcome,
            fuel_used,
            writes,
        }
    }
}

/// How far a query may run: the timeout in epoch ticks, rounded up, plus the tick in
/// progress.
fn query_deadline_ticks(timeout: std::time::Duration) -> u64 {
    let tick = config::EPOCH_TICK.as_nanos();
    let ticks = timeout.as_nanos().div_ceil(tick) + 1;
    u64::try_from(ticks)
        .unwrap_or(EPOCH_DEADLINE_NEVER)
        .min(EPOCH_DEADLINE_NEVER)
}

enum RunError {
    /// The instance could not be created (memory cap, pool).
    Instantiate(wasmtime::Error),
    /// `wasmraft_alloc` returned 0 or a range outside memory.
    AllocationFailed,
    /// The guest trapped or an import ended the call.
    Guest(wasmtime::Error),
}

/// Instantiates, places the input, calls the entry point; returns its result code.
fn run(
    store: &mut Store<CallState>,
    module: &LoadedModule,
    entry: &ModuleExport,
    input: &[u8],
) -> Result<i32, RunError> {
    let inner = &module.inner;
    let instance = inner
        .pre
        .instantiate(&mut *store)
        .map_err(RunError::Instantiate)?;
    let export = |store: &mut Store<CallState>, export: &ModuleExport| {
        instance.get_module_export(&mut *store, export)
    };
    let memory = export(store, &inner.memory)
        .and_then(|export| export.into_memory())
        .ok_or_else(|| RunError::Guest(wasmtime::Error::msg("`memory` is not a memory")))?;
    store.data_mut().memory = Some(memory);
    let alloc = export(store, &inner.alloc)
        .and_then(|export| export.into_func())
        .ok_or_else(|| RunError::Guest(wasmtime::Error::msg("`wasmraft_alloc` is not a function")))?
        .typed::<i32, i32>(&*store)
        .map_err(RunError::Guest)?;
    let function = export(store, entry)
        .and_then(|export| export.into_func())
        .ok_or_else(|| RunError::Guest(wasmtime::Error::msg("entry point is not a function")))?
        .typed::<(i32, i32), i32>(&*store)
        .map_err(RunError::Guest)?;

    let length = i32::try_from(input.len()).map_err(|_| RunError::AllocationFailed)?;
    let pointer = alloc.call(&mut *store, length).map_err(RunError::Guest)?;
    if pointer == 0 {
        return Err(RunError::AllocationFailed);
    }
    memory
        .write(&mut *store, pointer as u32 as usize, input)
        .map_err(|_| RunError::AllocationFailed)?;
    function
        .call(&mut *store, (pointer, length))
        .map_err(RunError::Guest)
}

/// The outcome of a call that ended with an error: an import's [`HostExit`] or a trap.
fn classify(error: &wasmtime::Error, output_bytes_max: usize) -> Outcome {
    if let Some(exit) = error.downcast_ref::<HostExit>() {
        return match exit {
            HostExit::Abort(message) => Outcome::GuestError(message.clone()),
            HostExit::OutputTooLarge => Outcome::OutputTooLarge {
                limit: output_bytes_max,
            },
            HostExit::OutOfFuel => Outcome::OutOfFuel,
            HostExit::Misuse(message) => Outcome::Trap {
                kind: TrapKind::ImportMisuse,
                message: message.clone(),
            },
            HostExit::Kv(error) => Outcome::Host(error.clone()),
        };
    }
    let Some(trap) = error.downcast_ref::<Trap>() else {
        // Not a trap of the guest: wasmtime itself failed on this node.
        return Outcome::Unavailable(error.to_string());
    };
    let kind = match trap {
        Trap::OutOfFuel => return Outcome::OutOfFuel,
        Trap::Interrupt => return Outcome::TimedOut,
        Trap::UnreachableCodeReached => TrapKind::Unreachable,
        Trap::StackOverflow => TrapKind::StackOverflow,
        Trap::MemoryOutOfBounds => TrapKind::MemoryOutOfBounds,
        Trap::HeapMisaligned => TrapKind::HeapMisaligned,
        Trap::TableOutOfBounds => TrapKind::TableOutOfBounds,
        Trap::IndirectCallToNull => TrapKind::IndirectCallToNull,
        Trap::BadSignature => TrapKind::BadSignature,
        Trap::IntegerOverflow => TrapKind::IntegerOverflow,
        Trap::IntegerDivisionByZero => TrapKind::IntegerDivisionByZero,
        Trap::BadConversionToInteger => TrapKind::BadConversionToInteger,
        _ => TrapKind::Other,
    };
    Outcome::Trap {
        kind,
        message: trap.to_string(),
    }
}

/// A short, fixed label of an outcome, for span fields and metrics.
pub fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ok(_) => "ok",
        Outcome::GuestError(_) => "guest_error",
        Outcome::OutOfFuel => "out_of_fuel",
        Outcome::MemoryLimit => "memory_limit",
        Outcome::Trap { .. } => "trap",
        Outcome::OutputTooLarge { .. } => "output_too_large",
        Outcome::TimedOut => "timed_out",
        Outcome::MissingExport(_) => "missing_export",
        Outcome::Host(_) => "host_error",
        Outcome::Unavailable(_) => "unavailable",
    }
}

/// The declared minimum pages of the module's memory (for error messages).
fn module_memory_pages_min(module: &LoadedModule) -> u64 {
    module
        .inner
        .pre
        .module()
        .exports()
        .find_map(|export| export.ty().memory().map(|memory| memory.minimum()))
        .unwrap_or(0)
}

/// Advances the engine's epoch every [`config::EPOCH_TICK`] until the runtime is dropped.
fn spawn_epoch_ticker(engine: &Engine, stop: Arc<AtomicBool>) -> Result<(), RuntimeError> {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("wasmraft-epoch".to_string())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(config::EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map(drop)
        .map_err(|error| RuntimeError::Engine(format!("cannot start the epoch thread: {error}")))
}

/// Bounds the instances alive at once to the pool size: a call waits for a free slot
/// instead of failing nondeterministically when the pool is exhausted.
#[derive(Debug)]
struct Slots {
    capacity: u32,
    free: Mutex<u32>,
    released: Condvar,
}

struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn new(count: u32) -> Slots {
        Slots {
            capacity: count,
            free: Mutex::new(count),
            released: Condvar::new(),
        }
    }

    fn in_use(&self) -> u32 {
        let free = *self
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.capacity - free
    }

    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while *free == 0 {
            free = self
                .released
                .wait(free)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut free = self
            .0
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *free += 1;
        self.0.released.notify_one();
    }
}
