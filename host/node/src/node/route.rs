//! Where a request is served: on this node when it leads, else forwarded
//! to the leader over the internal `Raft.Forward` RPC (`forward`), which
//! serves it with the `*_here` methods and never forwards again. With no
//! leader known, a request waits for an election up to its deadline.

use std::time::{Duration, Instant};

use tracing::Instrument;

use super::error::ConsensusError;
use super::forward::{Forwarded, ForwardedAnswer, millis};
use super::handle::NodeHandle;
use super::membership::{self, MembershipError};
use crate::auth::policy::{CLUSTER_OBJECT, command_permission};
use crate::auth::{Action, Caller};
use crate::raft::network::ForwardFailure;
use crate::raft::{Metrics, NodeId};

/// Where a request is served.
pub(super) enum Route {
    /// This node leads.
    Here,
    /// Another node leads, at this address.
    Leader { id: NodeId, address: String },
}

impl NodeHandle {
    /// Where a request goes: here if this node leads, else the leader.
    /// With no leader known, waits for an election until `deadline`.
    pub(super) async fn route(&self, deadline: Instant) -> Result<Route, ConsensusError> {
        if self.is_shutting_down() {
            return Err(ConsensusError::ShuttingDown);
        }
        if let Some(index) = self.removed_at() {
            return Err(ConsensusError::Removed {
                this: self.inner.id,
                index,
            });
        }
        // A leader this node can reach: itself, or a member whose address
        // the membership names. A leader just removed from the membership
        // is on its way out: wait for its successor like for an election.
        let this = self.inner.id;
        let reachable = |metrics: &Metrics<'_>| {
            metrics
                .leader()
                .filter(|leader| *leader == this || metrics.address_of(*leader).is_some())
        };
        let consensus = &self.inner.consensus;
        let mut known = consensus.with_metrics(reachable);
        if known.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = consensus
                .wait_until(left, "a reachable leader", |metrics| {
                    reachable(metrics).is_some()
                })
                .await;
            known = consensus.with_metrics(reachable);
        }
        let Some(leader) = known else {
            return Err(ConsensusError::NotLeader {
                this,
                leader: consensus
                    .with_metrics(|metrics| metrics.leader())
                    .map(|id| self.leader_hint(id, None)),
            });
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
                leader: Some(self.leader_hint(leader, None)),
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
    pub(super) async fn routed<P, T, E, Here>(
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

    /// Checks, by this node's policy, a caller a follower authorised to
    /// change the membership.
    fn reauthorize_membership(&self, caller: &Caller) -> Result<(), MembershipError> {
        self.gate()
            .reauthorize(caller, Some((Action::ClusterMembership, CLUSTER_OBJECT)))
            .map(drop)
            .map_err(|denied| MembershipError::Consensus(ConsensusError::Denied(denied)))
    }

    /// Serves a request a follower forwarded (the internal `Raft.Forward`
    /// RPC): runs it here, never forwarding again.
    pub async fn serve_forwarded(&self, forwarded: Forwarded) -> ForwardedAnswer {
        let timeout = |timeout_ms: u64| self.call_timeout(Some(Duration::from_millis(timeout_ms)));
        // Each operation refuses itself on a node that no longer leads:
        // Raft refuses writes and read indexes, membership checks first.
        match forwarded {
            Forwarded::Write {
                caller,
                command,
                timeout_ms,
            } => {
                let timeout = self.write_timeout(&command, Some(Duration::from_millis(timeout_ms)));
                // The follower authorised the caller; so does the leader,
                // by its own policy, before the command is proposed.
                let caller = match self
                    .gate()
                    .reauthorize(&caller, command_permission(&command))
                {
                    Ok(caller) => caller,
                    Err(denied) => {
                        return ForwardedAnswer::Write(Err(ConsensusError::Denied(denied)));
                    }
                };
                ForwardedAnswer::Write(self.propose_here(caller, command, timeout).await)
            }
            Forwarded::Writes(writes) => {
                let served = writes
                    .into_iter()
                    .map(|write| self.serve_forwarded_write(write));
                ForwardedAnswer::Writes(Ok(futures::future::join_all(served).await))
            }
            Forwarded::ReadIndex { timeout_ms } => {
                ForwardedAnswer::ReadIndex(self.read_index_here(timeout(timeout_ms)).await)
            }
            Forwarded::AddNode {
                caller,
                id,
                address,
                timeout_ms,
            } => ForwardedAnswer::Membership(match self.reauthorize_membership(&caller) {
                Ok(()) => {
                    membership::add_node(self, id, address, Duration::from_millis(timeout_ms)).await
                }
                Err(refused) => Err(refused),
            }),
            Forwarded::RemoveNode {
                caller,
                id,
                timeout_ms,
            } => ForwardedAnswer::Membership(match self.reauthorize_membership(&caller) {
                Ok(()) => membership::remove_node(self, id, timeout(timeout_ms)).await,
                Err(refused) => Err(refused),
            }),
        }
    }
}
