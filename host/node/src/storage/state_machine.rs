//! The replicated state machine on redb: applies committed entries in batches,
//! builds snapshots by streaming a consistent read of the state database into
//! a file, and installs received snapshots by building a new database file and
//! swapping it in atomically.
//!
//! Files in the state directory:
//! - `state.redb` — the state database;
//! - `snapshot.bin` — the current snapshot (its metadata is its first record);
//! - `*.partial` — work in progress, deleted at open (a crash left it behind).

// openraft's `StorageError` is the error type of the storage traits; its
// size is openraft's choice, and these helpers return it as the traits do.
#![allow(clippy::result_large_err)]

use std::fs;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{ErrorSubject, ErrorVerb};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::access;
use super::apply::{self, ApplyContext, Clock, TableKv};
use super::format::{
    self, FormatVersion, RELEASE, STATE_FORMAT, STATE_FORMAT_OLDEST, UnknownFormat,
};
use super::snapshot::{SnapshotError, SnapshotFileReader, SnapshotFileWriter};
use super::state::{
    self, FORMAT, LAST_APPLIED, LAST_TIMESTAMP, MEMBERSHIP, META, ModuleRecord, ModuleUsage,
    StateDigest, TABLES, WRITTEN_BY,
};
use super::{storage_error, store_error};
use crate::auth::AccessCache;
use crate::command::settings::module_limits;
use crate::command::{CallResult, Command, Response, SettingsRecord, codec};
use crate::raft::{
    Entry, EntryPayload, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::telemetry::metrics::Metrics;
use crate::wasm::{Call, EntryPoint, Outcome, Runtime};

/// Whether applying `command` may change the access state.
fn changes_access(command: &Command) -> bool {
    match command.unwrapped() {
        Command::Access(_) => true,
        Command::Batch(requests) => requests
            .iter()
            .any(|request| changes_access(&request.command)),
        _ => false,
    }
}

const STATE_FILE: &str = "state.redb";
const SNAPSHOT_FILE: &str = "snapshot.bin";
const PARTIAL_SUFFIX: &str = ".partial";
/// The snapshot record holding the snapshot's own metadata (never a table id).
const SNAPSHOT_META_RECORD: u8 = 0xfe;
/// While installing a snapshot, commit the new database every this many bytes
/// so a large state never sits whole in a transaction's memory.
const INSTALL_COMMIT_BYTES: usize = 32 * 1024 * 1024;

/// The state machine. Cloning is cheap: clones share everything.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

struct Shared {
    directory: PathBuf,
    /// The live state database. Replaced, never mutated in place, when a
    /// snapshot is installed; readers keep the database they started with.
    db: RwLock<Arc<Database>>,
    runtime: Runtime,
    /// Serialises snapshot builds and installs: each replaces `snapshot.bin`.
    snapshot_lock: Mutex<()>,
    /// Distinguishes snapshots built at the same log id.
    snapshot_counter: AtomicU64,
    /// The digest of the state at one applied log id: every member's status
    /// asks for it, and hashing the whole state each time costs as much as
    /// the state is large. One log id is one state (Raft), so it keys it.
    digest_cache: Mutex<Option<(LogId, StateDigest)>>,
    /// The access state as last applied, for the edge: replaced after each
    /// commit that changed it and after each snapshot installed.
    access: AccessCache,
    /// The node's instruments, once it gave them (guest calls, compiles,
    /// snapshots).
    metrics: std::sync::OnceLock<Metrics>,
    /// When apply last committed durably, and the entries it applied since:
    /// what a crash would make Raft apply again, and what redb holds in
    /// memory until the next durable commit.
    undurable: Mutex<(std::time::Instant, u64)>,
}

/// Apply commits durably once this long has passed since its last durable
/// commit, or after this many entries: a bound on the memory its
/// non-durable commits hold and on what a restart applies again, paid by one
/// batch in many rather than by every write.
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
const DURABLE_EVERY_ENTRIES: u64 = 4096;

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("directory", &self.shared.directory)
            .finish_non_exhaustive()
    }
}

/// The cluster id recorded in the state under `data_dir`, if it holds
/// one: read before the node starts, for the telemetry's resource. Any
/// failure reads as none; the node's own start reports it.
pub fn recorded_cluster_id(data_dir: &std::path::Path) -> Option<String> {
    let path = super::DataDirectory::new(data_dir)
        .state_directory()
        .join(STATE_FILE);
    if !path.exists() {
        return None;
    }
    let db = Database::open(&path).ok()?;
    let txn = db.begin_read().ok()?;
    apply::read_cluster_id(&txn.open_table(state::SETTINGS).ok()?).ok()?
}

/// Errors of opening the state.
#[derive(Debug, thiserror::Error)]
pub enum OpenStateError {
    #[error("cannot prepare the state directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the state database: {0}")]
    Database(#[from] redb::Error),
    #[error(transparent)]
    Format(#[from] UnknownFormat),
}

impl StateMachineStore {
    /// Opens (or creates) the state in `directory`.
    pub fn open(directory: impl AsRef<Path>, runtime: Runtime) -> Result<Self, OpenStateError> {
        let directory = directory.as_ref().to_path_buf();
        let directory_error = |source| OpenStateError::Directory {
            path: directory.clone(),
            source,
        };
        fs::create_dir_all(&directory).map_err(directory_error)?;
        for entry in fs::read_dir(&directory).map_err(directory_error)? {
            let path = entry.map_err(directory_error)?.path();
            if path.to_string_lossy().ends_with(PARTIAL_SUFFIX) {
                fs::remove_file(&path).map_err(directory_error)?;
            }
        }
        let db = Database::create(directory.join(STATE_FILE)).map_err(redb::Error::from)?;
        initialise_tables(&db)?;
        let found = read_format(&db.begin_read().map_err(redb::Error::from)?)?;
        if let Some(from) = format::check(
            format::Database::State,
            found,
            STATE_FORMAT,
            STATE_FORMAT_OLDEST,
        )? {
            migrate(&db, from)?;
        }
        record_writer(&db)?;
        let access = AccessCache::default();
        access.replace(access::load(&db.begin_read().map_err(redb::Error::from)?)?);
        Ok(Self {
            shared: Arc::new(Shared {
                directory,
                db: RwLock::new(Arc::new(db)),
                runtime,
                snapshot_lock: Mutex::new(()),
                snapshot_counter: AtomicU64::new(0),
                digest_cache: Mutex::new(None),
                access,
                metrics: std::sync::OnceLock::new(),
                undurable: Mutex::new((std::time::Instant::now(), 0)),
            }),
        })
    }

    /// Reports guest calls, compiles and snapshots to `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        let _ = self.shared.metrics.set(metrics);
        self
    }

    fn metrics(&self) -> Option<&Metrics> {
        self.shared.metrics.get()
    }

    /// The state database's format version and the release that wrote it.
    pub fn format(&self) -> Result<FormatVersion, redb::Error> {
        read_format(&self.db().begin_read()?)
    }

    fn db(&self) -> Arc<Database> {
        self.shared
            .db
            .read()
            .expect("state database lock poisoned")
            .clone()
    }

    /// The access state in force on this node, as the edge reads it.
    pub fn access(&self) -> AccessCache {
        self.shared.access.clone()
    }

    /// Reads the access state of `db` again into the cache.
    fn reload_access(&self, db: &Database) -> Result<(), redb::Error> {
        let view = access::load(&db.begin_read()?)?;
        self.shared.access.replace(view);
        Ok(())
    }

    /// A read-only view for queries and status, consistent per call.
    pub fn reader(&self) -> StateReader {
        StateReader {
            store: self.clone(),
        }
    }

    fn snapshot_path(&self) -> PathBuf {
        self.shared.directory.join(SNAPSHOT_FILE)
    }

    fn partial_path(&self, name: &str) -> PathBuf {
        self.shared
            .directory
            .join(format!("{name}{PARTIAL_SUFFIX}"))
    }

    fn build_snapshot_blocking(&self) -> Result<(SnapshotMeta, fs::File), StorageError> {
        let _guard = self
            .shared
            .snapshot_lock
            .lock()
            .expect("snapshot lock poisoned");
        let write_error = |e: &dyn std::fmt::Display| {
            store_error(
                ErrorVerb::Write,
                std::io::Error::other(format!("building a snapshot: {e}")),
            )
        };
        let db = self.db();
        let txn = db.begin_read().map_err(|e| write_error(&e))?;
        let (last_applied, membership) = read_applied(&txn).map_err(|e| write_error(&e))?;
        // The log is purged up to the snapshot once it is built: the state
        // it holds must survive a crash by then. Made durable after the read
        // began, so the durable state reaches at least what the snapshot
        // holds, even when apply commits in between.
        make_durable(&db).map_err(|e| write_error(&e))?;
        let counter = self.shared.snapshot_counter.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &last_applied {
            Some(log_id) => format!(
                "{}-{}-{}-{counter}",
                log_id.leader_id.term, log_id.leader_id.node_id, log_id.index
            ),
            None => format!("empty-{counter}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let partial = self.partial_path(SNAPSHOT_FILE);
        let file = fs::File::create(&partial).map_err(|e| write_error(&e))?;
        let result = (|| -> Result<fs::File, SnapshotFileError> {
            let mut writer = SnapshotFileWriter::new(file)?;
            writer.record(SNAPSHOT_META_RECORD, b"meta", &codec::encode(&meta))?;
            for (id, table) in TABLES {
                let table = txn.open_table(table)?;
                for item in table.iter()? {
                    let (key, value) = item?;
                    writer.record(id, key.value(), value.value())?;
                }
            }
            let (file, _records) = writer.finish()?;
            file.sync_all()?;
            Ok(file)
        })();
        if let Err(error) = result {
            let _ = fs::remove_file(&partial);
            return Err(write_error(&error));
        }
        publish(&partial, &self.snapshot_path()).map_err(|e| write_error(&e))?;
        // Opened under the lock: the file is the one just built.
        let file = fs::File::open(self.snapshot_path()).map_err(|e| write_error(&e))?;
        Ok((meta, file))
    }

    fn install_snapshot_blocking(
        &self,
        meta: &SnapshotMeta,
        mut file: fs::File,
    ) -> Result<(), StorageError> {
        let _guard = self
            .shared
            .snapshot_lock
            .lock()
            .expect("snapshot lock poisoned");
        let signature = Some(meta.signature());
        let install_error = |e: &dyn std::fmt::Display| {
            storage_error(
                ErrorSubject::Snapshot(signature.clone()),
                ErrorVerb::Write,
                std::io::Error::other(format!("installing a snapshot: {e}")),
            )
        };
        let state_partial = self.partial_path(STATE_FILE);
        let snapshot_partial = self.partial_path(SNAPSHOT_FILE);
        let _ = fs::remove_file(&state_partial);
        let result = (|| -> Result<Database, SnapshotFileError> {
            file.seek(SeekFrom::Start(0))?;
            let mut reader = SnapshotFileReader::new(file)?;
            // The received stream is copied as it is read, so that this node
            // can serve the same snapshot to others once it is installed.
            let mut copy = SnapshotFileWriter::new(fs::File::create(&snapshot_partial)?)?;
            let db = Database::create(&state_partial)?;
            // Every table exists in a live state, empty or not.
            initialise_tables(&db)?;
            let mut pending_bytes = 0usize;
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::None)?;
            let mut saw_meta = false;
            let mut found_format = None;
            let mut found_writer = None;
            while let Some(record) = reader.next_record()? {
                copy.record(record.table, &record.key, &record.value)?;
                if record.table == SNAPSHOT_META_RECORD {
                    let found: SnapshotMeta = codec::decode(&record.value)?;
                    if found.last_log_id != meta.last_log_id {
                        return Err(SnapshotFileError::Invalid(format!(
                            "snapshot file is of log id {:?}, not the announced {:?}",
                            found.last_log_id, meta.last_log_id
                        )));
                    }
                    saw_meta = true;
                    continue;
                }
                if record.table == 0 && record.key == FORMAT {
                    found_format = Some(codec::decode::<u32>(&record.value)?);
                } else if record.table == 0 && record.key == WRITTEN_BY {
                    found_writer = Some(codec::decode::<String>(&record.value)?);
                }
                let Some((_, table)) = TABLES.iter().find(|(id, _)| *id == record.table) else {
                    return Err(SnapshotError::Io(std::io::Error::other(format!(
                        "unknown table id {} in snapshot",
                        record.table
                    )))
                    .into());
                };
                txn.open_table(*table)?
                    .insert(record.key.as_slice(), record.value.as_slice())?;
                pending_bytes += record.key.len() + record.value.len();
                if pending_bytes >= INSTALL_COMMIT_BYTES {
                    txn.commit()?;
                    txn = db.begin_write()?;
                    txn.set_durability(Durability::None)?;
                    pending_bytes = 0;
                }
            }
            if !saw_meta {
                return Err(SnapshotFileError::Invalid(
                    "snapshot file has no metadata record".to_owned(),
                ));
            }
            // Checked before anything is swapped in: a snapshot of a format
            // this build does not know is refused, never installed.
            let Some(found_format) = found_format else {
                return Err(SnapshotFileError::Invalid(
                    "snapshot file has no state format record".to_owned(),
                ));
            };
            let found = FormatVersion {
                version: found_format,
                written_by: found_writer,
            };
            let migrate_from = format::check(
                format::Database::Snapshot,
                found,
                STATE_FORMAT,
                STATE_FORMAT_OLDEST,
            )?;
            if let Some(from) = migrate_from {
                migration_steps(&txn, from)?;
            }
            // The snapshot's own view of what was applied is authoritative.
            {
                let mut table = txn.open_table(META)?;
                table.insert(LAST_APPLIED, codec::encode(&meta.last_log_id).as_slice())?;
                table.insert(MEMBERSHIP, codec::encode(&meta.last_membership).as_slice())?;
                table.insert(FORMAT, codec::encode(&STATE_FORMAT).as_slice())?;
                table.insert(WRITTEN_BY, codec::encode(RELEASE).as_slice())?;
            }
            txn.set_durability(Durability::Immediate)?;
            txn.commit()?;
            let (copy, _) = copy.finish()?;
            copy.sync_all()?;
            Ok(db)
        })();
        let db = match result {
            Ok(db) => db,
            Err(error) => {
                let _ = fs::remove_file(&state_partial);
                let _ = fs::remove_file(&snapshot_partial);
                return Err(install_error(&error));
            }
        };
        // The switch: after this rename a restart opens the new state. The
        // open `Database` follows the file, so it serves on at the new name.
        publish(&state_partial, &self.shared.directory.join(STATE_FILE))
            .map_err(|e| install_error(&e))?;
        *self
            .shared
            .db
            .write()
            .expect("state database lock poisoned") = Arc::new(db);
        publish(&snapshot_partial, &self.snapshot_path()).map_err(|e| install_error(&e))?;
        self.reload_access(&self.db())
            .map_err(|e| install_error(&e))?;
        Ok(())
    }

    /// The durability of the next apply commit, of `entries` entries.
    fn durability_for(&self, entries: usize) -> Durability {
        let mut undurable = self
            .shared
            .undurable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        undurable.1 += entries as u64;
        if undurable.0.elapsed() >= DURABLE_EVERY || undurable.1 >= DURABLE_EVERY_ENTRIES {
            *undurable = (std::time::Instant::now(), 0);
            Durability::Immediate
        } else {
            Durability::None
        }
    }

    fn apply_blocking(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        let db = self.db();
        let context = ApplyContext {
            runtime: &self.shared.runtime,
            metrics: self.metrics(),
        };
        let mut responses = Vec::new();
        let mut last_log_id = None;
        let mut access_changed = false;
        let result = (|| -> Result<(), apply::ApplyError> {
            let mut txn = db.begin_write()?;
            // Mostly not durable on its own: the log is (every entry
            // applied here was fsynced in it first), and it is never purged
            // past a durable state (`make_durable` before every snapshot).
            // After a crash the state reopens at its last durable commit and
            // Raft applies the entries after it again, to the same state.
            txn.set_durability(self.durability_for(entries.len()))?;
            let mut membership = None;
            let mut clock = Clock {
                last_timestamp_ms: match txn.open_table(META)?.get(LAST_TIMESTAMP)? {
                    Some(bytes) => apply::decode(bytes.value())?,
                    None => i64::MIN,
                },
            };
            let timestamp_before = clock.last_timestamp_ms;
            for entry in entries {
                if let Some(previous) = &last_log_id {
                    let previous: &LogId = previous;
                    assert_eq!(
                        previous.index + 1,
                        entry.log_id.index,
                        "apply batch is not contiguous"
                    );
                }
                let response = match &entry.payload {
                    EntryPayload::Blank => Response::Empty,
                    EntryPayload::Normal(request) => {
                        access_changed |= changes_access(&request.command);
                        apply::apply_request(&txn, &context, &mut clock, &entry.log_id, request)?
                    }
                    EntryPayload::Membership(change) => {
                        membership =
                            Some(StoredMembership::new(Some(entry.log_id), change.clone()));
                        Response::Empty
                    }
                };
                responses.push(response);
                last_log_id = Some(entry.log_id);
            }
            if last_log_id.is_some() {
                let mut meta = txn.open_table(META)?;
                meta.insert(LAST_APPLIED, codec::encode(&last_log_id).as_slice())?;
                if let Some(membership) = membership {
                    meta.insert(MEMBERSHIP, codec::encode(&membership).as_slice())?;
                }
                if clock.last_timestamp_ms != timestamp_before {
                    let timestamp_ms = clock.last_timestamp_ms;
                    meta.insert(LAST_TIMESTAMP, codec::encode(&timestamp_ms).as_slice())?;
                }
            }
            txn.commit()?;
            if access_changed {
                self.reload_access(&db)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(responses),
            Err(error) => Err(match last_log_id {
                Some(log_id) => storage_error(ErrorSubject::Apply(log_id), ErrorVerb::Write, error),
                None => storage_error(ErrorSubject::StateMachine, ErrorVerb::Write, error),
            }),
        }
    }

    fn current_snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        let read_error = |e: &dyn std::fmt::Display| {
            store_error(
                ErrorVerb::Read,
                std::io::Error::other(format!("reading the snapshot: {e}")),
            )
        };
        let file = match fs::File::open(self.snapshot_path()) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(&e)),
        };
        let mut reader = SnapshotFileReader::new(file).map_err(|e| read_error(&e))?;
        match reader.next_record().map_err(|e| read_error(&e))? {
            Some(record) if record.table == SNAPSHOT_META_RECORD => codec::decode(&record.value)
                .map(Some)
                .map_err(|e| read_error(&e)),
            _ => Err(read_error(
                &"the snapshot file does not start with its metadata",
            )),
        }
    }
}

/// Moves a finished file into place durably: fsync'd content, atomic rename,
/// fsync'd directory.
fn publish(partial: &Path, target: &Path) -> std::io::Result<()> {
    fs::rename(partial, target)?;
    if let Some(directory) = target.parent() {
        fs::File::open(directory)?.sync_all()?;
    }
    Ok(())
}

fn initialise_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    for (_, table) in TABLES {
        txn.open_table(table)?;
    }
    {
        let mut meta = txn.open_table(META)?;
        // A new database: this build's format.
        if meta.get(FORMAT)?.is_none() {
            meta.insert(FORMAT, codec::encode(&STATE_FORMAT).as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Makes every commit of `db` so far durable: apply commits without an
/// fsync of their own, and one durable commit persists those before it.
fn make_durable(db: &Database) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.commit()?;
    Ok(())
}

impl Drop for Shared {
    /// A node that stops cleanly leaves its state durable, so that its next
    /// start applies nothing again.
    fn drop(&mut self) {
        let db = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Err(error) = make_durable(&db) {
            tracing::warn!(%error, "the state could not be made durable at shutdown; the next start applies the log's last entries again");
        }
    }
}

/// Migrates a state database of format `from` to [`STATE_FORMAT`] in one
/// write transaction that also records the new format: a crash leaves the
/// old format, and the migration runs again at the next open.
fn migrate(db: &Database, from: u32) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    migration_steps(&txn, from)?;
    txn.open_table(META)?
        .insert(FORMAT, codec::encode(&STATE_FORMAT).as_slice())?;
    txn.commit()?;
    tracing::info!(from, to = STATE_FORMAT, "state migrated");
    Ok(())
}

/// Why building or installing a snapshot file failed, before it is told to
/// openraft as a storage error about the snapshot.
#[derive(Debug, thiserror::Error)]
enum SnapshotFileError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    File(#[from] SnapshotError),
    #[error(transparent)]
    Database(#[from] redb::Error),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    #[error(transparent)]
    Format(#[from] format::UnknownFormat),
    /// The file is well formed but not the snapshot it claims to be.
    #[error("{0}")]
    Invalid(String),
}

/// redb's errors of each operation, as the one `redb::Error`.
macro_rules! snapshot_file_error_from_redb {
    ($($error:ty),*) => {
        $(impl From<$error> for SnapshotFileError {
            fn from(error: $error) -> Self {
                Self::Database(error.into())
            }
        })*
    };
}

snapshot_file_error_from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The steps from format `from` up to this build's, in `txn`.
fn migration_steps(txn: &redb::WriteTransaction, from: u32) -> Result<(), redb::Error> {
    // Format 1 → 2: the new tables exist already (every open creates them);
    // the per-caller index and the byte count are built from the sessions.
    // Settings stay unrecorded: apply uses the defaults until
    // `cluster settings set` records some.
    if from <= 1 {
        super::sessions::index_format_1(txn)?;
    }
    // Format 2 → 3: every module's usage, counted from its keys. The
    // settings keep their positional record (and no quota is in force)
    // until a settings change records them by name.
    if from <= 2 {
        apply::rebuild_usage(txn)?;
    }
    Ok(())
}

fn read_format(txn: &redb::ReadTransaction) -> Result<FormatVersion, redb::Error> {
    let table = txn.open_table(META)?;
    let version = table
        .get(FORMAT)?
        .ok_or_else(|| redb::Error::Corrupted("no format record".into()))?;
    let written_by = match table.get(WRITTEN_BY)? {
        Some(bytes) => Some(apply::decode(bytes.value())?),
        None => None,
    };
    Ok(FormatVersion {
        version: apply::decode(version.value())?,
        written_by,
    })
}

/// Records this build as the state's writer, once it accepted the format.
fn record_writer(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let current = meta.get(WRITTEN_BY)?.map(|bytes| bytes.value().to_vec());
        let ours = codec::encode(RELEASE);
        if current.as_deref() == Some(ours.as_slice()) {
            return Ok(());
        }
        meta.insert(WRITTEN_BY, ours.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

fn read_settings(txn: &redb::ReadTransaction) -> Result<Option<SettingsRecord>, redb::Error> {
    apply::read_settings(&txn.open_table(state::SETTINGS)?)
}

fn read_applied(
    txn: &redb::ReadTransaction,
) -> Result<(Option<LogId>, StoredMembership), redb::Error> {
    let table = txn.open_table(META)?;
    let last_applied = match table.get(LAST_APPLIED)? {
        Some(bytes) => apply::decode(bytes.value())?,
        None => None,
    };
    let membership = match table.get(MEMBERSHIP)? {
        Some(bytes) => apply::decode(bytes.value())?,
        None => StoredMembership::default(),
    };
    Ok((last_applied, membership))
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let db = self.db();
        let result = (|| {
            let txn = db.begin_read()?;
            read_applied(&txn)
        })();
        result.map_err(|e| storage_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Guest calls and the fsync of the commit are blocking work: they run
        // on tokio's blocking pool, so heartbeats and RPCs on the async
        // threads never wait behind a module being compiled or a slow disk.
        let entries: Vec<Entry> = entries.into_iter().collect();
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.apply_blocking(entries)).await {
            Ok(result) => result,
            // A panic of the host while applying is a bug; stop Raft with it
            // (a fatal storage error) instead of unwinding through openraft.
            Err(error) => Err(store_error(
                ErrorVerb::Write,
                std::io::Error::other(format!("applying entries failed: {error}")),
            )),
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // An unnamed file: it disappears on its own if the transfer is
        // abandoned or the node crashes.
        let file = tempfile::tempfile_in(&self.shared.directory)
            .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let file = snapshot.into_std().await;
        let store = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || store.install_snapshot_blocking(&meta, file))
            .await
            .expect("snapshot installation panicked")
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let (meta, file) = {
            let _guard = self
                .shared
                .snapshot_lock
                .lock()
                .expect("snapshot lock poisoned");
            let Some(meta) = self.current_snapshot_meta()? else {
                return Ok(None);
            };
            // Opened under the lock, so the file is the one the metadata
            // describes; a later snapshot renames a new file over the name
            // but this handle keeps reading the old one.
            let file = fs::File::open(self.snapshot_path()).map_err(|e| {
                storage_error(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Read,
                    e,
                )
            })?;
            (meta, file)
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let store = self.clone();
        let started = std::time::Instant::now();
        let (meta, file) = tokio::task::spawn_blocking(move || store.build_snapshot_blocking())
            .await
            .expect("snapshot building panicked")?;
        if let Some(metrics) = self.metrics() {
            let bytes = file.metadata().map_or(0, |metadata| metadata.len());
            metrics.snapshot(bytes, started.elapsed());
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

/// A query's result and the applied index of the state it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryAnswer {
    pub applied_index: Option<u64>,
    pub result: CallResult,
}

/// Why a query could not run.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Storage(#[from] redb::Error),
    /// No instance was free to run it: retryable, nothing is wrong.
    #[error("the node is too busy to run the query now: {0}")]
    Busy(String),
    /// This node failed where the others would not (a module it cannot compile).
    #[error(transparent)]
    Host(#[from] apply::HostFailure),
}

impl From<apply::ApplyError> for QueryError {
    fn from(error: apply::ApplyError) -> Self {
        match error {
            apply::ApplyError::Storage(error) => QueryError::Storage(error),
            apply::ApplyError::Host(failure) => QueryError::Host(failure),
        }
    }
}

// redb reports each step with its own error type; all are storage failures.
macro_rules! query_storage_error {
    ($($error:ty),*) => {$(
        impl From<$error> for QueryError {
            fn from(error: $error) -> Self {
                QueryError::Storage(error.into())
            }
        }
    )*};
}
query_storage_error!(redb::TransactionError, redb::TableError, redb::StorageError);

/// Read-only access to the state for queries and status. Each call sees one
/// consistent version of the state.
#[derive(Clone, Debug)]
pub struct StateReader {
    store: StateMachineStore,
}

impl StateReader {
    /// The last applied log id and the digest of the state at that point.
    /// Computed once per applied log id.
    pub fn digest(&self) -> Result<(Option<LogId>, StateDigest), redb::Error> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        let (applied, _) = read_applied(&txn)?;
        let cache = &self.store.shared.digest_cache;
        let cached = *cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(applied), Some((at, digest))) = (applied, cached)
            && applied == at
        {
            return Ok((Some(applied), digest));
        }
        let digest = state::digest(&txn)?;
        if let Some(applied) = applied {
            *cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((applied, digest));
        }
        Ok((applied, digest))
    }

    /// The cluster settings recorded in the state; `None` until the first
    /// settings command applied (the defaults are in force until then).
    pub fn settings(&self) -> Result<Option<SettingsRecord>, redb::Error> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        read_settings(&txn)
    }

    /// The cluster id recorded in the state, once the entry naming the
    /// cluster was applied here.
    pub fn cluster_id(&self) -> Result<Option<String>, redb::Error> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        apply::read_cluster_id(&txn.open_table(state::SETTINGS)?)
    }

    /// [`Self::settings`] with the applied index of the state read (0 for
    /// none).
    pub fn settings_at(&self) -> Result<(u64, Option<SettingsRecord>), redb::Error> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        let (applied, _) = read_applied(&txn)?;
        Ok((
            applied.map_or(0, |log_id| log_id.index),
            read_settings(&txn)?,
        ))
    }

    pub fn module(&self, name: &str) -> Result<Option<ModuleRecord>, redb::Error> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        let table = txn.open_table(state::MODULES)?;
        let record = table.get(name.as_bytes())?;
        record.map(|bytes| apply::decode(bytes.value())).transpose()
    }

    pub fn modules(&self) -> Result<Vec<ModuleRecord>, redb::Error> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        let table = txn.open_table(state::MODULES)?;
        let mut records = Vec::new();
        for item in table.iter()? {
            let (_, bytes) = item?;
            records.push(apply::decode(bytes.value())?);
        }
        Ok(records)
    }

    /// What module `name` stores (nothing for a module not deployed).
    pub fn usage(&self, name: &str) -> Result<ModuleUsage, redb::Error> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        apply::read_usage(&txn.open_table(state::USAGE)?, name)
    }

    /// Reads one key of a module's KV directly (for tests and tools).
    pub fn module_value(&self, module: &str, key: &[u8]) -> Result<Option<Vec<u8>>, redb::Error> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        let table = txn.open_table(state::KV)?;
        let value = table.get(state::module_key(module, key).as_slice())?;
        Ok(value.map(|value| value.value().to_vec()))
    }

    /// Runs a module's `query` export against the current state, read-only.
    /// `None` when the module is not deployed.
    pub fn query(
        &self,
        module: &str,
        input: &[u8],
        caller: &str,
    ) -> Result<Option<QueryAnswer>, QueryError> {
        let db = self.store.db();
        let txn = db.begin_read()?;
        let Some(record) = ({
            let table = txn.open_table(state::MODULES)?;
            let record = table.get(module.as_bytes())?;
            record
                .map(|bytes| apply::decode::<ModuleRecord>(bytes.value()))
                .transpose()?
        }) else {
            return Ok(None);
        };
        let (applied, _) = read_applied(&txn)?;
        let timestamp_ms = match txn.open_table(META)?.get(LAST_TIMESTAMP)? {
            Some(bytes) => apply::decode(bytes.value())?,
            None => 0,
        };
        let runtime = &self.store.shared.runtime;
        let metrics = self.store.metrics();
        let loaded = match runtime.cached(&record.hash) {
            Some(loaded) => {
                if let Some(metrics) = metrics {
                    metrics.module_lookup(None);
                }
                loaded
            }
            None => {
                let started = std::time::Instant::now();
                let blobs = txn.open_table(state::BLOBS)?;
                let blob = blobs.get(record.hash.as_slice())?.ok_or_else(|| {
                    redb::Error::Corrupted(format!("module `{module}` has no stored wasm"))
                })?;
                let loaded = runtime.load(&record.hash, blob.value()).map_err(|error| {
                    apply::HostFailure::Compile {
                        module: module.to_owned(),
                        reason: error.to_string(),
                    }
                })?;
                if let Some(metrics) = metrics {
                    metrics.module_lookup(Some(started.elapsed()));
                }
                loaded
            }
        };
        let settings = read_settings(&txn)?;
        let settings = apply::settings_in_force(settings.as_ref());
        let (fuel, memory_bytes) = module_limits(&settings, &record.limits);
        let table = txn.open_table(state::KV)?;
        let call = Call {
            entry: EntryPoint::Query,
            input,
            caller,
            timestamp_ms,
            seed: [0; 32],
            fuel,
            memory_bytes,
            output_bytes: apply::output_bytes(&settings),
        };
        let report = runtime.call(
            &loaded,
            &call,
            &TableKv {
                table: &table,
                module,
            },
        );
        if let Outcome::Unavailable(reason) = &report.outcome {
            return Err(QueryError::Busy(reason.clone()));
        }
        let result = apply::call_result(&report, &call)?;
        if let Some(metrics) = metrics {
            metrics.guest_call("query", result.outcome.label(), result.fuel_used);
        }
        Ok(Some(QueryAnswer {
            applied_index: applied.map(|log_id| log_id.index),
            result,
        }))
    }
}
