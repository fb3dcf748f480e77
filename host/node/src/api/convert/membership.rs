//! `wasmraft.v1.Membership`, `Node` and `NodeRole` from the node's types.

use wasmraft_proto::v1 as proto;

use crate::node::membership::Membership;
use crate::raft::{Member, Role};

/// The API's view of a membership.
pub(crate) fn membership_message(membership: &Membership) -> proto::Membership {
    let to_node = |member: &Member| proto::Node {
        id: member.id,
        address: member.address.clone(),
    };
    proto::Membership {
        voters: membership.voters.iter().map(to_node).collect(),
        learners: membership.learners.iter().map(to_node).collect(),
    }
}

/// The API's name of a Raft role.
pub(crate) fn role_message(role: Role) -> proto::NodeRole {
    match role {
        Role::Leader => proto::NodeRole::Leader,
        Role::Follower => proto::NodeRole::Follower,
        Role::Candidate => proto::NodeRole::Candidate,
        Role::Learner => proto::NodeRole::Learner,
        Role::ShuttingDown => proto::NodeRole::Unspecified,
    }
}
