//! What the API needs of a running node, in wasmraft's own types: propose a
//! command through Raft, pass a linearizable read barrier, and describe the
//! node (role, term, membership, indexes).
//!
//! This is the only place the API meets openraft. [`NodeHandle::propose`]
//! and [`NodeHandle::read_barrier`] are where a request that reached a
//! follower is turned away today (`ConsensusError::NotLeader`, with the
//! leader's address) and where forwarding to the leader slots in tomorrow:
//! the leader stamps the timestamp, so a forwarded command must be stamped
//! there, which `propose` already does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::command::{Command, Request, Response};
use crate::node::config::LimitSettings;
use crate::raft::{Node, NodeId, Raft};
use crate::storage::{CallLimits, StateReader};
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
    /// Invokes waiting to be proposed. openraft writes one entry at a time
    /// and waits for its fsync, so the batcher proposes whatever queued up
    /// meanwhile as one entry: a burst of clients shares one fsync.
    proposals: mpsc::Sender<Pending>,
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
/// The most input bytes one entry carries, well under the Raft message cap.
const BATCH_INPUT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A command committed and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposed {
    /// The log index of the entry that carried it.
    pub index: u64,
    /// The leader timestamp stamped into the entry.
    pub timestamp_ms: i64,
    /// What applying it answered.
    pub response: Response,
}

/// The leader, as far as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    pub id: NodeId,
    /// `None` when the leader is not (yet) in this node's membership view.
    pub address: Option<String>,
}

/// Why Raft did not take a write or confirm a read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    Timeout { what: &'static str, after_ms: u64 },
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub(crate) fn new(
        id: NodeId,
        advertised_address: String,
        raft: Raft,
        reader: StateReader,
        runtime: Runtime,
        limits: LimitSettings,
        consensus_timeout: Duration,
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

    /// The cluster-wide call ceilings, as apply uses them.
    pub fn call_limits(&self) -> CallLimits {
        CallLimits {
            fuel_per_call_max: self.inner.limits.fuel_per_call_max,
            memory_bytes_max: self.inner.limits.memory_bytes_max,
            sessions_max: self.inner.limits.sessions_max,
        }
    }

    pub(crate) fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Puts `command` through the Raft log and returns what applying it
    /// answered. The timestamp is this node's clock: only a leader proposes.
    pub async fn propose(
        &self,
        caller: impl Into<String>,
        command: Command,
    ) -> Result<Proposed, ConsensusError> {
        if self.is_shutting_down() {
            return Err(ConsensusError::ShuttingDown);
        }
        let request = Request {
            timestamp_ms: now_ms(),
            caller: caller.into(),
            command,
        };
        if !matches!(request.command, Command::Invoke(_)) {
            // Deploys are large and rare, membership and access changes rare:
            // each gets its own entry.
            return self.write(request).await;
        }
        let (answer, answered) = oneshot::channel();
        self.inner
            .proposals
            .send(Pending { request, answer })
            .await
            .map_err(|_| ConsensusError::ShuttingDown)?;
        answered.await.map_err(|_| ConsensusError::ShuttingDown)?
    }

    /// Proposes one entry and waits until it is applied.
    async fn write(&self, request: Request) -> Result<Proposed, ConsensusError> {
        let timestamp_ms = request.timestamp_ms;
        let span = tracing::info_span!(
            "raft_write",
            kind = request.command.kind(),
            index = tracing::field::Empty
        );
        let written = tokio::time::timeout(
            self.inner.consensus_timeout,
            self.inner.raft.client_write(request),
        )
        .instrument(span.clone())
        .await
        .map_err(|_| ConsensusError::Timeout {
            what: "the write",
            after_ms: millis(self.inner.consensus_timeout),
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
            // Forwarding to the leader slots in here.
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
    /// the call (a read index confirmed by a quorum).
    pub async fn read_barrier(&self) -> Result<(), ConsensusError> {
        if self.is_shutting_down() {
            return Err(ConsensusError::ShuttingDown);
        }
        let confirmed = tokio::time::timeout(
            self.inner.consensus_timeout,
            self.inner.raft.ensure_linearizable(),
        )
        .await
        .map_err(|_| ConsensusError::Timeout {
            what: "the linearizable read barrier",
            after_ms: millis(self.inner.consensus_timeout),
        })?;
        match confirmed {
            Ok(_) => Ok(()),
            // Forwarding the read index to the leader slots in here.
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(self.not_leader(forward))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error))) => {
                Err(ConsensusError::NoQuorum(error.to_string()))
            }
            Err(RaftError::Fatal(fatal)) => Err(self.fatal(fatal)),
        }
    }

    fn fatal(&self, fatal: Fatal<NodeId>) -> ConsensusError {
        match fatal {
            Fatal::Stopped => ConsensusError::ShuttingDown,
            other => ConsensusError::Fatal(other.to_string()),
        }
    }

    fn not_leader(&self, forward: ForwardToLeader<NodeId, Node>) -> ConsensusError {
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

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
        let _ = answer.send(handle.write(request).await);
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
    match handle.write(request).await {
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
