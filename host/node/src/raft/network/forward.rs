//! The client side of the forward hop: a follower hands a request to the
//! leader over the internal `Raft.Forward` RPC and decodes its answer. What
//! travels is the node's own request type (`node::forward::Forwarded`),
//! encoded by `wire` like every Raft message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tracing::Instrument;
use wasmraft_proto::v1::raft_client::RaftClient;

use super::wire;
use super::{FaultDecision, Faults};
use crate::auth::PeerAuth;
use crate::raft::NodeId;
use crate::telemetry::traces;

/// Why a forwarded request got no answer from the leader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ForwardFailure {
    pub reason: String,
}

/// Channels to leaders, one per address, connected lazily.
#[derive(Debug)]
pub struct Forwarder {
    from: NodeId,
    /// Few entries: one per address that was ever the leader.
    channels: Mutex<HashMap<String, RaftClient<Channel>>>,
    message_bytes_max: usize,
    connect_timeout: Duration,
    /// Forwarding crosses the same network as Raft: a partition cuts both.
    faults: Faults,
    /// Only a peer may speak for a caller: the leader checks these.
    peer_auth: PeerAuth,
}

/// More addresses than this means churn: start over rather than grow.
const CHANNELS_MAX: usize = 64;
/// Room for the leader's answer to travel back after its own deadline.
pub const FORWARD_ANSWER_MARGIN: Duration = Duration::from_millis(500);

impl Forwarder {
    pub fn new(
        from: NodeId,
        message_bytes_max: usize,
        connect_timeout: Duration,
        faults: Faults,
        peer_auth: PeerAuth,
    ) -> Self {
        Self {
            from,
            channels: Mutex::new(HashMap::new()),
            message_bytes_max,
            connect_timeout,
            faults,
            peer_auth,
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
        let endpoint = self
            .peer_auth
            .endpoint(address)
            .map_err(|reason| ForwardFailure { reason })?;
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
    pub async fn call<T, E>(
        &self,
        to: NodeId,
        address: &str,
        request: &impl Serialize,
        timeout: Duration,
    ) -> Result<Result<T, E>, ForwardFailure>
    where
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        let deadline = timeout + FORWARD_ANSWER_MARGIN;
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
        self.peer_auth.stamp(call.metadata_mut());
        // The hop joins the caller's trace, and the leader continues it.
        let span = traces::trace_span!("forward", leader = to);
        span.in_scope(|| traces::inject(call.metadata_mut()));
        let answered = tokio::time::timeout(deadline, client.forward(call))
            .instrument(span)
            .await;
        let reply = match answered {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_absent_leader_is_a_failure_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let forwarder = Forwarder::new(
            2,
            1 << 20,
            Duration::from_secs(1),
            Faults::none(),
            PeerAuth::new(2, None, Box::new(|| None)),
        );
        let answer = forwarder
            .call::<u64, String>(
                1,
                &format!("127.0.0.1:{port}"),
                &100_u64,
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
