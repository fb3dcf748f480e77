//! Whether this node was removed from its cluster, as a member told it.
//!
//! A node removed while it was down or cut off never receives the
//! membership change that removed it: the leader stops replicating to it
//! once the change commits. It would campaign for ever, at ever higher
//! terms, and tell its clients to wait for a leader. So a member that is
//! asked for its vote by a node its membership no longer holds, by a change
//! the candidate's log has not reached, refuses it saying so
//! ([`REMOVED_AT_METADATA`]: the index of that change), and the candidate
//! records it here. The node then stops campaigning and answers clients
//! `FAILED_PRECONDITION` until a leader replicates to it again (it was
//! added back), which clears it.
//!
//! The member's judgement is sound: a candidate added back after the change
//! the member knows holds the later change that re-added it, so its log
//! reaches past it and no member calls it removed.

use std::sync::Arc;

use tokio::sync::watch;

use crate::raft::NodeId;

/// The metadata of a vote refusal naming the membership change (its log
/// index) that removed the candidate.
pub const REMOVED_AT_METADATA: &str = "wasmraft-removed-at";

/// How this node learned that it is no longer a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// The member that said so.
    pub by: NodeId,
    /// The log index of the membership change that removed this node.
    pub index: u64,
}

/// Shared by the network (which records a refusal), the `Raft` service
/// (which clears it when a leader replicates here) and the node (which
/// stops campaigning meanwhile). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Removal(Arc<watch::Sender<Option<Removed>>>);

impl Default for Removal {
    fn default() -> Self {
        Removal(Arc::new(watch::Sender::new(None)))
    }
}

impl Removal {
    /// A member refused this node's vote request: it was removed.
    pub fn learned(&self, removed: Removed) {
        self.0.send_if_modified(|known| {
            let changed = known.is_none();
            if changed {
                *known = Some(removed);
            }
            changed
        });
    }

    /// A leader replicates to this node: it is a member again.
    pub fn cleared(&self) {
        self.0.send_if_modified(|known| known.take().is_some());
    }

    /// What this node learned, if it was removed.
    pub fn get(&self) -> Option<Removed> {
        *self.0.borrow()
    }

    /// Follows the changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<Removed>> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_counts_until_a_leader_replicates() {
        let removal = Removal::default();
        let mut changes = removal.subscribe();
        removal.learned(Removed { by: 2, index: 40 });
        removal.learned(Removed { by: 3, index: 41 });
        assert_eq!(removal.get(), Some(Removed { by: 2, index: 40 }));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        removal.cleared();
        assert_eq!(removal.get(), None);
        assert!(changes.has_changed().unwrap());
    }
}
