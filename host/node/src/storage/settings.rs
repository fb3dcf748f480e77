//! The cluster settings record in the state, in its two layouts: each
//! setting named (format 3, [`CLUSTER_SETTINGS`]) and the six settings of
//! format 2 by position ([`CLUSTER_SETTINGS_POSITIONAL`]).
//!
//! **Invariant: the same log gives the same bytes.** A replica that replays
//! a format-2 log from its start must reach the state the format-2 replicas
//! reached and migrated, so applying a format-2 settings entry onto
//! format-2 settings writes the positional layout again, byte for byte as
//! that release did. Everything else writes the named layout and removes
//! the positional one.

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::apply::decode;
use super::state::{CLUSTER_SETTINGS, CLUSTER_SETTINGS_POSITIONAL, SETTINGS};
use crate::command::settings::QUOTA_NOT_RECORDED;
use crate::command::{ClusterSettings, SettingsRecord, codec};

/// The named layout: `(name, value)` pairs in name order. A name this build
/// does not know is a corrupted record; a name it lacks takes its default.
#[derive(Serialize, Deserialize)]
struct NamedRecord {
    values: Vec<(String, u64)>,
    engine_fingerprint: String,
    changed_index: u64,
}

/// The positional layout of format 2.
#[derive(Serialize, Deserialize)]
struct PositionalRecord {
    settings: PositionalSettings,
    engine_fingerprint: String,
    changed_index: u64,
}

#[derive(Serialize, Deserialize)]
struct PositionalSettings {
    fuel_per_call_max: u64,
    memory_bytes_max: u64,
    output_bytes_max: u64,
    module_bytes_max: u64,
    session_table_bytes_max: u64,
    sessions_per_caller_max: u64,
}

/// Which layout the recorded settings have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    Named,
    Positional,
}

/// The cluster settings recorded in the state, if any, and their layout.
pub(crate) fn read<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
) -> Result<Option<(SettingsRecord, Layout)>, redb::Error> {
    if let Some(bytes) = table.get(CLUSTER_SETTINGS)? {
        let named: NamedRecord = decode(bytes.value())?;
        let mut settings = ClusterSettings::default();
        for (field, value) in &named.values {
            let known = settings.set_field(field, *value);
            if !known {
                return Err(redb::Error::Corrupted(format!(
                    "the cluster settings name `{}`, a setting this build does not know",
                    field.escape_debug()
                )));
            }
        }
        let record = SettingsRecord {
            settings,
            engine_fingerprint: named.engine_fingerprint,
            changed_index: named.changed_index,
        };
        return Ok(Some((record, Layout::Named)));
    }
    let Some(bytes) = table.get(CLUSTER_SETTINGS_POSITIONAL)? else {
        return Ok(None);
    };
    let positional: PositionalRecord = decode(bytes.value())?;
    let fields = positional.settings;
    let record = SettingsRecord {
        settings: ClusterSettings {
            fuel_per_call_max: fields.fuel_per_call_max,
            memory_bytes_max: fields.memory_bytes_max,
            output_bytes_max: fields.output_bytes_max,
            module_bytes_max: fields.module_bytes_max,
            session_table_bytes_max: fields.session_table_bytes_max,
            sessions_per_caller_max: fields.sessions_per_caller_max,
            module_storage_bytes_max: QUOTA_NOT_RECORDED,
            module_storage_keys_max: QUOTA_NOT_RECORDED,
        },
        engine_fingerprint: positional.engine_fingerprint,
        changed_index: positional.changed_index,
    };
    Ok(Some((record, Layout::Positional)))
}

/// Records `record` in `layout`, replacing whatever settings were recorded.
pub(crate) fn write(
    txn: &WriteTransaction,
    record: &SettingsRecord,
    layout: Layout,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(SETTINGS)?;
    match layout {
        Layout::Named => {
            let values = crate::command::settings::FIELDS
                .iter()
                .filter_map(|field| Some(((*field).to_owned(), record.settings.get(field)?)))
                .collect();
            let named = NamedRecord {
                values,
                engine_fingerprint: record.engine_fingerprint.clone(),
                changed_index: record.changed_index,
            };
            table.insert(CLUSTER_SETTINGS, codec::encode(&named).as_slice())?;
            table.remove(CLUSTER_SETTINGS_POSITIONAL)?;
        }
        Layout::Positional => {
            let settings = &record.settings;
            let positional = PositionalRecord {
                settings: PositionalSettings {
                    fuel_per_call_max: settings.fuel_per_call_max,
                    memory_bytes_max: settings.memory_bytes_max,
                    output_bytes_max: settings.output_bytes_max,
                    module_bytes_max: settings.module_bytes_max,
                    session_table_bytes_max: settings.session_table_bytes_max,
                    sessions_per_caller_max: settings.sessions_per_caller_max,
                },
                engine_fingerprint: record.engine_fingerprint.clone(),
                changed_index: record.changed_index,
            };
            table.insert(
                CLUSTER_SETTINGS_POSITIONAL,
                codec::encode(&positional).as_slice(),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(settings: ClusterSettings) -> SettingsRecord {
        SettingsRecord {
            settings,
            engine_fingerprint: "v2-abc".into(),
            changed_index: 7,
        }
    }

    #[test]
    fn both_layouts_read_back_what_they_wrote() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let db = redb::Database::create(file.path()).unwrap();
        let txn = db.begin_write().unwrap();
        let mut settings = ClusterSettings {
            fuel_per_call_max: 123_456,
            ..ClusterSettings::default()
        };
        write(&txn, &record(settings.clone()), Layout::Positional).unwrap();
        let (read_back, layout) = read(&txn.open_table(SETTINGS).unwrap()).unwrap().unwrap();
        assert_eq!(layout, Layout::Positional);
        assert_eq!(read_back.settings.fuel_per_call_max, 123_456);
        // Format 2 knew no quotas: none is in force.
        assert_eq!(read_back.settings.storage_quota(), None);

        settings.module_storage_keys_max = 99;
        write(&txn, &record(settings.clone()), Layout::Named).unwrap();
        let table = txn.open_table(SETTINGS).unwrap();
        let (read_back, layout) = read(&table).unwrap().unwrap();
        assert_eq!(layout, Layout::Named);
        assert_eq!(read_back, record(settings));
        assert!(table.get(CLUSTER_SETTINGS_POSITIONAL).unwrap().is_none());
    }
}
