//! Applying one replicated command to the state: each command kind has its
//! handler here. Handlers see the batch's open write transaction, so later
//! commands of a batch see the writes of earlier ones, and everything commits
//! together with `last_applied`.
//!
//! A handler returns the command's [`Response`] — refusals and guest failures
//! included, identical on every replica — or a [`redb::Error`], which is a
//! broken storage and stops the node.

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::state::{
    ACCESS, BLOBS, KV, MODULES, ModuleRecord, SESSIONS, SESSIONS_BY_USE, module_key,
    module_key_range,
};
use crate::command::{
    AccessChange, CallOutcome, CallResult, Command, Deploy, Deployed, Invoke, ModuleHash,
    ModuleLimits, Refusal, Request, Response, SessionId, check, codec,
};
use crate::raft::LogId;
use crate::wasm::{
    Call, CallReport, EntryPoint, KvError, KvSource, LoadedModule, Outcome, Runtime,
};

/// How many times apply retries a call the node could not start (the host
/// failed to instantiate it), a millisecond apart, before giving up as a
/// node failure.
const UNAVAILABLE_RETRIES: u32 = 5_000;

/// What a handler needs besides the transaction.
pub(crate) struct ApplyContext<'a> {
    pub runtime: &'a Runtime,
    pub limits: &'a CallLimits,
}

/// The cluster-wide ceilings of guest calls. Part of what makes apply
/// deterministic: every replica must use the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    pub fuel_per_call_max: u64,
    pub memory_bytes_max: u64,
    /// Client sessions remembered for exactly-once; the least recently used
    /// is forgotten past it.
    pub sessions_max: u64,
}

impl CallLimits {
    /// The default number of remembered client sessions.
    pub const SESSIONS_MAX_DEFAULT: u64 = 100_000;
}

impl CallLimits {
    /// A module's own limits, clamped by the cluster's.
    pub fn for_module(&self, requested: &ModuleLimits) -> (u64, u64) {
        (
            requested
                .fuel_per_call
                .map_or(self.fuel_per_call_max, |fuel| {
                    fuel.min(self.fuel_per_call_max)
                }),
            requested
                .memory_bytes
                .map_or(self.memory_bytes_max, |bytes| {
                    bytes.min(self.memory_bytes_max)
                }),
        )
    }
}

/// The last command applied for one client, kept to answer its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub sequence: u64,
    /// The log index that last used the session, for least-recently-used eviction.
    pub last_used_index: u64,
    pub response: Response,
}

/// The seed a module sees for command `position` of the entry at `log_id`
/// (0 unless the entry is a batch): the same on every replica, different for
/// every command.
pub fn entry_seed(log_id: &LogId, position: u32) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"wasmraft entry seed v1");
    hasher.update(log_id.leader_id.term.to_le_bytes());
    hasher.update(log_id.leader_id.node_id.to_le_bytes());
    hasher.update(log_id.index.to_le_bytes());
    hasher.update(position.to_le_bytes());
    hasher.finalize().into()
}

/// Who sent a command and when, as apply sees it (the time clamped by [`Clock`]).
#[derive(Debug, Clone, Copy)]
struct Origin<'a> {
    caller: &'a str,
    timestamp_ms: i64,
}

/// Where a command sits: its entry and its place in the entry's batch.
#[derive(Debug, Clone, Copy)]
struct Place<'a> {
    log_id: &'a LogId,
    position: u32,
}

impl Place<'_> {
    fn seed(&self) -> [u8; 32] {
        entry_seed(self.log_id, self.position)
    }
}

/// The clock modules see: each command's leader timestamp, never earlier
/// than the last one applied. Leaders' clocks differ, so the timestamps of
/// the log go backwards across a leader change (and within a batch of
/// commands stamped by different nodes); clamping is deterministic, since
/// every replica applies the same commands in the same order from the same
/// last timestamp.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub last_timestamp_ms: i64,
}

impl Clock {
    fn stamp(&mut self, timestamp_ms: i64) -> i64 {
        self.last_timestamp_ms = self.last_timestamp_ms.max(timestamp_ms);
        self.last_timestamp_ms
    }
}

pub(crate) fn apply_request(
    txn: &WriteTransaction,
    context: &ApplyContext<'_>,
    clock: &mut Clock,
    log_id: &LogId,
    request: &Request,
) -> Result<Response, redb::Error> {
    let span = tracing::debug_span!("apply", index = log_id.index, kind = request.command.kind());
    let _entered = span.enter();
    let Command::Batch(requests) = &request.command else {
        return apply_one(
            txn,
            context,
            clock,
            Place {
                log_id,
                position: 0,
            },
            request,
        );
    };
    let mut responses = Vec::with_capacity(requests.len());
    for (position, request) in requests.iter().enumerate() {
        // A batch holds at most as many commands as one entry's bytes allow,
        // far below 2^32; saturate rather than trust that.
        let position = u32::try_from(position).unwrap_or(u32::MAX);
        responses.push(apply_one(
            txn,
            context,
            clock,
            Place { log_id, position },
            request,
        )?);
    }
    Ok(Response::Batch(responses))
}

fn apply_one(
    txn: &WriteTransaction,
    context: &ApplyContext<'_>,
    clock: &mut Clock,
    place: Place<'_>,
    request: &Request,
) -> Result<Response, redb::Error> {
    if let Err(reason) = check::request(request) {
        return Ok(Response::Refused(Refusal::InvalidCommand(reason)));
    }
    // Handlers see the clamped time only.
    let origin = &Origin {
        caller: &request.caller,
        timestamp_ms: clock.stamp(request.timestamp_ms),
    };
    match &request.command {
        Command::Deploy(deploy) => apply_deploy(txn, context, place, origin, deploy),
        Command::Remove { name } => apply_remove(txn, name),
        Command::Invoke(invoke) => apply_invoke_once(txn, context, place, origin, invoke),
        Command::Access(change) => apply_access(txn, change),
        Command::Batch(_) => Ok(Response::Refused(Refusal::NestedBatch)),
    }
}

impl Command {
    /// A short name of the command kind, for traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Deploy(_) => "deploy",
            Command::Remove { .. } => "remove",
            Command::Invoke(_) => "invoke",
            Command::Access(_) => "access",
            Command::Batch(_) => "batch",
        }
    }
}

fn read_module(txn: &WriteTransaction, name: &str) -> Result<Option<ModuleRecord>, redb::Error> {
    let table = txn.open_table(MODULES)?;
    let record = table.get(name.as_bytes())?;
    record.map(|bytes| decode(bytes.value())).transpose()
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, redb::Error> {
    codec::decode(bytes)
        .map_err(|e| redb::Error::Corrupted(format!("undecodable state record: {e}")))
}

fn apply_deploy(
    txn: &WriteTransaction,
    context: &ApplyContext<'_>,
    place: Place<'_>,
    request: &Origin<'_>,
    deploy: &Deploy,
) -> Result<Response, redb::Error> {
    let hash: ModuleHash = Sha256::digest(&deploy.wasm).into();
    if hash != deploy.hash {
        return Ok(Response::Refused(Refusal::HashMismatch));
    }
    // Only the deterministic checks may become a replicated refusal. The
    // module compiled on the node that proposed it; failing to compile or
    // instantiate it here is this node's failure (memory, the compiler), and
    // recording a refusal would make this replica differ from the others.
    let info = match context.runtime.check(&deploy.wasm) {
        Ok(info) => info,
        Err(error) => return Ok(Response::Refused(Refusal::InvalidModule(error.to_string()))),
    };
    let module = context.runtime.load(&hash, &deploy.wasm).map_err(|error| {
        redb::Error::Corrupted(format!(
            "this node cannot compile module `{}`, which passed validation: {error}; \
             the node stops, and applies the deploy again when restarted",
            deploy.name
        ))
    })?;
    let previous = read_module(txn, &deploy.name)?;
    let (fuel, memory_bytes) = context.limits.for_module(&deploy.limits);

    let setup_entry = match previous {
        None if info.has_init => Some(EntryPoint::Init),
        Some(_) if info.has_migrate => Some(EntryPoint::Migrate),
        _ => None,
    };
    let setup = match setup_entry {
        None => None,
        Some(entry) => {
            let call = Call {
                entry,
                input: &deploy.init_argument,
                caller: request.caller,
                timestamp_ms: request.timestamp_ms,
                seed: place.seed(),
                fuel,
                memory_bytes,
            };
            let (result, report) = run(txn, context.runtime, &module, &deploy.name, &call)?;
            if !result.outcome.is_ok() {
                return Ok(Response::Refused(Refusal::SetupFailed(describe(
                    &result.outcome,
                ))));
            }
            commit_writes(txn, &deploy.name, report)?;
            Some(result)
        }
    };

    let version = previous.as_ref().map_or(1, |record| record.version + 1);
    let record = ModuleRecord {
        name: deploy.name.clone(),
        version,
        hash,
        size_bytes: deploy.wasm.len() as u64,
        deployed_index: place.log_id.index,
        deployed_timestamp_ms: request.timestamp_ms,
        limits: deploy.limits,
        has_query: info.has_query,
        has_init: info.has_init,
        has_migrate: info.has_migrate,
    };
    {
        let mut blobs = txn.open_table(BLOBS)?;
        if blobs.get(hash.as_slice())?.is_none() {
            blobs.insert(hash.as_slice(), deploy.wasm.as_slice())?;
        }
    }
    txn.open_table(MODULES)?
        .insert(deploy.name.as_bytes(), codec::encode(&record).as_slice())?;
    if let Some(previous) = previous {
        release_blob(txn, &previous.hash)?;
    }
    Ok(Response::Deployed(Deployed {
        name: deploy.name.clone(),
        version,
        hash,
        setup,
    }))
}

/// Deletes the blob `hash` unless a module record still refers to it.
fn release_blob(txn: &WriteTransaction, hash: &ModuleHash) -> Result<(), redb::Error> {
    let modules = txn.open_table(MODULES)?;
    for item in modules.iter()? {
        let (_, bytes) = item?;
        let record: ModuleRecord = decode(bytes.value())?;
        if &record.hash == hash {
            return Ok(());
        }
    }
    txn.open_table(BLOBS)?.remove(hash.as_slice())?;
    Ok(())
}

fn apply_remove(txn: &WriteTransaction, name: &str) -> Result<Response, redb::Error> {
    let Some(record) = read_module(txn, name)? else {
        return Ok(Response::Refused(Refusal::ModuleNotFound(name.to_owned())));
    };
    txn.open_table(MODULES)?.remove(name.as_bytes())?;
    let range = module_key_range(name, b"", None);
    txn.open_table(KV)?
        .retain_in(range.start.as_slice()..range.end.as_slice(), |_, _| false)?;
    release_blob(txn, &record.hash)?;
    Ok(Response::Removed {
        name: name.to_owned(),
    })
}

/// Exactly-once: a command of a known session is answered from the session
/// table when it was applied already.
fn apply_invoke_once(
    txn: &WriteTransaction,
    context: &ApplyContext<'_>,
    place: Place<'_>,
    request: &Origin<'_>,
    invoke: &Invoke,
) -> Result<Response, redb::Error> {
    let Some(SessionId {
        client_id,
        sequence,
    }) = &invoke.session
    else {
        return apply_invoke(txn, context, place, request, invoke);
    };
    // A session belongs to the subject that opened it: another caller using
    // the same client id gets a session of its own.
    let key = session_key(request.caller, client_id);
    let previous: Option<SessionRecord> = {
        let sessions = txn.open_table(SESSIONS)?;
        let record = sessions.get(key.as_slice())?;
        record.map(|bytes| decode(bytes.value())).transpose()?
    };
    // Sessions start at sequence 1. An unknown session further along was
    // forgotten (evicted): its command may have been applied already, so it
    // is refused rather than risk a second apply.
    if previous.is_none() && *sequence > 1 {
        return Ok(Response::Refused(Refusal::SessionExpired {
            client_id: client_id.clone(),
            sequence: *sequence,
        }));
    }
    if let Some(previous) = &previous {
        if previous.sequence == *sequence {
            return Ok(previous.response.clone());
        }
        if previous.sequence > *sequence {
            return Ok(Response::Refused(Refusal::SessionExpired {
                client_id: client_id.clone(),
                sequence: *sequence,
            }));
        }
    }
    let response = apply_invoke(txn, context, place, request, invoke)?;
    let record = SessionRecord {
        sequence: *sequence,
        last_used_index: place.log_id.index,
        response: response.clone(),
    };
    let mut by_use = txn.open_table(SESSIONS_BY_USE)?;
    if let Some(previous) = previous {
        by_use.remove(use_key(previous.last_used_index, &key).as_slice())?;
    }
    by_use.insert(use_key(place.log_id.index, &key).as_slice(), [].as_slice())?;
    let mut sessions = txn.open_table(SESSIONS)?;
    sessions.insert(key.as_slice(), codec::encode(&record).as_slice())?;
    // The table is bounded: past the cap, the least recently used session
    // goes. Its client then gets `SessionExpired` for a retry of an old
    // command, never a second apply.
    while sessions.len()? > context.limits.sessions_max {
        let Some((oldest, _)) = by_use.pop_first()? else {
            break;
        };
        let oldest = oldest.value();
        sessions.remove(&oldest[8..])?;
    }
    Ok(response)
}

fn session_key(caller: &str, client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(caller.len() + 1 + client_id.len());
    key.extend_from_slice(caller.as_bytes());
    key.push(0);
    key.extend_from_slice(client_id.as_bytes());
    key
}

fn use_key(index: u64, session: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + session.len());
    key.extend_from_slice(&index.to_be_bytes());
    key.extend_from_slice(session);
    key
}

fn apply_invoke(
    txn: &WriteTransaction,
    context: &ApplyContext<'_>,
    place: Place<'_>,
    request: &Origin<'_>,
    invoke: &Invoke,
) -> Result<Response, redb::Error> {
    let Some(record) = read_module(txn, &invoke.module)? else {
        return Ok(Response::Refused(Refusal::ModuleNotFound(
            invoke.module.clone(),
        )));
    };
    let module = load(txn, context.runtime, &record)?;
    let (fuel, memory_bytes) = context.limits.for_module(&record.limits);
    let call = Call {
        entry: EntryPoint::Apply,
        input: &invoke.input,
        caller: request.caller,
        timestamp_ms: request.timestamp_ms,
        seed: place.seed(),
        fuel,
        memory_bytes,
    };
    let (result, report) = run(txn, context.runtime, &module, &invoke.module, &call)?;
    commit_writes(txn, &invoke.module, report)?;
    Ok(Response::Invoked(result))
}

/// The compiled module of `record`, from the runtime's caches or compiled from
/// its stored blob.
pub(crate) fn load(
    txn: &WriteTransaction,
    runtime: &Runtime,
    record: &ModuleRecord,
) -> Result<LoadedModule, redb::Error> {
    if let Some(module) = runtime.cached(&record.hash) {
        return Ok(module);
    }
    let blobs = txn.open_table(BLOBS)?;
    let blob = blobs.get(record.hash.as_slice())?.ok_or_else(|| {
        redb::Error::Corrupted(format!("module `{}` has no stored wasm", record.name))
    })?;
    // The module was validated and compiled when it was deployed, by this same
    // engine configuration: failing now means the node itself is broken.
    runtime.load(&record.hash, blob.value()).map_err(|e| {
        redb::Error::Corrupted(format!(
            "deployed module `{}` failed to load: {e}",
            record.name
        ))
    })
}

/// Runs one guest call against the module's KV as of this transaction.
fn run(
    txn: &WriteTransaction,
    runtime: &Runtime,
    module: &LoadedModule,
    name: &str,
    call: &Call<'_>,
) -> Result<(CallResult, CallReport), redb::Error> {
    let table = txn.open_table(KV)?;
    let source = TableKv {
        table: &table,
        module: name,
    };
    let mut report = runtime.call(module, call, &source);
    // `Unavailable` is this node failing to instantiate (memory, mappings),
    // never a property of the command: apply has instance slots of its own,
    // so it is not queries holding them. Retry for a while rather than
    // record a result other replicas would not, then stop the node.
    let mut attempts = 0;
    while let Outcome::Unavailable(reason) = &report.outcome {
        attempts += 1;
        if attempts > UNAVAILABLE_RETRIES {
            return Err(redb::Error::Corrupted(format!(
                "cannot run guest calls: {reason}"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        report = runtime.call(module, call, &source);
    }
    let result = call_result(&report, call)?;
    tracing::debug!(
        module = name,
        fuel_used = result.fuel_used,
        outcome = result.outcome.label(),
        "guest call"
    );
    Ok((result, report))
}

/// The replicated form of a call's outcome. A failed KV read is not a guest
/// outcome: it is the node's storage failing.
pub(crate) fn call_result(report: &CallReport, call: &Call<'_>) -> Result<CallResult, redb::Error> {
    let outcome = match &report.outcome {
        Outcome::Ok(output) => CallOutcome::Ok(output.clone()),
        Outcome::GuestError(message) => CallOutcome::GuestError(message.clone()),
        Outcome::OutOfFuel => CallOutcome::OutOfFuel { limit: call.fuel },
        Outcome::MemoryLimit => CallOutcome::MemoryLimit {
            limit_bytes: call.memory_bytes,
        },
        Outcome::Trap { kind, message } => CallOutcome::Trap {
            kind: kind.to_string(),
            message: message.clone(),
        },
        Outcome::OutputTooLarge { limit } => CallOutcome::OutputTooLarge {
            limit_bytes: *limit as u64,
        },
        Outcome::TimedOut => CallOutcome::TimedOut,
        Outcome::MissingExport(export) => CallOutcome::MissingExport((*export).to_owned()),
        Outcome::Host(error) => {
            return Err(redb::Error::Corrupted(format!(
                "module KV read failed: {error}"
            )));
        }
        Outcome::Unavailable(reason) => {
            return Err(redb::Error::Corrupted(format!(
                "cannot run guest calls: {reason}"
            )));
        }
    };
    Ok(CallResult {
        outcome,
        fuel_used: report.fuel_used,
    })
}

fn commit_writes(
    txn: &WriteTransaction,
    name: &str,
    report: CallReport,
) -> Result<(), redb::Error> {
    if !matches!(report.outcome, Outcome::Ok(_)) {
        return Ok(());
    }
    let mut table = txn.open_table(KV)?;
    for (key, value) in report.writes.iter() {
        let key = module_key(name, key);
        match value {
            Some(value) => table.insert(key.as_slice(), value)?,
            None => table.remove(key.as_slice())?,
        };
    }
    Ok(())
}

fn apply_access(txn: &WriteTransaction, change: &AccessChange) -> Result<Response, redb::Error> {
    let mut table = txn.open_table(ACCESS)?;
    let changed = match change {
        AccessChange::Grant(rule) => table
            .insert(codec::encode(rule).as_slice(), [].as_slice())?
            .is_none(),
        AccessChange::Revoke(rule) => table.remove(codec::encode(rule).as_slice())?.is_some(),
    };
    Ok(Response::AccessChanged { changed })
}

/// A one-line description of a failed call, for refusals.
pub(crate) fn describe(outcome: &CallOutcome) -> String {
    match outcome {
        CallOutcome::Ok(_) => "ok".to_owned(),
        CallOutcome::GuestError(message) => format!("guest error: {message}"),
        CallOutcome::OutOfFuel { limit } => format!("out of fuel (limit {limit})"),
        CallOutcome::MemoryLimit { limit_bytes } => {
            format!("memory limit of {limit_bytes} bytes reached")
        }
        CallOutcome::Trap { kind, message } => format!("trap ({kind}): {message}"),
        CallOutcome::OutputTooLarge { limit_bytes } => {
            format!("output larger than {limit_bytes} bytes")
        }
        CallOutcome::MissingExport(export) => format!("the module has no `{export}` export"),
        CallOutcome::TimedOut => "timed out".to_owned(),
    }
}

impl CallOutcome {
    /// A stable short label, for traces and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CallOutcome::Ok(_) => "ok",
            CallOutcome::GuestError(_) => "guest_error",
            CallOutcome::OutOfFuel { .. } => "out_of_fuel",
            CallOutcome::MemoryLimit { .. } => "memory_limit",
            CallOutcome::Trap { .. } => "trap",
            CallOutcome::OutputTooLarge { .. } => "output_too_large",
            CallOutcome::MissingExport(_) => "missing_export",
            CallOutcome::TimedOut => "timed_out",
        }
    }
}

/// A module's KV as the runtime sees it: one module's key range of a table.
pub(crate) struct TableKv<'t, T: ReadableTable<&'static [u8], &'static [u8]>> {
    pub table: &'t T,
    pub module: &'t str,
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> KvSource for TableKv<'_, T> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let key = module_key(self.module, key);
        let value = self
            .table
            .get(key.as_slice())
            .map_err(|e| KvError::new(e.to_string()))?;
        Ok(value.map(|value| value.value().to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        let range = module_key_range(self.module, start, end);
        if range.end <= range.start {
            return Ok(Vec::new());
        }
        let prefix = self.module.len() + 1;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        for item in self
            .table
            .range(range.start.as_slice()..range.end.as_slice())
            .map_err(|e| KvError::new(e.to_string()))?
            .take(limit)
        {
            if bytes >= bytes_max {
                break;
            }
            let (key, value) = item.map_err(|e| KvError::new(e.to_string()))?;
            let key = key.value().get(prefix..).ok_or_else(|| {
                KvError::new("a key of the module's range lacks the module prefix")
            })?;
            bytes += key.len() + value.value().len();
            items.push((key.to_vec(), value.value().to_vec()));
        }
        Ok(items)
    }
}
