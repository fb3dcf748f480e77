//! What a stopped node's data directory holds, read without starting Raft:
//! the formats, the vote, the log's and the state's positions, the
//! membership, the digest and the modules (`wasmraft inspect`).

use openraft::storage::{RaftLogStorage, RaftStateMachine};

use super::{
    DataDirectory, LogStore, ModuleRecord, OpenLogError, OpenStateError, StateMachineStore,
};
use crate::raft::{LogId, StorageError};
use crate::wasm::Runtime;

/// A data directory's contents, as text an operator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub log_format: String,
    pub state_format: String,
    /// `None` when this node never voted.
    pub vote: Option<String>,
    pub last_purged: Option<String>,
    pub last_log: Option<String>,
    pub last_applied: Option<String>,
    pub membership: String,
    /// `None` until the entry naming the cluster was applied.
    pub cluster_id: Option<String>,
    pub digest: String,
    pub modules: Vec<ModuleRecord>,
}

/// Why a data directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0} holds no wasmraft node (no log.redb)")]
    NoNode(String),
    #[error(
        "{0} is in use by a running node: stop the node first (`inspect` reads a stopped node's data; a running one answers `wasmraft cluster status`)"
    )]
    InUse(String),
    #[error("cannot open the Raft log: {0}")]
    Log(#[from] OpenLogError),
    #[error("cannot open the state: {0}")]
    State(#[from] OpenStateError),
    #[error("cannot read the Raft log or the state: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot read the state: {0}")]
    Read(#[from] redb::Error),
}

/// Reads `data`, which no running node may hold.
pub async fn inspect(data: &DataDirectory, runtime: Runtime) -> Result<Inspection, InspectError> {
    if !data.is_initialised() {
        return Err(InspectError::NoNode(data.root().display().to_string()));
    }
    let mut log = LogStore::open(data.log_file()).map_err(|error| match error {
        OpenLogError::Database(redb::Error::DatabaseAlreadyOpen) => {
            InspectError::InUse(data.root().display().to_string())
        }
        other => InspectError::Log(other),
    })?;
    let log_state = log.get_log_state().await?;
    let vote = log.read_vote().await?;
    let mut state = StateMachineStore::open(data.state_directory(), runtime)?;
    let (applied, membership) = state.applied_state().await?;
    let reader = state.reader();
    let (_, digest) = reader.digest()?;
    let text = |log_id: Option<LogId>| log_id.map(|log_id| log_id.to_string());
    Ok(Inspection {
        log_format: log.format()?.to_string(),
        state_format: state.format()?.to_string(),
        vote: vote.map(|vote| vote.to_string()),
        last_purged: text(log_state.last_purged_log_id),
        last_log: text(log_state.last_log_id),
        last_applied: text(applied),
        membership: membership.membership().to_string(),
        cluster_id: reader.cluster_id()?,
        digest: digest.to_string(),
        modules: reader.modules()?,
    })
}
