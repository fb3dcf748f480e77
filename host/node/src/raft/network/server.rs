//! The server side of Raft's own messages: a peer's `AppendEntries`,
//! `Vote` and `InstallSnapshot` chunk, decoded off the wire, handed to this
//! node's Raft, and its answer (a Raft error included) encoded back. The
//! gRPC service around them is `api::raft`.

use wasmraft_proto::v1::{RaftReply, RaftRequest};

use super::wire::{self, WireError};
use crate::raft::Consensus;

/// Serves a peer's `AppendEntries`.
pub async fn append_entries(
    consensus: &Consensus,
    request: &RaftRequest,
) -> Result<RaftReply, WireError> {
    let rpc = wire::decode_request(request)?;
    Ok(wire::encode_reply(
        &consensus.raft().append_entries(rpc).await,
    ))
}

/// Serves a peer's `Vote`.
pub async fn vote(consensus: &Consensus, request: &RaftRequest) -> Result<RaftReply, WireError> {
    let rpc = wire::decode_request(request)?;
    Ok(wire::encode_reply(&consensus.raft().vote(rpc).await))
}

/// Serves a chunk of a peer's `InstallSnapshot`.
pub async fn install_snapshot(
    consensus: &Consensus,
    request: &RaftRequest,
) -> Result<RaftReply, WireError> {
    let rpc = wire::decode_request(request)?;
    Ok(wire::encode_reply(
        &consensus.raft().install_snapshot(rpc).await,
    ))
}
