//! The node's Raft in wasmraft's own types: [`Consensus`] wraps
//! `openraft::Raft` and is everything the rest of the node asks of it —
//! propose an entry, confirm a read index, change the membership, and describe the node from Raft's metrics ([`RaftView`]).
//! Errors come out as [`RaftRefusal`], plain data a follower can forward.
//!
//! Invariant: no openraft type crosses this module's public API (only
//! [`Consensus::raft`], for the network's server side and for tests that
//! drive openraft directly), so
//! a move to openraft 0.10 changes this file, the network and the storage
//! adapters, and nothing above them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader,
    InitializeError, RaftError,
};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};

use super::lease::Leased;
use super::network::NetworkFactory;
use super::{Node, NodeId, Raft};
use crate::command::{Request, Response};
use crate::node::config::RaftSettings;
use crate::storage::{LogStore, StateMachineStore};

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

/// What Raft's metrics say of this node and its cluster at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftView {
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The voters in force, by id.
    pub voters: Vec<Member>,
    /// The learners in force, by id.
    pub learners: Vec<Member>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// Why Raft stopped, when it stopped on an error.
    pub stopped: Option<String>,
    /// On the leader: how long since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// On the leader: each member and the index up to which its log
    /// matches the leader's (`None`: not known yet).
    pub replication: Vec<(NodeId, Option<u64>)>,
}

/// Why openraft stopped this node's Raft: the node cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FatalError {
    #[error("storage failed: {detail}")]
    Storage { detail: String },
    #[error("the Raft core panicked")]
    Panicked,
    #[error("a batch of {commands} commands was answered with {answer}")]
    BatchAnswer { commands: usize, answer: String },
}

/// Why openraft refused a membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ChangeRefused {
    #[error("another membership change is not committed yet")]
    InProgress,
    #[error("the change would leave no voter")]
    EmptyMembership,
    #[error("node {id} is not a learner: add it as a learner first")]
    LearnerNotFound { id: NodeId },
}

/// Why Raft did not take a write, confirm a read index or change the
/// membership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftRefusal {
    /// This node does not lead. openraft names the leader when it knows it.
    #[error("not the leader")]
    NotLeader {
        leader: Option<NodeId>,
        address: Option<String>,
    },
    /// The leader could not confirm its leadership with a quorum.
    #[error("only {reached:?} of {voters} answered")]
    NoQuorum {
        voters: String,
        reached: Vec<NodeId>,
    },
    #[error(transparent)]
    Change(ChangeRefused),
    /// Raft stopped normally (shutdown).
    #[error("Raft stopped")]
    Stopped,
    #[error(transparent)]
    Fatal(FatalError),
}

/// What waiting on Raft's metrics ended with, short of the condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("timed out")]
    Timeout,
    #[error("Raft stopped")]
    Stopped,
}

/// The node's Raft. Cheap to clone.
#[derive(Clone)]
pub struct Consensus {
    raft: Raft,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus").finish_non_exhaustive()
    }
}

/// The openraft configuration `settings` describe, as openraft checks it.
pub fn openraft_config(
    settings: &RaftSettings,
    cluster_name: &str,
) -> Result<openraft::Config, String> {
    let config = openraft::Config {
        cluster_name: cluster_name.to_owned(),
        heartbeat_interval: settings.heartbeat_interval_ms,
        election_timeout_min: settings.election_timeout_ms_min,
        election_timeout_max: settings.election_timeout_ms_max,
        max_payload_entries: settings.max_payload_entries,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_after_entries),
        snapshot_max_chunk_size: settings.snapshot_chunk_bytes,
        install_snapshot_timeout: settings.snapshot_chunk_timeout_ms,
        // Keep some log behind a snapshot, so a follower slightly behind
        // catches up by replication rather than a whole snapshot.
        max_in_snapshot_log_to_keep: settings.snapshot_after_entries.min(1000),
        ..openraft::Config::default()
    };
    config.validate().map_err(|error| error.to_string())
}

impl Consensus {
    /// Starts Raft for node `id` over its two stores.
    pub(crate) async fn start(
        id: NodeId,
        settings: &RaftSettings,
        cluster_name: &str,
        network: NetworkFactory,
        log: Leased<LogStore>,
        state: Leased<StateMachineStore>,
    ) -> Result<Self, String> {
        let config = openraft_config(settings, cluster_name)?;
        let raft = Raft::new(id, Arc::new(config), network, log, state)
            .await
            .map_err(|fatal| fatal.to_string())?;
        Ok(Self { raft })
    }

    /// The openraft handle, for the network's server side
    /// (`network::server`) and for tests that drive openraft directly.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Whether this node's Raft storage holds a log or a vote.
    pub async fn is_initialized(&self) -> Result<bool, RaftRefusal> {
        self.raft.is_initialized().await.map_err(fatal)
    }

    /// Makes this node the single voter of a new cluster. `Ok(false)` when
    /// its storage shows it is part of one already.
    pub async fn initialize(&self, id: NodeId, address: &str) -> Result<bool, String> {
        let members = BTreeMap::from([(id, Node::new(address))]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Stops Raft's core task.
    pub async fn shutdown(&self) -> Result<(), String> {
        self.raft
            .shutdown()
            .await
            .map_err(|error| error.to_string())
    }

    /// Asks Raft to build a snapshot now.
    pub async fn trigger_snapshot(&self) -> Result<(), RaftRefusal> {
        self.raft.trigger().snapshot().await.map_err(fatal)
    }

    /// Appends `request` as one entry on this node, which must lead, and
    /// returns its log index and what applying it answered.
    pub async fn write(&self, request: Request) -> Result<(u64, Response), RaftRefusal> {
        match self.raft.client_write(request).await {
            Ok(written) => Ok((written.log_id.index, written.data)),
            Err(error) => Err(write_refused(error)),
        }
    }

    /// Confirms this node's leadership with a quorum and returns the index
    /// a linearizable read must see applied.
    pub async fn read_index(&self) -> Result<u64, RaftRefusal> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => Ok(read_log_id.map_or(0, |log_id| log_id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(not_leader(forward))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error))) => {
                Err(RaftRefusal::NoQuorum {
                    voters: error.cluster,
                    reached: error.got.into_iter().collect(),
                })
            }
            Err(RaftError::Fatal(error)) => Err(fatal(error)),
        }
    }

    /// Waits until this node has applied `index`, up to `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), WaitError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "the read index is applied")
            .await
            .map(|_| ())
            .map_err(wait_error)
    }

    /// Waits until `condition` holds of Raft's view, up to `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl Fn(&Metrics<'_>) -> bool + Send + Sync,
    ) -> Result<(), WaitError> {
        self.raft
            .wait(Some(timeout))
            .metrics(|metrics| condition(&Metrics(metrics)), what)
            .await
            .map(|_| ())
            .map_err(wait_error)
    }

    /// Raft's metrics at this moment, borrowed: keep the borrow short, it
    /// holds up Raft's next update.
    pub fn with_metrics<T>(&self, read: impl FnOnce(&Metrics<'_>) -> T) -> T {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        read(&Metrics(&metrics))
    }

    /// What Raft's metrics say now.
    pub fn view(&self) -> RaftView {
        self.with_metrics(|metrics| metrics.view())
    }

    /// While `removal` says a member declared this node removed, it does
    /// not campaign: its elections would only raise terms nobody votes in.
    pub fn campaign_unless_removed(&self, removal: &crate::raft::network::Removal) {
        let mut changes = removal.subscribe();
        let raft = self.raft.clone();
        tokio::spawn(async move {
            loop {
                let removed = *changes.borrow_and_update();
                if let Some(removed) = removed {
                    tracing::warn!(
                        by = removed.by,
                        index = removed.index,
                        "this node was removed from the cluster (a member says so); it stops campaigning until a leader replicates to it again"
                    );
                }
                raft.runtime_config().elect(removed.is_none());
                if changes.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// Calls `changed` each time the leader this node knows changes (to
    /// another node or to none), until Raft stops.
    pub fn on_leader_change(&self, changed: impl Fn() + Send + 'static) {
        let mut metrics = self.raft.metrics();
        tokio::spawn(async move {
            let mut leader = metrics.borrow().current_leader;
            while metrics.changed().await.is_ok() {
                let now = metrics.borrow().current_leader;
                if now != leader {
                    leader = now;
                    changed();
                }
            }
        });
    }

    /// Adds node `id` at `address` as a learner, without waiting for it to
    /// catch up.
    pub async fn add_learner(&self, id: NodeId, address: String) -> Result<(), RaftRefusal> {
        self.raft
            .add_learner(id, Node::new(address), false)
            .await
            .map(|_| ())
            .map_err(write_refused)
    }

    /// Makes learner `id` a voter; returns the index of the change.
    pub async fn promote(&self, id: NodeId) -> Result<u64, RaftRefusal> {
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    /// Removes voter `id` from the voters and the cluster.
    pub async fn remove_voter(&self, id: NodeId) -> Result<u64, RaftRefusal> {
        self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
            .await
    }

    /// Removes learner `id` from the cluster.
    pub async fn remove_learner(&self, id: NodeId) -> Result<u64, RaftRefusal> {
        self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
            .await
    }

    async fn change(&self, change: ChangeMembers<NodeId, Node>) -> Result<u64, RaftRefusal> {
        self.raft
            .change_membership(change, false)
            .await
            .map(|written| written.log_id.index)
            .map_err(write_refused)
    }
}

/// Raft's metrics, read through wasmraft's types.
#[derive(Debug)]
pub struct Metrics<'a>(&'a RaftMetrics<NodeId, Node>);

impl Metrics<'_> {
    /// The leader Raft knows, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.0.current_leader
    }

    /// The address the membership in force records for `id`.
    pub fn address_of(&self, id: NodeId) -> Option<&str> {
        self.0
            .membership_config
            .membership()
            .get_node(&id)
            .map(|node| node.address.as_str())
    }

    /// The index of the last entry applied to this node's state.
    pub fn applied_index(&self) -> Option<u64> {
        self.0.last_applied.map(|log_id| log_id.index)
    }

    /// The index of the last entry this node's latest snapshot covers.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.0.snapshot.map(|log_id| log_id.index)
    }

    /// The index of the last entry in this node's log.
    pub fn last_log_index(&self) -> Option<u64> {
        self.0.last_log_index
    }

    /// The log index of the membership in force when it does not hold
    /// node `id` (neither voter nor learner): the change that removed it.
    /// `None` while it holds `id`, or before any membership.
    pub fn index_without(&self, id: NodeId) -> Option<u64> {
        let config = &self.0.membership_config;
        let membership = config.membership();
        if membership.voter_ids().next().is_none() || membership.get_node(&id).is_some() {
            return None;
        }
        config.log_id().map(|log_id| log_id.index)
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.0.current_term
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.0.state == ServerState::Leader
    }

    /// This node's Raft role.
    pub fn role(&self) -> Role {
        match self.0.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::ShuttingDown,
        }
    }

    /// The index up to which the log is purged (compacted into a snapshot).
    pub fn purged_index(&self) -> Option<u64> {
        self.0.purged.map(|log_id| log_id.index)
    }

    /// On the leader, the commit index: the highest index a quorum of the
    /// voters holds (this node included).
    pub fn commit_index(&self) -> Option<u64> {
        let replication = self.0.replication.as_ref()?;
        let membership = self.0.membership_config.membership();
        let mut matched: Vec<u64> = membership
            .voter_ids()
            .map(|id| {
                if id == self.0.id {
                    return self.0.last_log_index.unwrap_or(0);
                }
                replication
                    .get(&id)
                    .and_then(|log_id| log_id.as_ref())
                    .map_or(0, |log_id| log_id.index)
            })
            .collect();
        if matched.is_empty() {
            return None;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        Some(matched[matched.len() / 2])
    }

    /// On the leader, the index up to which `id`'s log matches its own.
    pub fn matched_index(&self, id: NodeId) -> Option<u64> {
        self.0
            .replication
            .as_ref()?
            .get(&id)?
            .as_ref()
            .map(|log_id| log_id.index)
    }

    /// The whole view, as plain data.
    pub fn view(&self) -> RaftView {
        let metrics = self.0;
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
        RaftView {
            role: self.role(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            voters,
            learners,
            last_log_index: metrics.last_log_index,
            last_applied_index: self.applied_index(),
            stopped: metrics
                .running_state
                .as_ref()
                .err()
                .map(ToString::to_string),
            millis_since_quorum_ack: metrics.millis_since_quorum_ack,
            replication: metrics
                .replication
                .iter()
                .flat_map(|replication| replication.iter())
                .map(|(id, matched)| (*id, matched.as_ref().map(|log_id| log_id.index)))
                .collect(),
        }
    }
}

fn wait_error(error: openraft::metrics::WaitError) -> WaitError {
    match error {
        openraft::metrics::WaitError::Timeout(..) => WaitError::Timeout,
        openraft::metrics::WaitError::ShuttingDown => WaitError::Stopped,
    }
}

fn fatal(error: Fatal<NodeId>) -> RaftRefusal {
    match error {
        Fatal::Stopped => RaftRefusal::Stopped,
        Fatal::Panicked => RaftRefusal::Fatal(FatalError::Panicked),
        Fatal::StorageError(error) => RaftRefusal::Fatal(FatalError::Storage {
            detail: error.to_string(),
        }),
    }
}

fn not_leader(forward: ForwardToLeader<NodeId, Node>) -> RaftRefusal {
    RaftRefusal::NotLeader {
        leader: forward.leader_id,
        address: forward.leader_node.map(|node| node.address),
    }
}

fn write_refused(error: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> RaftRefusal {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => not_leader(forward),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
            RaftRefusal::Change(match error {
                ChangeMembershipError::InProgress(_) => ChangeRefused::InProgress,
                ChangeMembershipError::EmptyMembership(_) => ChangeRefused::EmptyMembership,
                ChangeMembershipError::LearnerNotFound(missing) => ChangeRefused::LearnerNotFound {
                    id: missing.node_id,
                },
            })
        }
        RaftError::Fatal(error) => fatal(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_settings_make_a_valid_openraft_config() {
        openraft_config(&RaftSettings::default(), "test").unwrap();
    }
}
