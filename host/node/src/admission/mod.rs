//! Local admission: what this node takes on at once, never affecting apply
//! (`../shared` design, "Limits": local admission is node configuration,
//! replicated limits are cluster settings).
//!
//! - `queries`: [`QueryPool`], the bounded pool queries run on — at most
//!   as many at once as the runtime has query instances, a bounded queue
//!   of waiters, and beyond it an immediate refusal.
//! - `rates`: [`RateLimits`], token buckets per subject and method class
//!   (requests and input bytes), with overrides per subject.
//! - `in_flight`: [`InFlight`], the calls open at once, per subject and in
//!   all, the request bytes they hold and the deploy uploads among them;
//!   invokes, queries and deploy uploads hold a permit while they run.
//!
//! Invariant: a refusal is an [`Shed`] naming the limit and when to retry;
//! it never leaves work behind (nothing was started).

mod in_flight;
mod queries;
pub mod rates;

pub use in_flight::{CallKind, InFlight, InFlightPermit, InFlightSettings};
pub use queries::{QueryPermit, QueryPool};
pub use rates::{MethodClass, RateLimits, RateSettings};

/// A request turned away by a local limit: `RESOURCE_EXHAUSTED`, with
/// `retry-after-ms` metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail} (limit: {limit}); retry after {retry_after_ms} ms")]
pub struct Shed {
    /// The limit's name, as in the node's configuration.
    pub limit: std::borrow::Cow<'static, str>,
    /// What the node was doing, for a person.
    pub detail: String,
    /// When a retry has a fair chance.
    pub retry_after_ms: u64,
}
