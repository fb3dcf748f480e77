//! Peer authentication: the internal `Raft` service (Raft's messages, the
//! handshake, the forward hop) takes calls only from nodes of this cluster.
//!
//! Every node is given the same cluster secret (a file, `--cluster-secret-file`).
//! A node signs each call it makes to a peer with its id and a proof, the
//! HMAC-SHA256 of its id under the secret, and names its cluster id; the
//! peer recomputes the proof and compares it in constant time, and refuses
//! a caller of another cluster. The secret itself never travels.
//!
//! | the call carries | answer |
//! |---|---|
//! | a client credential (`authorization`) | `PERMISSION_DENIED` |
//! | no peer credential, or a malformed one | `UNAUTHENTICATED` |
//! | a proof that does not match this node's secret | `UNAUTHENTICATED` |
//! | another cluster id than this node's | `FAILED_PRECONDITION` |
//!
//! Invariant: with a secret configured, no call reaches Raft, the handshake
//! or the forward hop without a proof made with the same secret. Without
//! one (`serve --dev`, or a node started without a secret, which says so
//! in its log) the proof is not checked, the cluster id still is.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::node::address::parse_peer_address;
use crate::raft::NodeId;

/// Metadata naming the calling node.
pub const PEER_ID_HEADER: &str = "wasmraft-peer-id";
/// Metadata carrying the caller's proof: hex of HMAC-SHA256(secret, context ‖ id).
pub const PEER_PROOF_HEADER: &str = "wasmraft-peer-proof";
/// Metadata naming the caller's cluster.
pub const CLUSTER_ID_HEADER: &str = "wasmraft-cluster-id";

/// The shortest secret accepted: 32 bytes, as many as the HMAC's key block
/// needs to be worth guessing.
pub const SECRET_BYTES_MIN: usize = 32;
/// The longest secret file read.
const SECRET_FILE_BYTES_MAX: u64 = 4096;
/// What the proof is about, so that it cannot be mistaken for any other
/// HMAC made with the same secret.
const PROOF_CONTEXT: &[u8] = b"wasmraft peer v1\0";

type HmacSha256 = Hmac<Sha256>;

/// The secret every node of a cluster shares.
#[derive(Clone)]
pub struct ClusterSecret(Arc<[u8]>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// Why a cluster secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the cluster secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the cluster secret file {path} holds {found} bytes; a secret needs at least {SECRET_BYTES_MIN}: make one with `wasmraft cluster new-secret FILE`"
    )]
    TooShort { path: String, found: usize },
    #[error(
        "the cluster secret file {path} is larger than {SECRET_FILE_BYTES_MAX} bytes: it is not a secret file"
    )]
    TooLong { path: String },
}

impl ClusterSecret {
    /// The secret in `bytes`, refused when shorter than [`SECRET_BYTES_MIN`].
    pub fn new(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= SECRET_BYTES_MIN).then(|| Self(bytes.into()))
    }

    /// Reads the secret from a file: its contents without surrounding
    /// whitespace (a trailing newline is not part of the secret).
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let shown = path.display().to_string();
        let read = |source| SecretError::Read {
            path: shown.clone(),
            source,
        };
        let length = std::fs::metadata(path).map_err(read)?.len();
        if length > SECRET_FILE_BYTES_MAX {
            return Err(SecretError::TooLong { path: shown });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let trimmed = bytes.trim_ascii();
        Self::new(trimmed).ok_or(SecretError::TooShort {
            path: shown,
            found: trimmed.len(),
        })
    }

    /// A new random secret, as the text of a secret file: 64 hex digits
    /// (256 bits) and a newline.
    pub fn generate() -> Result<String, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(format!("{}\n", hex::encode(bytes)))
    }

    fn mac(&self, node_id: NodeId) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(PROOF_CONTEXT);
        mac.update(&node_id.to_le_bytes());
        mac
    }

    /// The proof node `node_id` sends.
    fn proof(&self, node_id: NodeId) -> String {
        hex::encode(self.mac(node_id).finalize().into_bytes())
    }

    /// Whether `proof` is node `node_id`'s, compared in constant time.
    fn verify(&self, node_id: NodeId, proof: &[u8]) -> bool {
        self.mac(node_id).verify_slice(proof).is_ok()
    }
}

/// Reads this node's cluster id when it does not know it yet: the cluster
/// id recorded in the state, once some entry carrying it was applied.
pub type ClusterIdSource = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// How this node proves itself to its peers and checks them. Cheap to clone.
#[derive(Clone)]
pub struct PeerAuth {
    inner: Arc<Inner>,
    /// With TLS on, peers are dialled over it, checked against the peer CA.
    tls: Option<Arc<ClientTlsConfig>>,
}

struct Inner {
    node_id: NodeId,
    /// `None`: peers are not authenticated (dev, or no secret given).
    secret: Option<ClusterSecret>,
    /// This node's own proof, made once: every outgoing call carries it.
    proof: Option<MetadataValue<Ascii>>,
    /// This node's cluster, once known. It never changes once set.
    cluster_id: RwLock<Option<String>>,
    source: ClusterIdSource,
}

impl fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerAuth")
            .field("node_id", &self.inner.node_id)
            .field("authenticated", &self.inner.secret.is_some())
            .field("cluster_id", &self.cluster_id())
            .finish()
    }
}

/// A caller that passed [`PeerAuth::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The node the caller proved to be (or claims to be, without a secret).
    pub node_id: Option<NodeId>,
    /// The cluster it named.
    pub cluster_id: Option<String>,
}

impl PeerAuth {
    pub fn new(node_id: NodeId, secret: Option<ClusterSecret>, source: ClusterIdSource) -> Self {
        Self {
            inner: Arc::new(Inner {
                node_id,
                // Hex digits are always valid metadata.
                proof: secret
                    .as_ref()
                    .and_then(|secret| secret.proof(node_id).parse().ok()),
                secret,
                cluster_id: RwLock::new(None),
                source,
            }),
            tls: None,
        }
    }

    /// These credentials, dialling peers over TLS with `tls`.
    pub fn with_tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(Arc::new(tls));
        self
    }

    /// Whether peers are dialled over TLS.
    pub fn dials_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The endpoint of the peer at `address` (`HOST:PORT`, or a URL): over
    /// TLS when this node has it, whatever scheme the address names.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, String> {
        let url = parse_peer_address(address)?;
        match &self.tls {
            None => Endpoint::from_shared(url).map_err(|error| error.to_string()),
            Some(tls) => {
                let url = match url.strip_prefix("http://") {
                    Some(rest) => format!("https://{rest}"),
                    None => url,
                };
                Endpoint::from_shared(url)
                    .and_then(|endpoint| endpoint.tls_config(tls.as_ref().clone()))
                    .map_err(|error| error.to_string())
            }
        }
    }

    /// This node's cluster id, when it knows it.
    pub fn cluster_id(&self) -> Option<String> {
        let known = self
            .inner
            .cluster_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if known.is_some() {
            return known;
        }
        let found = (self.inner.source)()?;
        Some(self.adopt(&found))
    }

    /// Takes `cluster_id` as this node's unless it knows one already;
    /// returns the one in force.
    pub fn adopt(&self, cluster_id: &str) -> String {
        let mut known = self
            .inner
            .cluster_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.get_or_insert_with(|| cluster_id.to_owned()).clone()
    }

    /// Adds this node's credentials to an outgoing peer call.
    pub fn stamp(&self, metadata: &mut MetadataMap) {
        let id = self.inner.node_id;
        metadata.insert(PEER_ID_HEADER, MetadataValue::from(id));
        if let Some(proof) = &self.inner.proof {
            metadata.insert(PEER_PROOF_HEADER, proof.clone());
        }
        if let Some(cluster_id) = self.cluster_id()
            && let Ok(value) = cluster_id.parse()
        {
            metadata.insert(CLUSTER_ID_HEADER, value);
        }
    }

    /// Checks the credentials of an incoming peer call (see the module
    /// documentation for the answers).
    pub fn check(&self, metadata: &MetadataMap) -> Result<Peer, Status> {
        if metadata.contains_key("authorization") {
            return Err(Status::permission_denied(
                "the internal Raft service is for the nodes of the cluster; a client credential cannot call it",
            ));
        }
        let text = |name: &str| -> Result<Option<&str>, Status> {
            metadata
                .get(name)
                .map(|value| {
                    value.to_str().map_err(|_| {
                        Status::unauthenticated(format!("the `{name}` metadata is not text"))
                    })
                })
                .transpose()
        };
        let node_id = text(PEER_ID_HEADER)?
            .map(|id| {
                id.parse::<NodeId>().map_err(|_| {
                    Status::unauthenticated(format!("`{PEER_ID_HEADER}` is not a node id: `{id}`"))
                })
            })
            .transpose()?;
        if let Some(secret) = &self.inner.secret {
            let missing = || {
                Status::unauthenticated(format!(
                    "the internal Raft service takes calls only from the nodes of the cluster, which sign them with the cluster secret; this call carries no `{PEER_ID_HEADER}` and `{PEER_PROOF_HEADER}`"
                ))
            };
            let id = node_id.ok_or_else(missing)?;
            let proof = text(PEER_PROOF_HEADER)?.ok_or_else(missing)?;
            let matches = hex::decode(proof).is_ok_and(|proof| secret.verify(id, &proof));
            if !matches {
                return Err(Status::unauthenticated(format!(
                    "the peer credential of node {id} does not match this node's cluster secret: give every node of the cluster the same --cluster-secret-file"
                )));
            }
        }
        let theirs = text(CLUSTER_ID_HEADER)?.map(str::to_owned);
        if let (Some(ours), Some(theirs)) = (self.cluster_id(), &theirs)
            && ours != *theirs
        {
            return Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {ours}, the caller{} to cluster {theirs}: nodes of different clusters never exchange Raft messages",
                self.inner.node_id,
                node_id.map_or(String::new(), |id| format!(" (node {id})")),
            )));
        }
        Ok(Peer {
            node_id,
            cluster_id: theirs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> ClusterSecret {
        ClusterSecret::new(&[byte; 32]).unwrap()
    }

    fn auth(id: NodeId, secret: Option<ClusterSecret>, cluster: Option<&str>) -> PeerAuth {
        let auth = PeerAuth::new(id, secret, Box::new(|| None));
        if let Some(cluster) = cluster {
            auth.adopt(cluster);
        }
        auth
    }

    fn stamped(from: &PeerAuth) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        from.stamp(&mut metadata);
        metadata
    }

    #[test]
    fn calls_are_checked_as_the_table_says() {
        let node = auth(1, Some(secret(7)), Some("c1"));
        let peer = auth(2, Some(secret(7)), Some("c1"));
        let stranger = auth(3, Some(secret(8)), Some("c1"));
        let unsigned = auth(4, None, Some("c1"));
        let other_cluster = auth(5, Some(secret(7)), Some("c2"));
        let new_node = auth(6, Some(secret(7)), None);
        let mut client = stamped(&peer);
        client.insert("authorization", "Bearer abc".parse().unwrap());
        let mut forged = stamped(&peer);
        forged.insert(PEER_ID_HEADER, "9".parse().unwrap());
        type Row = (
            &'static str,
            MetadataMap,
            Result<Option<NodeId>, tonic::Code>,
        );
        let rows: [Row; 8] = [
            ("a peer", stamped(&peer), Ok(Some(2))),
            (
                "a node that knows no cluster yet",
                stamped(&new_node),
                Ok(Some(6)),
            ),
            (
                "another secret",
                stamped(&stranger),
                Err(tonic::Code::Unauthenticated),
            ),
            (
                "no proof",
                stamped(&unsigned),
                Err(tonic::Code::Unauthenticated),
            ),
            (
                "no credential",
                MetadataMap::new(),
                Err(tonic::Code::Unauthenticated),
            ),
            (
                "another node's proof",
                forged,
                Err(tonic::Code::Unauthenticated),
            ),
            (
                "a client credential",
                client,
                Err(tonic::Code::PermissionDenied),
            ),
            (
                "another cluster",
                stamped(&other_cluster),
                Err(tonic::Code::FailedPrecondition),
            ),
        ];
        for (what, metadata, expected) in rows {
            let checked = node
                .check(&metadata)
                .map(|peer| peer.node_id)
                .map_err(|status| status.code());
            assert_eq!(checked, expected, "{what}");
        }
    }

    #[test]
    fn without_a_secret_only_the_cluster_is_checked() {
        let node = auth(1, None, Some("c1"));
        assert!(node.check(&MetadataMap::new()).is_ok());
        let other = auth(2, None, Some("c2"));
        assert_eq!(
            node.check(&stamped(&other)).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
    }

    #[test]
    fn a_cluster_id_once_known_never_changes() {
        let node = auth(1, None, None);
        assert_eq!(node.cluster_id(), None);
        assert_eq!(node.adopt("c1"), "c1");
        assert_eq!(node.adopt("c2"), "c1");
        let from_state = PeerAuth::new(1, None, Box::new(|| Some("c3".to_owned())));
        assert_eq!(from_state.cluster_id().as_deref(), Some("c3"));
    }

    #[test]
    fn secret_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, ClusterSecret::generate().unwrap()).unwrap();
        ClusterSecret::from_file(&good).unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "0123456789\n").unwrap();
        let error = ClusterSecret::from_file(&short).unwrap_err().to_string();
        assert!(error.contains("holds 10 bytes"), "{error}");
        let missing = ClusterSecret::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(missing, SecretError::Read { .. }), "{missing}");
    }
}
