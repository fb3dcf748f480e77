//! The module's key-value store: [`Kv`], with byte and JSON accessors and a paged,
//! ordered [`Scan`].
//!
//! Keys are 1 to [`KEY_MAX_BYTES`] bytes, values at most [`VALUE_MAX_BYTES`]; the host
//! traps past either (so does the test harness). Reads see the call's own earlier
//! writes; the writes commit only if the call succeeds.

use alloc::vec::Vec;
use core::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result, abi};

/// The longest key the host accepts, in bytes (`ABI.md`, "Limits").
pub const KEY_MAX_BYTES: usize = 4096;
/// The largest value the host accepts, in bytes.
pub const VALUE_MAX_BYTES: usize = 1 << 20;
/// The most bytes of keys and values one call may write (its resulting write set).
pub const WRITE_SET_MAX_BYTES: usize = 16 << 20;
/// The most entries one `kv_scan` page holds.
pub const SCAN_PAGE_MAX_ENTRIES: u32 = 1024;
/// The entries per page a [`Scan`] asks for unless told otherwise.
pub const SCAN_PAGE_DEFAULT_ENTRIES: u32 = 64;

/// The module's key-value store, scoped to the module by the host.
///
/// An entry point receives `&mut Kv` where it may write (`apply`, `init`, `migrate`)
/// and `&Kv` where it may not (`query`), so a write in a query does not compile.
pub struct Kv {
    /// Only the SDK makes one: holding a `&mut Kv` is the permission to write.
    _private: (),
}

impl fmt::Debug for Kv {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Kv")
    }
}

impl Kv {
    pub(crate) const fn new() -> Self {
        Kv { _private: () }
    }

    /// The value under `key`, or `None`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Vec<u8>> {
        abi::kv_get(key.as_ref())
    }

    /// Whether `key` has a value (it costs a `get`).
    pub fn contains(&self, key: impl AsRef<[u8]>) -> bool {
        self.get(key).is_some()
    }

    /// Writes `value` under `key`, replacing any value.
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        abi::kv_set(key.as_ref(), value.as_ref());
    }

    /// Deletes `key`; deleting an absent key is fine.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        abi::kv_delete(key.as_ref());
    }

    /// The JSON value under `key`, decoded, or `None`. A value that does not decode as
    /// `T` is an error naming the key.
    pub fn get_json<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        let key = key.as_ref();
        match self.get(key) {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|error| {
                Error::new(format_args!(
                    "stored value under key {:?} does not decode: {error}",
                    KeyDisplay(key)
                ))
            }),
        }
    }

    /// Writes `value` as JSON under `key`.
    pub fn set_json<T: Serialize + ?Sized>(
        &mut self,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<()> {
        let key = key.as_ref();
        let bytes = serde_json::to_vec(value).map_err(|error| {
            Error::new(format_args!(
                "value for key {:?} does not encode: {error}",
                KeyDisplay(key)
            ))
        })?;
        self.set(key, bytes);
        Ok(())
    }

    /// Every entry whose key starts with `prefix`, in ascending key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Scan<'_> {
        let prefix = prefix.as_ref();
        Scan::new(prefix.to_vec(), prefix_end(prefix))
    }

    /// Every entry with `start <= key < end` (`end: None` for no upper bound), in
    /// ascending key order.
    pub fn scan_range(&self, start: impl AsRef<[u8]>, end: Option<&[u8]>) -> Scan<'_> {
        Scan::new(start.as_ref().to_vec(), end.map(<[u8]>::to_vec))
    }

    /// Every entry of the store, in ascending key order.
    pub fn scan_all(&self) -> Scan<'_> {
        Scan::new(Vec::new(), None)
    }
}

/// The first key after every key that starts with `prefix`, or `None` when there is
/// none (an empty prefix, or one of only `0xff` bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Shows a key as text when it is UTF-8, as bytes otherwise.
struct KeyDisplay<'a>(&'a [u8]);

impl fmt::Debug for KeyDisplay<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(self.0) {
            Ok(text) => fmt::Debug::fmt(text, formatter),
            Err(_) => fmt::Debug::fmt(self.0, formatter),
        }
    }
}

/// An ordered scan over a key range, fetched from the host a page at a time: an
/// iterator of `(key, value)`.
///
/// It borrows the [`Kv`], so the store cannot be written while a scan is under way.
/// Each page costs one host call (and its fuel); [`Scan::page_size`] trades calls for
/// memory.
pub struct Scan<'kv> {
    /// Where the next page starts: the range start, then the last key seen plus a zero
    /// byte (`ABI.md`, "The `kv_scan` page").
    next_start: Vec<u8>,
    end: Option<Vec<u8>>,
    page_size: u32,
    /// The current page, as the host encoded it, and the offset of its next entry.
    page: Vec<u8>,
    offset: usize,
    /// Whether the host has entries after the current page.
    more: bool,
    started: bool,
    _kv: core::marker::PhantomData<&'kv Kv>,
}

impl fmt::Debug for Scan<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Scan")
            .field("next_start", &KeyDisplay(&self.next_start))
            .field("end", &self.end.as_deref().map(KeyDisplay))
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl Scan<'_> {
    fn new(start: Vec<u8>, end: Option<Vec<u8>>) -> Self {
        Scan {
            next_start: start,
            end,
            page_size: SCAN_PAGE_DEFAULT_ENTRIES,
            page: Vec::new(),
            offset: 0,
            more: true,
            started: false,
            _kv: core::marker::PhantomData,
        }
    }

    /// Entries per host call, clamped to `1..=1024` (default 64).
    #[must_use]
    pub fn page_size(mut self, entries: u32) -> Self {
        self.page_size = entries.clamp(1, SCAN_PAGE_MAX_ENTRIES);
        self
    }

    fn fetch_page(&mut self) {
        self.page = abi::kv_scan(&self.next_start, self.end.as_deref(), self.page_size);
        self.started = true;
        match self.page.first() {
            Some(&more) => {
                self.more = more == 1;
                self.offset = 1;
            }
            None => malformed_page(),
        }
    }

    fn read_chunk(&mut self) -> &[u8] {
        let Some(length_bytes) = self.page.get(self.offset..self.offset + 4) else {
            malformed_page()
        };
        let mut length = [0_u8; 4];
        length.copy_from_slice(length_bytes);
        let start = self.offset + 4;
        let end = start + u32::from_le_bytes(length) as usize;
        if end > self.page.len() {
            malformed_page()
        }
        self.offset = end;
        &self.page[start..end]
    }
}

fn malformed_page() -> ! {
    abi::abort(b"wasmraft-guest: the host returned a malformed kv_scan page")
}

impl Iterator for Scan<'_> {
    type Item = (Vec<u8>, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started || self.offset >= self.page.len() {
            if !self.more {
                return None;
            }
            self.fetch_page();
            if self.offset >= self.page.len() {
                // An empty page ends the range whatever its flag says.
                self.more = false;
                return None;
            }
        }
        let key = self.read_chunk().to_vec();
        let value = self.read_chunk().to_vec();
        if self.offset >= self.page.len() && self.more {
            self.next_start.clear();
            self.next_start.extend_from_slice(&key);
            self.next_start.push(0);
        }
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte_that_can_be() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
