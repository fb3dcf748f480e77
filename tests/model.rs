//! Model-checked protocols: the rules wasmraft adds on top of Raft,
//! explored exhaustively by stateright, each against the properties it
//! must keep, with the leader and the network as nondeterministic actors.
//! Each model keeps, beside the check that its rules hold, tests that turn
//! one rule off (or back to what it was) and find the counterexample, so
//! that every rule is shown needed and the checks can fail.
//!
//! - `sessions`: client sessions with forwarding, retries and a bounded
//!   session table: no command applied twice.
//! - `membership`: the admission of empty nodes (`Handshake`), bootstrap
//!   and membership changes: one cluster's log per node, no second
//!   cluster, a voter kept, add-node's answer.
//! - `batcher`: the leader's batching of invokes and session opens, with
//!   lost leaders and timed-out writes: once, in order, each caller its own
//!   result.

mod batcher;
mod membership;
mod sessions;

use std::collections::BTreeSet;

use stateright::{Checker, HasDiscoveries, Model};

/// Whether the checker finds a counterexample to `property` in `model`,
/// stopping at the first.
fn finds<M>(model: M, property: &'static str) -> bool
where
    M: Model + Send + Sync + 'static,
    M::State: std::hash::Hash + Send + Sync + Clone + PartialEq + 'static,
    M::Action: Clone + PartialEq,
{
    let checker = model
        .checker()
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
        .spawn_bfs()
        .join();
    checker.discovery(property).is_some()
}
