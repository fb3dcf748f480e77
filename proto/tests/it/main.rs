//! Checks that the generated `wasmraft.v1` code matches the contract clients in
//! other languages rely on: wire encoding, enum values and gRPC service paths.

use prost::Message;
use wasmraft_proto::v1::{
    Consistency, DeployChunk, DeployHeader, InvokeRequest, QueryRequest, deploy_chunk,
};

/// A message survives encoding and decoding unchanged, optional fields
/// included.
#[test]
fn messages_round_trip_through_prost() {
    let invoke = InvokeRequest {
        module: "counter".to_owned(),
        input: vec![0, 1, 2, 255],
        client_id: "b9a4c7f0-client".to_owned(),
        sequence: 42,
    };
    let decoded = InvokeRequest::decode(invoke.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, invoke);

    let header = DeployChunk {
        content: Some(deploy_chunk::Content::Header(DeployHeader {
            name: "bank".to_owned(),
            sha256_hex: "ab".repeat(32),
            size_bytes: 1 << 20,
            init_argument: Some(Vec::new()),
            fuel_per_call_max: Some(10_000_000),
            memory_bytes_max: None,
        })),
    };
    let decoded = DeployChunk::decode(header.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, header);
    let Some(deploy_chunk::Content::Header(decoded_header)) = decoded.content else {
        panic!("the header chunk decoded as {decoded:?}");
    };
    // An explicitly empty init argument is distinct from no init argument.
    assert_eq!(decoded_header.init_argument, Some(Vec::new()));
    assert_eq!(decoded_header.memory_bytes_max, None);
}

/// Field numbers are part of the wire contract: this pins one message's
/// encoding byte for byte, so renumbering a field fails here.
#[test]
fn invoke_request_wire_encoding_is_stable() {
    let invoke = InvokeRequest {
        module: "kv".to_owned(),
        input: vec![7],
        client_id: "c".to_owned(),
        sequence: 3,
    };
    let expected: &[u8] = &[
        0x0a, 2, b'k', b'v', // field 1 (module), length-delimited
        0x12, 1, 7, // field 2 (input), length-delimited
        0x1a, 1, b'c', // field 3 (client_id), length-delimited
        0x20, 3, // field 4 (sequence), varint
    ];
    assert_eq!(invoke.encode_to_vec(), expected);
}

/// An unset consistency level decodes as `Unspecified` (zero), which the
/// contract defines as linearizable.
#[test]
fn consistency_defaults_to_unspecified() {
    let query = QueryRequest::decode(&[][..]).expect("an empty message decodes");
    assert_eq!(query.consistency(), Consistency::Unspecified);
    assert_eq!(Consistency::Unspecified as i32, 0);
    assert_eq!(Consistency::Linearizable as i32, 1);
    assert_eq!(Consistency::Stale as i32, 2);
    assert_eq!(
        Consistency::from_str_name("CONSISTENCY_STALE"),
        Some(Consistency::Stale)
    );
}

/// The fully qualified service names form the gRPC paths every client calls
/// (`/wasmraft.v1.Modules/Deploy`); they must not drift.
#[test]
fn service_names_are_in_the_wasmraft_v1_package() {
    use wasmraft_proto::v1::{
        access_server, cluster_server, modules_server, raft_server, state_machine_server,
    };
    assert_eq!(modules_server::SERVICE_NAME, "wasmraft.v1.Modules");
    assert_eq!(
        state_machine_server::SERVICE_NAME,
        "wasmraft.v1.StateMachine"
    );
    assert_eq!(cluster_server::SERVICE_NAME, "wasmraft.v1.Cluster");
    assert_eq!(access_server::SERVICE_NAME, "wasmraft.v1.Access");
    assert_eq!(raft_server::SERVICE_NAME, "wasmraft.v1.Raft");
}

/// The descriptor set for reflection holds every file of the package.
#[test]
fn file_descriptor_set_lists_every_proto_file() {
    let set = wasmraft_proto::FILE_DESCRIPTOR_SET;
    for file in [
        "wasmraft/v1/common.proto",
        "wasmraft/v1/modules.proto",
        "wasmraft/v1/state_machine.proto",
        "wasmraft/v1/cluster.proto",
        "wasmraft/v1/access.proto",
        "wasmraft/v1/raft.proto",
    ] {
        assert!(
            set.windows(file.len())
                .any(|window| window == file.as_bytes()),
            "{file} is missing from FILE_DESCRIPTOR_SET"
        );
    }
}
