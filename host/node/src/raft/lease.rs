//! Knowing when Raft has let go of the storage: each store handed to
//! openraft is wrapped in [`Leased`], and a [`Released`] future resolves
//! once the last wrapper (the store, its log readers, its snapshot builders)
//! is dropped.
//!
//! openraft's `shutdown` joins its core task but not the tasks that still
//! hold a store for a moment after (the state machine worker, replication
//! streams), and redb refuses a second open of a file still open in this
//! process. Waiting for the release makes "shut down, then restart from the
//! same data directory" reliable. The wrappers only delegate.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::OptionalSend;
use openraft::storage::{
    LogFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use tokio::sync::oneshot;

use crate::command::Response;
use crate::raft::{
    Entry, LogId, LogState, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
    Vote,
};

/// A store with a share of a lease; see the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Leased<S> {
    inner: S,
    /// Dropping the last clone drops the sender, which resolves `Released`.
    _lease: Arc<oneshot::Sender<()>>,
}

/// Resolves when every [`Leased`] of one store is gone.
#[derive(Debug)]
pub(crate) struct Released(oneshot::Receiver<()>);

impl Released {
    pub(crate) async fn wait(self) {
        // The sender is never used: only its drop, seen as an error here.
        let _ = self.0.await;
    }
}

/// Wraps `store`, returning the wrapper and the future of its release.
pub(crate) fn lease<S>(store: S) -> (Leased<S>, Released) {
    let (sender, receiver) = oneshot::channel();
    (
        Leased {
            inner: store,
            _lease: Arc::new(sender),
        },
        Released(receiver),
    )
}

impl<S> Leased<S> {
    fn share<T>(&self, inner: T) -> Leased<T> {
        Leased {
            inner,
            _lease: Arc::clone(&self._lease),
        }
    }
}

impl<S: RaftLogReader<TypeConfig>> RaftLogReader<TypeConfig> for Leased<S> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.try_get_log_entries(range).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.limited_get_log_entries(start, end).await
    }
}

impl<S: RaftLogStorage<TypeConfig>> RaftLogStorage<TypeConfig> for Leased<S> {
    type LogReader = Leased<S::LogReader>;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        let reader = self.inner.get_log_reader().await;
        self.share(reader)
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.inner.save_vote(vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.inner.read_vote().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.inner.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.inner.read_committed().await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.inner.append(entries, callback).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.inner.truncate(log_id).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.inner.purge(log_id).await
    }
}

impl<S: RaftSnapshotBuilder<TypeConfig>> RaftSnapshotBuilder<TypeConfig> for Leased<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.inner.build_snapshot().await
    }
}

impl<S: RaftStateMachine<TypeConfig>> RaftStateMachine<TypeConfig> for Leased<S> {
    type SnapshotBuilder = Leased<S::SnapshotBuilder>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.inner.applied_state().await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.inner.apply(entries).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let builder = self.inner.get_snapshot_builder().await;
        self.share(builder)
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        self.inner.begin_receiving_snapshot().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        self.inner.install_snapshot(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.inner.get_current_snapshot().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn released_when_the_last_share_drops() {
        let (leased, released) = lease(());
        let share = leased.share(1u8);
        drop(leased);
        let mut released = std::pin::pin!(released.wait());
        assert!(futures::poll!(released.as_mut()).is_pending());
        drop(share);
        released.await;
    }
}
