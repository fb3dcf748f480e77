//! The log store against raw redb, paired: each round appends one batch to
//! each, alternating, so both see the same disk at the same moment. On a
//! shared disk whose fsync latency drifts minute to minute, separate runs
//! cannot be compared; the per-round ratio can.
//!
//! Run: `cargo bench -p wasmraft-benches --bench log_paired`

use std::time::{Duration, Instant};

use openraft::CommittedLeaderId;
use openraft::storage::RaftLogStorageExt;
use redb::{Database, TableDefinition};
use tempfile::TempDir;
use wasmraft::command::{Command, Invoke, Request};
use wasmraft::raft::{Entry, EntryPayload, LogId};
use wasmraft::storage::LogStore;

const PAYLOAD_BYTES: usize = 256;
const ROUNDS: usize = 1500;
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

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` runs benches with no
    // arguments for a smoke check, which this skips.
    if !std::env::args().any(|argument| argument == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for batch in [1u64, 64] {
        let directory = TempDir::new().unwrap();
        let raw = Database::create(directory.path().join("raw.redb")).unwrap();
        let mut log = LogStore::open(directory.path().join("log.redb")).unwrap();
        let value = vec![0x5a; PAYLOAD_BYTES];
        let (mut raw_times, mut log_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut next = 1u64;
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let txn = raw.begin_write().unwrap();
            {
                let mut table = txn.open_table(RAW).unwrap();
                for index in next..next + batch {
                    table.insert(index, value.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
            let raw_time = started.elapsed();

            let entries: Vec<Entry> = (next..next + batch).map(entry).collect();
            let started = Instant::now();
            runtime.block_on(log.blocking_append(entries)).unwrap();
            let log_time = started.elapsed();

            next += batch;
            ratios.push(raw_time.as_secs_f64() / log_time.as_secs_f64());
            raw_times.push(raw_time);
            log_times.push(log_time);
        }
        let raw_median = median(&mut raw_times);
        let log_median = median(&mut log_times);
        ratios.sort_unstable_by(f64::total_cmp);
        let per_second = |time: Duration| batch as f64 / time.as_secs_f64();
        println!(
            "batch {batch:>2}: raw redb {:>9.0} entries/s, log store {:>9.0} entries/s (medians of {ROUNDS} paired rounds); \
             median per-round log/raw throughput {:.0}%",
            per_second(raw_median),
            per_second(log_median),
            ratios[ratios.len() / 2] * 100.0
        );
    }
}
