//! `wasmraft.v1.Module` from a stored `ModuleRecord`, with the limits the
//! cluster settings in force give it.

use wasmraft_proto::v1 as proto;

use crate::command::ClusterSettings;
use crate::command::settings::module_limits;
use crate::storage::{ModuleRecord, ModuleUsage};

/// The API's view of a deployed module and what it stores.
pub(crate) fn module_message(
    settings: &ClusterSettings,
    record: ModuleRecord,
    usage: ModuleUsage,
) -> proto::Module {
    let (fuel_per_call_max, memory_bytes_max) = module_limits(settings, &record.limits);
    proto::Module {
        storage_bytes: usage.bytes,
        storage_keys: usage.keys,
        storage_bytes_max: settings.module_storage_bytes_max,
        storage_keys_max: settings.module_storage_keys_max,
        version: record.version,
        sha256_hex: hex::encode(record.hash),
        size_bytes: record.size_bytes,
        deployed_at_index: record.deployed_index,
        deployed_at_unix_ms: u64::try_from(record.deployed_timestamp_ms).unwrap_or(0),
        has_query: record.has_query,
        has_init: record.has_init,
        has_migrate: record.has_migrate,
        fuel_per_call_max,
        memory_bytes_max,
        name: record.name,
    }
}
