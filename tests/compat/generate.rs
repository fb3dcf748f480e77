//! Writes the fixtures of the current storage format. Run it only when a
//! release changes the format, into a new release directory, and commit what
//! it wrote (see the README's "Upgrading"):
//!
//! ```sh
//! WASMRAFT_FIXTURE_RELEASE=v2 cargo test -p wasmraft --test integration \
//!     compat::generate -- --ignored
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use wasmraft::client::{Client, DeployOptions};
use wasmraft::node::RunningNode;

use super::fixture::{self, Expected, Group};

/// Where the cluster fixture's nodes listen. Loopback addresses of their own
/// and a port below Linux's ephemeral range, so that reopening the fixture
/// (which must listen where its membership says) does not collide with the
/// ports other tests are given.
pub const CLUSTER_ADDRESSES: [(u64, &str); 3] = [
    (1, "127.0.15.1:27015"),
    (2, "127.0.15.2:27015"),
    (3, "127.0.15.3:27015"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "writes fixtures into the source tree; run by hand when the format changes"]
async fn generate() {
    let release = std::env::var("WASMRAFT_FIXTURE_RELEASE")
        .expect("set WASMRAFT_FIXTURE_RELEASE to the fixture directory name, such as v2");
    let output = fixture::root().join(&release);
    std::fs::create_dir_all(&output).unwrap();
    let dev = dev(&output).await;
    let cluster = cluster(&output).await;
    let expected = Expected {
        made_by: format!(
            "wasmraft {} at commit {}",
            env!("CARGO_PKG_VERSION"),
            commit()
        ),
        state_format: wasmraft::storage::format::STATE_FORMAT,
        encoding_version: wasmraft::command::codec::ENCODING_VERSION,
        dev,
        cluster,
    };
    std::fs::write(
        output.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}

/// A dev node: one voter, the examples deployed, a snapshot, a purged log,
/// and entries after the snapshot.
async fn dev(output: &Path) -> Group {
    let directory = TempDir::new().unwrap();
    let node = fixture::launch(1, directory.path(), "127.0.0.1:0".parse().unwrap(), true).await;
    let client = fixture::client(node.local_addr()).await;
    deploy_examples(&client).await;
    write_history(&client, "dev").await;
    snapshot_and_purge(&client, &node).await;
    write_after_snapshot(&client).await;
    let answers = fixture::answers(&client).await;
    let nodes = BTreeMap::from([(1, node)]);
    let records = fixture::converged(&nodes).await;
    stop(nodes).await;
    let archive = "dev.tar.zst".to_owned();
    fixture::pack(
        &BTreeMap::from([(1, directory.path().to_path_buf())]),
        &output.join(&archive),
    );
    Group {
        archive,
        nodes: records,
        answers,
    }
}

/// A three-node cluster grown from node 1 through `Cluster.AddNode`, written
/// through a follower as well as the leader.
async fn cluster(output: &Path) -> Group {
    let directories: BTreeMap<u64, TempDir> = CLUSTER_ADDRESSES
        .iter()
        .map(|(id, _)| (*id, TempDir::new().unwrap()))
        .collect();
    let mut nodes: BTreeMap<u64, RunningNode> = BTreeMap::new();
    for (id, address) in CLUSTER_ADDRESSES {
        let address: SocketAddr = address.parse().unwrap();
        let node = fixture::launch(id, directories[&id].path(), address, id == 1).await;
        if id == 1 {
            node.handle()
                .wait_for_leader(crate::cluster::harness::SETTLE)
                .await
                .expect("node 1 leads");
        } else {
            fixture::client(nodes[&1u64].local_addr())
                .await
                .add_node(id, &address.to_string(), crate::cluster::harness::SETTLE)
                .await
                .expect("the node joins");
        }
        nodes.insert(id, node);
    }
    let leader = fixture::client(nodes[&1].local_addr()).await;
    let follower = fixture::client(nodes[&2].local_addr()).await;
    deploy_examples(&leader).await;
    write_history(&follower, "cluster").await;
    for node in nodes.values() {
        snapshot_and_purge(&fixture::client(node.local_addr()).await, node).await;
    }
    write_after_snapshot(&leader).await;
    let answers = fixture::answers(&follower).await;
    let records = fixture::converged(&nodes).await;
    stop(nodes).await;
    let archive = "cluster.tar.zst".to_owned();
    let paths: BTreeMap<u64, PathBuf> = directories
        .iter()
        .map(|(id, directory)| (*id, directory.path().to_path_buf()))
        .collect();
    fixture::pack(&paths, &output.join(&archive));
    Group {
        archive,
        nodes: records,
        answers,
    }
}

async fn deploy_examples(client: &Client) {
    for (name, wasm) in [
        ("counter", wasmraft_examples::COUNTER_WASM),
        ("kv", wasmraft_examples::KV_WASM),
        ("bank", wasmraft_examples::BANK_WASM),
        // Deployed and removed: the state keeps its blob until nothing
        // refers to it.
        ("scratch", wasmraft_examples::KV_WASM),
    ] {
        client
            .deploy(name, wasm, DeployOptions::default())
            .await
            .unwrap_or_else(|error| panic!("{name} deploys: {error}"));
    }
    client.remove_module("scratch").await.unwrap();
}

/// More than two snapshot intervals of commands to every example.
async fn write_history(client: &Client, greeting: &str) {
    let invoke = |module: &'static str, input: String| async move {
        client
            .invoke(module, input.as_bytes())
            .await
            .unwrap_or_else(|error| panic!("{module} takes {input}: {error}"));
    };
    for by in 1..=12 {
        invoke("counter", format!(r#"{{"op":"add","by":{by}}}"#)).await;
    }
    for index in 0..20 {
        invoke(
            "kv",
            format!(r#"{{"op":"put","key":"k{index:02}","value":"v{index}"}}"#),
        )
        .await;
    }
    invoke("kv", r#"{"op":"delete","key":"k05"}"#.to_owned()).await;
    invoke(
        "kv",
        format!(r#"{{"op":"put","key":"greeting","value":"hello from {greeting}"}}"#),
    )
    .await;
    invoke(
        "bank",
        r#"{"op":"open","account":"alice","balance":100}"#.to_owned(),
    )
    .await;
    invoke(
        "bank",
        r#"{"op":"open","account":"bob","balance":0}"#.to_owned(),
    )
    .await;
    invoke(
        "bank",
        r#"{"op":"transfer","from":"alice","to":"bob","amount":30}"#.to_owned(),
    )
    .await;
}

/// Entries past the last snapshot, which a restart replays from the log.
async fn write_after_snapshot(client: &Client) {
    client
        .invoke("counter", br#"{"op":"add","by":100}"#)
        .await
        .unwrap();
    client
        .invoke(
            "kv",
            br#"{"op":"put","key":"after-snapshot","value":"from the log"}"#,
        )
        .await
        .unwrap();
}

/// Builds a snapshot on `node` once it applied its whole log, and waits
/// until the snapshot covers it and the log behind it is purged. A request
/// that arrives while another snapshot is being built is dropped by Raft, so
/// it is repeated until it takes.
async fn snapshot_and_purge(client: &Client, node: &RunningNode) {
    let deadline = Instant::now() + crate::cluster::harness::SETTLE;
    loop {
        let caught_up = node
            .consensus()
            .raft()
            .wait(Some(crate::cluster::harness::SETTLE))
            .metrics(
                |metrics| metrics.last_applied.map(|log_id| log_id.index) == metrics.last_log_index,
                "apply the whole log",
            )
            .await
            .expect("the node applies its log");
        let applied = caught_up.last_applied.map_or(0, |log_id| log_id.index);
        client.snapshot().await.unwrap();
        let done = node
            .consensus()
            .raft()
            .wait(Some(Duration::from_secs(1)))
            .metrics(
                |metrics| {
                    metrics.snapshot.map(|log_id| log_id.index) == Some(applied)
                        && metrics.purged.is_some()
                },
                "a snapshot of the whole log and a purged log",
            )
            .await;
        if done.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot of the whole log with a purged log: {:?}",
            node.consensus().raft().metrics().borrow()
        );
    }
}

async fn stop(nodes: BTreeMap<u64, RunningNode>) {
    for (id, node) in nodes {
        node.shutdown()
            .await
            .unwrap_or_else(|error| panic!("node {id} stops: {error}"));
    }
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}
