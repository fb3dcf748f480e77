//! The fuzz targets' corpus (`fuzz/corpus/<target>/`), replayed on stable
//! Rust: every input a fuzzer kept, or a crash it found and we fixed, runs
//! through the same check as the target (`wasmraft::fuzzing`). Seeds are
//! written from real data by `WASMRAFT_WRITE_SEEDS=1` (see `seeds`).

use std::path::{Path, PathBuf};

use wasmraft::command::{Command, Invoke, Request, SessionId, codec};
use wasmraft::fuzzing;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 5] = [
    ("decoders", fuzzing::decoders),
    ("api_requests", fuzzing::api_requests),
    ("snapshot", fuzzing::snapshot),
    ("validate", fuzzing::validate),
    ("kv_overlay", fuzzing::kv_overlay),
];

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Seeds made from real data: encoded commands, a snapshot of the storage
/// fixture, the example modules, overlay scripts.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "decoders" => {
            let invoke = Request {
                timestamp_ms: 1_700_000_000_000,
                caller: "alice".into(),
                command: Command::Invoke(Invoke {
                    module: "counter".into(),
                    input: br#"{"op":"add","by":1}"#.to_vec(),
                    session: Some(SessionId {
                        client_id: "c1".into(),
                        sequence: 7,
                    }),
                }),
            };
            let batch = Request {
                command: Command::Batch(vec![invoke.clone(), invoke.clone()]),
                ..invoke.clone()
            };
            vec![
                ("invoke".into(), codec::encode(&invoke)),
                ("batch".into(), codec::encode(&batch)),
            ]
        }
        "api_requests" => {
            use prost::Message;
            use sha2::Digest;
            use wasmraft_proto::v1 as proto;
            let invoke = proto::InvokeRequest {
                module: "counter".into(),
                input: br#"{"op":"add","by":1}"#.to_vec(),
                client_id: "c1".into(),
                sequence: 7,
            };
            let settings = proto::SetSettingsRequest {
                fuel_per_call_max: Some(1_000_000),
                module_storage_keys_max: Some(10),
                ..Default::default()
            };
            let grant = proto::GrantRequest {
                binding: Some(proto::RoleBinding {
                    subject: "alice".into(),
                    role: proto::Role::ModuleInvoker as i32,
                    module_pattern: Some("kv-*".into()),
                }),
            };
            let add = proto::AddNodeRequest {
                node_id: 4,
                address: "127.0.0.1:7074".into(),
            };
            // A deploy stream: a header, then the module in two chunks.
            let module = wasmraft_examples::COUNTER_WASM;
            let header = proto::DeployChunk {
                content: Some(proto::deploy_chunk::Content::Header(proto::DeployHeader {
                    name: "counter".into(),
                    sha256_hex: hex::encode(sha2::Sha256::digest(module)),
                    size_bytes: module.len() as u64,
                    ..Default::default()
                })),
            };
            let mut deploy = header.encode_length_delimited_to_vec();
            for part in module.chunks(module.len() / 2 + 1) {
                let chunk = proto::DeployChunk {
                    content: Some(proto::deploy_chunk::Content::Data(part.to_vec())),
                };
                deploy.extend(chunk.encode_length_delimited_to_vec());
            }
            vec![
                ("invoke".into(), invoke.encode_to_vec()),
                ("settings".into(), settings.encode_to_vec()),
                ("grant".into(), grant.encode_to_vec()),
                ("add-node".into(), add.encode_to_vec()),
                ("deploy".into(), deploy),
            ]
        }
        "snapshot" => {
            let mut writer = wasmraft::storage::SnapshotFileWriter::new(Vec::new()).unwrap();
            writer.record(0xfe, b"meta", &[1, 0, 0, 0]).unwrap();
            writer.record(0, b"format", &codec::encode(&1u32)).unwrap();
            writer
                .record(3, b"counter\0n", &7u64.to_le_bytes())
                .unwrap();
            let (bytes, _) = writer.finish().unwrap();
            vec![("three-records".into(), bytes)]
        }
        "validate" => {
            let module = |items: &str| {
                wat::parse_str(format!(
                    r#"(module
                        (import "wasmraft" "kv_get" (func (param i32 i32) (result i64)))
                        (memory (export "memory") 1)
                        (func (export "wasmraft_abi_version_1"))
                        (func (export "wasmraft_alloc") (param i32) (result i32) (i32.const 0))
                        (func (export "apply") (param i32 i32) (result i32) (i32.const 0))
                        {items})"#
                ))
                .unwrap()
            };
            vec![
                ("minimal".into(), module("")),
                (
                    "with-query-and-table".into(),
                    module(
                        r#"(func (export "query") (param i32 i32) (result i32) (i32.const 1))
                           (table 2 funcref) (global (mut i32) (i32.const 0))
                           (data (i32.const 16) "hello")"#,
                    ),
                ),
            ]
        }
        "kv_overlay" => vec![
            // 4 stored keys, then sets, deletes and scans over them.
            (
                "mixed".into(),
                (0u8..=255).cycle().step_by(7).take(600).collect(),
            ),
        ],
        _ => Vec::new(),
    }
}

#[test]
fn every_corpus_input_passes_its_target_check() {
    let write = std::env::var_os("WASMRAFT_WRITE_SEEDS").is_some();
    let mut replayed = 0;
    for (target, check) in TARGETS {
        let directory = corpus(target);
        if write {
            std::fs::create_dir_all(&directory).unwrap();
            for (name, bytes) in seeds(target) {
                std::fs::write(directory.join(format!("seed-{name}")), bytes).unwrap();
            }
        }
        let entries = std::fs::read_dir(&directory)
            .unwrap_or_else(|error| panic!("{}: {error}", directory.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(
                outcome.is_ok(),
                "{target}: {} fails its check",
                path.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len(), "the corpus is missing");
}
