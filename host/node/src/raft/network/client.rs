//! The client side of the Raft network: openraft's `RaftNetworkFactory` and
//! `RaftNetwork` over tonic clients of the internal `Raft` gRPC service.
//!
//! One lazily connected channel per peer; every call bounded by openraft's
//! hard TTL; transport failures classified so openraft reacts well:
//! a peer that cannot be reached is `Unreachable` (openraft backs off), a
//! call that ran out of time is `Timeout`, anything else is a
//! `NetworkError` (retried at once). A message larger than the peers accept
//! is `PayloadTooLarge`, so openraft sends fewer entries at a time.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use wasmraft_proto::v1::raft_client::RaftClient;
use wasmraft_proto::v1::{RaftReply, RaftRequest};

use super::faults::{FaultDecision, Faults, InjectedFault};
use super::removal::{REMOVED_AT_METADATA, Removal, Removed};
use super::{Reachability, wire};
use crate::auth::PeerAuth;
use crate::raft::{Node, NodeId, TypeConfig};

/// Sizes and times of the Raft network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkSettings {
    /// The largest Raft message a node sends or accepts, encoded. Must hold
    /// one log entry of the largest kind (a deploy of the largest module).
    pub message_bytes_max: usize,
    /// How long establishing a connection to a peer may take.
    pub connect_timeout: Duration,
    /// The pause before calling an unreachable peer again. Short, like a
    /// heartbeat: a restarted peer that heard from no leader for its
    /// election timeout would start an election and depose a healthy one.
    pub unreachable_retry: Duration,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            message_bytes_max: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(2),
            unreachable_retry: Duration::from_millis(50),
        }
    }
}

/// Makes one [`PeerNetwork`] per peer for openraft.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    /// This node: the `from` of every RPC, for errors and fault decisions.
    from: NodeId,
    settings: NetworkSettings,
    faults: Faults,
    /// Signs every call with this node's peer credentials.
    peer_auth: PeerAuth,
    /// Where each call's outcome is recorded, for the node's health.
    reachability: Reachability,
    /// Where a member's word that this node was removed is recorded.
    removal: Removal,
}

impl NetworkFactory {
    pub fn new(
        from: NodeId,
        settings: NetworkSettings,
        faults: Faults,
        peer_auth: PeerAuth,
        reachability: Reachability,
    ) -> Self {
        Self {
            from,
            settings,
            faults,
            peer_auth,
            reachability,
            removal: Removal::default(),
        }
    }

    /// Records in `removal` a member's refusal of a vote that says this
    /// node was removed.
    pub fn with_removal(self, removal: Removal) -> Self {
        Self { removal, ..self }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerNetwork {
        // Nothing is dialled here: the channel connects on first use and
        // reconnects by itself. A bad address fails every call instead.
        let client = self.peer_auth.endpoint(&node.address).map(|endpoint| {
            let channel = endpoint
                .connect_timeout(self.settings.connect_timeout)
                .tcp_nodelay(true)
                .connect_lazy();
            RaftClient::new(channel)
                .max_decoding_message_size(self.settings.message_bytes_max)
                .max_encoding_message_size(self.settings.message_bytes_max)
        });
        PeerNetwork {
            from: self.from,
            target,
            node: node.clone(),
            client,
            settings: self.settings,
            faults: self.faults.clone(),
            peer_auth: self.peer_auth.clone(),
            reachability: self.reachability.clone(),
            removal: self.removal.clone(),
        }
    }
}

/// The connection of this node to one peer.
#[derive(Debug)]
pub struct PeerNetwork {
    from: NodeId,
    target: NodeId,
    node: Node,
    /// `Err` holds why the peer's address cannot be dialled.
    client: Result<RaftClient<Channel>, String>,
    settings: NetworkSettings,
    faults: Faults,
    peer_auth: PeerAuth,
    reachability: Reachability,
    removal: Removal,
}

/// The peer's address could not be turned into an endpoint.
#[derive(Debug, thiserror::Error)]
#[error("cannot dial node {target} at `{address}`: {reason}")]
struct BadAddress {
    target: NodeId,
    address: String,
    reason: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl PeerNetwork {
    /// Sends one encoded request and reads the peer's reply, within `ttl`,
    /// and records whether the peer answered.
    async fn call<Resp, E>(
        &mut self,
        action: RPCTypes,
        request: RaftRequest,
        ttl: Duration,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    {
        let result = self.exchange(action, request, ttl).await;
        match &result {
            Ok(_) | Err(RPCError::RemoteError(_)) => self.reachability.answered(self.target),
            Err(error) => self.reachability.failed(self.target, &error.to_string()),
        }
        result
    }

    /// Sends one encoded request and reads the peer's reply, within `ttl`.
    async fn exchange<Resp, E>(
        &mut self,
        action: RPCTypes,
        request: RaftRequest,
        ttl: Duration,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    {
        let timeout = || {
            RPCError::Timeout(Timeout {
                action,
                id: self.from,
                target: self.target,
                timeout: ttl,
            })
        };
        match self.faults.decide(self.from, self.target) {
            FaultDecision::Deliver => {}
            FaultDecision::Drop => {
                return Err(RPCError::Unreachable(Unreachable::new(&InjectedFault {
                    from: self.from,
                    to: self.target,
                })));
            }
            FaultDecision::Delay(delay) if delay >= ttl => {
                tokio::time::sleep(ttl).await;
                return Err(timeout());
            }
            FaultDecision::Delay(delay) => tokio::time::sleep(delay).await,
        }
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(reason) => {
                return Err(RPCError::Unreachable(Unreachable::new(&BadAddress {
                    target: self.target,
                    address: self.node.address.clone(),
                    reason: reason.clone(),
                })));
            }
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(ttl);
        self.peer_auth.stamp(request.metadata_mut());
        let sent = send(client, action, request);
        let reply = match tokio::time::timeout(ttl, sent).await {
            Err(_elapsed) => return Err(timeout()),
            Ok(Err(status)) => {
                if let Some(index) = status
                    .metadata()
                    .get(REMOVED_AT_METADATA)
                    .and_then(|value| value.to_str().ok()?.parse().ok())
                {
                    self.removal.learned(Removed {
                        by: self.target,
                        index,
                    });
                }
                return Err(classify(status, timeout));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        match wire::decode_reply::<Resp, RaftError<NodeId, E>>(&reply) {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(raft_error)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                raft_error,
            ))),
            Err(error) => Err(RPCError::Network(NetworkError::new(&error))),
        }
    }

    /// Encodes a request, refusing one larger than peers accept.
    fn encode<T: Serialize>(&self, request: &T) -> Result<RaftRequest, usize> {
        let request = wire::encode_request(request);
        if request.payload.len() > self.settings.message_bytes_max {
            return Err(request.payload.len());
        }
        Ok(request)
    }
}

async fn send(
    mut client: RaftClient<Channel>,
    action: RPCTypes,
    request: tonic::Request<RaftRequest>,
) -> Result<tonic::Response<RaftReply>, tonic::Status> {
    match action {
        RPCTypes::AppendEntries => client.append_entries(request).await,
        RPCTypes::Vote => client.vote(request).await,
        RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
    }
}

/// What a failed gRPC call means to openraft.
fn classify<E: std::error::Error>(
    status: tonic::Status,
    timeout: impl FnOnce() -> RPCError<NodeId, Node, RaftError<NodeId, E>>,
) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    match status.code() {
        // Connection refused, reset, DNS failure, peer shutting down: the
        // peer is not there; openraft backs off before retrying. A peer that
        // refuses Raft messages on principle (empty storage and never
        // introduced, another encoding version) will not change its mind
        // at once either.
        tonic::Code::Unavailable | tonic::Code::FailedPrecondition => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => timeout(),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

/// How many entries fit a message, from the size of a message that did not.
fn entries_hint(entries: usize, encoded_bytes: usize, message_bytes_max: usize) -> u64 {
    let fitting = (entries as u128 * message_bytes_max as u128 / encoded_bytes.max(1) as u128)
        .clamp(1, entries.saturating_sub(1).max(1) as u128);
    fitting as u64
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.settings.unreachable_retry))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let entries = rpc.entries.len();
        let request = match self.encode(&rpc) {
            Ok(request) => request,
            Err(encoded_bytes) if entries > 1 => {
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(entries_hint(
                        entries,
                        encoded_bytes,
                        self.settings.message_bytes_max,
                    )),
                ));
            }
            Err(encoded_bytes) => {
                // One entry larger than the limit cannot be split: the API
                // caps every entry well below it, so this is a broken limit.
                return Err(RPCError::Network(NetworkError::new(
                    &std::io::Error::other(format!(
                        "one log entry encodes to {encoded_bytes} bytes, above the Raft message limit of {} bytes",
                        self.settings.message_bytes_max
                    )),
                )));
            }
        };
        self.call(RPCTypes::AppendEntries, request, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let request = self.encode(&rpc).map_err(|encoded_bytes| {
            RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
                "a snapshot chunk encodes to {encoded_bytes} bytes, above the Raft message limit of {} bytes; lower raft.snapshot_chunk_bytes",
                self.settings.message_bytes_max
            ))))
        })?;
        self.call(RPCTypes::InstallSnapshot, request, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let request = wire::encode_request(&rpc);
        self.call(RPCTypes::Vote, request, option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_hint_shrinks_but_sends_at_least_one() {
        assert_eq!(entries_hint(100, 200, 100), 50);
        assert_eq!(entries_hint(2, 10_000, 100), 1);
        assert_eq!(entries_hint(10, 101, 100), 9);
    }

    #[tokio::test]
    async fn an_absent_peer_is_unreachable_and_a_dropped_rpc_too() {
        // A port nothing listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut factory = NetworkFactory::new(
            1,
            NetworkSettings::default(),
            Faults::none(),
            PeerAuth::new(1, None, Box::new(|| None)),
            Reachability::default(),
        );
        let mut peer = factory
            .new_client(2, &Node::new(format!("127.0.0.1:{port}")))
            .await;
        let vote = VoteRequest::new(crate::raft::Vote::new(1, 1), None);
        let option = RPCOption::new(Duration::from_secs(2));
        let error = peer.vote(vote.clone(), option.clone()).await.unwrap_err();
        assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");

        let mut factory = NetworkFactory::new(
            1,
            NetworkSettings::default(),
            Faults::from_fn(|_, _| FaultDecision::Drop),
            PeerAuth::new(1, None, Box::new(|| None)),
            Reachability::default(),
        );
        let mut peer = factory.new_client(2, &Node::new("127.0.0.1:1")).await;
        let error = peer.vote(vote.clone(), option.clone()).await.unwrap_err();
        assert!(error.to_string().contains("fault injection"), "{error}");

        let mut bad = factory.new_client(3, &Node::new("not an address")).await;
        let error = bad.vote(vote, option).await.unwrap_err();
        assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    }
}
