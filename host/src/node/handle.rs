//! What the API needs of a running node, in wasmraft's own types: propose a
//! command through Raft, pass a linearizable read barrier, and describe the
//! node (role, term, membership, indexes).
//!
//! This is the only place the API meets openraft. Every entry point routes
//! by Raft's own view of the leader: on the leader it runs here; on a
//! follower it is forwarded to the leader (`forward`), which stamps the
//! timestamp and answers; with no leader known it waits for an election,
//! up to the call's deadline. A forwarded request is served with the
//! `*_here` methods, which never forward again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;
use wasmraft_proto::v1::{RaftReply, RaftRequest};

use super::forward::{ForwardFailure, Forwarded, Forwarder, millis};
use super::membership::{self, Membership, MembershipError};
use crate::command::{ClusterSettings, Command, Request, Response};
use crate::network::wire::{self, WireError};
use crate::node::config::LimitSettings;
use crate::raft::{Node, NodeId, Raft};
use crate::storage::StateReader;
use crate::wasm::Runtime;

/// A running node as the API sees it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    /// Where peers and clients reach this node (recorded in the membership).
    advertised_address: String,
    raft: Raft,
    reader: StateReader,
    /// Validates modules at the edge; shares its caches with apply.
    runtime: Runtime,
    limits: LimitSettings,
    /// How long a write or a read barrier may wait for Raft: a write without
    /// a quorum would otherwise wait for ever.
    consensus_timeout: Duration,
    /// Set when shutdown starts, so new requests are turned away cleanly.
    shutting_down: AtomicBool,
    /// Hands requests that reached this node while it follows to the leader.
    forwarder: Forwarder,
    /// Held by the membership change in progress: one at a time.
    membership_change: tokio::sync::Mutex<()>,
    /// Whether this node may take Raft messages: once its storage holds a
    /// log or a vote, or, while empty, once a leader introduced itself
    /// (`Handshake`) to add it. An empty node nobody introduced is a member
    /// that lost its data: taking the leader's messages would make the
    /// leader see a log go backwards, and answering votes with a forgotten
    /// vote would break election safety.
    admitted: AtomicBool,
    /// Invokes waiting to be proposed. openraft writes one entry at a time
    /// and waits for its fsync, so the batcher proposes whatever queued up
    /// meanwhile as one entry: a burst of clients shares one fsync.
    proposals: mpsc::Sender<Pending>,
}

/// Where a request is served.
enum Route {
    /// This node leads.
    Here,
    /// Another node leads, at this address.
    Leader { id: NodeId, address: String },
}

/// An invoke waiting for the batcher, and where its answer goes.
struct Pending {
    request: Request,
    answer: oneshot::Sender<Result<Proposed, ConsensusError>>,
}

/// Invokes queued for the batcher before callers wait.
const PROPOSALS_QUEUED_MAX: usize = 4096;
/// Entries of batched invokes written at once.
const WRITES_IN_FLIGHT_MAX: usize = 2;
/// The most commands one entry carries.
const BATCH_COMMANDS_MAX: usize = 512;
/// The longest a deploy may wait for its commit and apply. Applying a
/// deploy compiles the module on every node, the leader included (a
/// forwarded deploy was compiled only by the follower that validated it),
/// which takes far longer than an ordinary write.
const DEPLOY_TIMEOUT_MAX: Duration = Duration::from_secs(120);
/// The most input bytes one entry carries, well under the Raft message cap.
const BATCH_INPUT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A command committed and applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    /// The log index of the entry that carried it.
    pub index: u64,
    /// The leader timestamp stamped into the entry.
    pub timestamp_ms: i64,
    /// What applying it answered.
    pub response: Response,
}

/// The leader, as far as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    pub id: NodeId,
    /// `None` when the leader is not (yet) in this node's membership view.
    pub address: Option<String>,
}

/// Why Raft did not take a write or confirm a read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConsensusError {
    #[error("{}", not_leader_message(*.this, .leader.as_ref()))]
    NotLeader {
        this: NodeId,
        leader: Option<LeaderHint>,
    },
    #[error("the leader cannot reach a quorum of voters: {0}")]
    NoQuorum(String),
    #[error(
        "{what} did not complete within {after_ms} ms; a write may still be applied: retry with the same client_id and sequence"
    )]
    Timeout { what: String, after_ms: u64 },
    #[error(
        "node {this} could not hand the request to the leader, node {leader} at {address}: {reason}; a write may still be applied: retry with the same client_id and sequence"
    )]
    LeaderUnreachable {
        this: NodeId,
        leader: NodeId,
        address: String,
        reason: String,
    },
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("the node's Raft stopped on a fatal error: {0}")]
    Fatal(String),
}

fn not_leader_message(this: NodeId, leader: Option<&LeaderHint>) -> String {
    match leader {
        Some(LeaderHint {
            id,
            address: Some(address),
        }) => format!("node {this} is not the leader; the leader is node {id} at {address}"),
        Some(LeaderHint { id, address: None }) => {
            format!("node {this} is not the leader; the leader is node {id} (address unknown)")
        }
        None => {
            format!("node {this} knows no leader (an election may be in progress); retry shortly")
        }
    }
}

/// The Raft role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    ShuttingDown,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub address: String,
}

/// This node's view of the cluster, from Raft's metrics only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub this: NodeId,
    pub role: Role,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub voters: Vec<Member>,
    pub learners: Vec<Member>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// `Err` holds why this node cannot serve (no leader, stopped, failed).
    pub health: Result<(), String>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("id", &self.id)
            .field("advertised_address", &self.advertised_address)
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: NodeId,
        advertised_address: String,
        raft: Raft,
        reader: StateReader,
        runtime: Runtime,
        limits: LimitSettings,
        consensus_timeout: Duration,
        forwarder: Forwarder,
    ) -> Self {
        let (proposals, queue) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        let inner = Arc::new(Inner {
            id,
            advertised_address,
            raft,
            reader,
            runtime,
            limits,
            consensus_timeout,
            shutting_down: AtomicBool::new(false),
            forwarder,
            membership_change: tokio::sync::Mutex::new(()),
            admitted: AtomicBool::new(false),
            proposals,
        });
        // The batcher holds the node weakly: when the last handle goes, the
        // queue closes and the batcher ends.
        tokio::spawn(batch_proposals(Arc::downgrade(&inner), queue));
        Self { inner }
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn advertised_address(&self) -> &str {
        &self.inner.advertised_address
    }

    /// The openraft handle, for the internal `Raft` service and for tests.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn reader(&self) -> &StateReader {
        &self.inner.reader
    }

    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    pub fn limits(&self) -> &LimitSettings {
        &self.inner.limits
    }

    /// The cluster settings in force in this node's state (the defaults
    /// until the cluster records some). The edge checks requests against
    /// them; apply checks again against the settings of its own moment.
    pub fn settings(&self) -> Result<ClusterSettings, redb::Error> {
        Ok(self
            .inner
            .reader
            .settings()?
            .map(|record| record.settings)
            .unwrap_or_default())
    }

    pub(crate) fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// The time a call may take: the caller's deadline when it gave one,
    /// never more than the node's consensus timeout.
    fn call_timeout(&self, requested: Option<Duration>) -> Duration {
        requested.map_or(self.inner.consensus_timeout, |requested| {
            requested.min(self.inner.consensus_timeout)
        })
    }

    /// The time a write may take: as [`Self::call_timeout`], except that a
    /// deploy may take up to [`DEPLOY_TIMEOUT_MAX`].
    fn write_timeout(&self, command: &Command, requested: Option<Duration>) -> Duration {
        if !matches!(command, Command::Deploy(_)) {
            return self.call_timeout(requested);
        }
        let ceiling = DEPLOY_TIMEOUT_MAX.max(self.inner.consensus_timeout);
        requested.map_or(ceiling, |requested| requested.min(ceiling))
    }

    /// Where a request goes: here if this node leads, else the leader.
    /// With no leader known, waits for an election until `deadline`.
    async fn route(&self, deadline: Instant) -> Result<Route, ConsensusError> {
        if self.is_shutting_down() {
            return Err(ConsensusError::ShuttingDown);
        }
        // A leader this node can reach: itself, or a member whose address
        // the membership names. A leader just removed from the membership
        // is on its way out: wait for its successor like for an election.
        let this = self.inner.id;
        let reachable = |metrics: &openraft::RaftMetrics<NodeId, Node>| {
            metrics.current_leader.filter(|leader| {
                *leader == this
                    || metrics
                        .membership_config
                        .membership()
                        .get_node(leader)
                        .is_some()
            })
        };
        let known = reachable(&self.inner.raft.metrics().borrow());
        let leader = match known {
            Some(leader) => leader,
            None => self
                .inner
                .raft
                .wait(Some(deadline.saturating_duration_since(Instant::now())))
                .metrics(|metrics| reachable(metrics).is_some(), "a reachable leader")
                .await
                .ok()
                .and_then(|metrics| reachable(&metrics))
                .ok_or_else(|| ConsensusError::NotLeader {
                    this,
                    leader: self.inner.raft.metrics().borrow().current_leader.map(|id| {
                        LeaderHint {
                            id,
                            address: self.member_address(id),
                        }
                    }),
                })?,
        };
        if leader == this {
            return Ok(Route::Here);
        }
        match self.member_address(leader) {
            Some(address) => Ok(Route::Leader {
                id: leader,
                address,
            }),
            None => Err(ConsensusError::NotLeader {
                this,
                leader: Some(LeaderHint {
                    id: leader,
                    address: None,
                }),
            }),
        }
    }

    /// Asks the leader to serve `request`, within `timeout`.
    async fn forward<T, E>(
        &self,
        leader: NodeId,
        address: &str,
        request: Forwarded,
        timeout: Duration,
    ) -> Result<Result<T, E>, ConsensusError>
    where
        T: serde::de::DeserializeOwned,
        E: serde::de::DeserializeOwned,
    {
        let span = tracing::debug_span!("forward", leader, address);
        self.inner
            .forwarder
            .call(leader, address, &request, timeout)
            .instrument(span)
            .await
            .map_err(
                |ForwardFailure { reason }| ConsensusError::LeaderUnreachable {
                    this: self.inner.id,
                    leader,
                    address: address.to_owned(),
                    reason,
                },
            )
    }

    /// Serves a request where [`Self::route`] says: `here(payload)` on the
    /// leader, else the leader answers the request `forwarded` builds from
    /// the payload and the milliseconds left until `deadline`.
    async fn routed<P, T, E, Here>(
        &self,
        deadline: Instant,
        payload: P,
        here: impl FnOnce(P) -> Here,
        forwarded: impl FnOnce(P, u64) -> Forwarded,
    ) -> Result<T, E>
    where
        Here: std::future::Future<Output = Result<T, E>>,
        T: serde::de::DeserializeOwned,
        E: serde::de::DeserializeOwned + From<ConsensusError>,
    {
        match self.route(deadline).await? {
            Route::Here => here(payload).await,
            Route::Leader { id, address } => {
                let left = deadline.saturating_duration_since(Instant::now());
                let request = forwarded(payload, millis(left));
                self.forward(id, &address, request, left).await?
            }
        }
    }

    /// Puts `command` through the Raft log for `caller` and returns what
    /// applying it answered, within `timeout` (the caller's deadline) or the
    /// node's consensus timeout. A follower forwards it to the leader.
    pub async fn propose(
        &self,
        caller: impl Into<String>,
        command: Command,
        timeout: Option<Duration>,
    ) -> Result<Proposed, ConsensusError> {
        let timeout = self.write_timeout(&command, timeout);
        self.routed(
            Instant::now() + timeout,
            (caller.into(), command),
            |(caller, command)| self.propose_here(caller, command, timeout),
            |(caller, command), timeout_ms| Forwarded::Write {
                caller,
                command,
                timeout_ms,
            },
        )
        .await
    }

    /// Proposes on this node, which must be the leader: it stamps the
    /// timestamp with its clock.
    async fn propose_here(
        &self,
        caller: String,
        command: Command,
        timeout: Duration,
    ) -> Result<Proposed, ConsensusError> {
        if self.is_shutting_down() {
            return Err(ConsensusError::ShuttingDown);
        }
        let request = Request {
            timestamp_ms: now_ms(),
            caller,
            command,
        };
        if !matches!(
            request.command,
            Command::Invoke(_) | Command::OpenSession { .. }
        ) {
            // Deploys are large and rare, settings and access changes rare:
            // each gets its own entry.
            return self.write(request, timeout).await;
        }
        let waited = async {
            let (answer, answered) = oneshot::channel();
            self.inner
                .proposals
                .send(Pending { request, answer })
                .await
                .map_err(|_| ConsensusError::ShuttingDown)?;
            answered.await.map_err(|_| ConsensusError::ShuttingDown)?
        };
        tokio::time::timeout(timeout, waited)
            .await
            .map_err(|_| ConsensusError::Timeout {
                what: "the write".to_owned(),
                after_ms: millis(timeout),
            })?
    }

    /// Proposes one entry and waits until it is applied.
    async fn write(&self, request: Request, timeout: Duration) -> Result<Proposed, ConsensusError> {
        let timestamp_ms = request.timestamp_ms;
        let span = tracing::info_span!(
            "raft_write",
            kind = request.command.kind(),
            index = tracing::field::Empty
        );
        let written = tokio::time::timeout(timeout, self.inner.raft.client_write(request))
            .instrument(span.clone())
            .await
            .map_err(|_| ConsensusError::Timeout {
                what: "the write".to_owned(),
                after_ms: millis(timeout),
            })?;
        match written {
            Ok(written) => {
                span.record("index", written.log_id.index);
                Ok(Proposed {
                    index: written.log_id.index,
                    timestamp_ms,
                    response: written.data,
                })
            }
            // Leadership moved between routing and writing: the client
            // retries, and the next route finds the new leader.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(self.not_leader(forward))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error))) => {
                Err(ConsensusError::Membership(error.to_string()))
            }
            Err(RaftError::Fatal(fatal)) => Err(self.fatal(fatal)),
        }
    }

    /// Returns once this node's state includes every write committed before
    /// the call: the leader confirms its leadership with a quorum and names
    /// its commit index (the read index), then this node waits until it has
    /// applied that far. A follower asks the leader for the read index and
    /// serves the read itself.
    pub async fn read_barrier(&self, timeout: Option<Duration>) -> Result<(), ConsensusError> {
        let timeout = self.call_timeout(timeout);
        let deadline = Instant::now() + timeout;
        let read_index = self
            .routed(
                deadline,
                (),
                |()| self.read_index_here(timeout),
                |(), timeout_ms| Forwarded::ReadIndex { timeout_ms },
            )
            .await?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.inner
            .raft
            .wait(Some(left))
            .applied_index_at_least(Some(read_index), "the read index is applied")
            .await
            .map(|_| ())
            .map_err(|error| match error {
                openraft::metrics::WaitError::Timeout(..) => ConsensusError::Timeout {
                    what: "applying up to the read index".to_owned(),
                    after_ms: millis(timeout),
                },
                openraft::metrics::WaitError::ShuttingDown => ConsensusError::ShuttingDown,
            })
    }

    /// Confirms this node's leadership with a quorum and returns the index
    /// a linearizable read must see applied.
    async fn read_index_here(&self, timeout: Duration) -> Result<u64, ConsensusError> {
        if self.is_shutting_down() {
            return Err(ConsensusError::ShuttingDown);
        }
        let confirmed = tokio::time::timeout(timeout, self.inner.raft.get_read_log_id())
            .await
            .map_err(|_| ConsensusError::Timeout {
                what: "the linearizable read barrier".to_owned(),
                after_ms: millis(timeout),
            })?;
        match confirmed {
            Ok((read_log_id, _applied)) => Ok(read_log_id.map_or(0, |log_id| log_id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(self.not_leader(forward))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error))) => {
                Err(ConsensusError::NoQuorum(error.to_string()))
            }
            Err(RaftError::Fatal(fatal)) => Err(self.fatal(fatal)),
        }
    }

    /// Adds node `id` at `address` to the cluster: a learner first, a voter
    /// once it caught up. A follower forwards it to the leader.
    pub async fn add_node(
        &self,
        id: NodeId,
        address: String,
        timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        self.routed(
            Instant::now() + timeout,
            address,
            |address| membership::add_node(self, id, address, timeout),
            |address, timeout_ms| Forwarded::AddNode {
                id,
                address,
                timeout_ms,
            },
        )
        .await
    }

    /// Removes member `id` from the cluster by consensus. A follower
    /// forwards it to the leader.
    pub async fn remove_node(
        &self,
        id: NodeId,
        timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        let timeout = self.call_timeout(Some(timeout));
        self.routed(
            Instant::now() + timeout,
            (),
            |()| membership::remove_node(self, id, timeout),
            |(), timeout_ms| Forwarded::RemoveNode { id, timeout_ms },
        )
        .await
    }

    /// Serves a request a follower forwarded (the internal `Raft.Forward`
    /// RPC): runs it here, never forwarding again, and encodes the answer.
    pub async fn serve_forwarded(&self, request: &RaftRequest) -> Result<RaftReply, WireError> {
        let forwarded: Forwarded = wire::decode_request(request)?;
        let timeout = |timeout_ms: u64| self.call_timeout(Some(Duration::from_millis(timeout_ms)));
        // Each operation refuses itself on a node that no longer leads:
        // Raft refuses writes and read indexes, membership checks first.
        Ok(match forwarded {
            Forwarded::Write {
                caller,
                command,
                timeout_ms,
            } => {
                let timeout = self.write_timeout(&command, Some(Duration::from_millis(timeout_ms)));
                wire::encode_reply(&self.propose_here(caller, command, timeout).await)
            }
            Forwarded::ReadIndex { timeout_ms } => {
                wire::encode_reply(&self.read_index_here(timeout(timeout_ms)).await)
            }
            Forwarded::AddNode {
                id,
                address,
                timeout_ms,
            } => wire::encode_reply(
                &membership::add_node(self, id, address, Duration::from_millis(timeout_ms)).await,
            ),
            Forwarded::RemoveNode { id, timeout_ms } => {
                wire::encode_reply(&membership::remove_node(self, id, timeout(timeout_ms)).await)
            }
        })
    }

    /// Refuses work that only the leader may do when Raft's metrics name
    /// another node (or none) the leader.
    pub(crate) fn ensure_leads(&self) -> Result<(), ConsensusError> {
        let leader = self.inner.raft.metrics().borrow().current_leader;
        if leader == Some(self.inner.id) {
            return Ok(());
        }
        Err(ConsensusError::NotLeader {
            this: self.inner.id,
            leader: leader.map(|id| LeaderHint {
                id,
                address: self.member_address(id),
            }),
        })
    }

    /// Records that a leader introduced itself to add this node.
    pub(crate) fn admit(&self) {
        self.inner.admitted.store(true, Ordering::Release);
    }

    /// Whether this node takes Raft messages from peers: `Err` says why not.
    pub async fn accepts_raft_messages(&self) -> Result<(), String> {
        if self.inner.admitted.load(Ordering::Acquire) {
            return Ok(());
        }
        let initialized = self
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|fatal| format!("Raft stopped: {fatal}"))?;
        if initialized {
            // Storage never becomes empty again while the process runs.
            self.admit();
            return Ok(());
        }
        Err(format!(
            "node {} has empty Raft storage and was not added to a cluster: if it was a member and lost its data, remove it (`wasmraft cluster remove-node {}`) and add it again",
            self.inner.id, self.inner.id
        ))
    }

    /// Claims the right to change the membership, held until the guard
    /// drops: one change at a time.
    pub(crate) fn begin_membership_change(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, MembershipError> {
        self.inner
            .membership_change
            .try_lock()
            .map_err(|_| MembershipError::InProgress)
    }

    pub(crate) fn fatal(&self, fatal: Fatal<NodeId>) -> ConsensusError {
        match fatal {
            Fatal::Stopped => ConsensusError::ShuttingDown,
            other => ConsensusError::Fatal(other.to_string()),
        }
    }

    pub(crate) fn not_leader(&self, forward: ForwardToLeader<NodeId, Node>) -> ConsensusError {
        let leader = forward.leader_id.map(|id| LeaderHint {
            id,
            address: forward
                .leader_node
                .map(|node| node.address)
                .or_else(|| self.member_address(id)),
        });
        ConsensusError::NotLeader {
            this: self.inner.id,
            leader,
        }
    }

    fn member_address(&self, id: NodeId) -> Option<String> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .map(|node| node.address.clone())
    }

    /// The index of the last entry applied to this node's state.
    pub fn applied_index(&self) -> Option<u64> {
        self.inner
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|log_id| log_id.index)
    }

    /// Waits until some leader is known, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(
                |metrics| metrics.current_leader.is_some(),
                "a leader is known",
            )
            .await
            .ok()
            .and_then(|metrics| metrics.current_leader)
    }

    /// This node's view of the cluster, from Raft's metrics.
    pub fn cluster_view(&self) -> ClusterView {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let member = |id: NodeId| Member {
            id,
            address: membership
                .get_node(&id)
                .map(|node| node.address.clone())
                .unwrap_or_default(),
        };
        let mut voters: Vec<Member> = membership.voter_ids().map(member).collect();
        let mut learners: Vec<Member> = membership.learner_ids().map(member).collect();
        voters.sort_by_key(|member| member.id);
        learners.sort_by_key(|member| member.id);
        let role = match metrics.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::ShuttingDown,
        };
        let health = if let Err(fatal) = &metrics.running_state {
            Err(format!("Raft stopped: {fatal}"))
        } else if self.is_shutting_down() || role == Role::ShuttingDown {
            Err("the node is shutting down".to_owned())
        } else if metrics.current_leader.is_none() {
            Err("no leader is known (an election may be in progress, or the node is not part of a cluster yet)".to_owned())
        } else {
            Ok(())
        };
        ClusterView {
            this: self.inner.id,
            role,
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            voters,
            learners,
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|log_id| log_id.index),
            health,
        }
    }
}

fn now_ms() -> i64 {
    // A clock before 1970 or past the year 292 million is a broken host;
    // 0 keeps the command deterministic (the value is in the log).
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|elapsed| i64::try_from(elapsed.as_millis()).ok())
        .unwrap_or(0)
}

/// Proposes queued invokes. Each entry carries every invoke that queued while
/// earlier entries were being written (up to the batch limits); at most
/// [`WRITES_IN_FLIGHT_MAX`] entries are in flight, so the next entry's fsync
/// overlaps the previous entry's apply.
async fn batch_proposals(node: Weak<Inner>, mut queue: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(WRITES_IN_FLIGHT_MAX));
    while let Some(first) = queue.recv().await {
        // Wait for a write slot before gathering: whatever queues meanwhile
        // joins this entry.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        let mut input_bytes = input_len(&batch[0].request);
        while batch.len() < BATCH_COMMANDS_MAX && input_bytes < BATCH_INPUT_BYTES_MAX {
            match queue.try_recv() {
                Ok(pending) => {
                    input_bytes += input_len(&pending.request);
                    batch.push(pending);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = node.upgrade() else {
            break;
        };
        let handle = NodeHandle { inner };
        tokio::spawn(async move {
            propose_batch(&handle, batch).await;
            drop(permit);
        });
    }
}

/// Writes one entry for `batch` and answers each of its callers.
async fn propose_batch(handle: &NodeHandle, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        let Pending { request, answer } = batch.remove(0);
        let _ = answer.send(handle.write(request, handle.inner.consensus_timeout).await);
        return;
    }
    let (requests, answers): (Vec<Request>, Vec<_>) = batch
        .into_iter()
        .map(|pending| (pending.request, pending.answer))
        .unzip();
    let timestamps: Vec<i64> = requests
        .iter()
        .map(|request| request.timestamp_ms)
        .collect();
    let request = Request {
        timestamp_ms: timestamps.iter().copied().max().unwrap_or_default(),
        caller: String::new(),
        command: Command::Batch(requests),
    };
    match handle.write(request, handle.inner.consensus_timeout).await {
        Ok(Proposed {
            index,
            response: Response::Batch(responses),
            ..
        }) if responses.len() == answers.len() => {
            for ((answer, response), timestamp_ms) in
                answers.into_iter().zip(responses).zip(timestamps)
            {
                let _ = answer.send(Ok(Proposed {
                    index,
                    timestamp_ms,
                    response,
                }));
            }
        }
        Ok(other) => {
            let error = ConsensusError::Fatal(format!(
                "a batch of {} commands was answered with {:?}",
                answers.len(),
                other.response
            ));
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
    }
}

fn input_len(request: &Request) -> usize {
    match &request.command {
        Command::Invoke(invoke) => invoke.input.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_messages_name_the_leader_when_known() {
        let known = ConsensusError::NotLeader {
            this: 2,
            leader: Some(LeaderHint {
                id: 1,
                address: Some("10.0.0.1:7070".into()),
            }),
        };
        assert_eq!(
            known.to_string(),
            "node 2 is not the leader; the leader is node 1 at 10.0.0.1:7070"
        );
        let unknown = ConsensusError::NotLeader {
            this: 2,
            leader: None,
        };
        assert!(unknown.to_string().contains("knows no leader"));
    }
}
