//! The client-session table of exactly-once invokes (Raft dissertation,
//! §6.3): sessions are opened through the log, each remembers its last
//! sequence and that command's response, and the table is bounded in bytes
//! and per caller, with deterministic least-recently-used eviction.
//!
//! Four structures, all updated in the apply transaction:
//! - `sessions`: `caller, 0x00, client id` → [`SessionRecord`];
//! - `sessions_by_use`: `last used index, session key` → empty, the global
//!   eviction order;
//! - `sessions_by_caller`: `caller, 0x00, last used index, client id` →
//!   empty, each caller's own eviction order; and `caller, 0x00` → the
//!   number of sessions the caller holds (it sorts before its entries);
//! - the `session_bytes` meta record: the table's size as bounded, the sum
//!   of every session's key and encoded record.
//!
//! A caller past `sessions_per_caller_max` forgets its own oldest session,
//! never another caller's; past `session_table_bytes_max` the oldest of all
//! go. A forgotten session's client gets `SessionExpired`, never a second
//! apply.

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::apply::decode;
use super::state::{META, SESSION_BYTES, SESSIONS, SESSIONS_BY_CALLER, SESSIONS_BY_USE};
use crate::command::{ClusterSettings, Response, codec};

/// The last command applied in one session, kept to answer its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// The last sequence applied; 0 for a session opened and not used yet.
    pub sequence: u64,
    /// The log index that last used the session, for eviction.
    pub last_used_index: u64,
    pub response: Response,
}

/// One open session as found in the table.
pub(crate) struct Session {
    key: Vec<u8>,
    /// The bytes the session counts for, as last recorded.
    bytes: u64,
    pub record: SessionRecord,
}

/// The `sessions` key of a caller's client id. Callers and client ids never
/// contain a zero byte (`command::check`).
pub(crate) fn session_key(caller: &str, client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(caller.len() + 1 + client_id.len());
    key.extend_from_slice(caller.as_bytes());
    key.push(0);
    key.extend_from_slice(client_id.as_bytes());
    key
}

fn use_key(index: u64, session_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + session_key.len());
    key.extend_from_slice(&index.to_be_bytes());
    key.extend_from_slice(session_key);
    key
}

/// `caller, 0x00, index, client id` from a session key and an index.
pub(crate) fn caller_use_key(index: u64, session_key: &[u8]) -> Vec<u8> {
    let caller = caller_of(session_key);
    let client_id = session_key.get(caller.len() + 1..).unwrap_or_default();
    let mut key = Vec::with_capacity(session_key.len() + 8);
    key.extend_from_slice(caller);
    key.push(0);
    key.extend_from_slice(&index.to_be_bytes());
    key.extend_from_slice(client_id);
    key
}

/// The session key back from a `sessions_by_caller` key.
fn session_key_of_caller_use(key: &[u8]) -> Option<Vec<u8>> {
    let split = key.iter().position(|byte| *byte == 0)?;
    let client_id = key.get(split + 1 + 8..)?;
    let mut session = Vec::with_capacity(split + 1 + client_id.len());
    session.extend_from_slice(&key[..=split]);
    session.extend_from_slice(client_id);
    Some(session)
}

/// The `sessions_by_caller` key of a caller's session count.
fn count_key(caller: &[u8]) -> Vec<u8> {
    let mut key = caller.to_vec();
    key.push(0);
    key
}

fn caller_count(txn: &WriteTransaction, caller: &[u8]) -> Result<u64, redb::Error> {
    match txn
        .open_table(SESSIONS_BY_CALLER)?
        .get(count_key(caller).as_slice())?
    {
        Some(bytes) => decode(bytes.value()),
        None => Ok(0),
    }
}

fn set_caller_count(txn: &WriteTransaction, caller: &[u8], count: u64) -> Result<(), redb::Error> {
    let mut table = txn.open_table(SESSIONS_BY_CALLER)?;
    if count == 0 {
        table.remove(count_key(caller).as_slice())?;
    } else {
        table.insert(
            count_key(caller).as_slice(),
            codec::encode(&count).as_slice(),
        )?;
    }
    Ok(())
}

/// The caller part of a session key.
fn caller_of(session_key: &[u8]) -> &[u8] {
    let split = session_key
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(session_key.len());
    &session_key[..split]
}

fn record_bytes(key: &[u8], encoded: &[u8]) -> u64 {
    (key.len() + encoded.len()) as u64
}

fn table_bytes(txn: &WriteTransaction) -> Result<u64, redb::Error> {
    match txn.open_table(META)?.get(SESSION_BYTES)? {
        Some(bytes) => decode(bytes.value()),
        None => Ok(0),
    }
}

fn set_table_bytes(txn: &WriteTransaction, bytes: u64) -> Result<(), redb::Error> {
    txn.open_table(META)?
        .insert(SESSION_BYTES, codec::encode(&bytes).as_slice())?;
    Ok(())
}

/// The open session of `caller` named `client_id`, if the table has it.
pub(crate) fn find(
    txn: &WriteTransaction,
    caller: &str,
    client_id: &str,
) -> Result<Option<Session>, redb::Error> {
    let key = session_key(caller, client_id);
    let sessions = txn.open_table(SESSIONS)?;
    let Some(encoded) = sessions.get(key.as_slice())? else {
        return Ok(None);
    };
    let encoded = encoded.value();
    Ok(Some(Session {
        bytes: record_bytes(&key, encoded),
        record: decode(encoded)?,
        key,
    }))
}

/// Opens the session `client_id` of `caller`, forgetting the caller's oldest
/// ones past its bound. Names are unique to their log position
/// (`command::check::session_name`), so the session is new.
pub(crate) fn open(
    txn: &WriteTransaction,
    settings: &ClusterSettings,
    index: u64,
    caller: &str,
    client_id: &str,
) -> Result<Response, redb::Error> {
    if find(txn, caller, client_id)?.is_some() {
        return Ok(Response::SessionOpened {
            client_id: client_id.to_owned(),
        });
    }
    // Room for one more of the caller's sessions: its oldest go first.
    let held = caller_count(txn, caller.as_bytes())?;
    let surplus = (held + 1).saturating_sub(settings.sessions_per_caller_max);
    if surplus > 0 {
        let count_key = count_key(caller.as_bytes());
        let mut end = caller.as_bytes().to_vec();
        end.push(1);
        let oldest: Vec<Vec<u8>> = {
            let by_caller = txn.open_table(SESSIONS_BY_CALLER)?;
            let mut oldest = Vec::new();
            let range = by_caller.range::<&[u8]>((
                std::ops::Bound::Excluded(count_key.as_slice()),
                std::ops::Bound::Excluded(end.as_slice()),
            ))?;
            for item in range.take(usize::try_from(surplus).unwrap_or(usize::MAX)) {
                let (key, _) = item?;
                oldest.push(key.value().to_vec());
            }
            oldest
        };
        for caller_use in oldest {
            let Some(key) = session_key_of_caller_use(&caller_use) else {
                return Err(redb::Error::Corrupted(
                    "a sessions_by_caller key without its index".into(),
                ));
            };
            forget(txn, &key)?;
        }
    }
    let session = Session {
        key: session_key(caller, client_id),
        bytes: 0,
        record: SessionRecord {
            sequence: 0,
            last_used_index: index,
            response: Response::Empty,
        },
    };
    let record = session.record.clone();
    write(txn, settings, session, record, false)?;
    Ok(Response::SessionOpened {
        client_id: client_id.to_owned(),
    })
}

/// Records `record` as `session`'s last command.
pub(crate) fn record(
    txn: &WriteTransaction,
    settings: &ClusterSettings,
    session: Session,
    record: SessionRecord,
) -> Result<(), redb::Error> {
    write(txn, settings, session, record, true)
}

fn write(
    txn: &WriteTransaction,
    settings: &ClusterSettings,
    session: Session,
    record: SessionRecord,
    existed: bool,
) -> Result<(), redb::Error> {
    let encoded = codec::encode(&record);
    let bytes = record_bytes(&session.key, &encoded);
    {
        let mut by_use = txn.open_table(SESSIONS_BY_USE)?;
        let mut by_caller = txn.open_table(SESSIONS_BY_CALLER)?;
        if existed {
            let index = session.record.last_used_index;
            by_use.remove(use_key(index, &session.key).as_slice())?;
            by_caller.remove(caller_use_key(index, &session.key).as_slice())?;
        }
        by_use.insert(
            use_key(record.last_used_index, &session.key).as_slice(),
            [].as_slice(),
        )?;
        by_caller.insert(
            caller_use_key(record.last_used_index, &session.key).as_slice(),
            [].as_slice(),
        )?;
        txn.open_table(SESSIONS)?
            .insert(session.key.as_slice(), encoded.as_slice())?;
    }
    if !existed {
        let caller = caller_of(&session.key);
        let count = caller_count(txn, caller)?;
        set_caller_count(txn, caller, count + 1)?;
    }
    let total = table_bytes(txn)?.saturating_sub(session.bytes) + bytes;
    set_table_bytes(txn, total)?;
    evict(txn, settings.session_table_bytes_max, &session.key)
}

/// Forgets the least recently used sessions while the table is over
/// `bytes_max`, never `keep` (the session just written: the settings make
/// room for several of the largest records).
fn evict(txn: &WriteTransaction, bytes_max: u64, keep: &[u8]) -> Result<(), redb::Error> {
    while table_bytes(txn)? > bytes_max {
        let Some(oldest) = least_recently_used(txn, keep)? else {
            break;
        };
        forget(txn, &oldest)?;
    }
    Ok(())
}

/// The key of the least recently used session other than `keep`.
fn least_recently_used(
    txn: &WriteTransaction,
    keep: &[u8],
) -> Result<Option<Vec<u8>>, redb::Error> {
    let by_use = txn.open_table(SESSIONS_BY_USE)?;
    for item in by_use.iter()? {
        let (key, _) = item?;
        let session = key.value().get(8..).unwrap_or_default();
        if session != keep {
            return Ok(Some(session.to_vec()));
        }
    }
    Ok(None)
}

/// Forgets the least recently used sessions while the table holds more than
/// `count_max`, never the session of `caller` and `client_id`.
pub(crate) fn evict_to_count(
    txn: &WriteTransaction,
    count_max: u64,
    caller: &str,
    client_id: &str,
) -> Result<(), redb::Error> {
    use redb::ReadableTableMetadata;
    let keep = session_key(caller, client_id);
    while txn.open_table(SESSIONS)?.len()? > count_max {
        let Some(oldest) = least_recently_used(txn, &keep)? else {
            break;
        };
        forget(txn, &oldest)?;
    }
    Ok(())
}

/// Removes one session from every structure.
fn forget(txn: &WriteTransaction, key: &[u8]) -> Result<(), redb::Error> {
    let Some(encoded) = txn
        .open_table(SESSIONS)?
        .remove(key)?
        .map(|v| v.value().to_vec())
    else {
        return Ok(());
    };
    let record: SessionRecord = decode(&encoded)?;
    txn.open_table(SESSIONS_BY_USE)?
        .remove(use_key(record.last_used_index, key).as_slice())?;
    txn.open_table(SESSIONS_BY_CALLER)?
        .remove(caller_use_key(record.last_used_index, key).as_slice())?;
    let caller = caller_of(key);
    let count = caller_count(txn, caller)?;
    set_caller_count(txn, caller, count.saturating_sub(1))?;
    let total = table_bytes(txn)?.saturating_sub(record_bytes(key, &encoded));
    set_table_bytes(txn, total)
}

/// Builds `sessions_by_caller` and the byte count of a table written by
/// state format 1, which had neither.
pub(crate) fn index_format_1(txn: &WriteTransaction) -> Result<(), redb::Error> {
    let mut total = 0u64;
    let mut entries = Vec::new();
    let mut counts = std::collections::BTreeMap::<Vec<u8>, u64>::new();
    {
        let sessions = txn.open_table(SESSIONS)?;
        for item in sessions.iter()? {
            let (key, encoded) = item?;
            let record: SessionRecord = decode(encoded.value())?;
            total += record_bytes(key.value(), encoded.value());
            entries.push(caller_use_key(record.last_used_index, key.value()));
            *counts.entry(caller_of(key.value()).to_vec()).or_default() += 1;
        }
    }
    {
        let mut by_caller = txn.open_table(SESSIONS_BY_CALLER)?;
        for key in entries {
            by_caller.insert(key.as_slice(), [].as_slice())?;
        }
    }
    for (caller, count) in counts {
        set_caller_count(txn, &caller, count)?;
    }
    set_table_bytes(txn, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_use_keys_round_trip() {
        let key = session_key("alice", "client-7");
        let caller_use = caller_use_key(42, &key);
        assert!(caller_use.starts_with(b"alice\0"));
        assert_eq!(session_key_of_caller_use(&caller_use), Some(key));
        // A caller's keys sort by index, so the first is its oldest session.
        assert!(caller_use_key(41, &session_key("alice", "z")) < caller_use);
    }
}
