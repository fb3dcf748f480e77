//! A real node on a loopback port, driven through the generated gRPC clients:
//! deploy, invoke (with a retried session), query, status, health, bad
//! input, then shutdown and restart from the same data directory. The
//! multi-node suites live in `tests/`; this one guards the wiring.

use sha2::{Digest, Sha256};
use tonic::Code;
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::cluster_client::ClusterClient;
use wasmraft_proto::v1::deploy_chunk::Content;
use wasmraft_proto::v1::modules_client::ModulesClient;
use wasmraft_proto::v1::state_machine_client::StateMachineClient;

use super::config::NodeConfig;
use super::{Node, NodeOptions, RunningNode};

fn config(dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        node_id: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        data_dir: dir.to_path_buf(),
        bootstrap: true,
        raft: Default::default(),
        limits: Default::default(),
        cluster: Default::default(),
    }
}

async fn start(dir: &std::path::Path) -> RunningNode {
    let node = Node::start(config(dir), NodeOptions::default())
        .await
        .unwrap();
    node.handle()
        .wait_for_leader(std::time::Duration::from_secs(10))
        .await
        .expect("the single node elects itself");
    node
}

fn chunks(name: &str, wasm: &[u8]) -> Vec<proto::DeployChunk> {
    let mut chunks = vec![proto::DeployChunk {
        content: Some(Content::Header(proto::DeployHeader {
            name: name.into(),
            sha256_hex: hex::encode(Sha256::digest(wasm)),
            size_bytes: wasm.len() as u64,
            ..Default::default()
        })),
    }];
    for piece in wasm.chunks(16 * 1024) {
        chunks.push(proto::DeployChunk {
            content: Some(Content::Data(piece.to_vec())),
        });
    }
    chunks
}

fn invoke(input: &str, client_id: &str, sequence: u64) -> proto::InvokeRequest {
    proto::InvokeRequest {
        module: "counter".into(),
        input: input.as_bytes().to_vec(),
        client_id: client_id.into(),
        sequence,
    }
}

async fn get(endpoint: &str, consistency: proto::Consistency) -> String {
    let mut client = StateMachineClient::connect(endpoint.to_owned())
        .await
        .unwrap();
    let response = client
        .query(proto::QueryRequest {
            module: "counter".into(),
            input: br#"{"op":"get"}"#.to_vec(),
            consistency: consistency as i32,
        })
        .await
        .unwrap()
        .into_inner();
    String::from_utf8(response.output).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_invoke_query_restart_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let endpoint = node.endpoint();

    let mut modules = ModulesClient::connect(endpoint.clone()).await.unwrap();
    let deployed = modules
        .deploy(futures::stream::iter(chunks(
            "counter",
            wasmraft_examples::COUNTER_WASM,
        )))
        .await
        .unwrap()
        .into_inner()
        .module
        .unwrap();
    assert_eq!((deployed.name.as_str(), deployed.version), ("counter", 1));
    assert!(deployed.has_query && deployed.deployed_at_index > 0);

    let mut corrupted = chunks("other", wasmraft_examples::COUNTER_WASM);
    corrupted.pop();
    let error = modules
        .deploy(futures::stream::iter(corrupted))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    let not_wasm = modules
        .deploy(futures::stream::iter(chunks("junk", b"not wasm at all")))
        .await
        .unwrap_err();
    assert_eq!(not_wasm.code(), Code::InvalidArgument, "{not_wasm:?}");
    assert!(
        not_wasm.message().starts_with("module rejected: "),
        "{not_wasm:?}"
    );

    let mut machine = StateMachineClient::connect(endpoint.clone()).await.unwrap();
    machine
        .open_session(wasmraft_proto::v1::OpenSessionRequest {
            client_id: "client-a".into(),
        })
        .await
        .unwrap();
    let first = machine
        .invoke(invoke(r#"{"op":"add","by":5}"#, "client-a", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.output, br#"{"value":5}"#);
    assert!(first.fuel_used > 0);
    // The retry of sequence 1 is answered, not applied again.
    let retry = machine
        .invoke(invoke(r#"{"op":"add","by":5}"#, "client-a", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.output, br#"{"value":5}"#);
    assert_eq!(
        get(&endpoint, proto::Consistency::Linearizable).await,
        r#"{"value":5}"#
    );

    let cases: Vec<(proto::InvokeRequest, Code, &str)> = vec![
        (
            proto::InvokeRequest {
                module: "nope".into(),
                ..invoke("{}", "", 0)
            },
            Code::NotFound,
            "module `nope` is not deployed",
        ),
        (
            invoke("{}", "", 4),
            Code::InvalidArgument,
            "client_id is empty",
        ),
        (
            invoke(r#"{"op":"add","by":1}"#, "client-a", 0),
            Code::InvalidArgument,
            "start at 1",
        ),
        (
            invoke(r#"{"op":"explode"}"#, "", 0),
            Code::FailedPrecondition,
            "module `counter` returned an error",
        ),
        (
            invoke(&"x".repeat(1024 * 1024 + 1), "", 0),
            Code::InvalidArgument,
            "limits.payload_bytes_max",
        ),
    ];
    for (request, code, fragment) in cases {
        let status = machine.invoke(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(fragment), "{status:?}");
    }

    let mut cluster = ClusterClient::connect(endpoint.clone()).await.unwrap();
    let status = cluster
        .status(proto::StatusRequest { local_only: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.leader_id, Some(1));
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.nodes[0].state_digest_hex.len(), 64);
    let health = cluster
        .health(proto::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, proto::HealthStatus::Serving as i32);

    drop((modules, machine, cluster));
    node.shutdown().await.unwrap();

    // Same directory, same state: the write survived and nothing recompiles.
    let node = start(dir.path()).await;
    let endpoint = node.endpoint();
    assert_eq!(
        get(&endpoint, proto::Consistency::Stale).await,
        r#"{"value":5}"#
    );
    let mut cluster = ClusterClient::connect(endpoint.clone()).await.unwrap();
    let status = cluster
        .status(proto::StatusRequest { local_only: true })
        .await
        .unwrap()
        .into_inner();
    let node_status = &status.nodes[0];
    assert!(node_status.applied_index.is_some());
    let mut machine = StateMachineClient::connect(endpoint.clone()).await.unwrap();
    let next = machine
        .invoke(invoke(r#"{"op":"add","by":1}"#, "client-a", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.output, br#"{"value":6}"#);
    drop((cluster, machine));
    node.shutdown().await.unwrap();
}

/// Three nodes over the real Raft network: membership through openraft,
/// a write on the leader reaches every node, a follower turns writes away
/// with the leader's address, and every node reports the same digest.
// Apply compiles and runs wasm on the async worker threads (see the
// report to storage/): three nodes in one runtime need spare workers, or a
// follower compiling a module starves the others' heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn three_nodes_replicate_over_grpc() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let leader = start(dirs[0].path()).await;
    let mut followers = Vec::new();
    for (index, dir) in dirs.iter().enumerate().skip(1) {
        let config = NodeConfig {
            node_id: index as u64 + 1,
            bootstrap: false,
            ..config(dir.path())
        };
        followers.push(Node::start(config, NodeOptions::default()).await.unwrap());
    }
    for follower in &followers {
        leader
            .handle()
            .add_node(
                follower.id(),
                follower.local_addr().to_string(),
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap();
    }

    let endpoint = leader.endpoint();
    let mut modules = ModulesClient::connect(endpoint.clone()).await.unwrap();
    modules
        .deploy(futures::stream::iter(chunks(
            "counter",
            wasmraft_examples::COUNTER_WASM,
        )))
        .await
        .unwrap();
    let mut machine = StateMachineClient::connect(endpoint.clone()).await.unwrap();
    let written = machine
        .invoke(invoke(r#"{"op":"add","by":3}"#, "", 0))
        .await
        .unwrap()
        .into_inner();

    let follower_endpoint = followers[0].endpoint();
    let mut on_follower = StateMachineClient::connect(follower_endpoint.clone())
        .await
        .unwrap();
    // A follower forwards the command to the leader and returns its answer.
    let forwarded = on_follower
        .invoke(invoke(r#"{"op":"add","by":1}"#, "", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(forwarded.applied_index > written.applied_index);
    let written = forwarded;

    for follower in &followers {
        follower
            .raft()
            .wait(Some(std::time::Duration::from_secs(10)))
            .applied_index_at_least(Some(written.applied_index), "the write replicated")
            .await
            .unwrap();
    }
    assert_eq!(
        get(&follower_endpoint, proto::Consistency::Stale).await,
        r#"{"value":4}"#
    );

    let mut cluster = ClusterClient::connect(endpoint.clone()).await.unwrap();
    let status = cluster
        .status(proto::StatusRequest { local_only: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.membership.as_ref().unwrap().voters.len(), 3);
    assert_eq!(status.nodes.len(), 3);
    let at_same_index: Vec<_> = status
        .nodes
        .iter()
        .filter(|node| node.applied_index == status.nodes[0].applied_index)
        .map(|node| node.state_digest_hex.clone())
        .collect();
    assert!(
        at_same_index
            .iter()
            .all(|digest| digest == &at_same_index[0]),
        "{status:?}"
    );
    assert!(
        status.nodes.iter().all(|node| node.error.is_empty()),
        "{status:?}"
    );

    drop((modules, machine, on_follower, cluster));
    for follower in followers {
        follower.shutdown().await.unwrap();
    }
    leader.shutdown().await.unwrap();
}

/// A manual check against a running `wasmraft serve --dev`:
/// `WASMRAFT_ENDPOINT=http://127.0.0.1:7070 cargo test -p wasmraft --lib -- --ignored against_a_running_dev_server`
#[tokio::test]
#[ignore = "needs a running `wasmraft serve --dev`"]
async fn against_a_running_dev_server() {
    let endpoint =
        std::env::var("WASMRAFT_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:7070".to_owned());
    let mut modules = ModulesClient::connect(endpoint.clone()).await.unwrap();
    let listed = modules
        .list(proto::ListModulesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed
        .modules
        .iter()
        .map(|module| module.name.as_str())
        .collect();
    assert_eq!(names, ["bank", "counter", "kv"]);
    let mut machine = StateMachineClient::connect(endpoint.clone()).await.unwrap();
    let before = get(&endpoint, proto::Consistency::Linearizable).await;
    let added = machine
        .invoke(invoke(r#"{"op":"add","by":1}"#, "", 0))
        .await
        .unwrap()
        .into_inner();
    let after = get(&endpoint, proto::Consistency::Unspecified).await;
    eprintln!(
        "before {before}, invoke answered {} at index {}, after {after}",
        String::from_utf8_lossy(&added.output),
        added.applied_index
    );
    assert_eq!(added.output, after.as_bytes());
}
