//! The check behind the `kv_overlay` fuzz target of `fuzz/`: the key-value
//! overlay a guest drives through its imports (stored entries under the
//! call's own writes), against a plain map. It takes any bytes and panics
//! only when the overlay breaks its contract, so the same function replays
//! the committed corpus as an ordinary test on stable Rust.

use std::collections::BTreeMap;

use crate::kv::{KvEntries, MemoryKv, ScanBudget, WriteSet, scan_page};

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
