//! The fault-injection seam of the Raft network: a policy consulted before
//! every outgoing Raft RPC, deciding to deliver it, drop it or delay it.
//!
//! Production nodes use [`Faults::none`]. Tests build a policy (drop, delay,
//! partition between chosen nodes) and hand it to the node at start; the
//! network layer is the only code that consults it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::raft::NodeId;

/// What happens to one RPC from one node to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultDecision {
    /// Send it normally.
    Deliver,
    /// Do not send it: the caller sees the target as unreachable.
    Drop,
    /// Send it after waiting this long (the RPC's timeout still counts).
    Delay(Duration),
}

/// A policy deciding the fate of every RPC `from → to`.
pub type FaultPolicy = dyn Fn(NodeId, NodeId) -> FaultDecision + Send + Sync;

/// The fault policy of a node's Raft network. Cheap to clone; the default
/// injects nothing.
#[derive(Clone, Default)]
pub struct Faults {
    /// `None` in production: no policy call on the hot path.
    policy: Option<Arc<FaultPolicy>>,
}

impl Faults {
    /// No faults: every RPC is delivered.
    pub fn none() -> Self {
        Self::default()
    }

    /// Faults decided by `policy`, called for every outgoing RPC.
    pub fn from_fn(
        policy: impl Fn(NodeId, NodeId) -> FaultDecision + Send + Sync + 'static,
    ) -> Self {
        Self {
            policy: Some(Arc::new(policy)),
        }
    }

    /// The fate of one RPC from `from` to `to`.
    pub fn decide(&self, from: NodeId, to: NodeId) -> FaultDecision {
        match &self.policy {
            None => FaultDecision::Deliver,
            Some(policy) => policy(from, to),
        }
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("policy", &self.policy.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// The error an RPC dropped by the fault policy reports.
#[derive(Debug, thiserror::Error)]
#[error("RPC from node {from} to node {to} dropped by fault injection")]
pub struct InjectedFault {
    pub from: NodeId,
    pub to: NodeId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_delivers_and_a_policy_decides() {
        assert_eq!(Faults::none().decide(1, 2), FaultDecision::Deliver);
        let partition = Faults::from_fn(|from, to| {
            if (from == 1) != (to == 1) {
                FaultDecision::Drop
            } else {
                FaultDecision::Deliver
            }
        });
        assert_eq!(partition.decide(1, 2), FaultDecision::Drop);
        assert_eq!(partition.decide(2, 3), FaultDecision::Deliver);
    }
}
