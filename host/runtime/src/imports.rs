//! The `wasmraft` host functions of ABI v1 and the per-call state they work on.
//!
//! Every import checks its arguments, charges fuel (1,000 + 1 per byte moved), then acts.
//! The checks run in a fixed order, so a misuse gives the same trap on every replica.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use tracing::Level;
use wasmtime::{Caller, Linker, Memory, ResourceLimiter};

use super::abi;
use super::kv::{self, KvError, KvSource, WriteSet};
use super::validate::TABLE_ELEMENTS_MAX;

/// Why an import ended the call. Carried through wasmtime as the call's error and
/// turned into an [`Outcome`](super::Outcome) by the runtime.
#[derive(Debug)]
pub(crate) enum HostExit {
    /// `abort` with its (truncated, lossy UTF-8) message.
    Abort(String),
    OutputTooLarge,
    /// An import's fuel charge exceeded what was left.
    OutOfFuel,
    /// An import called against the ABI; the message names the rule.
    Misuse(String),
    /// The key-value source failed.
    Kv(KvError),
}

impl fmt::Display for HostExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostExit::Abort(message) => write!(f, "guest aborted: {message}"),
            HostExit::OutputTooLarge => f.write_str("output too large"),
            HostExit::OutOfFuel => f.write_str("out of fuel in a host import"),
            HostExit::Misuse(message) => f.write_str(message),
            HostExit::Kv(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for HostExit {}

fn misuse(message: impl Into<String>) -> wasmtime::Error {
    wasmtime::Error::new(HostExit::Misuse(message.into()))
}

/// The caller's key-value source, reachable from the host functions during one call.
///
/// wasmtime requires store data to be `'static`, but the source is borrowed for the
/// duration of [`Runtime::call`](super::Runtime::call) only (for example a redb table
/// inside the write transaction of the entry being applied). `KvRef` erases that
/// lifetime; it is sound because a `KvRef` is created only in `Runtime::call` (and
/// `Runtime::validate`, from a `'static` source) and moved into a `Store` that is
/// dropped before the borrow ends (see `Runtime::call`), and it hands out shared
/// references only.
pub(crate) struct KvRef(NonNull<dyn KvSource + 'static>);

impl KvRef {
    /// Callers must drop the `KvRef` before `kv`'s borrow ends (see the type's doc).
    #[allow(unsafe_code)]
    pub(super) fn new(kv: &dyn KvSource) -> KvRef {
        let pointer: NonNull<dyn KvSource + '_> = NonNull::from(kv);
        // SAFETY: only the trait object's lifetime bound changes, not the layout of the
        // fat pointer. The pointer is dereferenced in `KvRef::get` only while the
        // `Store` owning this `KvRef` is alive, which is within the borrow of `kv`.
        KvRef(unsafe {
            std::mem::transmute::<NonNull<dyn KvSource + '_>, NonNull<dyn KvSource + 'static>>(
                pointer,
            )
        })
    }

    #[allow(unsafe_code)]
    fn get(&self) -> &dyn KvSource {
        // SAFETY: the referent outlives `self` (see `KvRef::new`) and is only ever
        // accessed through shared references.
        unsafe { self.0.as_ref() }
    }
}

/// Caps the instance's memory at the call's budget and remembers a refusal, so that the
/// trap that usually follows is reported as *memory limit*.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub(crate) bytes_max: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.bytes_max {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired as u64 <= TABLE_ELEMENTS_MAX)
    }
}

/// Everything one call's imports read and write. Lives in the call's `Store`.
pub(crate) struct CallState {
    kv: KvRef,
    read_only: bool,
    /// Whether the engine meters fuel (only benchmarks turn it off).
    metered: bool,
    caller: Vec<u8>,
    timestamp_ms: i64,
    seed: [u8; 32],
    /// Set right after instantiation; imports before that cannot happen.
    pub(crate) memory: Option<Memory>,
    /// The value of the last `kv_get`, `kv_scan` or `caller`, until `result_read`.
    pending: Option<Vec<u8>>,
    pub(crate) writes: WriteSet,
    pub(crate) output: Vec<u8>,
    output_bytes_max: usize,
    log_lines: u32,
    log_bytes: usize,
    /// The module's short hash, for guest log events.
    module: Arc<str>,
    pub(crate) memory_cap: MemoryCap,
}

/// The per-call inputs of a [`CallState`].
pub(crate) struct CallSetup<'a> {
    pub(crate) read_only: bool,
    pub(crate) metered: bool,
    pub(crate) caller: &'a str,
    pub(crate) timestamp_ms: i64,
    pub(crate) seed: [u8; 32],
    pub(crate) output_bytes_max: usize,
    pub(crate) memory_bytes_max: usize,
    pub(crate) module: Arc<str>,
}

impl CallState {
    pub(crate) fn new(kv: KvRef, setup: CallSetup<'_>) -> CallState {
        CallState {
            kv,
            read_only: setup.read_only,
            metered: setup.metered,
            caller: setup.caller.as_bytes().to_vec(),
            timestamp_ms: setup.timestamp_ms,
            seed: setup.seed,
            memory: None,
            pending: None,
            writes: WriteSet::new(),
            output: Vec::new(),
            output_bytes_max: setup.output_bytes_max,
            log_lines: 0,
            log_bytes: 0,
            module: setup.module,
            memory_cap: MemoryCap {
                bytes_max: setup.memory_bytes_max,
                hit: false,
            },
        }
    }
}

type Ctx<'a> = Caller<'a, CallState>;

/// Charges an import: the base cost plus one unit per byte moved.
fn charge(caller: &mut Ctx<'_>, bytes: usize) -> wasmtime::Result<()> {
    charge_bytes(caller, abi::IMPORT_FUEL_BASE.saturating_add(bytes as u64))
}

/// Charges `cost` units of fuel; running out ends the call as *out of fuel*.
fn charge_bytes(caller: &mut Ctx<'_>, cost: u64) -> wasmtime::Result<()> {
    if !caller.data().metered {
        return Ok(());
    }
    let left = caller.get_fuel()?;
    if left < cost {
        caller.set_fuel(0)?;
        return Err(wasmtime::Error::new(HostExit::OutOfFuel));
    }
    caller.set_fuel(left - cost)
}

/// The fuel the call has left (all of it when fuel is not metered).
fn fuel_left(caller: &Ctx<'_>) -> wasmtime::Result<u64> {
    if !caller.data().metered {
        return Ok(u64::MAX);
    }
    caller.get_fuel()
}

/// The guest range `[ptr, ptr + len)`, checked against the memory's current size.
fn range(caller: &Ctx<'_>, ptr: i32, len: usize) -> wasmtime::Result<std::ops::Range<usize>> {
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| misuse("import called before instantiation"))?;
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(len)
        .ok_or_else(|| misuse("out-of-bounds guest pointer"))?;
    if end > memory.data_size(caller) {
        return Err(misuse("out-of-bounds guest pointer"));
    }
    Ok(start..end)
}

fn read(caller: &Ctx<'_>, ptr: i32, len: usize) -> wasmtime::Result<Vec<u8>> {
    let range = range(caller, ptr, len)?;
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| misuse("import called before instantiation"))?;
    Ok(memory.data(caller)[range].to_vec())
}

fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let range = range(caller, ptr, bytes.len())?;
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| misuse("import called before instantiation"))?;
    memory.data_mut(caller)[range].copy_from_slice(bytes);
    Ok(())
}

/// A key argument: 1 to 4,096 bytes.
fn read_key(caller: &Ctx<'_>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let len = len as u32 as usize;
    if len == 0 {
        return Err(misuse("empty key"));
    }
    if len > abi::KEY_BYTES_MAX {
        return Err(misuse("key too large"));
    }
    read(caller, ptr, len)
}

/// A scan bound: 0 to 4,097 bytes (a continuation key is the last key plus a zero byte).
fn read_bound(caller: &Ctx<'_>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let len = len as u32 as usize;
    if len > abi::SCAN_BOUND_BYTES_MAX {
        return Err(misuse("key too large"));
    }
    read(caller, ptr, len)
}

fn check_writable(caller: &Ctx<'_>) -> wasmtime::Result<()> {
    if caller.data().read_only {
        return Err(misuse("write in a read-only query"));
    }
    Ok(())
}

fn length_result(length: usize) -> i64 {
    // Pending results are bounded by the page and value caps, far below i64::MAX.
    i64::try_from(length).unwrap_or(i64::MAX)
}

/// Defines every import of ABI v1 on `linker`.
pub(crate) fn define(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    let module = abi::IMPORT_MODULE;
    linker.func_wrap(
        module,
        "kv_get",
        |mut caller: Ctx<'_>, key_ptr: i32, key_len: i32| {
            let key = read_key(&caller, key_ptr, key_len)?;
            charge(&mut caller, key.len())?;
            let state = caller.data();
            let value = kv::get(state.kv.get(), &state.writes, &key).map_err(HostExit::Kv)?;
            let Some(value) = value else {
                caller.data_mut().pending = None;
                return Ok(-1i64);
            };
            charge_bytes(&mut caller, value.len() as u64)?;
            let length = length_result(value.len());
            caller.data_mut().pending = Some(value);
            Ok(length)
        },
    )?;
    linker.func_wrap(
        module,
        "kv_set",
        |mut caller: Ctx<'_>, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32| {
            check_writable(&caller)?;
            let key = read_key(&caller, key_ptr, key_len)?;
            let value_len = value_len as u32 as usize;
            if value_len > abi::VALUE_BYTES_MAX {
                return Err(misuse("value too large"));
            }
            let value = read(&caller, value_ptr, value_len)?;
            charge(&mut caller, key.len() + value.len())?;
            caller
                .data_mut()
                .writes
                .set(&key, &value)
                .map_err(|_| misuse("write set too large"))
        },
    )?;
    linker.func_wrap(
        module,
        "kv_delete",
        |mut caller: Ctx<'_>, key_ptr: i32, key_len: i32| {
            check_writable(&caller)?;
            let key = read_key(&caller, key_ptr, key_len)?;
            charge(&mut caller, key.len())?;
            caller
                .data_mut()
                .writes
                .delete(&key)
                .map_err(|_| misuse("write set too large"))
        },
    )?;
    linker.func_wrap(
        module,
        "kv_scan",
        |mut caller: Ctx<'_>,
         start_ptr: i32,
         start_len: i32,
         end_ptr: i32,
         end_len: i32,
         limit: i32| {
            let limit = usize::try_from(limit).unwrap_or(0);
            if !(1..=abi::SCAN_LIMIT_MAX).contains(&limit) {
                return Err(misuse("scan limit out of range (1 to 1024)"));
            }
            let start = read_bound(&caller, start_ptr, start_len)?;
            let end = match end_len {
                -1 => None,
                _ => Some(read_bound(&caller, end_ptr, end_len)?),
            };
            charge(&mut caller, start.len() + end.as_ref().map_or(0, Vec::len))?;
            let left = fuel_left(&caller)?;
            let mut budget = kv::ScanBudget::new(left);
            let state = caller.data();
            let page = kv::scan_page(
                state.kv.get(),
                &state.writes,
                &start,
                end.as_deref(),
                limit,
                &mut budget,
            );
            // The walk was charged entry by entry as it went; the page's bytes
            // are among what it charged.
            charge_bytes(&mut caller, budget.spent())?;
            let page = match page {
                Ok(page) => page,
                Err(kv::ScanError::OutOfFuel) => {
                    return Err(wasmtime::Error::new(HostExit::OutOfFuel));
                }
                Err(kv::ScanError::Kv(error)) => return Err(HostExit::Kv(error).into()),
            };
            let length = length_result(page.len());
            caller.data_mut().pending = Some(page);
            Ok(length)
        },
    )?;
    linker.func_wrap(module, "caller", |mut caller: Ctx<'_>| {
        let identity = caller.data().caller.clone();
        charge(&mut caller, identity.len())?;
        let length = i32::try_from(identity.len()).unwrap_or(i32::MAX);
        caller.data_mut().pending = Some(identity);
        Ok(length)
    })?;
    linker.func_wrap(module, "timestamp_ms", |mut caller: Ctx<'_>| {
        charge(&mut caller, 0)?;
        Ok(caller.data().timestamp_ms)
    })?;
    linker.func_wrap(module, "seed", |mut caller: Ctx<'_>, dst_ptr: i32| {
        let seed = caller.data().seed;
        range(&caller, dst_ptr, seed.len())?;
        charge(&mut caller, seed.len())?;
        write(&mut caller, dst_ptr, &seed)
    })?;
    linker.func_wrap(
        module,
        "result_read",
        |mut caller: Ctx<'_>, dst_ptr: i32| {
            let length = match &caller.data().pending {
                Some(pending) => pending.len(),
                None => return Err(misuse("result_read without a pending result")),
            };
            range(&caller, dst_ptr, length)?;
            // The bytes were charged when the result was produced.
            charge(&mut caller, 0)?;
            let pending = caller.data_mut().pending.take().unwrap_or_default();
            write(&mut caller, dst_ptr, &pending)
        },
    )?;
    linker.func_wrap(
        module,
        "output",
        |mut caller: Ctx<'_>, ptr: i32, len: i32| {
            let len = len as u32 as usize;
            if len > caller.data().output_bytes_max {
                return Err(wasmtime::Error::new(HostExit::OutputTooLarge));
            }
            let bytes = read(&caller, ptr, len)?;
            charge(&mut caller, len)?;
            caller.data_mut().output = bytes;
            Ok(())
        },
    )?;
    linker.func_wrap(
        module,
        "log",
        |mut caller: Ctx<'_>, level: i32, ptr: i32, len: i32| {
            let len = len as u32 as usize;
            let range = range(&caller, ptr, len)?;
            charge(&mut caller, len)?;
            let state = caller.data();
            let budget = abi::LOG_BYTES_MAX - state.log_bytes;
            if state.log_lines >= abi::LOG_LINES_MAX || budget == 0 {
                return Ok(());
            }
            let shown = range.start..range.start + len.min(budget);
            let memory = state
                .memory
                .ok_or_else(|| misuse("import called before instantiation"))?;
            let line = String::from_utf8_lossy(&memory.data(&caller)[shown.clone()]).into_owned();
            let module = Arc::clone(&caller.data().module);
            let state = caller.data_mut();
            state.log_lines += 1;
            state.log_bytes += shown.len();
            emit_log(level, &module, &line);
            Ok(())
        },
    )?;
    linker.func_wrap(
        module,
        "abort",
        |mut caller: Ctx<'_>, ptr: i32, len: i32| {
            let len = (len as u32 as usize).min(abi::ABORT_MESSAGE_BYTES_MAX);
            let bytes = read(&caller, ptr, len)?;
            charge(&mut caller, len)?;
            let message = String::from_utf8_lossy(&bytes).into_owned();
            Err::<(), _>(wasmtime::Error::new(HostExit::Abort(message)))
        },
    )?;
    Ok(())
}

fn emit_log(level: i32, module: &str, line: &str) {
    const TARGET: &str = "wasmraft::guest";
    let level = match level {
        0 => Level::ERROR,
        1 => Level::WARN,
        2 => Level::INFO,
        3 => Level::DEBUG,
        _ => Level::TRACE,
    };
    match level {
        Level::ERROR => tracing::error!(target: TARGET, module, "{line}"),
        Level::WARN => tracing::warn!(target: TARGET, module, "{line}"),
        Level::INFO => tracing::info!(target: TARGET, module, "{line}"),
        Level::DEBUG => tracing::debug!(target: TARGET, module, "{line}"),
        _ => tracing::trace!(target: TARGET, module, "{line}"),
    }
}
