//! The fixtures on disk: where they are, what `expected.json` records, and
//! packing data directories to `.tar.zst` and back.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The directory of every release's fixtures.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/storage")
}

/// Every release directory under [`root`], in name order.
pub fn releases() -> Vec<PathBuf> {
    let mut releases: Vec<PathBuf> = fs::read_dir(root())
        .expect("tests/fixtures/storage exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("expected.json").is_file())
        .collect();
    releases.sort();
    releases
}

/// What a fixture must show when opened: `expected.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expected {
    /// Which code wrote the fixture: package version and git commit.
    pub made_by: String,
    /// The state database's format version and the record encoding version
    /// the writing release used.
    pub state_format: u32,
    pub encoding_version: u8,
    pub dev: Group,
    pub cluster: Group,
}

/// One fixture archive: its nodes and the answers its modules gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub archive: String,
    pub nodes: BTreeMap<u64, NodeRecord>,
    pub answers: Vec<Answer>,
}

/// A node as it stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The address the node listened on and the membership records; a
    /// cluster fixture's nodes must listen there again to reach each other.
    pub address: String,
    pub applied_index: u64,
    pub digest: String,
    /// The log had been purged up to here (a snapshot covers the rest).
    pub last_purged_index: Option<u64>,
}

/// A query and its output, both JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub module: String,
    pub input: String,
    pub output: String,
}

/// The directory of node `id` inside an unpacked archive.
pub fn node_directory(unpacked: &Path, id: u64) -> PathBuf {
    unpacked.join(format!("node-{id}"))
}

/// Packs the data directories of `nodes` into `archive`, leaving out the
/// module cache: it is derived from the state, specific to one engine build,
/// and large.
pub fn pack(nodes: &BTreeMap<u64, PathBuf>, archive: &Path) {
    let file = fs::File::create(archive).unwrap();
    let encoder = zstd::Encoder::new(file, 19).unwrap();
    let mut builder = tar::Builder::new(encoder);
    builder.mode(tar::HeaderMode::Deterministic);
    for (id, directory) in nodes {
        for relative in ["log.redb", "state/state.redb", "state/snapshot.bin"] {
            let path = directory.join(relative);
            if path.exists() {
                builder
                    .append_path_with_name(&path, format!("node-{id}/{relative}"))
                    .unwrap();
            }
        }
    }
    builder.into_inner().unwrap().finish().unwrap();
}

/// Unpacks `archive` into `into`.
pub fn unpack(archive: &Path, into: &Path) {
    let file = fs::File::open(archive)
        .unwrap_or_else(|error| panic!("cannot open fixture {}: {error}", archive.display()));
    tar::Archive::new(zstd::Decoder::new(file).unwrap())
        .unpack(into)
        .unwrap();
}

/// Raft timing for fixture nodes: the test harness's, with snapshots every
/// 16 entries so that a short history is snapshotted and its log purged.
pub fn raft_settings() -> wasmraft::node::config::RaftSettings {
    wasmraft::node::config::RaftSettings {
        snapshot_after_entries: 16,
        ..crate::cluster::harness::test_raft_settings()
    }
}

/// Starts node `id` on `directory`, listening on `listen`.
pub async fn launch(
    id: u64,
    directory: &Path,
    listen: std::net::SocketAddr,
    bootstrap: bool,
) -> wasmraft::node::RunningNode {
    let config = wasmraft::node::config::NodeConfig {
        node_id: id,
        listen,
        advertise: None,
        data_dir: directory.to_path_buf(),
        bootstrap,
        cluster_secret_file: None,
        insecure: true,
        tls: Default::default(),
        raft: raft_settings(),
        limits: Default::default(),
        membership: Default::default(),
        cluster: Default::default(),
        telemetry: Default::default(),
    };
    let options = wasmraft::node::NodeOptions {
        consensus_timeout: std::time::Duration::from_secs(60),
        ..wasmraft::node::NodeOptions::default()
    };
    wasmraft::node::Node::start(config, options)
        .await
        .unwrap_or_else(|error| panic!("node {id} starts on {}: {error}", directory.display()))
}

/// A client of `endpoint` that waits out elections on a busy machine.
pub async fn client(address: std::net::SocketAddr) -> wasmraft::client::Client {
    wasmraft::client::Client::connect_with(
        &format!("http://{address}"),
        wasmraft::client::ClientConfig {
            request_timeout: std::time::Duration::from_secs(10),
            retry_deadline: crate::cluster::harness::SETTLE,
            ..wasmraft::client::ClientConfig::default()
        },
    )
    .await
    .unwrap()
}

/// The queries every fixture answers, as (module, input).
pub const QUERIES: [(&str, &str); 7] = [
    ("counter", r#"{"op":"get"}"#),
    ("kv", r#"{"op":"get","key":"greeting"}"#),
    ("kv", r#"{"op":"get","key":"k05"}"#),
    ("kv", r#"{"op":"scan","prefix":"","limit":100}"#),
    ("bank", r#"{"op":"total"}"#),
    ("bank", r#"{"op":"balance","account":"alice"}"#),
    ("bank", r#"{"op":"balance","account":"bob"}"#),
];

/// Runs [`QUERIES`] linearizably through `client`.
pub async fn answers(client: &wasmraft::client::Client) -> Vec<Answer> {
    let mut answers = Vec::new();
    for (module, input) in QUERIES {
        let output = client
            .query(
                module,
                input.as_bytes(),
                wasmraft::client::Consistency::Linearizable,
            )
            .await
            .unwrap_or_else(|error| panic!("{module} answers {input}: {error}"))
            .output;
        answers.push(Answer {
            module: module.to_owned(),
            input: input.to_owned(),
            output: String::from_utf8(output).unwrap(),
        });
    }
    answers
}

/// The applied index and state digest of a running node.
pub async fn digest(node: &wasmraft::node::RunningNode) -> (u64, String) {
    let reader = node.handle().reader().clone();
    let (applied, digest) = tokio::task::spawn_blocking(move || reader.digest())
        .await
        .unwrap()
        .unwrap();
    (applied.map_or(0, |log_id| log_id.index), digest.to_string())
}

/// Waits until every node in `nodes` applied the last index any of them
/// logged (nothing is written meanwhile), then returns each one's record;
/// their digests must be equal.
pub async fn converged(
    nodes: &BTreeMap<u64, wasmraft::node::RunningNode>,
) -> BTreeMap<u64, NodeRecord> {
    let last_log = nodes
        .values()
        .filter_map(|node| node.handle().cluster_view().last_log_index)
        .max()
        .unwrap_or(0);
    let mut records = BTreeMap::new();
    for (id, node) in nodes {
        let metrics = node
            .consensus()
            .raft()
            .wait(Some(crate::cluster::harness::SETTLE))
            .applied_index_at_least(Some(last_log), "apply the whole log")
            .await
            .unwrap_or_else(|error| panic!("node {id} did not apply up to {last_log}: {error}"));
        let (applied_index, digest) = digest(node).await;
        records.insert(
            *id,
            NodeRecord {
                address: node.local_addr().to_string(),
                applied_index,
                digest,
                last_purged_index: metrics.purged.map(|log_id| log_id.index),
            },
        );
    }
    let first = records.values().next().unwrap();
    assert!(
        records
            .values()
            .all(|record| record.applied_index == last_log && record.digest == first.digest),
        "the nodes applied the whole log but differ: {records:?}, last log index {last_log}"
    );
    records
}
