//! `wasmraft.v1.ClusterSettings` from the core's `ClusterSettings`.

use wasmraft_proto::v1 as proto;

use crate::command::ClusterSettings;

/// The API's view of the cluster settings.
pub(crate) fn settings_message(settings: &ClusterSettings) -> proto::ClusterSettings {
    proto::ClusterSettings {
        fuel_per_call_max: settings.fuel_per_call_max,
        memory_bytes_max: settings.memory_bytes_max,
        output_bytes_max: settings.output_bytes_max,
        module_bytes_max: settings.module_bytes_max,
        session_table_bytes_max: settings.session_table_bytes_max,
        sessions_per_caller_max: settings.sessions_per_caller_max,
        module_storage_bytes_max: settings.module_storage_bytes_max,
        module_storage_keys_max: settings.module_storage_keys_max,
    }
}
