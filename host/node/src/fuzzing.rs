//! The checks behind the fuzz targets of `fuzz/` (cargo-fuzz, on nightly) —
//! every surface a stranger's bytes reach: the decoders of replicated and
//! persisted data, the API's requests from protobuf to wasmraft's own
//! types, the snapshot reader, deploy validation, and the key-value overlay
//! a guest drives through its imports. Each function takes any bytes
//! and panics only when the code under test breaks its contract, so the
//! same functions replay the committed corpus as ordinary tests on stable
//! Rust.

use std::sync::OnceLock;

use prost::Message;
use wasmraft_proto::v1 as proto;

use crate::api::validate::{self, DeployAssembler};
use crate::command::ClusterSettings;
use crate::command::{Request, Response, check, codec};
use crate::node::config::LimitSettings;
use crate::node::forward::Forwarded;
use crate::node::rules::MembershipRules;
use crate::raft::network::wire;
use crate::raft::{Entry, SnapshotMeta, Vote};
use crate::storage::{ModuleRecord, SnapshotFileReader};
use crate::wasm::{Runtime, RuntimeConfig};

/// The key-value overlay a guest drives through its imports, against a
/// model: the runtime's own check.
pub use crate::wasm::fuzzing::kv_overlay;

/// Every decoder of what peers send and disks hold refuses bad bytes with an
/// error, and a command that decodes passes through apply's checks.
pub fn decoders(data: &[u8]) {
    let _ = codec::decode::<Entry>(data);
    let _ = codec::decode::<Response>(data);
    let _ = codec::decode::<ModuleRecord>(data);
    let _ = codec::decode::<SnapshotMeta>(data);
    let _ = codec::decode::<Option<Vote>>(data);
    if let Ok(request) = codec::decode::<Request>(data) {
        let _ = check::request(&request);
        if let crate::command::Command::Batch(requests) = &request.command {
            for request in requests {
                let _ = check::request(request);
            }
        }
    }
    wire::decode_as_each_raft_request(data);
    let _ = wire::decode_payload::<Forwarded>(data);
}

/// Every request a client sends, decoded from any bytes, goes through the
/// conversions and checks of the API's edge to wasmraft's own types or to
/// a refusal, never a panic. The bytes are read as each request message,
/// and as a deploy stream (length-delimited chunks).
pub fn api_requests(data: &[u8]) {
    let limits = LimitSettings::default();
    if let Ok(request) = proto::InvokeRequest::decode(data) {
        let _ = validate::module_name(&request.module);
        let _ = validate::payload("the input", request.input.len(), &limits);
        let _ = validate::session(&request.client_id, request.sequence);
    }
    if let Ok(request) = proto::QueryRequest::decode(data) {
        let _ = validate::module_name(&request.module);
        let _ = validate::payload("the input", request.input.len(), &limits);
        let _ = validate::consistency(request.consistency);
    }
    if let Ok(request) = proto::OpenSessionRequest::decode(data) {
        let _ = validate::open_session(&request.client_id);
    }
    if let Ok(request) = proto::SetSettingsRequest::decode(data)
        && let Ok(update) = validate::settings_request(&request)
    {
        let _ = validate::settings_update(&ClusterSettings::default(), &update);
    }
    if let Ok(request) = proto::GrantRequest::decode(data) {
        let _ = validate::role_binding(request.binding);
    }
    if let Ok(request) = proto::AddNodeRequest::decode(data) {
        let _ = crate::node::membership::check_candidate(
            &MembershipRules::default(),
            request.node_id,
            request.address.trim(),
        );
    }
    if let Ok(request) = proto::GetModuleRequest::decode(data) {
        let _ = validate::module_name(&request.name);
    }
    let mut stream = data;
    let mut upload = DeployAssembler::new(&limits, ClusterSettings::default().module_bytes_max);
    while !stream.is_empty() {
        let Ok(chunk) = proto::DeployChunk::decode_length_delimited(&mut stream) else {
            return;
        };
        if upload.push(chunk.content).is_err() {
            return;
        }
    }
    let _ = upload.finish();
}

/// The snapshot reader hands out records or an error, never more records
/// than the bytes could hold, and never panics.
pub fn snapshot(data: &[u8]) {
    let Ok(mut reader) = SnapshotFileReader::new(std::io::Cursor::new(data)) else {
        return;
    };
    let mut records = 0usize;
    while let Ok(Some(_)) = reader.next_record() {
        records += 1;
        // Each record takes at least its 9 bytes of framing.
        assert!(records * 9 <= data.len(), "more records than bytes");
    }
}

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(RuntimeConfig {
            instances_max: 4,
            ..RuntimeConfig::default()
        })
        .expect("the fuzzing runtime starts")
    })
}

/// Deploy validation never panics and gives the same verdict twice (apply
/// replicates it, so it must be a function of the bytes alone); a module it
/// accepts compiles.
pub fn validate(wasm: &[u8]) {
    let runtime = runtime();
    let first = runtime.check(wasm);
    let second = runtime.check(wasm);
    assert_eq!(first, second, "deploy validation is not deterministic");
    if first.is_ok() {
        runtime
            .validate(wasm)
            .unwrap_or_else(|error| panic!("a module that passed the checks fails: {error}"));
    }
}
