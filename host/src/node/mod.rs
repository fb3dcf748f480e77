//! The node: its settings, and (as the node grows) the wiring of storage,
//! Raft, the runtime and the gRPC server into one running process.

pub mod address;
pub mod config;
