//! An in-process cluster for tests: nodes on loopback ports chosen by the
//! OS, each with its own data directory, all sharing one fault policy that
//! can cut chosen links; helpers to find the leader, stop and restart
//! nodes, write through the client and compare state digests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use wasmraft::auth::tls::TlsSettings;
use wasmraft::auth::{ClusterSecret, PeerAuth};
use wasmraft::client::{Client, ClientConfig, Consistency, DeployOptions};
use wasmraft::node::config::{LimitSettings, NodeConfig, RaftSettings};
use wasmraft::node::{Node, NodeOptions, RunningNode};
use wasmraft::raft::Role;
use wasmraft::raft::network::{FaultDecision, Faults};
use wasmraft::wasm::CompileFaults;

pub type NodeId = u64;

/// How long a test waits for the cluster to reach a state it must reach.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Raft timing for tests: the defaults' ratios, a little slower, so a
/// test binary busy compiling wasm on two cores does not depose healthy
/// leaders all the time (elections still happen well within a second).
pub fn test_raft_settings() -> RaftSettings {
    RaftSettings {
        heartbeat_interval_ms: 100,
        election_timeout_ms_min: 400,
        election_timeout_ms_max: 800,
        ..RaftSettings::default()
    }
}

/// Links cut or slowed by the test, as (from, to) pairs.
#[derive(Clone, Default)]
pub struct Links {
    cut: Arc<Mutex<BTreeSet<(NodeId, NodeId)>>>,
    slow: Arc<Mutex<BTreeMap<(NodeId, NodeId), Duration>>>,
}

impl Links {
    pub fn faults(&self) -> Faults {
        let (cut, slow) = (self.cut.clone(), self.slow.clone());
        Faults::from_fn(move |from, to| {
            if cut.lock().unwrap().contains(&(from, to)) {
                FaultDecision::Drop
            } else if let Some(delay) = slow.lock().unwrap().get(&(from, to)) {
                FaultDecision::Delay(*delay)
            } else {
                FaultDecision::Deliver
            }
        })
    }

    /// Delays every message `from → to` by `delay`.
    pub fn slow_down(&self, from: NodeId, to: NodeId, delay: Duration) {
        self.slow.lock().unwrap().insert((from, to), delay);
    }

    /// Cuts every link between `node` and the `others`, both ways.
    pub fn isolate(&self, node: NodeId, others: impl IntoIterator<Item = NodeId>) {
        let mut cut = self.cut.lock().unwrap();
        for other in others {
            cut.insert((node, other));
            cut.insert((other, node));
        }
    }

    /// Cuts the link `from → to` only.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.cut.lock().unwrap().insert((from, to));
    }

    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
        self.slow.lock().unwrap().clear();
    }
}

/// One node slot: its directory and address survive a stop.
struct Slot {
    directory: TempDir,
    address: Option<SocketAddr>,
    running: Option<RunningNode>,
    /// Kept across restarts: a test turns it off before restarting.
    compile_faults: CompileFaults,
}

/// An in-process cluster.
pub struct Cluster {
    slots: BTreeMap<NodeId, Slot>,
    pub links: Links,
    raft: RaftSettings,
    /// The cluster secret every node is started with, and its directory.
    pub secret_file: PathBuf,
    _secret_directory: TempDir,
    /// Whether nodes authenticate their callers; `admin_token` is then the
    /// token node 1's bootstrap created, which [`Cluster::client_of`] sends.
    secure: bool,
    pub admin_token: Option<String>,
    /// With TLS: every node's settings (one certificate for all, for
    /// 127.0.0.1), and the authority clients check it against.
    tls: Option<TlsSettings>,
    pub tls_authority: Option<TestAuthority>,
    /// Every node's own limits (`[limits]`).
    limits: LimitSettings,
}

/// A certificate authority made for one test, and what it signed, as PEM
/// files in a directory of the test.
pub struct TestAuthority {
    certificate: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub certificate_pem: String,
    directory: PathBuf,
}

impl TestAuthority {
    pub fn new(name: &str, directory: &std::path::Path) -> TestAuthority {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let certificate_pem = certificate.pem();
        let directory = directory.join(name);
        std::fs::create_dir_all(&directory).unwrap();
        std::fs::write(directory.join("ca.pem"), &certificate_pem).unwrap();
        TestAuthority {
            certificate,
            key,
            certificate_pem,
            directory,
        }
    }

    /// The authority's certificate file.
    pub fn certificate_file(&self) -> PathBuf {
        self.directory.join("ca.pem")
    }

    /// A certificate for `common_name`, valid for `addresses` (IPs or DNS
    /// names; none for a client): (certificate PEM, key PEM), also written
    /// as `<common_name>.pem` and `<common_name>.key`.
    pub fn issue(&self, common_name: &str, addresses: &[&str]) -> (String, String) {
        let names: Vec<String> = addresses.iter().map(|name| (*name).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .unwrap();
        let (certificate, key) = (certificate.pem(), key.serialize_pem());
        std::fs::write(
            self.directory.join(format!("{common_name}.pem")),
            &certificate,
        )
        .unwrap();
        std::fs::write(self.directory.join(format!("{common_name}.key")), &key).unwrap();
        (certificate, key)
    }

    /// The files [`TestAuthority::issue`] wrote for `common_name`.
    pub fn files(&self, common_name: &str) -> (PathBuf, PathBuf) {
        (
            self.directory.join(format!("{common_name}.pem")),
            self.directory.join(format!("{common_name}.key")),
        )
    }
}

impl Cluster {
    /// Starts node 1 as a one-member cluster and adds nodes `2..=size`
    /// through the `Cluster.AddNode` API.
    pub async fn start(size: u64) -> Cluster {
        Self::start_with(size, test_raft_settings()).await
    }

    pub async fn start_with(size: u64, raft: RaftSettings) -> Cluster {
        Self::start_as(size, raft, false, false).await
    }

    /// Like [`Cluster::start`], with nodes that authenticate their callers
    /// (as `serve --node-id` does unless `--insecure`).
    pub async fn start_secure(size: u64) -> Cluster {
        Self::start_as(size, test_raft_settings(), true, false).await
    }

    /// Like [`Cluster::start_secure`], every node serving TLS with a
    /// certificate of a test authority, which also signs client
    /// certificates (mTLS).
    pub async fn start_tls(size: u64) -> Cluster {
        Self::start_as(size, test_raft_settings(), true, true).await
    }

    /// Like [`Cluster::start_secure`], every node with `limits`.
    pub async fn start_secure_limited(size: u64, limits: LimitSettings) -> Cluster {
        Self::start_as_limited(size, test_raft_settings(), true, false, limits).await
    }

    async fn start_as(size: u64, raft: RaftSettings, secure: bool, tls: bool) -> Cluster {
        Self::start_as_limited(size, raft, secure, tls, LimitSettings::default()).await
    }

    pub(super) async fn start_as_limited(
        size: u64,
        raft: RaftSettings,
        secure: bool,
        tls: bool,
        limits: LimitSettings,
    ) -> Cluster {
        let secret_directory = tempfile::tempdir().unwrap();
        let (tls, tls_authority) = if tls {
            let authority = TestAuthority::new("wasmraft-test-ca", secret_directory.path());
            authority.issue("node", &["127.0.0.1", "localhost"]);
            let (cert_file, key_file) = authority.files("node");
            let settings = TlsSettings {
                cert_file: Some(cert_file),
                key_file: Some(key_file),
                client_ca_file: Some(authority.certificate_file()),
                peer_ca_file: None,
            };
            (Some(settings), Some(authority))
        } else {
            (None, None)
        };
        let secret_file = secret_directory.path().join("cluster-secret");
        std::fs::write(&secret_file, ClusterSecret::generate().unwrap()).unwrap();
        let mut cluster = Cluster {
            slots: BTreeMap::new(),
            links: Links::default(),
            raft,
            secret_file,
            _secret_directory: secret_directory,
            secure,
            admin_token: None,
            tls,
            tls_authority,
            limits,
        };
        cluster.launch(1, true).await;
        cluster.wait_for_leader().await;
        if secure {
            let file = cluster.slots[&1].directory.path().join("admin.token");
            let token =
                std::fs::read_to_string(&file).expect("the bootstrap wrote the admin token");
            cluster.admin_token = Some(token.trim().to_owned());
        }
        for id in 2..=size {
            cluster.launch(id, false).await;
            cluster.add(id).await.expect("the node joins");
        }
        cluster
    }

    /// The id node 1's bootstrap gave the cluster.
    pub fn cluster_id(&self) -> String {
        self.node(1)
            .handle()
            .peer_auth()
            .cluster_id()
            .expect("the bootstrap named the cluster")
    }

    /// What a node (id 99, no member) signing with `secret` for
    /// `cluster_id` stamps on its calls.
    pub fn node_credentials(secret: ClusterSecret, cluster_id: &str) -> PeerAuth {
        let auth = PeerAuth::new(99, Some(secret), Box::new(|| None));
        auth.adopt(cluster_id);
        auth
    }

    /// Starts node `id` (a new slot, or the existing one's directory and
    /// address).
    pub async fn launch(&mut self, id: NodeId, bootstrap: bool) {
        self.try_launch(id, bootstrap)
            .await
            .unwrap_or_else(|error| panic!("node {id} starts: {error}"));
    }

    /// Starts node `id` as [`Cluster::launch`] does, answering why it
    /// could not start.
    pub async fn try_launch(
        &mut self,
        id: NodeId,
        bootstrap: bool,
    ) -> Result<(), wasmraft::node::StartError> {
        let slot = self.slots.entry(id).or_insert_with(|| Slot {
            directory: TempDir::new().unwrap(),
            address: None,
            running: None,
            compile_faults: CompileFaults::default(),
        });
        assert!(slot.running.is_none(), "node {id} runs already");
        let config = NodeConfig {
            node_id: id,
            listen: slot
                .address
                .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
            advertise: None,
            data_dir: slot.directory.path().to_path_buf(),
            bootstrap,
            cluster_secret_file: Some(self.secret_file.clone()),
            insecure: !self.secure,
            tls: self.tls.clone().unwrap_or_default(),
            raft: self.raft.clone(),
            limits: self.limits.clone(),
            membership: Default::default(),
            cluster: Default::default(),
            telemetry: Default::default(),
        };
        let options = NodeOptions {
            faults: self.links.faults(),
            // Tests check what happens, not how fast: a debug build on a
            // busy machine may take long to compile a deployed module.
            consensus_timeout: Duration::from_secs(60),
            compile_faults: slot.compile_faults.clone(),
            ..NodeOptions::default()
        };
        let node = Node::start(config, options).await?;
        slot.address = Some(node.local_addr());
        slot.running = Some(node);
        Ok(())
    }

    /// The switch that makes node `id`'s compilations fail.
    pub fn compile_faults(&self, id: NodeId) -> CompileFaults {
        self.slots[&id].compile_faults.clone()
    }

    /// Replaces node `id`'s data directory with an empty one (its address
    /// is kept). The node must be stopped.
    pub fn wipe(&mut self, id: NodeId) {
        let slot = self.slots.get_mut(&id).unwrap();
        assert!(slot.running.is_none(), "stop node {id} before wiping it");
        slot.directory = TempDir::new().unwrap();
    }

    /// Adds node `id` (running) to the cluster through any running node.
    pub async fn add(&self, id: NodeId) -> Result<(), wasmraft::client::ClientError> {
        let address = self.address(id);
        let client = self.client_of(self.any_running_except(id)).await;
        client
            .add_node(id, &address.to_string(), SETTLE)
            .await
            .map(|_| ())
    }

    pub fn address(&self, id: NodeId) -> SocketAddr {
        self.slots[&id].address.expect("the node was started")
    }

    pub fn node(&self, id: NodeId) -> &RunningNode {
        self.slots[&id]
            .running
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub fn running(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.running.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn any_running_except(&self, id: NodeId) -> NodeId {
        self.running()
            .into_iter()
            .find(|other| *other != id)
            .expect("another node runs")
    }

    /// Stops node `id`: Raft stops, the files are released, the slot keeps
    /// the directory for a restart.
    pub async fn stop(&mut self, id: NodeId) {
        let node = self.slots.get_mut(&id).unwrap().running.take();
        node.expect("the node runs")
            .shutdown()
            .await
            .unwrap_or_else(|error| panic!("node {id} stops: {error}"));
    }

    /// Stops node `id` whose Raft already stopped on a fatal error: its
    /// shutdown may report that error, which is expected here.
    pub async fn stop_failed(&mut self, id: NodeId) {
        let node = self.slots.get_mut(&id).unwrap().running.take();
        let _ = node.expect("the node runs").shutdown().await;
    }

    /// Forgets a removed node entirely.
    pub async fn discard(&mut self, id: NodeId) {
        if self.slots[&id].running.is_some() {
            self.stop(id).await;
        }
        self.slots.remove(&id);
    }

    /// A running node other than `leader`.
    pub fn follower_of(&self, leader: NodeId) -> NodeId {
        self.running()
            .into_iter()
            .find(|id| *id != leader)
            .expect("another node runs")
    }

    /// Waits until the running nodes agree on one running leader, and
    /// returns it.
    pub async fn wait_for_leader(&self) -> NodeId {
        self.wait_for_leader_among(&self.running()).await
    }

    /// Waits until one of `nodes` leads and every other one of them
    /// follows it.
    pub async fn wait_for_leader_among(&self, nodes: &[NodeId]) -> NodeId {
        let deadline = Instant::now() + SETTLE;
        loop {
            let views: Vec<_> = nodes
                .iter()
                .map(|id| self.node(*id).handle().cluster_view())
                .collect();
            let leaders: Vec<_> = views
                .iter()
                .filter(|view| view.role == Role::Leader)
                .collect();
            if let [leader] = leaders.as_slice()
                && views
                    .iter()
                    .all(|view| view.leader_id == Some(leader.this) && view.term == leader.term)
            {
                return leader.this;
            }
            assert!(
                Instant::now() < deadline,
                "no leader agreed among {nodes:?} within {SETTLE:?}: {views:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client of node `id`. An attempt may wait for an election and
    /// for two membership commits on a busy machine.
    pub async fn client_of(&self, id: NodeId) -> Client {
        self.client_with_token(id, self.admin_token.clone()).await
    }

    /// A client of node `id` sending `token` (none: no credential).
    pub async fn client_with_token(&self, id: NodeId, token: Option<String>) -> Client {
        self.client_with(
            id,
            ClientConfig {
                bearer_token: token,
                ca_certificate_pem: self
                    .tls_authority
                    .as_ref()
                    .map(|authority| authority.certificate_pem.clone().into_bytes()),
                ..Self::client_config()
            },
        )
        .await
    }

    /// The client configuration of tests: an attempt may wait for an
    /// election, and retries go on until the cluster settled.
    pub fn client_config() -> ClientConfig {
        ClientConfig {
            request_timeout: Duration::from_secs(10),
            retry_deadline: SETTLE,
            ..ClientConfig::default()
        }
    }

    /// A client of node `id` configured by `config`, over TLS when the
    /// cluster serves it.
    pub async fn client_with(&self, id: NodeId, config: ClientConfig) -> Client {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Client::connect_with(&format!("{scheme}://{}", self.address(id)), config)
            .await
            .unwrap()
    }

    /// Deploys the counter example through node `through`.
    pub async fn deploy_counter(&self, through: NodeId) {
        self.client_of(through)
            .await
            .deploy(
                "counter",
                wasmraft_examples::COUNTER_WASM,
                DeployOptions::default(),
            )
            .await
            .expect("the counter deploys");
    }

    /// The counter's value, read linearizably through node `through`.
    pub async fn counter(&self, through: NodeId) -> i64 {
        let output = self
            .client_of(through)
            .await
            .query("counter", br#"{"op":"get"}"#, Consistency::Linearizable)
            .await
            .expect("the counter answers")
            .output;
        let value: serde_json::Value = serde_json::from_slice(&output).unwrap();
        value["value"].as_i64().unwrap()
    }

    /// Waits until every running node has applied the same index, then
    /// asserts their state digests are equal. Returns the index.
    pub async fn assert_converged(&self) -> u64 {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut digests = BTreeMap::new();
            for id in self.running() {
                let reader = self.node(id).handle().reader().clone();
                let (applied, digest) = tokio::task::spawn_blocking(move || reader.digest())
                    .await
                    .unwrap()
                    .unwrap();
                digests.insert(id, (applied.map_or(0, |log_id| log_id.index), digest));
            }
            let last_log = self
                .running()
                .iter()
                .filter_map(|id| self.node(*id).handle().cluster_view().last_log_index)
                .max()
                .unwrap_or(0);
            let indexes: BTreeSet<u64> = digests.values().map(|(index, _)| *index).collect();
            if indexes.len() == 1 && indexes.first() == Some(&last_log) {
                let first = &digests.values().next().unwrap().1;
                assert!(
                    digests.values().all(|(_, digest)| digest == first),
                    "the nodes applied the same index but their states differ: {digests:?}"
                );
                return last_log;
            }
            assert!(
                Instant::now() < deadline,
                "the nodes did not converge within {SETTLE:?}: {digests:?}, last log index {last_log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }
}

/// Counts of a stream of counter increments: acknowledged ones must all be
/// in the final value; failed ones may or may not be.
#[derive(Default)]
pub struct Tally {
    pub acknowledged: AtomicU64,
    pub failed: AtomicU64,
    /// Woken at every outcome, for [`Tally::acknowledged_at_least`].
    counted: tokio::sync::Notify,
}

impl Tally {
    /// Waits until at least `target` increments were acknowledged.
    pub async fn acknowledged_at_least(&self, target: u64, during: &str) {
        let reached = async {
            loop {
                let counted = self.counted.notified();
                if self.acknowledged.load(Ordering::SeqCst) >= target {
                    return;
                }
                counted.await;
            }
        };
        tokio::time::timeout(SETTLE, reached)
            .await
            .unwrap_or_else(|_| panic!("no writes acknowledged {during}"));
    }

    /// Asserts that `value` holds every acknowledged increment and no more
    /// than were sent.
    pub fn check(&self, value: i64) {
        let acknowledged = self.acknowledged.load(Ordering::SeqCst) as i64;
        let failed = self.failed.load(Ordering::SeqCst) as i64;
        assert!(
            value >= acknowledged && value <= acknowledged + failed,
            "counter is {value}: {acknowledged} increments acknowledged, {failed} failed"
        );
    }
}

/// Adds 1 to the counter through `client`, `count` times, one after the
/// other, counting the outcomes.
pub async fn increment(client: &Client, count: u64, tally: &Tally) {
    for _ in 0..count {
        match client.invoke("counter", br#"{"op":"add","by":1}"#).await {
            Ok(_) => tally.acknowledged.fetch_add(1, Ordering::SeqCst),
            Err(_) => tally.failed.fetch_add(1, Ordering::SeqCst),
        };
        tally.counted.notify_waiters();
    }
}

/// Makes `call` up to `calls` times in a row until one fails: how many
/// passed, and the failure, if one came.
pub async fn until_refused<Call, Answer>(
    calls: usize,
    mut call: impl FnMut() -> Call,
) -> (usize, Option<tonic::Status>)
where
    Call: std::future::Future<Output = Result<Answer, tonic::Status>>,
{
    for passed in 0..calls {
        if let Err(status) = call().await {
            return (passed, Some(status));
        }
    }
    (calls, None)
}

/// Waits until `condition` holds, polling it, for at most [`SETTLE`]: for
/// state that gives no notification (a node's counters).
pub async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {SETTLE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One counter increment straight over gRPC, as `token` when given (no
/// client retries): the node's own answer.
pub async fn raw_increment(
    channel: &tonic::transport::Channel,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(wasmraft_proto::v1::InvokeRequest {
        module: "counter".to_owned(),
        input: br#"{"op":"add","by":1}"#.to_vec(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(20));
    if let Some(token) = token {
        let value = tonic::metadata::MetadataValue::try_from(format!("Bearer {token}")).unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    wasmraft_proto::v1::state_machine_client::StateMachineClient::new(channel.clone())
        .invoke(request)
        .await
        .map(drop)
}

/// Raises the cluster's fuel cap to `fuel` and deploys `name` from the
/// module items `items` (see `wasm::guest`) with that much fuel per call:
/// a module whose calls spin for seconds. A deploy goes to the leader (a
/// follower refuses it, naming the leader): asked again of the leader of
/// the moment if leadership moved on a busy machine.
pub async fn deploy_spinning(cluster: &Cluster, name: &str, items: &str, fuel: u64) {
    let leader = cluster.wait_for_leader().await;
    cluster
        .client_of(leader)
        .await
        .set_settings(&{
            let mut update = wasmraft::client::SettingsUpdate::default();
            update.set("fuel_per_call_max", fuel).unwrap();
            update
        })
        .await
        .unwrap();
    let wasm = crate::wasm::guest(items);
    let deadline = Instant::now() + SETTLE;
    loop {
        let leader = cluster.wait_for_leader().await;
        let deployed = cluster
            .client_of(leader)
            .await
            .deploy(
                name,
                &wasm,
                DeployOptions {
                    fuel_per_call_max: Some(fuel),
                    ..Default::default()
                },
            )
            .await;
        match deployed {
            Ok(_) => return,
            Err(error)
                if error.code() == Some(tonic::Code::Unavailable) && Instant::now() < deadline =>
            {
                tracing::info!(%error, "deploy refused by a former leader; asking again");
            }
            Err(error) => panic!("deploy {name}: {error}"),
        }
    }
}
