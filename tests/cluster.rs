//! Real clusters of 3 and 5 nodes on loopback, over real gRPC: elections,
//! a leader lost or cut off, membership changed under a write load, a node
//! catching up from a snapshot, a whole-cluster restart, a node that lost
//! its data rejoining, and nodes SIGKILLed as processes. Every test ends by
//! comparing the state digests of all nodes.
//!
//! Writes go through `wasmraft::client::Client` (sessions, retries), each
//! acknowledged one counted: the counter example's value must cover every
//! acknowledged write and nothing that was never sent.

mod access;
mod admission;
pub(crate) mod harness;
mod health;
mod hostile;
mod peers;
pub(crate) mod processes;
mod scenarios;
mod telemetry;
mod tls;
