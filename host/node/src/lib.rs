//! wasmraft: Raft-replicated WebAssembly state machines — the node.
//!
//! A node runs Raft (openraft) over a durable redb log ([`storage::LogStore`])
//! and applies every committed command to a redb state database
//! ([`storage::StateMachineStore`]), running user modules in the wasm
//! runtime ([`wasm`]). It serves the `wasmraft.v1` gRPC API ([`api`]) and is
//! the `wasmraft` command line ([`cli`]). See ARCHITECTURE.md for the map.
//!
//! **Invariant: consensus is the only way in.** Every change to a node's
//! state is a committed Raft entry applied by [`storage`]; the API proposes
//! and reads, and nothing else writes.
//!
//! The libraries it is built on are crates of their own, each a boundary
//! the compiler checks, and are re-exported under the names the node uses:
//! [`command`] (`wasmraft-core`: commands, codec, checks, cluster settings;
//! no I/O), [`wasm`] (`wasmraft-runtime`: knows nothing of Raft or redb) and
//! [`client`] (`wasmraft-client`: links neither wasmtime, redb nor openraft).

pub use wasmraft_client as client;
pub use wasmraft_core as command;
pub use wasmraft_runtime as wasm;

pub mod admission;
pub mod api;
pub mod auth;
pub mod cli;
pub mod fuzzing;
pub mod node;
pub mod raft;
pub mod storage;
pub mod telemetry;
