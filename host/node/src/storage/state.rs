//! The layout of the state database: its tables, their keys and records, and
//! the state digest.
//!
//! Every table maps bytes to bytes, so snapshots and digests treat them all
//! alike. Module KV keys are `module name, 0x00, key`: module names never
//! contain a zero byte, so each module owns one contiguous, ordered range.

use std::ops::Range;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{ModuleHash, ModuleLimits};

pub(crate) type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// `last_applied`, the membership, the format version and who wrote it.
pub(crate) const META: Table = TableDefinition::new("meta");
/// Module name → [`ModuleRecord`].
pub(crate) const MODULES: Table = TableDefinition::new("modules");
/// sha256 → wasm bytes, shared by every module record with that hash.
pub(crate) const BLOBS: Table = TableDefinition::new("blobs");
/// `module name, 0x00, key` → value: every module's own key-value state.
pub(crate) const KV: Table = TableDefinition::new("kv");
/// `caller, 0x00, client id` → the session's last command and its response
/// (`sessions.rs`).
pub(crate) const SESSIONS: Table = TableDefinition::new("sessions");
/// `last used index (u64 big-endian), session key` → empty: the sessions in
/// the order they were last used, so the oldest is evicted first.
pub(crate) const SESSIONS_BY_USE: Table = TableDefinition::new("sessions_by_use");
/// Encoded access rule → empty value.
pub(crate) const ACCESS: Table = TableDefinition::new("access");
/// [`CLUSTER_SETTINGS`] → the cluster settings record (format 2);
/// [`CLUSTER_ID`] → the cluster's id, once named; [`ACCESS_REVISION`] →
/// the access policy revision.
pub(crate) const SETTINGS: Table = TableDefinition::new("settings");
/// `caller, 0x00, last used index (u64 big-endian), client id` → empty: each
/// caller's sessions in the order they were last used (format 2).
pub(crate) const SESSIONS_BY_CALLER: Table = TableDefinition::new("sessions_by_caller");
/// Token id → the token's [`TokenGrant`](crate::command::TokenGrant) (its
/// subject and the sha256 of its secret).
pub(crate) const TOKENS: Table = TableDefinition::new("tokens");

/// Module name → [`ModuleUsage`]: what each module stores, kept with every
/// write so that its quota is checked without a scan (format 3). Derived
/// from `kv`, so not digested.
pub(crate) const USAGE: Table = TableDefinition::new("usage");

/// Every table with its id in snapshot files. The ids are part of the
/// snapshot format: never renumber, only append.
pub(crate) const TABLES: [(u8, Table); 11] = [
    (0, META),
    (1, MODULES),
    (2, BLOBS),
    (3, KV),
    (4, SESSIONS),
    (5, ACCESS),
    (6, SESSIONS_BY_USE),
    (7, SETTINGS),
    (8, SESSIONS_BY_CALLER),
    (9, TOKENS),
    (10, USAGE),
];

/// Tables whose content is the replicated state proper, as digested.
/// `meta` is left out: it records how far the node got, not what the state
/// is; the session indexes are derived from `sessions`, the usage from `kv`.
pub(crate) const DIGESTED_TABLES: [(u8, Table); 7] = [
    (1, MODULES),
    (2, BLOBS),
    (3, KV),
    (4, SESSIONS),
    (5, ACCESS),
    (7, SETTINGS),
    (9, TOKENS),
];

/// The key of the cluster settings in the `settings` table, as releases of
/// state format 2 wrote them (six settings by position): read, and written
/// only by applying one of their entries onto settings of their kind.
pub(crate) const CLUSTER_SETTINGS_POSITIONAL: &[u8] = b"cluster";
/// The key of the cluster settings in the `settings` table, each named
/// (format 3): present, it replaces [`CLUSTER_SETTINGS_POSITIONAL`].
pub(crate) const CLUSTER_SETTINGS: &[u8] = b"cluster_settings";
/// The key of the cluster id in the `settings` table.
pub(crate) const CLUSTER_ID: &[u8] = b"cluster_id";
/// The key of the access policy revision in the `settings` table: the log
/// index of the last access change (absent: none yet).
pub(crate) const ACCESS_REVISION: &[u8] = b"access_revision";
/// The size of the session table as bounded by `session_table_bytes_max`.
pub(crate) const SESSION_BYTES: &[u8] = b"session_bytes";

pub(crate) const LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const MEMBERSHIP: &[u8] = b"membership";
/// The leader timestamp of the last applied command: the clock queries see.
pub(crate) const LAST_TIMESTAMP: &[u8] = b"last_timestamp_ms";
/// The state format version ([`super::format::STATE_FORMAT`]).
pub(crate) const FORMAT: &[u8] = b"format";
/// The release that last opened the state for writing.
pub(crate) const WRITTEN_BY: &[u8] = b"written_by";

/// What one module stores: its keys and their bytes (key plus value, in the
/// module's own key space).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleUsage {
    pub bytes: u64,
    pub keys: u64,
}

/// The size a stored entry counts for in its module's usage.
pub(crate) fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// A deployed module, as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    pub name: String,
    /// 1 at first deploy, +1 at each upgrade.
    pub version: u64,
    pub hash: ModuleHash,
    pub size_bytes: u64,
    /// The log index and leader timestamp of the deploy that made this version.
    pub deployed_index: u64,
    pub deployed_timestamp_ms: i64,
    pub limits: ModuleLimits,
    /// Which optional exports the module has, as validated at deploy.
    pub has_query: bool,
    pub has_init: bool,
    pub has_migrate: bool,
}

/// The key range holding module `name`'s KV state, optionally narrowed to keys
/// in `[start, end)` of the module's own key space.
pub fn module_key_range(name: &str, start: &[u8], end: Option<&[u8]>) -> Range<Vec<u8>> {
    debug_assert!(
        !name.as_bytes().contains(&0),
        "module names never contain a zero byte"
    );
    let mut low = Vec::with_capacity(name.len() + 1 + start.len());
    low.extend_from_slice(name.as_bytes());
    low.push(0);
    low.extend_from_slice(start);
    let mut high = Vec::with_capacity(name.len() + 1 + end.map_or(0, <[u8]>::len));
    high.extend_from_slice(name.as_bytes());
    match end {
        Some(end) => {
            high.push(0);
            high.extend_from_slice(end);
        }
        // Just past every `name, 0x00, …` key.
        None => high.push(1),
    }
    low..high
}

/// The KV table key of `key` in module `name`.
pub(crate) fn module_key(name: &str, key: &[u8]) -> Vec<u8> {
    module_key_range(name, key, None).start
}

/// A fingerprint of the replicated state at some applied index, comparable
/// across nodes (as `etcdctl endpoint hashkv`): equal states, equal digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateDigest(pub [u8; 32]);

impl std::fmt::Display for StateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Feeds one table record into a digest, framed so that record boundaries
/// cannot be shifted to forge a collision.
pub(crate) fn digest_record(hasher: &mut Sha256, table: u8, key: &[u8], value: &[u8]) {
    hasher.update([table]);
    hasher.update((key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update((value.len() as u64).to_le_bytes());
    hasher.update(value);
}

/// Digests the replicated tables as seen by one read transaction.
pub(crate) fn digest(txn: &redb::ReadTransaction) -> Result<StateDigest, redb::Error> {
    let mut hasher = Sha256::new();
    hasher.update(b"wasmraft state digest v1");
    for (id, table) in DIGESTED_TABLES {
        let table = txn.open_table(table)?;
        for item in table.iter()? {
            let (key, value) = item?;
            digest_record(&mut hasher, id, key.value(), value.value());
        }
    }
    Ok(StateDigest(hasher.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_ranges_do_not_overlap() {
        let a = module_key_range("a", b"", None);
        let ab = module_key_range("ab", b"", None);
        // Every key of module "a" sorts before every key of module "ab".
        assert!(a.end <= ab.start);
        assert!(module_key("a", b"\xff\xff").as_slice() < a.end.as_slice());
        assert!(module_key("a", b"").as_slice() >= a.start.as_slice());
        let narrowed = module_key_range("a", b"k1", Some(b"k3"));
        assert!(module_key("a", b"k2") >= narrowed.start && module_key("a", b"k2") < narrowed.end);
        assert!(module_key("a", b"k3") >= narrowed.end);
    }
}
