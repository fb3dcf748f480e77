//! The cluster settings: every value apply reads besides the log entry and
//! the state, kept in the replicated state so that all replicas use the same
//! ones. They are set when a cluster is bootstrapped (from the bootstrapping
//! node's `[cluster]` configuration) and change only through a
//! [`super::Command::Settings`] entry, checked here field by field, at the
//! edge and again at apply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The replicated limits of guest calls, modules, module storage and client
/// sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// The most fuel one call may burn; a module's own limit is clamped by it.
    pub fuel_per_call_max: u64,
    /// The most linear memory one call may have; a module's own limit and
    /// its declared minimum are clamped by it.
    pub memory_bytes_max: u64,
    /// The largest output (result or error message) of one call.
    pub output_bytes_max: u64,
    /// The largest module a deploy may carry.
    pub module_bytes_max: u64,
    /// The total size of the client-session table (keys and remembered
    /// responses): past it, the least recently used sessions are forgotten.
    /// Every snapshot carries the table, so this bounds its share.
    pub session_table_bytes_max: u64,
    /// The most sessions one caller may hold: opening one more forgets that
    /// caller's least recently used session, never another caller's.
    pub sessions_per_caller_max: u64,
    /// The most bytes (keys plus values) one module may store: a call whose
    /// writes would take its module past it commits none of them. One tenant
    /// cannot fill the disk every replica shares. [`QUOTA_NOT_RECORDED`]
    /// when the state's settings predate quotas.
    pub module_storage_bytes_max: u64,
    /// The most keys one module may store, as `module_storage_bytes_max`.
    pub module_storage_keys_max: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            fuel_per_call_max: 50_000_000,
            memory_bytes_max: 16 << 20,
            output_bytes_max: 1 << 20,
            module_bytes_max: 8 << 20,
            session_table_bytes_max: 64 << 20,
            sessions_per_caller_max: 10_000,
            module_storage_bytes_max: 1 << 30,
            module_storage_keys_max: 10_000_000,
        }
    }
}

/// The value of a storage quota the recorded settings do not hold: settings
/// recorded by a release of state format 2, which knew no quotas. Apply
/// enforces none then, as that release did, so that replaying its log gives
/// the state it gave; the next settings change records the defaults for
/// quotas it does not set.
pub const QUOTA_NOT_RECORDED: u64 = u64::MAX;

impl ClusterSettings {
    /// The settings in force while a cluster has recorded none: the
    /// defaults, without storage quotas. A release that knew no quotas
    /// applied such a log without them, and a replay must give the state it
    /// gave. A new cluster records its settings (quotas included) in its
    /// first entries, before anything is deployed.
    pub fn unrecorded() -> Self {
        ClusterSettings {
            module_storage_bytes_max: QUOTA_NOT_RECORDED,
            module_storage_keys_max: QUOTA_NOT_RECORDED,
            ..ClusterSettings::default()
        }
    }
}

/// The ranges a setting may take. The upper ends are what every node is
/// built to serve: its wasm memory slots, its largest Raft message, its
/// largest gRPC response.
pub const FUEL_PER_CALL_MAX_RANGE: (u64, u64) = (10_000, 100_000_000_000);
pub const MEMORY_BYTES_MAX_RANGE: (u64, u64) = (64 << 10, 4 << 30);
pub const OUTPUT_BYTES_MAX_RANGE: (u64, u64) = (1 << 10, 8 << 20);
pub const MODULE_BYTES_MAX_RANGE: (u64, u64) = (1 << 10, 64 << 20);
pub const SESSION_TABLE_BYTES_MAX_RANGE: (u64, u64) = (1 << 20, 16 << 30);
pub const SESSIONS_PER_CALLER_MAX_RANGE: (u64, u64) = (1, 10_000_000);
pub const MODULE_STORAGE_BYTES_MAX_RANGE: (u64, u64) = (1 << 10, 1 << 40);
pub const MODULE_STORAGE_KEYS_MAX_RANGE: (u64, u64) = (1, 1 << 36);

/// A change of some settings, each named as in [`FIELDS`]; the others keep
/// their value. Named rather than positional, so that a setting added later
/// changes neither this record nor the log entries that carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsUpdate {
    values: BTreeMap<String, u64>,
}

impl SettingsUpdate {
    /// Every field set: the update that turns any settings into `settings`.
    pub fn all(settings: &ClusterSettings) -> SettingsUpdate {
        SettingsUpdate {
            values: FIELDS
                .iter()
                .filter_map(|field| Some(((*field).to_owned(), settings.get(field)?)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Sets one field by its name, as `wasmraft cluster settings set` and
    /// the API name them.
    pub fn set(&mut self, field: &str, value: u64) -> Result<(), SettingError> {
        if !FIELDS.contains(&field) {
            return Err(unknown_field(field));
        }
        self.values.insert(field.to_owned(), value);
        Ok(())
    }

    /// The value this update gives `field`, if it sets it.
    pub fn get(&self, field: &str) -> Option<u64> {
        self.values.get(field).copied()
    }

    /// The fields set, by name, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.values
            .iter()
            .map(|(field, value)| (field.as_str(), *value))
    }
}

fn unknown_field(field: &str) -> SettingError {
    SettingError {
        field: field.escape_debug().take(64).collect(),
        reason: format!("no such setting; the settings are {}", FIELDS.join(", ")),
    }
}

/// A change of the six settings of state format 2, by position: the form
/// [`super::Command::Settings`] entries of that release carry. Still read
/// from older logs, never written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionalSettingsUpdate {
    pub fuel_per_call_max: Option<u64>,
    pub memory_bytes_max: Option<u64>,
    pub output_bytes_max: Option<u64>,
    pub module_bytes_max: Option<u64>,
    pub session_table_bytes_max: Option<u64>,
    pub sessions_per_caller_max: Option<u64>,
}

impl From<&PositionalSettingsUpdate> for SettingsUpdate {
    fn from(update: &PositionalSettingsUpdate) -> Self {
        let fields = [
            ("fuel_per_call_max", update.fuel_per_call_max),
            ("memory_bytes_max", update.memory_bytes_max),
            ("output_bytes_max", update.output_bytes_max),
            ("module_bytes_max", update.module_bytes_max),
            ("session_table_bytes_max", update.session_table_bytes_max),
            ("sessions_per_caller_max", update.sessions_per_caller_max),
        ];
        SettingsUpdate {
            values: fields
                .into_iter()
                .filter_map(|(field, value)| Some((field.to_owned(), value?)))
                .collect(),
        }
    }
}

/// The settings' names, in display order.
pub const FIELDS: [&str; 8] = [
    "fuel_per_call_max",
    "memory_bytes_max",
    "output_bytes_max",
    "module_bytes_max",
    "session_table_bytes_max",
    "sessions_per_caller_max",
    "module_storage_bytes_max",
    "module_storage_keys_max",
];

/// A setting refused, named by its field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("invalid setting `{field}`: {reason}")]
pub struct SettingError {
    pub field: String,
    pub reason: String,
}

fn refuse(field: &str, reason: impl Into<String>) -> SettingError {
    SettingError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn within(field: &str, value: u64, (low, high): (u64, u64)) -> Result<(), SettingError> {
    if value < low || value > high {
        return Err(refuse(field, format!("{value} is outside {low}..={high}")));
    }
    Ok(())
}

impl ClusterSettings {
    /// The settings after `update`, or the first field that makes them
    /// unusable. Quotas the current settings do not record
    /// ([`QUOTA_NOT_RECORDED`]) take their defaults unless `update` sets them.
    pub fn updated(&self, update: &SettingsUpdate) -> Result<ClusterSettings, SettingError> {
        let mut settings = self.clone();
        let defaults = ClusterSettings::default();
        if settings.module_storage_bytes_max == QUOTA_NOT_RECORDED {
            settings.module_storage_bytes_max = defaults.module_storage_bytes_max;
        }
        if settings.module_storage_keys_max == QUOTA_NOT_RECORDED {
            settings.module_storage_keys_max = defaults.module_storage_keys_max;
        }
        for (field, value) in update.iter() {
            *settings.slot(field).ok_or_else(|| unknown_field(field))? = value;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Sets the field named `field` (see [`FIELDS`]) without checking the
    /// value; `false` when there is no such field.
    pub fn set_field(&mut self, field: &str, value: u64) -> bool {
        match self.slot(field) {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        }
    }

    /// The field named `field` (see [`FIELDS`]).
    fn slot(&mut self, field: &str) -> Option<&mut u64> {
        Some(match field {
            "fuel_per_call_max" => &mut self.fuel_per_call_max,
            "memory_bytes_max" => &mut self.memory_bytes_max,
            "output_bytes_max" => &mut self.output_bytes_max,
            "module_bytes_max" => &mut self.module_bytes_max,
            "session_table_bytes_max" => &mut self.session_table_bytes_max,
            "sessions_per_caller_max" => &mut self.sessions_per_caller_max,
            "module_storage_bytes_max" => &mut self.module_storage_bytes_max,
            "module_storage_keys_max" => &mut self.module_storage_keys_max,
            _ => return None,
        })
    }

    /// Why these settings cannot be used, naming the field, or `Ok`.
    pub fn validate(&self) -> Result<(), SettingError> {
        within(
            "fuel_per_call_max",
            self.fuel_per_call_max,
            FUEL_PER_CALL_MAX_RANGE,
        )?;
        within(
            "memory_bytes_max",
            self.memory_bytes_max,
            MEMORY_BYTES_MAX_RANGE,
        )?;
        if !self.memory_bytes_max.is_multiple_of(64 << 10) {
            return Err(refuse(
                "memory_bytes_max",
                format!(
                    "{} is not a whole number of 64 KiB wasm pages",
                    self.memory_bytes_max
                ),
            ));
        }
        within(
            "output_bytes_max",
            self.output_bytes_max,
            OUTPUT_BYTES_MAX_RANGE,
        )?;
        within(
            "module_bytes_max",
            self.module_bytes_max,
            MODULE_BYTES_MAX_RANGE,
        )?;
        within(
            "session_table_bytes_max",
            self.session_table_bytes_max,
            SESSION_TABLE_BYTES_MAX_RANGE,
        )?;
        // A session remembers one response of up to `output_bytes_max`: the
        // table must hold a few of the largest, or a big answer would push
        // its own session out before its client could retry.
        let room = self.output_bytes_max.saturating_mul(4);
        if self.session_table_bytes_max < room {
            return Err(refuse(
                "session_table_bytes_max",
                format!(
                    "{} is less than 4 × output_bytes_max ({room})",
                    self.session_table_bytes_max
                ),
            ));
        }
        within(
            "sessions_per_caller_max",
            self.sessions_per_caller_max,
            SESSIONS_PER_CALLER_MAX_RANGE,
        )?;
        within(
            "module_storage_bytes_max",
            self.module_storage_bytes_max,
            MODULE_STORAGE_BYTES_MAX_RANGE,
        )?;
        within(
            "module_storage_keys_max",
            self.module_storage_keys_max,
            MODULE_STORAGE_KEYS_MAX_RANGE,
        )?;
        Ok(())
    }

    /// The value of a field by name (see [`FIELDS`]).
    pub fn get(&self, field: &str) -> Option<u64> {
        Some(match field {
            "fuel_per_call_max" => self.fuel_per_call_max,
            "memory_bytes_max" => self.memory_bytes_max,
            "output_bytes_max" => self.output_bytes_max,
            "module_bytes_max" => self.module_bytes_max,
            "session_table_bytes_max" => self.session_table_bytes_max,
            "sessions_per_caller_max" => self.sessions_per_caller_max,
            "module_storage_bytes_max" => self.module_storage_bytes_max,
            "module_storage_keys_max" => self.module_storage_keys_max,
            _ => return None,
        })
    }

    /// The storage quota of every module, `None` when the recorded settings
    /// predate quotas ([`QUOTA_NOT_RECORDED`]).
    pub fn storage_quota(&self) -> Option<StorageQuota> {
        if self.module_storage_bytes_max == QUOTA_NOT_RECORDED
            || self.module_storage_keys_max == QUOTA_NOT_RECORDED
        {
            return None;
        }
        Some(StorageQuota {
            bytes_max: self.module_storage_bytes_max,
            keys_max: self.module_storage_keys_max,
        })
    }
}

/// How much one module may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageQuota {
    pub bytes_max: u64,
    pub keys_max: u64,
}

/// A module's own limits, clamped by the cluster's: (fuel per call, memory bytes).
pub fn module_limits(settings: &ClusterSettings, requested: &super::ModuleLimits) -> (u64, u64) {
    (
        requested
            .fuel_per_call
            .map_or(settings.fuel_per_call_max, |fuel| {
                fuel.min(settings.fuel_per_call_max)
            }),
        requested
            .memory_bytes
            .map_or(settings.memory_bytes_max, |bytes| {
                bytes.min(settings.memory_bytes_max)
            }),
    )
}

/// The settings as recorded in the state, with the engine that every voter
/// of the cluster must run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRecord {
    pub settings: ClusterSettings,
    /// The wasm engine fingerprint of the node that bootstrapped the cluster
    /// (or first recorded its settings): fuel and traps are only equal
    /// between equal engines, so a node with another one refuses to run as
    /// a member.
    pub engine_fingerprint: String,
    /// The log index of the command that last changed the settings.
    pub changed_index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        ClusterSettings::default().validate().unwrap();
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let settings = ClusterSettings::default();
        let rows: &[(&str, u64, &str)] = &[
            (
                "fuel_per_call_max",
                0,
                "invalid setting `fuel_per_call_max`: 0 is outside 10000..=100000000000",
            ),
            (
                "memory_bytes_max",
                100_000,
                "invalid setting `memory_bytes_max`: 100000 is not a whole number of 64 KiB wasm pages",
            ),
            (
                "output_bytes_max",
                1 << 30,
                "invalid setting `output_bytes_max`: 1073741824 is outside 1024..=8388608",
            ),
            (
                "session_table_bytes_max",
                2 << 20,
                "invalid setting `session_table_bytes_max`: 2097152 is less than 4 × output_bytes_max (4194304)",
            ),
            (
                "sessions_per_caller_max",
                0,
                "invalid setting `sessions_per_caller_max`: 0 is outside 1..=10000000",
            ),
            (
                "module_storage_bytes_max",
                QUOTA_NOT_RECORDED,
                "invalid setting `module_storage_bytes_max`: 18446744073709551615 is outside 1024..=1099511627776",
            ),
            (
                "module_storage_keys_max",
                0,
                "invalid setting `module_storage_keys_max`: 0 is outside 1..=68719476736",
            ),
        ];
        for (field, value, expected) in rows {
            let mut update = SettingsUpdate::default();
            update.set(field, *value).unwrap();
            assert_eq!(
                settings.updated(&update).unwrap_err().to_string(),
                *expected
            );
        }
        let error = SettingsUpdate::default().set("fuel", 1).unwrap_err();
        assert_eq!(error.field, "fuel");
        assert!(error.reason.contains("fuel_per_call_max"));
    }

    #[test]
    fn an_update_changes_only_its_fields() {
        let mut update = SettingsUpdate::default();
        update.set("fuel_per_call_max", 20_000).unwrap();
        let updated = ClusterSettings::default().updated(&update).unwrap();
        assert_eq!(updated.fuel_per_call_max, 20_000);
        assert_eq!(
            ClusterSettings {
                fuel_per_call_max: ClusterSettings::default().fuel_per_call_max,
                ..updated.clone()
            },
            ClusterSettings::default()
        );
        for field in FIELDS {
            assert!(updated.get(field).is_some());
        }
        assert_eq!(
            ClusterSettings::default()
                .updated(&SettingsUpdate::all(&updated))
                .unwrap(),
            updated
        );
    }

    #[test]
    fn quotas_are_in_force_once_recorded() {
        assert_eq!(ClusterSettings::unrecorded().storage_quota(), None);
        let defaults = ClusterSettings::default();
        assert_eq!(
            defaults.storage_quota(),
            Some(StorageQuota {
                bytes_max: 1 << 30,
                keys_max: 10_000_000,
            })
        );
        // The first change of settings that predate quotas records the
        // default quotas, or the ones it sets.
        let mut update = SettingsUpdate::default();
        update.set("fuel_per_call_max", 20_000).unwrap();
        let updated = ClusterSettings::unrecorded().updated(&update).unwrap();
        assert_eq!(updated.storage_quota(), defaults.storage_quota());
        update.set("module_storage_keys_max", 5).unwrap();
        let updated = ClusterSettings::unrecorded().updated(&update).unwrap();
        assert_eq!(
            updated.storage_quota(),
            Some(StorageQuota {
                bytes_max: 1 << 30,
                keys_max: 5,
            })
        );
    }
}
