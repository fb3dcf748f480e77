//! The client's own types for what calls take and return, converted from the
//! generated `wasmraft.v1` messages here and nowhere else, so callers never
//! handle protobuf types.

use std::fmt;
use std::sync::Arc;

use wasmraft_proto::v1;

use super::error::ClientError;
use wasmraft_core::ClusterSettings;

/// A deployed module, as every node knows it (`wasmraft.v1.Module`); its
/// JSON (`module list --json`) has these field names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleInfo {
    pub name: String,
    /// 1 for the first deployment, plus one per upgrade.
    pub version: u64,
    /// sha256 of the wasm binary, lowercase hexadecimal.
    pub sha256_hex: String,
    pub size_bytes: u64,
    /// The log index of the entry that deployed this version.
    pub deployed_at_index: u64,
    /// The leader's timestamp in that entry, milliseconds since the Unix epoch.
    pub deployed_at_unix_ms: u64,
    /// Whether `query` works on the module.
    pub has_query: bool,
    pub has_init: bool,
    pub has_migrate: bool,
    /// Fuel per call, after clamping to the cluster maximum.
    pub fuel_per_call_max: u64,
    /// Memory cap of one instance, after clamping to the cluster maximum.
    pub memory_bytes_max: u64,
    /// What the module stores, against its quota.
    pub storage: StorageUsage,
}

/// What a module stores and its quota (`None`: none is in force, on a
/// cluster whose settings predate quotas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StorageUsage {
    /// Keys plus values, in bytes.
    pub bytes: u64,
    pub keys: u64,
    pub bytes_max: Option<u64>,
    pub keys_max: Option<u64>,
}

impl From<v1::Module> for ModuleInfo {
    fn from(module: v1::Module) -> Self {
        ModuleInfo {
            name: module.name,
            version: module.version,
            sha256_hex: module.sha256_hex,
            size_bytes: module.size_bytes,
            deployed_at_index: module.deployed_at_index,
            deployed_at_unix_ms: module.deployed_at_unix_ms,
            has_query: module.has_query,
            has_init: module.has_init,
            has_migrate: module.has_migrate,
            fuel_per_call_max: module.fuel_per_call_max,
            memory_bytes_max: module.memory_bytes_max,
            storage: StorageUsage {
                bytes: module.storage_bytes,
                keys: module.storage_keys,
                bytes_max: (module.storage_bytes_max != u64::MAX)
                    .then_some(module.storage_bytes_max),
                keys_max: (module.storage_keys_max != u64::MAX).then_some(module.storage_keys_max),
            },
        }
    }
}

/// Progress of a deploy's upload, for [`DeployOptions::progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeployProgress {
    /// What the deploy is doing.
    pub phase: DeployPhase,
    /// Module bytes handed to the connection so far.
    pub sent_bytes: u64,
    /// The module's size.
    pub total_bytes: u64,
}

/// The phases of a deploy, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployPhase {
    /// Sending the module's chunks.
    Uploading,
    /// The node received the whole module and checks it against ABI v1 and
    /// the static limits.
    Validating,
    /// The module passed the checks; the node compiles it.
    Compiling,
    /// The module compiled; the deploy goes through the Raft log and every
    /// node applies it.
    Replicating,
}

impl fmt::Display for DeployPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeployPhase::Uploading => "uploading",
            DeployPhase::Validating => "validating",
            DeployPhase::Compiling => "compiling",
            DeployPhase::Replicating => "replicating",
        })
    }
}

impl DeployPhase {
    /// The phase that begins with the server's event.
    pub(crate) fn after(event: v1::DeployPhase) -> Option<DeployPhase> {
        match event {
            v1::DeployPhase::Received => Some(DeployPhase::Validating),
            v1::DeployPhase::Validated => Some(DeployPhase::Compiling),
            v1::DeployPhase::Replicating => Some(DeployPhase::Replicating),
            v1::DeployPhase::Unspecified => None,
        }
    }
}

/// Called as a deploy's chunks are sent, then at each phase the server
/// reports.
pub type ProgressCallback = Arc<dyn Fn(DeployProgress) + Send + Sync>;

/// The optional parts of a deploy (`wasmraft.v1.DeployHeader`).
#[derive(Clone, Default)]
pub struct DeployOptions {
    /// Passed to the module's `init` (first deployment) or `migrate`
    /// (upgrade); `None` for an empty argument.
    pub init_argument: Option<Vec<u8>>,
    /// Fuel per call; `None` for the cluster default. Lowered to the
    /// cluster maximum.
    pub fuel_per_call_max: Option<u64>,
    /// Memory cap per instance in bytes; `None` for the cluster default.
    /// Lowered to the cluster maximum.
    pub memory_bytes_max: Option<u64>,
    /// Told about the upload's progress (for a progress bar).
    pub progress: Option<ProgressCallback>,
}

impl fmt::Debug for DeployOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeployOptions")
            .field(
                "init_argument_bytes",
                &self.init_argument.as_ref().map(Vec::len),
            )
            .field("fuel_per_call_max", &self.fuel_per_call_max)
            .field("memory_bytes_max", &self.memory_bytes_max)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// The result of an invoke (a command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeOutput {
    /// What the module's `apply` returned, in the module's encoding.
    pub output: Vec<u8>,
    /// Fuel the application used (the same on every node).
    pub fuel_used: u64,
    /// The log index of the command; a stale query served at this index or
    /// later sees its effect.
    pub applied_index: u64,
}

impl From<v1::InvokeResponse> for InvokeOutput {
    fn from(response: v1::InvokeResponse) -> Self {
        InvokeOutput {
            output: response.output,
            fuel_used: response.fuel_used,
            applied_index: response.applied_index,
        }
    }
}

/// The result of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryOutput {
    /// What the module's `query` returned, in the module's encoding.
    pub output: Vec<u8>,
    pub fuel_used: u64,
    /// The last log index applied to the state the query read.
    pub applied_index: u64,
}

impl From<v1::QueryResponse> for QueryOutput {
    fn from(response: v1::QueryResponse) -> Self {
        QueryOutput {
            output: response.output,
            fuel_used: response.fuel_used,
            applied_index: response.applied_index,
        }
    }
}

/// How fresh the state a query reads must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Sees every command committed before the query started (a read index
    /// confirmed with a quorum).
    #[default]
    Linearizable,
    /// The answering node's state as it is; cheaper, works without a leader,
    /// may lag.
    Stale,
}

impl From<Consistency> for v1::Consistency {
    fn from(consistency: Consistency) -> Self {
        match consistency {
            Consistency::Linearizable => v1::Consistency::Linearizable,
            Consistency::Stale => v1::Consistency::Stale,
        }
    }
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// `host:port` of its gRPC listener.
    pub address: String,
}

/// The cluster's members after a membership change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    /// Members that vote and count towards the commit quorum.
    pub voters: Vec<Member>,
    /// Members that receive the log without voting.
    pub learners: Vec<Member>,
}

impl From<v1::Membership> for Membership {
    fn from(membership: v1::Membership) -> Self {
        Membership {
            voters: membership.voters.into_iter().map(Member::from).collect(),
            learners: membership.learners.into_iter().map(Member::from).collect(),
        }
    }
}

impl From<v1::Node> for Member {
    fn from(node: v1::Node) -> Self {
        Member {
            id: node.id,
            address: node.address,
        }
    }
}

/// The Raft role a node reports for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    /// The node did not answer, or sent a role this client does not know.
    Unknown,
}

impl NodeRole {
    /// The lowercase name used in the CLI and the JSON status.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Leader => "leader",
            NodeRole::Follower => "follower",
            NodeRole::Candidate => "candidate",
            NodeRole::Learner => "learner",
            NodeRole::Unknown => "unknown",
        }
    }
}

impl From<i32> for NodeRole {
    fn from(value: i32) -> Self {
        match v1::NodeRole::try_from(value) {
            Ok(v1::NodeRole::Leader) => NodeRole::Leader,
            Ok(v1::NodeRole::Follower) => NodeRole::Follower,
            Ok(v1::NodeRole::Candidate) => NodeRole::Candidate,
            Ok(v1::NodeRole::Learner) => NodeRole::Learner,
            Ok(v1::NodeRole::Unspecified) | Err(_) => NodeRole::Unknown,
        }
    }
}

/// One member's state, as gathered by the answering node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub address: String,
    pub role: NodeRole,
    /// `None` if the node's log is empty or it did not answer.
    pub last_log_index: Option<u64>,
    /// `None` if nothing was applied yet or it did not answer.
    pub applied_index: Option<u64>,
    /// Digest of the node's state at `applied_index`; `None` if it did not
    /// answer.
    pub state_digest_hex: Option<String>,
    /// Why the node's fields are missing (for example a timeout).
    pub error: Option<String>,
}

impl From<v1::NodeStatus> for NodeStatus {
    fn from(node: v1::NodeStatus) -> Self {
        NodeStatus {
            id: node.id,
            address: node.address,
            role: NodeRole::from(node.role),
            last_log_index: node.last_log_index,
            applied_index: node.applied_index,
            state_digest_hex: non_empty(node.state_digest_hex),
            error: non_empty(node.error),
        }
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// The cluster as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// `None` while no leader is known.
    pub leader_id: Option<u64>,
    pub term: u64,
    pub voters: Vec<Member>,
    pub learners: Vec<Member>,
    /// One per member, ordered by id.
    pub nodes: Vec<NodeStatus>,
}

impl TryFrom<v1::StatusResponse> for ClusterStatus {
    type Error = ClientError;

    fn try_from(response: v1::StatusResponse) -> Result<Self, Self::Error> {
        let membership = response.membership.ok_or(ClientError::MissingField {
            operation: "cluster status",
            field: "membership",
        })?;
        Ok(ClusterStatus {
            leader_id: response.leader_id,
            term: response.term,
            voters: membership.voters.into_iter().map(Member::from).collect(),
            learners: membership.learners.into_iter().map(Member::from).collect(),
            nodes: response.nodes.into_iter().map(NodeStatus::from).collect(),
        })
    }
}

impl ClusterStatus {
    /// Pairs of nodes at the same applied index whose state digests differ:
    /// their states have diverged, which must never happen.
    pub fn diverged(&self) -> Vec<(u64, u64)> {
        let mut pairs = Vec::new();
        for (position, first) in self.nodes.iter().enumerate() {
            for second in &self.nodes[position + 1..] {
                let same_index =
                    first.applied_index.is_some() && first.applied_index == second.applied_index;
                if let (true, Some(a), Some(b)) = (
                    same_index,
                    &first.state_digest_hex,
                    &second.state_digest_hex,
                ) && a != b
                {
                    pairs.push((first.id, second.id));
                }
            }
        }
        pairs
    }
}

/// Whether the answering node can serve requests, and how well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub serving: bool,
    /// Why not, when not serving; empty otherwise.
    pub detail: String,
    /// 100 with nothing to report, 0 when not serving.
    pub score: u32,
    /// (name, detail) of each thing that lowers the score: `no_leader`,
    /// `apply_lag`, `peer_behind`, … (see `HealthReason` in the API).
    pub reasons: Vec<(String, String)>,
}

impl From<v1::HealthResponse> for Health {
    fn from(response: v1::HealthResponse) -> Self {
        Health {
            serving: response.status() == v1::HealthStatus::Serving,
            detail: response.detail,
            score: response.score,
            reasons: response
                .reasons
                .into_iter()
                .map(|reason| (reason.name, reason.detail))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, applied_index: Option<u64>, digest: &str) -> NodeStatus {
        NodeStatus {
            id,
            address: format!("127.0.0.1:700{id}"),
            role: NodeRole::Follower,
            last_log_index: applied_index,
            applied_index,
            state_digest_hex: non_empty(digest.to_owned()),
            error: None,
        }
    }

    #[test]
    fn divergence_compares_only_nodes_at_the_same_index() {
        let status = ClusterStatus {
            leader_id: Some(1),
            term: 2,
            voters: Vec::new(),
            learners: Vec::new(),
            nodes: vec![
                node(1, Some(5), "aa"),
                node(2, Some(5), "bb"),
                node(3, Some(4), "cc"),
                node(4, None, ""),
                node(5, Some(5), "aa"),
            ],
        };
        assert_eq!(status.diverged(), vec![(1, 2), (2, 5)]);
    }

    #[test]
    fn unknown_roles_are_unknown() {
        assert_eq!(NodeRole::from(1), NodeRole::Leader);
        assert_eq!(NodeRole::from(0), NodeRole::Unknown);
        assert_eq!(NodeRole::from(99), NodeRole::Unknown);
    }
}

/// The cluster settings as one node's state holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsView {
    pub settings: ClusterSettings,
    /// False for a cluster that has recorded no settings (its state predates
    /// them): the defaults shown are in force.
    pub recorded: bool,
    /// The wasm engine every member must run; empty when not recorded.
    pub engine_fingerprint: String,
    /// The log index that last changed the settings; 0 if none did.
    pub changed_at_index: u64,
    /// The applied index of the state that was read.
    pub applied_index: u64,
}

pub(crate) fn settings_of(settings: v1::ClusterSettings) -> ClusterSettings {
    ClusterSettings {
        fuel_per_call_max: settings.fuel_per_call_max,
        memory_bytes_max: settings.memory_bytes_max,
        output_bytes_max: settings.output_bytes_max,
        module_bytes_max: settings.module_bytes_max,
        session_table_bytes_max: settings.session_table_bytes_max,
        sessions_per_caller_max: settings.sessions_per_caller_max,
        module_storage_bytes_max: settings.module_storage_bytes_max,
        module_storage_keys_max: settings.module_storage_keys_max,
    }
}

impl TryFrom<v1::GetSettingsResponse> for SettingsView {
    type Error = ClientError;

    fn try_from(response: v1::GetSettingsResponse) -> Result<Self, ClientError> {
        let settings = response.settings.ok_or(ClientError::MissingField {
            operation: "get settings",
            field: "settings",
        })?;
        Ok(SettingsView {
            settings: settings_of(settings),
            recorded: response.recorded,
            engine_fingerprint: response.engine_fingerprint,
            changed_at_index: response.changed_at_index,
            applied_index: response.applied_index,
        })
    }
}
