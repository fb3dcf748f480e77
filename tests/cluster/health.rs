//! Health on a three-node cluster: the leader scores its cluster, names a
//! member that stopped answering, and recovers its score once the member is
//! back; followers judge only themselves.

use wasmraft::client::Health;
use wasmraft::node::health::Health as NodeHealth;

use super::harness::{Cluster, SETTLE};

/// Waits until the health of the leader `id` satisfies `condition`, and
/// returns it as the API answers. The wait wakes on each change of the
/// leader's Raft metrics, which its heartbeats refresh.
async fn health_until(
    cluster: &Cluster,
    id: u64,
    what: &str,
    condition: impl Fn(&NodeHealth) -> bool + Send + Sync + 'static,
) -> Health {
    let handle = cluster.node(id).handle().clone();
    let consensus = handle.consensus().clone();
    consensus
        .wait_until(SETTLE, what, move |_| condition(&handle.health()))
        .await
        .unwrap_or_else(|error| {
            panic!(
                "node {id} never {what} ({error}): {:?}",
                cluster.node(id).handle().health()
            )
        });
    cluster.client_of(id).await.health().await.unwrap()
}

fn named(health: &Health, name: &str) -> bool {
    health.reasons.iter().any(|(reason, _)| reason == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_names_a_member_that_stopped_answering() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let others: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let (follower, stopped) = (others[0], others[1]);
    health_until(&cluster, leader, "scored 100", |health| {
        health.serving && health.score == 100
    })
    .await;

    cluster.stop(stopped).await;
    let degraded = health_until(&cluster, leader, "named the stopped member", |health| {
        health
            .reasons
            .iter()
            .any(|reason| reason.name == "peer_unreachable")
    })
    .await;
    assert!(named(&degraded, "peer_unreachable"), "{degraded:?}");
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
