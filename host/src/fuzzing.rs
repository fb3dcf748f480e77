//! The checks behind the fuzz targets of `fuzz/` (cargo-fuzz, on nightly) —
//! every surface a stranger's bytes reach: the decoders of replicated and
//! persisted data, the snapshot reader, deploy validation, and the key-value
//! overlay a guest drives through its imports. Each function takes any bytes
//! and panics only when the code under test breaks its contract, so the
//! same functions replay the committed corpus as ordinary tests on stable
//! Rust.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use wasmraft_proto::v1::RaftRequest;

use crate::command::{Request, Response, check, codec};
use crate::network::wire::{self, WIRE_ENCODING_VERSION};
use crate::node::forward::Forwarded;
use crate::raft::{Entry, NodeId, SnapshotMeta, TypeConfig, Vote};
use crate::storage::{ModuleRecord, SnapshotFileReader};
use crate::wasm::kv::{KvEntries, ScanBudget, WriteSet, scan_page};
use crate::wasm::{MemoryKv, Runtime, RuntimeConfig};

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
    let request = RaftRequest {
        encoding_version: WIRE_ENCODING_VERSION,
        payload: data.to_vec(),
    };
    let _ = wire::decode_request::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&request);
    let _ = wire::decode_request::<openraft::raft::VoteRequest<NodeId>>(&request);
    let _ = wire::decode_request::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(&request);
    let _ = wire::decode_request::<Forwarded>(&request);
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

/// A guest's view of its keys — stored entries under the call's own writes —
/// against a plain map: every scan page holds exactly the entries the map has
/// in that range, in order, with `more` set exactly when one was left out.
pub fn kv_overlay(data: &[u8]) {
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    // Keys from a small alphabet, so that operations collide.
    let key = |next: &mut dyn FnMut() -> Option<u8>| -> Option<Vec<u8>> {
        let length = usize::from(next()? % 3) + 1;
        (0..length)
            .map(|_| next().map(|byte| [b'a', b'b', b'c', 0, 0xff][usize::from(byte % 5)]))
            .collect()
    };
    let mut base = MemoryKv::new();
    let stored = next().map_or(0, |count| count % 32);
    for _ in 0..stored {
        let Some(stored_key) = key(&mut next) else {
            return;
        };
        base.0.insert(stored_key, vec![next().unwrap_or(0)]);
    }
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = base.0.clone();
    let mut writes = WriteSet::new();
    while let Some(op) = next() {
        match op % 3 {
            0 => {
                let Some(written) = key(&mut next) else {
                    return;
                };
                let value = vec![next().unwrap_or(0); usize::from(next().unwrap_or(0) % 4)];
                writes
                    .set(&written, &value)
                    .expect("a tiny write set has room");
                model.insert(written, value);
            }
            1 => {
                let Some(deleted) = key(&mut next) else {
                    return;
                };
                writes.delete(&deleted).expect("a tiny write set has room");
                model.remove(&deleted);
            }
            _ => {
                let Some(start) = key(&mut next) else { return };
                let end = match next() {
                    Some(byte) if byte % 2 == 0 => key(&mut next),
                    _ => None,
                };
                let limit = usize::from(next().unwrap_or(0) % 8);
                let mut budget = ScanBudget::new(u64::MAX);
                let page = scan_page(&base, &writes, &start, end.as_deref(), limit, &mut budget)
                    .expect("an unmetered in-memory scan cannot fail");
                let in_range: KvEntries = model
                    .iter()
                    .filter(|(key, _)| {
                        key.as_slice() >= start.as_slice()
                            && end
                                .as_ref()
                                .is_none_or(|end| key.as_slice() < end.as_slice())
                    })
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                let shown = limit.clamp(1, usize::MAX);
                let expected: Vec<_> = in_range.iter().take(shown).cloned().collect();
                let (more, entries) = decode_page(&page);
                assert_eq!(entries, expected, "scan [{start:?}, {end:?}) limit {limit}");
                assert_eq!(
                    more,
                    in_range.len() > expected.len(),
                    "the page's `more` flag"
                );
            }
        }
    }
}

/// Reads a `kv_scan` page: `more: u8`, then `key_len: u32 LE`, key,
/// `value_len: u32 LE`, value per entry.
fn decode_page(page: &[u8]) -> (bool, KvEntries) {
    let mut entries = Vec::new();
    let mut rest = &page[1..];
    let take = |rest: &mut &[u8]| {
        let (length, tail) = rest.split_at(4);
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
        let (part, tail) = tail.split_at(length);
        *rest = tail;
        part.to_vec()
    };
    while !rest.is_empty() {
        let key = take(&mut rest);
        let value = take(&mut rest);
        entries.push((key, value));
    }
    (page[0] == 1, entries)
}
