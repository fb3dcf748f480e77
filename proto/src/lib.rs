//! The `wasmraft.v1` gRPC API: the protobuf messages, tonic clients and tonic
//! servers generated from `proto/wasmraft/v1/*.proto`.
//!
//! The `.proto` files are the source of truth and their comments are the API
//! documentation; this crate only compiles them for Rust. Generated types stay
//! at the edge: the host converts them to its own types as requests arrive.
//!
//! Each service has a client (`v1::modules_client::ModulesClient`, …) and a
//! server trait with its tower service (`v1::modules_server::Modules` and
//! `v1::modules_server::ModulesServer`, …): `Modules`, `StateMachine`,
//! `Cluster`, `Access` and the internal `Raft`.

/// The `wasmraft.v1` protobuf package, generated at build time.
#[allow(
    // Generated code: its shape is tonic's and prost's, not ours. It is clean
    // under today's lints; these keep a tighter workspace lint set (pedantic,
    // missing_docs) from failing the build on code we do not write.
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations,
    missing_docs
)]
pub mod v1 {
    tonic::include_proto!("wasmraft.v1");
}

/// The encoded `google.protobuf.FileDescriptorSet` of every `wasmraft.v1` file
/// (with comments), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("wasmraft_v1_descriptor");
