//! Authentication and authorisation on a three-node cluster whose nodes
//! authenticate their callers: every gRPC method answered with its exact
//! code for every kind of caller, through every node; and a revoke that is
//! in force everywhere when it returns, even for writes already in flight.

use std::time::Duration;

use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use wasmraft::auth::{ClusterSecret, PeerAuth};
use wasmraft::client::{Client, ClientConfig, RoleBinding};
use wasmraft::raft::network::wire;
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::access_client::AccessClient;
use wasmraft_proto::v1::cluster_client::ClusterClient;
use wasmraft_proto::v1::modules_client::ModulesClient;
use wasmraft_proto::v1::raft_client::RaftClient;
use wasmraft_proto::v1::state_machine_client::StateMachineClient;

use super::harness::{Cluster, NodeId, SETTLE, deploy_spinning};

/// Who a call comes from: the columns of [`TABLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    /// No credential at all.
    None,
    /// `authorization: Bearer` with something that is not a token.
    Malformed,
    /// A well-formed token the cluster never issued.
    Unknown,
    /// A token of a cluster admin, revoked.
    Revoked,
    /// A node signing with another cluster secret.
    Alien,
    Admin,
    Operator,
    Viewer,
    /// `module_deployer` on `count*`, which matches `counter`.
    DeployerMatching,
    /// `module_deployer` on `bank-*`.
    DeployerOther,
    /// `module_invoker` on `counter`.
    InvokerMatching,
    InvokerOther,
    /// `module_querier` on `*`.
    QuerierMatching,
    QuerierOther,
    /// A node of this cluster (its secret, its cluster id).
    Peer,
}

const COLUMNS: [Column; 15] = [
    Column::None,
    Column::Malformed,
    Column::Unknown,
    Column::Revoked,
    Column::Alien,
    Column::Admin,
    Column::Operator,
    Column::Viewer,
    Column::DeployerMatching,
    Column::DeployerOther,
    Column::InvokerMatching,
    Column::InvokerOther,
    Column::QuerierMatching,
    Column::QuerierOther,
    Column::Peer,
];

/// The subjects holding one role each, with the binding that gives it.
const SUBJECTS: [(Column, &str, &str, Option<&str>); 9] = [
    (Column::Operator, "ops", "cluster_operator", None),
    (Column::Viewer, "watcher", "cluster_viewer", None),
    (
        Column::DeployerMatching,
        "ci-counter",
        "module_deployer",
        Some("count*"),
    ),
    (
        Column::DeployerOther,
        "ci-bank",
        "module_deployer",
        Some("bank-*"),
    ),
    (
        Column::InvokerMatching,
        "app-counter",
        "module_invoker",
        Some("counter"),
    ),
    (
        Column::InvokerOther,
        "app-bank",
        "module_invoker",
        Some("bank-*"),
    ),
    (
        Column::QuerierMatching,
        "reader",
        "module_querier",
        Some("*"),
    ),
    (
        Column::QuerierOther,
        "reader-bank",
        "module_querier",
        Some("bank-*"),
    ),
    (Column::Revoked, "former-admin", "cluster_admin", None),
];

const OK: Code = Code::Ok;
const UA: Code = Code::Unauthenticated;
const PD: Code = Code::PermissionDenied;
const IA: Code = Code::InvalidArgument;
const NF: Code = Code::NotFound;
const UI: Code = Code::Unimplemented;

/// Every method, the code it answers each column with. Allowed callers send
/// a request that fails after authorisation where succeeding would change
/// the cluster (add node 0, remove node 99, remove a module that does not
/// exist, grant an invalid binding, …), so the table can run on every node.
#[rustfmt::skip]
const TABLE: &[(&str, [Code; 15])] = &[
    //                             none bad  unkn revk alien admin oper view dep+ dep- inv+ inv- qry+ qry- peer
    ("Cluster.Status",             [UA,  UA,  UA,  UA,  UA,   OK,  OK,  OK,  PD,  PD,  PD,  PD,  PD,  PD,  OK]),
    ("Cluster.AddNode",            [UA,  UA,  UA,  UA,  UA,   IA,  IA,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Cluster.RemoveNode",         [UA,  UA,  UA,  UA,  UA,   NF,  NF,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Cluster.TransferLeader",     [UA,  UA,  UA,  UA,  UA,   UI,  UI,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Cluster.Snapshot",           [UA,  UA,  UA,  UA,  UA,   OK,  OK,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Cluster.Health",             [OK,  OK,  OK,  OK,  OK,   OK,  OK,  OK,  OK,  OK,  OK,  OK,  OK,  OK,  OK]),
    ("Cluster.GetSettings",        [UA,  UA,  UA,  UA,  UA,   OK,  OK,  OK,  PD,  PD,  PD,  PD,  PD,  PD,  OK]),
    ("Cluster.SetSettings",        [UA,  UA,  UA,  UA,  UA,   IA,  IA,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Modules.Deploy",             [UA,  UA,  UA,  UA,  UA,   IA,  IA,  PD,  IA,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Modules.DeployWithProgress", [UA,  UA,  UA,  UA,  UA,   IA,  IA,  PD,  IA,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Modules.List",               [UA,  UA,  UA,  UA,  UA,   OK,  OK,  OK,  OK,  OK,  OK,  OK,  OK,  OK,  OK]),
    ("Modules.Get",                [UA,  UA,  UA,  UA,  UA,   OK,  OK,  OK,  OK,  PD,  OK,  PD,  OK,  PD,  PD]),
    ("Modules.Remove",             [UA,  UA,  UA,  UA,  UA,   NF,  NF,  PD,  NF,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("StateMachine.Invoke",        [UA,  UA,  UA,  UA,  UA,   OK,  PD,  PD,  PD,  PD,  OK,  PD,  PD,  PD,  PD]),
    ("StateMachine.Query",         [UA,  UA,  UA,  UA,  UA,   OK,  PD,  PD,  PD,  PD,  OK,  PD,  OK,  PD,  PD]),
    ("StateMachine.OpenSession",   [UA,  UA,  UA,  UA,  UA,   OK,  PD,  PD,  PD,  PD,  OK,  OK,  PD,  PD,  PD]),
    ("Access.Grant",               [UA,  UA,  UA,  UA,  UA,   IA,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Access.Revoke",              [UA,  UA,  UA,  UA,  UA,   NF,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Access.List",                [UA,  UA,  UA,  UA,  UA,   OK,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Access.CreateToken",         [UA,  UA,  UA,  UA,  UA,   IA,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Access.RevokeToken",         [UA,  UA,  UA,  UA,  UA,   NF,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD]),
    ("Access.WhoAmI",              [UA,  UA,  UA,  UA,  UA,   OK,  OK,  OK,  OK,  OK,  OK,  OK,  OK,  OK,  OK]),
    // A client credential, valid or not, has no business on a peer method.
    ("Raft.AppendEntries",         [UA,  PD,  PD,  PD,  UA,   PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  IA]),
    ("Raft.Vote",                  [UA,  PD,  PD,  PD,  UA,   PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  IA]),
    ("Raft.InstallSnapshot",       [UA,  PD,  PD,  PD,  UA,   PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  IA]),
    ("Raft.Handshake",             [UA,  PD,  PD,  PD,  UA,   PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  OK]),
    ("Raft.Forward",               [UA,  PD,  PD,  PD,  UA,   PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  PD,  IA]),
];

/// How each column authenticates.
enum Credential {
    Nothing,
    Bearer(String),
    Node(PeerAuth),
}

impl Credential {
    fn stamp<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(Duration::from_secs(20));
        match self {
            Credential::Nothing => {}
            Credential::Bearer(token) => {
                let value = MetadataValue::try_from(format!("Bearer {token}")).unwrap();
                request.metadata_mut().insert("authorization", value);
            }
            Credential::Node(auth) => auth.stamp(request.metadata_mut()),
        }
        request
    }
}

/// A token for each role, made through the `Access` service as an
/// administrator would.
async fn credentials(cluster: &Cluster) -> Vec<(Column, Credential)> {
    let admin = cluster.client_of(1).await;
    let mut tokens = Vec::new();
    for (column, subject, role, pattern) in SUBJECTS {
        let binding = RoleBinding::new(subject, role, pattern).unwrap();
        admin.grant(&binding).await.unwrap();
        let created = admin.create_token(subject).await.unwrap();
        tokens.push((column, created));
    }
    let revoked = &tokens
        .iter()
        .find(|(c, _)| *c == Column::Revoked)
        .unwrap()
        .1;
    admin.revoke_token(&revoked.token_id).await.unwrap();

    let cluster_id = cluster.cluster_id();
    let node = |secret| Credential::Node(Cluster::node_credentials(secret, &cluster_id));
    COLUMNS
        .iter()
        .map(|column| {
            let credential = match column {
                Column::None => Credential::Nothing,
                Column::Malformed => Credential::Bearer("not-a-token".to_owned()),
                Column::Unknown => {
                    Credential::Bearer(format!("wr_{}_{}", "0f".repeat(8), "5a".repeat(32)))
                }
                Column::Alien => node(ClusterSecret::new(&[7; 32]).unwrap()),
                Column::Peer => node(ClusterSecret::from_file(&cluster.secret_file).unwrap()),
                Column::Admin => Credential::Bearer(cluster.admin_token.clone().unwrap()),
                held => Credential::Bearer(
                    tokens
                        .iter()
                        .find(|(c, _)| c == held)
                        .map(|(_, created)| created.token.clone())
                        .unwrap(),
                ),
            };
            (*column, credential)
        })
        .collect()
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// A deploy stream of `counter` whose header is right and whose bytes are
/// not wasm: refused after authorisation, as an invalid module.
fn deploy_stream() -> impl futures::Stream<Item = proto::DeployChunk> + Send + 'static {
    use proto::deploy_chunk::Content;
    use sha2::Digest;
    let bytes = b"not a wasm module".to_vec();
    let header = proto::DeployHeader {
        name: "counter".to_owned(),
        sha256_hex: hex::encode(sha2::Sha256::digest(&bytes)),
        size_bytes: bytes.len() as u64,
        ..Default::default()
    };
    futures::stream::iter([
        proto::DeployChunk {
            content: Some(Content::Header(header)),
        },
        proto::DeployChunk {
            content: Some(Content::Data(bytes)),
        },
    ])
}

fn garbage() -> proto::RaftRequest {
    proto::RaftRequest {
        encoding_version: wire::WIRE_ENCODING_VERSION,
        payload: vec![0xff; 3],
    }
}

/// The code `method` answers on node `id` for `credential`.
async fn call(channel: Channel, method: &str, credential: &Credential, call_index: u64) -> Code {
    let mut cluster = ClusterClient::new(channel.clone());
    let mut modules = ModulesClient::new(channel.clone());
    let mut machine = StateMachineClient::new(channel.clone());
    let mut access = AccessClient::new(channel.clone());
    let mut raft = RaftClient::new(channel);
    match method {
        "Cluster.Status" => code(
            cluster
                .status(credential.stamp(proto::StatusRequest { local_only: true }))
                .await,
        ),
        "Cluster.AddNode" => code(
            cluster
                .add_node(credential.stamp(proto::AddNodeRequest {
                    node_id: 0,
                    address: "127.0.0.1:1".to_owned(),
                }))
                .await,
        ),
        "Cluster.RemoveNode" => code(
            cluster
                .remove_node(credential.stamp(proto::RemoveNodeRequest { node_id: 99 }))
                .await,
        ),
        "Cluster.TransferLeader" => code(
            cluster
                .transfer_leader(credential.stamp(proto::TransferLeaderRequest { to_node_id: 1 }))
                .await,
        ),
        "Cluster.Snapshot" => code(
            cluster
                .snapshot(credential.stamp(proto::SnapshotRequest::default()))
                .await,
        ),
        "Cluster.Health" => code(
            cluster
                .health(credential.stamp(proto::HealthRequest {}))
                .await,
        ),
        "Cluster.GetSettings" => code(
            cluster
                .get_settings(credential.stamp(proto::GetSettingsRequest {}))
                .await,
        ),
        "Cluster.SetSettings" => code(
            cluster
                .set_settings(credential.stamp(proto::SetSettingsRequest::default()))
                .await,
        ),
        "Modules.Deploy" => code(modules.deploy(credential.stamp(deploy_stream())).await),
        "Modules.DeployWithProgress" => {
            match modules
                .deploy_with_progress(credential.stamp(deploy_stream()))
                .await
            {
                Err(status) => status.code(),
                Ok(events) => {
                    let mut events = events.into_inner();
                    loop {
                        match events.message().await {
                            Ok(Some(_)) => continue,
                            Ok(None) => break Code::Ok,
                            Err(status) => break status.code(),
                        }
                    }
                }
            }
        }
        "Modules.List" => code(
            modules
                .list(credential.stamp(proto::ListModulesRequest {}))
                .await,
        ),
        "Modules.Get" => code(
            modules
                .get(credential.stamp(proto::GetModuleRequest {
                    name: "counter".to_owned(),
                }))
                .await,
        ),
        "Modules.Remove" => code(
            modules
                .remove(credential.stamp(proto::RemoveModuleRequest {
                    name: "counter-gone".to_owned(),
                }))
                .await,
        ),
        "StateMachine.Invoke" => code(
            machine
                .invoke(credential.stamp(proto::InvokeRequest {
                    module: "counter".to_owned(),
                    input: br#"{"op":"add","by":1}"#.to_vec(),
                    ..Default::default()
                }))
                .await,
        ),
        "StateMachine.Query" => code(
            machine
                .query(credential.stamp(proto::QueryRequest {
                    module: "counter".to_owned(),
                    input: br#"{"op":"get"}"#.to_vec(),
                    consistency: proto::Consistency::Linearizable as i32,
                }))
                .await,
        ),
        "StateMachine.OpenSession" => code(
            machine
                .open_session(credential.stamp(proto::OpenSessionRequest {
                    client_id: format!("access-table-{call_index}"),
                }))
                .await,
        ),
        "Access.Grant" => code(
            access
                .grant(credential.stamp(proto::GrantRequest {
                    binding: Some(proto::RoleBinding {
                        subject: "someone".to_owned(),
                        role: proto::Role::Unspecified as i32,
                        module_pattern: None,
                    }),
                }))
                .await,
        ),
        "Access.Revoke" => code(
            access
                .revoke(credential.stamp(proto::RevokeRequest {
                    binding: Some(proto::RoleBinding {
                        subject: "nobody-holds-this".to_owned(),
                        role: proto::Role::ClusterViewer as i32,
                        module_pattern: None,
                    }),
                }))
                .await,
        ),
        "Access.List" => code(
            access
                .list(credential.stamp(proto::ListRoleBindingsRequest::default()))
                .await,
        ),
        "Access.CreateToken" => code(
            access
                .create_token(credential.stamp(proto::CreateTokenRequest {
                    subject: String::new(),
                }))
                .await,
        ),
        "Access.RevokeToken" => code(
            access
                .revoke_token(credential.stamp(proto::RevokeTokenRequest {
                    token_id: "ffffffffffffffff".to_owned(),
                }))
                .await,
        ),
        "Access.WhoAmI" => code(
            access
                .who_am_i(credential.stamp(proto::WhoAmIRequest {}))
                .await,
        ),
        "Raft.AppendEntries" => code(raft.append_entries(credential.stamp(garbage())).await),
        "Raft.Vote" => code(raft.vote(credential.stamp(garbage())).await),
        "Raft.InstallSnapshot" => code(raft.install_snapshot(credential.stamp(garbage())).await),
        "Raft.Handshake" => code(
            raft.handshake(credential.stamp(proto::HandshakeRequest {
                node_id: 99,
                cluster_id: String::new(),
                engine_compatibility_hash: Vec::new(),
            }))
            .await,
        ),
        "Raft.Forward" => code(raft.forward(credential.stamp(garbage())).await),
        other => panic!("the table names no method {other}"),
    }
}

async fn channel(cluster: &Cluster, id: NodeId) -> Channel {
    Channel::from_shared(format!("http://{}", cluster.address(id)))
        .unwrap()
        .connect()
        .await
        .expect("the node listens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_method_answers_every_caller_with_its_exact_code_on_every_node() {
    let cluster = Cluster::start_secure(3).await;
    cluster.deploy_counter(1).await;
    let credentials = credentials(&cluster).await;
    let before = cluster.counter(1).await;

    let mut wrong = Vec::new();
    let mut call_index = 0;
    let mut allowed_invokes = 0;
    for id in cluster.running() {
        let channel = channel(&cluster, id).await;
        for (method, expected) in TABLE {
            for ((column, credential), expected) in credentials.iter().zip(expected) {
                call_index += 1;
                let got = call(channel.clone(), method, credential, call_index).await;
                if *method == "StateMachine.Invoke" && got == Code::Ok {
                    allowed_invokes += 1;
                }
                if got != *expected {
                    wrong.push(format!(
                        "node {id}, {method}, {column:?}: expected {expected:?}, got {got:?}"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // The allowed invokes were applied, once each; the refused ones not.
    assert_eq!(cluster.counter(1).await, before + allowed_invokes);
    cluster.assert_converged().await;
    cluster.shutdown().await;
}

/// An invoke of `module` for the holder of `token`, without a session, as
/// a raw gRPC call: the code and message.
async fn raw_invoke(channel: Channel, token: &str, module: &str, input: &[u8]) -> (Code, String) {
    let credential = Credential::Bearer(token.to_owned());
    let mut request = credential.stamp(proto::InvokeRequest {
        module: module.to_owned(),
        input: input.to_vec(),
        ..Default::default()
    });
    request.set_timeout(SETTLE * 2);
    match StateMachineClient::new(channel).invoke(request).await {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// A revoke returns once every node applied it. A write authorised before
/// the revoke, but ordered after it in the log, is refused when it applies;
/// one sent after the revoke returned is refused at the edge, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoke_outruns_the_writes_in_flight_on_every_node() {
    let cluster = Cluster::start_secure(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.deploy_counter(leader).await;
    // The revokes below wait for every node's apply, held up by the spin.
    let admin = Client::connect_with(
        &format!("http://{}", cluster.address(leader)),
        ClientConfig {
            request_timeout: SETTLE * 2,
            bearer_token: cluster.admin_token.clone(),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();

    // A module whose apply spins until its fuel runs out, with fuel for a
    // few seconds: while it applies, later entries wait behind it.
    const SPIN_FUEL: u64 = 1_500_000_000;
    deploy_spinning(
        &cluster,
        "spin",
        r#"(func (export "apply") (param i32 i32) (result i32)
            (loop $spin (br $spin)) (i32.const 0))"#,
        SPIN_FUEL,
    )
    .await;

    // Two writers of the counter: one loses its role, one its token.
    let binding = RoleBinding::new("writer", "module_invoker", Some("counter")).unwrap();
    admin.grant(&binding).await.unwrap();
    let role_writer = admin.create_token("writer").await.unwrap();
    let token_writer = admin.create_token("writer").await.unwrap();
    let add = br#"{"op":"add","by":1}"#;
    let leader_channel = channel(&cluster, leader).await;
    for token in [&role_writer.token, &token_writer.token] {
        let (code, message) = raw_invoke(leader_channel.clone(), token, "counter", add).await;
        assert_eq!(code, Code::Ok, "{message}");
    }
    let before = cluster.counter(leader).await;
    let handle = cluster.node(leader).handle().clone();
    let revision = handle.gate().view().revision;

    // Each of these goes into the log behind the previous one.
    let appended = |index: u64| {
        let handle = handle.clone();
        async move {
            handle
                .consensus()
                .wait_until(SETTLE, "the entry is in the leader's log", |metrics| {
                    metrics.last_log_index() >= Some(index)
                })
                .await
                .unwrap();
        }
    };
    let start = handle.cluster_view().last_log_index.unwrap();
    let spinning = tokio::spawn({
        let channel = leader_channel.clone();
        let token = cluster.admin_token.clone().unwrap();
        async move { raw_invoke(channel, &token, "spin", b"").await }
    });
    appended(start + 1).await;
    let revoke_role = tokio::spawn({
        let admin = admin.clone();
        let binding = binding.clone();
        async move { admin.revoke(&binding).await }
    });
    appended(start + 2).await;
    let revoke_token = tokio::spawn({
        let admin = admin.clone();
        let token_id = token_writer.token_id.clone();
        async move { admin.revoke_token(&token_id).await }
    });
    appended(start + 3).await;

    // Both revokes are in the log, not yet applied anywhere: the spin still
    // holds every node's apply. Writes sent now pass every edge.
    let mut in_flight = Vec::new();
    for id in cluster.running() {
        assert_eq!(
            cluster.node(id).handle().gate().view().revision,
            revision,
            "node {id} applied a revoke before the writes were sent: the spin did not hold apply"
        );
        let channel = channel(&cluster, id).await;
        for token in [&role_writer.token, &token_writer.token] {
            let channel = channel.clone();
            let token = token.clone();
            in_flight.push((
                id,
                tokio::spawn(async move { raw_invoke(channel, &token, "counter", add).await }),
            ));
        }
    }
    assert!(!revoke_role.is_finished() && !revoke_token.is_finished());

    let (code, message) = spinning.await.unwrap();
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    revoke_role.await.unwrap().unwrap();
    revoke_token.await.unwrap().unwrap();
    for (index, (id, write)) in in_flight.into_iter().enumerate() {
        let (code, message) = write.await.unwrap();
        let (expected_code, expected_message) = if index % 2 == 0 {
            (
                Code::PermissionDenied,
                "`writer` may no longer invoke module `counter`",
            )
        } else {
            (
                Code::Unauthenticated,
                "was revoked before the command applied",
            )
        };
        assert_eq!(code, expected_code, "through node {id}: {message}");
        assert!(
            message.contains(expected_message),
            "through node {id}: {message}"
        );
    }

    // The revokes returned: every node refuses both writers at its edge.
    for id in cluster.running() {
        let channel = channel(&cluster, id).await;
        let (code, message) = raw_invoke(channel.clone(), &role_writer.token, "counter", add).await;
        assert_eq!(code, Code::PermissionDenied, "node {id}: {message}");
        let (code, message) = raw_invoke(channel, &token_writer.token, "counter", add).await;
        assert_eq!(code, Code::Unauthenticated, "node {id}: {message}");
    }
    assert_eq!(cluster.counter(leader).await, before);
    cluster.assert_converged().await;
    cluster.shutdown().await;
}

/// The CLI's view of the same: `whoami` and `access list` for a token, and
/// a client without a token told what to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_names_the_caller_and_its_roles() {
    let cluster = Cluster::start_secure(1).await;
    let admin = cluster.client_of(1).await;
    let who = admin.who_am_i().await.unwrap();
    assert_eq!(who.subject, "admin");
    assert!(who.authenticated);
    assert_eq!(
        who.bindings,
        [RoleBinding::new("admin", "cluster_admin", None).unwrap()]
    );
    let binding = RoleBinding::new("app", "module_querier", Some("bank-*")).unwrap();
    admin.grant(&binding).await.unwrap();
    // Granting again is no error, and lists once.
    admin.grant(&binding).await.unwrap();
    let created = admin.create_token("app").await.unwrap();
    assert_eq!(
        admin.role_bindings(Some("app")).await.unwrap(),
        std::slice::from_ref(&binding)
    );
    let app = cluster
        .client_with_token(1, Some(created.token.clone()))
        .await;
    let who = app.who_am_i().await.unwrap();
    assert_eq!(
        (who.subject.as_str(), who.token_id.as_deref()),
        ("app", Some(created.token_id.as_str()))
    );
    assert_eq!(who.bindings, std::slice::from_ref(&binding));
    let refused = app.role_bindings(None).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::PermissionDenied), "{refused}");
    assert!(refused.to_string().contains("`app` may not"), "{refused}");

    let anonymous: Client = cluster.client_with_token(1, None).await;
    let refused = anonymous.who_am_i().await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unauthenticated), "{refused}");
    assert!(refused.to_string().contains("Bearer"), "{refused}");

    admin.revoke(&binding).await.unwrap();
    let again = admin.revoke(&binding).await.unwrap_err();
    assert_eq!(again.code(), Some(Code::NotFound), "{again}");
    admin.revoke_token(&created.token_id).await.unwrap();
    let refused = app.who_am_i().await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unauthenticated), "{refused}");
    cluster.shutdown().await;
}
