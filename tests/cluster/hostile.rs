//! Hostile calls on a three-node cluster: each gets its exact code on every
//! replica's behalf, and afterwards every node is alive, restarts cleanly,
//! reaches an equal digest, and the counter still answers.

use tonic::Code;
use wasmraft::client::{ClientError, DeployOptions};

use super::harness::Cluster;
use crate::wasm::guest;

/// (what, the module's items, the code the invoke answers).
const ROWS: &[(&str, &str, Code)] = &[
    (
        // Once this entry stopped every replica for good: the write set's
        // range panicked on the inverted bounds, on every node, on replay too.
        "a write, then a scan whose start is above its end",
        r#"(func (export "apply") (param i32 i32) (result i32)
            (call $kv_set (i32.const 0) (i32.const 1) (i32.const 1) (i32.const 1))
            (drop (call $kv_scan (i32.const 4) (i32.const 1) (i32.const 1) (i32.const 1) (i32.const 10)))
            (i32.const 0))"#,
        Code::Ok,
    ),
    (
        // Too long for an HTTP/2 trailer unless the node cuts it.
        "a guest error of 20,000 bytes",
        r#"(func (export "apply") (param i32 i32) (result i32)
            (call $output (i32.const 4096) (i32.const 20000)) (i32.const 1))"#,
        Code::FailedPrecondition,
    ),
    (
        "a loop that never ends",
        r#"(func (export "apply") (param i32 i32) (result i32)
            (loop $spin (br $spin)) (i32.const 0))"#,
        Code::ResourceExhausted,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_calls_leave_every_replica_alive_and_equal() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.deploy_counter(leader).await;
    let follower = cluster.follower_of(leader);
    let client = cluster.client_of(follower).await;
    let mut failures = Vec::new();
    for (index, (what, items, expected)) in ROWS.iter().enumerate() {
        let name = format!("hostile-{index}");
        client
            .deploy(&name, &guest(items), DeployOptions::default())
            .await
            .unwrap_or_else(|error| panic!("{what}: deploy: {error}"));
        let got = match client.invoke(&name, b"the input").await {
            Ok(_) => Code::Ok,
            Err(ClientError::Status { code, message, .. }) => {
                if message.len() > 4096 {
                    failures.push(format!("{what}: a message of {} bytes", message.len()));
                }
                code
            }
            Err(other) => {
                failures.push(format!("{what}: {other}"));
                continue;
            }
        };
        if got != *expected {
            failures.push(format!("{what}: expected {expected:?}, got {got:?}"));
        }
        client
            .invoke("counter", br#"{"op":"add","by":1}"#)
            .await
            .unwrap_or_else(|error| panic!("after {what}, the counter fails: {error}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    cluster.assert_converged().await;

    // Every node restarts on what it applied, replays nothing it cannot.
    for id in cluster.running() {
        cluster.stop(id).await;
    }
    for id in [1, 2, 3] {
        cluster.launch(id, false).await;
    }
    let leader = cluster.wait_for_leader().await;
    cluster.assert_converged().await;
    assert_eq!(cluster.counter(leader).await, ROWS.len() as i64);
    cluster.shutdown().await;
}

/// `cluster settings set` as an operator uses it: sent to a follower, in
/// force on every node once applied, a bad value refused by name with
/// nothing changed, and the settings survive a restart of every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_settings_are_replicated_and_checked_by_name() {
    use wasmraft::client::SettingsUpdate;

    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let client = cluster.client_of(follower).await;
    let before = client.settings().await.unwrap();
    assert!(
        before.recorded,
        "a bootstrapped cluster records its settings"
    );
    assert_eq!(
        before.engine_fingerprint,
        cluster.node(leader).handle().runtime().engine_fingerprint()
    );

    let mut bad = SettingsUpdate::default();
    bad.set("memory_bytes_max", 100_000).unwrap();
    match client.set_settings(&bad).await {
        Err(ClientError::Status { code, message, .. }) => {
            assert_eq!(code, Code::InvalidArgument, "{message}");
            assert!(message.contains("`memory_bytes_max`"), "{message}");
        }
        other => panic!("a bad value must be refused: {other:?}"),
    }

    let mut update = SettingsUpdate::default();
    update.set("fuel_per_call_max", 20_000).unwrap();
    let (settings, index) = client.set_settings(&update).await.unwrap();
    assert_eq!(settings.fuel_per_call_max, 20_000);
    assert_eq!(
        settings.memory_bytes_max, before.settings.memory_bytes_max,
        "the bad change changed nothing"
    );
    for id in cluster.running() {
        let node = cluster.node(id);
        node.consensus()
            .raft()
            .wait(Some(std::time::Duration::from_secs(30)))
            .applied_index_at_least(Some(index), "the settings change is applied")
            .await
            .unwrap();
        assert_eq!(node.handle().settings().unwrap().fuel_per_call_max, 20_000);
    }
    // Apply uses them: a spinning call stops at the new ceiling.
    client
        .deploy("spinner", &guest(ROWS[2].1), DeployOptions::default())
        .await
        .unwrap();
    match client.invoke("spinner", b"").await {
        Err(ClientError::Status { code, message, .. }) => {
            assert_eq!(code, Code::ResourceExhausted, "{message}");
            assert!(message.contains("limit of 20000"), "{message}");
        }
        other => panic!("the call must run out of fuel: {other:?}"),
    }
    cluster.assert_converged().await;

    for id in cluster.running() {
        cluster.stop(id).await;
    }
    for id in [1, 2, 3] {
        cluster.launch(id, false).await;
    }
    cluster.wait_for_leader().await;
    for id in [1, 2, 3] {
        assert_eq!(
            cluster
                .node(id)
                .handle()
                .settings()
                .unwrap()
                .fuel_per_call_max,
            20_000
        );
    }
    cluster.assert_converged().await;
    cluster.shutdown().await;
}

/// A host failure at apply is the node's, not the log's: a follower whose
/// compiler fails on a deployed module stops and says why, the others
/// carry on, and once restarted (the fault gone) it applies the deploy and
/// catches up to an equal digest. Nothing is recorded as a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_that_cannot_compile_a_deployed_module_stops_then_recovers() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let broken = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    cluster.compile_faults(broken).fail(true);
    cluster.deploy_counter(leader).await;
    let stopped = cluster
        .node(broken)
        .consensus()
        .raft()
        .wait(Some(std::time::Duration::from_secs(60)))
        .metrics(|metrics| metrics.running_state.is_err(), "Raft stops")
        .await;
    assert!(stopped.is_ok(), "node {broken} went on applying");
    let health = cluster.node(broken).handle().cluster_view().health;
    let reason = health.expect_err("a stopped node is not healthy");
    assert!(
        reason.contains("cannot compile module `counter`"),
        "the node says why: {reason}"
    );
    let client = cluster.client_of(leader).await;
    client
        .invoke("counter", br#"{"op":"add","by":2}"#)
        .await
        .expect("two of three nodes carry on");

    cluster.compile_faults(broken).fail(false);
    cluster.stop_failed(broken).await;
    cluster.launch(broken, false).await;
    cluster.assert_converged().await;
    assert_eq!(cluster.counter(broken).await, 2);
    cluster.shutdown().await;
}
