//! The calls a leader makes to a node it is adding, besides Raft's own: the
//! `Handshake` that introduces the two (who the node is, which wasm engine
//! it runs, whether its Raft storage is empty), and the status poll that
//! tells when the new voter has applied the log up to its promotion.

use std::time::{Duration, Instant};

use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::cluster_client::ClusterClient;
use wasmraft_proto::v1::raft_client::RaftClient;

use crate::auth::PeerAuth;
use crate::raft::NodeId;

/// How often the leader asks a new voter how far it applied.
const APPLIED_POLL: Duration = Duration::from_millis(20);
/// The longest one status question to a new voter may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// What a node that is being added says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introduced {
    pub node_id: NodeId,
    /// The cluster it belongs to, when it knows one.
    pub cluster_id: Option<String>,
    /// Its wasm engine fingerprint, as bytes.
    pub engine_fingerprint: Vec<u8>,
    /// Whether its Raft storage holds a log or a vote.
    pub initialized: bool,
}

/// Introduces this node (its credentials in `auth`, its engine fingerprint
/// `fingerprint`) to the node at `url`, within `timeout`. `Err` says why
/// the node could not be reached or refused.
pub async fn handshake(
    url: String,
    auth: &PeerAuth,
    from: NodeId,
    fingerprint: Vec<u8>,
    timeout: Duration,
) -> Result<Introduced, String> {
    let endpoint = auth.endpoint(&url)?.connect_timeout(timeout);
    let mut request = tonic::Request::new(proto::HandshakeRequest {
        node_id: from,
        cluster_id: auth.cluster_id().unwrap_or_default(),
        engine_compatibility_hash: fingerprint,
    });
    request.set_timeout(timeout);
    auth.stamp(request.metadata_mut());
    let answer = tokio::time::timeout(timeout, async {
        let channel = endpoint.connect().await.map_err(|error| {
            // tonic's own message is vague ("transport error"): the cause
            // (connection refused, no route) is in the chain.
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        })?;
        RaftClient::new(channel)
            .handshake(request)
            .await
            .map_err(|status| format!("{}: {}", status.code(), status.message()))
    })
    .await
    .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))??
    .into_inner();
    Ok(Introduced {
        node_id: answer.node_id,
        cluster_id: Some(answer.cluster_id).filter(|id| !id.is_empty()),
        engine_fingerprint: answer.engine_compatibility_hash,
        initialized: answer.initialized,
    })
}

/// Whether the node at `url` reports having applied `index` before
/// `deadline`, asking it every [`APPLIED_POLL`].
pub async fn applied_on(url: &str, auth: &PeerAuth, index: u64, deadline: Instant) -> bool {
    let Ok(endpoint) = auth.endpoint(url) else {
        return false;
    };
    let endpoint = endpoint.connect_timeout(STATUS_TIMEOUT);
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let asked = tokio::time::timeout(left.min(STATUS_TIMEOUT), async {
            let channel = endpoint.connect().await.ok()?;
            let mut request = tonic::Request::new(proto::StatusRequest { local_only: true });
            auth.stamp(request.metadata_mut());
            let status = ClusterClient::new(channel)
                .status(request)
                .await
                .ok()?
                .into_inner();
            status.nodes.first().and_then(|node| node.applied_index)
        })
        .await;
        if asked.ok().flatten().is_some_and(|applied| applied >= index) {
            return true;
        }
        tokio::time::sleep(APPLIED_POLL.min(left)).await;
    }
    false
}
