//! Growing and shrinking the cluster, on the leader, through Raft only.
//!
//! Adding a node: check the request against the membership in force (id
//! not a voter, address not taken), introduce the two nodes (`Handshake`:
//! the node answers at that address with that id, runs the same wasm
//! engine, and has empty Raft storage), add it as a learner, wait until it
//! has caught up, then promote it to voter with `change_membership`, and
//! return once it applied the log up to its promotion (so a read it serves
//! right after sees what the cluster had). A node that did not catch up in
//! time stays a learner; asking again resumes.
//! Removing a node is one `change_membership`. One change at a time: a
//! second request while one runs is refused, not queued.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tonic::transport::Endpoint;
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::cluster_client::ClusterClient;
use wasmraft_proto::v1::raft_client::RaftClient;

use super::forward::millis;
use super::handle::{ConsensusError, Member, NodeHandle};
use crate::node::address::parse_peer_address;
use crate::raft::{Node, NodeId};
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
    #[error("node id 0 is reserved; node ids start at 1")]
    ZeroId,
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
        "node {id} at {address} already has Raft data (it is, or was, the member of a cluster): start it with an empty data directory to join"
    )]
    HasData { id: NodeId, address: String },
    #[error(
        "node {id} did not catch up within {after_ms} ms; it stays a learner and keeps receiving the log: run add-node again to make it a voter"
    )]
    NotCaughtUp { id: NodeId, after_ms: u64 },
    #[error("node {0} is not a member of the cluster")]
    NotMember(NodeId),
    #[error("node {0} is the last voter and a cluster needs one: add another node first")]
    LastVoter(NodeId),
    #[error("another membership change is in progress; retry once it finished")]
    InProgress,
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
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

/// Checks an addition against the membership in force.
fn check_addition(
    membership: &Membership,
    id: NodeId,
    address: &str,
) -> Result<Addition, MembershipError> {
    if id == 0 {
        return Err(MembershipError::ZeroId);
    }
    let url = parse_peer_address(address).map_err(|reason| MembershipError::BadAddress {
        address: address.to_owned(),
        reason,
    })?;
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
    let Addition { url, resume } = check_addition(&current(handle), id, &address)?;
    let raft = handle.raft();
    // Even a learner being resumed is introduced again: it may have
    // restarted empty, and an empty node takes Raft messages only from a
    // leader that introduced itself.
    introduce(handle, id, &address, url.clone(), deadline, resume).await?;
    if !resume {
        let added = within(
            deadline,
            "adding the learner",
            raft.add_learner(id, Node::new(address.clone()), false),
        )
        .await?;
        added.map_err(|error| change_failed(handle, error))?;
        tracing::info!(id, address, "learner added; waiting for it to catch up");
    }
    let caught_up = raft
        .wait(Some(deadline.saturating_duration_since(Instant::now())))
        .metrics(
            |metrics| {
                let Some(replication) = &metrics.replication else {
                    return false;
                };
                let matched = replication
                    .get(&id)
                    .and_then(|matched| matched.as_ref())
                    .map(|log_id| log_id.index);
                let last = metrics.last_log_index.unwrap_or(0);
                matched.is_some_and(|matched| matched + CATCH_UP_LAG_ENTRIES >= last)
            },
            "the new learner caught up",
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
    let promoted = within(
        deadline,
        "promoting the learner",
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false),
    )
    .await?;
    let promoted = promoted.map_err(|error| change_failed(handle, error))?;
    tracing::info!(id, "node promoted to voter");
    // The new voter serves reads as soon as this returns: let it apply the
    // log up to its own promotion first, so it knows every module and
    // write the cluster acknowledged before it joined.
    let index = promoted.log_id.index;
    if !applied_on(&url, index, deadline).await {
        tracing::warn!(
            id,
            index,
            "the new voter had not applied up to its promotion by the deadline"
        );
    }
    Ok(current(handle))
}

/// How often the leader asks a new voter how far it applied.
const APPLIED_POLL: Duration = Duration::from_millis(20);

/// Whether the node at `url` reports having applied `index` before
/// `deadline`, asking it every [`APPLIED_POLL`].
async fn applied_on(url: &str, index: u64, deadline: Instant) -> bool {
    let Ok(endpoint) = Endpoint::from_shared(url.to_owned()) else {
        return false;
    };
    let endpoint = endpoint.connect_timeout(HANDSHAKE_TIMEOUT);
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let asked = tokio::time::timeout(left.min(HANDSHAKE_TIMEOUT), async {
            let channel = endpoint.connect().await.ok()?;
            let status = ClusterClient::new(channel)
                .status(proto::StatusRequest { local_only: true })
                .await
                .ok()?
                .into_inner();
            status.nodes.first().and_then(|node| node.applied_index)
        })
        .await;
        if asked.ok().flatten().is_some_and(|applied| applied >= index) {
            return true;
        }
        tokio::time::sleep(APPLIED_POLL.min(left)).await;
    }
    false
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
    let change = if membership.voters.iter().any(|member| member.id == id) {
        if membership.voters.len() == 1 {
            return Err(MembershipError::LastVoter(id));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else if membership.learners.iter().any(|member| member.id == id) {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    } else {
        return Err(MembershipError::NotMember(id));
    };
    let removed = within(
        deadline,
        "removing the node",
        handle.raft().change_membership(change, false),
    )
    .await?;
    removed.map_err(|error| change_failed(handle, error))?;
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

fn change_failed(
    handle: &NodeHandle,
    error: RaftError<NodeId, ClientWriteError<NodeId, Node>>,
) -> MembershipError {
    match error {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => MembershipError::InProgress,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(other)) => {
            MembershipError::Consensus(ConsensusError::Membership(other.to_string()))
        }
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            MembershipError::Consensus(handle.not_leader(forward))
        }
        RaftError::Fatal(fatal) => MembershipError::Consensus(handle.fatal(fatal)),
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
    let endpoint = Endpoint::from_shared(url)
        .map_err(|error| unreachable(error.to_string()))?
        .connect_timeout(left);
    let ours = fingerprint_bytes(handle.runtime());
    let mut request = tonic::Request::new(proto::HandshakeRequest {
        node_id: handle.id(),
        cluster_id: String::new(),
        engine_compatibility_hash: ours.clone(),
    });
    request.set_timeout(left);
    let answer = tokio::time::timeout(left, async {
        let channel = endpoint.connect().await.map_err(|error| {
            // tonic's own message is vague ("transport error"): the cause
            // (connection refused, no route) is in the chain.
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        })?;
        RaftClient::new(channel)
            .handshake(request)
            .await
            .map_err(|status| format!("{}: {}", status.code(), status.message()))
    })
    .await
    .map_err(|_| unreachable(format!("no answer within {} ms", left.as_millis())))?
    .map_err(unreachable)?
    .into_inner();
    if answer.node_id != id {
        return Err(MembershipError::WrongId {
            address: address.to_owned(),
            expected: id,
            found: answer.node_id,
        });
    }
    if answer.engine_compatibility_hash != ours {
        return Err(MembershipError::EngineMismatch {
            id,
            theirs: hex::encode(&answer.engine_compatibility_hash),
            ours: hex::encode(&ours),
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
        let rows: [(NodeId, &str, Result<Addition, MembershipError>); 8] = [
            (4, "10.0.0.4:7070", addition("http://10.0.0.4:7070", false)),
            (3, "10.0.0.3:7070", addition("http://10.0.0.3:7070", true)),
            (
                3,
                "http://10.0.0.3:7070/",
                addition("http://10.0.0.3:7070", true),
            ),
            (0, "10.0.0.4:7070", Err(MembershipError::ZeroId)),
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
                check_addition(&now, id, address),
                expected,
                "{id} {address}"
            );
        }
    }
}
