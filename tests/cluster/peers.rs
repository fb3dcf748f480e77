//! Peer authentication on a three-node cluster whose nodes share a cluster
//! secret: the internal `Raft` service of every node answers callers that
//! are not its peers with the exact code, forged forwards change nothing,
//! an outsider's handshake cannot re-admit a member that lost its data,
//! and the cluster id the bootstrap created is the same on every node.

use tonic::Code;
use tonic::transport::Channel;
use wasmraft::auth::{ClusterSecret, PeerAuth};
use wasmraft::command::{Command, Invoke};
use wasmraft::node::forward::Forwarded;
use wasmraft::raft::TypeConfig;
use wasmraft::raft::network::wire;
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::raft_client::RaftClient;

use super::harness::Cluster;

/// Who a raw call comes from.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// No metadata at all.
    Anonymous,
    /// A client's bearer token.
    Client,
    /// A node that signs with another secret.
    OtherSecret,
    /// A node with this cluster's secret, of another cluster.
    OtherCluster,
    /// A node of this cluster.
    Peer,
}

async fn raft_client(cluster: &Cluster, id: u64) -> RaftClient<Channel> {
    RaftClient::connect(format!("http://{}", cluster.address(id)))
        .await
        .expect("the node listens")
}

fn credentials(cluster: &Cluster, caller: Caller) -> Option<PeerAuth> {
    let ours = ClusterSecret::from_file(&cluster.secret_file).unwrap();
    let cluster_id = cluster.cluster_id();
    match caller {
        Caller::Anonymous | Caller::Client => None,
        Caller::OtherSecret => Some(Cluster::node_credentials(
            ClusterSecret::new(&[7; 32]).unwrap(),
            &cluster_id,
        )),
        Caller::OtherCluster => Some(Cluster::node_credentials(ours, "another-cluster")),
        Caller::Peer => Some(Cluster::node_credentials(ours, &cluster_id)),
    }
}

fn request<T>(cluster: &Cluster, caller: Caller, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(auth) = credentials(cluster, caller) {
        auth.stamp(request.metadata_mut());
    }
    if let Caller::Client = caller {
        request
            .metadata_mut()
            .insert("authorization", "Bearer not-a-node".parse().unwrap());
    }
    request
}

/// A forwarded write a follower would send: one increment of the counter,
/// claimed for a caller of the forger's choosing.
fn forged_write() -> proto::RaftRequest {
    wire::encode_request(&Forwarded::Write {
        caller: wasmraft::auth::Caller::unchecked("cluster-admin"),
        command: Command::Invoke(Invoke {
            module: "counter".to_owned(),
            input: br#"{"op":"add","by":1000}"#.to_vec(),
            session: None,
        }),
        timeout_ms: 5_000,
    })
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// The code every method of the `Raft` service answers `caller` with. A
/// peer's forwarded write would be served (peers may forward), so a peer
/// is not sent one.
async fn codes(cluster: &Cluster, id: u64, caller: Caller) -> Vec<(&'static str, Code)> {
    let mut raft = raft_client(cluster, id).await;
    let garbage = || proto::RaftRequest {
        encoding_version: wire::WIRE_ENCODING_VERSION,
        payload: vec![0xff; 3],
    };
    let mut codes = vec![
        (
            "AppendEntries",
            code(
                raft.append_entries(request(cluster, caller, garbage()))
                    .await,
            ),
        ),
        (
            "Vote",
            code(raft.vote(request(cluster, caller, garbage())).await),
        ),
        (
            "InstallSnapshot",
            code(
                raft.install_snapshot(request(cluster, caller, garbage()))
                    .await,
            ),
        ),
        (
            "Handshake",
            code(
                raft.handshake(request(
                    cluster,
                    caller,
                    proto::HandshakeRequest {
                        node_id: 99,
                        cluster_id: String::new(),
                        engine_compatibility_hash: Vec::new(),
                    },
                ))
                .await,
            ),
        ),
    ];
    if !matches!(caller, Caller::Peer) {
        let forwarded = raft.forward(request(cluster, caller, forged_write())).await;
        codes.push(("Forward", code(forwarded)));
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_nodes_of_the_cluster_reach_its_raft_service() {
    let cluster = Cluster::start(3).await;
    cluster.deploy_counter(1).await;
    let before = cluster.counter(1).await;

    // The id the bootstrap made reached every node through the log.
    let named = cluster.node(1).handle().peer_auth().cluster_id().unwrap();
    for id in cluster.running() {
        let node = cluster.node(id).handle();
        assert_eq!(
            node.peer_auth().cluster_id().as_ref(),
            Some(&named),
            "node {id}"
        );
        assert_eq!(
            node.reader().cluster_id().unwrap().as_ref(),
            Some(&named),
            "node {id}"
        );
    }

    let denied = |code| {
        [
            "AppendEntries",
            "Vote",
            "InstallSnapshot",
            "Handshake",
            "Forward",
        ]
        .map(|method| (method, code))
        .to_vec()
    };
    let rows = [
        (Caller::Anonymous, denied(Code::Unauthenticated)),
        (Caller::Client, denied(Code::PermissionDenied)),
        (Caller::OtherSecret, denied(Code::Unauthenticated)),
        (Caller::OtherCluster, denied(Code::FailedPrecondition)),
    ];
    for id in cluster.running() {
        for (caller, expected) in &rows {
            assert_eq!(
                &codes(&cluster, id, *caller).await,
                expected,
                "{caller:?} calling node {id}"
            );
        }
        // A peer gets past authentication: the garbage is then refused as
        // malformed, and the handshake is answered.
        let peer = codes(&cluster, id, Caller::Peer).await;
        assert_eq!(
            peer,
            [
                ("AppendEntries", Code::InvalidArgument),
                ("Vote", Code::InvalidArgument),
                ("InstallSnapshot", Code::InvalidArgument),
                ("Handshake", Code::Ok),
            ],
            "a peer calling node {id}"
        );
    }
    // Even a peer's message reaches Raft only in the shape openraft relies
    // on: entries with a gap (once a panic in the log store) are refused.
    for id in cluster.running() {
        let mut raft = raft_client(&cluster, id).await;
        let gap = openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(1, 1),
                3,
            )),
            entries: vec![openraft::Entry {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 5),
                payload: openraft::EntryPayload::Blank,
            }],
            leader_commit: None,
        };
        let refused = raft
            .append_entries(request(&cluster, Caller::Peer, wire::encode_request(&gap)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("not contiguous"), "{refused:?}");
    }
    // None of the forged writes was applied.
    assert_eq!(cluster.counter(1).await, before);
    cluster.assert_converged().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outsider_cannot_readmit_a_member_that_lost_its_data() {
    let mut cluster = Cluster::start(3).await;
    cluster.stop(3).await;
    cluster.wipe(3);
    cluster.launch(3, false).await;
    let mut raft = raft_client(&cluster, 3).await;
    let handshake = proto::HandshakeRequest {
        node_id: 1,
        cluster_id: String::new(),
        engine_compatibility_hash: Vec::new(),
    };
    let refused = raft
        .handshake(tonic::Request::new(handshake.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = raft
        .handshake(request(&cluster, Caller::OtherSecret, handshake))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let why = cluster
        .node(3)
        .handle()
        .accepts_raft_messages()
        .await
        .expect_err("an empty node nobody of the cluster introduced takes no Raft messages");
    assert!(why.contains("empty Raft storage"), "{why}");
    cluster.discard(3).await;
    cluster.shutdown().await;
}
