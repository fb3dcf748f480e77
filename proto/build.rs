//! Generates the Rust types, clients and servers of the `wasmraft.v1` protobuf
//! package with tonic, using the `protoc` that `protoc-bin-vendored` ships, so
//! building needs neither an installed `protoc` nor network access.

use std::path::PathBuf;

/// The `.proto` files of the package, relative to the crate root. The import
/// root is the crate root, so files import each other as `wasmraft/v1/….proto`.
const PROTO_FILES: &[&str] = &[
    "wasmraft/v1/common.proto",
    "wasmraft/v1/modules.proto",
    "wasmraft/v1/state_machine.proto",
    "wasmraft/v1/cluster.proto",
    "wasmraft/v1/access.proto",
    "wasmraft/v1/raft.proto",
];

/// File stem of the encoded `FileDescriptorSet` written to `OUT_DIR`; read back
/// by `lib.rs` with `tonic::include_file_descriptor_set!`.
const DESCRIPTOR_SET_STEM: &str = "wasmraft_v1_descriptor";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // Pointing prost-build at the vendored protoc through its configuration
    // rather than the PROTOC environment variable: setting a process variable
    // is `unsafe` in edition 2024, and this keeps any system protoc out of it.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    println!("cargo:rerun-if-changed=wasmraft");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out_dir.join(format!("{DESCRIPTOR_SET_STEM}.bin")))
        .compile_with_config(config, PROTO_FILES, &["."])?;
    Ok(())
}
