//! Durable appends of 256-byte entries to the Raft log, in batches of 1 and
//! 64, beside raw redb doing the same writes on the same disk: the log store's
//! overhead over the storage engine it stands on.
//!
//! Run: `cargo bench -p wasmraft-benches --bench log_append`

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use openraft::CommittedLeaderId;
use openraft::storage::RaftLogStorageExt;
use redb::{Database, TableDefinition};
use tempfile::TempDir;
use wasmraft::command::{Command, Invoke, Request};
use wasmraft::raft::{Entry, EntryPayload, LogId};
use wasmraft::storage::LogStore;

const PAYLOAD_BYTES: usize = 256;
const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");

fn entry(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request {
            timestamp_ms: 1_700_000_000_000,
            caller: String::new(),
            command: Command::Invoke(Invoke {
                module: "kv".into(),
                input: vec![0x5a; PAYLOAD_BYTES],
                session: None,
            }),
        }),
    }
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable_append_256B");
    group.sample_size(20);
    for batch in [1u64, 64] {
        group.throughput(Throughput::Elements(batch));

        group.bench_with_input(BenchmarkId::new("raw_redb", batch), &batch, |b, &batch| {
            let directory = TempDir::new().unwrap();
            let db = Database::create(directory.path().join("raw.redb")).unwrap();
            let value = vec![0x5a; PAYLOAD_BYTES];
            let mut next = 1u64;
            b.iter(|| {
                let txn = db.begin_write().unwrap();
                {
                    let mut table = txn.open_table(RAW).unwrap();
                    for index in next..next + batch {
                        table.insert(index, value.as_slice()).unwrap();
                    }
                }
                txn.commit().unwrap();
                next += batch;
            });
        });

        group.bench_with_input(BenchmarkId::new("log_store", batch), &batch, |b, &batch| {
            let directory = TempDir::new().unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut log = LogStore::open(directory.path().join("log.redb")).unwrap();
            let mut next = 1u64;
            // Building the entries is the caller's work, not the log's: it
            // happens outside the measured time.
            b.iter_batched(
                || {
                    let entries: Vec<Entry> = (next..next + batch).map(entry).collect();
                    next += batch;
                    entries
                },
                |entries| {
                    runtime
                        .block_on(log.blocking_append(black_box(entries)))
                        .unwrap()
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
