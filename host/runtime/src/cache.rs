//! Compiled-module caches: on disk across restarts (checksummed, atomic writes) and in memory (LRU by count).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// Opens every cache file, so a stray file is never mistaken for one of ours.
const MAGIC: &[u8; 8] = b"WRCWASM1";
/// Magic, then the sha256 of the serialized module, then the module.
const HEADER_BYTES: usize = MAGIC.len() + 32;

/// Compiled modules under `dir`, one file per (module hash, engine fingerprint):
/// `<hex sha256>-<fingerprint>.cwasm`. A different engine never sees another's files.
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    fingerprint: String,
}

/// Distinguishes concurrent temporary files of one process.
static TEMPORARY_COUNTER: AtomicU64 = AtomicU64::new(0);

impl DiskCache {
    pub(crate) fn open(dir: &Path, fingerprint: &str) -> std::io::Result<DiskCache> {
        fs::create_dir_all(dir)?;
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            fingerprint: fingerprint.to_string(),
        })
    }

    pub(crate) fn path(&self, hash: &[u8; 32]) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", hex::encode(hash), self.fingerprint))
    }

    /// The cached module, `Ok(None)` when there is none, `Err` when the file exists but
    /// cannot be trusted (it is then removed, and the caller recompiles).
    pub(crate) fn load(&self, engine: &Engine, hash: &[u8; 32]) -> Result<Option<Module>, String> {
        let path = self.path(hash);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("reading {}: {error}", path.display())),
        };
        let result = verified_payload(&bytes)
            .and_then(|payload| deserialize(engine, payload).map_err(|error| error.to_string()));
        if result.is_err() {
            // Best effort: a file we cannot trust is recompiled and rewritten anyway.
            let _ = fs::remove_file(&path);
        }
        result.map(Some)
    }

    /// Writes the module atomically: a temporary file, fsync, then rename.
    pub(crate) fn store(&self, hash: &[u8; 32], module: &Module) -> Result<(), String> {
        let payload = module.serialize().map_err(|error| error.to_string())?;
        let path = self.path(hash);
        let temporary = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            hex::encode(hash),
            std::process::id(),
            TEMPORARY_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&temporary)?;
            file.write_all(MAGIC)?;
            file.write_all(&Sha256::digest(&payload))?;
            file.write_all(&payload)?;
            file.sync_all()?;
            fs::rename(&temporary, &path)
        };
        write().map_err(|error| {
            let _ = fs::remove_file(&temporary);
            format!("writing {}: {error}", path.display())
        })
    }
}

/// The serialized module inside a cache file, if its magic and checksum hold.
fn verified_payload(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < HEADER_BYTES || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a wasmraft cache file".to_string());
    }
    let (checksum, payload) = bytes[MAGIC.len()..].split_at(32);
    if Sha256::digest(payload).as_slice() != checksum {
        return Err("checksum mismatch: the file is corrupted".to_string());
    }
    Ok(payload)
}

/// Deserializes a compiled module: the one use of `unsafe` wasmtime requires of the host.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, payload: &[u8]) -> wasmtime::Result<Module> {
    // SAFETY: `Module::deserialize` trusts its input to be a module serialized by this
    // wasmtime, because it maps it as executable code. These bytes are exactly that:
    // this process family wrote them with `Module::serialize` into a file named by the
    // engine fingerprint (wasmtime's `precompile_compatibility_hash`, so only an
    // identical engine reads it), and the sha256 stored in its header, checked just
    // before on these very bytes (read into memory, so the file cannot change between
    // check and use), rules out torn or corrupted writes. wasmtime additionally checks
    // its own version and configuration header and fails rather than misload.
    unsafe { Module::deserialize(engine, payload) }
}

/// Compiled modules in memory, at most `capacity`, least recently used evicted first.
#[derive(Debug)]
pub(crate) struct MemoryCache<V> {
    capacity: usize,
    clock: u64,
    entries: HashMap<[u8; 32], (V, u64)>,
}

impl<V: Clone> MemoryCache<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        MemoryCache {
            capacity,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    pub(crate) fn get(&mut self, hash: &[u8; 32]) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(hash).map(|(value, used)| {
            *used = clock;
            value.clone()
        })
    }

    pub(crate) fn insert(&mut self, hash: [u8; 32], value: V) {
        self.clock += 1;
        if !self.entries.contains_key(&hash) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(hash, (value, self.clock));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cache_evicts_least_recently_used() {
        let mut cache = MemoryCache::new(2);
        cache.insert([1; 32], "one");
        cache.insert([2; 32], "two");
        assert_eq!(cache.get(&[1; 32]), Some("one"));
        cache.insert([3; 32], "three");
        assert_eq!(cache.get(&[2; 32]), None);
        assert_eq!(cache.get(&[1; 32]), Some("one"));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn payload_checksum_detects_corruption() {
        let payload = b"compiled";
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&Sha256::digest(payload));
        file.extend_from_slice(payload);
        assert_eq!(verified_payload(&file), Ok(&payload[..]));
        let last = file.len() - 1;
        file[last] ^= 1;
        assert!(verified_payload(&file).unwrap_err().contains("checksum"));
        assert!(verified_payload(b"short").is_err());
    }
}
