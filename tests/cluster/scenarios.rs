//! What a Raft cluster must survive, one scenario per test, each ending
//! with equal state digests on every node.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use wasmraft::client::{ClientError, Consistency};
use wasmraft::node::config::RaftSettings;

use super::harness::{Cluster, SETTLE, Tally, increment, test_raft_settings};

fn code(error: &ClientError) -> Option<Code> {
    error.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_elect_a_leader_and_replace_a_lost_one() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    // Deployed and written through a follower: it forwards to the leader.
    cluster.deploy_counter(follower).await;
    let tally = Tally::default();
    increment(&cluster.client_of(follower).await, 20, &tally).await;
    assert_eq!(cluster.counter(follower).await, 20);

    cluster.stop(leader).await;
    let survivors = cluster.running();
    let new_leader = cluster.wait_for_leader_among(&survivors).await;
    assert_ne!(new_leader, leader);
    // Writes resume through either survivor.
    for id in &survivors {
        increment(&cluster.client_of(*id).await, 10, &tally).await;
    }
    assert_eq!(tally.failed.load(std::sync::atomic::Ordering::SeqCst), 0);
    tally.check(cluster.counter(survivors[0]).await);

    // The old leader comes back as a follower and catches up.
    cluster.launch(leader, false).await;
    cluster.assert_converged().await;
    assert_eq!(cluster.counter(leader).await, 40);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_keep_writing_with_two_lost_and_take_them_back() {
    let mut cluster = Cluster::start(5).await;
    let leader = cluster.wait_for_leader().await;
    cluster.deploy_counter(leader).await;
    let tally = Tally::default();
    increment(&cluster.client_of(leader).await, 10, &tally).await;
    // A minority of two, the leader among them.
    let follower = cluster.follower_of(leader);
    cluster.stop(leader).await;
    cluster.stop(follower).await;
    let majority = cluster.running();
    cluster.wait_for_leader_among(&majority).await;
    for id in &majority {
        increment(&cluster.client_of(*id).await, 5, &tally).await;
    }
    cluster.launch(leader, false).await;
    cluster.launch(follower, false).await;
    cluster.assert_converged().await;
    assert_eq!(cluster.counter(follower).await, 25);
    tally.check(25);
    cluster.shutdown().await;
}

// openraft 0.9 gives every AppendEntries its heartbeat interval (100 ms
// here) as a timeout; before the network kept appends on the wire past it,
// a follower behind a slower link never caught up and writes through it
// failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_a_link_slower_than_the_heartbeat_catches_up() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.deploy_counter(leader).await;
    let slow = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    // Both ways: replication to it and the forward hop from it.
    cluster
        .links
        .slow_down(leader, slow, Duration::from_millis(200));
    cluster
        .links
        .slow_down(slow, leader, Duration::from_millis(200));
    let tally = Tally::default();
    increment(&cluster.client_of(leader).await, 10, &tally).await;
    // The link is still slow: the follower catches up over it.
    cluster.assert_converged().await;
    increment(&cluster.client_of(slow).await, 10, &tally).await;
    cluster.assert_converged().await;
    assert_eq!(cluster.counter(slow).await, 20);
    cluster.links.heal();
    tally.check(20);
    cluster.shutdown().await;
}

/// The histogram `name`'s count and sum in a node's `/metrics` text.
fn histogram(metrics: &str, name: &str) -> (u64, u64) {
    let value = |suffix: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}_{suffix} ")))
            .map_or(0, |value| value.trim().parse::<f64>().unwrap() as u64)
    };
    (value("count"), value("sum"))
}

// A follower hands the invokes that queue while its forwards are on the
// wire to the leader in one call; each caller still gets its own answer,
// applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_through_a_follower_is_forwarded_in_batches_each_caller_answered_alone() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.deploy_counter(leader).await;
    let follower = cluster.follower_of(leader);
    // While the first forwards wait out the slow hop, the rest of the burst
    // queues behind them and leaves together.
    cluster
        .links
        .slow_down(follower, leader, Duration::from_millis(500));
    const BURST: i64 = 64;
    let client = Arc::new(cluster.client_of(follower).await);
    let calls: Vec<_> = (0..BURST)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.invoke("counter", br#"{"op":"add","by":1}"#).await })
        })
        .collect();
    let mut values = Vec::new();
    for call in calls {
        let output = call
            .await
            .unwrap()
            .expect("every invoke of the burst succeeds");
        let value: serde_json::Value = serde_json::from_slice(&output.output).unwrap();
        values.push(value["value"].as_i64().unwrap());
    }
    values.sort_unstable();
    assert_eq!(
        values,
        (1..=BURST).collect::<Vec<_>>(),
        "each caller gets the value its own increment made"
    );
    cluster.links.heal();
    assert_eq!(cluster.counter(leader).await, BURST);
    let (batches, writes) = histogram(
        &cluster.node(follower).handle().metrics().render(),
        "wasmraft_forward_batch_writes",
    );
    assert!(
        batches > 0 && batches < writes,
        "the follower forwarded {writes} writes in {batches} calls"
    );
    cluster.assert_converged().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_leader_commits_nothing_and_rejoins_after_healing() {
    let cluster = Cluster::start(5).await;
    let old_leader = cluster.wait_for_leader().await;
    cluster.deploy_counter(old_leader).await;
    let tally = Tally::default();
    increment(&cluster.client_of(old_leader).await, 5, &tally).await;
    cluster.assert_converged().await;
    let applied_before = cluster.node(old_leader).handle().applied_index();

    let majority: Vec<_> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != old_leader)
        .collect();
    cluster.links.isolate(old_leader, majority.clone());

    // A write sent to the cut-off leader cannot commit: it times out.
    let isolated = cluster
        .node(old_leader)
        .handle()
        .propose(
            wasmraft::auth::Caller::unchecked("test"),
            wasmraft::command::Command::Invoke(wasmraft::command::Invoke {
                module: "counter".into(),
                input: br#"{"op":"add","by":1000}"#.to_vec(),
                session: None,
            }),
            Some(Duration::from_secs(2)),
        )
        .await;
    assert!(isolated.is_err(), "{isolated:?}");

    // The majority elects a leader among itself and keeps writing.
    let new_leader = cluster.wait_for_leader_among(&majority).await;
    assert_ne!(new_leader, old_leader);
    increment(&cluster.client_of(majority[0]).await, 10, &tally).await;
    assert_eq!(
        cluster.node(old_leader).handle().applied_index(),
        applied_before,
        "the cut-off leader applied nothing"
    );

    cluster.links.heal();
    let leader = cluster.wait_for_leader().await;
    assert_ne!(leader, old_leader, "a stale leader cannot win back");
    cluster.assert_converged().await;
    // The cut-off write was never committed: its entry was replaced.
    assert_eq!(cluster.counter(old_leader).await, 15);
    tally.check(15);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_join_and_leave_under_a_write_load_without_losing_a_write() {
    let mut cluster = Cluster::start(3).await;
    cluster.deploy_counter(1).await;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Writers through nodes 2 and 3, which stay members throughout.
    let mut writers = Vec::new();
    for through in [2, 3, 2, 3] {
        let client = cluster.client_of(through).await;
        let tally = tally.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                increment(&client, 1, &tally).await;
            }
        }));
    }

    cluster.launch(4, false).await;
    cluster.add(4).await.expect("node 4 joins under load");
    cluster.launch(5, false).await;
    cluster.add(5).await.expect("node 5 joins under load");
    // Node 1 (the first leader) leaves, then node 4.
    let client = cluster.client_of(2).await;
    let membership = client.remove_node(1).await.expect("node 1 leaves");
    assert!(membership.voters.iter().all(|member| member.id != 1));
    cluster.discard(1).await;
    let membership = client.remove_node(4).await.expect("node 4 leaves");
    assert_eq!(
        membership
            .voters
            .iter()
            .map(|member| member.id)
            .collect::<Vec<_>>(),
        [2, 3, 5]
    );
    cluster.discard(4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(tally.acknowledged.load(std::sync::atomic::Ordering::SeqCst) > 0);
    cluster.wait_for_leader().await;
    tally.check(cluster.counter(5).await);
    cluster.assert_converged().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_node_catches_up_from_a_snapshot_after_the_log_was_purged() {
    // Small chunks: the snapshot (the counter's 100 KiB of wasm among it)
    // travels in dozens of them.
    let raft = RaftSettings {
        snapshot_after_entries: 16,
        snapshot_chunk_bytes: 4096,
        ..test_raft_settings()
    };
    let mut cluster = Cluster::start_with(3, raft).await;
    let leader = cluster.wait_for_leader().await;
    cluster.deploy_counter(leader).await;
    let tally = Tally::default();
    increment(&cluster.client_of(leader).await, 60, &tally).await;
    // A snapshot on demand on every node purges its log. A request that
    // arrives while a snapshot is being built is absorbed by that build, so
    // ask until the purge shows.
    cluster.assert_converged().await;
    for id in cluster.running() {
        let client = cluster.client_of(id).await;
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            client.snapshot().await.unwrap();
            let purged = cluster
                .node(id)
                .consensus()
                .raft()
                .wait(Some(Duration::from_secs(2)))
                .metrics(
                    |metrics| metrics.purged.is_some_and(|purged| purged.index > 10),
                    "the log is purged behind a snapshot",
                )
                .await;
            if let Ok(metrics) = purged {
                assert!(metrics.snapshot.is_some());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {id} never purged its log"
            );
        }
    }

    cluster.launch(4, false).await;
    cluster.add(4).await.expect("node 4 joins");
    // Its first entries are gone from every log: only a snapshot brings them.
    let joined = cluster
        .node(4)
        .consensus()
        .raft()
        .wait(Some(SETTLE))
        .metrics(
            |metrics| metrics.snapshot.is_some(),
            "node 4 installed a snapshot",
        )
        .await
        .unwrap();
    assert!(joined.snapshot.unwrap().index > 10);
    cluster.assert_converged().await;
    assert_eq!(cluster.counter(4).await, 60);
    tally.check(60);
    cluster.shutdown().await;
}

/// A node started with `--bootstrap` that a leader introduces itself to
/// while it listens is being added to that cluster: once the listening
/// ends it refuses to found one of its own, even though no Raft message
/// reached it (they are cut here), and says so. Started plain, it joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_being_added_while_it_waits_to_bootstrap_founds_no_cluster() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.deploy_counter(leader).await;
    // An address for node 4, then an empty directory behind it.
    cluster.launch(4, false).await;
    cluster.stop(4).await;
    cluster.wipe(4);
    let address = cluster.address(4).to_string();
    for member in [1, 2, 3] {
        cluster.links.cut_one_way(member, 4);
    }
    let client = cluster.client_of(leader).await;
    let adding = async {
        // Until the starting node serves; its listening lasts seconds.
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            let added = client.add_node(4, &address, Duration::from_secs(5)).await;
            match &added {
                Err(error) if error.to_string().contains("cannot reach") => {
                    assert!(std::time::Instant::now() < deadline, "{error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => return added,
            }
        }
    };
    let (started, added) = tokio::join!(cluster.try_launch(4, true), adding);
    let error = started.expect_err("node 4 founds no cluster of its own");
    assert!(
        matches!(error, wasmraft::node::StartError::BeingAdded { id: 4, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("without --bootstrap"), "{error}");
    assert!(added.is_err(), "node 4 never caught up: {added:?}");

    cluster.links.heal();
    cluster.launch(4, false).await;
    cluster.add(4).await.expect("node 4 joins");
    cluster.assert_converged().await;
    assert_eq!(cluster.counter(4).await, 0);
    cluster.shutdown().await;
}

/// `add-node` answers success only once the new voter applied the log up
/// to its promotion, so that a read it serves right after sees what the
/// cluster had; by the deadline it says it has not. Here the new node
/// takes the log (it catches up) but cannot apply it: its compiler fails
/// on the deployed module, a host failure that stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_node_says_when_the_new_voter_has_not_applied_its_promotion() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.deploy_counter(leader).await;
    let tally = Tally::default();
    increment(&cluster.client_of(leader).await, 5, &tally).await;
    cluster.launch(4, false).await;
    cluster.compile_faults(4).fail(true);
    let error = cluster
        .client_of(leader)
        .await
        .add_node(4, &cluster.address(4).to_string(), Duration::from_secs(5))
        .await
        .expect_err("node 4 never applies its promotion");
    assert_eq!(error.code(), Some(Code::DeadlineExceeded), "{error}");
    assert!(
        error
            .to_string()
            .contains("is a voter now, but had not applied the log up to its promotion"),
        "{error}"
    );
    let status = cluster.client_of(leader).await.status().await.unwrap();
    assert!(
        status.voters.iter().any(|member| member.id == 4),
        "the change holds: {status:?}"
    );
    // Once it can apply, it catches up by itself.
    cluster.compile_faults(4).fail(false);
    cluster.stop_failed(4).await;
    cluster.launch(4, false).await;
    cluster.assert_converged().await;
    assert_eq!(cluster.counter(4).await, 5);
    tally.check(5);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_cluster_restart_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    cluster.deploy_counter(2).await;
    let tally = Tally::default();
    increment(&cluster.client_of(3).await, 25, &tally).await;
    let before = cluster.assert_converged().await;
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
    for id in [3, 1, 2] {
        cluster.launch(id, id == 1).await;
    }
    cluster.wait_for_leader().await;
    assert_eq!(cluster.counter(1).await, 25);
    increment(&cluster.client_of(1).await, 5, &tally).await;
    let after = cluster.assert_converged().await;
    assert!(after > before);
    tally.check(cluster.counter(2).await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_lost_its_data_rejoins_after_remove_and_add() {
    let mut cluster = Cluster::start(3).await;
    cluster.deploy_counter(1).await;
    let tally = Tally::default();
    increment(&cluster.client_of(1).await, 10, &tally).await;
    let leader = cluster.wait_for_leader().await;
    let lost = if leader == 3 { 2 } else { 3 };
    cluster.stop(lost).await;
    cluster.wipe(lost);
    // Restarted empty while still a member, it refuses the leader's
    // messages (no leader introduced itself): the cluster carries on.
    cluster.launch(lost, false).await;
    increment(&cluster.client_of(leader).await, 5, &tally).await;
    let error = cluster
        .node(lost)
        .handle()
        .accepts_raft_messages()
        .await
        .unwrap_err();
    assert!(error.contains("empty Raft storage"), "{error}");
    assert_eq!(cluster.node(lost).handle().applied_index(), None);
    // While it is still a member, adding it again is refused.
    let refused = cluster.add(lost).await.unwrap_err();
    assert_eq!(code(&refused), Some(Code::AlreadyExists), "{refused}");
    // The documented way back: remove it, then add it.
    let through = cluster.running()[0];
    let client = cluster.client_of(through).await;
    client
        .remove_node(lost)
        .await
        .expect("the lost node is removed");
    cluster
        .add(lost)
        .await
        .expect("the lost node rejoins empty");
    cluster.assert_converged().await;
    assert_eq!(cluster.counter(lost).await, 15);
    tally.check(15);
    cluster.shutdown().await;
}

/// The bootstrap node lost its data and is started again with the command
/// that founded the cluster (`--bootstrap`): the cluster still counts it as
/// a member and sends it Raft messages, so it refuses to found a second
/// cluster that would acknowledge writes alone, and says how to rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bootstrap_node_that_lost_its_data_founds_no_second_cluster() {
    let mut cluster = Cluster::start(3).await;
    cluster.deploy_counter(1).await;
    let tally = Tally::default();
    increment(&cluster.client_of(1).await, 10, &tally).await;
    let cluster_id = cluster.cluster_id();
    cluster.stop(1).await;
    cluster.wipe(1);
    // The others elect a leader among themselves, which then keeps calling
    // the member it lost.
    let leader = cluster.wait_for_leader_among(&[2, 3]).await;
    let error = cluster.try_launch(1, true).await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(
            &error,
            wasmraft::node::StartError::LostData { id: 1, cluster: named, .. }
                if *named == format!("cluster {cluster_id}")
        ),
        "{message}"
    );
    assert!(message.contains("it lost its data"), "{message}");
    assert!(message.contains("without --bootstrap"), "{message}");
    // Nothing was founded: the address answers nobody, the cluster carries on.
    assert!(cluster.running().len() == 2 && !cluster.running().contains(&1));
    increment(&cluster.client_of(leader).await, 5, &tally).await;
    // The way back the message gives.
    cluster.launch(1, false).await;
    cluster
        .client_of(leader)
        .await
        .remove_node(1)
        .await
        .expect("the lost node is removed");
    cluster.add(1).await.expect("the lost node rejoins empty");
    cluster.assert_converged().await;
    assert_eq!(cluster.counter(1).await, 15);
    tally.check(15);
    cluster.shutdown().await;
}

/// Every refused membership change names its reason and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_membership_changes_change_nothing() {
    let mut cluster = Cluster::start(2).await;
    let client = cluster.client_of(2).await;
    let before = client.status().await.unwrap();
    let taken = cluster.address(1).to_string();
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nobody = format!("127.0.0.1:{free_port}");
    let rows: [(u64, &str, Code, &str); 9] = [
        (
            0,
            "127.0.0.1:7999",
            Code::InvalidArgument,
            "node id 0 is below 1",
        ),
        (
            1 << 53,
            "127.0.0.1:7999",
            Code::InvalidArgument,
            "above 9007199254740991 (setting `membership.node_id_max`)",
        ),
        (
            7,
            "169.254.169.254:80",
            Code::InvalidArgument,
            "link-local address, which this cluster does not accept for a member (setting `membership.allow_link_local`)",
        ),
        (
            7,
            "0.0.0.0:7999",
            Code::InvalidArgument,
            "0.0.0.0 is the unspecified address",
        ),
        (7, "[ff02::1]:7999", Code::InvalidArgument, "multicast"),
        (
            2,
            "127.0.0.1:7999",
            Code::AlreadyExists,
            "node 2 is already a member",
        ),
        (7, &taken, Code::AlreadyExists, "already used by node 1"),
        (7, "no-port", Code::InvalidArgument, "has no port"),
        (7, &nobody, Code::FailedPrecondition, "cannot reach node 7"),
    ];
    for (id, address, expected, fragment) in rows {
        let error = client
            .add_node(id, address, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(code(&error), Some(expected), "{id} {address}: {error}");
        assert!(error.to_string().contains(fragment), "{error}");
    }
    // A node answering with another id.
    cluster.launch(8, false).await;
    let error = client
        .add_node(9, &cluster.address(8).to_string(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(code(&error), Some(Code::FailedPrecondition), "{error}");
    assert!(error.to_string().contains("has id 8, not 9"), "{error}");
    let error = client.remove_node(42).await.unwrap_err();
    assert_eq!(code(&error), Some(Code::NotFound), "{error}");

    // A change while another is in progress: node 8 cannot catch up while
    // the leader's link to it is cut, so its addition waits.
    let leader = cluster.wait_for_leader_among(&[1, 2]).await;
    cluster.links.cut_one_way(leader, 8);
    let slow = {
        let client = client.clone();
        let address = cluster.address(8).to_string();
        tokio::spawn(async move { client.add_node(8, &address, Duration::from_secs(3)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let error = client.remove_node(2).await.unwrap_err();
    assert_eq!(code(&error), Some(Code::FailedPrecondition), "{error}");
    assert!(error.to_string().contains("in progress"), "{error}");
    let error = slow.await.unwrap().unwrap_err();
    assert_eq!(code(&error), Some(Code::DeadlineExceeded), "{error}");
    assert!(error.to_string().contains("stays a learner"), "{error}");
    let status = client.status().await.unwrap();
    assert!(status.learners.iter().any(|member| member.id == 8));
    assert_eq!(status.voters, before.voters);
    // Healed, asking again finishes the job.
    cluster.links.heal();
    let membership = client
        .add_node(8, &cluster.address(8).to_string(), SETTLE)
        .await
        .unwrap();
    assert!(membership.voters.iter().any(|member| member.id == 8));

    // A removed node keeps its Raft data: it cannot be added back as is.
    client.remove_node(8).await.unwrap();
    let error = client
        .add_node(8, &cluster.address(8).to_string(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(code(&error), Some(Code::FailedPrecondition), "{error}");
    assert!(
        error.to_string().contains("already has Raft data"),
        "{error}"
    );
    cluster.discard(8).await;

    // The last voter cannot leave.
    let other = if leader == 1 { 2 } else { 1 };
    client.remove_node(other).await.unwrap();
    let last = cluster.client_of(leader).await;
    let error = last.remove_node(leader).await.unwrap_err();
    assert_eq!(code(&error), Some(Code::FailedPrecondition), "{error}");
    assert!(error.to_string().contains("last voter"), "{error}");
    cluster.discard(other).await;
    cluster.assert_converged().await;
    cluster.shutdown().await;
}

/// `add-node` returns once the new voter applied the log up to its own
/// promotion: a stale read on it right after sees what the cluster had.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_voter_serves_what_the_cluster_had_when_add_node_returns() {
    let mut cluster = Cluster::start(1).await;
    cluster.deploy_counter(1).await;
    let tally = Tally::default();
    increment(&cluster.client_of(1).await, 5, &tally).await;
    for id in [2, 3] {
        cluster.launch(id, false).await;
        cluster.add(id).await.expect("the node joins");
        let answer = cluster
            .client_of(id)
            .await
            .query("counter", br#"{"op":"get"}"#, Consistency::Stale)
            .await
            .unwrap_or_else(|error| panic!("node {id} right after add-node: {error}"));
        let value: serde_json::Value = serde_json::from_slice(&answer.output).unwrap();
        assert_eq!(value["value"], 5, "node {id} right after add-node");
    }
    cluster.assert_converged().await;
    cluster.shutdown().await;
}

/// A node removed while cut off never receives its removal: when the links
/// heal it asks the members for votes, and they tell it. It stops
/// campaigning, reports `removed`, and answers clients FAILED_PRECONDITION
/// instead of "wait for a leader"; the members keep their leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_removed_while_cut_off_learns_it_when_the_links_heal() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.deploy_counter(leader).await;
    let gone = cluster.follower_of(leader);
    let members: Vec<_> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != gone)
        .collect();
    cluster.links.isolate(gone, members.clone());
    let membership = cluster
        .client_of(leader)
        .await
        .remove_node(gone)
        .await
        .expect("the two others remove it");
    assert!(membership.voters.iter().all(|member| member.id != gone));
    cluster.links.heal();

    let handle = cluster.node(gone).handle().clone();
    let mut removal = handle.removal().subscribe();
    let learned = tokio::time::timeout(SETTLE, removal.wait_for(|removed| removed.is_some()))
        .await
        .map(|removed| removed.map(|removed| *removed));
    let health = handle.health();
    assert!(
        matches!(learned, Ok(Ok(_))),
        "node {gone} never learned it was removed: {health:?}"
    );
    assert!(!health.serving, "{health:?}");
    assert!(
        health.reasons.iter().any(|reason| reason.name == "removed"),
        "{health:?}"
    );
    let refused = cluster
        .client_of(gone)
        .await
        .invoke("counter", br#"{"op":"add","by":1}"#)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::FailedPrecondition), "{refused}");
    assert!(
        refused.to_string().contains("removed from the cluster"),
        "{refused}"
    );

    cluster.discard(gone).await;
    let after = cluster.wait_for_leader_among(&members).await;
    assert!(members.contains(&after));
    cluster.assert_converged().await;
    cluster.shutdown().await;
}
