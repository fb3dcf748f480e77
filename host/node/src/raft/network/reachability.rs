//! What this node last heard from each peer it calls: whether the last call
//! got an answer, and since when calls have been failing. The node's health
//! reads it (`peer_unreachable`); Raft's own metrics say nothing of a peer
//! that stopped answering while nothing new needed replicating.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::raft::NodeId;

/// The longest error kept per peer.
const ERROR_CHARS_MAX: usize = 200;

/// Shared by the network (which records) and the node (which reads).
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Reachability(Arc<Mutex<BTreeMap<NodeId, Failing>>>);

/// A peer whose calls fail.
#[derive(Debug, Clone)]
struct Failing {
    since: Instant,
    last_error: String,
}

/// A peer that has not answered for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    pub peer: NodeId,
    pub for_ms: u64,
    pub last_error: String,
}

impl Reachability {
    /// Records that `peer` answered a call (a Raft refusal is an answer).
    pub fn answered(&self, peer: NodeId) {
        if let Some(failing) = self.peers().remove(&peer) {
            tracing::info!(
                peer,
                "node {peer} answers again, after {} ms without",
                failing.since.elapsed().as_millis()
            );
        }
    }

    /// Records that a call to `peer` failed with `error`. The first failure
    /// after answers is logged here, once; openraft repeats its own.
    pub fn failed(&self, peer: NodeId, error: &str) {
        let last_error: String = error.chars().take(ERROR_CHARS_MAX).collect();
        let mut peers = self.peers();
        match peers.entry(peer) {
            std::collections::btree_map::Entry::Occupied(mut failing) => {
                failing.get_mut().last_error = last_error;
            }
            std::collections::btree_map::Entry::Vacant(vacant) => {
                tracing::warn!(peer, "node {peer} does not answer: {last_error}");
                vacant.insert(Failing {
                    since: Instant::now(),
                    last_error,
                });
            }
        }
    }

    /// The peers whose calls have been failing for longer than `longer_than`.
    pub fn unreachable(&self, longer_than: Duration) -> Vec<Unreachable> {
        let now = Instant::now();
        self.peers()
            .iter()
            .filter(|(_, failing)| now.duration_since(failing.since) > longer_than)
            .map(|(peer, failing)| Unreachable {
                peer: *peer,
                for_ms: u64::try_from(now.duration_since(failing.since).as_millis())
                    .unwrap_or(u64::MAX),
                last_error: failing.last_error.clone(),
            })
            .collect()
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Failing>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_unreachable_until_it_answers() {
        let reachability = Reachability::default();
        reachability.failed(2, "connection refused");
        reachability.failed(2, "connection refused again");
        assert!(reachability.unreachable(Duration::from_secs(60)).is_empty());
        let down = reachability.unreachable(Duration::ZERO);
        assert_eq!(down.len(), 1);
        assert_eq!(
            (down[0].peer, down[0].last_error.as_str()),
            (2, "connection refused again")
        );
        reachability.answered(2);
        assert!(reachability.unreachable(Duration::ZERO).is_empty());
    }
}
