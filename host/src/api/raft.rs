//! The server side of the internal `Raft` service: decodes openraft's
//! requests, hands them to this node's Raft, and encodes its answer (a Raft
//! error included) into the reply. The client side is `network::client`.

use tonic::{Request, Response, Status};
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::raft_server::Raft as RaftRpc;

use super::status::ApiError;
use crate::network::wire;
use crate::node::handle::NodeHandle;
use crate::node::membership::fingerprint_bytes;

/// Serves `wasmraft.v1.Raft`.
#[derive(Debug, Clone)]
pub struct RaftService {
    node: NodeHandle,
}

impl RaftService {
    pub fn new(node: NodeHandle) -> Self {
        Self { node }
    }
}

impl RaftService {
    /// Refuses Raft messages a node must not take (see
    /// `NodeHandle::accepts_raft_messages`).
    async fn admitted(&self) -> Result<(), Status> {
        self.node
            .accepts_raft_messages()
            .await
            .map_err(Status::failed_precondition)
    }
}

fn decode<T: serde::de::DeserializeOwned>(request: &proto::RaftRequest) -> Result<T, Status> {
    wire::decode_request(request).map_err(|error| ApiError::from(error).into())
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.admitted().await?;
        let rpc = decode(request.get_ref())?;
        let result = self.node.raft().append_entries(rpc).await;
        Ok(Response::new(wire::encode_reply(&result)))
    }

    async fn vote(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.admitted().await?;
        let rpc = decode(request.get_ref())?;
        let result = self.node.raft().vote(rpc).await;
        Ok(Response::new(wire::encode_reply(&result)))
    }

    async fn install_snapshot(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.admitted().await?;
        let rpc = decode(request.get_ref())?;
        let result = self.node.raft().install_snapshot(rpc).await;
        Ok(Response::new(wire::encode_reply(&result)))
    }

    async fn handshake(
        &self,
        _request: Request<proto::HandshakeRequest>,
    ) -> Result<Response<proto::HandshakeResponse>, Status> {
        // The caller decides: it compares the engine fingerprint (a node
        // that would execute modules differently stays out) and refuses a
        // node whose Raft already holds a log or a vote.
        let initialized =
            self.node.raft().is_initialized().await.map_err(|fatal| {
                ApiError::Internal(format!("cannot read the Raft state: {fatal}"))
            })?;
        // A leader is about to add this node: take its messages from now on.
        self.node.admit();
        Ok(Response::new(proto::HandshakeResponse {
            node_id: self.node.id(),
            cluster_id: String::new(),
            engine_compatibility_hash: fingerprint_bytes(self.node.runtime()),
            initialized,
        }))
    }

    async fn forward(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        let reply = self
            .node
            .serve_forwarded(request.get_ref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(reply))
    }
}
