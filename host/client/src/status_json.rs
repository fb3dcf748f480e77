//! The stable JSON form of the cluster status, printed by
//! `wasmraft cluster status --json` for scripts and monitoring.
//!
//! # Schema, version 1
//!
//! ```json
//! {
//!   "schema_version": 1,
//!   "leader_id": 1,
//!   "term": 2,
//!   "voters": [{ "id": 1, "address": "127.0.0.1:7070" }],
//!   "learners": [],
//!   "nodes": [
//!     {
//!       "id": 1,
//!       "address": "127.0.0.1:7070",
//!       "role": "leader",
//!       "last_log_index": 7,
//!       "applied_index": 7,
//!       "state_digest_hex": "3b1f…",
//!       "error": null
//!     }
//!   ],
//!   "diverged": []
//! }
//! ```
//!
//! - `schema_version` (integer): 1. Raised only for a change that breaks
//!   readers (a field removed, renamed or retyped); new fields may be added
//!   within a version, so readers must ignore fields they do not know.
//! - `leader_id` (integer or null): the leader's node id; null while no
//!   leader is known.
//! - `term` (integer): the current Raft term.
//! - `voters`, `learners` (arrays of `{id, address}`): the membership in
//!   force; `address` is `host:port`.
//! - `nodes` (array, ordered by `id`): one object per member:
//!   - `id` (integer), `address` (string);
//!   - `role` (string): `leader`, `follower`, `candidate`, `learner` or
//!     `unknown` (the node did not answer);
//!   - `last_log_index` (integer or null): last entry in its log; null if
//!     the log is empty or the node did not answer;
//!   - `applied_index` (integer or null): last entry applied to its state;
//!     null if none yet or the node did not answer;
//!   - `state_digest_hex` (string or null): lowercase hex digest of its whole
//!     state at `applied_index`; null if the node did not answer;
//!   - `error` (string or null): why the node's fields are null; null when
//!     it answered.
//! - `diverged` (array of `[id, id]` pairs): nodes at the same
//!   `applied_index` with different digests — their states diverged, which
//!   must never happen. Empty in a healthy cluster.
//!
//! Every field is always present (null rather than absent).

use serde::{Deserialize, Serialize};

use super::types::{ClusterStatus, Member, NodeStatus};

/// The current version of the schema.
pub const CLUSTER_STATUS_SCHEMA_VERSION: u32 = 1;

/// `wasmraft cluster status --json`, schema version 1 (see the module
/// documentation for each field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusJson {
    pub schema_version: u32,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub voters: Vec<MemberJson>,
    pub learners: Vec<MemberJson>,
    pub nodes: Vec<NodeStatusJson>,
    pub diverged: Vec<(u64, u64)>,
}

/// A member in [`ClusterStatusJson`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJson {
    pub id: u64,
    pub address: String,
}

/// A node in [`ClusterStatusJson`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatusJson {
    pub id: u64,
    pub address: String,
    /// `leader`, `follower`, `candidate`, `learner` or `unknown`.
    pub role: String,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub state_digest_hex: Option<String>,
    pub error: Option<String>,
}

impl From<&ClusterStatus> for ClusterStatusJson {
    fn from(status: &ClusterStatus) -> Self {
        ClusterStatusJson {
            schema_version: CLUSTER_STATUS_SCHEMA_VERSION,
            leader_id: status.leader_id,
            term: status.term,
            voters: status.voters.iter().map(MemberJson::from).collect(),
            learners: status.learners.iter().map(MemberJson::from).collect(),
            nodes: status.nodes.iter().map(NodeStatusJson::from).collect(),
            diverged: status.diverged(),
        }
    }
}

impl From<&Member> for MemberJson {
    fn from(member: &Member) -> Self {
        MemberJson {
            id: member.id,
            address: member.address.clone(),
        }
    }
}

impl From<&NodeStatus> for NodeStatusJson {
    fn from(node: &NodeStatus) -> Self {
        NodeStatusJson {
            id: node.id,
            address: node.address.clone(),
            role: node.role.as_str().to_owned(),
            last_log_index: node.last_log_index,
            applied_index: node.applied_index,
            state_digest_hex: node.state_digest_hex.clone(),
            error: node.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeRole;

    /// The schema is a promise to scripts: this text changes only with
    /// `schema_version`, or when a field is added.
    #[test]
    fn the_schema_is_stable() {
        let status = ClusterStatus {
            leader_id: Some(1),
            term: 2,
            voters: vec![
                Member {
                    id: 1,
                    address: "127.0.0.1:7070".to_owned(),
                },
                Member {
                    id: 2,
                    address: "127.0.0.1:7071".to_owned(),
                },
            ],
            learners: Vec::new(),
            nodes: vec![
                NodeStatus {
                    id: 1,
                    address: "127.0.0.1:7070".to_owned(),
                    role: NodeRole::Leader,
                    last_log_index: Some(7),
                    applied_index: Some(7),
                    state_digest_hex: Some("ab12".to_owned()),
                    error: None,
                },
                NodeStatus {
                    id: 2,
                    address: "127.0.0.1:7071".to_owned(),
                    role: NodeRole::Unknown,
                    last_log_index: None,
                    applied_index: None,
                    state_digest_hex: None,
                    error: Some("timed out after 2000 ms".to_owned()),
                },
            ],
        };
        let json = serde_json::to_string(&ClusterStatusJson::from(&status)).expect("serialises");
        let expected = concat!(
            r#"{"schema_version":1,"leader_id":1,"term":2,"#,
            r#""voters":[{"id":1,"address":"127.0.0.1:7070"},{"id":2,"address":"127.0.0.1:7071"}],"#,
            r#""learners":[],"nodes":["#,
            r#"{"id":1,"address":"127.0.0.1:7070","role":"leader","last_log_index":7,"applied_index":7,"state_digest_hex":"ab12","error":null},"#,
            r#"{"id":2,"address":"127.0.0.1:7071","role":"unknown","last_log_index":null,"applied_index":null,"state_digest_hex":null,"error":"timed out after 2000 ms"}"#,
            r#"],"diverged":[]}"#
        );
        assert_eq!(json, expected);
        let parsed: ClusterStatusJson = serde_json::from_str(&json).expect("parses back");
        assert_eq!(parsed, ClusterStatusJson::from(&status));
    }

    #[test]
    fn no_leader_is_null_and_divergence_is_listed() {
        let node = |id, digest: &str| NodeStatus {
            id,
            address: String::new(),
            role: NodeRole::Follower,
            last_log_index: Some(3),
            applied_index: Some(3),
            state_digest_hex: Some(digest.to_owned()),
            error: None,
        };
        let status = ClusterStatus {
            leader_id: None,
            term: 4,
            voters: Vec::new(),
            learners: Vec::new(),
            nodes: vec![node(1, "aa"), node(2, "bb")],
        };
        let value = serde_json::to_value(ClusterStatusJson::from(&status)).expect("serialises");
        assert_eq!(value["leader_id"], serde_json::Value::Null);
        assert_eq!(value["diverged"], serde_json::json!([[1, 2]]));
    }
}
