//! Growing and shrinking the cluster, on the leader, through Raft only.
//!
//! Adding a node: check the request against the membership in force (id
//! not a voter, address not taken), introduce the two nodes (`Handshake`:
//! the node answers at that address with that id, runs the same wasm
//! engine, and has empty Raft storage), add it as a learner, wait until it
//! has caught up, then promote it to voter with `change_membership`, and
//! return once it applied the log up to its promotion (so a read it serves
//! right after sees what the cluster had), or say that it has not by the
//! deadline (`NotApplied`: the change holds, the voter catches up by
//! itself). A node that did not catch up in time stays a learner; asking
//! again resumes.
//! Removing a node is one `change_membership`. One change at a time: a
//! second request while one runs is refused, not queued.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::ConsensusError;
use super::forward::{Forwarded, millis};
use super::handle::NodeHandle;
use crate::auth::Caller;
use crate::node::address::parse_peer_address;
use crate::node::rules::{MembershipRules, RuleRefusal};
use crate::raft::network::introduce;
use crate::raft::{ChangeRefused, Member, NodeId, RaftRefusal};
use crate::wasm::Runtime;

/// A learner counts as caught up when its log is at most this many entries
/// behind the leader's: under a steady write load it may never be at zero.
const CATCH_UP_LAG_ENTRIES: u64 = 64;
/// The longest the introduction of a new node may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster's members after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: Vec<Member>,
    pub learners: Vec<Member>,
}

/// Why a membership change was refused or did not finish. Every refusal
/// happens before anything is written: the membership is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    /// Refused by the node's `[membership]` rules.
    #[error(transparent)]
    Rule(#[from] RuleRefusal),
    #[error("bad address `{address}`: {reason}")]
    BadAddress { address: String, reason: String },
    #[error(
        "node {id} is already a member, at {address}; to change its address, remove it and add it again"
    )]
    AlreadyMember { id: NodeId, address: String },
    #[error("address {address} is already used by node {id}")]
    AddressInUse { id: NodeId, address: String },
    #[error(
        "cannot reach node {id} at {address}: {reason}; check that `wasmraft serve` runs there and the address is right"
    )]
    Unreachable {
        id: NodeId,
        address: String,
        reason: String,
    },
    #[error("the node at {address} has id {found}, not {expected}: check the id and the address")]
    WrongId {
        address: String,
        expected: NodeId,
        found: NodeId,
    },
    #[error(
        "node {id} runs a different wasm engine (fingerprint {theirs}; the cluster's is {ours}), so it could execute modules differently: run the same wasmraft release on every node"
    )]
    EngineMismatch {
        id: NodeId,
        theirs: String,
        ours: String,
    },
    #[error(
        "node {id} belongs to another cluster ({theirs}; this one is {ours}): a node joins only with an empty data directory"
    )]
    OtherCluster {
        id: NodeId,
        theirs: String,
        ours: String,
    },
    #[error(
        "node {id} at {address} already has Raft data (it is, or was, the member of a cluster): start it with an empty data directory to join"
    )]
    HasData { id: NodeId, address: String },
    #[error(
        "node {id} did not catch up within {after_ms} ms; it stays a learner and keeps receiving the log: run add-node again to make it a voter"
    )]
    NotCaughtUp { id: NodeId, after_ms: u64 },
    #[error(
        "node {id} is a voter now, but had not applied the log up to its promotion (index {index}) within {after_ms} ms: until it does, a stale read it serves may miss writes the cluster acknowledged; it catches up by itself, and `wasmraft cluster status` shows its applied index"
    )]
    NotApplied {
        id: NodeId,
        index: u64,
        after_ms: u64,
    },
    #[error("node {0} is not a member of the cluster")]
    NotMember(NodeId),
    #[error("node {0} is the last voter and a cluster needs one: add another node first")]
    LastVoter(NodeId),
    #[error("another membership change is in progress; retry once it finished")]
    InProgress,
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
}

impl NodeHandle {
    /// Adds node `id` at `address` to the cluster: a learner first, a voter
    /// once it caught up. A follower forwards it to the leader.
    pub async fn add_node(
        &self,
        caller: Caller,
        id: NodeId,
        address: String,
        timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        self.routed(
            Instant::now() + timeout,
            address,
            |address| add_node(self, id, address, timeout),
            |address, timeout_ms| Forwarded::AddNode {
                caller: caller.clone(),
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
        caller: Caller,
        id: NodeId,
        timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        let timeout = self.call_timeout(Some(timeout));
        self.routed(
            Instant::now() + timeout,
            (),
            |()| remove_node(self, id, timeout),
            |(), timeout_ms| Forwarded::RemoveNode {
                caller: caller.clone(),
                id,
                timeout_ms,
            },
        )
        .await
    }
}

/// The membership in force, from Raft's metrics.
pub(crate) fn current(handle: &NodeHandle) -> Membership {
    let view = handle.cluster_view();
    Membership {
        voters: view.voters,
        learners: view.learners,
    }
}

/// The wasm engine fingerprint as the handshake carries it.
pub(crate) fn fingerprint_bytes(runtime: &Runtime) -> Vec<u8> {
    let fingerprint = runtime.engine_fingerprint();
    hex::decode(&fingerprint).unwrap_or_else(|_| fingerprint.into_bytes())
}

/// An addition that passed the checks against the membership in force.
#[derive(Debug, PartialEq, Eq)]
struct Addition {
    /// The URL the new node is dialled at.
    url: String,
    /// The node is a learner at that address already: only catching up
    /// and the promotion remain.
    resume: bool,
}

/// Checks an addition's id and address by the rules alone: the part of
/// [`check_addition`] any node can decide, before it forwards the request.
pub(crate) fn check_candidate(
    rules: &MembershipRules,
    id: NodeId,
    address: &str,
) -> Result<String, MembershipError> {
    rules.check_id(id)?;
    let url = parse_peer_address(address).map_err(|reason| MembershipError::BadAddress {
        address: address.to_owned(),
        reason,
    })?;
    rules.check_address(&url)?;
    Ok(url)
}

/// Checks an addition against the rules and the membership in force.
fn check_addition(
    rules: &MembershipRules,
    membership: &Membership,
    id: NodeId,
    address: &str,
) -> Result<Addition, MembershipError> {
    let url = check_candidate(rules, id, address)?;
    if let Some(voter) = membership.voters.iter().find(|member| member.id == id) {
        return Err(MembershipError::AlreadyMember {
            id,
            address: voter.address.clone(),
        });
    }
    let same_address =
        |member: &&Member| parse_peer_address(&member.address).is_ok_and(|other| other == url);
    if let Some(learner) = membership.learners.iter().find(|member| member.id == id) {
        return if same_address(&learner) {
            Ok(Addition { url, resume: true })
        } else {
            Err(MembershipError::AlreadyMember {
                id,
                address: learner.address.clone(),
            })
        };
    }
    if let Some(other) = membership
        .voters
        .iter()
        .chain(&membership.learners)
        .find(same_address)
    {
        return Err(MembershipError::AddressInUse {
            id: other.id,
            address: other.address.clone(),
        });
    }
    rules.check_growth(membership.voters.len() + membership.learners.len())?;
    Ok(Addition { url, resume: false })
}

/// Adds node `id` at `address`: learner, caught up, voter. Runs on the
/// leader.
pub(crate) async fn add_node(
    handle: &NodeHandle,
    id: NodeId,
    address: String,
    timeout: Duration,
) -> Result<Membership, MembershipError> {
    let deadline = Instant::now() + timeout;
    handle.ensure_leads()?;
    let _one_at_a_time = handle.begin_membership_change()?;
    let Addition { url, resume } =
        check_addition(handle.membership_rules(), &current(handle), id, &address)?;
    let consensus = handle.consensus();
    // Even a learner being resumed is introduced again: it may have
    // restarted empty, and an empty node takes Raft messages only from a
    // leader that introduced itself.
    introduce(handle, id, &address, url.clone(), deadline, resume).await?;
    if !resume {
        let added = within(
            deadline,
            "adding the learner",
            consensus.add_learner(id, address.clone()),
        )
        .await?;
        added.map_err(|refusal| change_failed(handle, refusal))?;
        tracing::info!(id, address, "learner added; waiting for it to catch up");
    }
    let caught_up = consensus
        .wait_until(
            deadline.saturating_duration_since(Instant::now()),
            "the new learner caught up",
            |metrics| {
                let last = metrics.last_log_index().unwrap_or(0);
                metrics
                    .matched_index(id)
                    .is_some_and(|matched| matched + CATCH_UP_LAG_ENTRIES >= last)
            },
        )
        .await;
    if caught_up.is_err() {
        // Leadership lost while waiting shows as not caught up too; the
        // error below tells the operator to ask again, which is right.
        return Err(MembershipError::NotCaughtUp {
            id,
            after_ms: millis(timeout),
        });
    }
    let promoted = within(deadline, "promoting the learner", consensus.promote(id)).await?;
    let index = promoted.map_err(|refusal| change_failed(handle, refusal))?;
    tracing::info!(id, "node promoted to voter");
    // The new voter serves reads as soon as this returns: let it apply the
    // log up to its own promotion first, so it knows every module and
    // write the cluster acknowledged before it joined.
    if !introduce::applied_on(&url, handle.peer_auth(), index, deadline).await {
        return Err(MembershipError::NotApplied {
            id,
            index,
            after_ms: millis(timeout),
        });
    }
    Ok(current(handle))
}

/// Removes member `id` by consensus. Runs on the leader.
pub(crate) async fn remove_node(
    handle: &NodeHandle,
    id: NodeId,
    timeout: Duration,
) -> Result<Membership, MembershipError> {
    let deadline = Instant::now() + timeout;
    handle.ensure_leads()?;
    let _one_at_a_time = handle.begin_membership_change()?;
    let membership = current(handle);
    let consensus = handle.consensus();
    let removed = if membership.voters.iter().any(|member| member.id == id) {
        if membership.voters.len() == 1 {
            return Err(MembershipError::LastVoter(id));
        }
        within(deadline, "removing the node", consensus.remove_voter(id)).await?
    } else if membership.learners.iter().any(|member| member.id == id) {
        within(deadline, "removing the node", consensus.remove_learner(id)).await?
    } else {
        return Err(MembershipError::NotMember(id));
    };
    removed.map_err(|refusal| change_failed(handle, refusal))?;
    tracing::info!(id, "node removed");
    Ok(current(handle))
}

/// Runs `work` until `deadline`.
async fn within<T>(
    deadline: Instant,
    what: &'static str,
    work: impl std::future::Future<Output = T>,
) -> Result<T, MembershipError> {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, work).await.map_err(|_| {
        MembershipError::Consensus(ConsensusError::Timeout {
            what: what.to_owned(),
            after_ms: millis(left),
        })
    })
}

fn change_failed(handle: &NodeHandle, refusal: RaftRefusal) -> MembershipError {
    match refusal {
        RaftRefusal::Change(ChangeRefused::InProgress) => MembershipError::InProgress,
        other => MembershipError::Consensus(handle.refused(other)),
    }
}

/// Asks the node at `address` who it is, and refuses one that is not node
/// `id`, runs another wasm engine, or already has Raft data (unless it is a
/// learner of this cluster being resumed, which may have some).
async fn introduce(
    handle: &NodeHandle,
    id: NodeId,
    address: &str,
    url: String,
    deadline: Instant,
    resume: bool,
) -> Result<(), MembershipError> {
    let unreachable = |reason: String| MembershipError::Unreachable {
        id,
        address: address.to_owned(),
        reason,
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .min(HANDSHAKE_TIMEOUT);
    let ours = fingerprint_bytes(handle.runtime());
    let answer = introduce::handshake(url, handle.peer_auth(), handle.id(), ours.clone(), left)
        .await
        .map_err(unreachable)?;
    if answer.node_id != id {
        return Err(MembershipError::WrongId {
            address: address.to_owned(),
            expected: id,
            found: answer.node_id,
        });
    }
    if answer.engine_fingerprint != ours {
        return Err(MembershipError::EngineMismatch {
            id,
            theirs: hex::encode(&answer.engine_fingerprint),
            ours: hex::encode(&ours),
        });
    }
    if let (Some(theirs), Some(ours)) = (&answer.cluster_id, handle.peer_auth().cluster_id())
        && *theirs != ours
    {
        return Err(MembershipError::OtherCluster {
            id,
            theirs: theirs.clone(),
            ours,
        });
    }
    if answer.initialized && !resume {
        return Err(MembershipError::HasData {
            id,
            address: address.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(voters: &[(NodeId, &str)], learners: &[(NodeId, &str)]) -> Membership {
        let members = |list: &[(NodeId, &str)]| {
            list.iter()
                .map(|(id, address)| Member {
                    id: *id,
                    address: (*address).to_owned(),
                })
                .collect()
        };
        Membership {
            voters: members(voters),
            learners: members(learners),
        }
    }

    #[test]
    fn additions_are_checked_against_the_membership_in_force() {
        let now = membership(
            &[(1, "10.0.0.1:7070"), (2, "10.0.0.2:7070")],
            &[(3, "10.0.0.3:7070")],
        );
        let addition = |url: &str, resume| {
            Ok(Addition {
                url: url.to_owned(),
                resume,
            })
        };
        let rules = MembershipRules {
            members_max: 4,
            ..MembershipRules::default()
        };
        let rows: [(NodeId, &str, Result<Addition, MembershipError>); 9] = [
            (4, "10.0.0.4:7070", addition("http://10.0.0.4:7070", false)),
            (3, "10.0.0.3:7070", addition("http://10.0.0.3:7070", true)),
            (
                3,
                "http://10.0.0.3:7070/",
                addition("http://10.0.0.3:7070", true),
            ),
            (
                0,
                "10.0.0.4:7070",
                Err(MembershipError::Rule(RuleRefusal {
                    setting: Some("node_id_min".into()),
                    reason: "node id 0 is below 1".into(),
                })),
            ),
            (
                4,
                "169.254.169.254:80",
                Err(MembershipError::Rule(RuleRefusal {
                    setting: Some("allow_link_local".into()),
                    reason: "169.254.169.254 is a link-local address, which this cluster does not accept for a member".into(),
                })),
            ),
            (
                2,
                "10.0.0.9:7070",
                Err(MembershipError::AlreadyMember {
                    id: 2,
                    address: "10.0.0.2:7070".into(),
                }),
            ),
            (
                3,
                "10.0.0.9:7070",
                Err(MembershipError::AlreadyMember {
                    id: 3,
                    address: "10.0.0.3:7070".into(),
                }),
            ),
            (
                5,
                "http://10.0.0.1:7070",
                Err(MembershipError::AddressInUse {
                    id: 1,
                    address: "10.0.0.1:7070".into(),
                }),
            ),
            (
                5,
                "10.0.0.5",
                Err(MembershipError::BadAddress {
                    address: "10.0.0.5".into(),
                    reason: "`10.0.0.5` has no port; expected HOST:PORT".into(),
                }),
            ),
        ];
        for (id, address, expected) in rows {
            assert_eq!(
                check_addition(&rules, &now, id, address),
                expected,
                "{id} {address}"
            );
        }
        // Three members and a fourth allowed; the fifth is refused, but a
        // learner being resumed is no growth.
        let full = membership(
            &[(1, "10.0.0.1:7070"), (2, "10.0.0.2:7070")],
            &[(3, "10.0.0.3:7070"), (4, "10.0.0.4:7070")],
        );
        let refused = check_addition(&rules, &full, 5, "10.0.0.5:7070").unwrap_err();
        assert!(
            refused.to_string().contains("membership.members_max"),
            "{refused}"
        );
        check_addition(&rules, &full, 4, "10.0.0.4:7070").unwrap();
    }
}
