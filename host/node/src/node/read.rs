//! The linearizable read barrier: [`NodeHandle::read_barrier`] returns once
//! this node's state includes every write committed before the call.

use std::time::{Duration, Instant};

use super::error::ConsensusError;
use super::forward::{Forwarded, millis};
use super::handle::NodeHandle;

impl NodeHandle {
    /// Returns once this node's state includes every write committed before
    /// the call: the leader confirms its leadership with a quorum and names
    /// its commit index (the read index), then this node waits until it has
    /// applied that far. A follower asks the leader for the read index and
    /// serves the read itself.
    pub async fn read_barrier(&self, timeout: Option<Duration>) -> Result<(), ConsensusError> {
        let timeout = self.call_timeout(timeout);
        let deadline = Instant::now() + timeout;
        let read_index = self
            .routed(
                deadline,
                (),
                |()| self.read_index_here(timeout),
                |(), timeout_ms| Forwarded::ReadIndex { timeout_ms },
            )
            .await?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.inner
            .consensus
            .wait_applied(read_index, left)
            .await
            .map_err(|error| self.wait_failed(error, "applying up to the read index", timeout))
    }

    /// Confirms this node's leadership with a quorum and returns the index
    /// a linearizable read must see applied. Concurrent calls share quorum
    /// rounds (`rounds`): each waits for the next round that starts after
    /// it was called.
    pub(super) async fn read_index_here(&self, timeout: Duration) -> Result<u64, ConsensusError> {
        if self.is_shutting_down() {
            return Err(ConsensusError::ShuttingDown);
        }
        let round = {
            let node = self.clone();
            move || {
                let node = node.clone();
                async move { node.read_index_round().await }
            }
        };
        tokio::time::timeout(timeout, self.inner.read_rounds.join(round))
            .await
            .map_err(|_| ConsensusError::Timeout {
                what: "the linearizable read barrier".to_owned(),
                after_ms: millis(timeout),
            })?
            .unwrap_or(Err(ConsensusError::ShuttingDown))
    }

    /// One quorum round, within the node's consensus timeout.
    async fn read_index_round(&self) -> Result<u64, ConsensusError> {
        let timeout = self.inner.consensus_timeout;
        let confirmed = tokio::time::timeout(timeout, self.inner.consensus.read_index())
            .await
            .map_err(|_| ConsensusError::Timeout {
                what: "the linearizable read barrier".to_owned(),
                after_ms: millis(timeout),
            })?;
        confirmed.map_err(|refusal| self.refused(refusal))
    }
}
