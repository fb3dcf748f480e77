//! The Rust client of a wasmraft cluster, over the `wasmraft.v1` gRPC API:
//! deploy and manage modules, invoke commands exactly once, run queries,
//! read the cluster's status and health. Used by applications, by the
//! `wasmraft` CLI, by the integration tests and the load generator.
//!
//! **Invariant: a client of the public API only.** It speaks `wasmraft.v1`
//! (`wasmraft-proto`) and the core's plain types (`wasmraft-core`), and
//! links no wasmtime, redb or openraft: an application that talks to a
//! cluster pulls in gRPC and nothing of the node.
//!
//! ```no_run
//! # async fn example() -> Result<(), wasmraft_client::ClientError> {
//! use wasmraft_client::{Client, Consistency};
//!
//! let client = Client::connect("http://127.0.0.1:7070").await?;
//! let result = client.invoke("counter", br#"{"op":"add","by":1}"#).await?;
//! println!("{} at index {}", String::from_utf8_lossy(&result.output), result.applied_index);
//! let read = client.query("counter", br#"{"op":"get"}"#, Consistency::Linearizable).await?;
//! # let _ = read;
//! # Ok(()) }
//! ```
//!
//! # Connections and timeouts
//!
//! [`Client::connect`] only parses the endpoint: the channel connects on the
//! first call and reconnects by itself. A failure to connect is
//! [`ClientError::Unreachable`]. Every attempt of every call has a timeout
//! ([`ClientConfig::request_timeout`], [`ClientConfig::deploy_timeout`] for
//! deploys), sent to the server too as the gRPC deadline, and the retries of
//! one call stop at [`ClientConfig::retry_deadline`].
//!
//! # Exactly-once invokes
//!
//! Each invoke carries a session: a client id and a sequence number; the
//! client opens each session through the log (`OpenSession`) before its
//! first command, so a session the cluster forgot is refused, never
//! silently restarted. On
//! `UNAVAILABLE` (no leader, an election), `DEADLINE_EXCEEDED` (no commit in
//! time), a client-side timeout or a broken connection, the client sends the
//! **same** (client id, sequence) again, with exponential backoff and jitter,
//! until [`ClientConfig::retry_deadline`]. The server answers a duplicate
//! with the first result, so the command is applied once whatever the
//! number of attempts. If no attempt got an answer the call fails with
//! [`ClientError::OutcomeUnknown`]: the command was applied once or not at
//! all.
//!
//! The server keeps only the latest sequence of each client id, and refuses
//! an older one. Concurrent invokes on one client id would race (sequence 8
//! applied first makes 7 "expired" although it never ran), so the client
//! keeps a **pool of sessions, one per invoke in flight**: an invoke borrows
//! a session for all its attempts and returns it with the sequence advanced;
//! within a session, commands are strictly one after another. The pool
//! grows to the peak concurrency (capped by
//! [`ClientConfig::in_flight_invokes_max`]; beyond it invokes wait) and is
//! reused most-recent-first. This keeps full concurrency on one `Client`
//! (clone it freely: clones share the channel and the pool) without
//! serialising invokes, at the cost of one server session per concurrent
//! invoke. Client ids are a random 128-bit hex prefix (drawn once per
//! `Client::connect`) and a counter. A session the server forgot (its table
//! is bounded) is replaced by a fresh one when the refusal proves nothing
//! was applied (first attempt of the command).
//!
//! Deploys and removals carry no session and are retried only when nothing
//! was sent (the endpoint was unreachable); reads retry on `UNAVAILABLE`
//! and transport failures.

mod access;
mod error;
mod retry;
mod session;
mod status_json;
mod types;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use wasmraft_proto::v1;
use wasmraft_proto::v1::cluster_client::ClusterClient;
use wasmraft_proto::v1::modules_client::ModulesClient;
use wasmraft_proto::v1::state_machine_client::StateMachineClient;

pub use access::{CreatedToken, RoleBinding, WhoAmI};
pub use error::{ClientError, code_name};
pub use status_json::{
    CLUSTER_STATUS_SCHEMA_VERSION, ClusterStatusJson, MemberJson, NodeStatusJson,
};
pub use types::{
    ClusterStatus, Consistency, DeployOptions, DeployPhase, DeployProgress, Health, InvokeOutput,
    Member, Membership, ModuleInfo, NodeRole, NodeStatus, ProgressCallback, QueryOutput,
    SettingsView, StorageUsage,
};
pub use wasmraft_core::{ClusterSettings, SettingsUpdate};

use retry::{
    CallKind, backoff, is_answer, is_session_expired, jitter, may_have_been_sent, retry_delay,
    should_retry,
};
use session::SessionPool;

/// The endpoint used when none is given: a `wasmraft serve --dev` node.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7070";

/// Size of one data message of a deploy stream: well inside the 4 MiB gRPC
/// message limit every server accepts, large enough that per-message
/// overhead does not matter.
pub const DEPLOY_CHUNK_BYTES: usize = 256 * 1024;

/// Largest response the client decodes: module outputs are capped by the
/// cluster (1 MiB by default), status responses grow with the membership.
const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// How a [`Client`] times out and retries.
#[derive(Clone)]
pub struct ClientConfig {
    /// Time to open a TCP connection to the endpoint.
    pub connect_timeout: Duration,
    /// Time for one attempt of any call but a deploy.
    pub request_timeout: Duration,
    /// Time for one deploy: upload, validation, compilation and commit.
    pub deploy_timeout: Duration,
    /// Total time one call may spend retrying after its first attempt.
    pub retry_deadline: Duration,
    /// Wait before the first retry; doubles with each retry.
    pub backoff_initial: Duration,
    /// Longest wait between two retries.
    pub backoff_max: Duration,
    /// Whether an unreachable endpoint is retried (a node restarting) or
    /// reported at once (the CLI, where a person is waiting).
    pub retry_unreachable: bool,
    /// Most invokes in flight at once on one client and its clones, and so
    /// most sessions it opens; further invokes wait for a slot.
    pub in_flight_invokes_max: usize,
    /// Sent as `authorization: Bearer TOKEN` on every call.
    pub bearer_token: Option<String>,
    /// For an `https://` endpoint: the authority (PEM) the node's
    /// certificate chains to; without it, the system's trusted roots.
    pub ca_certificate_pem: Option<Vec<u8>>,
    /// For an `https://` endpoint whose node accepts client certificates:
    /// this client's certificate and key (PEM). Its common name is then the
    /// caller's subject, with no token.
    pub client_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            deploy_timeout: Duration::from_secs(120),
            retry_deadline: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            retry_unreachable: true,
            in_flight_invokes_max: 1024,
            bearer_token: None,
            ca_certificate_pem: None,
            client_identity_pem: None,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("deploy_timeout", &self.deploy_timeout)
            .field("retry_deadline", &self.retry_deadline)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("retry_unreachable", &self.retry_unreachable)
            .field("in_flight_invokes_max", &self.in_flight_invokes_max)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_certificate_pem", &self.ca_certificate_pem.is_some())
            .field(
                "client_identity_pem",
                &self.client_identity_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl ClientConfig {
    fn validate(&self) -> Result<(), ClientError> {
        let durations = [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("deploy_timeout", self.deploy_timeout),
            ("backoff_initial", self.backoff_initial),
            ("backoff_max", self.backoff_max),
        ];
        for (name, duration) in durations {
            if duration.is_zero() {
                return Err(ClientError::InvalidConfig(format!(
                    "{name} must not be zero"
                )));
            }
        }
        if self.backoff_initial > self.backoff_max {
            return Err(ClientError::InvalidConfig(
                "backoff_initial must not exceed backoff_max".to_owned(),
            ));
        }
        if self.in_flight_invokes_max == 0 {
            return Err(ClientError::InvalidConfig(
                "in_flight_invokes_max must be at least 1".to_owned(),
            ));
        }
        Ok(())
    }
}

/// A client of one wasmraft endpoint. Cheap to clone; clones share the
/// connection and the session pool, and may be used from many tasks.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// As normalised, for messages.
    endpoint: String,
    channel: Channel,
    config: ClientConfig,
    /// The `authorization` metadata value, built once.
    authorization: Option<MetadataValue<Ascii>>,
    sessions: Arc<SessionPool>,
}

impl Client {
    /// A client of `endpoint` (`http://host:port`; `host:port` is taken as
    /// `http://`) with the default [`ClientConfig`]. Does not connect yet.
    pub async fn connect(endpoint: &str) -> Result<Client, ClientError> {
        Client::connect_with(endpoint, ClientConfig::default()).await
    }

    /// A client of `endpoint` with `config`. Does not connect yet: the
    /// first call does. Must run inside a tokio runtime.
    pub async fn connect_with(endpoint: &str, config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let url = normalise_endpoint(endpoint)?;
        let invalid = |reason: String| ClientError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|error| invalid(error.to_string()))?
            .user_agent(concat!("wasmraft-client/", env!("CARGO_PKG_VERSION")))
            .map_err(|error| invalid(error.to_string()))?;
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(tls_config(&config))
                .map_err(|error| invalid(error.to_string()))?;
        } else if config.ca_certificate_pem.is_some() || config.client_identity_pem.is_some() {
            return Err(invalid(
                "TLS certificates are given but the endpoint is http://; use https://".to_owned(),
            ));
        }
        let channel = endpoint
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_lazy();
        let authorization = config
            .bearer_token
            .as_ref()
            .map(|token| {
                MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    ClientError::InvalidConfig(
                        "the bearer token contains characters not allowed in a header".to_owned(),
                    )
                })
            })
            .transpose()?;
        let sessions = Arc::new(SessionPool::new(
            random_client_id_prefix()?,
            config.in_flight_invokes_max,
        ));
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint: url,
                channel,
                config,
                authorization,
                sessions,
            }),
        })
    }

    /// The endpoint this client calls, normalised.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The random prefix of this client's session ids (`PREFIX-N`), to find
    /// its sessions in server logs.
    pub fn client_id_prefix(&self) -> &str {
        self.inner.sessions.client_id_prefix()
    }

    /// Deploys `wasm` as module `name`, or upgrades it, streaming it in
    /// [`DEPLOY_CHUNK_BYTES`] chunks after a header with its size and
    /// sha256. Returns the module as deployed (its new version).
    #[tracing::instrument(skip_all, fields(module = name, size_bytes = wasm.len()))]
    pub async fn deploy(
        &self,
        name: &str,
        wasm: &[u8],
        options: DeployOptions,
    ) -> Result<ModuleInfo, ClientError> {
        let header = v1::DeployHeader {
            name: name.to_owned(),
            sha256_hex: hex::encode(Sha256::digest(wasm)),
            size_bytes: wasm.len() as u64,
            init_argument: options.init_argument,
            fuel_per_call_max: options.fuel_per_call_max,
            memory_bytes_max: options.memory_bytes_max,
        };
        let total_bytes = wasm.len() as u64;
        let wasm: Arc<[u8]> = Arc::from(wasm);
        let progress = options.progress;
        let timeout = self.inner.config.deploy_timeout;
        let module = self
            .retrying("deploy", CallKind::Write, |_| {
                let stream = deploy_stream(header.clone(), Arc::clone(&wasm), progress.clone());
                let mut client = self.modules();
                let progress = progress.clone();
                async move {
                    let call = async move {
                        let mut events = client
                            .deploy_with_progress(self.request(stream, timeout))
                            .await?
                            .into_inner();
                        while let Some(event) = events.message().await? {
                            match event.event {
                                Some(v1::deploy_event::Event::Phase(phase)) => {
                                    let phase = v1::DeployPhase::try_from(phase)
                                        .ok()
                                        .and_then(DeployPhase::after);
                                    if let (Some(progress), Some(phase)) = (&progress, phase) {
                                        progress(DeployProgress {
                                            phase,
                                            sent_bytes: total_bytes,
                                            total_bytes,
                                        });
                                    }
                                }
                                Some(v1::deploy_event::Event::Module(module)) => {
                                    return Ok(tonic::Response::new(module));
                                }
                                None => {}
                            }
                        }
                        Err(tonic::Status::unknown(
                            "the deploy's answer ended without its result; `module get` shows whether it was deployed",
                        ))
                    };
                    self.attempt("deploy", timeout, call).await
                }
            })
            .await?;
        Ok(ModuleInfo::from(module))
    }

    /// Every deployed module, ordered by name.
    pub async fn list_modules(&self) -> Result<Vec<ModuleInfo>, ClientError> {
        let response = self
            .retrying("list modules", CallKind::ReadOnly, |timeout| {
                let mut client = self.modules();
                async move {
                    let request = self.request(v1::ListModulesRequest {}, timeout);
                    self.attempt("list modules", timeout, client.list(request))
                        .await
                }
            })
            .await?;
        Ok(response.modules.into_iter().map(ModuleInfo::from).collect())
    }

    /// One module by name; `NOT_FOUND` if none has that name.
    pub async fn get_module(&self, name: &str) -> Result<ModuleInfo, ClientError> {
        let response = self
            .retrying("get module", CallKind::ReadOnly, |timeout| {
                let mut client = self.modules();
                let request = v1::GetModuleRequest {
                    name: name.to_owned(),
                };
                async move {
                    let request = self.request(request, timeout);
                    self.attempt("get module", timeout, client.get(request))
                        .await
                }
            })
            .await?;
        response
            .module
            .map(ModuleInfo::from)
            .ok_or(ClientError::MissingField {
                operation: "get module",
                field: "module",
            })
    }

    /// Removes a module and all its state; `NOT_FOUND` if none has that name.
    pub async fn remove_module(&self, name: &str) -> Result<(), ClientError> {
        self.retrying("remove module", CallKind::Write, |timeout| {
            let mut client = self.modules();
            let request = v1::RemoveModuleRequest {
                name: name.to_owned(),
            };
            async move {
                let request = self.request(request, timeout);
                self.attempt("remove module", timeout, client.remove(request))
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// Runs a command on `module` exactly once, retrying transient failures
    /// with the same session (see the module documentation).
    #[tracing::instrument(
        skip_all,
        fields(module = module, client_id = tracing::field::Empty, sequence = tracing::field::Empty)
    )]
    pub async fn invoke(&self, module: &str, input: &[u8]) -> Result<InvokeOutput, ClientError> {
        let config = &self.inner.config;
        let mut lease = self.inner.sessions.lease().await;
        let mut deadline = Instant::now() + config.retry_deadline;
        let mut attempts: u32 = 0;
        // Whether an attempt for the current sequence may have reached the
        // server: then the command may have been applied.
        let mut maybe_applied = false;
        let mut renewed = false;
        loop {
            let timeout = if attempts == 0 {
                config.request_timeout
            } else {
                config
                    .request_timeout
                    .min(deadline.saturating_duration_since(Instant::now()))
            };
            if !lease.is_open() {
                // A session is opened through the log before its first
                // command, and named by the cluster.
                let name = self.open_session(lease.client_id()).await?;
                lease.mark_open(name);
            }
            let span = tracing::Span::current();
            span.record("client_id", lease.client_id());
            span.record("sequence", lease.sequence());
            // Before sending: if this future is dropped mid-call, the lease
            // retires the sequence rather than reuse it for another command.
            lease.mark_sent();
            attempts += 1;
            let error = match self
                .invoke_once(module, input, lease.client_id(), lease.sequence(), timeout)
                .await
            {
                Ok(output) => return Ok(output),
                Err(error) => error,
            };
            if !maybe_applied && !renewed && is_session_expired(&error) {
                // The server forgot the session and refused a command no
                // earlier attempt sent: nothing was applied, start afresh.
                tracing::debug!(%error, "session forgotten by the server, renewing it");
                lease.renew();
                renewed = true;
                attempts = 0;
                deadline = Instant::now() + config.retry_deadline;
                continue;
            }
            maybe_applied |= may_have_been_sent(&error);
            let transient =
                should_retry(CallKind::SessionedInvoke, &error, config.retry_unreachable);
            let delay = retry_delay(
                &error,
                backoff(
                    attempts - 1,
                    config.backoff_initial,
                    config.backoff_max,
                    jitter(),
                ),
                jitter(),
            );
            if transient && Instant::now() + delay < deadline {
                tracing::debug!(%error, attempts, ?delay, "invoke failed, retrying the same sequence");
                tokio::time::sleep(delay).await;
                continue;
            }
            if !maybe_applied {
                // Nothing reached the server: the sequence stays free.
                lease.unmark_sent();
                return Err(error);
            }
            if transient || is_session_expired(&error) || !is_answer(&error) {
                return Err(ClientError::OutcomeUnknown {
                    client_id: lease.client_id().to_owned(),
                    sequence: lease.sequence(),
                    attempts,
                    last: Box::new(error),
                });
            }
            return Err(error);
        }
    }

    /// Opens a session of this client's caller through the log, named after
    /// `client_id` (1 to 96 bytes), and returns its name, for the session's
    /// invokes. Retried on transient failures: a retry opens another
    /// session, and the unused one is forgotten in time. [`Client::invoke`]
    /// opens its sessions itself; callers of [`Client::invoke_in_session`]
    /// open theirs with this.
    pub async fn open_session(&self, client_id: &str) -> Result<String, ClientError> {
        let response = self
            .retrying("open session", CallKind::ReadOnly, |timeout| {
                let mut client = StateMachineClient::new(self.inner.channel.clone());
                let request = v1::OpenSessionRequest {
                    client_id: client_id.to_owned(),
                };
                async move {
                    let request = self.request(request, timeout);
                    self.attempt("open session", timeout, client.open_session(request))
                        .await
                }
            })
            .await?;
        Ok(response.client_id)
    }

    /// Sends one invoke with a session the caller manages (opened with
    /// [`Client::open_session`]), once, without retries: for callers that
    /// persist their own sessions, and for tests of the server's duplicate
    /// detection. Sequence numbers start at 1.
    pub async fn invoke_in_session(
        &self,
        module: &str,
        input: &[u8],
        client_id: &str,
        sequence: u64,
    ) -> Result<InvokeOutput, ClientError> {
        self.invoke_once(
            module,
            input,
            client_id,
            sequence,
            self.inner.config.request_timeout,
        )
        .await
    }

    async fn invoke_once(
        &self,
        module: &str,
        input: &[u8],
        client_id: &str,
        sequence: u64,
        timeout: Duration,
    ) -> Result<InvokeOutput, ClientError> {
        let request = self.request(
            v1::InvokeRequest {
                module: module.to_owned(),
                input: input.to_vec(),
                client_id: client_id.to_owned(),
                sequence,
            },
            timeout,
        );
        let mut client = StateMachineClient::new(self.inner.channel.clone())
            .max_decoding_message_size(RESPONSE_BYTES_MAX);
        self.attempt("invoke", timeout, client.invoke(request))
            .await
            .map(InvokeOutput::from)
    }

    /// Runs a read-only query on `module`; retried on transient failures.
    #[tracing::instrument(skip_all, fields(module = module, ?consistency))]
    pub async fn query(
        &self,
        module: &str,
        input: &[u8],
        consistency: Consistency,
    ) -> Result<QueryOutput, ClientError> {
        let response = self
            .retrying("query", CallKind::ReadOnly, |timeout| {
                let mut client = StateMachineClient::new(self.inner.channel.clone())
                    .max_decoding_message_size(RESPONSE_BYTES_MAX);
                let request = v1::QueryRequest {
                    module: module.to_owned(),
                    input: input.to_vec(),
                    consistency: v1::Consistency::from(consistency).into(),
                };
                async move {
                    let request = self.request(request, timeout);
                    self.attempt("query", timeout, client.query(request)).await
                }
            })
            .await?;
        Ok(QueryOutput::from(response))
    }

    /// The cluster's status as the endpoint's node gathers it from every
    /// member.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.status_request(false).await
    }

    /// The status of the endpoint's node alone, without contacting others.
    pub async fn local_status(&self) -> Result<ClusterStatus, ClientError> {
        self.status_request(true).await
    }

    async fn status_request(&self, local_only: bool) -> Result<ClusterStatus, ClientError> {
        let response = self
            .retrying("cluster status", CallKind::ReadOnly, |timeout| {
                let mut client = self.cluster();
                async move {
                    let request = self.request(v1::StatusRequest { local_only }, timeout);
                    self.attempt("cluster status", timeout, client.status(request))
                        .await
                }
            })
            .await?;
        ClusterStatus::try_from(response)
    }

    /// Adds node `id`, already running `wasmraft serve` at `address` with an
    /// empty data directory: first as a learner, then, once it caught up, as
    /// a voter. `timeout` bounds the whole change, catching up included; a
    /// node that did not catch up in time stays a learner (`DEADLINE_EXCEEDED`)
    /// and calling again finishes the job.
    pub async fn add_node(
        &self,
        id: u64,
        address: &str,
        timeout: Duration,
    ) -> Result<Membership, ClientError> {
        let response = self
            .retrying("add node", CallKind::Write, |_| {
                let mut client = self.cluster();
                let request = v1::AddNodeRequest {
                    node_id: id,
                    address: address.to_owned(),
                };
                async move {
                    let request = self.request(request, timeout);
                    self.attempt("add node", timeout, client.add_node(request))
                        .await
                }
            })
            .await?;
        membership_of("add node", response.membership)
    }

    /// Removes member `id` (voter or learner) from the cluster.
    pub async fn remove_node(&self, id: u64) -> Result<Membership, ClientError> {
        let response = self
            .retrying("remove node", CallKind::Write, |timeout| {
                let mut client = self.cluster();
                async move {
                    let request = self.request(v1::RemoveNodeRequest { node_id: id }, timeout);
                    self.attempt("remove node", timeout, client.remove_node(request))
                        .await
                }
            })
            .await?;
        membership_of("remove node", response.membership)
    }

    /// Asks the endpoint's node to build a snapshot now (and purge the log
    /// behind it); returns once the snapshot is started.
    pub async fn snapshot(&self) -> Result<(), ClientError> {
        self.request_snapshot(false).await.map(drop)
    }

    /// Asks the endpoint's node to build a snapshot now and waits until one
    /// covers everything the node had applied when asked (within the
    /// request timeout); answers the log index it covers (`None` when the
    /// node had applied nothing yet).
    pub async fn build_snapshot(&self) -> Result<Option<u64>, ClientError> {
        self.request_snapshot(true).await
    }

    async fn request_snapshot(&self, wait: bool) -> Result<Option<u64>, ClientError> {
        let response = self
            .retrying("snapshot", CallKind::ReadOnly, |timeout| {
                let mut client = self.cluster();
                async move {
                    let request = self.request(v1::SnapshotRequest { wait }, timeout);
                    self.attempt("snapshot", timeout, client.snapshot(request))
                        .await
                }
            })
            .await?;
        Ok(response.snapshot_index)
    }

    /// Whether the endpoint's node can serve. One attempt, no retries: a
    /// probe should report what it sees.
    /// The cluster settings, as the answering node's state holds them.
    pub async fn settings(&self) -> Result<SettingsView, ClientError> {
        let response = self
            .retrying("get settings", CallKind::ReadOnly, |timeout| {
                let mut client = self.cluster();
                async move {
                    let request = self.request(v1::GetSettingsRequest {}, timeout);
                    self.attempt("get settings", timeout, client.get_settings(request))
                        .await
                }
            })
            .await?;
        SettingsView::try_from(response)
    }

    /// Changes the cluster settings named in `update` through the log, and
    /// returns the settings in force after it. Retried only when nothing was
    /// sent; setting a value twice is harmless, so a failed call may simply
    /// be made again.
    pub async fn set_settings(
        &self,
        update: &SettingsUpdate,
    ) -> Result<(ClusterSettings, u64), ClientError> {
        let response = self
            .retrying("set settings", CallKind::Write, |timeout| {
                let mut client = self.cluster();
                let request = v1::SetSettingsRequest {
                    fuel_per_call_max: update.get("fuel_per_call_max"),
                    memory_bytes_max: update.get("memory_bytes_max"),
                    output_bytes_max: update.get("output_bytes_max"),
                    module_bytes_max: update.get("module_bytes_max"),
                    session_table_bytes_max: update.get("session_table_bytes_max"),
                    sessions_per_caller_max: update.get("sessions_per_caller_max"),
                    module_storage_bytes_max: update.get("module_storage_bytes_max"),
                    module_storage_keys_max: update.get("module_storage_keys_max"),
                };
                async move {
                    let request = self.request(request, timeout);
                    self.attempt("set settings", timeout, client.set_settings(request))
                        .await
                }
            })
            .await?;
        let settings = response.settings.ok_or(ClientError::MissingField {
            operation: "set settings",
            field: "settings",
        })?;
        Ok((types::settings_of(settings), response.applied_index))
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        let timeout = self.inner.config.request_timeout;
        let mut client = self.cluster();
        let request = self.request(v1::HealthRequest {}, timeout);
        self.attempt("health", timeout, client.health(request))
            .await
            .map(Health::from)
    }

    fn modules(&self) -> ModulesClient<Channel> {
        ModulesClient::new(self.inner.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.inner.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    /// A request with the deadline and the credentials set.
    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        if let Some(authorization) = &self.inner.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    /// One attempt of a call, bounded by `timeout` on the client side too
    /// (the server may not honour the gRPC deadline).
    async fn attempt<T>(
        &self,
        operation: &'static str,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(timeout, call).await {
            Err(_elapsed) => Err(ClientError::TimedOut {
                endpoint: self.inner.endpoint.clone(),
                operation,
                timeout,
            }),
            Ok(Err(status)) => Err(ClientError::from_status(
                &self.inner.endpoint,
                operation,
                timeout,
                status,
            )),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// Runs `call` (given each attempt's timeout) until it succeeds, fails
    /// in a way `kind` must not retry, or the retry deadline is near.
    async fn retrying<T, F, Fut>(
        &self,
        operation: &'static str,
        kind: CallKind,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.retry_deadline;
        let mut retries: u32 = 0;
        loop {
            let timeout = if retries == 0 {
                config.request_timeout
            } else {
                config
                    .request_timeout
                    .min(deadline.saturating_duration_since(Instant::now()))
            };
            let error = match call(timeout).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let delay = retry_delay(
                &error,
                backoff(
                    retries,
                    config.backoff_initial,
                    config.backoff_max,
                    jitter(),
                ),
                jitter(),
            );
            if !should_retry(kind, &error, config.retry_unreachable)
                || Instant::now() + delay >= deadline
            {
                return Err(error);
            }
            tracing::debug!(operation, %error, retries, ?delay, "retrying");
            tokio::time::sleep(delay).await;
            retries += 1;
        }
    }
}

/// The messages of one deploy: the header, then the module in chunks,
/// reporting progress as each chunk is taken by the connection.
fn deploy_stream(
    header: v1::DeployHeader,
    wasm: Arc<[u8]>,
    progress: Option<ProgressCallback>,
) -> impl futures::Stream<Item = v1::DeployChunk> + Send + 'static {
    use v1::deploy_chunk::Content;
    let total_bytes = wasm.len() as u64;
    let chunk_count = wasm.len().div_ceil(DEPLOY_CHUNK_BYTES);
    let header = futures::stream::once(async move {
        v1::DeployChunk {
            content: Some(Content::Header(header)),
        }
    });
    let data = futures::stream::iter(0..chunk_count).map(move |index| {
        let start = index * DEPLOY_CHUNK_BYTES;
        let end = (start + DEPLOY_CHUNK_BYTES).min(wasm.len());
        if let Some(progress) = &progress {
            progress(DeployProgress {
                phase: DeployPhase::Uploading,
                sent_bytes: end as u64,
                total_bytes,
            });
        }
        v1::DeployChunk {
            content: Some(Content::Data(wasm[start..end].to_vec())),
        }
    });
    header.chain(data)
}

/// `host:port` becomes `http://host:port`; TLS endpoints are refused until
/// the client is built with TLS.
fn normalise_endpoint(endpoint: &str) -> Result<String, ClientError> {
    let endpoint = endpoint.trim();
    let invalid = |reason: &str| ClientError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    if endpoint.is_empty() {
        return Err(invalid("it is empty"));
    }
    let url = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    let Some(authority) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(invalid("the scheme must be http:// or https://"));
    };
    if authority.is_empty() || authority.starts_with('/') || authority.starts_with(':') {
        return Err(invalid("it names no host"));
    }
    Ok(url)
}

/// The TLS of an `https://` endpoint: the given authority, else the
/// system's roots; the client's own certificate when given.
fn tls_config(config: &ClientConfig) -> ClientTlsConfig {
    let mut tls = match &config.ca_certificate_pem {
        Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    if let Some((certificate, key)) = &config.client_identity_pem {
        tls = tls.identity(Identity::from_pem(certificate, key));
    }
    tls
}

/// 128 random bits as hex: unique across processes without coordination.
fn random_client_id_prefix() -> Result<String, ClientError> {
    let mut bytes = [0_u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| ClientError::Randomness(error.to_string()))?;
    Ok(hex::encode(bytes))
}

fn membership_of(
    operation: &'static str,
    membership: Option<v1::Membership>,
) -> Result<Membership, ClientError> {
    membership
        .map(Membership::from)
        .ok_or(ClientError::MissingField {
            operation,
            field: "membership",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(
            normalise_endpoint("127.0.0.1:7070").expect("valid"),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            normalise_endpoint(" http://node-1:7070 ").expect("valid"),
            "http://node-1:7070"
        );
        assert_eq!(
            normalise_endpoint("https://node-1:7070").expect("valid"),
            "https://node-1:7070"
        );
        for bad in ["", "ftp://node", "https://", "http://", "http://:7070"] {
            assert!(
                matches!(
                    normalise_endpoint(bad),
                    Err(ClientError::InvalidEndpoint { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn client_id_prefixes_are_random_hex() {
        let first = random_client_id_prefix().expect("randomness");
        let second = random_client_id_prefix().expect("randomness");
        assert_eq!(first.len(), 32);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(first, second);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let zero_timeout = ClientConfig {
            request_timeout: Duration::ZERO,
            ..ClientConfig::default()
        };
        assert!(zero_timeout.validate().is_err());
        let no_slots = ClientConfig {
            in_flight_invokes_max: 0,
            ..ClientConfig::default()
        };
        assert!(no_slots.validate().is_err());
        assert!(ClientConfig::default().validate().is_ok());
        let debug = format!(
            "{:?}",
            ClientConfig {
                bearer_token: Some("secret".to_owned()),
                ..ClientConfig::default()
            }
        );
        assert!(!debug.contains("secret"));
    }

    #[tokio::test]
    async fn deploy_streams_a_header_then_the_module_in_chunks() {
        let wasm: Arc<[u8]> = Arc::from(vec![7_u8; DEPLOY_CHUNK_BYTES * 2 + 10]);
        let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let progress: ProgressCallback = {
            let reports = Arc::clone(&reports);
            Arc::new(move |p: DeployProgress| reports.lock().expect("lock").push(p.sent_bytes))
        };
        let header = v1::DeployHeader {
            name: "m".to_owned(),
            ..v1::DeployHeader::default()
        };
        let messages: Vec<_> = deploy_stream(header, Arc::clone(&wasm), Some(progress))
            .collect()
            .await;
        assert_eq!(messages.len(), 4);
        assert!(matches!(
            messages[0].content,
            Some(v1::deploy_chunk::Content::Header(_))
        ));
        let mut bytes = Vec::new();
        for message in &messages[1..] {
            match &message.content {
                Some(v1::deploy_chunk::Content::Data(data)) => bytes.extend_from_slice(data),
                other => panic!("expected data, got {other:?}"),
            }
        }
        assert_eq!(&bytes[..], &wasm[..]);
        let total = wasm.len() as u64;
        assert_eq!(
            *reports.lock().expect("lock"),
            vec![
                DEPLOY_CHUNK_BYTES as u64,
                2 * DEPLOY_CHUNK_BYTES as u64,
                total
            ]
        );
    }
}
