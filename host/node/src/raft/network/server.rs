//! The server side of Raft's own messages: a peer's `AppendEntries`,
//! `Vote` and `InstallSnapshot` chunk, decoded off the wire, checked
//! against the shapes openraft relies on, handed to this node's Raft, and
//! its answer (a Raft error included) encoded back. The gRPC service
//! around them is `api::raft`, which admits only authenticated peers.
//!
//! Invariant: a message reaches openraft only with its entries contiguous
//! (each index one more than the one before, the first one after
//! `prev_log_id`), their terms never decreasing nor above the sender's
//! vote, at most [`ENTRIES_PER_MESSAGE_MAX`] of them, and a snapshot
//! chunk within [`SNAPSHOT_BYTES_MAX`]: the log store asserts contiguity,
//! and a peer's bug must be refused, not crash the node.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use wasmraft_proto::v1::{RaftReply, RaftRequest};

use super::wire::{self, WireError};
use crate::raft::{Consensus, NodeId, TypeConfig};

/// The most entries one `AppendEntries` may carry: the largest
/// `raft.max_payload_entries` a node accepts.
pub const ENTRIES_PER_MESSAGE_MAX: usize = 100_000;
/// The furthest into a snapshot file a chunk may reach (1 TiB).
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 40;

/// Refuses an `AppendEntries` whose entries openraft must never see.
fn check_append(rpc: &AppendEntriesRequest<TypeConfig>) -> Result<(), String> {
    if rpc.entries.len() > ENTRIES_PER_MESSAGE_MAX {
        return Err(format!(
            "{} entries in one message; at most {ENTRIES_PER_MESSAGE_MAX}",
            rpc.entries.len()
        ));
    }
    let vote_term = rpc.vote.leader_id.term;
    let mut expected = rpc
        .prev_log_id
        .map_or(Some(0), |log_id| log_id.index.checked_add(1));
    let mut term = rpc.prev_log_id.map_or(0, |log_id| log_id.leader_id.term);
    for entry in &rpc.entries {
        let log_id = entry.log_id;
        if Some(log_id.index) != expected {
            return Err(format!(
                "entry {} is not contiguous: expected index {}",
                log_id.index,
                expected.map_or("none".to_owned(), |index| index.to_string())
            ));
        }
        if log_id.leader_id.term < term || log_id.leader_id.term > vote_term {
            return Err(format!(
                "entry {} has term {}, outside [{term}, {vote_term}] (the previous entry's term, the sender's)",
                log_id.index, log_id.leader_id.term
            ));
        }
        term = log_id.leader_id.term;
        expected = log_id.index.checked_add(1);
    }
    Ok(())
}

/// Refuses a snapshot chunk that would write past [`SNAPSHOT_BYTES_MAX`].
fn check_chunk(rpc: &InstallSnapshotRequest<TypeConfig>) -> Result<(), String> {
    let end = u64::try_from(rpc.data.len())
        .ok()
        .and_then(|length| rpc.offset.checked_add(length));
    match end {
        Some(end) if end <= SNAPSHOT_BYTES_MAX => Ok(()),
        _ => Err(format!(
            "a snapshot chunk of {} bytes at offset {} reaches past {SNAPSHOT_BYTES_MAX} bytes",
            rpc.data.len(),
            rpc.offset
        )),
    }
}

/// Serves a peer's `AppendEntries`.
pub async fn append_entries(
    consensus: &Consensus,
    request: &RaftRequest,
) -> Result<RaftReply, WireError> {
    let rpc = wire::decode_request(request)?;
    check_append(&rpc).map_err(WireError::Invalid)?;
    Ok(wire::encode_reply(
        &consensus.raft().append_entries(rpc).await,
    ))
}

/// Serves a peer's `Vote`.
pub async fn vote(consensus: &Consensus, request: &RaftRequest) -> Result<VoteAnswer, WireError> {
    let rpc: VoteRequest<NodeId> = wire::decode_request(request)?;
    let candidate = rpc.vote.leader_id().voted_for();
    if let Some(candidate) = candidate {
        let removed_at = consensus.with_metrics(|metrics| metrics.index_without(candidate));
        let reaches = |index: u64| rpc.last_log_id.is_some_and(|log_id| log_id.index >= index);
        if let Some(index) = removed_at.filter(|index| !reaches(*index)) {
            return Ok(VoteAnswer::CandidateRemoved { candidate, index });
        }
    }
    Ok(VoteAnswer::Reply(wire::encode_reply(
        &consensus.raft().vote(rpc).await,
    )))
}

/// What this node answers a vote request.
#[derive(Debug)]
pub enum VoteAnswer {
    /// Raft's own answer.
    Reply(RaftReply),
    /// The candidate is not in this node's membership, removed by the
    /// change at `index`, which its log does not reach: it missed its own
    /// removal (see `removal`).
    CandidateRemoved { candidate: NodeId, index: u64 },
}

/// Serves a chunk of a peer's `InstallSnapshot`.
pub async fn install_snapshot(
    consensus: &Consensus,
    request: &RaftRequest,
) -> Result<RaftReply, WireError> {
    let rpc = wire::decode_request(request)?;
    check_chunk(&rpc).map_err(WireError::Invalid)?;
    Ok(wire::encode_reply(
        &consensus.raft().install_snapshot(rpc).await,
    ))
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, Vote};

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn append(
        prev: Option<(u64, u64)>,
        entries: &[(u64, u64)],
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(5, 1),
            prev_log_id: prev.map(|(term, index)| log_id(term, index)),
            entries: entries
                .iter()
                .map(|(term, index)| openraft::Entry {
                    log_id: log_id(*term, *index),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: None,
        }
    }

    #[test]
    fn only_contiguous_entries_of_known_terms_pass() {
        let rows: [(&str, AppendEntriesRequest<TypeConfig>, bool); 8] = [
            ("a heartbeat", append(Some((2, 9)), &[]), true),
            ("the first entries", append(None, &[(1, 0), (1, 1)]), true),
            (
                "entries after prev",
                append(Some((2, 9)), &[(2, 10), (3, 11)]),
                true,
            ),
            ("a gap after prev", append(Some((2, 9)), &[(2, 11)]), false),
            (
                "a gap between entries",
                append(Some((2, 9)), &[(2, 10), (2, 12)]),
                false,
            ),
            ("an index repeated", append(None, &[(1, 0), (1, 0)]), false),
            ("a term going back", append(Some((3, 9)), &[(2, 10)]), false),
            (
                "a term above the sender's",
                append(Some((2, 9)), &[(6, 10)]),
                false,
            ),
        ];
        for (what, rpc, passes) in rows {
            assert_eq!(
                check_append(&rpc).is_ok(),
                passes,
                "{what}: {:?}",
                check_append(&rpc)
            );
        }
        let after_the_last = append(Some((1, u64::MAX)), &[(1, 0)]);
        assert!(check_append(&after_the_last).is_err());
    }

    #[test]
    fn snapshot_chunks_stay_within_bounds() {
        let chunk = |offset: u64, length: usize| InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            meta: SnapshotMeta::default(),
            offset,
            data: vec![0; length],
            done: false,
        };
        assert!(check_chunk(&chunk(0, 16)).is_ok());
        assert!(check_chunk(&chunk(SNAPSHOT_BYTES_MAX - 16, 16)).is_ok());
        assert!(check_chunk(&chunk(SNAPSHOT_BYTES_MAX - 15, 16)).is_err());
        assert!(check_chunk(&chunk(u64::MAX, 16)).is_err());
    }
}
