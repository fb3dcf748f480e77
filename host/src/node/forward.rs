//! Forwarding to the leader: a follower that receives a write, a
//! linearizable read or a membership change hands it to the leader over the
//! internal `Raft.Forward` RPC and returns the leader's answer, so a client
//! pointed at any node just works.
//!
//! What crosses the hop is wasmraft's own request ([`Forwarded`]), encoded
//! like every Raft message (`network::wire`): the caller's identity and the
//! time left of its deadline travel with it; the leader stamps the
//! timestamp. The leader serves a forwarded request locally and never
//! forwards it again, so a request makes at most one hop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use wasmraft_proto::v1::raft_client::RaftClient;

use crate::command::Command;
use crate::network::{FaultDecision, Faults, wire};
use crate::node::address::parse_peer_address;
use crate::raft::NodeId;

/// A request a follower hands to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forwarded {
    /// Propose `command` for `caller`. Answer: `Result<Proposed, ConsensusError>`.
    Write {
        caller: String,
        command: Command,
        timeout_ms: u64,
    },
    /// Confirm leadership with a quorum and name the log index a
    /// linearizable read must wait for. Answer: `Result<u64, ConsensusError>`.
    ReadIndex { timeout_ms: u64 },
    /// Add a node (learner, catch up, voter). Answer:
    /// `Result<Membership, MembershipError>`.
    AddNode {
        id: NodeId,
        address: String,
        timeout_ms: u64,
    },
    /// Remove a member. Answer: `Result<Membership, MembershipError>`.
    RemoveNode { id: NodeId, timeout_ms: u64 },
}

/// Why a forwarded request got no answer from the leader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ForwardFailure {
    pub reason: String,
}

/// Channels to leaders, one per address, connected lazily.
#[derive(Debug)]
pub(crate) struct Forwarder {
    from: NodeId,
    /// Few entries: one per address that was ever the leader.
    channels: Mutex<HashMap<String, RaftClient<Channel>>>,
    message_bytes_max: usize,
    connect_timeout: Duration,
    /// Forwarding crosses the same network as Raft: a partition cuts both.
    faults: Faults,
}

/// More addresses than this means churn: start over rather than grow.
const CHANNELS_MAX: usize = 64;
/// Room for the leader's answer to travel back after its own deadline.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

impl Forwarder {
    pub(crate) fn new(
        from: NodeId,
        message_bytes_max: usize,
        connect_timeout: Duration,
        faults: Faults,
    ) -> Self {
        Self {
            from,
            channels: Mutex::new(HashMap::new()),
            message_bytes_max,
            connect_timeout,
            faults,
        }
    }

    fn client(&self, address: &str) -> Result<RaftClient<Channel>, ForwardFailure> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = channels.get(address) {
            return Ok(client.clone());
        }
        let url = parse_peer_address(address).map_err(|reason| ForwardFailure { reason })?;
        let endpoint = Endpoint::from_shared(url).map_err(|error| ForwardFailure {
            reason: error.to_string(),
        })?;
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let client = RaftClient::new(channel)
            .max_decoding_message_size(self.message_bytes_max)
            .max_encoding_message_size(self.message_bytes_max);
        if channels.len() >= CHANNELS_MAX {
            channels.clear();
        }
        channels.insert(address.to_owned(), client.clone());
        Ok(client)
    }

    /// Sends `request` to the leader `to` at `address` and decodes its
    /// answer as `Result<T, E>`. `timeout` is the time the leader has; the
    /// call itself gets a little more, so the leader's own timeout error
    /// arrives rather than a transport one.
    pub(crate) async fn call<T, E>(
        &self,
        to: NodeId,
        address: &str,
        request: &Forwarded,
        timeout: Duration,
    ) -> Result<Result<T, E>, ForwardFailure>
    where
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        let deadline = timeout + ANSWER_MARGIN;
        match self.faults.decide(self.from, to) {
            FaultDecision::Deliver => {}
            FaultDecision::Drop => {
                return Err(ForwardFailure {
                    reason: format!(
                        "forwarding from node {} to node {to} dropped by fault injection",
                        self.from
                    ),
                });
            }
            FaultDecision::Delay(delay) => tokio::time::sleep(delay.min(deadline)).await,
        }
        let mut client = self.client(address)?;
        let mut call = tonic::Request::new(wire::encode_request(request));
        call.set_timeout(deadline);
        let reply = match tokio::time::timeout(deadline, client.forward(call)).await {
            Err(_) => {
                return Err(ForwardFailure {
                    reason: format!("no answer within {} ms", deadline.as_millis()),
                });
            }
            Ok(Err(status)) => {
                return Err(ForwardFailure {
                    reason: format!("{}: {}", status.code(), status.message()),
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        wire::decode_reply(&reply).map_err(|error| ForwardFailure {
            reason: error.to_string(),
        })
    }
}

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::codec;

    #[test]
    fn forwarded_requests_round_trip() {
        let requests = [
            Forwarded::Write {
                caller: "alice".into(),
                command: Command::Remove {
                    name: "counter".into(),
                },
                timeout_ms: 1500,
            },
            Forwarded::ReadIndex { timeout_ms: 10 },
            Forwarded::AddNode {
                id: 4,
                address: "127.0.0.1:7074".into(),
                timeout_ms: 60_000,
            },
            Forwarded::RemoveNode {
                id: 2,
                timeout_ms: 1,
            },
        ];
        for request in requests {
            let decoded: Forwarded = codec::decode(&codec::encode(&request)).unwrap();
            assert_eq!(decoded, request);
        }
    }

    #[tokio::test]
    async fn an_absent_leader_is_a_failure_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let forwarder = Forwarder::new(2, 1 << 20, Duration::from_secs(1), Faults::none());
        let answer = forwarder
            .call::<u64, String>(
                1,
                &format!("127.0.0.1:{port}"),
                &Forwarded::ReadIndex { timeout_ms: 100 },
                Duration::from_millis(100),
            )
            .await;
        let failure = answer.unwrap_err();
        assert!(
            failure.reason.contains("unavailable"),
            "connection refused is reported as unavailable: {failure}"
        );
    }
}
