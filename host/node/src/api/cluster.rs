//! The `Cluster` service: status (this node's view from Raft's metrics, and
//! each member's own indexes and state digest, asked of it with a timeout),
//! membership changes (through the leader and the Raft log:
//! `node::membership`), health and snapshot.

use std::time::Duration;

use tonic::{Request, Response, Status};
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::cluster_client::ClusterClient;
use wasmraft_proto::v1::cluster_server::Cluster;

use tracing::Instrument;

use super::convert::{membership_message, role_message, settings_message};
use super::modules::unexpected;
use super::status::ApiError;
use super::validate;
use super::{admit, authorize, blocking, call_timeout, identity};
use crate::admission::MethodClass;
use crate::auth::policy::CLUSTER_OBJECT;
use crate::auth::{Action, Caller, PeerAuth};
use crate::command::{ClusterSettings, Command, Response as Applied, SettingsCommand};
use crate::node::membership::Membership;
use crate::node::{ClusterView, NodeHandle};
use crate::raft::Member;

/// How long a member may take to report its own status.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long adding a node may take when the caller set no deadline: the
/// new node must receive the whole state first.
const ADD_NODE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long removing a node may take when the caller set no deadline.
const REMOVE_NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a snapshot asked for with `wait` may take when the caller gave
/// no deadline.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a waiting snapshot request asks again, in case its first ask
/// was absorbed by a build that covers less.
const SNAPSHOT_RETRIGGER: Duration = Duration::from_secs(1);

/// Serves `wasmraft.v1.Cluster`.
#[derive(Debug, Clone)]
pub struct ClusterService {
    node: NodeHandle,
}

impl ClusterService {
    pub fn new(node: NodeHandle) -> Self {
        Self { node }
    }

    /// The caller of `request`, if it may take `action` on the cluster.
    fn allow<T>(&self, request: &Request<T>, action: Action) -> Result<Caller, ApiError> {
        let identity = identity(&self.node, request)?;
        let caller = authorize(&self.node, &identity, action, CLUSTER_OBJECT)?;
        admit(&self.node, &caller.subject, MethodClass::Admin, 0)?;
        Ok(caller)
    }

    /// This node's own entry: indexes from Raft, digest from the state.
    async fn local_status(&self, view: &ClusterView) -> Result<proto::NodeStatus, ApiError> {
        let reader = self.node.reader().clone();
        let (applied, digest) = blocking(move || reader.digest()).await??;
        Ok(proto::NodeStatus {
            id: view.this,
            address: self.node.advertised_address().to_owned(),
            role: role_message(view.role) as i32,
            last_log_index: view.last_log_index,
            // The digest's own index: the two always describe one state.
            applied_index: applied.map(|log_id| log_id.index),
            state_digest_hex: digest.to_string(),
            error: String::new(),
        })
    }

    async fn status(&self, local_only: bool) -> Result<proto::StatusResponse, ApiError> {
        let view = self.node.cluster_view();
        let local = self.local_status(&view).await?;
        let mut members: Vec<&Member> = view.voters.iter().chain(&view.learners).collect();
        members.sort_by_key(|member| member.id);
        members.dedup_by_key(|member| member.id);
        let nodes = if local_only || members.iter().all(|member| member.id == view.this) {
            vec![local]
        } else {
            let others = members
                .iter()
                .filter(|member| member.id != view.this)
                .map(|member| member_status(self.node.peer_auth(), member));
            let mut nodes = futures::future::join_all(others).await;
            nodes.push(local);
            nodes.sort_by_key(|node| node.id);
            nodes
        };
        Ok(proto::StatusResponse {
            leader_id: view.leader_id,
            term: view.term,
            membership: Some(membership_message(&Membership {
                voters: view.voters,
                learners: view.learners,
            })),
            nodes,
        })
    }
}

/// Asks one member for its own status; a member that does not answer in
/// time is listed with `error` set.
async fn member_status(peers: &PeerAuth, member: &Member) -> proto::NodeStatus {
    let failed = |error: String| proto::NodeStatus {
        id: member.id,
        address: member.address.clone(),
        error,
        ..proto::NodeStatus::default()
    };
    let endpoint = match peers.endpoint(&member.address) {
        Ok(endpoint) => endpoint.connect_timeout(MEMBER_STATUS_TIMEOUT),
        Err(reason) => return failed(format!("bad address: {reason}")),
    };
    let mut client = ClusterClient::new(endpoint.connect_lazy());
    let mut request = Request::new(proto::StatusRequest { local_only: true });
    request.set_timeout(MEMBER_STATUS_TIMEOUT);
    // Asked as a node of the cluster, whatever the caller's own credential.
    peers.stamp(request.metadata_mut());
    match tokio::time::timeout(MEMBER_STATUS_TIMEOUT, client.status(request)).await {
        Err(_) => failed(format!(
            "no answer within {} ms",
            MEMBER_STATUS_TIMEOUT.as_millis()
        )),
        Ok(Err(status)) => failed(format!("{}: {}", status.code(), status.message())),
        Ok(Ok(response)) => response
            .into_inner()
            .nodes
            .into_iter()
            .find(|node| node.id == member.id)
            .unwrap_or_else(|| failed("the node at this address reports another id".to_owned())),
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        self.allow(&request, Action::ClusterView)?;
        let local_only = request.into_inner().local_only;
        Ok(Response::new(
            ClusterService::status(self, local_only).await?,
        ))
    }

    async fn add_node(
        &self,
        request: Request<proto::AddNodeRequest>,
    ) -> Result<Response<proto::AddNodeResponse>, Status> {
        let caller = self.allow(&request, Action::ClusterMembership)?;
        let timeout = call_timeout(&request).unwrap_or(ADD_NODE_TIMEOUT);
        let proto::AddNodeRequest { node_id, address } = request.into_inner();
        let address = address.trim().to_owned();
        // Refused here, before anything is forwarded or dialled; the leader
        // checks again by its own rules and the membership in force.
        crate::node::membership::check_candidate(self.node.membership_rules(), node_id, &address)
            .map_err(ApiError::from)?;
        let membership = self
            .node
            .add_node(caller, node_id, address, timeout)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::AddNodeResponse {
            membership: Some(membership_message(&membership)),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<proto::RemoveNodeResponse>, Status> {
        let caller = self.allow(&request, Action::ClusterMembership)?;
        let timeout = call_timeout(&request).unwrap_or(REMOVE_NODE_TIMEOUT);
        let node_id = request.into_inner().node_id;
        let membership = self
            .node
            .remove_node(caller, node_id, timeout)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::RemoveNodeResponse {
            membership: Some(membership_message(&membership)),
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<proto::TransferLeaderRequest>,
    ) -> Result<Response<proto::TransferLeaderResponse>, Status> {
        self.allow(&request, Action::ClusterMembership)?;
        // openraft 0.9 has no leadership transfer (no TimeoutNow message);
        // it arrives with the move to openraft 0.10.
        Err(ApiError::Unimplemented(
            "leadership transfer needs openraft 0.10; until then, stop the leader's process: the other voters elect a new leader within the election timeout",
        )
        .into())
    }

    async fn snapshot(
        &self,
        request: Request<proto::SnapshotRequest>,
    ) -> Result<Response<proto::SnapshotResponse>, Status> {
        self.allow(&request, Action::ClusterSnapshot)?;
        let timeout = call_timeout(&request).unwrap_or(SNAPSHOT_TIMEOUT);
        let deadline = std::time::Instant::now() + timeout;
        let wait = request.get_ref().wait;
        let consensus = self.node.consensus();
        let start = || async {
            consensus.trigger_snapshot().await.map_err(|refusal| {
                Status::from(ApiError::Internal(format!(
                    "cannot start a snapshot: {refusal}"
                )))
            })
        };
        let target = consensus
            .with_metrics(|metrics| metrics.applied_index())
            .unwrap_or(0);
        start().await?;
        if !wait || target == 0 {
            return Ok(Response::new(proto::SnapshotResponse {
                snapshot_index: None,
            }));
        }
        loop {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            if remaining.is_zero() {
                return Err(Status::deadline_exceeded(format!(
                    "no snapshot covering index {target} was built within {} ms; the build may still finish (`wasmraft inspect` of the stopped node, or ask again with a longer --timeout-ms)",
                    timeout.as_millis()
                )));
            }
            let built = consensus
                .wait_until(
                    remaining.min(SNAPSHOT_RETRIGGER),
                    "a snapshot of everything applied",
                    |metrics| metrics.snapshot_index() >= Some(target),
                )
                .await;
            if built.is_ok() {
                let index = consensus
                    .with_metrics(|metrics| metrics.snapshot_index())
                    .unwrap_or(target);
                return Ok(Response::new(proto::SnapshotResponse {
                    snapshot_index: Some(index),
                }));
            }
            // A build already running when asked covers less and absorbed
            // the request: ask again once it is done.
            start().await?;
        }
    }

    async fn health(
        &self,
        _request: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        let health = self.node.health();
        let response = proto::HealthResponse {
            status: if health.serving {
                proto::HealthStatus::Serving
            } else {
                proto::HealthStatus::NotServing
            } as i32,
            detail: if health.serving {
                String::new()
            } else {
                health.detail()
            },
            score: health.score,
            reasons: health
                .reasons
                .into_iter()
                .map(|reason| proto::HealthReason {
                    name: reason.name.to_owned(),
                    detail: reason.detail,
                })
                .collect(),
        };
        Ok(Response::new(response))
    }

    async fn get_settings(
        &self,
        request: Request<proto::GetSettingsRequest>,
    ) -> Result<Response<proto::GetSettingsResponse>, Status> {
        self.allow(&request, Action::ClusterView)?;
        let reader = self.node.reader().clone();
        let (applied, record) = blocking(move || reader.settings_at())
            .await?
            .map_err(ApiError::from)?;
        let response = match record {
            Some(record) => proto::GetSettingsResponse {
                settings: Some(settings_message(&record.settings)),
                recorded: true,
                engine_fingerprint: record.engine_fingerprint,
                changed_at_index: record.changed_index,
                applied_index: applied,
            },
            None => proto::GetSettingsResponse {
                settings: Some(settings_message(&ClusterSettings::unrecorded())),
                recorded: false,
                engine_fingerprint: String::new(),
                changed_at_index: 0,
                applied_index: applied,
            },
        };
        Ok(Response::new(response))
    }

    async fn set_settings(
        &self,
        request: Request<proto::SetSettingsRequest>,
    ) -> Result<Response<proto::SetSettingsResponse>, Status> {
        let caller = self.allow(&request, Action::ClusterSettings)?;
        let timeout = call_timeout(&request);
        let request = request.into_inner();
        let update = validate::settings_request(&request).map_err(ApiError::from)?;
        let current = self.node.settings().map_err(ApiError::from)?;
        validate::settings_update(&current, &update).map_err(ApiError::from)?;
        let span = tracing::info_span!("set_settings", ?update);
        let command = Command::ChangeSettings(SettingsCommand {
            update,
            initial: false,
            engine_fingerprint: self.node.runtime().engine_fingerprint(),
        });
        let proposed = self
            .node
            .propose(caller, command, timeout)
            .instrument(span)
            .await
            .map_err(ApiError::from)?;
        match proposed.response {
            Applied::Settings(record) => Ok(Response::new(proto::SetSettingsResponse {
                settings: Some(settings_message(&record.settings)),
                applied_index: proposed.index,
            })),
            Applied::Refused(refusal) => Err(ApiError::from(refusal).into()),
            other => Err(unexpected("settings change", &other).into()),
        }
    }
}
