//! The server side of the internal `Raft` service: hands peers' messages to
//! this node's Raft (`raft::network::server` decodes them and encodes the
//! answer, a Raft error included). The client side is `raft::network`.

use tonic::{Request, Response, Status};
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::raft_server::Raft as RaftRpc;

use super::status::ApiError;
use crate::auth::peer::Peer;
use crate::node::forward::{FORWARDED_WRITES_MAX, Forwarded, ForwardedAnswer};
use crate::node::handle::NodeHandle;
use crate::node::membership::fingerprint_bytes;
use crate::raft::network::removal::REMOVED_AT_METADATA;
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
    /// Refuses a caller that is not a node of this cluster (`auth::peer`).
    fn peer<T>(&self, request: &Request<T>) -> Result<Peer, Status> {
        self.node.peer_auth().check(request.metadata())
    }

    /// Refuses Raft messages a node must not take: from a caller that is
    /// not a peer, or while this node may not take them (see
    /// `NodeHandle::accepts_raft_messages`).
    async fn admitted<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let peer = self.peer(request)?;
        self.node.accepts_raft_messages().await.map_err(|refusal| {
            self.node.contacted_while_empty(peer);
            Status::failed_precondition(refusal)
        })
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.admitted(&request).await?;
        let reply = server::append_entries(self.node.consensus(), request.get_ref())
            .await
            .map_err(ApiError::from)?;
        // A leader replicates here: whatever a member said, this node is
        // one again (added back).
        self.node.removal().cleared();
        Ok(Response::new(reply))
    }

    async fn vote(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.admitted(&request).await?;
        match server::vote(self.node.consensus(), request.get_ref())
            .await
            .map_err(ApiError::from)?
        {
            server::VoteAnswer::Reply(reply) => Ok(Response::new(reply)),
            server::VoteAnswer::CandidateRemoved { candidate, index } => {
                let mut status = Status::failed_precondition(format!(
                    "node {candidate} was removed from this cluster by the membership change at log index {index}; node {} does not vote for it",
                    self.node.id()
                ));
                status.metadata_mut().insert(
                    REMOVED_AT_METADATA,
                    index.to_string().parse().expect("digits"),
                );
                Ok(Err(status)?)
            }
        }
    }

    async fn install_snapshot(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        self.admitted(&request).await?;
        let reply = server::install_snapshot(self.node.consensus(), request.get_ref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(reply))
    }

    async fn handshake(
        &self,
        request: Request<proto::HandshakeRequest>,
    ) -> Result<Response<proto::HandshakeResponse>, Status> {
        let peer = self.peer(&request)?;
        let auth = self.node.peer_auth();
        let theirs = &request.get_ref().cluster_id;
        let ours = auth.cluster_id();
        if let Some(ours) = &ours
            && !theirs.is_empty()
            && ours != theirs
        {
            return Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {ours}, not to the caller's cluster {theirs}",
                self.node.id()
            )));
        }
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
        // A leader is about to add this node: take its messages, and its
        // cluster's id (the log brings the same id soon), from now on. A
        // node with Raft data keeps its own cluster: the caller sees
        // `initialized` and leaves it alone. An empty node founding a
        // cluster of its own refuses to be added.
        if !initialized {
            self.node
                .introduced_by(peer)
                .map_err(Status::failed_precondition)?;
        }
        let cluster_id = match ours {
            Some(ours) => ours,
            None if !initialized && !theirs.is_empty() => auth.adopt(theirs),
            None => String::new(),
        };
        Ok(Response::new(proto::HandshakeResponse {
            node_id: self.node.id(),
            cluster_id,
            engine_compatibility_hash: fingerprint_bytes(self.node.runtime()),
            initialized,
        }))
    }

    async fn forward(
        &self,
        request: Request<proto::RaftRequest>,
    ) -> Result<Response<proto::RaftReply>, Status> {
        // Only a peer may speak for a caller; the leader authorises the
        // caller itself when it serves the request.
        self.peer(&request)?;
        let forwarded = wire::decode_request(request.get_ref()).map_err(ApiError::from)?;
        if let Forwarded::Writes(writes) = &forwarded
            && writes.len() > FORWARDED_WRITES_MAX
        {
            return Err(Status::invalid_argument(format!(
                "a forwarded batch of {} writes; at most {FORWARDED_WRITES_MAX} travel at once",
                writes.len()
            )));
        }
        let reply = match self.node.serve_forwarded(forwarded).await {
            ForwardedAnswer::Write(answer) => wire::encode_reply(&answer),
            ForwardedAnswer::ReadIndex(answer) => wire::encode_reply(&answer),
            ForwardedAnswer::Membership(answer) => wire::encode_reply(&answer),
            ForwardedAnswer::Writes(answer) => wire::encode_reply(&answer),
        };
        Ok(Response::new(reply))
    }
}
