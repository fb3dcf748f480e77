//! Applying one replicated command to the state: each command kind has its
//! handler here. Handlers see the batch's open write transaction, so later
//! commands of a batch see the writes of earlier ones, and everything commits
//! together with `last_applied`.
//!
//! A handler returns the command's [`Response`] — refusals and guest failures
//! included, identical on every replica — or a [`redb::Error`], which is a
//! broken storage and stops the node.

use redb::{ReadableTable, WriteTransaction};
use sha2::{Digest, Sha256};

use super::access;
use super::sessions::{self, SessionRecord};
use super::settings::{self as recorded, Layout};
use super::state::{
    BLOBS, CLUSTER_ID, KV, MODULES, ModuleRecord, ModuleUsage, SETTINGS, USAGE, entry_bytes,
    module_key, module_key_range,
};
use crate::command::settings::module_limits;
use crate::command::{
    CallOutcome, CallResult, ClusterSettings, Command, Deploy, Deployed, Invoke, ModuleHash,
    Refusal, Request, Response, SessionId, SettingsCommand, SettingsRecord, StorageQuota, check,
    codec,
};
use crate::raft::LogId;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces;
use crate::wasm::{
    Call, CallReport, DeployLimits, EntryPoint, FINGERPRINT_PREFIX, KvError, KvSource,
    LoadedModule, Outcome, Runtime, fingerprint_matches,
};

/// How many times apply retries a call the node could not start (the host
/// failed to instantiate it), a millisecond apart, before giving up as a
/// node failure.
const UNAVAILABLE_RETRIES: u32 = 5_000;

/// Why apply stopped on this node. Never a property of the command (those
/// are responses, the same on every replica): the storage failed, or the
/// host could not do what every other replica does.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Storage(#[from] redb::Error),
    #[error(transparent)]
    Host(#[from] HostFailure),
}

/// A failure of this host where the other replicas succeed.
#[derive(Debug, thiserror::Error)]
pub enum HostFailure {
    #[error(
        "this node cannot compile module `{module}`, which passed validation: {reason}; \
         the node stops, and applies the entry again when restarted"
    )]
    Compile { module: String, reason: String },
    #[error(
        "the cluster runs wasm engine {cluster}, this node runs {ours}: fuel and traps \
         would differ between them; run this node with the release the rest of the \
         cluster runs"
    )]
    EngineMismatch { cluster: String, ours: String },
    #[error("this node cannot run guest calls: {0}")]
    CannotRun(String),
}

// redb reports each step with its own error type; all are storage failures.
macro_rules! apply_storage_error {
    ($($error:ty),*) => {$(
        impl From<$error> for ApplyError {
            fn from(error: $error) -> Self {
                ApplyError::Storage(error.into())
            }
        }
    )*};
}
apply_storage_error!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// What the commands of one entry read from the state before they run, read
/// once per entry: a command of a batch that changes it (a settings or an
/// access change) updates it for the commands after it.
pub(crate) struct EntryState {
    settings: Option<SettingsRecord>,
    /// The layout `settings` is recorded in (see [`recorded`]).
    layout: Option<Layout>,
    /// The policy revision in force (see [`access::recheck`]).
    access_revision: u64,
}

impl EntryState {
    fn read(txn: &WriteTransaction) -> Result<Self, redb::Error> {
        let table = txn.open_table(SETTINGS)?;
        let (settings, layout) = recorded::read(&table)?.unzip();
        Ok(Self {
            settings,
            layout,
            access_revision: access::revision(&table)?,
        })
    }
}

/// What a handler needs besides the transaction.
pub(crate) struct ApplyContext<'a> {
    pub runtime: &'a Runtime,
    /// Where guest calls and compiles are counted (not in tests of apply).
    pub metrics: Option<&'a Metrics>,
}

/// The settings in force for one command: the recorded ones, or
/// [`ClusterSettings::unrecorded`] while the cluster has none recorded (the
/// first entries of a new cluster, or a cluster whose state predates the
/// settings).
pub(crate) fn settings_in_force(
    record: Option<&SettingsRecord>,
) -> std::borrow::Cow<'_, ClusterSettings> {
    match record {
        Some(record) => std::borrow::Cow::Borrowed(&record.settings),
        None => std::borrow::Cow::Owned(ClusterSettings::unrecorded()),
    }
}

/// The cluster settings recorded in the state, if any.
pub(crate) fn read_settings<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
) -> Result<Option<SettingsRecord>, redb::Error> {
    Ok(recorded::read(table)?.map(|(record, _)| record))
}

/// The cluster id recorded in the state, if any.
pub(crate) fn read_cluster_id<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
) -> Result<Option<String>, redb::Error> {
    read_record(table, CLUSTER_ID)
}

/// The record under `key` of the `settings` table, if any.
fn read_record<R: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<R>, redb::Error> {
    table
        .get(key)?
        .map(|bytes| decode(bytes.value()))
        .transpose()
}

/// Records `cluster_id` unless the state names the cluster already, and
/// answers the id in force.
fn apply_cluster_id(txn: &WriteTransaction, cluster_id: &str) -> Result<Response, redb::Error> {
    let mut table = txn.open_table(SETTINGS)?;
    if let Some(recorded) = read_cluster_id(&table)? {
        return Ok(Response::ClusterId {
            cluster_id: recorded,
        });
    }
    table.insert(CLUSTER_ID, codec::encode(&cluster_id).as_slice())?;
    Ok(Response::ClusterId {
        cluster_id: cluster_id.to_owned(),
    })
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
) -> Result<Response, ApplyError> {
    let span = tracing::debug_span!("apply", index = log_id.index, kind = request.command.kind());
    let _entered = span.enter();
    let mut entry = EntryState::read(txn)?;
    let Command::Batch(requests) = &request.command else {
        return apply_one(
            txn,
            context,
            clock,
            &mut entry,
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
            &mut entry,
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
    entry: &mut EntryState,
    place: Place<'_>,
    request: &Request,
) -> Result<Response, ApplyError> {
    if let Err(reason) = check::request(request) {
        return Ok(Response::Refused(Refusal::InvalidCommand(reason)));
    }
    // A traced command's apply joins its caller's trace on every replica;
    // an untraced one costs no span.
    let span = match request.command.trace() {
        Some(trace) => {
            let span = tracing::info_span!(
                target: traces::TARGET,
                "apply",
                index = place.log_id.index,
                position = place.position,
                kind = request.command.kind(),
                outcome = tracing::field::Empty,
            );
            traces::set_remote_parent(&span, trace);
            span
        }
        None => tracing::Span::none(),
    };
    let _entered = span.enter();
    let response = apply_command(txn, context, clock, entry, place, request, &request.command)?;
    if !span.is_none() {
        span.record("outcome", response.label());
    }
    Ok(response)
}

/// Applies `command`, the command of `request` (or the one its
/// [`Command::Authorized`] envelope holds).
fn apply_command(
    txn: &WriteTransaction,
    context: &ApplyContext<'_>,
    clock: &mut Clock,
    entry: &mut EntryState,
    place: Place<'_>,
    request: &Request,
    command: &Command,
) -> Result<Response, ApplyError> {
    // Handlers see the clamped time only.
    let origin = &Origin {
        caller: &request.caller,
        timestamp_ms: clock.stamp(request.timestamp_ms),
    };
    // A copy (six numbers), so that a settings command may replace the record.
    let settings = settings_in_force(entry.settings.as_ref()).into_owned();
    let rules = &Rules {
        runtime: context.runtime,
        metrics: context.metrics,
        settings: &settings,
        legacy_sessions: entry.settings.is_none(),
    };
    match command {
        Command::Deploy(deploy) => apply_deploy(txn, rules, place, origin, deploy),
        Command::Remove { name } => Ok(apply_remove(txn, name)?),
        Command::Invoke(invoke) => apply_invoke_once(txn, rules, place, origin, invoke),
        Command::Access(change) => {
            let response = access::apply_change(txn, place.log_id.index, change)?;
            if let Response::AccessChanged { changed: true } = response {
                entry.access_revision = place.log_id.index;
            }
            Ok(response)
        }
        Command::Batch(_) => Ok(Response::Refused(Refusal::NestedBatch)),
        Command::OpenSession { client_id } => Ok(sessions::open(
            txn,
            rules.settings,
            place.log_id.index,
            origin.caller,
            &check::session_name(client_id, place.log_id.index, place.position),
        )?),
        Command::ClusterId { cluster_id } => Ok(apply_cluster_id(txn, cluster_id)?),
        Command::Traced(traced) => {
            apply_command(txn, context, clock, entry, place, request, &traced.command)
        }
        Command::Authorized(authorized) => {
            if let Some(refusal) =
                access::recheck(txn, entry.access_revision, &request.caller, authorized)?
            {
                return Ok(Response::Refused(refusal));
            }
            apply_command(
                txn,
                context,
                clock,
                entry,
                place,
                request,
                &authorized.command,
            )
        }
        Command::Settings(command) => {
            // Written as its release wrote it, unless the settings it meets
            // are of a later kind already.
            let layout = match entry.layout {
                None | Some(Layout::Positional) => Layout::Positional,
                Some(Layout::Named) => Layout::Named,
            };
            apply_settings(txn, context.runtime, place, entry, &command.into(), layout)
        }
        Command::ChangeSettings(command) => {
            apply_settings(txn, context.runtime, place, entry, command, Layout::Named)
        }
    }
}

/// What the handlers of one command apply it with.
struct Rules<'a> {
    runtime: &'a Runtime,
    metrics: Option<&'a Metrics>,
    settings: &'a ClusterSettings,
    /// The state has no settings record: a cluster that started before
    /// settings and opened sessions existed (state format 1), whose log may
    /// still hold commands of that time. Their sessions are applied by the
    /// rules they were written under, so that a replica replaying them
    /// (from an older snapshot) reaches the state the others reached: an
    /// unknown session's sequence 1 opens it, and the table keeps the
    /// 100,000 most recently used. Recording settings (`cluster settings
    /// set`) ends it; a cluster bootstrapped today records them first.
    legacy_sessions: bool,
}

/// The session table's bound under [`Rules::legacy_sessions`].
const LEGACY_SESSIONS_MAX: u64 = 100_000;

/// Applies a settings change, recording the settings in `layout`, and
/// updates `entry` for the commands after it.
fn apply_settings(
    txn: &WriteTransaction,
    runtime: &Runtime,
    place: Place<'_>,
    entry: &mut EntryState,
    command: &SettingsCommand,
    layout: Layout,
) -> Result<Response, ApplyError> {
    let current = entry.settings.clone();
    if command.initial
        && let Some(current) = current
    {
        return Ok(Response::Settings(current));
    }
    let base = settings_in_force(current.as_ref());
    let settings = match base.updated(&command.update) {
        Ok(settings) => settings,
        Err(error) => return Ok(Response::Refused(Refusal::InvalidSetting(error))),
    };
    // A fingerprint of an earlier release (made from that host's CPU, so
    // comparable with none) gives way to the proposer's.
    let engine_fingerprint = match current {
        Some(current) if current.engine_fingerprint.starts_with(FINGERPRINT_PREFIX) => {
            current.engine_fingerprint
        }
        Some(_) | None => command.engine_fingerprint.clone(),
    };
    // The record names the engine every member must run. A node whose own
    // engine differs would compute other fuel figures than its peers: it is
    // this node that cannot go on, not the command that is wrong.
    let ours = runtime.engine_fingerprint();
    if !fingerprint_matches(&engine_fingerprint, &ours) {
        return Err(HostFailure::EngineMismatch {
            cluster: engine_fingerprint,
            ours,
        }
        .into());
    }
    let record = SettingsRecord {
        settings,
        engine_fingerprint,
        changed_index: place.log_id.index,
    };
    recorded::write(txn, &record, layout)?;
    entry.settings = Some(record.clone());
    entry.layout = Some(layout);
    Ok(Response::Settings(record))
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
    context: &Rules<'_>,
    place: Place<'_>,
    request: &Origin<'_>,
    deploy: &Deploy,
) -> Result<Response, ApplyError> {
    let hash: ModuleHash = Sha256::digest(&deploy.wasm).into();
    if hash != deploy.hash {
        return Ok(Response::Refused(Refusal::HashMismatch));
    }
    // Only the deterministic checks may become a replicated refusal. The
    // module compiled on the node that proposed it; failing to compile or
    // instantiate it here is this node's failure (memory, the compiler), and
    // recording a refusal would make this replica differ from the others.
    let info = match context
        .runtime
        .check_within(&deploy.wasm, deploy_limits(context.settings))
    {
        Ok(info) => info,
        Err(error) => return Ok(Response::Refused(Refusal::InvalidModule(error.to_string()))),
    };
    let module =
        context
            .runtime
            .load(&hash, &deploy.wasm)
            .map_err(|error| HostFailure::Compile {
                module: deploy.name.clone(),
                reason: error.to_string(),
            })?;
    let previous = read_module(txn, &deploy.name)?;
    let (fuel, memory_bytes) = module_limits(context.settings, &deploy.limits);

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
                output_bytes: output_bytes(context.settings),
            };
            let (result, report) = run(txn, context.runtime, &module, &deploy.name, &call)?;
            if !result.outcome.is_ok() {
                return Ok(Response::Refused(Refusal::SetupFailed(describe(
                    &result.outcome,
                ))));
            }
            if let Some(refused) =
                commit_writes(txn, &deploy.name, &report, context.settings.storage_quota())?
            {
                return Ok(Response::Refused(Refusal::SetupFailed(describe(&refused))));
            }
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
    txn.open_table(USAGE)?.remove(name.as_bytes())?;
    release_blob(txn, &record.hash)?;
    Ok(Response::Removed {
        name: name.to_owned(),
    })
}

/// Exactly-once: a command of an open session is answered from the session
/// table when it was applied already.
fn apply_invoke_once(
    txn: &WriteTransaction,
    context: &Rules<'_>,
    place: Place<'_>,
    request: &Origin<'_>,
    invoke: &Invoke,
) -> Result<Response, ApplyError> {
    let Some(SessionId {
        client_id,
        sequence,
    }) = &invoke.session
    else {
        return apply_invoke(txn, context, place, request, invoke);
    };
    let expired = || {
        Ok(Response::Refused(Refusal::SessionExpired {
            client_id: client_id.clone(),
            sequence: *sequence,
        }))
    };
    // A session belongs to the subject that opened it: another caller using
    // the same client id does not see it.
    let session = match sessions::find(txn, request.caller, client_id)? {
        Some(session) => session,
        None if context.legacy_sessions && *sequence == 1 => {
            let unbounded = ClusterSettings {
                session_table_bytes_max: u64::MAX,
                sessions_per_caller_max: u64::MAX,
                ..context.settings.clone()
            };
            sessions::open(
                txn,
                &unbounded,
                place.log_id.index,
                request.caller,
                client_id,
            )?;
            sessions::evict_to_count(txn, LEGACY_SESSIONS_MAX, request.caller, client_id)?;
            sessions::find(txn, request.caller, client_id)?.ok_or_else(|| {
                redb::Error::Corrupted("a session just opened is not in the table".into())
            })?
        }
        // Never opened, or forgotten: the command may have been applied
        // before the session was forgotten, so it is refused, not applied.
        None => return expired(),
    };
    if session.record.sequence == *sequence {
        return Ok(session.record.response.clone());
    }
    if session.record.sequence > *sequence {
        return expired();
    }
    let response = apply_invoke(txn, context, place, request, invoke)?;
    sessions::record(
        txn,
        context.settings,
        session,
        SessionRecord {
            sequence: *sequence,
            last_used_index: place.log_id.index,
            response: response.clone(),
        },
    )?;
    Ok(response)
}

/// The static limits a deploy is checked against at apply.
pub fn deploy_limits(settings: &ClusterSettings) -> DeployLimits {
    DeployLimits {
        module_bytes_max: usize::try_from(settings.module_bytes_max).unwrap_or(usize::MAX),
        memory_bytes_max: settings.memory_bytes_max,
    }
}

/// The output cap of a call under `settings`.
pub(crate) fn output_bytes(settings: &ClusterSettings) -> usize {
    usize::try_from(settings.output_bytes_max).unwrap_or(usize::MAX)
}

fn apply_invoke(
    txn: &WriteTransaction,
    context: &Rules<'_>,
    place: Place<'_>,
    request: &Origin<'_>,
    invoke: &Invoke,
) -> Result<Response, ApplyError> {
    let Some(record) = read_module(txn, &invoke.module)? else {
        return Ok(Response::Refused(Refusal::ModuleNotFound(
            invoke.module.clone(),
        )));
    };
    let module = load(txn, context.runtime, context.metrics, &record)?;
    let (fuel, memory_bytes) = module_limits(context.settings, &record.limits);
    let call = Call {
        entry: EntryPoint::Apply,
        input: &invoke.input,
        caller: request.caller,
        timestamp_ms: request.timestamp_ms,
        seed: place.seed(),
        fuel,
        memory_bytes,
        output_bytes: output_bytes(context.settings),
    };
    let span = traces::trace_span!(
        "wasm_call",
        module = %invoke.module,
        entry_point = "apply",
        fuel_limit = fuel,
        fuel_used = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let (result, report) =
        span.in_scope(|| run(txn, context.runtime, &module, &invoke.module, &call))?;
    span.record("fuel_used", result.fuel_used);
    let mut result = result;
    if let Some(refused) = commit_writes(
        txn,
        &invoke.module,
        &report,
        context.settings.storage_quota(),
    )? {
        result.outcome = refused;
    }
    span.record("outcome", result.outcome.label());
    if let Some(metrics) = context.metrics {
        metrics.guest_call("apply", result.outcome.label(), result.fuel_used);
    }
    Ok(Response::Invoked(result))
}

/// The compiled module of `record`, from the runtime's caches or compiled from
/// its stored blob.
pub(crate) fn load(
    txn: &WriteTransaction,
    runtime: &Runtime,
    metrics: Option<&Metrics>,
    record: &ModuleRecord,
) -> Result<LoadedModule, ApplyError> {
    if let Some(module) = runtime.cached(&record.hash) {
        if let Some(metrics) = metrics {
            metrics.module_lookup(None);
        }
        return Ok(module);
    }
    let started = std::time::Instant::now();
    let blobs = txn.open_table(BLOBS)?;
    let blob = blobs.get(record.hash.as_slice())?.ok_or_else(|| {
        redb::Error::Corrupted(format!("module `{}` has no stored wasm", record.name))
    })?;
    // The module was validated and compiled when it was deployed, by this same
    // engine configuration: failing now means the node itself is broken.
    let module =
        runtime
            .load(&record.hash, blob.value())
            .map_err(|error| HostFailure::Compile {
                module: record.name.clone(),
                reason: error.to_string(),
            })?;
    if let Some(metrics) = metrics {
        metrics.module_lookup(Some(started.elapsed()));
    }
    Ok(module)
}

/// Runs one guest call against the module's KV as of this transaction.
fn run(
    txn: &WriteTransaction,
    runtime: &Runtime,
    module: &LoadedModule,
    name: &str,
    call: &Call<'_>,
) -> Result<(CallResult, CallReport), ApplyError> {
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
            return Err(HostFailure::CannotRun(reason.clone()).into());
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
pub(crate) fn call_result(report: &CallReport, call: &Call<'_>) -> Result<CallResult, ApplyError> {
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
            return Err(redb::Error::Corrupted(format!("module KV read failed: {error}")).into());
        }
        Outcome::Unavailable(reason) => {
            return Err(HostFailure::CannotRun(reason.clone()).into());
        }
    };
    Ok(CallResult {
        outcome,
        fuel_used: report.fuel_used,
    })
}

/// Commits the writes of a successful call and the module's usage with
/// them, unless they would take the module past `quota`: then nothing is
/// written and the outcome says why. A call that leaves its module smaller
/// (or no larger) always commits, so a module over a lowered quota can
/// still delete.
fn commit_writes(
    txn: &WriteTransaction,
    name: &str,
    report: &CallReport,
    quota: Option<StorageQuota>,
) -> Result<Option<CallOutcome>, redb::Error> {
    if !matches!(report.outcome, Outcome::Ok(_)) || report.writes.is_empty() {
        return Ok(None);
    }
    let mut table = txn.open_table(KV)?;
    let mut usage_table = txn.open_table(USAGE)?;
    let before = read_usage(&usage_table, name)?;
    // The usage after the writes, from what each written key held.
    let (mut bytes, mut keys) = (i128::from(before.bytes), i128::from(before.keys));
    for (key, value) in report.writes.iter() {
        let stored = module_key(name, key);
        if let Some(old) = table.get(stored.as_slice())? {
            bytes -= i128::from(entry_bytes(key, old.value()));
            keys -= 1;
        }
        if let Some(value) = value {
            bytes += i128::from(entry_bytes(key, value));
            keys += 1;
        }
    }
    let (Ok(bytes), Ok(keys)) = (u64::try_from(bytes), u64::try_from(keys)) else {
        return Err(redb::Error::Corrupted(format!(
            "the usage of module `{name}` went below zero: the usage table does not match its keys"
        )));
    };
    let after = ModuleUsage { bytes, keys };
    if let Some(quota) = quota {
        let grows = after.bytes > before.bytes || after.keys > before.keys;
        if grows && (after.bytes > quota.bytes_max || after.keys > quota.keys_max) {
            return Ok(Some(CallOutcome::StorageQuota {
                bytes: after.bytes,
                keys: after.keys,
                bytes_max: quota.bytes_max,
                keys_max: quota.keys_max,
            }));
        }
    }
    for (key, value) in report.writes.iter() {
        let key = module_key(name, key);
        match value {
            Some(value) => table.insert(key.as_slice(), value)?,
            None => table.remove(key.as_slice())?,
        };
    }
    if after != before {
        write_usage(&mut usage_table, name, after)?;
    }
    Ok(None)
}

/// What module `name` stores, as the usage table records it.
pub(crate) fn read_usage(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    name: &str,
) -> Result<ModuleUsage, redb::Error> {
    Ok(table
        .get(name.as_bytes())?
        .map(|bytes| decode(bytes.value()))
        .transpose()?
        .unwrap_or_default())
}

fn write_usage(
    table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    name: &str,
    usage: ModuleUsage,
) -> Result<(), redb::Error> {
    if usage == ModuleUsage::default() {
        table.remove(name.as_bytes())?;
    } else {
        table.insert(name.as_bytes(), codec::encode(&usage).as_slice())?;
    }
    Ok(())
}

/// Rebuilds every module's usage from its keys (state format 2 → 3).
pub(crate) fn rebuild_usage(txn: &WriteTransaction) -> Result<(), redb::Error> {
    let table = txn.open_table(KV)?;
    let mut usage_table = txn.open_table(USAGE)?;
    usage_table.retain(|_, _| false)?;
    let mut current: Option<(Vec<u8>, ModuleUsage)> = None;
    for item in table.iter()? {
        let (key, value) = item?;
        let key = key.value();
        let split = key.iter().position(|&byte| byte == 0).ok_or_else(|| {
            redb::Error::Corrupted("a module key without its module prefix".to_owned())
        })?;
        let (module, own_key) = (&key[..split], &key[split + 1..]);
        if current.as_ref().is_some_and(|(name, _)| name != module) {
            let (name, usage) = current.take().expect("checked just above");
            usage_table.insert(name.as_slice(), codec::encode(&usage).as_slice())?;
        }
        let (_, usage) = current.get_or_insert_with(|| (module.to_vec(), ModuleUsage::default()));
        usage.bytes += entry_bytes(own_key, value.value());
        usage.keys += 1;
    }
    if let Some((name, usage)) = current {
        usage_table.insert(name.as_slice(), codec::encode(&usage).as_slice())?;
    }
    Ok(())
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
        CallOutcome::StorageQuota {
            bytes,
            keys,
            bytes_max,
            keys_max,
        } => format!(
            "its writes would make the module hold {bytes} bytes in {keys} keys, past its \
             storage quota of {bytes_max} bytes and {keys_max} keys (cluster settings \
             module_storage_bytes_max, module_storage_keys_max); none was written"
        ),
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
