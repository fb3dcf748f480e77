//! The Raft network: how this node's openraft reaches its peers, over the
//! internal `Raft` gRPC service (`proto/wasmraft/v1/raft.proto`).
//!
//! - `client`: openraft's `RaftNetworkFactory`/`RaftNetwork` over tonic
//!   (lazy connections, a timeout on every call, transport failures mapped
//!   to openraft's `Unreachable`/`Timeout`/`NetworkError`).
//! - `wire`: the encoding of openraft's messages inside `RaftRequest` and
//!   `RaftReply` (shared with the server side, `api::raft`).
//! - `faults`: the seam where tests drop, delay or partition RPCs.
//!
//! Invariant: every outgoing RPC is bounded by a timeout and passes the
//! fault policy; nothing here knows about modules or the API.

mod client;
mod faults;
pub mod wire;

pub use client::{NetworkFactory, NetworkSettings, PeerNetwork};
pub use faults::{FaultDecision, FaultPolicy, Faults, InjectedFault};
