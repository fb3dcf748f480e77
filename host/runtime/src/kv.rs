//! The key-value view a call runs against: the caller's [`KvSource`] under the call's own [`WriteSet`].
//!
//! Everything here is plain data and pure functions: the read-your-writes overlay and
//! the `kv_scan` page encoding are tested without wasmtime.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::fmt;
use std::ops::Bound;

use super::abi;

/// Entries of a scan, in ascending key order.
pub type KvEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// The committed state of one module, as the caller stores it (redb under Raft).
///
/// Implementations read a consistent snapshot: the same call must see the same data
/// on every replica. Keys compare as byte strings.
pub trait KvSource {
    /// The value under `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Up to `limit` entries with `start <= key < end` (no upper bound when `end` is
    /// `None`; callers never pass `end <= start`), in ascending key order, stopping
    /// after the first entry that brings the keys and values returned to `bytes_max`
    /// bytes or more. Fewer than `limit` entries holding fewer than `bytes_max` bytes
    /// means the range is exhausted.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<KvEntries, KvError>;
}

/// A failure of the [`KvSource`] itself (storage I/O or corruption).
///
/// Not a property of the guest: under Raft it is fatal for the node, because a replica
/// that cannot read its state cannot apply deterministically. The caller decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvError {
    message: String,
}

impl KvError {
    pub fn new(message: impl Into<String>) -> KvError {
        KvError {
            message: message.into(),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key-value source failed: {}", self.message)
    }
}

impl std::error::Error for KvError {}

/// The writes of one call: key → `Some(value)` for a set, `None` for a delete.
///
/// Iterates in ascending key order. A [`CallReport`](super::CallReport) carries a
/// non-empty one only when the call succeeded: a call commits all its writes or none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSet {
    entries: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Keys plus values currently held, bounded by [`abi::WRITE_SET_BYTES_MAX`].
    bytes: usize,
}

/// Why a write was refused; the host turns it into a trap with this message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WriteSetFull;

impl WriteSet {
    pub fn new() -> WriteSet {
        WriteSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of distinct keys written or deleted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of keys and values held (what the 16 MiB write-set limit counts).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// `None`: the call did not touch `key`; `Some(None)`: deleted; `Some(Some(v))`: set.
    pub fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.entries.get(key).map(|value| value.as_deref())
    }

    /// Entries in ascending key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_slice(), value.as_deref()))
    }

    pub fn into_map(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.entries
    }

    pub(crate) fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), WriteSetFull> {
        self.put(key, Some(value))
    }

    pub(crate) fn delete(&mut self, key: &[u8]) -> Result<(), WriteSetFull> {
        self.put(key, None)
    }

    fn put(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), WriteSetFull> {
        let old = match self.entries.get(key) {
            Some(old) => key.len() + old.as_ref().map_or(0, Vec::len),
            None => 0,
        };
        let new = key.len() + value.map_or(0, <[u8]>::len);
        let bytes = self.bytes - old + new;
        if bytes > abi::WRITE_SET_BYTES_MAX {
            return Err(WriteSetFull);
        }
        self.bytes = bytes;
        self.entries.insert(key.to_vec(), value.map(<[u8]>::to_vec));
        Ok(())
    }

    /// The entries in `[start, end)`; empty when `end <= start`.
    fn range<'a>(
        &'a self,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> btree_map::Range<'a, Vec<u8>, Option<Vec<u8>>> {
        if end.is_some_and(|end| end <= start) {
            // `BTreeMap::range` panics on an inverted range; `[start, start)` is
            // the empty one it accepts.
            return self
                .entries
                .range::<[u8], _>((Bound::Included(start), Bound::Excluded(start)));
        }
        let upper = match end {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.entries
            .range::<[u8], _>((Bound::Included(start), upper))
    }
}

impl IntoIterator for WriteSet {
    type Item = (Vec<u8>, Option<Vec<u8>>);
    type IntoIter = btree_map::IntoIter<Vec<u8>, Option<Vec<u8>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// The fuel a scan may spend, charged for every entry it walks.
#[derive(Debug)]
pub(crate) struct ScanBudget {
    left: u64,
    spent: u64,
}

impl ScanBudget {
    /// `left`: the call's remaining fuel (`u64::MAX` when fuel is not metered).
    pub(crate) fn new(left: u64) -> ScanBudget {
        ScanBudget { left, spent: 0 }
    }

    /// The fuel spent so far.
    pub(crate) fn spent(&self) -> u64 {
        self.spent
    }

    /// Charges one walked entry: its base cost and one unit per key and value byte.
    fn walk(&mut self, key: usize, value: usize) -> Result<(), ScanError> {
        let cost = abi::SCAN_ENTRY_FUEL
            .saturating_add(key as u64)
            .saturating_add(value as u64);
        if cost > self.left {
            self.spent = self.spent.saturating_add(self.left);
            self.left = 0;
            return Err(ScanError::OutOfFuel);
        }
        self.left -= cost;
        self.spent += cost;
        Ok(())
    }
}

/// Why a scan stopped without a page.
#[derive(Debug)]
pub(crate) enum ScanError {
    /// The scan walked more entries than its fuel pays for.
    OutOfFuel,
    Kv(KvError),
}

impl From<KvError> for ScanError {
    fn from(error: KvError) -> Self {
        ScanError::Kv(error)
    }
}

/// Reads `key` through the overlay: the call's own write wins over the base.
pub(crate) fn get(
    base: &dyn KvSource,
    writes: &WriteSet,
    key: &[u8],
) -> Result<Option<Vec<u8>>, KvError> {
    match writes.get(key) {
        Some(value) => Ok(value.map(<[u8]>::to_vec)),
        None => base.get(key),
    }
}

/// Scans `[start, end)` through the overlay and encodes the ABI page: `more: u8`, then
/// per entry `key_len: u32 LE`, key, `value_len: u32 LE`, value.
///
/// `more` is 1 exactly when another entry exists in the range after the last one in the
/// page (cut by `limit` or by the 4 MiB page size). Base keys the call deleted are
/// hidden; further base pages are read until the page is full or the base is exhausted.
///
/// Every entry walked is charged to `budget` — base entries as they are read, the
/// call's own writes (deletes included) as they are passed — so the work of a scan is
/// paid for whatever the page ends up holding. An empty range (`end <= start`) is an
/// empty page.
pub(crate) fn scan_page(
    base: &dyn KvSource,
    writes: &WriteSet,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    budget: &mut ScanBudget,
) -> Result<Vec<u8>, ScanError> {
    let mut page = vec![0u8];
    if end.is_some_and(|end| end <= start) {
        return Ok(page);
    }
    let limit = limit.clamp(1, abi::SCAN_LIMIT_MAX);
    let mut count = 0usize;
    let mut base_stream = BaseStream::new(base, start, end, limit + 1);
    let mut overlay = writes.range(start, end).peekable();
    loop {
        // The next entry of the merged view, if any.
        let next: Option<(Vec<u8>, Vec<u8>)> = loop {
            let from_overlay = {
                let base_key = base_stream.peek_key(budget)?;
                match (base_key, overlay.peek()) {
                    (None, None) => break None,
                    (Some(_), None) => false,
                    (None, Some(_)) => true,
                    (Some(base_key), Some((overlay_key, _))) => {
                        match overlay_key.as_slice().cmp(base_key) {
                            Ordering::Less => true,
                            Ordering::Greater => false,
                            Ordering::Equal => {
                                // The call's own write shadows the base entry.
                                base_stream.pop();
                                true
                            }
                        }
                    }
                }
            };
            if from_overlay {
                match overlay.next() {
                    Some((key, Some(value))) => {
                        budget.walk(key.len(), value.len())?;
                        break Some((key.clone(), value.clone()));
                    }
                    // A delete hides the key; look further, paying for the step.
                    Some((key, None)) => budget.walk(key.len(), 0)?,
                    None => {}
                }
            } else if let Some(entry) = base_stream.pop() {
                break Some(entry);
            }
        };
        let Some((key, value)) = next else {
            return Ok(page);
        };
        let entry_bytes = 8 + key.len() + value.len();
        if count == limit || (count > 0 && page.len() + entry_bytes > abi::SCAN_PAGE_BYTES_MAX) {
            page[0] = 1;
            return Ok(page);
        }
        push_entry(&mut page, &key, &value);
        count += 1;
    }
}

fn push_entry(page: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    // Keys are at most 4 KiB + 1 and values at most 1 MiB: both fit a u32.
    page.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
    page.extend_from_slice(key);
    page.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    page.extend_from_slice(value);
}

/// The base source read lazily, one page of `fetch` entries at a time.
struct BaseStream<'a> {
    base: &'a dyn KvSource,
    end: Option<&'a [u8]>,
    fetch: usize,
    /// Where the next base page starts; `None` once the base range is exhausted.
    cursor: Option<Vec<u8>>,
    buffered: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
}

impl<'a> BaseStream<'a> {
    fn new(base: &'a dyn KvSource, start: &[u8], end: Option<&'a [u8]>, fetch: usize) -> Self {
        BaseStream {
            base,
            end,
            fetch,
            cursor: Some(start.to_vec()),
            buffered: std::collections::VecDeque::new(),
        }
    }

    fn peek_key(&mut self, budget: &mut ScanBudget) -> Result<Option<&[u8]>, ScanError> {
        if self.buffered.is_empty()
            && let Some(cursor) = self.cursor.take()
        {
            let entries =
                self.base
                    .scan(&cursor, self.end, self.fetch, abi::SCAN_PAGE_BYTES_MAX)?;
            let mut bytes = 0usize;
            for (key, value) in &entries {
                budget.walk(key.len(), value.len())?;
                bytes += key.len() + value.len();
            }
            if (entries.len() >= self.fetch || bytes >= abi::SCAN_PAGE_BYTES_MAX)
                && let Some((last, _)) = entries.last()
            {
                let mut next = last.clone();
                next.push(0);
                self.cursor = Some(next);
            }
            self.buffered.extend(entries);
        }
        Ok(self.buffered.front().map(|(key, _)| key.as_slice()))
    }

    fn pop(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        self.buffered.pop_front()
    }
}

/// A KV source in memory: for tests, benchmarks and tools that run a module
/// without a node. [`MemoryKv::commit`] applies a successful call's writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryKv(pub BTreeMap<Vec<u8>, Vec<u8>>);

impl MemoryKv {
    pub fn new() -> MemoryKv {
        MemoryKv::default()
    }

    /// Applies a write set: sets and deletes, in key order.
    pub fn commit(&mut self, writes: WriteSet) {
        for (key, value) in writes {
            match value {
                Some(value) => self.0.insert(key, value),
                None => self.0.remove(&key),
            };
        }
    }
}

impl KvSource for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.0.get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<KvEntries, KvError> {
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for (key, value) in self
            .0
            .range::<[u8], _>((Bound::Included(start), upper))
            .take(limit)
        {
            if bytes >= bytes_max {
                break;
            }
            bytes += key.len() + value.len();
            entries.push((key.clone(), value.clone()));
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use MemoryKv as Base;

    /// A scan with all the fuel it wants.
    fn scan_page(
        base: &Base,
        writes: &WriteSet,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<u8>, ScanError> {
        super::scan_page(
            base,
            writes,
            start,
            end,
            limit,
            &mut ScanBudget::new(u64::MAX),
        )
    }

    #[test]
    fn an_inverted_or_empty_range_is_an_empty_page() {
        let base = base(&["a", "b", "c"]);
        let mut writes = WriteSet::new();
        writes.set(b"b", b"new").unwrap();
        for (start, end) in [(&b"c"[..], &b"a"[..]), (b"b", b"b"), (b"zz", b"")] {
            assert_eq!(
                keys(&scan_page(&base, &writes, start, Some(end), 10).unwrap()),
                (false, vec![])
            );
        }
    }

    #[test]
    fn every_entry_walked_is_charged_deletes_included() {
        let names: Vec<String> = (0..1000).map(|i| format!("k{i:04}")).collect();
        let base = Base(
            names
                .iter()
                .map(|k| (k.as_bytes().to_vec(), b"v".to_vec()))
                .collect(),
        );
        let mut writes = WriteSet::new();
        for name in &names[..999] {
            writes.delete(name.as_bytes()).unwrap();
        }
        let mut budget = ScanBudget::new(u64::MAX);
        let page = super::scan_page(&base, &writes, b"", None, 1, &mut budget).unwrap();
        assert_eq!(keys(&page), (false, vec!["k0999".to_string()]));
        // 1,000 stored entries read and 999 deletes passed over, each with its bytes.
        let entry = abi::SCAN_ENTRY_FUEL;
        assert_eq!(budget.spent(), 1000 * (entry + 5 + 1) + 999 * (entry + 5));
        // With less fuel than the walk needs, the scan stops as out of fuel.
        let mut short = ScanBudget::new(budget.spent() - 1);
        assert!(matches!(
            super::scan_page(&base, &writes, b"", None, 1, &mut short),
            Err(ScanError::OutOfFuel)
        ));
    }

    fn base(keys: &[&str]) -> Base {
        Base(
            keys.iter()
                .map(|k| (k.as_bytes().to_vec(), b"base".to_vec()))
                .collect(),
        )
    }

    fn decode(page: &[u8]) -> (bool, Vec<(String, String)>) {
        let mut entries = Vec::new();
        let mut rest = &page[1..];
        while !rest.is_empty() {
            let key_len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let key = String::from_utf8(rest[4..4 + key_len].to_vec()).unwrap();
            rest = &rest[4 + key_len..];
            let value_len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let value = String::from_utf8(rest[4..4 + value_len].to_vec()).unwrap();
            rest = &rest[4 + value_len..];
            entries.push((key, value));
        }
        (page[0] == 1, entries)
    }

    fn keys(page: &[u8]) -> (bool, Vec<String>) {
        let (more, entries) = decode(page);
        (more, entries.into_iter().map(|(k, _)| k).collect())
    }

    #[test]
    fn overlay_merges_sets_and_hides_deletes() {
        let base = base(&["a", "b", "c", "d"]);
        let mut writes = WriteSet::new();
        writes.delete(b"b").unwrap();
        writes.set(b"bb", b"new").unwrap();
        writes.set(b"c", b"over").unwrap();
        let (more, entries) = decode(&scan_page(&base, &writes, b"", None, 10).unwrap());
        assert!(!more);
        let expected = [("a", "base"), ("bb", "new"), ("c", "over"), ("d", "base")];
        let expected: Vec<_> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(entries, expected);
    }

    #[test]
    fn more_is_set_only_when_an_entry_remains() {
        let base = base(&["a", "b", "c"]);
        let writes = WriteSet::new();
        assert_eq!(
            keys(&scan_page(&base, &writes, b"", None, 2).unwrap()),
            (true, vec!["a".into(), "b".into()])
        );
        assert_eq!(
            keys(&scan_page(&base, &writes, b"", None, 3).unwrap()),
            (false, vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(
            keys(&scan_page(&base, &writes, b"b", Some(b"c"), 1).unwrap()),
            (false, vec!["b".into()])
        );
    }

    #[test]
    fn deletes_spanning_several_base_pages_are_skipped() {
        let names: Vec<String> = (0..50).map(|i| format!("k{i:02}")).collect();
        let base = Base(
            names
                .iter()
                .map(|k| (k.as_bytes().to_vec(), b"v".to_vec()))
                .collect(),
        );
        let mut writes = WriteSet::new();
        for name in &names[..45] {
            writes.delete(name.as_bytes()).unwrap();
        }
        let (more, found) = keys(&scan_page(&base, &writes, b"", None, 2).unwrap());
        assert_eq!(
            (more, found),
            (true, vec!["k45".to_string(), "k46".to_string()])
        );
        let (more, found) = keys(&scan_page(&base, &writes, b"k48", None, 2).unwrap());
        assert_eq!(
            (more, found),
            (false, vec!["k48".to_string(), "k49".to_string()])
        );
    }

    #[test]
    fn write_set_counts_current_bytes_and_refuses_past_the_limit() {
        let mut writes = WriteSet::new();
        let value = vec![7u8; abi::VALUE_BYTES_MAX];
        writes.set(b"k", &value).unwrap();
        writes.set(b"k", b"small").unwrap();
        assert_eq!(writes.bytes(), 6);
        for i in 0..15u8 {
            writes.set(&[i, 1], &value).unwrap();
        }
        assert_eq!(writes.set(b"last", &value), Err(WriteSetFull));
        writes.delete(b"k").unwrap();
        assert_eq!(writes.get(b"k"), Some(None));
    }
}
