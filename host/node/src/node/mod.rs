//! The node: its settings (`config`, `address`), and the wiring of storage,
//! the wasm runtime, Raft, the Raft network and the gRPC server into one
//! running process ([`Node::start`] → [`RunningNode`]).
//!
//! Start order: bind the listener (so port 0 works and the bound address is
//! known), open the data directory (log, state, module cache), build Raft,
//! bootstrap a one-member cluster if asked and the log is empty (and record
//! its first cluster settings), then serve. Shutdown reverses it: stop accepting, stop Raft, release the
//! files (every acknowledged write was already committed durably).

pub mod address;
pub mod config;
pub mod error;
pub mod forward;
mod forward_batch;
mod gauges;
pub mod handle;
pub mod health;
pub mod membership;
mod read;
mod rounds;
mod route;
pub mod rules;
mod write;

pub use self::error::{ConsensusError, LeaderHint};
pub use self::handle::{ClusterView, NodeHandle};
pub use self::write::Proposed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tracing::Instrument;

use self::config::{ConfigError, NodeConfig, RaftSettings};
use crate::auth::peer::Peer;
use crate::auth::{Caller, ClusterSecret, Gate, PeerAuth, SecretError, Token};
use crate::command::settings;
use crate::command::{
    AccessChange, ClusterSettings, Command, Response, SettingsCommand, SettingsUpdate, TokenGrant,
};
use crate::raft::lease;
use crate::raft::network::{
    Faults, Forwarder, NetworkFactory, NetworkSettings, Reachability, Removal,
};
use crate::raft::{Consensus, NodeId};
use crate::storage::{
    DataDirectory, LogStore, OpenLogError, OpenStateError, StateMachineStore, StateReader,
};
use crate::telemetry::metrics::{Metrics, MetricsError};
use crate::wasm::{CompileFaults, Runtime, RuntimeConfig, RuntimeError};

/// Room around the largest log entry in one Raft message.
const RAFT_MESSAGE_OVERHEAD_BYTES: u64 = 1024 * 1024;
/// How long shutdown waits for in-flight requests before cutting them off.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Choices that are not node settings: made by the embedding program.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Faults injected into outgoing Raft RPCs (tests only).
    pub faults: Faults,
    /// The openraft cluster name, for its logs.
    pub cluster_name: String,
    /// How long a write or a linearizable read may wait for Raft.
    pub consensus_timeout: Duration,
    /// How long connecting to a peer may take.
    pub connect_timeout: Duration,
    /// Compilation failures injected into this node's runtime (tests only).
    pub compile_faults: CompileFaults,
    /// Why the node is not ready when it starts serving, until the
    /// embedding program calls `NodeHandle::ready` (a dev node deploying
    /// its examples): its health says `starting` meanwhile.
    pub starting: Option<String>,
    /// Whether an empty node told to bootstrap first listens for a cluster
    /// that counts it as a member (see `listen_before_bootstrap`). Off for
    /// a dev node, which never has peers.
    pub listen_before_bootstrap: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            faults: Faults::none(),
            cluster_name: "wasmraft".to_owned(),
            consensus_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            compile_faults: CompileFaults::default(),
            starting: None,
            listen_before_bootstrap: true,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use the data directory {path}: {source}")]
    DataDirectory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the wasm runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("cannot open the Raft log: {0}")]
    Log(#[from] OpenLogError),
    #[error("cannot open the state: {0}")]
    State(#[from] OpenStateError),
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot bootstrap the cluster: {0}")]
    Bootstrap(String),
    #[error(
        "node {id} is a member of {cluster} (node {by} sent it Raft messages) but its data directory is empty: it lost its data, and bootstrapping would found a second cluster under the same addresses. Start it without --bootstrap, then on a live member remove it and add it again (`wasmraft cluster remove-node {id}`, `wasmraft cluster add-node {id} ADDRESS`)"
    )]
    LostData {
        id: NodeId,
        by: NodeId,
        /// The cluster, as a refusal names it.
        cluster: String,
    },
    #[error(
        "node {id} is being added to {cluster} ({by} introduced itself to add it) while it waited to bootstrap: bootstrapping would found a second cluster under the same addresses. Start it without --bootstrap, and it joins the cluster that adds it"
    )]
    BeingAdded {
        id: NodeId,
        /// The leader that introduced itself, as a refusal names it.
        by: String,
        cluster: String,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cannot read the cluster settings: {0}")]
    Settings(#[from] redb::Error),
    #[error(
        "this node's wasm engine ({ours}) is not the cluster's ({cluster}): fuel and traps \
         would differ from the other members'; run the release the rest of the cluster runs"
    )]
    Engine { cluster: String, ours: String },
}

/// Why a node did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("the gRPC server failed: {0}")]
    Server(String),
    #[error("Raft did not stop cleanly: {0}")]
    Raft(String),
}

/// Starts nodes.
#[derive(Debug)]
pub struct Node;

/// A started node: serving gRPC, running Raft.
#[derive(Debug)]
pub struct RunningNode {
    handle: NodeHandle,
    local_addr: SocketAddr,
    data_directory: DataDirectory,
    stop_serving: Option<oneshot::Sender<()>>,
    /// The first administrator's token, when this start created it.
    admin_token: Option<Token>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The `/metrics` server, when one listens: its address and its stop.
    metrics_server: Option<(SocketAddr, oneshot::Sender<()>)>,
    /// Resolve once Raft's tasks have dropped the log and the state store.
    released: Vec<lease::Released>,
}

/// The largest Raft message: one deploy of the largest module with its
/// largest init argument, or one snapshot chunk, with room to spare.
pub fn raft_message_bytes_max(config: &NodeConfig) -> usize {
    let entry = settings::MODULE_BYTES_MAX_RANGE.1 + config.limits.payload_bytes_max;
    let bytes = entry.max(config.raft.snapshot_chunk_bytes) + RAFT_MESSAGE_OVERHEAD_BYTES;
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

impl Node {
    /// Starts a node: see the module documentation for the order of things.
    pub async fn start(
        config: NodeConfig,
        options: NodeOptions,
    ) -> Result<RunningNode, StartError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    address: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            address: config.listen,
            source,
        })?;
        // Port 0 is fine in-process: the bound port is known now.
        let config = NodeConfig {
            listen: local_addr,
            ..config
        };
        config.validate()?;
        // Raft's tasks start inside this span: every log line of this node
        // (several share a process in tests) carries its id.
        let span = tracing::info_span!("node", id = config.node_id);
        Self::start_bound(config, options, listener, local_addr)
            .instrument(span)
            .await
    }

    async fn start_bound(
        config: NodeConfig,
        options: NodeOptions,
        listener: TcpListener,
        local_addr: SocketAddr,
    ) -> Result<RunningNode, StartError> {
        let advertised = config.advertised_address();

        let data = DataDirectory::new(&config.data_dir);
        std::fs::create_dir_all(data.root()).map_err(|source| StartError::DataDirectory {
            path: data.root().to_path_buf(),
            source,
        })?;
        // The runtime is built for the largest values the cluster settings
        // may take; each call is capped by the settings in force.
        let runtime = Runtime::new(RuntimeConfig {
            fuel_per_call_max: settings::FUEL_PER_CALL_MAX_RANGE.1,
            memory_bytes_max: settings::MEMORY_BYTES_MAX_RANGE.1,
            module_bytes_max: usize::try_from(settings::MODULE_BYTES_MAX_RANGE.1)
                .unwrap_or(usize::MAX),
            output_bytes_max: usize::try_from(settings::OUTPUT_BYTES_MAX_RANGE.1)
                .unwrap_or(usize::MAX),
            cache_dir: Some(data.module_cache_directory()),
            query_timeout: Duration::from_millis(config.limits.query_timeout_ms),
            compile_faults: options.compile_faults.clone(),
            ..RuntimeConfig::default()
        })?;
        let metrics = Metrics::new(config.node_id, config.telemetry.otlp_endpoint.as_deref())?;
        let log = LogStore::open(data.log_file())
            .map_err(StartError::Log)?
            .with_metrics(metrics.clone());
        let state = StateMachineStore::open(data.state_directory(), runtime.clone())?
            .with_metrics(metrics.clone());
        let reader = state.reader();
        let access = state.access();
        check_engine(&reader, &runtime)?;
        let (log, log_released) = lease::lease(log);
        let (state, state_released) = lease::lease(state);

        let tls = config.tls.load().map_err(StartError::Tls)?;
        let mut peer_auth = peer_auth(&config, &reader)?;
        if let Some(tls) = &tls {
            peer_auth = peer_auth.with_tls(tls.peers.clone());
        }
        let gate = Gate::new(!config.insecure, access, peer_auth.clone());
        let reachability = Reachability::default();
        let removal = Removal::default();
        let raft_message_bytes_max = raft_message_bytes_max(&config);
        let network = NetworkFactory::new(
            config.node_id,
            NetworkSettings {
                message_bytes_max: raft_message_bytes_max,
                connect_timeout: options.connect_timeout,
                unreachable_retry: Duration::from_millis(config.raft.heartbeat_interval_ms),
                ..NetworkSettings::default()
            },
            options.faults.clone(),
            peer_auth.clone(),
            reachability.clone(),
        )
        .with_removal(removal.clone());
        let forwarder = Forwarder::new(
            config.node_id,
            raft_message_bytes_max,
            options.connect_timeout,
            options.faults.clone(),
            peer_auth.clone(),
        );
        let consensus = Consensus::start(
            config.node_id,
            &config.raft,
            &options.cluster_name,
            network,
            log,
            state,
        )
        .await
        .map_err(StartError::Raft)?;
        // An empty node told to bootstrap first listens for a while: a
        // cluster that counts it as a member keeps sending it Raft
        // messages, and then it lost its data and must not found a cluster
        // of its own.
        let listen_first = config.bootstrap
            && options.listen_before_bootstrap
            && !consensus
                .is_initialized()
                .await
                .map_err(|refusal| StartError::Bootstrap(refusal.to_string()))?;

        let handle = NodeHandle::new(
            config.node_id,
            advertised.clone(),
            consensus,
            reader,
            runtime,
            config.limits.clone(),
            config.membership.clone(),
            options.consensus_timeout,
            forwarder,
            peer_auth,
            gate,
            reachability,
            options.starting.clone(),
            metrics.clone(),
            removal.clone(),
        );
        handle.consensus().campaign_unless_removed(&removal);
        gauges::register(&handle, data.log_file());
        let metrics_server = match config.telemetry.metrics_listen {
            Some(address) => Some(serve_metrics(address, metrics).await?),
            None => None,
        };
        let router = crate::api::router(&handle, raft_message_bytes_max, tls.map(|tls| tls.server))
            .map_err(|error| StartError::Tls(error.to_string()))?;
        let (stop_serving, stopped) = oneshot::channel::<()>();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            // A dropped sender stops the server too.
            let _ = stopped.await;
        }));
        tracing::info!(address = %local_addr, advertised = %advertised, "node serving");
        let mut running = RunningNode {
            handle,
            local_addr,
            data_directory: data,
            stop_serving: Some(stop_serving),
            admin_token: None,
            server,
            metrics_server,
            released: vec![log_released, state_released],
        };
        if config.bootstrap {
            let founded = found_cluster(&running, &config, listen_first).await;
            match founded {
                Ok(admin_token) => running.admin_token = admin_token,
                Err(error) => {
                    if let Err(stop) = running.shutdown().await {
                        tracing::warn!(error = %stop, "the node did not stop cleanly");
                    }
                    return Err(error);
                }
            }
        }
        Ok(running)
    }
}

/// Binds `address` and serves the node's metrics there until stopped.
async fn serve_metrics(
    address: SocketAddr,
    metrics: Metrics,
) -> Result<(SocketAddr, oneshot::Sender<()>), StartError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { address, source })?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let stop = async {
            let _ = stopped.await;
        };
        if let Err(error) = crate::telemetry::metrics::serve(listener, metrics, stop).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    });
    tracing::info!(address = %bound, "metrics served at /metrics");
    Ok((bound, stop))
}

/// How long an empty node told to bootstrap listens for a cluster that
/// counts it as a member: a leader sends every member a message each
/// heartbeat, and a cluster whose leader was this node elects another one
/// within about twice the longest election timeout.
fn listen_before_bootstrap(raft: &RaftSettings) -> Duration {
    Duration::from_millis(raft.election_timeout_ms_max.saturating_mul(3))
        .max(LISTEN_BEFORE_BOOTSTRAP_MIN)
}

/// The shortest time [`listen_before_bootstrap`] gives.
const LISTEN_BEFORE_BOOTSTRAP_MIN: Duration = Duration::from_secs(1);

/// Bootstraps a one-member cluster (unless the log holds one already) and
/// proposes what a new cluster starts with: its settings, its id and, on a
/// node that authenticates, the first administrator, whose token it
/// answers. With `listen_first`, refuses if a cluster's member sent Raft
/// messages to this empty node meanwhile.
async fn found_cluster(
    running: &RunningNode,
    config: &NodeConfig,
    listen_first: bool,
) -> Result<Option<Token>, StartError> {
    let handle = &running.handle;
    if listen_first {
        let listening = listen_before_bootstrap(&config.raft);
        tracing::info!(
            listening_ms = listening.as_millis() as u64,
            "empty data directory: listening for a cluster that counts this node as a member before bootstrapping"
        );
        tokio::time::sleep(listening).await;
        if let Some(Peer {
            node_id: Some(by),
            cluster_id,
        }) = handle.contacted_by()
        {
            return Err(StartError::LostData {
                id: config.node_id,
                by,
                cluster: cluster_named(cluster_id),
            });
        }
    }
    let empty = !handle
        .consensus()
        .is_initialized()
        .await
        .map_err(|refusal| StartError::Bootstrap(refusal.to_string()))?;
    // A new cluster is named before its first entry, so that from its
    // first moment it refuses Raft messages of another named cluster; the
    // log records the name right after.
    let mut drawn = None;
    if empty {
        if let Err(Peer {
            node_id,
            cluster_id,
        }) = handle.begin_founding()
        {
            return Err(StartError::BeingAdded {
                id: config.node_id,
                by: node_id.map_or_else(|| "a leader".to_owned(), |by| format!("node {by}")),
                cluster: cluster_named(cluster_id),
            });
        }
        drawn = draw_cluster_id();
        if let Some(cluster_id) = &drawn {
            handle.peer_auth().adopt(cluster_id);
        }
    }
    bootstrap(
        handle.consensus(),
        config.node_id,
        handle.advertised_address(),
    )
    .await?;
    propose_initial_settings(handle, &config.cluster).await;
    propose_cluster_id(handle, drawn).await;
    if config.insecure {
        return Ok(None);
    }
    Ok(propose_first_admin(handle, &running.data_directory).await)
}

/// How a refusal names the cluster a peer spoke for.
fn cluster_named(cluster_id: Option<String>) -> String {
    cluster_id.filter(|id| !id.is_empty()).map_or_else(
        || "a cluster that has not recorded its id".to_owned(),
        |id| format!("cluster {id}"),
    )
}

/// Refuses to run a member whose wasm engine is not the cluster's: fuel and
/// traps are equal only between equal engines.
fn check_engine(reader: &StateReader, runtime: &Runtime) -> Result<(), StartError> {
    let Some(record) = reader.settings()? else {
        return Ok(());
    };
    let ours = runtime.engine_fingerprint();
    if crate::wasm::fingerprint_matches(&record.engine_fingerprint, &ours) {
        return Ok(());
    }
    Err(StartError::Engine {
        cluster: record.engine_fingerprint,
        ours,
    })
}

/// How this node proves itself to its peers and checks them: with the
/// cluster secret of `config`, and the cluster id its state records.
fn peer_auth(config: &NodeConfig, reader: &StateReader) -> Result<PeerAuth, StartError> {
    let secret = match &config.cluster_secret_file {
        Some(path) => Some(ClusterSecret::from_file(path)?),
        None if config.listen.ip().is_loopback() => {
            tracing::info!("no cluster secret: peers are not authenticated (loopback only)");
            None
        }
        None => {
            tracing::warn!(
                "no cluster secret: peers are not authenticated, and anyone who reaches {} can send this node Raft messages; give every node the same --cluster-secret-file",
                config.listen
            );
            None
        }
    };
    let reader = reader.clone();
    let recorded = Box::new(move || match reader.cluster_id() {
        Ok(id) => id,
        Err(error) => {
            tracing::warn!(%error, "cannot read the cluster id");
            None
        }
    });
    Ok(PeerAuth::new(config.node_id, secret, recorded))
}

/// Names the cluster the bootstrapping node creates, unless its state
/// names one: a random 128-bit id every member learns through the log and
/// checks on every peer call. Retried at every start with `--bootstrap`
/// while none is recorded (a crash before it committed, or a cluster made
/// before cluster ids existed).
///
/// `drawn` is the id a new cluster was named with before its bootstrap;
/// `None` draws one (a node with a log may be about to apply its cluster's
/// id, so it takes the one the log answers).
async fn propose_cluster_id(handle: &NodeHandle, drawn: Option<String>) {
    match handle.reader().cluster_id() {
        Ok(Some(recorded)) => {
            handle.peer_auth().adopt(&recorded);
            return;
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "cannot read the cluster id");
            return;
        }
    }
    let Some(cluster_id) = drawn.or_else(draw_cluster_id) else {
        return;
    };
    let command = Command::ClusterId { cluster_id };
    match handle.propose(Caller::system(), command, None).await {
        Ok(Proposed {
            response: Response::ClusterId { cluster_id },
            ..
        }) => {
            tracing::info!(cluster_id, "cluster named");
            let in_force = handle.peer_auth().adopt(&cluster_id);
            if in_force != cluster_id {
                tracing::warn!(
                    recorded = cluster_id,
                    in_force,
                    "the log recorded another cluster id than the one this node goes by; restart it"
                );
            }
        }
        Ok(other) => {
            tracing::warn!(response = ?other.response, "naming the cluster was answered unexpectedly")
        }
        Err(error) => tracing::warn!(
            %error,
            "the cluster id is not recorded yet; the next start with --bootstrap proposes one again"
        ),
    }
}

/// A random 128-bit cluster id, hex; `None` (and a warning) when the
/// system gives no randomness.
fn draw_cluster_id() -> Option<String> {
    let mut random = [0u8; 16];
    match getrandom::fill(&mut random) {
        Ok(()) => Some(hex::encode(random)),
        Err(error) => {
            tracing::warn!(%error, "no randomness for a cluster id; the next start with --bootstrap tries again");
            None
        }
    }
}

/// The subject of the token a secure cluster's bootstrap creates.
pub const FIRST_ADMIN: &str = "admin";

/// Creates the first administrator of a secure cluster this node
/// bootstraps, unless the state holds a token or a role binding already:
/// a token for [`FIRST_ADMIN`], who is granted `cluster_admin`. The token
/// is written (mode 0600) to the data directory before it is proposed, so
/// a crash in between leaves it there to be proposed again at the next
/// start. Returns the token when this call created it in the cluster.
async fn propose_first_admin(handle: &NodeHandle, data: &DataDirectory) -> Option<Token> {
    let view = handle.gate().view();
    if view.revision != 0 || view.rules().next().is_some() || view.tokens().next().is_some() {
        return None;
    }
    let path = data.admin_token_file();
    let token = match std::fs::read_to_string(&path) {
        Ok(text) => match Token::parse(text.trim()) {
            Ok(token) => token,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the first admin token");
                return None;
            }
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = match Token::generate() {
                Ok(token) => token,
                Err(error) => {
                    tracing::warn!(%error, "cannot make the first admin token; the next start with --bootstrap tries again");
                    return None;
                }
            };
            let text = format!("{token}\n");
            if let Err(error) = crate::auth::write_private(&path, text.as_bytes()) {
                tracing::warn!(path = %path.display(), %error, "cannot write the first admin token; the next start with --bootstrap tries again");
                return None;
            }
            token
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the first admin token");
            return None;
        }
    };
    let command = Command::Access(AccessChange::Bootstrap(TokenGrant {
        token_id: token.id().to_owned(),
        subject: FIRST_ADMIN.to_owned(),
        secret_sha256: token.secret_sha256(),
    }));
    match handle.propose(Caller::system(), command, None).await {
        Ok(Proposed {
            response: Response::AccessChanged { changed: true },
            ..
        }) => {
            tracing::info!(token_id = token.id(), path = %path.display(), "first administrator created");
            Some(token)
        }
        Ok(other) => {
            tracing::info!(response = ?other.response, "the cluster has an administrator already");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "the first administrator is not recorded yet; the next start with --bootstrap proposes it again");
            None
        }
    }
}

/// Records the bootstrapping node's `[cluster]` settings as the cluster's
/// first ones, unless the state has some. Retried at every start with
/// `--bootstrap` while none are recorded (a crash before they committed).
async fn propose_initial_settings(handle: &NodeHandle, initial: &ClusterSettings) {
    match handle.reader().settings() {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "cannot read the cluster settings");
            return;
        }
    }
    let command = Command::ChangeSettings(SettingsCommand {
        update: SettingsUpdate::all(initial),
        initial: true,
        engine_fingerprint: handle.runtime().engine_fingerprint(),
    });
    match handle.propose(Caller::system(), command, None).await {
        Ok(_) => tracing::info!("cluster settings recorded"),
        Err(error) => tracing::warn!(
            %error,
            "the cluster settings are not recorded yet (the defaults apply); \
             the next start with --bootstrap proposes them again"
        ),
    }
}

/// Makes this node the single voter of a new cluster, unless its log shows
/// it is part of one already (so a restart with `--bootstrap` is harmless).
async fn bootstrap(consensus: &Consensus, id: NodeId, advertised: &str) -> Result<(), StartError> {
    let initialised = consensus
        .is_initialized()
        .await
        .map_err(|refusal| StartError::Bootstrap(refusal.to_string()))?;
    if initialised {
        tracing::info!("log not empty: already part of a cluster, not bootstrapping");
        return Ok(());
    }
    if consensus
        .initialize(id, advertised)
        .await
        .map_err(StartError::Bootstrap)?
    {
        tracing::info!(address = advertised, "bootstrapped a one-member cluster");
    }
    Ok(())
}

impl RunningNode {
    /// The address the gRPC server is bound to (the real port when the
    /// configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The first administrator's token, when this start created the
    /// cluster's first administrator (a secure bootstrap): shown once.
    pub fn admin_token(&self) -> Option<&Token> {
        self.admin_token.as_ref()
    }

    /// Where the first administrator's token is kept.
    pub fn admin_token_file(&self) -> PathBuf {
        self.data_directory.admin_token_file()
    }

    /// The URL clients dial: `http://` + [`RunningNode::local_addr`].
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    pub fn id(&self) -> NodeId {
        self.handle.id()
    }

    /// This node's Raft.
    pub fn consensus(&self) -> &Consensus {
        self.handle.consensus()
    }

    /// The node as the API sees it.
    /// Where `/metrics` is served, when it is.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|(address, _)| *address)
    }

    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    pub fn data_directory(&self) -> &DataDirectory {
        &self.data_directory
    }

    /// Stops the node: refuses new requests, stops accepting connections
    /// (in-flight calls get [`DRAIN_TIMEOUT`] to finish), stops Raft, and
    /// releases the data directory so it can be opened again.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        let RunningNode {
            handle,
            stop_serving,
            mut server,
            released,
            metrics_server,
            ..
        } = self;
        handle.begin_shutdown();
        if let Some((_, stop)) = metrics_server {
            let _ = stop.send(());
        }
        handle.metrics().shut_down();
        if let Some(stop) = stop_serving {
            let _ = stop.send(());
        }
        let served = match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(ShutdownError::Server(error.to_string())),
            Ok(Err(join)) => Err(ShutdownError::Server(join.to_string())),
            Err(_) => {
                tracing::warn!("in-flight requests did not finish in time; cutting them off");
                server.abort();
                Ok(())
            }
        };
        let id = handle.id();
        let consensus = handle.consensus().clone();
        // The handle holds a state reader: let go of it before waiting.
        drop(handle);
        let stopped = consensus.shutdown().await.map_err(ShutdownError::Raft);
        drop(consensus);
        let all_released =
            futures::future::join_all(released.into_iter().map(lease::Released::wait));
        if tokio::time::timeout(DRAIN_TIMEOUT, all_released)
            .await
            .is_err()
        {
            tracing::warn!("storage still held after shutdown; the data directory may stay locked");
        }
        tracing::info!(id, "node stopped");
        served.and(stopped)
    }
}
