//! What the API needs of a running node, in wasmraft's own types:
//! [`NodeHandle`]. Its entry points live by concern beside it: `route`
//! (where a request is served, and forwarding to the leader), `write`
//! (proposing commands, and the batcher), `read` (the linearizable read
//! barrier) and `membership` (adding and removing nodes). This file holds
//! the handle itself, its timeouts, its admission to Raft messages and
//! the view of the cluster.
//!
//! Invariant: the node reaches Raft only through [`Consensus`]; leadership
//! and roles come only from Raft's metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::error::{ConsensusError, LeaderHint};
use super::forward::millis;
use super::forward_batch::{self, PendingForward};
use super::health::{self, Health};
use super::membership::MembershipError;
use super::rounds::Rounds;
use super::write::{self, DEPLOY_TIMEOUT_MAX, PROPOSALS_QUEUED_MAX, Pending};
use crate::admission::{InFlight, QueryPool, RateLimits};
use crate::auth::peer::Peer;
use crate::auth::{Gate, PeerAuth};
use crate::command::{ClusterSettings, Command};
use crate::node::config::LimitSettings;
use crate::node::rules::MembershipRules;
use crate::raft::network::{Forwarder, Reachability, Removal, introduce};
use crate::raft::{Consensus, Member, NodeId, RaftRefusal, RaftView, Role, WaitError};
use crate::storage::StateReader;
use crate::telemetry::metrics::Metrics;
use crate::wasm::Runtime;

/// Queries that may wait for a query thread, per thread: they wait without
/// a thread of their own, so the bound is one of memory and of patience
/// (a waiter gives up at its deadline).
const QUERIES_QUEUED_PER_THREAD: usize = 128;

/// A running node as the API sees it. Cheap to clone.
/// Where an empty node stands between being added and founding a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Joining {
    Undecided,
    /// A leader introduced itself to add it: it must not bootstrap.
    Introduced(Peer),
    /// It bootstraps a cluster of its own: no leader may add it.
    Founding,
}

#[derive(Clone, Debug)]
pub struct NodeHandle {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) id: NodeId,
    /// Where peers and clients reach this node (recorded in the membership).
    pub(super) advertised_address: String,
    pub(super) consensus: Consensus,
    pub(super) reader: StateReader,
    /// Validates modules at the edge; shares its caches with apply.
    pub(super) runtime: Runtime,
    /// This node's own limits (replaced whole by [`NodeHandle::reload_limits`]).
    pub(super) limits: std::sync::RwLock<Arc<LimitSettings>>,
    /// What membership changes may name (checked here and on the leader).
    pub(super) membership_rules: MembershipRules,
    /// The callers' token buckets (`limits.rates`).
    pub(super) rates: std::sync::RwLock<Arc<RateLimits>>,
    /// The calls open on this node (`limits.in_flight`).
    pub(super) in_flight: InFlight,
    /// How long a write or a read barrier may wait for Raft: a write without
    /// a quorum would otherwise wait for ever.
    pub(super) consensus_timeout: Duration,
    /// Set when shutdown starts, so new requests are turned away cleanly.
    pub(super) shutting_down: AtomicBool,
    /// Hands requests that reached this node while it follows to the leader.
    pub(super) forwarder: Forwarder,
    /// Held by the membership change in progress: one at a time.
    pub(super) membership_change: tokio::sync::Mutex<()>,
    /// Whether this node may take Raft messages: once its storage holds a
    /// log or a vote, or, while empty, once a leader introduced itself
    /// (`Handshake`) to add it. An empty node nobody introduced is a member
    /// that lost its data: taking the leader's messages would make the
    /// leader see a log go backwards, and answering votes with a forgotten
    /// vote would break election safety.
    pub(super) admitted: AtomicBool,
    /// The first member of a cluster that sent this node Raft messages while
    /// it was empty and not admitted: proof that the node is a member that
    /// lost its data, so it must not bootstrap a cluster of its own.
    pub(super) contacted_by: std::sync::Mutex<Option<Peer>>,
    /// Whether this empty node is being added to a cluster (a leader
    /// introduced itself) or founds its own: one or the other, decided
    /// under this lock, so that a node a cluster is adding never
    /// bootstraps and a node bootstrapping is never added.
    pub(super) joining: std::sync::Mutex<Joining>,
    /// Invokes waiting to be proposed. openraft writes one entry at a time
    /// and waits for its fsync, so the batcher proposes whatever queued up
    /// meanwhile as one entry: a burst of clients shares one fsync.
    pub(super) proposals: mpsc::Sender<Pending>,
    /// Invokes waiting to be forwarded while this node follows: the
    /// forward batcher hands whatever queued meanwhile to the leader in one
    /// call, so a burst of clients costs the hop one call, not one each.
    pub(super) forwards: mpsc::Sender<PendingForward>,
    /// This node's peer credentials, and the check of its peers'.
    pub(super) peer_auth: PeerAuth,
    /// Authentication and authorisation of this node's callers.
    pub(super) gate: Gate,
    /// Why the node is not ready to serve yet, while it is not (a dev node
    /// deploying its examples): its health says `starting` until cleared.
    pub(super) starting: std::sync::Mutex<Option<String>>,
    /// Which peers stopped answering this node's Raft calls.
    pub(super) reachability: Reachability,
    /// Where queries wait for one of the runtime's query instances.
    pub(super) queries: QueryPool,
    /// The quorum rounds concurrent linearizable reads share.
    pub(super) read_rounds: Arc<Rounds<Result<u64, ConsensusError>>>,
    /// This node's instruments (`/metrics`).
    pub(super) metrics: Metrics,
    /// Whether a member said this node was removed from the cluster.
    pub(super) removal: Removal,
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
        consensus: Consensus,
        reader: StateReader,
        runtime: Runtime,
        limits: LimitSettings,
        membership_rules: MembershipRules,
        consensus_timeout: Duration,
        forwarder: Forwarder,
        peer_auth: PeerAuth,
        gate: Gate,
        reachability: Reachability,
        starting: Option<String>,
        metrics: Metrics,
        removal: Removal,
    ) -> Self {
        let (proposals, queue) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        let (forwards, forwards_queue) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        let rates = std::sync::RwLock::new(Arc::new(RateLimits::new(&limits.rates)));
        let in_flight = InFlight::new(&limits.in_flight);
        let query_threads = limits
            .query_threads
            .map_or_else(
                || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
                |threads| usize::try_from(threads).unwrap_or(usize::MAX),
            )
            .min(runtime.query_instances_max() as usize);
        let inner = Arc::new(Inner {
            id,
            advertised_address,
            consensus,
            reader,
            limits: std::sync::RwLock::new(Arc::new(limits)),
            membership_rules,
            rates,
            in_flight,
            consensus_timeout,
            shutting_down: AtomicBool::new(false),
            forwarder,
            membership_change: tokio::sync::Mutex::new(()),
            admitted: AtomicBool::new(false),
            contacted_by: std::sync::Mutex::new(None),
            joining: std::sync::Mutex::new(Joining::Undecided),
            proposals,
            forwards,
            peer_auth,
            gate,
            starting: std::sync::Mutex::new(starting),
            reachability,
            queries: QueryPool::new(query_threads, QUERIES_QUEUED_PER_THREAD * query_threads),
            runtime,
            read_rounds: Arc::new(Rounds::new()),
            metrics,
            removal,
        });
        // The batcher holds the node weakly: when the last handle goes, the
        // queue closes and the batcher ends.
        tokio::spawn(write::batch_proposals(Arc::downgrade(&inner), queue));
        tokio::spawn(forward_batch::batch_forwards(
            Arc::downgrade(&inner),
            forwards_queue,
        ));
        Self { inner }
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// This node's instruments.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether a member said this node was removed.
    pub fn removal(&self) -> &Removal {
        &self.inner.removal
    }

    /// The membership change that removed this node from the cluster, when
    /// it was: in its own membership (it applied the change) or as a
    /// member told it (it missed the change). `None` for a member.
    pub fn removed_at(&self) -> Option<u64> {
        let this = self.inner.id;
        self.inner
            .consensus
            .with_metrics(|metrics| metrics.index_without(this))
            .or_else(|| self.inner.removal.get().map(|removed| removed.index))
    }

    pub fn advertised_address(&self) -> &str {
        &self.inner.advertised_address
    }

    /// This node's Raft.
    pub fn consensus(&self) -> &Consensus {
        &self.inner.consensus
    }

    /// This node's peer credentials, and the check of its peers'.
    pub fn peer_auth(&self) -> &PeerAuth {
        &self.inner.peer_auth
    }

    /// Who this node's callers are, and what they may do.
    pub fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    pub fn reader(&self) -> &StateReader {
        &self.inner.reader
    }

    /// The pool queries run on.
    pub fn queries(&self) -> &QueryPool {
        &self.inner.queries
    }

    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// This node's own limits in force.
    pub fn limits(&self) -> Arc<LimitSettings> {
        self.inner
            .limits
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `limits` in force for the calls admitted from now on, once
    /// they pass validation; the old limits stay otherwise. The limits
    /// fixed when the node started (`payload_bytes_max`, which sizes the
    /// gRPC server's messages, `query_threads`, the query pool's threads,
    /// and `query_timeout_ms`, the runtime's wall clock) keep their values,
    /// and each one asked to change is named in the answer.
    pub fn reload_limits(
        &self,
        mut limits: LimitSettings,
    ) -> Result<Vec<&'static str>, crate::node::config::ConfigError> {
        limits.validate()?;
        let current = self.limits();
        let mut kept = Vec::new();
        if limits.payload_bytes_max != current.payload_bytes_max {
            kept.push("limits.payload_bytes_max");
            limits.payload_bytes_max = current.payload_bytes_max;
        }
        if limits.query_threads != current.query_threads {
            kept.push("limits.query_threads");
            limits.query_threads = current.query_threads;
        }
        if limits.query_timeout_ms != current.query_timeout_ms {
            kept.push("limits.query_timeout_ms");
            limits.query_timeout_ms = current.query_timeout_ms;
        }
        // The rates were validated against the payload bound they will
        // meet, which may be the one kept.
        limits.validate()?;
        let rates = Arc::new(self.rates().reloaded(&limits.rates));
        self.inner.in_flight.reload(&limits.in_flight);
        *self
            .inner
            .rates
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = rates;
        *self
            .inner
            .limits
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(limits);
        Ok(kept)
    }

    /// The calls open on this node.
    pub fn in_flight(&self) -> &InFlight {
        &self.inner.in_flight
    }

    /// The callers' rate limits.
    pub fn rates(&self) -> Arc<RateLimits> {
        self.inner
            .rates
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// What membership changes this node accepts.
    pub fn membership_rules(&self) -> &MembershipRules {
        &self.inner.membership_rules
    }

    /// The cluster settings in force in this node's state
    /// ([`ClusterSettings::unrecorded`] until the cluster records some). The edge checks requests against
    /// them; apply checks again against the settings of its own moment.
    pub fn settings(&self) -> Result<ClusterSettings, redb::Error> {
        Ok(self
            .inner
            .reader
            .settings()?
            .map_or_else(ClusterSettings::unrecorded, |record| record.settings))
    }

    pub(crate) fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    pub(super) fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// The time a call may take: the caller's deadline when it gave one,
    /// never more than the node's consensus timeout.
    pub(super) fn call_timeout(&self, requested: Option<Duration>) -> Duration {
        requested.map_or(self.inner.consensus_timeout, |requested| {
            requested.min(self.inner.consensus_timeout)
        })
    }

    /// The time a write may take: as [`Self::call_timeout`], except that a
    /// deploy may take up to [`DEPLOY_TIMEOUT_MAX`].
    pub(super) fn write_timeout(&self, command: &Command, requested: Option<Duration>) -> Duration {
        if !matches!(command, Command::Deploy(_)) {
            return self.call_timeout(requested);
        }
        let ceiling = DEPLOY_TIMEOUT_MAX.max(self.inner.consensus_timeout);
        requested.map_or(ceiling, |requested| requested.min(ceiling))
    }

    /// Refuses work that only the leader may do when Raft's metrics name
    /// another node (or none) the leader.
    pub(crate) fn ensure_leads(&self) -> Result<(), ConsensusError> {
        let leader = self
            .inner
            .consensus
            .with_metrics(|metrics| metrics.leader());
        if leader == Some(self.inner.id) {
            return Ok(());
        }
        Err(ConsensusError::NotLeader {
            this: self.inner.id,
            leader: leader.map(|id| self.leader_hint(id, None)),
        })
    }

    /// Records that a leader introduced itself to add this node.
    pub(crate) fn admit(&self) {
        self.inner.admitted.store(true, Ordering::Release);
    }

    /// Records that `peer`, a leader, introduced itself to add this empty
    /// node, and admits its messages. `Err` says why not: this node is
    /// founding a cluster of its own.
    pub(crate) fn introduced_by(&self, peer: Peer) -> Result<(), String> {
        let mut joining = self.joining();
        if *joining == Joining::Founding {
            return Err(format!(
                "node {} is founding a cluster of its own (it was started with --bootstrap and an empty data directory): to add it to this cluster, stop it, empty its data directory and start it without --bootstrap",
                self.inner.id
            ));
        }
        if *joining == Joining::Undecided {
            *joining = Joining::Introduced(peer);
        }
        self.admit();
        Ok(())
    }

    /// Marks this empty node as founding a cluster of its own, unless a
    /// leader introduced itself to add it: `Err` holds that leader.
    pub(crate) fn begin_founding(&self) -> Result<(), Peer> {
        let mut joining = self.joining();
        match &*joining {
            Joining::Introduced(peer) => Err(peer.clone()),
            Joining::Undecided | Joining::Founding => {
                *joining = Joining::Founding;
                Ok(())
            }
        }
    }

    fn joining(&self) -> std::sync::MutexGuard<'_, Joining> {
        self.inner
            .joining
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this node takes Raft messages from peers: `Err` says why not.
    pub async fn accepts_raft_messages(&self) -> Result<(), String> {
        if self.inner.admitted.load(Ordering::Acquire) {
            return Ok(());
        }
        let initialized = self
            .inner
            .consensus
            .is_initialized()
            .await
            .map_err(|refusal| format!("Raft stopped: {refusal}"))?;
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

    /// Records that `peer`, a node of a cluster, sent Raft messages this
    /// node refused while empty (see [`NodeHandle::accepts_raft_messages`]).
    pub(crate) fn contacted_while_empty(&self, peer: Peer) {
        // A peer that names no cluster counts too: its cluster may not have
        // recorded its id yet, or predate ids, and still holds this node.
        if peer.node_id.is_none() {
            return;
        }
        self.inner
            .contacted_by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(peer);
    }

    /// The first member of a cluster that sent this node Raft messages
    /// while it was empty, if one did.
    pub(crate) fn contacted_by(&self) -> Option<Peer> {
        self.inner
            .contacted_by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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

    /// What Raft's refusal means to a caller of this node.
    pub(crate) fn refused(&self, refusal: RaftRefusal) -> ConsensusError {
        match refusal {
            RaftRefusal::NotLeader { leader, address } => ConsensusError::NotLeader {
                this: self.inner.id,
                leader: leader.map(|id| self.leader_hint(id, address)),
            },
            RaftRefusal::NoQuorum { voters, reached } => {
                ConsensusError::NoQuorum { voters, reached }
            }
            RaftRefusal::Change(refused) => ConsensusError::Membership(refused),
            RaftRefusal::Stopped => ConsensusError::ShuttingDown,
            RaftRefusal::Fatal(fatal) => ConsensusError::Fatal(fatal),
        }
    }

    /// What a wait on Raft that did not end well means to a caller.
    pub(super) fn wait_failed(
        &self,
        error: WaitError,
        what: &str,
        after: Duration,
    ) -> ConsensusError {
        match error {
            WaitError::Timeout => ConsensusError::Timeout {
                what: what.to_owned(),
                after_ms: millis(after),
            },
            WaitError::Stopped => ConsensusError::ShuttingDown,
        }
    }

    /// The leader `id`, at `address` when Raft named it, else where the
    /// membership says.
    pub(super) fn leader_hint(&self, id: NodeId, address: Option<String>) -> LeaderHint {
        LeaderHint {
            id,
            address: address.or_else(|| self.member_address(id)),
        }
    }

    pub(super) fn member_address(&self, id: NodeId) -> Option<String> {
        self.inner
            .consensus
            .with_metrics(|metrics| metrics.address_of(id).map(str::to_owned))
    }

    /// The index of the last entry applied to this node's state.
    pub fn applied_index(&self) -> Option<u64> {
        self.inner
            .consensus
            .with_metrics(|metrics| metrics.applied_index())
    }

    /// Waits until every member has applied the entry at `index` (this
    /// node too), up to `timeout`: an access change is in force on every
    /// node when it returns. Answers the members that did not confirm it in
    /// time (unreachable, or behind).
    pub async fn applied_everywhere(&self, index: u64, timeout: Duration) -> Vec<NodeId> {
        let deadline = std::time::Instant::now() + timeout;
        let here = self
            .inner
            .consensus
            .wait_until(timeout, "the entry is applied here", |metrics| {
                metrics
                    .applied_index()
                    .is_some_and(|applied| applied >= index)
            })
            .await
            .is_ok();
        let view = self.inner.consensus.view();
        let mut members: Vec<Member> = view.voters.into_iter().chain(view.learners).collect();
        members.sort_by_key(|member| member.id);
        members.dedup_by_key(|member| member.id);
        let others = members
            .into_iter()
            .filter(|member| member.id != self.inner.id)
            .map(|member| async move {
                let confirmed = match crate::node::address::parse_peer_address(&member.address) {
                    Ok(url) => {
                        introduce::applied_on(&url, &self.inner.peer_auth, index, deadline).await
                    }
                    Err(_) => false,
                };
                (!confirmed).then_some(member.id)
            });
        let mut missing: Vec<NodeId> = futures::future::join_all(others)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !here {
            missing.insert(0, self.inner.id);
        }
        missing
    }

    /// Waits until some leader is known, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let consensus = &self.inner.consensus;
        consensus
            .wait_until(timeout, "a leader is known", |metrics| {
                metrics.leader().is_some()
            })
            .await
            .ok()?;
        consensus.with_metrics(|metrics| metrics.leader())
    }

    /// Marks the node ready: its health no longer says `starting`.
    pub fn ready(&self) {
        *self
            .inner
            .starting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// This node's health, from Raft's view of it (see `node::health`).
    pub fn health(&self) -> Health {
        self.health_of(&self.inner.consensus.view())
    }

    fn health_of(&self, view: &RaftView) -> Health {
        let starting = self
            .inner
            .starting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Only the leader calls every member; a follower hears from the
        // leader, which `no_leader` covers.
        let unreachable = if view.role == Role::Leader {
            self.inner
                .reachability
                .unreachable(health::PEER_SILENCE_MAX)
        } else {
            Vec::new()
        };
        health::assess(
            self.inner.id,
            view,
            health::Local {
                shutting_down: self.is_shutting_down(),
                starting: starting.as_deref(),
                unreachable: &unreachable,
                removed_at: self.removed_at(),
            },
        )
    }

    /// This node's view of the cluster, from Raft's metrics.
    pub fn cluster_view(&self) -> ClusterView {
        let view = self.inner.consensus.view();
        let health = self.health_of(&view);
        let health = if health.serving {
            Ok(())
        } else {
            Err(health.detail())
        };
        ClusterView {
            this: self.inner.id,
            role: view.role,
            leader_id: view.leader,
            term: view.term,
            voters: view.voters,
            learners: view.learners,
            last_log_index: view.last_log_index,
            last_applied_index: view.last_applied_index,
            health,
        }
    }
}
