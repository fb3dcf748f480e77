//! A node's settings: identity, addresses, data directory, Raft timing and
//! guest limits, from the command line or a TOML file, validated before the
//! node starts. A bad setting is refused with the name of its field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::raft::NodeId;

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id: unique in the cluster, never reused, not 0.
    pub node_id: NodeId,
    /// The address the gRPC server binds.
    pub listen: SocketAddr,
    /// The address other nodes and clients dial to reach this node, when it
    /// differs from `listen` (e.g. `listen` is 0.0.0.0).
    #[serde(default)]
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Initialise a one-member cluster if the data directory is new.
    #[serde(default)]
    pub bootstrap: bool,
    /// The file holding the secret every node of the cluster shares: peers
    /// prove with it that they belong (see `auth::peer`). Without it, peers
    /// are not authenticated.
    #[serde(default)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Serve every caller without authentication, as `anonymous` allowed
    /// everything. Off by default: a node authenticates every call (but
    /// `Cluster.Health`) by bearer token, and needs `cluster_secret_file`.
    #[serde(default)]
    pub insecure: bool,
    /// TLS for this node's port, and for the calls it makes to its peers.
    #[serde(default)]
    pub tls: crate::auth::tls::TlsSettings,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub limits: LimitSettings,
    /// The node ids, addresses, ports and cluster size membership changes
    /// may use (`[membership]`): checked for this node's own id and address
    /// when it starts, and for every node added through it or while it leads.
    #[serde(default)]
    pub membership: crate::node::rules::MembershipRules,
    /// The cluster settings a cluster bootstrapped by this node starts with.
    /// Read only when this node bootstraps: from then on the settings live in
    /// the replicated state and change with `wasmraft cluster settings set`.
    #[serde(default)]
    pub cluster: crate::command::ClusterSettings,
    /// Where the node's metrics and traces go (`[telemetry]`); local.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
}

/// Where a node's metrics and traces go. Traces are exported by the
/// process (`wasmraft serve`), metrics by each node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The address `/metrics` (the Prometheus text format) is served on;
    /// none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// The OTLP/gRPC collector traces and metrics are sent to, e.g.
    /// `http://127.0.0.1:4317`; none by default.
    pub otlp_endpoint: Option<String>,
    /// The fraction of the traces started on this node that are recorded,
    /// 0 to 1 (a call with a `traceparent` follows its caller's choice).
    pub trace_sampling: Option<f64>,
}

/// Raft timing and log compaction. The defaults suit a LAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    /// How often a leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Each node draws its election timeout at random in
    /// `[election_timeout_ms_min, election_timeout_ms_max)`. A follower that
    /// hears no leader for its timeout plus `election_timeout_ms_max` (the
    /// leader's lease, during which it refuses to vote for anyone else)
    /// starts an election; a candidate that did not win tries again after
    /// its timeout. So a lost leader is replaced after roughly
    /// `election_timeout_ms_max` + the timeout, and more when the first
    /// candidate's log is behind another survivor's.
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Build a snapshot (and purge the log behind it) after this many entries.
    pub snapshot_after_entries: u64,
    /// The most entries one append-entries message carries.
    pub max_payload_entries: u64,
    /// The size of one chunk of a streamed snapshot.
    pub snapshot_chunk_bytes: u64,
    /// The time allowed to send one snapshot chunk.
    pub snapshot_chunk_timeout_ms: u64,
}

/// Default heartbeat: a LAN round trip is well under a millisecond.
const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 50;
/// Default election timeouts: the Raft paper's 150-300 ms for a LAN, so a
/// lost leader is replaced in well under a second.
const ELECTION_TIMEOUT_MS_MIN_DEFAULT: u64 = 150;
const ELECTION_TIMEOUT_MS_MAX_DEFAULT: u64 = 300;

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS_DEFAULT,
            election_timeout_ms_min: ELECTION_TIMEOUT_MS_MIN_DEFAULT,
            election_timeout_ms_max: ELECTION_TIMEOUT_MS_MAX_DEFAULT,
            snapshot_after_entries: 20_000,
            max_payload_entries: 256,
            snapshot_chunk_bytes: 1024 * 1024,
            snapshot_chunk_timeout_ms: 10_000,
        }
    }
}

// The defaults must satisfy their own validation.
const _: () = assert!(
    HEARTBEAT_INTERVAL_MS_DEFAULT * 3 <= ELECTION_TIMEOUT_MS_MIN_DEFAULT
        && ELECTION_TIMEOUT_MS_MIN_DEFAULT < ELECTION_TIMEOUT_MS_MAX_DEFAULT
);

/// This node's own limits: what it accepts at its edge. None of them reaches
/// apply (the replicated limits are the cluster settings), so nodes may
/// differ in them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// The largest invoke or query input a client may send.
    pub payload_bytes_max: u64,
    /// Wall-clock limit of one query (apply is limited by fuel alone).
    pub query_timeout_ms: u64,
    /// How many queries run at once (each on a thread of its own, burning
    /// CPU in its guest); by default one per core, so that queries, however
    /// many arrive, leave apply and the network their share of the CPU.
    pub query_threads: Option<u64>,
    /// How long a deploy upload may go without sending a chunk.
    pub deploy_idle_timeout_ms: u64,
    /// Calls open at once, per subject and in all, the request bytes they
    /// hold and the deploy uploads among them (`[limits.in_flight]`).
    pub in_flight: crate::admission::InFlightSettings,
    /// Token buckets per subject and method class (`[limits.rates]`, and
    /// `[limits.rates.subjects.NAME]` for a subject's own).
    pub rates: crate::admission::RateSettings,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            payload_bytes_max: 1024 * 1024,
            query_timeout_ms: 5_000,
            query_threads: None,
            deploy_idle_timeout_ms: 30_000,
            in_flight: Default::default(),
            rates: Default::default(),
        }
    }
}

/// A setting that cannot work, named by its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{field}`: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

fn within(field: &'static str, value: u64, low: u64, high: u64) -> Result<(), ConfigError> {
    if value < low || value > high {
        return Err(invalid(field, format!("{value} is outside {low}..={high}")));
    }
    Ok(())
}

impl RaftSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        within(
            "raft.heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            10,
            10_000,
        )?;
        within(
            "raft.election_timeout_ms_min",
            self.election_timeout_ms_min,
            50,
            60_000,
        )?;
        within(
            "raft.election_timeout_ms_max",
            self.election_timeout_ms_max,
            51,
            120_000,
        )?;
        // A follower must hear several heartbeats within its shortest timeout,
        // or a healthy leader gets deposed by ordinary jitter.
        if self.heartbeat_interval_ms * 3 > self.election_timeout_ms_min {
            return Err(invalid(
                "raft.heartbeat_interval_ms",
                format!(
                    "{} ms must be at most a third of raft.election_timeout_ms_min ({} ms)",
                    self.heartbeat_interval_ms, self.election_timeout_ms_min
                ),
            ));
        }
        if self.election_timeout_ms_min >= self.election_timeout_ms_max {
            return Err(invalid(
                "raft.election_timeout_ms_max",
                format!(
                    "{} ms must be greater than raft.election_timeout_ms_min ({} ms)",
                    self.election_timeout_ms_max, self.election_timeout_ms_min
                ),
            ));
        }
        within(
            "raft.snapshot_after_entries",
            self.snapshot_after_entries,
            16,
            100_000_000,
        )?;
        within(
            "raft.max_payload_entries",
            self.max_payload_entries,
            1,
            100_000,
        )?;
        within(
            "raft.snapshot_chunk_bytes",
            self.snapshot_chunk_bytes,
            4096,
            64 * 1024 * 1024,
        )?;
        within(
            "raft.snapshot_chunk_timeout_ms",
            self.snapshot_chunk_timeout_ms,
            100,
            600_000,
        )?;
        Ok(())
    }
}

impl LimitSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        within(
            "limits.payload_bytes_max",
            self.payload_bytes_max,
            1024,
            64 * 1024 * 1024,
        )?;
        within("limits.query_timeout_ms", self.query_timeout_ms, 1, 600_000)?;
        if let Some(threads) = self.query_threads {
            within("limits.query_threads", threads, 1, 1024)?;
        }
        within(
            "limits.deploy_idle_timeout_ms",
            self.deploy_idle_timeout_ms,
            100,
            600_000,
        )?;
        self.in_flight
            .validate(self.payload_bytes_max)
            .map_err(|reason| invalid("limits.in_flight", reason))?;
        self.rates
            .validate(self.payload_bytes_max)
            .map_err(|reason| invalid("limits.rates", reason))?;
        Ok(())
    }
}

/// The `[cluster]` table's fields, as a [`ConfigError`] names them.
const CLUSTER_FIELDS: [&str; 6] = [
    "cluster.fuel_per_call_max",
    "cluster.memory_bytes_max",
    "cluster.output_bytes_max",
    "cluster.module_bytes_max",
    "cluster.session_table_bytes_max",
    "cluster.sessions_per_caller_max",
];

fn validate_cluster(settings: &crate::command::ClusterSettings) -> Result<(), ConfigError> {
    settings.validate().map_err(|error| {
        let field = crate::command::settings::FIELDS
            .iter()
            .position(|name| *name == error.field)
            .map_or("cluster", |position| CLUSTER_FIELDS[position]);
        invalid(field, error.reason)
    })
}

impl NodeConfig {
    /// Reads a TOML file, refusing unknown fields.
    pub fn from_file(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: NodeConfig =
            toml::from_str(&text).map_err(|source| ConfigFileError::Parse {
                path: path.to_path_buf(),
                message: source.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "0 is reserved; use 1 or more"));
        }
        if self.listen.port() == 0 && self.advertise.is_none() {
            return Err(invalid(
                "listen",
                "port 0 picks a random port that peers cannot know; give a port or an `advertise` address",
            ));
        }
        self.membership
            .validate()
            .map_err(|refusal| invalid("membership", refusal.to_string()))?;
        self.membership
            .check_id(self.node_id)
            .map_err(|refusal| invalid("node_id", refusal.to_string()))?;
        let (field, address) = match &self.advertise {
            Some(advertise) => ("advertise", advertise.clone()),
            None => ("listen", self.listen.to_string()),
        };
        let url = crate::node::address::parse_peer_address(&address)
            .map_err(|reason| invalid(field, reason))?;
        self.membership.check_address(&url).map_err(|refusal| {
            let hint = if field == "listen" {
                "; peers dial this node at its listen address unless an `advertise` address is given"
            } else {
                ""
            };
            invalid(field, format!("{refusal}{hint}"))
        })?;
        if !self.insecure && self.cluster_secret_file.is_none() {
            return Err(invalid(
                "cluster_secret_file",
                "a node that authenticates its callers needs the cluster secret its peers prove themselves with (`wasmraft cluster new-secret FILE`, then --cluster-secret-file FILE on every node); or run with --insecure to serve everyone unauthenticated",
            ));
        }
        self.tls
            .validate()
            .map_err(|reason| invalid("tls", reason))?;
        self.raft.validate()?;
        self.limits.validate()?;
        validate_cluster(&self.cluster)?;
        Ok(())
    }

    /// The address peers and clients use for this node.
    pub fn advertised_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the configuration file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RaftSettings::default().validate().unwrap();
        LimitSettings::default().validate().unwrap();
    }

    #[test]
    fn each_bad_setting_names_its_field() {
        let cases: Vec<(RaftSettings, &str)> = vec![
            (
                RaftSettings {
                    heartbeat_interval_ms: 200,
                    ..RaftSettings::default()
                },
                "raft.heartbeat_interval_ms",
            ),
            (
                RaftSettings {
                    election_timeout_ms_max: 150,
                    ..RaftSettings::default()
                },
                "raft.election_timeout_ms_max",
            ),
            (
                RaftSettings {
                    election_timeout_ms_min: 10,
                    ..RaftSettings::default()
                },
                "raft.election_timeout_ms_min",
            ),
            (
                RaftSettings {
                    max_payload_entries: 0,
                    ..RaftSettings::default()
                },
                "raft.max_payload_entries",
            ),
        ];
        for (settings, field) in cases {
            assert_eq!(
                settings.validate().unwrap_err().field,
                field,
                "{settings:?}"
            );
        }
    }

    #[test]
    fn toml_round_trip_and_unknown_fields() {
        let text = r#"
            node_id = 3
            listen = "127.0.0.1:7073"
            data_dir = "/var/lib/wasmraft"
            cluster_secret_file = "/etc/wasmraft/cluster.secret"
            [raft]
            heartbeat_interval_ms = 100
            election_timeout_ms_min = 400
            election_timeout_ms_max = 800
        "#;
        let config: NodeConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert!(
            !config.insecure,
            "a node authenticates its callers unless told not to"
        );
        // Secure by default: without a cluster secret, only --insecure starts.
        let secretless = NodeConfig {
            cluster_secret_file: None,
            ..config.clone()
        };
        assert_eq!(
            secretless.validate().unwrap_err().field,
            "cluster_secret_file"
        );
        NodeConfig {
            insecure: true,
            tls: Default::default(),
            ..secretless
        }
        .validate()
        .unwrap();
        assert_eq!(config.raft.election_timeout_ms_min, 400);
        assert_eq!(
            config.raft.snapshot_after_entries,
            RaftSettings::default().snapshot_after_entries
        );
        let cluster = format!("{text}\n[cluster]\nfuel_per_call_max = 5\n");
        let config: NodeConfig = toml::from_str(&cluster).unwrap();
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "invalid setting `cluster.fuel_per_call_max`: 5 is outside 10000..=100000000000"
        );
        // The node's own id and address obey its `[membership]` rules.
        let rows: [(&str, &str); 4] = [
            (
                "\n[membership]\nnode_id_max = 2\n",
                "invalid setting `node_id`: node id 3 is above 2 (setting `membership.node_id_max`)",
            ),
            (
                "\n[membership]\nallow_loopback = false\n",
                "invalid setting `listen`: 127.0.0.1 is a loopback address, which this cluster does not accept for a member (setting `membership.allow_loopback`); peers dial this node at its listen address unless an `advertise` address is given",
            ),
            (
                "\n[membership]\nport_min = 9000\nport_max = 8000\n",
                "invalid setting `membership`: 8000 is below port_min (9000) (setting `membership.port_max`)",
            ),
            (
                "\nadvertise = \"169.254.1.1:7073\"\n",
                "invalid setting `advertise`: 169.254.1.1 is a link-local address, which this cluster does not accept for a member (setting `membership.allow_link_local`)",
            ),
        ];
        for (extra, expected) in rows {
            // Top-level keys must come before the first table.
            let config: NodeConfig = match extra.strip_prefix("\nadvertise") {
                Some(_) => toml::from_str(&format!("{extra}{text}")).unwrap(),
                None => toml::from_str(&format!("{text}{extra}")).unwrap(),
            };
            assert_eq!(config.validate().unwrap_err().to_string(), expected);
        }
        let anywhere = text.replace("127.0.0.1:7073", "0.0.0.0:7073");
        let config: NodeConfig = toml::from_str(&anywhere).unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("0.0.0.0 is the unspecified address"),
        );
        let advertised = format!("advertise = \"10.0.0.3:7073\"\n{anywhere}");
        toml::from_str::<NodeConfig>(&advertised)
            .unwrap()
            .validate()
            .unwrap();
        let typo = text.replace("heartbeat_interval_ms", "heartbeat_ms");
        assert!(
            toml::from_str::<NodeConfig>(&typo)
                .unwrap_err()
                .to_string()
                .contains("heartbeat_ms")
        );
    }
}
