//! The Raft log on redb: entries, vote, committed log id and last purged log id
//! in one database file, written with durable commits, one per batch.

// openraft's `StorageError` is the error type of the storage traits; its
// size is openraft's choice, and these helpers return it as the traits do.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::format::{self, FormatVersion, LOG_FORMAT, RELEASE, UnknownFormat};
use super::{storage_error, store_error};
use crate::command::codec;
use crate::raft::{Entry, LogId, LogState, StorageError, TypeConfig, Vote};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces;

/// Log index → encoded entry.
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
/// Small named records: the vote, the committed and last purged log ids.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";
/// The log format ([`LOG_FORMAT`]); absent in logs of the first release.
const FORMAT: &str = "format";
/// The release that last opened the log for writing.
const WRITTEN_BY: &str = "written_by";

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenLogError {
    #[error(transparent)]
    Database(#[from] redb::Error),
    #[error(transparent)]
    Format(#[from] UnknownFormat),
}

/// The Raft log. Cloning is cheap and shares the database: the clone serves as
/// openraft's log reader for replication.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Where appends are timed, once the node gave its instruments.
    metrics: Option<Metrics>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens the log at `path`, creating the file and its tables if needed.
    /// A log of a format this build does not read is refused untouched.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenLogError> {
        let db = Database::create(path.as_ref()).map_err(redb::Error::from)?;
        let found = read_format(&db)?;
        format::check(format::Database::Log, found.clone(), LOG_FORMAT, LOG_FORMAT)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        {
            txn.open_table(ENTRIES).map_err(redb::Error::from)?;
            let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
            if found.version != LOG_FORMAT || found.written_by.as_deref() != Some(RELEASE) {
                meta.insert(FORMAT, codec::encode(&LOG_FORMAT).as_slice())
                    .map_err(redb::Error::from)?;
                meta.insert(WRITTEN_BY, codec::encode(RELEASE).as_slice())
                    .map_err(redb::Error::from)?;
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(Self {
            db: Arc::new(db),
            metrics: None,
        })
    }

    /// Times every append into `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    /// The log's format version and the release that wrote it.
    pub fn format(&self) -> Result<FormatVersion, redb::Error> {
        read_format(&self.db)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let read = |verb| move |e: redb::Error| store_error(verb, e);
        let txn = self
            .db
            .begin_read()
            .map_err(|e| read(ErrorVerb::Read)(e.into()))?;
        let table = txn
            .open_table(META)
            .map_err(|e| read(ErrorVerb::Read)(e.into()))?;
        let Some(bytes) = table
            .get(key)
            .map_err(|e| read(ErrorVerb::Read)(e.into()))?
        else {
            return Ok(None);
        };
        codec::decode(bytes.value())
            .map(Some)
            .map_err(|e| store_error(ErrorVerb::Read, e))
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: Durability,
        subject: ErrorSubject<u64>,
    ) -> Result<(), StorageError> {
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(durability)
                .expect("no persistent savepoint is ever taken on the log");
            txn.open_table(META)?
                .insert(key, codec::encode(value).as_slice())?;
            txn.commit()?;
            Ok(())
        })();
        result.map_err(|e| storage_error(subject, ErrorVerb::Write, e))
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ENTRIES)?;
        let Some((_, bytes)) = table.last()? else {
            return Ok(None);
        };
        let entry: Entry = decode_entry(bytes.value())?;
        Ok(Some(entry.log_id))
    }
}

/// The format of the log in `db`: a new or first-release log has no record
/// and is format 1.
fn read_format(db: &Database) -> Result<FormatVersion, redb::Error> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(META) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok(FormatVersion {
                version: 1,
                written_by: None,
            });
        }
        Err(error) => return Err(error.into()),
    };
    let version = match table.get(FORMAT)? {
        Some(bytes) => decode_meta(bytes.value())?,
        None => 1,
    };
    let written_by = match table.get(WRITTEN_BY)? {
        Some(bytes) => Some(decode_meta(bytes.value())?),
        None => None,
    };
    Ok(FormatVersion {
        version,
        written_by,
    })
}

fn decode_meta<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, redb::Error> {
    codec::decode(bytes).map_err(|e| redb::Error::Corrupted(format!("undecodable log record: {e}")))
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, redb::Error> {
    codec::decode(bytes).map_err(|e| redb::Error::Corrupted(format!("undecodable log entry: {e}")))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let result = (|| -> Result<Vec<Entry>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(ENTRIES)?;
            let mut entries = Vec::new();
            for item in table.range(range.clone())? {
                let (index, bytes) = item?;
                let entry = decode_entry(bytes.value())?;
                // The key and the entry must agree, and a read is contiguous:
                // a gap means the log file is not what we wrote.
                assert_eq!(
                    entry.log_id.index,
                    index.value(),
                    "log key disagrees with its entry"
                );
                if let Some(previous) = entries.last() {
                    let previous: &Entry = previous;
                    assert_eq!(
                        previous.log_id.index + 1,
                        entry.log_id.index,
                        "gap in the log"
                    );
                }
                entries.push(entry);
            }
            Ok(entries)
        })();
        result.map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(LAST_PURGED)?;
        let last_entry = self
            .last_entry_log_id()
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_entry.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote, Durability::Immediate, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // openraft allows the committed id to be lost: it is a hint that lets a
        // restarted node apply sooner. The next durable commit persists it.
        self.write_meta(COMMITTED, &committed, Durability::None, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let span = append_span(&entries);
        let db = self.db.clone();
        let metrics = self.metrics.clone();
        // The write and its fsync run on a blocking thread, so the async
        // workers serve calls meanwhile; Raft awaits it all the same.
        let written = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let started = Instant::now();
            let count = entries.len();
            let result = write_entries(&db, entries);
            if let Some(metrics) = &metrics {
                metrics.log_append(count, started.elapsed());
            }
            result
        })
        .await;
        let result = match written {
            Ok(result) => result,
            // A broken invariant of the log (asserted while writing) stops
            // the node as it did on the worker.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(redb::Error::Io(std::io::Error::other(format!(
                "the log append did not run: {error}"
            )))),
        };
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let error = storage_error(ErrorSubject::Logs, ErrorVerb::Write, e);
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Removes `log_id` and everything after it. Durable: a truncation that
        // a crash undid would resurrect entries that conflict with the leader.
        let result = (|| -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            txn.open_table(ENTRIES)?
                .retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })();
        result.map_err(|e| storage_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Removes `log_id` and everything before it, recording it as the last
        // purged id in the same transaction. Losing a purge in a crash only
        // leaves extra entries behind, so it need not wait for fsync.
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)
                .expect("no persistent savepoint is ever taken on the log");
            txn.open_table(META)?
                .insert(LAST_PURGED, codec::encode(&log_id).as_slice())?;
            txn.open_table(ENTRIES)?
                .retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })();
        result.map_err(|e| storage_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }
}

/// Writes `entries` after the log's last one in one durable transaction
/// (redb's default durability: commit returns after the fsync).
fn write_entries(db: &Database, entries: Vec<Entry>) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(ENTRIES)?;
        let mut previous = table.last()?.map(|(index, _)| index.value());
        let mut buffer = Vec::with_capacity(1024);
        for entry in entries {
            let index = entry.log_id.index;
            if let Some(previous) = previous {
                // openraft truncates before it overwrites, so appends
                // always extend the log by exactly one index.
                assert_eq!(
                    previous + 1,
                    index,
                    "append leaves a gap or overlaps the log"
                );
            }
            codec::encode_into(&entry, &mut buffer);
            table.insert(index, buffer.as_slice())?;
            previous = Some(index);
        }
    }
    txn.commit()?;
    Ok(())
}

/// The span of one append, in the trace of the first traced command it
/// writes and linked to the others': none when no command is traced.
fn append_span(entries: &[Entry]) -> tracing::Span {
    if !traces::exporting() {
        return tracing::Span::none();
    }
    let mut traced = entries
        .iter()
        .flat_map(|entry| match &entry.payload {
            openraft::EntryPayload::Normal(request) => commands_traced(request),
            _ => Vec::new(),
        })
        .take(traces::LINKS_MAX + 1);
    let Some(first) = traced.next() else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        target: traces::TARGET,
        "log_append",
        entries = entries.len(),
        first_index = entries.first().map(|entry| entry.log_id.index),
        last_index = entries.last().map(|entry| entry.log_id.index),
    );
    traces::set_remote_parent(&span, &first);
    for other in traced {
        traces::link(&span, &other);
    }
    span
}

/// The trace contexts of a request's commands, a batch's included.
pub(crate) fn commands_traced(
    request: &crate::command::Request,
) -> Vec<crate::command::TraceContext> {
    match &request.command {
        crate::command::Command::Batch(requests) => requests
            .iter()
            .filter_map(|request| request.command.trace().copied())
            .collect(),
        command => command.trace().copied().into_iter().collect(),
    }
}
