//! Identity and access: who is calling, and whether they may.
//!
//! - `token`: bearer tokens, their format, and their proof (sha256, compared
//!   in constant time).
//! - `policy`: authorisation with casbin — the model, the roles and the
//!   actions of every method and command.
//! - `gate`: the edge — a call's metadata to an identity, an identity and
//!   an action to a caller, against the replicated access state.
//! - `peer`: peer authentication — the internal `Raft` service takes calls
//!   only from nodes holding the cluster secret, of the same cluster id.
//! - `tls`: the node's TLS (rustls through tonic) for clients and peers,
//!   and the subject of a client certificate (its CN).
//!
//! Invariants: every client method passes [`Gate::authenticate`] and
//! [`Gate::authorize`] (except `Cluster.Health`) before it reads or
//! proposes anything; a command authorised against an older policy
//! revision than the one in force when it applies is checked again there
//! (`storage::access::recheck`). Every call of the internal `Raft` service
//! passes [`peer::PeerAuth::check`] before it reaches Raft, the handshake or
//! the forward hop; every call this node makes to a peer carries its
//! credentials ([`peer::PeerAuth::stamp`]).

pub mod gate;
pub mod peer;
pub mod policy;
pub mod tls;
pub mod token;

pub use gate::{ANONYMOUS, AccessCache, AccessView, Authorization, Caller, Denied, Gate, Identity};
pub use peer::{ClusterSecret, PeerAuth, SecretError};
pub use policy::Action;
pub use token::Token;

/// Writes `contents` to a new file at `path`, readable by its owner only
/// (mode 0600), and syncs it: an existing file is never overwritten.
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
