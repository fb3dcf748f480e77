//! Durable storage on redb: the Raft log ([`LogStore`], one database file) and
//! the replicated state ([`StateMachineStore`], a second file), with snapshots
//! streamed through files.
//!
//! Invariants:
//! - `append` reports an entry durable only after the redb transaction holding
//!   it committed with `Durability::Immediate`; one transaction per batch.
//! - A batch of applied entries, their module KV writes and `last_applied`
//!   commit in one transaction: after a crash the state is exactly the state
//!   after some prefix of the log.
//! - A storage failure is fatal to the node (openraft's `StorageError`); a
//!   guest failure never is.

mod access;
mod apply;
pub mod format;
mod inspect;
mod log_store;
mod sessions;
mod settings;
mod snapshot;
mod state;
mod state_machine;

pub use apply::{ApplyError, HostFailure, deploy_limits, entry_seed};
pub use inspect::{InspectError, Inspection, inspect};
pub(crate) use log_store::commands_traced;
pub use log_store::{LogStore, OpenLogError};
pub use snapshot::{SnapshotError, SnapshotFileReader, SnapshotFileWriter};
pub use state::{ModuleRecord, ModuleUsage, StateDigest, module_key_range};
pub use state_machine::{
    OpenStateError, QueryAnswer, QueryError, StateMachineStore, StateReader, recorded_cluster_id,
};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use crate::raft::{NodeId, StorageError};

/// Wraps any error as an openraft storage error about `subject`.
pub(crate) fn storage_error<E>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: E,
) -> StorageError
where
    E: std::error::Error + 'static,
{
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(&error)),
    }
}

/// The subject most storage failures are about: the whole store.
pub(crate) fn store_error<E: std::error::Error + 'static>(
    verb: ErrorVerb,
    error: E,
) -> StorageError {
    storage_error(ErrorSubject::Store, verb, error)
}

/// Where a node keeps its files. One data directory belongs to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDirectory {
    root: std::path::PathBuf,
}

impl DataDirectory {
    pub fn new(root: impl Into<std::path::PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The Raft log database.
    pub fn log_file(&self) -> std::path::PathBuf {
        self.root.join("log.redb")
    }

    /// The state database and the current snapshot.
    pub fn state_directory(&self) -> std::path::PathBuf {
        self.root.join("state")
    }

    /// The first administrator's token of a cluster this node bootstrapped
    /// (mode 0600).
    pub fn admin_token_file(&self) -> std::path::PathBuf {
        self.root.join("admin.token")
    }

    /// Compiled modules, keyed by content hash and engine fingerprint.
    pub fn module_cache_directory(&self) -> std::path::PathBuf {
        self.root.join("module-cache")
    }

    /// Whether this directory holds a node already (a log was created).
    pub fn is_initialised(&self) -> bool {
        self.log_file().exists()
    }
}
