//! The Raft layer: openraft's type configuration for wasmraft and the thin
//! aliases the rest of the node uses.
//!
//! Invariant: openraft is named only below `raft/` and `storage/`; the
//! state machine logic, the runtime and the API speak wasmraft's own types, so a
//! move to openraft 0.10 stays contained here.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Request, Response};

/// A node's identity in the cluster. Chosen by the operator, never reused.
pub type NodeId = u64;

/// What the cluster records about a member: where its gRPC endpoint is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The `HOST:PORT` (or URL) other nodes and forwarded clients dial.
    pub address: String,
}

impl Node {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of wasmraft.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        // Snapshots live in files and are streamed in chunks; nothing holds a
        // whole snapshot in memory.
        SnapshotData = tokio::fs::File,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type Membership = openraft::Membership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type LogState = openraft::LogState<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;
