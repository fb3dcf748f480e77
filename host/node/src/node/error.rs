//! Why the node did not take a write or confirm a read: [`ConsensusError`],
//! plain data, so a leader's answer travels back over `Forward` as it is.

use serde::{Deserialize, Serialize};

use crate::auth::Denied;
use crate::raft::{ChangeRefused, FatalError, NodeId};

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
    #[error(
        "the leader cannot reach a quorum of voters ({voters}): only nodes {reached:?} answered"
    )]
    NoQuorum {
        voters: String,
        reached: Vec<NodeId>,
    },
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
    Membership(ChangeRefused),
    #[error("the node's Raft stopped on a fatal error: {0}")]
    Fatal(FatalError),
    /// The leader refused a forwarded caller it authorised again.
    #[error(transparent)]
    Denied(Denied),
    #[error(
        "node {this} was removed from the cluster (by the membership change at log index {index}): it serves nothing; stop it, or add it again with an empty data directory (`wasmraft cluster add-node {this} ADDRESS` on a member)"
    )]
    Removed { this: NodeId, index: u64 },
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
