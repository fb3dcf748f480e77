//! The Raft layer: everything of openraft above the storage adapters.
//!
//! - `mod.rs`: openraft's type configuration for wasmraft and its aliases.
//! - `consensus`: [`Consensus`], the node's Raft in wasmraft's own types
//!   (writes, read indexes, membership changes, peer messages, the view
//!   from Raft's metrics).
//! - `network`: openraft's network over the internal `Raft` gRPC service.
//! - `lease`: knowing when openraft has let go of the stores.
//!
//! Invariant: openraft is named only below `raft/` and `storage/` (its
//! storage traits); the node, the API and the CLI speak wasmraft's own
//! types, so a move to openraft 0.10 stays contained here.

pub mod consensus;
pub(crate) mod lease;
pub mod network;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use self::consensus::{
    ChangeRefused, Consensus, FatalError, Member, Metrics, RaftRefusal, RaftView, Role, WaitError,
};
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
