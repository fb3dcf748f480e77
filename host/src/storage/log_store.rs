//! The Raft log on redb: entries, vote, committed log id and last purged log id
//! in one database file.
//!
//! Appends use group commit. `append` puts the entries in an in-memory
//! pending map (so they are readable at once, as openraft requires) and
//! queues them for the writer thread; the writer takes everything queued,
//! writes it in one transaction, commits it durably (fsync), then reports
//! every batch in it durable, in order. While one fsync runs, the next
//! appends queue up, so a burst of client writes costs one fsync, not one
//! each. Truncate and purge first wait until the queue is written, so they
//! never race an append.

// openraft's `StorageError` is the error type of the storage traits; its
// size is openraft's choice, and these helpers return it as the traits do.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{storage_error, store_error};
use crate::command::codec;
use crate::raft::{Entry, LogId, LogState, StorageError, TypeConfig, Vote};

/// Log index → encoded entry.
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
/// Small named records: the vote, the committed and last purged log ids.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Appended batches waiting for the writer; `append` waits when it is full.
const QUEUE_BATCHES_MAX: usize = 4096;
/// The most batches one transaction takes, so one commit stays bounded.
const GROUP_BATCHES_MAX: usize = 1024;

/// The Raft log. Cloning is cheap and shares everything: a clone serves as
/// openraft's log reader for replication.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    db: Arc<Database>,
    /// Appended entries not yet known durable, by index: readable meanwhile.
    pending: Arc<Mutex<BTreeMap<u64, Entry>>>,
    /// `None` only while dropping, to stop the writer.
    queue: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    /// The index the next append must start at, when the log is not empty:
    /// a cheap check that appends never leave a gap or overlap.
    last_index: Mutex<Option<u64>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the queue stops the writer once it has written what was
        // queued; joining it releases its hold on the database file, so the
        // log can be reopened as soon as the last handle is gone.
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

enum Job {
    /// Entries `first..=last`, in `pending`, to make durable.
    Append {
        first: u64,
        last: u64,
        callback: LogFlushed<TypeConfig>,
    },
    /// Answered once every job queued before it is written.
    Barrier(oneshot::Sender<Result<(), String>>),
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens the log at `path`, creating the file and its tables if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, redb::Error> {
        let db = Database::create(path.as_ref())?;
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(META)?;
        txn.commit()?;
        let last_index = {
            let txn = db.begin_read()?;
            let table = txn.open_table(ENTRIES)?;
            table.last()?.map(|(index, _)| index.value())
        };
        let db = Arc::new(db);
        let pending = Arc::new(Mutex::new(BTreeMap::new()));
        let (queue, jobs) = mpsc::channel(QUEUE_BATCHES_MAX);
        let writer = {
            let db = db.clone();
            let pending = pending.clone();
            std::thread::Builder::new()
                .name("wasmraft-log-writer".to_owned())
                .spawn(move || write_loop(&db, &pending, jobs))
                .map_err(redb::Error::Io)?
        };
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                pending,
                queue: Some(queue),
                writer: Some(writer),
                last_index: Mutex::new(last_index),
            }),
        })
    }

    fn db(&self) -> &Database {
        &self.shared.db
    }

    fn queue(&self) -> &mpsc::Sender<Job> {
        self.shared
            .queue
            .as_ref()
            .expect("the queue lives as long as the store")
    }

    /// Waits until everything appended so far is durable.
    async fn flush(&self) -> Result<(), StorageError> {
        let writer_gone = || {
            store_error(
                ErrorVerb::Write,
                std::io::Error::other("the log writer has stopped"),
            )
        };
        let (done, written) = oneshot::channel();
        self.queue()
            .send(Job::Barrier(done))
            .await
            .map_err(|_| writer_gone())?;
        written
            .await
            .map_err(|_| writer_gone())?
            .map_err(|message| store_error(ErrorVerb::Write, std::io::Error::other(message)))
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let result = (|| -> Result<Option<T>, redb::Error> {
            let txn = self.db().begin_read()?;
            let table = txn.open_table(META)?;
            let Some(bytes) = table.get(key)? else {
                return Ok(None);
            };
            codec::decode(bytes.value())
                .map(Some)
                .map_err(|e| redb::Error::Corrupted(format!("undecodable log record `{key}`: {e}")))
        })();
        result.map_err(|e| store_error(ErrorVerb::Read, e))
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: Durability,
        subject: ErrorSubject<u64>,
    ) -> Result<(), StorageError> {
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = self.db().begin_write()?;
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
        if let Some((_, entry)) = self
            .shared
            .pending
            .lock()
            .expect("pending lock poisoned")
            .last_key_value()
        {
            return Ok(Some(entry.log_id));
        }
        let txn = self.db().begin_read()?;
        let table = txn.open_table(ENTRIES)?;
        let Some((_, bytes)) = table.last()? else {
            return Ok(None);
        };
        let entry: Entry = decode_entry(bytes.value())?;
        Ok(Some(entry.log_id))
    }
}

/// The writer thread: takes every queued job, writes the appends among them
/// in one durable transaction, then answers them in order.
fn write_loop(db: &Database, pending: &Mutex<BTreeMap<u64, Entry>>, mut jobs: mpsc::Receiver<Job>) {
    let mut buffer = Vec::with_capacity(1024);
    while let Some(first) = jobs.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_BATCHES_MAX {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let appends: Vec<(u64, u64)> = group
            .iter()
            .filter_map(|job| match job {
                Job::Append { first, last, .. } => Some((*first, *last)),
                Job::Barrier(_) => None,
            })
            .collect();
        let result = if appends.is_empty() {
            Ok(())
        } else {
            write_group(db, pending, &appends, &mut buffer)
        };
        if result.is_ok() {
            // Durable now: readers find them in the database from here on.
            let mut pending = pending.lock().expect("pending lock poisoned");
            for (first, last) in &appends {
                for index in *first..=*last {
                    pending.remove(&index);
                }
            }
        }
        let failure = result
            .as_ref()
            .err()
            .map(|e| format!("writing the log failed: {e}"));
        for job in group {
            match job {
                Job::Append { callback, .. } => callback.log_io_completed(match &failure {
                    None => Ok(()),
                    Some(message) => Err(std::io::Error::other(message.clone())),
                }),
                Job::Barrier(done) => {
                    let _ = done.send(failure.clone().map_or(Ok(()), Err));
                }
            }
        }
    }
}

fn write_group(
    db: &Database,
    pending: &Mutex<BTreeMap<u64, Entry>>,
    appends: &[(u64, u64)],
    buffer: &mut Vec<u8>,
) -> Result<(), redb::Error> {
    // Durability::Immediate is redb's default: commit returns after fsync.
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(ENTRIES)?;
        let pending = pending.lock().expect("pending lock poisoned");
        for (first, last) in appends {
            for index in *first..=*last {
                let entry = pending
                    .get(&index)
                    .expect("a queued entry stays pending until it is written");
                codec::encode_into(entry, buffer);
                table.insert(index, buffer.as_slice())?;
            }
        }
    }
    txn.commit()?;
    Ok(())
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
            // Pending first: an entry leaves `pending` only after it is in
            // the database, so reading in this order never misses one.
            let mut found: BTreeMap<u64, Entry> = self
                .shared
                .pending
                .lock()
                .expect("pending lock poisoned")
                .range(range.clone())
                .map(|(index, entry)| (*index, entry.clone()))
                .collect();
            let txn = self.db().begin_read()?;
            let table = txn.open_table(ENTRIES)?;
            for item in table.range(range.clone())? {
                let (index, bytes) = item?;
                if found.contains_key(&index.value()) {
                    continue;
                }
                let entry = decode_entry(bytes.value())?;
                // The key and the entry must agree.
                assert_eq!(
                    entry.log_id.index,
                    index.value(),
                    "log key disagrees with its entry"
                );
                found.insert(index.value(), entry);
            }
            let entries: Vec<Entry> = found.into_values().collect();
            // A read is contiguous: a gap means the log is not what we wrote.
            for pair in entries.windows(2) {
                assert_eq!(
                    pair[0].log_id.index + 1,
                    pair[1].log_id.index,
                    "gap in the log"
                );
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
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let (first, last) = (first.log_id.index, last.log_id.index);
        {
            let mut last_index = self
                .shared
                .last_index
                .lock()
                .expect("last index lock poisoned");
            if let Some(previous) = *last_index {
                // openraft truncates before it overwrites, so appends always
                // extend the log by exactly one index at a time.
                assert_eq!(
                    previous + 1,
                    first,
                    "append leaves a gap or overlaps the log"
                );
            }
            for pair in entries.windows(2) {
                assert_eq!(
                    pair[0].log_id.index + 1,
                    pair[1].log_id.index,
                    "append batch is not contiguous"
                );
            }
            *last_index = Some(last);
        }
        self.shared
            .pending
            .lock()
            .expect("pending lock poisoned")
            .extend(entries.into_iter().map(|entry| (entry.log_id.index, entry)));
        self.queue()
            .send(Job::Append {
                first,
                last,
                callback,
            })
            .await
            .map_err(|_| {
                store_error(
                    ErrorVerb::Write,
                    std::io::Error::other("the log writer has stopped"),
                )
            })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Removes `log_id` and everything after it. Durable: a truncation that
        // a crash undid would resurrect entries that conflict with the leader.
        self.flush().await?;
        let result = (|| -> Result<Option<u64>, redb::Error> {
            let txn = self.db().begin_write()?;
            let last = {
                let mut table = txn.open_table(ENTRIES)?;
                table.retain_in(log_id.index.., |_, _| false)?;
                table.last()?.map(|(index, _)| index.value())
            };
            txn.commit()?;
            Ok(last)
        })();
        let last =
            result.map_err(|e| storage_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))?;
        *self
            .shared
            .last_index
            .lock()
            .expect("last index lock poisoned") = last;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Removes `log_id` and everything before it, recording it as the last
        // purged id in the same transaction. Losing a purge in a crash only
        // leaves extra entries behind, so it need not wait for fsync.
        self.flush().await?;
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = self.db().begin_write()?;
            txn.set_durability(Durability::None)
                .expect("no persistent savepoint is ever taken on the log");
            txn.open_table(META)?
                .insert(LAST_PURGED, codec::encode(&log_id).as_slice())?;
            txn.open_table(ENTRIES)?
                .retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })();
        result.map_err(|e| storage_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))?;
        let mut last_index = self
            .shared
            .last_index
            .lock()
            .expect("last index lock poisoned");
        if last_index.is_some_and(|last| last <= log_id.index) {
            // Everything was purged: the next append continues after it.
            *last_index = Some(log_id.index);
        }
        Ok(())
    }
}
