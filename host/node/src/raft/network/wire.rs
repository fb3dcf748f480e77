//! How openraft's messages travel in the internal `Raft` gRPC service: the
//! request or the reply is encoded with [`codec`] (a version byte, then
//! postcard) into the `payload` bytes of `RaftRequest` / `RaftReply`.
//!
//! A reply carries `Result<Response, RaftError>`: a Raft-level refusal (a
//! higher vote seen, the node shutting down) is data for the caller's Raft,
//! not a transport failure. Pure functions, shared by the client
//! ([`super::client`]) and the server (`api::raft`).

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasmraft_proto::v1::{RaftReply, RaftRequest};

use crate::command::codec::{self, CodecError, ENCODING_VERSION};
use crate::raft::{NodeId, TypeConfig};

/// The `encoding_version` this build writes and reads.
pub const WIRE_ENCODING_VERSION: u32 = ENCODING_VERSION as u32;

/// Why a Raft message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(
        "the peer speaks Raft encoding version {found}; this node speaks version {WIRE_ENCODING_VERSION}: run the same wasmraft release on every node"
    )]
    UnknownEncoding { found: u32 },
    #[error("malformed Raft message: {0}")]
    Malformed(#[from] CodecError),
    /// Well formed, but not a message a correct peer sends.
    #[error("invalid Raft message: {0}")]
    Invalid(String),
}

/// Wraps an openraft request for the wire.
pub fn encode_request<T: Serialize>(request: &T) -> RaftRequest {
    RaftRequest {
        encoding_version: WIRE_ENCODING_VERSION,
        payload: codec::encode(request),
    }
}

/// Reads an openraft request off the wire.
pub fn decode_request<T: DeserializeOwned>(request: &RaftRequest) -> Result<T, WireError> {
    if request.encoding_version != WIRE_ENCODING_VERSION {
        return Err(WireError::UnknownEncoding {
            found: request.encoding_version,
        });
    }
    Ok(codec::decode(&request.payload)?)
}

/// Wraps the outcome of an openraft RPC handler for the wire.
pub fn encode_reply<T: Serialize, E: Serialize>(result: &Result<T, E>) -> RaftReply {
    RaftReply {
        payload: codec::encode(result),
    }
}

/// Reads the outcome of an openraft RPC off the wire.
pub fn decode_reply<T: DeserializeOwned, E: DeserializeOwned>(
    reply: &RaftReply,
) -> Result<Result<T, E>, WireError> {
    Ok(codec::decode(&reply.payload)?)
}

/// Decodes `payload`, as the current encoding carries it, as each of
/// openraft's requests: the peer messages a stranger's bytes reach (the
/// `decoders` fuzz target). Each refuses bad bytes with an error.
pub fn decode_as_each_raft_request(payload: &[u8]) {
    let request = RaftRequest {
        encoding_version: WIRE_ENCODING_VERSION,
        payload: payload.to_vec(),
    };
    let _ = decode_request::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&request);
    let _ = decode_request::<openraft::raft::VoteRequest<NodeId>>(&request);
    let _ = decode_request::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(&request);
}

/// Reads `payload`, as the current encoding carries it, as a `T`.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    Ok(codec::decode(payload)?)
}

#[cfg(test)]
mod tests {
    use openraft::error::{Fatal, RaftError};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
        VoteResponse,
    };
    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::command::{Command, Request};
    use crate::raft::{Entry, EntryPayload, LogId, Node, NodeId, SnapshotMeta, TypeConfig, Vote};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn openraft_messages_round_trip() {
        let entries = vec![
            Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Membership(Membership::new(
                    vec![[1u64].into_iter().collect()],
                    [(1u64, Node::new("127.0.0.1:7070"))]
                        .into_iter()
                        .collect::<std::collections::BTreeMap<_, _>>(),
                )),
            },
            Entry {
                log_id: log_id(1, 2),
                payload: EntryPayload::Normal(Request {
                    timestamp_ms: 5,
                    caller: "alice".into(),
                    command: Command::Remove {
                        name: "counter".into(),
                    },
                }),
            },
        ];
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries,
            leader_commit: Some(log_id(1, 1)),
        };
        let decoded: AppendEntriesRequest<TypeConfig> =
            decode_request(&encode_request(&append)).unwrap();
        assert_eq!(decoded.entries, append.entries);
        assert_eq!(decoded.vote, append.vote);

        let vote = VoteRequest::<NodeId>::new(Vote::new(2, 3), Some(log_id(1, 2)));
        let decoded: VoteRequest<NodeId> = decode_request(&encode_request(&vote)).unwrap();
        assert_eq!(decoded, vote);

        let snapshot = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(1, 2)),
                last_membership: Default::default(),
                snapshot_id: "1-2-0".into(),
            },
            offset: 0,
            data: vec![1, 2, 3],
            done: true,
        };
        let decoded: InstallSnapshotRequest<TypeConfig> =
            decode_request(&encode_request(&snapshot)).unwrap();
        assert_eq!(decoded.data, snapshot.data);
        assert_eq!(decoded.meta, snapshot.meta);

        let ok: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            Ok(VoteResponse::new(Vote::new(2, 3), None, true));
        let decoded: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            decode_reply(&encode_reply(&ok)).unwrap();
        assert_eq!(decoded, ok);

        let refused: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            Err(RaftError::Fatal(Fatal::Stopped));
        let decoded: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            decode_reply(&encode_reply(&refused)).unwrap();
        assert_eq!(decoded, refused);
    }

    #[test]
    fn an_unknown_encoding_is_refused_not_misread() {
        let mut request = encode_request(&1u64);
        request.encoding_version = 9;
        let error = decode_request::<u64>(&request).unwrap_err();
        assert!(matches!(error, WireError::UnknownEncoding { found: 9 }));
        assert!(error.to_string().contains("same wasmraft release"));
        let garbage = RaftRequest {
            encoding_version: WIRE_ENCODING_VERSION,
            payload: vec![],
        };
        assert!(matches!(
            decode_request::<u64>(&garbage),
            Err(WireError::Malformed(_))
        ));
    }
}
