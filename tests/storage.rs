//! Storage: openraft's own test suite first, then what it does not cover —
//! crashes in the middle of writes, purge and restart, large snapshots and
//! large entries.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use openraft::storage::{
    RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine, Snapshot,
};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, RaftLogReader};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use wasmraft::command::{Command, Deploy, Invoke, ModuleLimits, Request, Response};
use wasmraft::raft::{Entry, EntryPayload, LogId, StorageError, TypeConfig};
use wasmraft::storage::{LogStore, StateMachineStore};
use wasmraft::wasm::{Runtime, RuntimeConfig};

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default()).expect("runtime")
}

struct Stores {
    runtime: Runtime,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Stores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let directory = TempDir::new().expect("temp dir");
        let log = LogStore::open(directory.path().join("log.redb")).expect("open log");
        let state = StateMachineStore::open(directory.path().join("state"), self.runtime.clone())
            .expect("open state");
        Ok((directory, log, state))
    }
}

/// openraft's storage suite, written by openraft's authors: the external
/// referee of our log and state machine.
#[test]
fn openraft_suite() {
    Suite::test_all(Stores { runtime: runtime() }).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn invoke_entry(term: u64, index: u64, input: Vec<u8>) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request {
            timestamp_ms: 1_700_000_000_000 + index as i64,
            caller: "tester".into(),
            command: Command::Invoke(Invoke {
                module: "bulk".into(),
                input,
                session: None,
            }),
        }),
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Appends batches forever, printing each durable batch's last index. Run
/// as a child process by `log_survives_sigkill_mid_write`, which kills it.
#[test]
#[ignore = "helper process of log_survives_sigkill_mid_write"]
fn crash_child_log_writer() {
    if let Ok(path) = std::env::var("WASMRAFT_CRASH_LOG") {
        append_forever(&path, false);
    }
}

/// Appends batches of 16 entries to the log at `path` forever, printing
/// `durable N` after each; with `purge`, also purges the log behind them
/// (keeping about 48 entries, as a snapshot's purge would), printing
/// `purged N` after each purge.
fn append_forever(path: &str, purge: bool) {
    block_on(async move {
        let mut log = LogStore::open(path).unwrap();
        let mut next = log
            .get_log_state()
            .await
            .unwrap()
            .last_log_id
            .map_or(1, |id| id.index + 1);
        loop {
            let batch: Vec<Entry> = (next..next + 16)
                .map(|index| invoke_entry(1, index, payload(index)))
                .collect();
            log.blocking_append(batch).await.unwrap();
            next += 16;
            println!("durable {}", next - 1);
            if purge && next > 64 {
                let upto = next - 49;
                log.purge(log_id(1, upto)).await.unwrap();
                println!("purged {upto}");
            }
        }
    });
}

/// A payload that can be recomputed from the index, to check every byte read back.
fn payload(index: u64) -> Vec<u8> {
    let mut bytes = Sha256::digest(index.to_le_bytes()).to_vec();
    bytes.resize(200 + (index % 100) as usize, (index % 251) as u8);
    bytes
}

/// Kill a writer in the middle of appends (SIGKILL, no chance to clean up),
/// several times over the same file: every batch reported durable is there,
/// intact, and the log is contiguous.
#[test]
fn log_survives_sigkill_mid_write() {
    let directory = TempDir::new().unwrap();
    let path = directory.path().join("log.redb");
    let mut acknowledged = 0u64;
    for round in 0..3 {
        let (mut child, mut lines) = spawn_crash_child(
            "storage::crash_child_log_writer",
            "WASMRAFT_CRASH_LOG",
            &path,
        );
        let target = acknowledged + 400 + round * 37;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acknowledged < target {
            assert!(Instant::now() < deadline, "the writer made no progress");
            let line = lines.next().expect("writer output").unwrap();
            if let Some(index) = line.strip_prefix("durable ") {
                acknowledged = index.parse().unwrap();
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();

        block_on(async {
            let mut log = LogStore::open(&path).expect("reopen after kill");
            let state = log.get_log_state().await.unwrap();
            let last = state.last_log_id.expect("entries survived").index;
            assert!(
                last >= acknowledged,
                "acknowledged {acknowledged}, found only {last}"
            );
            let entries = log.try_get_log_entries(1..=last).await.unwrap();
            assert_eq!(entries.len() as u64, last, "the log has gaps");
            for (position, entry) in entries.iter().enumerate() {
                let index = position as u64 + 1;
                assert_eq!(entry.log_id.index, index);
                let EntryPayload::Normal(Request {
                    command: Command::Invoke(invoke),
                    ..
                }) = &entry.payload
                else {
                    panic!("entry {index} changed kind");
                };
                assert_eq!(invoke.input, payload(index), "entry {index} corrupted");
            }
            acknowledged = last;
        });
    }
}

#[test]
fn purge_then_restart() {
    let directory = TempDir::new().unwrap();
    let path = directory.path().join("log.redb");
    block_on(async {
        let mut log = LogStore::open(&path).unwrap();
        log.blocking_append((1..=100).map(|index| invoke_entry(2, index, payload(index))))
            .await
            .unwrap();
        log.purge(log_id(2, 50)).await.unwrap();
        log.truncate(log_id(2, 91)).await.unwrap();
    });
    block_on(async {
        let mut log = LogStore::open(&path).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 50)));
        assert_eq!(state.last_log_id, Some(log_id(2, 90)));
        assert!(log.try_get_log_entries(1..=50).await.unwrap().is_empty());
        let kept = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(kept.first().unwrap().log_id.index, 51);
        assert_eq!(kept.len(), 40);

        // Purging everything leaves an empty log whose last id is the purged one.
        log.purge(log_id(2, 90)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(2, 90)));
        log.blocking_append([invoke_entry(3, 91, payload(91))])
            .await
            .unwrap();
    });
    block_on(async {
        let mut log = LogStore::open(&path).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 90)));
        assert_eq!(state.last_log_id, Some(log_id(3, 91)));
    });
}

#[test]
fn entry_of_eight_mebibytes() {
    let directory = TempDir::new().unwrap();
    let path = directory.path().join("log.redb");
    let big: Vec<u8> = (0..8 * 1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    block_on(async {
        let mut log = LogStore::open(&path).unwrap();
        log.blocking_append([
            invoke_entry(1, 1, payload(1)),
            invoke_entry(1, 2, big.clone()),
            invoke_entry(1, 3, payload(3)),
        ])
        .await
        .unwrap();
    });
    block_on(async {
        let mut log = LogStore::open(&path).unwrap();
        let entries = log.try_get_log_entries(2..3).await.unwrap();
        let EntryPayload::Normal(Request {
            command: Command::Invoke(invoke),
            ..
        }) = &entries[0].payload
        else {
            panic!("wrong entry kind");
        };
        assert!(invoke.input == big, "the 8 MiB entry came back different");
    });
}

/// A hand-written module whose `apply` takes a little-endian u32 `n` and a
/// u32 `base`, and writes keys `base..base+n` (8-byte big-endian names) with
/// 32-byte values derived from the key.
const BULK_WAT: &str = r#"
(module
  (import "wasmraft" "kv_set" (func $kv_set (param i32 i32 i32 i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "wasmraft_abi_version_1"))
  (func (export "wasmraft_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $ptr))
  (func (export "apply") (param $ptr i32) (param $len i32) (result i32)
    (local $i i32) (local $n i32) (local $key i32)
    (local.set $n (i32.load (local.get $ptr)))
    (local.set $key (i32.load offset=4 (local.get $ptr)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        ;; key bytes at 0..8: zero high word, big-endian low word
        (i64.store (i32.const 0) (i64.const 0))
        (i32.store (i32.const 4)
          (i32.or
            (i32.or (i32.shl (local.get $key) (i32.const 24))
                    (i32.and (i32.shl (local.get $key) (i32.const 8)) (i32.const 0xff0000)))
            (i32.or (i32.and (i32.shr_u (local.get $key) (i32.const 8)) (i32.const 0xff00))
                    (i32.shr_u (local.get $key) (i32.const 24)))))
        ;; value bytes at 16..48: the key repeated
        (i64.store (i32.const 16) (i64.load (i32.const 0)))
        (i64.store (i32.const 24) (i64.load (i32.const 0)))
        (i64.store (i32.const 32) (i64.load (i32.const 0)))
        (i64.store (i32.const 40) (i64.load (i32.const 0)))
        (call $kv_set (i32.const 0) (i32.const 8) (i32.const 16) (i32.const 32))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (local.set $key (i32.add (local.get $key) (i32.const 1)))
        (br $next)))
    (i32.const 0)))
"#;

fn deploy_entry(index: u64, name: &str, wasm: Vec<u8>) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Request {
            timestamp_ms: 1_700_000_000_000,
            caller: "admin".into(),
            command: Command::Deploy(Deploy {
                name: name.into(),
                hash: Sha256::digest(&wasm).into(),
                wasm,
                init_argument: Vec::new(),
                limits: ModuleLimits::default(),
            }),
        }),
    }
}

fn bulk_input(count: u32, base: u32) -> Vec<u8> {
    [count.to_le_bytes(), base.to_le_bytes()].concat()
}

/// Streams `snapshot` into what `follower` prepared for receiving, and
/// installs it.
pub(crate) async fn install(follower: &mut StateMachineStore, snapshot: Snapshot<TypeConfig>) {
    let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
    let mut source = snapshot.snapshot;
    tokio::io::copy(&mut source, &mut *receiving).await.unwrap();
    follower
        .install_snapshot(&snapshot.meta, receiving)
        .await
        .unwrap();
}

/// 100,000 keys written through real wasm, snapshotted, streamed through a
/// file and installed into a fresh state: the digests match, the applied
/// state matches, and the follower serves the same snapshot on.
#[test]
fn snapshot_round_trip_of_100k_keys() {
    let runtime = runtime();
    let leader_directory = TempDir::new().unwrap();
    let follower_directory = TempDir::new().unwrap();
    let wasm = wat::parse_str(BULK_WAT).unwrap();
    block_on(async {
        let mut leader = StateMachineStore::open(leader_directory.path(), runtime.clone()).unwrap();
        let mut entries = vec![deploy_entry(1, "bulk", wasm)];
        for batch in 0..100u32 {
            entries.push(invoke_entry(
                1,
                u64::from(batch) + 2,
                bulk_input(1000, batch * 1000),
            ));
        }
        let responses = leader.apply(entries).await.unwrap();
        assert!(
            matches!(responses[0], Response::Deployed(_)),
            "{:?}",
            responses[0]
        );
        for response in &responses[1..] {
            assert!(
                matches!(response, Response::Invoked(result) if result.outcome.is_ok()),
                "{response:?}"
            );
        }
        let reader = leader.reader();
        assert_eq!(
            reader
                .module_value("bulk", &99_999u64.to_be_bytes())
                .unwrap(),
            Some(99_999u64.to_be_bytes().repeat(4))
        );

        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 101)));
        let size = snapshot.snapshot.metadata().await.unwrap().len();
        assert!(
            size > 100_000 * (8 + 32),
            "snapshot of {size} bytes is too small"
        );

        // Stream the file into what the follower prepared for receiving.
        let mut follower =
            StateMachineStore::open(follower_directory.path(), runtime.clone()).unwrap();
        let meta = snapshot.meta.clone();
        install(&mut follower, snapshot).await;

        let (leader_applied, leader_digest) = reader.digest().unwrap();
        let (follower_applied, follower_digest) = follower.reader().digest().unwrap();
        assert_eq!(leader_applied, follower_applied);
        assert_eq!(leader_digest, follower_digest);
        assert_eq!(
            follower.applied_state().await.unwrap(),
            leader.applied_state().await.unwrap()
        );
        let current = follower
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("follower keeps the snapshot");
        assert_eq!(current.meta, meta);

        // The follower goes on applying from where the snapshot ends.
        follower
            .apply([invoke_entry(1, 102, bulk_input(1, 100_000))])
            .await
            .unwrap();
        assert!(
            follower
                .reader()
                .module_value("bulk", &100_000u64.to_be_bytes())
                .unwrap()
                .is_some()
        );
    });

    // The installed state survives a restart.
    block_on(async {
        let mut follower =
            StateMachineStore::open(follower_directory.path(), runtime.clone()).unwrap();
        let (applied, _) = follower.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 102)));
        let keys: BTreeSet<u64> = [0u64, 50_000, 99_999, 100_000].into_iter().collect();
        for key in keys {
            assert!(
                follower
                    .reader()
                    .module_value("bulk", &key.to_be_bytes())
                    .unwrap()
                    .is_some(),
                "key {key}"
            );
        }
    });
}

/// A snapshot damaged in transit is refused and the old state stays.
#[test]
fn corrupt_snapshot_is_refused() {
    let runtime = runtime();
    let leader_directory = TempDir::new().unwrap();
    let follower_directory = TempDir::new().unwrap();
    block_on(async {
        let mut leader = StateMachineStore::open(leader_directory.path(), runtime.clone()).unwrap();
        leader
            .apply([
                deploy_entry(1, "bulk", wat::parse_str(BULK_WAT).unwrap()),
                invoke_entry(1, 2, bulk_input(100, 0)),
            ])
            .await
            .unwrap();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut bytes = Vec::new();
        let mut source = snapshot.snapshot;
        tokio::io::AsyncReadExt::read_to_end(&mut source, &mut bytes)
            .await
            .unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;

        let mut follower =
            StateMachineStore::open(follower_directory.path(), runtime.clone()).unwrap();
        let before = follower.reader().digest().unwrap();
        let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut *receiving, &bytes)
            .await
            .unwrap();
        let error = follower
            .install_snapshot(&snapshot.meta, receiving)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("snapshot"), "{error}");
        assert_eq!(
            follower.reader().digest().unwrap(),
            before,
            "a refused snapshot changed the state"
        );
        assert!(follower.get_current_snapshot().await.unwrap().is_none());
    });
}

/// The entry at `index` of the crash test's log: the bulk module deployed
/// at 1, then invokes that each write ten keys of their own.
fn crash_log_entry(index: u64) -> Entry {
    if index == 1 {
        return deploy_entry(1, "bulk", wat::parse_str(BULK_WAT).unwrap());
    }
    invoke_entry(1, index, bulk_input(10, (index as u32) * 10))
}

/// Applies the crash test's log in batches forever, building a snapshot
/// now and then, and prints what each returned call made it. Run as a
/// child process by `state_survives_sigkill_mid_apply`, which kills it.
#[test]
#[ignore = "helper process of state_survives_sigkill_mid_apply"]
fn crash_child_state_applier() {
    let Ok(path) = std::env::var("WASMRAFT_CRASH_STATE") else {
        return;
    };
    block_on(async move {
        let mut store = StateMachineStore::open(&path, runtime()).unwrap();
        let (applied, _) = store.applied_state().await.unwrap();
        let mut next = applied.map_or(1, |id| id.index + 1);
        loop {
            let batch: Vec<Entry> = (next..next + 4).map(crash_log_entry).collect();
            store.apply(batch).await.unwrap();
            next += 4;
            println!("applied {}", next - 1);
            if next % 64 == 1 {
                let snapshot = store.get_snapshot_builder().await.build_snapshot().await;
                let index = snapshot.unwrap().meta.last_log_id.unwrap().index;
                println!("snapshot {index}");
            }
        }
    });
}

/// Apply commits are not durable on their own (the log is): SIGKILL the
/// applier mid-way, several times over one state. The state reopens at a
/// prefix of what was applied, never behind the last snapshot (the log is
/// purged up to it), and applying the rest of the log again reaches the
/// digest of a replica that never crashed.
#[test]
fn state_survives_sigkill_mid_apply() {
    let directory = TempDir::new().unwrap();
    let path = directory.path().join("state");
    let (mut applied, mut snapshot) = (0u64, 0u64);
    for round in 0..3u64 {
        let (mut child, mut lines) = spawn_crash_child(
            "storage::crash_child_state_applier",
            "WASMRAFT_CRASH_STATE",
            &path,
        );
        let target = applied + 150 + round * 57;
        let deadline = Instant::now() + Duration::from_secs(120);
        while applied < target {
            assert!(Instant::now() < deadline, "the applier made no progress");
            let line = lines.next().expect("applier output").unwrap();
            if let Some(index) = line.strip_prefix("applied ") {
                applied = index.parse().unwrap();
            } else if let Some(index) = line.strip_prefix("snapshot ") {
                snapshot = index.parse().unwrap();
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();

        block_on(async {
            let mut store = StateMachineStore::open(&path, runtime()).expect("reopen after kill");
            let (reopened, _) = store.applied_state().await.unwrap();
            let reopened = reopened.map_or(0, |id| id.index);
            assert!(
                (snapshot..=applied + 4).contains(&reopened),
                "round {round}: reopened at {reopened}, snapshot {snapshot}, applied {applied}"
            );
            eprintln!("round {round}: applied {applied}, reopened at {reopened}");
            // The child may have applied a batch it did not live to print.
            applied = applied.max(reopened);
            // Raft applies the log after the state's own point again.
            let rest: Vec<Entry> = (reopened + 1..=applied).map(crash_log_entry).collect();
            if !rest.is_empty() {
                store.apply(rest).await.unwrap();
            }
            let replica_directory = TempDir::new().unwrap();
            let mut replica = StateMachineStore::open(replica_directory.path(), runtime()).unwrap();
            let all: Vec<Entry> = (1..=applied).map(crash_log_entry).collect();
            replica.apply(all).await.unwrap();
            assert_eq!(
                store.reader().digest().unwrap(),
                replica.reader().digest().unwrap(),
                "round {round}: the crashed state, applied again, differs"
            );
        });
    }
}

/// Starts this test binary again as the child process that runs `helper`
/// (an ignored test) with `variable` set to `path`, and returns it with
/// the lines it prints.
fn spawn_crash_child(
    helper: &str,
    variable: &str,
    path: &std::path::Path,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            helper,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(variable, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// A random number of microseconds below `bound`, to land a kill at a
/// different point of an operation each time.
fn random_micros(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    u64::from_le_bytes(bytes) % bound.max(1)
}

/// Appends batches forever and purges the log behind them as it goes,
/// printing each durable batch and each purge. Run as a child process by
/// `log_survives_sigkill_mid_purge`, which kills it.
#[test]
#[ignore = "helper process of log_survives_sigkill_mid_purge"]
fn crash_child_log_purger() {
    if let Ok(path) = std::env::var("WASMRAFT_CRASH_PURGE") {
        append_forever(&path, true);
    }
}

/// Kill a log in the middle of its purges (SIGKILL) several times over
/// one file: every entry after the purged point is there, intact and
/// contiguous, every acknowledged entry is there, and a purge that a
/// durable append followed is never undone.
#[test]
fn log_survives_sigkill_mid_purge() {
    let directory = TempDir::new().unwrap();
    let path = directory.path().join("log.redb");
    let mut acknowledged = 0u64;
    for round in 0..4u64 {
        let (mut child, mut lines) = spawn_crash_child(
            "storage::crash_child_log_purger",
            "WASMRAFT_CRASH_PURGE",
            &path,
        );
        let target = acknowledged + 300 + round * 29;
        let deadline = Instant::now() + Duration::from_secs(60);
        // The last purge printed before an append printed after it: that
        // append's durable commit made the purge durable too.
        let (mut purged_printed, mut purged_durable) = (0u64, 0u64);
        while acknowledged < target {
            assert!(Instant::now() < deadline, "the log made no progress");
            let line = lines.next().expect("purger output").unwrap();
            if let Some(index) = line.strip_prefix("durable ") {
                acknowledged = index.parse().unwrap();
                purged_durable = purged_printed;
            } else if let Some(index) = line.strip_prefix("purged ") {
                purged_printed = index.parse().unwrap();
            }
        }
        std::thread::sleep(Duration::from_micros(random_micros(3_000)));
        child.kill().unwrap();
        child.wait().unwrap();

        block_on(async {
            let mut log = LogStore::open(&path).expect("reopen after kill");
            let state = log.get_log_state().await.unwrap();
            let last = state.last_log_id.expect("entries survived").index;
            let purged = state.last_purged_log_id.map_or(0, |id| id.index);
            assert!(
                last >= acknowledged,
                "round {round}: acknowledged {acknowledged}, found only {last}"
            );
            assert!(
                purged >= purged_durable,
                "round {round}: the purge to {purged_durable} was undone (purged {purged})"
            );
            let entries = log.try_get_log_entries(purged + 1..=last).await.unwrap();
            assert_eq!(
                entries.len() as u64,
                last - purged,
                "round {round}: the log has gaps after its purged point {purged}"
            );
            for (position, entry) in entries.iter().enumerate() {
                let index = purged + 1 + position as u64;
                assert_eq!(entry.log_id.index, index);
                let EntryPayload::Normal(Request {
                    command: Command::Invoke(invoke),
                    ..
                }) = &entry.payload
                else {
                    panic!("entry {index} changed kind");
                };
                assert_eq!(invoke.input, payload(index), "entry {index} corrupted");
            }
            assert!(
                log.try_get_log_entries(1..=purged)
                    .await
                    .unwrap()
                    .is_empty(),
                "round {round}: purged entries came back"
            );
            eprintln!(
                "round {round}: acknowledged {acknowledged}, reopened with ({purged}, {last}]"
            );
            acknowledged = last;
        });
    }
}

/// The snapshots the install crash test alternates between: the crash
/// test's log applied up to each of these indexes.
const INSTALL_CRASH_SNAPSHOTS: [u64; 2] = [40, 70];

/// The entry at `index` of the install crash test's log: the bulk module,
/// then invokes of 1,000 keys each, so that an install takes a while.
fn install_crash_entry(index: u64) -> Entry {
    if index == 1 {
        return deploy_entry(1, "bulk", wat::parse_str(BULK_WAT).unwrap());
    }
    invoke_entry(1, index, bulk_input(1000, (index as u32) * 1000))
}

/// A state that applied the install crash test's log up to `last`.
async fn install_crash_replica(directory: &std::path::Path, last: u64) -> StateMachineStore {
    let mut replica = StateMachineStore::open(directory, runtime()).unwrap();
    let entries: Vec<Entry> = (1..=last).map(install_crash_entry).collect();
    replica.apply(entries).await.unwrap();
    replica
}

/// Installs the snapshots the parent left in the directory, one after
/// the other, forever, printing each install's start and its duration.
/// Run as a child process by `state_survives_sigkill_mid_install`.
#[test]
#[ignore = "helper process of state_survives_sigkill_mid_install"]
fn crash_child_snapshot_installer() {
    let Ok(directory) = std::env::var("WASMRAFT_CRASH_INSTALL") else {
        return;
    };
    let directory = std::path::PathBuf::from(directory);
    block_on(async move {
        let mut store = StateMachineStore::open(directory.join("state"), runtime()).unwrap();
        for round in 0.. {
            let last = INSTALL_CRASH_SNAPSHOTS[round % 2];
            let meta: wasmraft::raft::SnapshotMeta = serde_json::from_slice(
                &std::fs::read(directory.join(format!("{last}.meta"))).unwrap(),
            )
            .unwrap();
            let started = Instant::now();
            println!("installing {last}");
            let mut receiving = store.begin_receiving_snapshot().await.unwrap();
            let mut source = tokio::fs::File::open(directory.join(format!("{last}.snapshot")))
                .await
                .unwrap();
            tokio::io::copy(&mut source, &mut *receiving).await.unwrap();
            store.install_snapshot(&meta, receiving).await.unwrap();
            println!("installed {last} in {}", started.elapsed().as_micros());
        }
    });
}

/// Kill a follower in the middle of installing a snapshot (SIGKILL),
/// several times over one state, at a random point of the install: the
/// state reopens as exactly one of the two snapshots, never a mix, and
/// applying the log after it reaches the digest of a replica that never
/// crashed.
#[test]
fn state_survives_sigkill_mid_install() {
    let directory = TempDir::new().unwrap();
    let full = *INSTALL_CRASH_SNAPSHOTS.last().unwrap() + 5;
    let digests = block_on(async {
        let mut digests = BTreeMap::new();
        for last in INSTALL_CRASH_SNAPSHOTS {
            let replica_directory = TempDir::new().unwrap();
            let mut replica = install_crash_replica(replica_directory.path(), last).await;
            let snapshot = replica
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            let mut copy =
                tokio::fs::File::create(directory.path().join(format!("{last}.snapshot")))
                    .await
                    .unwrap();
            let mut source = snapshot.snapshot;
            tokio::io::copy(&mut source, &mut copy).await.unwrap();
            std::fs::write(
                directory.path().join(format!("{last}.meta")),
                serde_json::to_vec(&snapshot.meta).unwrap(),
            )
            .unwrap();
            digests.insert(last, replica.reader().digest().unwrap().1);
        }
        let replica_directory = TempDir::new().unwrap();
        let replica = install_crash_replica(replica_directory.path(), full).await;
        digests.insert(full, replica.reader().digest().unwrap().1);
        digests
    });

    let mut install_micros = 100_000u64;
    let mut reopened_at = BTreeSet::new();
    for round in 0..5u64 {
        let (mut child, mut lines) = spawn_crash_child(
            "storage::crash_child_snapshot_installer",
            "WASMRAFT_CRASH_INSTALL",
            directory.path(),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        // Let it finish one install at least (the first round starts
        // empty), then kill it at a random point of the next.
        let mut installed = 0;
        loop {
            assert!(Instant::now() < deadline, "the installer made no progress");
            let line = lines.next().expect("installer output").unwrap();
            if let Some(rest) = line.strip_prefix("installed ") {
                installed += 1;
                install_micros = rest.split(" in ").nth(1).unwrap().parse().unwrap();
            } else if line.starts_with("installing ") && installed > round % 2 {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(random_micros(install_micros * 5 / 4)));
        child.kill().unwrap();
        child.wait().unwrap();

        block_on(async {
            let mut store = StateMachineStore::open(directory.path().join("state"), runtime())
                .expect("reopen after kill");
            let (applied, digest) = store.reader().digest().unwrap();
            let applied = applied.expect("a snapshot was installed").index;
            assert_eq!(
                digests.get(&applied),
                Some(&digest),
                "round {round}: the state at {applied} is not the snapshot's"
            );
            reopened_at.insert(applied);
            if let Some(current) = store.get_current_snapshot().await.unwrap() {
                let index = current.meta.last_log_id.unwrap().index;
                assert!(
                    INSTALL_CRASH_SNAPSHOTS.contains(&index),
                    "round {round}: the kept snapshot is at {index}"
                );
            }
            // Raft applies the log after the snapshot; on a copy, so the
            // next round installs over the snapshot's state again.
            let copy_directory = TempDir::new().unwrap();
            let snapshot = store
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            let mut copy = StateMachineStore::open(copy_directory.path(), runtime()).unwrap();
            install(&mut copy, snapshot).await;
            let rest: Vec<Entry> = (applied + 1..=full).map(install_crash_entry).collect();
            copy.apply(rest).await.unwrap();
            assert_eq!(
                copy.reader().digest().unwrap().1,
                digests[&full],
                "round {round}: the state reopened at {applied}, applied on, differs"
            );
            eprintln!(
                "round {round}: reopened at {applied} (an install takes {install_micros} µs)"
            );
        });
    }
    eprintln!("reopened at {reopened_at:?}");
}
