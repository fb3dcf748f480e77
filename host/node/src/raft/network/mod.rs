//! The Raft network: how this node reaches its peers, over the internal
//! `Raft` gRPC service (`proto/wasmraft/v1/raft.proto`). With `api/`, the
//! only place the node meets protobuf.
//!
//! - `client`: openraft's `RaftNetworkFactory`/`RaftNetwork` over tonic
//!   (lazy connections, a timeout on every call, transport failures mapped
//!   to openraft's `Unreachable`/`Timeout`/`NetworkError`).
//! - `wire`: the encoding of openraft's messages inside `RaftRequest` and
//!   `RaftReply` (shared with the server side, `api::raft`).
//! - `forward`: [`Forwarder`], the follower's side of the forward hop.
//! - `introduce`: the `Handshake` and status calls of adding a node.
//! - `server`: Raft's own messages from peers, decoded and answered.
//! - `reachability`: which peers have stopped answering, and since when.
//! - `removal`: whether a member said this node was removed.
//! - `faults`: the seam where tests drop, delay or partition RPCs.
//!
//! Invariant: every outgoing RPC is bounded by a timeout; Raft's messages
//! and the forward hop pass the fault policy; nothing here knows about
//! modules or the API.

mod client;
mod faults;
mod forward;
pub mod introduce;
mod reachability;
pub mod removal;
pub mod server;
pub mod wire;

pub use client::{NetworkFactory, NetworkSettings, PeerNetwork};
pub use faults::{FaultDecision, FaultPolicy, Faults, InjectedFault};
pub use forward::{FORWARD_ANSWER_MARGIN, ForwardFailure, Forwarder};
pub use reachability::{Reachability, Unreachable};
pub use removal::{Removal, Removed};
