//! The state machine applying real commands through the real runtime: replicas
//! reach identical digests, sessions make commands exactly-once, a module's
//! life (deploy, upgrade, remove) and every refusal leave the state consistent.

use openraft::CommittedLeaderId;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use wasmraft::command::{
    AccessChange, AccessRule, CallOutcome, Command, Deploy, Invoke, ModuleLimits, Refusal, Request,
    Response, SessionId, SettingsCommand, SettingsUpdate,
};
use wasmraft::raft::{Entry, EntryPayload, LogId};
use wasmraft::storage::{ModuleUsage, StateMachineStore};
use wasmraft::wasm::{Runtime, RuntimeConfig};

fn counter_wasm() -> Vec<u8> {
    wat::parse_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/wasm/counter.wat"
    ))
    .unwrap()
}

/// A module that writes, then traps: its writes must never land.
const WRITE_THEN_TRAP: &str = r#"
(module
  (import "wasmraft" "kv_set" (func $kv_set (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "n")
  (func (export "wasmraft_abi_version_1"))
  (func (export "wasmraft_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "apply") (param i32 i32) (result i32)
    (call $kv_set (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 1))
    unreachable))
"#;

struct Replica {
    _directory: TempDir,
    store: StateMachineStore,
}

fn replica() -> Replica {
    let directory = TempDir::new().unwrap();
    let config = RuntimeConfig {
        fuel_per_call_max: 1_000_000,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(config).unwrap();
    let store = StateMachineStore::open(directory.path(), runtime).unwrap();
    Replica {
        _directory: directory,
        store,
    }
}

struct Log {
    next: u64,
}

impl Log {
    fn entry(&mut self, command: Command) -> Entry {
        self.entry_of("alice", command)
    }

    fn entry_of(&mut self, caller: &str, command: Command) -> Entry {
        let index = self.next;
        self.next += 1;
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                timestamp_ms: 1_700_000_000_000 + index as i64,
                caller: caller.into(),
                command,
            }),
        }
    }
}

fn open_session(client_id: &str) -> Command {
    Command::OpenSession {
        client_id: client_id.into(),
    }
}

fn settings(changes: &[(&str, u64)]) -> Command {
    let mut update = SettingsUpdate::default();
    for (field, value) in changes {
        update.set(field, *value).unwrap();
    }
    Command::ChangeSettings(SettingsCommand {
        update,
        initial: false,
        engine_fingerprint: String::new(),
    })
}

fn is_expired(response: &Response) {
    assert!(
        matches!(response, Response::Refused(Refusal::SessionExpired { .. })),
        "{response:?}"
    );
}

fn deploy(name: &str, wasm: Vec<u8>) -> Command {
    Command::Deploy(Deploy {
        name: name.into(),
        hash: Sha256::digest(&wasm).into(),
        wasm,
        init_argument: Vec::new(),
        limits: ModuleLimits::default(),
    })
}

fn invoke(module: &str, input: &[u8], session: Option<(&str, u64)>) -> Command {
    Command::Invoke(Invoke {
        module: module.into(),
        input: input.to_vec(),
        session: session.map(|(client_id, sequence)| SessionId {
            client_id: client_id.into(),
            sequence,
        }),
    })
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn output(response: &Response) -> u64 {
    match response {
        Response::Invoked(result) => match &result.outcome {
            CallOutcome::Ok(bytes) => u64::from_le_bytes(bytes.as_slice().try_into().unwrap()),
            other => panic!("call failed: {other:?}"),
        },
        other => panic!("not an invoke result: {other:?}"),
    }
}

/// The check of a command's response.
type Check = Box<dyn Fn(&Response)>;
/// A command and the check of its response.
type Row = (Command, Check);

/// One scripted history with every kind of command and failure.
fn history() -> Vec<Row> {
    let bad_hash = Command::Deploy(Deploy {
        name: "broken".into(),
        wasm: counter_wasm(),
        hash: [7; 32],
        init_argument: Vec::new(),
        limits: ModuleLimits::default(),
    });
    vec![
        // A cluster records its settings first (the bootstrap does).
        (
            settings(&[("fuel_per_call_max", 1_000_000)]),
            Box::new(|r| assert!(matches!(r, Response::Settings(_)), "{r:?}")),
        ),
        (
            deploy("counter", counter_wasm()),
            Box::new(|r| assert!(matches!(r, Response::Deployed(d) if d.version == 1))),
        ),
        (
            invoke("counter", &5u64.to_le_bytes(), None),
            Box::new(|r| assert_eq!(output(r), 5)),
        ),
        // A session not opened is refused, never applied.
        (
            invoke("counter", &10u64.to_le_bytes(), Some(("c1", 1))),
            Box::new(is_expired),
        ),
        // The cluster names a session after the request and its log place:
        // a second open of the same name is another session.
        (
            open_session("c"),
            Box::new(|r| {
                assert_eq!(
                    r,
                    &Response::SessionOpened {
                        client_id: "c.5.0".into()
                    }
                )
            }),
        ),
        (
            open_session("c"),
            Box::new(|r| {
                assert_eq!(
                    r,
                    &Response::SessionOpened {
                        client_id: "c.6.0".into()
                    }
                )
            }),
        ),
        // A session: the retry of sequence 1 answers the first result and does not add again.
        (
            invoke("counter", &10u64.to_le_bytes(), Some(("c.5.0", 1))),
            Box::new(|r| assert_eq!(output(r), 15)),
        ),
        (
            invoke("counter", &10u64.to_le_bytes(), Some(("c.5.0", 1))),
            Box::new(|r| assert_eq!(output(r), 15)),
        ),
        (
            invoke("counter", &1u64.to_le_bytes(), Some(("c.5.0", 2))),
            Box::new(|r| assert_eq!(output(r), 16)),
        ),
        (
            invoke("counter", &1u64.to_le_bytes(), Some(("c.5.0", 1))),
            Box::new(|r| {
                assert!(
                    matches!(
                        r,
                        Response::Refused(Refusal::SessionExpired { sequence: 1, .. })
                    ),
                    "{r:?}"
                )
            }),
        ),
        (
            invoke("nowhere", b"", None),
            Box::new(|r| {
                assert!(
                    matches!(r, Response::Refused(Refusal::ModuleNotFound(name)) if name == "nowhere")
                )
            }),
        ),
        (
            bad_hash,
            Box::new(|r| assert_eq!(r, &Response::Refused(Refusal::HashMismatch))),
        ),
        (
            deploy("junk", b"\0asm\x01\0\0\0garbage".to_vec()),
            Box::new(|r| {
                assert!(
                    matches!(r, Response::Refused(Refusal::InvalidModule(_))),
                    "{r:?}"
                )
            }),
        ),
        (
            deploy("trapper", wat::parse_str(WRITE_THEN_TRAP).unwrap()),
            Box::new(|r| assert!(matches!(r, Response::Deployed(_)))),
        ),
        (
            invoke("trapper", b"", None),
            Box::new(|r| {
                assert!(
                    matches!(r, Response::Invoked(result) if matches!(&result.outcome, CallOutcome::Trap { kind, .. } if kind == "unreachable")),
                    "{r:?}"
                )
            }),
        ),
        // Upgrading keeps the state and bumps the version.
        (
            deploy("counter", counter_wasm()),
            Box::new(|r| assert!(matches!(r, Response::Deployed(d) if d.version == 2))),
        ),
        (
            invoke("counter", &4u64.to_le_bytes(), None),
            Box::new(|r| assert_eq!(output(r), 20)),
        ),
        (
            Command::Access(AccessChange::Grant(AccessRule {
                subject: "bob".into(),
                role: "cluster_viewer".into(),
                module_pattern: None,
            })),
            Box::new(|r| assert_eq!(r, &Response::AccessChanged { changed: true })),
        ),
        (
            Command::Remove {
                name: "trapper".into(),
            },
            Box::new(|r| assert!(matches!(r, Response::Removed { .. }))),
        ),
        // Settings: a bad value is refused by name, a good one recorded.
        (
            settings(&[("memory_bytes_max", 1000)]),
            Box::new(|r| {
                assert!(
                    matches!(r, Response::Refused(Refusal::InvalidSetting(error)) if error.field == "memory_bytes_max"),
                    "{r:?}"
                )
            }),
        ),
        (
            settings(&[("fuel_per_call_max", 20_000)]),
            Box::new(|r| {
                assert!(
                    matches!(r, Response::Settings(record) if record.settings.fuel_per_call_max == 20_000),
                    "{r:?}"
                )
            }),
        ),
        (
            Command::Remove {
                name: "trapper".into(),
            },
            Box::new(|r| assert!(matches!(r, Response::Refused(Refusal::ModuleNotFound(_))))),
        ),
    ]
}

/// Two replicas, each with its own runtime and files, applying the same log
/// in different batchings, end byte-identical.
#[test]
fn replicas_applying_the_same_log_have_equal_digests() {
    let history = history();
    let mut one = replica();
    let mut two = replica();
    block_on(async {
        let mut log = Log { next: 1 };
        let entries: Vec<Entry> = history
            .iter()
            .map(|(command, _)| log.entry(command.clone()))
            .collect();
        // Replica one applies entry by entry, checking every response.
        for (entry, (_, check)) in entries.iter().zip(&history) {
            let responses = one.store.apply([entry.clone()]).await.unwrap();
            check(&responses[0]);
        }
        // Replica two applies everything as one batch: same responses.
        let batch = two.store.apply(entries.clone()).await.unwrap();
        for (response, (_, check)) in batch.iter().zip(&history) {
            check(response);
        }
    });
    let (applied_one, digest_one) = one.store.reader().digest().unwrap();
    let (applied_two, digest_two) = two.store.reader().digest().unwrap();
    assert_eq!(applied_one, applied_two);
    assert_eq!(digest_one, digest_two);

    // The trap's write never landed; the removed module's state is gone; the
    // counter's state survived its upgrade.
    let reader = one.store.reader();
    assert_eq!(reader.module_value("trapper", b"n").unwrap(), None);
    assert_eq!(
        reader.module_value("counter", b"n").unwrap(),
        Some(20u64.to_le_bytes().to_vec())
    );
    let names: Vec<String> = reader
        .modules()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["counter"]);
    let query = reader.query("counter", b"", "bob").unwrap().unwrap();
    assert_eq!(
        query.result.outcome,
        CallOutcome::Ok(20u64.to_le_bytes().to_vec())
    );
    assert_eq!(query.applied_index, applied_one.map(|log_id| log_id.index));
    assert!(reader.query("trapper", b"", "bob").unwrap().is_none());

    // A third replica that diverges by one command has another digest.
    let mut three = replica();
    block_on(async {
        let mut log = Log { next: 1 };
        let mut entries: Vec<Entry> = history
            .iter()
            .map(|(command, _)| log.entry(command.clone()))
            .collect();
        entries.pop();
        log.next -= 1;
        entries.push(log.entry(invoke("counter", &1u64.to_le_bytes(), None)));
        three.store.apply(entries).await.unwrap();
    });
    assert_ne!(three.store.reader().digest().unwrap().1, digest_one);
}

/// State and `last_applied` survive closing and reopening the database.
#[test]
fn applied_state_survives_reopen() {
    let directory = TempDir::new().unwrap();
    let open = || {
        let config = RuntimeConfig {
            cache_dir: Some(directory.path().join("cache")),
            ..RuntimeConfig::default()
        };
        let runtime = Runtime::new(config).unwrap();
        (
            StateMachineStore::open(directory.path().join("state"), runtime.clone()).unwrap(),
            runtime,
        )
    };
    let mut log = Log { next: 1 };
    let (mut store, _) = open();
    block_on(store.apply([
        log.entry(deploy("counter", counter_wasm())),
        log.entry(invoke("counter", &3u64.to_le_bytes(), None)),
    ]))
    .unwrap();
    let before = store.reader().digest().unwrap();
    drop(store);

    let (mut store, runtime) = open();
    assert_eq!(store.reader().digest().unwrap(), before);
    let (applied, _) = block_on(store.applied_state()).unwrap();
    assert_eq!(applied.unwrap().index, 2);
    // The module is not compiled again after the restart: it comes from the disk cache.
    let responses =
        block_on(store.apply([log.entry(invoke("counter", &1u64.to_le_bytes(), None))])).unwrap();
    assert_eq!(output(&responses[0]), 4);
    assert_eq!(runtime.stats().compilations, 0, "{:?}", runtime.stats());
}

/// Each caller's sessions are bounded: opening one more forgets that
/// caller's least recently used session, never another caller's, and a
/// forgotten session's later commands are refused rather than risk applying
/// one twice.
#[test]
fn sessions_are_bounded_per_caller_and_forgotten_ones_are_refused() {
    let mut replica = replica();
    let mut log = Log { next: 1 };
    let one = 1u64.to_le_bytes();
    let rows: Vec<(&str, Command, Check)> = vec![
        (
            "alice",
            settings(&[("sessions_per_caller_max", 2)]),
            Box::new(|r| assert!(matches!(r, Response::Settings(_)), "{r:?}")),
        ),
        (
            "alice",
            deploy("counter", counter_wasm()),
            Box::new(|r| assert!(matches!(r, Response::Deployed(_)))),
        ),
        ("bob", open_session("b"), Box::new(|_| {})),
        ("alice", open_session("a1"), Box::new(|_| {})),
        ("alice", open_session("a2"), Box::new(|_| {})),
        (
            "alice",
            invoke("counter", &one, Some(("a1.4.0", 1))),
            Box::new(|r| assert_eq!(output(r), 1)),
        ),
        (
            "alice",
            invoke("counter", &one, Some(("a2.5.0", 1))),
            Box::new(|r| assert_eq!(output(r), 2)),
        ),
        // "a1" is used again, so "a2" becomes alice's least recently used.
        (
            "alice",
            invoke("counter", &one, Some(("a1.4.0", 2))),
            Box::new(|r| assert_eq!(output(r), 3)),
        ),
        (
            "bob",
            invoke("counter", &one, Some(("b.3.0", 1))),
            Box::new(|r| assert_eq!(output(r), 4)),
        ),
        // A third session of alice's forgets "a2", not bob's older "b".
        ("alice", open_session("a3"), Box::new(|_| {})),
        (
            "alice",
            invoke("counter", &one, Some(("a2.5.0", 2))),
            Box::new(is_expired),
        ),
        // A retry of the forgotten session's first command is refused too:
        // it may have been applied, so it is never applied again.
        (
            "alice",
            invoke("counter", &one, Some(("a2.5.0", 1))),
            Box::new(is_expired),
        ),
        (
            "bob",
            invoke("counter", &one, Some(("b.3.0", 1))),
            Box::new(|r| assert_eq!(output(r), 4)),
        ),
        (
            "alice",
            invoke("counter", &one, Some(("a1.4.0", 2))),
            Box::new(|r| assert_eq!(output(r), 3)),
        ),
        // A session is the caller's own: bob cannot use alice's.
        (
            "bob",
            invoke("counter", &one, Some(("a1.4.0", 3))),
            Box::new(is_expired),
        ),
    ];
    block_on(async {
        for (caller, command, check) in rows {
            let responses = replica
                .store
                .apply([log.entry_of(caller, command)])
                .await
                .unwrap();
            check(&responses[0]);
        }
    });
    assert_eq!(
        replica
            .store
            .reader()
            .module_value("counter", b"n")
            .unwrap(),
        Some(4u64.to_le_bytes().to_vec())
    );
}

/// The whole table is bounded in bytes: past it the least recently used
/// sessions of every caller go, oldest first, and the same on every replica.
#[test]
fn the_session_table_is_bounded_in_bytes() {
    let mut log = Log { next: 1 };
    let mut entries = vec![
        log.entry(settings(&[
            ("output_bytes_max", 1 << 10),
            ("session_table_bytes_max", 1 << 20),
            ("sessions_per_caller_max", 1_000_000),
        ])),
        log.entry(deploy("counter", counter_wasm())),
    ];
    // About 30 bytes each: 50,000 sessions are half again the 1 MiB bound.
    for batch in 0..10 {
        let commands: Vec<Request> = (0..5_000)
            .map(|number| Request {
                timestamp_ms: 1,
                caller: "flood".into(),
                command: open_session(&format!("session-{batch}-{number}")),
            })
            .collect();
        entries.push(log.entry(Command::Batch(commands)));
    }
    let one = 1u64.to_le_bytes();
    entries.push(log.entry_of(
        "flood",
        invoke("counter", &one, Some(("session-0-0.3.0", 1))),
    ));
    entries.push(log.entry_of("flood", open_session("last")));
    entries.push(log.entry_of("flood", invoke("counter", &one, Some(("last.14.0", 1)))));
    entries.push(log.entry_of(
        "flood",
        invoke("counter", &one, Some(("session-9-4999.12.4999", 1))),
    ));
    let replicas = [replica(), replica()];
    let mut digests = Vec::new();
    for (position, replica) in replicas.iter().enumerate() {
        let mut store = replica.store.clone();
        // One replica applies the log at once, the other entry by entry.
        let responses: Vec<Response> = if position == 0 {
            block_on(store.apply(entries.clone())).unwrap()
        } else {
            entries
                .iter()
                .flat_map(|entry| block_on(store.apply([entry.clone()])).unwrap())
                .collect()
        };
        let count = responses.len();
        // The oldest sessions were forgotten; the newest work.
        is_expired(&responses[count - 4]);
        assert_eq!(output(&responses[count - 2]), 1);
        assert_eq!(output(&responses[count - 1]), 2);
        digests.push(store.reader().digest().unwrap().1);
    }
    assert_eq!(digests[0], digests[1]);
}

/// One entry carrying several commands: each is applied in order with its
/// own caller and timestamp and a seed of its own; a nested batch is refused
/// and changes nothing; replicas agree.
#[test]
fn a_batch_applies_each_command_with_its_own_context() {
    let environment = wat::parse_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/wasm/environment.wat"
    ))
    .unwrap();
    let request = |caller: &str, timestamp_ms: i64, command: Command| Request {
        timestamp_ms,
        caller: caller.into(),
        command,
    };
    // After the deploys' timestamps (1.7e12 + index); bob's command was
    // stamped earlier than alice's, by another node's clock.
    const T: i64 = 1_800_000_000_000;
    let batch = Command::Batch(vec![
        request("alice", T + 10, invoke("env", b"", None)),
        request("bob", T + 5, invoke("env", b"", None)),
        request(
            "carol",
            30,
            invoke("counter", &5u64.to_le_bytes(), Some(("c", 1))),
        ),
        request(
            "dave",
            40,
            Command::Batch(vec![request(
                "eve",
                50,
                invoke("counter", &1u64.to_le_bytes(), None),
            )]),
        ),
        request(
            "carol",
            60,
            invoke("counter", &5u64.to_le_bytes(), Some(("c", 1))),
        ),
    ]);
    let run = || {
        let mut replica = replica();
        let mut log = Log { next: 1 };
        let responses = block_on(replica.store.apply([
            log.entry(deploy("env", environment.clone())),
            log.entry(deploy("counter", counter_wasm())),
            log.entry(batch.clone()),
        ]))
        .unwrap();
        let digest = replica.store.reader().digest().unwrap().1;
        (responses.into_iter().nth(2).unwrap(), digest, replica)
    };
    let (response, digest, replica) = run();
    let Response::Batch(responses) = response else {
        panic!("a batch answers a batch: {response:?}");
    };
    assert_eq!(responses.len(), 5);
    let environment_of = |response: &Response| match response {
        Response::Invoked(result) => match &result.outcome {
            CallOutcome::Ok(bytes) => {
                let timestamp = i64::from_le_bytes(bytes[..8].try_into().unwrap());
                (
                    timestamp,
                    bytes[8..40].to_vec(),
                    String::from_utf8(bytes[40..].to_vec()).unwrap(),
                )
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let (alice_time, alice_seed, alice) = environment_of(&responses[0]);
    let (bob_time, bob_seed, bob) = environment_of(&responses[1]);
    assert_eq!((alice_time, alice.as_str()), (T + 10, "alice"));
    // Time never runs backwards for a module: bob sees alice's time.
    assert_eq!((bob_time, bob.as_str()), (T + 10, "bob"));
    assert_ne!(alice_seed, bob_seed, "commands of one entry share a seed");
    assert_eq!(output(&responses[2]), 5);
    assert_eq!(responses[3], Response::Refused(Refusal::NestedBatch));
    // The session retry inside the same batch answers the first result.
    assert_eq!(responses[4], responses[2]);
    assert_eq!(
        replica
            .store
            .reader()
            .module_value("counter", b"n")
            .unwrap(),
        Some(5u64.to_le_bytes().to_vec())
    );
    assert_eq!(run().1, digest, "two replicas disagree on a batch");
}

/// A kv example command, as the module takes it.
fn kv(command: serde_json::Value) -> Command {
    invoke("kv", command.to_string().as_bytes(), None)
}

fn put(key: &str, value: &str) -> Command {
    kv(serde_json::json!({"op": "put", "key": key, "value": value}))
}

/// Whether `response` is a call its module's storage quota refused.
fn over_quota(response: &Response) -> bool {
    matches!(
        response,
        Response::Invoked(result) if matches!(result.outcome, CallOutcome::StorageQuota { .. })
    )
}

/// Whether `response` is a call that succeeded.
fn succeeded(response: &Response) -> bool {
    matches!(response, Response::Invoked(result) if result.outcome.is_ok())
}

/// The storage quota is replicated and enforced at apply: a call whose
/// writes would take its module past the quota commits none of them, a call
/// that shrinks a module over a lowered quota commits, and the usage the
/// quota is checked against is the same after a restart and on a replica
/// that installed a snapshot, so every replica decides alike.
#[test]
fn storage_quotas_refuse_growth_and_hold_across_restart_and_snapshot() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let leader_directory = TempDir::new().unwrap();
    let follower_directory = TempDir::new().unwrap();
    let usage = |keys: u64, bytes: u64| ModuleUsage { keys, bytes };
    let mut log = Log { next: 1 };
    block_on(async {
        let mut leader = StateMachineStore::open(leader_directory.path(), runtime.clone()).unwrap();
        let responses = leader
            .apply([
                log.entry(settings(&[
                    ("module_storage_keys_max", 3),
                    ("module_storage_bytes_max", 1024),
                ])),
                log.entry(deploy("kv", wasmraft_examples::KV_WASM.to_vec())),
                log.entry(put("a", "1")),
                log.entry(put("b", "22")),
                log.entry(put("c", "333")),
                // A fourth key.
                log.entry(put("d", "4")),
                // No new key, but past 1,024 bytes.
                log.entry(put("a", &"x".repeat(1100))),
                // No new key and within the bytes.
                log.entry(put("a", &"y".repeat(100))),
            ])
            .await
            .unwrap();
        assert!(
            matches!(responses[1], Response::Deployed(_)),
            "{responses:?}"
        );
        assert!(responses[2..5].iter().all(succeeded), "{responses:?}");
        assert!(over_quota(&responses[5]), "{:?}", responses[5]);
        let Response::Invoked(refused) = &responses[6] else {
            panic!("{:?}", responses[6]);
        };
        assert_eq!(
            refused.outcome,
            CallOutcome::StorageQuota {
                bytes: 1 + 1100 + 3 + 4,
                keys: 3,
                bytes_max: 1024,
                keys_max: 3,
            }
        );
        assert!(succeeded(&responses[7]), "{:?}", responses[7]);
        let reader = leader.reader();
        assert_eq!(reader.module_value("kv", b"d").unwrap(), None);
        assert_eq!(
            reader.module_value("kv", b"a").unwrap(),
            Some(b"y".repeat(100))
        );
        assert_eq!(reader.usage("kv").unwrap(), usage(3, 101 + 3 + 4));

        // Lowered below what the module holds: it may shrink, not grow.
        let responses = leader
            .apply([
                log.entry(settings(&[("module_storage_keys_max", 2)])),
                log.entry(put("d", "4")),
                log.entry(kv(serde_json::json!({"op": "delete", "key": "c"}))),
                log.entry(put("c", "3")),
                log.entry(put("b", "2")),
            ])
            .await
            .unwrap();
        assert!(over_quota(&responses[1]), "{:?}", responses[1]);
        assert!(succeeded(&responses[2]), "{:?}", responses[2]);
        assert!(over_quota(&responses[3]), "{:?}", responses[3]);
        assert!(succeeded(&responses[4]), "{:?}", responses[4]);
        assert_eq!(reader.usage("kv").unwrap(), usage(2, 101 + 2));

        // A snapshot carries the usage to a fresh replica.
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut follower =
            StateMachineStore::open(follower_directory.path(), runtime.clone()).unwrap();
        crate::storage::install(&mut follower, snapshot).await;
        assert_eq!(follower.reader().usage("kv").unwrap(), usage(2, 103));

        // Both replicas decide the next calls alike.
        let next = [put("e", "5"), put("b", "")];
        let mut entries = Vec::new();
        for command in next {
            entries.push(log.entry(command));
        }
        let on_leader = leader.apply(entries.clone()).await.unwrap();
        let on_follower = follower.apply(entries).await.unwrap();
        assert_eq!(on_leader, on_follower);
        assert!(over_quota(&on_leader[0]), "{:?}", on_leader[0]);
        assert!(succeeded(&on_leader[1]), "{:?}", on_leader[1]);
        assert_eq!(
            leader.reader().digest().unwrap(),
            follower.reader().digest().unwrap()
        );
        assert_eq!(follower.reader().usage("kv").unwrap(), usage(2, 101 + 1));
    });

    // The usage survives a restart, and the quota holds after it.
    block_on(async {
        let mut follower =
            StateMachineStore::open(follower_directory.path(), runtime.clone()).unwrap();
        assert_eq!(follower.reader().usage("kv").unwrap(), usage(2, 102));
        let responses = follower
            .apply([
                log.entry(put("f", "6")),
                log.entry(Command::Remove { name: "kv".into() }),
            ])
            .await
            .unwrap();
        assert!(over_quota(&responses[0]), "{:?}", responses[0]);
        // Removing a module forgets its usage.
        assert_eq!(follower.reader().usage("kv").unwrap(), usage(0, 0));
    });
}
