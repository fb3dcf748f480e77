//! wasmraft: Raft-replicated WebAssembly state machines.
//!
//! A node runs Raft (openraft) over a durable redb log ([`storage::LogStore`])
//! and applies every committed command to a redb state database
//! ([`storage::StateMachineStore`]), running user modules in the wasm
//! runtime ([`wasm`]). See ARCHITECTURE.md for the map.

pub mod api;
pub mod cli;
pub mod client;
pub mod command;
pub mod fuzzing;
pub mod network;
pub mod node;
pub mod raft;
pub mod storage;
pub mod telemetry;
pub mod wasm;
