//! Identity and access: who is calling, and whether they may.
//!
//! - `peer`: peer authentication — the internal `Raft` service takes calls
//!   only from nodes holding the cluster secret, of the same cluster id.
//!
//! Invariant: every call of the internal `Raft` service passes
//! [`peer::PeerAuth::check`] before it reaches Raft, the handshake or the
//! forward hop; every call this node makes to a peer carries its
//! credentials ([`peer::PeerAuth::stamp`]).

pub mod peer;

pub use peer::{ClusterSecret, PeerAuth, SecretError};
