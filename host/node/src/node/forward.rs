//! Forwarding to the leader: a follower that receives a write, a
//! linearizable read or a membership change hands it to the leader over the
//! internal `Raft.Forward` RPC and returns the leader's answer, so a client
//! pointed at any node just works.
//!
//! What crosses the hop is wasmraft's own request ([`Forwarded`]), encoded
//! like every Raft message (`raft::network::wire`) and sent by
//! `raft::network::Forwarder`: the caller's identity and the
//! time left of its deadline travel with it; the leader stamps the
//! timestamp. The leader serves a forwarded request locally and never
//! forwards it again, so a request makes at most one hop.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ConsensusError;
use super::membership::{Membership, MembershipError};
use super::write::Proposed;
use crate::auth::Caller;
use crate::command::{Command, TraceContext};
use crate::raft::NodeId;

/// A request a follower hands to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forwarded {
    /// Propose `command` for `caller`, whom the leader authorises again.
    /// Answer: `Result<Proposed, ConsensusError>`.
    Write {
        caller: Caller,
        command: Command,
        timeout_ms: u64,
    },
    /// Confirm leadership with a quorum and name the log index a
    /// linearizable read must wait for. Answer: `Result<u64, ConsensusError>`.
    ReadIndex { timeout_ms: u64 },
    /// Add a node (learner, catch up, voter) for `caller`, whom the leader
    /// authorises again. Answer: `Result<Membership, MembershipError>`.
    AddNode {
        caller: Caller,
        id: NodeId,
        address: String,
        timeout_ms: u64,
    },
    /// Remove a member for `caller`, whom the leader authorises again.
    /// Answer: `Result<Membership, MembershipError>`.
    RemoveNode {
        caller: Caller,
        id: NodeId,
        timeout_ms: u64,
    },
    /// Propose each of `writes` (invokes and session opens the follower's
    /// batcher gathered), each for its own caller and within its own time.
    /// Answer: `Result<Vec<Result<Proposed, ConsensusError>>, ConsensusError>`,
    /// one result per write, in order.
    Writes(Vec<ForwardedWrite>),
}

/// The most writes one [`Forwarded::Writes`] carries, as many as one entry
/// of the leader's batcher; the leader refuses more.
pub const FORWARDED_WRITES_MAX: usize = super::write::BATCH_COMMANDS_MAX;

/// One write a follower forwards, as the leader receives it in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedWrite {
    /// Whom the leader authorises again.
    pub caller: Caller,
    pub command: Command,
    /// The time left of the caller's deadline when the batch left.
    pub timeout_ms: u64,
    /// The caller's trace, when it was sampled: the leader's proposal joins
    /// it, as a lone forward's does through `traceparent`.
    pub trace: Option<TraceContext>,
}

/// The leader's answer to a [`Forwarded`] request, by kind; the follower
/// decodes each as the `Result` it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardedAnswer {
    Write(Result<Proposed, ConsensusError>),
    ReadIndex(Result<u64, ConsensusError>),
    Membership(Result<Membership, MembershipError>),
    Writes(Result<Vec<Result<Proposed, ConsensusError>>, ConsensusError>),
}

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authorization;
    use crate::command::codec;

    #[test]
    fn forwarded_requests_round_trip() {
        let requests = [
            Forwarded::Write {
                caller: Caller {
                    subject: "alice".into(),
                    authorization: Some(Authorization {
                        revision: 7,
                        token_id: Some("0123456789abcdef".into()),
                    }),
                },
                command: Command::Remove {
                    name: "counter".into(),
                },
                timeout_ms: 1500,
            },
            Forwarded::ReadIndex { timeout_ms: 10 },
            Forwarded::AddNode {
                caller: Caller::unchecked("operator"),
                id: 4,
                address: "127.0.0.1:7074".into(),
                timeout_ms: 60_000,
            },
            Forwarded::RemoveNode {
                caller: Caller::system(),
                id: 2,
                timeout_ms: 1,
            },
        ];
        for request in requests {
            let decoded: Forwarded = codec::decode(&codec::encode(&request)).unwrap();
            assert_eq!(decoded, request);
        }
    }
}
