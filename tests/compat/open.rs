//! The current code opens every fixture: same digest, same answers, new
//! writes accepted; the cluster fixture elects, takes writes through a
//! follower and a new member made by the current code.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tempfile::TempDir;
use wasmraft::client::Consistency;
use wasmraft::node::RunningNode;

use super::fixture::{self, Expected, Group};
use crate::cluster::harness::SETTLE;

fn expected_of(release: &std::path::Path) -> Expected {
    let text = std::fs::read_to_string(release.join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Waits until `node` applied at least `index`.
async fn applied_at_least(node: &RunningNode, index: u64) {
    node.consensus()
        .raft()
        .wait(Some(SETTLE))
        .applied_index_at_least(Some(index), "apply the fixture's log")
        .await
        .unwrap_or_else(|error| panic!("node {} did not apply up to {index}: {error}", node.id()));
}

/// Asserts that every node of `group` holds the recorded state: applied at
/// least as far as recorded (an election appends blank entries, which do
/// not change the state) with the recorded digest.
async fn assert_recorded_state(group: &Group, nodes: &BTreeMap<u64, RunningNode>, release: &str) {
    for (id, node) in nodes {
        let record = &group.nodes[id];
        applied_at_least(node, record.applied_index).await;
        let (_, digest) = fixture::digest(node).await;
        assert_eq!(
            digest, record.digest,
            "{release}: node {id} opened the fixture with another state"
        );
    }
}

async fn assert_answers(group: &Group, client: &wasmraft::client::Client, release: &str) {
    let answers = fixture::answers(client).await;
    assert_eq!(
        answers, group.answers,
        "{release}: the modules answer otherwise"
    );
}

/// A write through `client` and its effect on the counter.
async fn assert_accepts_writes(client: &wasmraft::client::Client, release: &str) {
    let before = counter(client).await;
    client
        .invoke("counter", br#"{"op":"add","by":7}"#)
        .await
        .unwrap_or_else(|error| panic!("{release}: a write after opening fails: {error}"));
    assert_eq!(counter(client).await, before + 7, "{release}");
    client
        .invoke("kv", br#"{"op":"put","key":"reopened","value":"yes"}"#)
        .await
        .unwrap();
}

/// The `kv` module's storage usage (counted by the migration for a state
/// that predates it) is what its keys hold; a quota is in force only where
/// the settings were recorded with one (state format 3 on).
async fn assert_usage_counts_the_keys(
    client: &wasmraft::client::Client,
    release: &str,
    state_format: u32,
) {
    let output = client
        .query(
            "kv",
            br#"{"op":"scan","prefix":"","limit":1000}"#,
            Consistency::Linearizable,
        )
        .await
        .unwrap()
        .output;
    let scan: serde_json::Value = serde_json::from_slice(&output).unwrap();
    let items = scan["items"].as_array().unwrap();
    assert!(!items.is_empty() && items.len() < 1000, "{release}: {scan}");
    let bytes: usize = items
        .iter()
        .map(|item| item[0].as_str().unwrap().len() + item[1].as_str().unwrap().len())
        .sum();
    let usage = client.get_module("kv").await.unwrap().storage;
    assert_eq!(
        (usage.keys, usage.bytes),
        (items.len() as u64, bytes as u64),
        "{release}: the usage of `kv` is not what its keys hold"
    );
    assert_eq!(
        (usage.keys_max.is_some(), usage.bytes_max.is_some()),
        (state_format >= 3, state_format >= 3),
        "{release}: {usage:?}"
    );
}

async fn counter(client: &wasmraft::client::Client) -> i64 {
    let output = client
        .query("counter", br#"{"op":"get"}"#, Consistency::Linearizable)
        .await
        .unwrap()
        .output;
    serde_json::from_slice::<serde_json::Value>(&output).unwrap()["value"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dev_node_of_every_release_opens_answers_and_writes() {
    let releases = fixture::releases();
    assert!(!releases.is_empty(), "no storage fixtures found");
    for release in releases {
        let name = release.file_name().unwrap().to_string_lossy().into_owned();
        let expected = expected_of(&release);
        let unpacked = TempDir::new().unwrap();
        fixture::unpack(&release.join(&expected.dev.archive), unpacked.path());
        let directory = fixture::node_directory(unpacked.path(), 1);
        for round in ["first open", "restart"] {
            let node = fixture::launch(1, &directory, "127.0.0.1:0".parse().unwrap(), false).await;
            let nodes = BTreeMap::from([(1, node)]);
            if round == "first open" {
                assert_recorded_state(&expected.dev, &nodes, &name).await;
                let client = fixture::client(nodes[&1].local_addr()).await;
                assert_answers(&expected.dev, &client, &name).await;
                assert_usage_counts_the_keys(&client, &name, expected.state_format).await;
                assert_accepts_writes(&client, &name).await;
            } else {
                // What the first open wrote is still there.
                let client = fixture::client(nodes[&1].local_addr()).await;
                let output = client
                    .query(
                        "kv",
                        br#"{"op":"get","key":"reopened"}"#,
                        Consistency::Linearizable,
                    )
                    .await
                    .unwrap()
                    .output;
                assert_eq!(output, br#"{"value":"yes"}"#, "{name}");
            }
            for (_, node) in nodes {
                node.shutdown().await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_of_every_release_elects_writes_and_takes_a_new_member() {
    for release in fixture::releases() {
        let name = release.file_name().unwrap().to_string_lossy().into_owned();
        let expected = expected_of(&release);
        let unpacked = TempDir::new().unwrap();
        fixture::unpack(&release.join(&expected.cluster.archive), unpacked.path());
        let mut nodes = BTreeMap::new();
        for (id, record) in &expected.cluster.nodes {
            let address: SocketAddr = record.address.parse().unwrap();
            let directory = fixture::node_directory(unpacked.path(), *id);
            nodes.insert(*id, fixture::launch(*id, &directory, address, false).await);
        }
        for node in nodes.values() {
            node.handle()
                .wait_for_leader(SETTLE)
                .await
                .unwrap_or_else(|| panic!("{name}: the fixture cluster elects no leader"));
        }
        assert_recorded_state(&expected.cluster, &nodes, &name).await;
        let follower = nodes
            .values()
            .find(|node| node.handle().cluster_view().leader_id != Some(node.id()))
            .expect("a follower");
        let client = fixture::client(follower.local_addr()).await;
        assert_answers(&expected.cluster, &client, &name).await;
        assert_accepts_writes(&client, &name).await;

        // A member made by the current code joins the fixture's members and
        // catches up from their snapshot and log.
        let new_directory = TempDir::new().unwrap();
        let new_node = fixture::launch(
            4,
            new_directory.path(),
            "127.0.0.1:0".parse().unwrap(),
            false,
        )
        .await;
        client
            .add_node(4, &new_node.local_addr().to_string(), SETTLE)
            .await
            .unwrap_or_else(|error| panic!("{name}: a new member cannot join: {error}"));
        nodes.insert(4, new_node);
        let records = fixture::converged(&nodes).await;
        assert_eq!(records.len(), 4);
        for (_, node) in nodes {
            node.shutdown().await.unwrap();
        }
    }
}
