//! The server side of the internal `Raft` service: hands peers' messages to
//! this node's Raft (`raft::network::server` decodes them and encodes the
//! answer, a Raft error included). The client side is `raft::network`.

use tonic::{Request, Response, Status};
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::raft_server::Raft as RaftRpc;

use super::status::ApiError;
use crate::node::forward::ForwardedAnswer;
use crate::node::handle::NodeHandle;
use crate::node::membership::fingerprint_bytes;
use crate::raft::network::{server, wire};

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

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.admitted().await?;
        let reply = server::append_entries(self.node.consensus(), request.get_ref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(reply))
    }

    async fn vote(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.admitted().await?;
        let reply = server::vote(self.node.consensus(), request.get_ref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(reply))
    }

    async fn install_snapshot(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.admitted().await?;
        let reply = server::install_snapshot(self.node.consensus(), request.get_ref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(reply))
    }

    async fn handshake(
        &self,
        _request: Request<proto::HandshakeRequest>,
    ) -> Result<Response<proto::HandshakeResponse>, Status> {
        // The caller decides: it compares the engine fingerprint (a node
        // that would execute modules differently stays out) and refuses a
        // node whose Raft already holds a log or a vote.
        let initialized = self
            .node
            .consensus()
            .is_initialized()
            .await
            .map_err(|refusal| {
                ApiError::Internal(format!("cannot read the Raft state: {refusal}"))
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
        let forwarded = wire::decode_request(request.get_ref()).map_err(ApiError::from)?;
        let reply = match self.node.serve_forwarded(forwarded).await {
            ForwardedAnswer::Write(answer) => wire::encode_reply(&answer),
            ForwardedAnswer::ReadIndex(answer) => wire::encode_reply(&answer),
            ForwardedAnswer::Membership(answer) => wire::encode_reply(&answer),
        };
        Ok(Response::new(reply))
    }
}
