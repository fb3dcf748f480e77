//! Health on a three-node cluster: the leader scores its cluster, names a
//! member that stopped answering, and recovers its score once the member is
//! back; followers judge only themselves.

use std::time::{Duration, Instant};

use wasmraft::client::Health;

use super::harness::{Cluster, SETTLE};

/// Waits until node `id`'s health satisfies `condition`, and returns it.
async fn health_until(
    cluster: &Cluster,
    id: u64,
    what: &str,
    condition: impl Fn(&Health) -> bool,
) -> Health {
    let client = cluster.client_of(id).await;
    let deadline = Instant::now() + SETTLE;
    loop {
        let health = client.health().await.unwrap();
        if condition(&health) {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never {what}: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn named(health: &Health, name: &str) -> bool {
    health.reasons.iter().any(|(reason, _)| reason == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_names_a_member_that_stopped_answering() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let stopped = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader && *id != follower)
        .unwrap();
    health_until(&cluster, leader, "scored 100", |health| {
        health.serving && health.score == 100
    })
    .await;

    cluster.stop(stopped).await;
    let degraded = health_until(&cluster, leader, "named the stopped member", |health| {
        named(health, "peer_unreachable")
    })
    .await;
    assert!(
        degraded.serving,
        "two of three voters still serve: {degraded:?}"
    );
    assert!(degraded.score < 100, "{degraded:?}");
    let (_, detail) = &degraded.reasons[0];
    assert!(detail.contains(&format!("node {stopped} ")), "{detail}");
    // A follower calls no member but the leader: it reports nothing of node 3.
    let follower_health = cluster.client_of(follower).await.health().await.unwrap();
    assert!(
        follower_health.serving && follower_health.reasons.is_empty(),
        "{follower_health:?}"
    );

    cluster.launch(stopped, false).await;
    health_until(&cluster, leader, "scored 100 again", |health| {
        health.serving && health.score == 100
    })
    .await;
    cluster.assert_converged().await;
    cluster.shutdown().await;
}
