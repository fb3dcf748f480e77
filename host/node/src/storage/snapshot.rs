//! The snapshot file format: the state database's tables as a stream of
//! records, written and read in one pass with bounded memory, sealed by a
//! sha256 of everything before it.
//!
//! ```text
//! magic      8 bytes  "WRSNAP01"
//! record*    table: u8 (< 0xff), key_len: u32 LE, key, value_len: u32 LE, value
//! end        0xff, sha256 of every byte before it (magic included): 32 bytes
//! ```
//!
//! A reader hands out records as it goes and reports a checksum mismatch only
//! at the end, so whoever consumes the records must stage them somewhere it
//! can throw away (the state machine writes them into a new database file and
//! swaps it in only when the whole file verified).

use std::io::{self, BufReader, BufWriter, Read, Write};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"WRSNAP01";
const END: u8 = 0xff;
/// The largest key or value a snapshot may carry; a larger length in a file
/// is corruption, not a reason to allocate gigabytes.
pub const RECORD_PART_BYTES_MAX: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("not a wasmraft snapshot (bad magic bytes)")]
    BadMagic,
    #[error("snapshot is truncated")]
    Truncated,
    #[error("snapshot checksum mismatch: the file is corrupt")]
    ChecksumMismatch,
    #[error("snapshot record of {0} bytes exceeds the {RECORD_PART_BYTES_MAX}-byte limit")]
    RecordTooLarge(u64),
    #[error("snapshot has data after its end marker")]
    TrailingData,
}

/// Writes a snapshot stream.
#[derive(Debug)]
pub struct SnapshotFileWriter<W: Write> {
    out: BufWriter<W>,
    hasher: Sha256,
    records: u64,
}

impl<W: Write> SnapshotFileWriter<W> {
    pub fn new(inner: W) -> Result<Self, SnapshotError> {
        let mut writer = Self {
            out: BufWriter::with_capacity(256 * 1024, inner),
            hasher: Sha256::new(),
            records: 0,
        };
        writer.put(MAGIC)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)?;
        Ok(())
    }

    pub fn record(&mut self, table: u8, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        assert_ne!(table, END, "table id 0xff is the end marker");
        for part in [key, value] {
            if part.len() as u64 > u64::from(RECORD_PART_BYTES_MAX) {
                return Err(SnapshotError::RecordTooLarge(part.len() as u64));
            }
        }
        self.put(&[table])?;
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(value)?;
        self.records += 1;
        Ok(())
    }

    /// Seals the stream and returns the inner writer (flushed, not synced).
    pub fn finish(mut self) -> Result<(W, u64), SnapshotError> {
        self.put(&[END])?;
        let digest = self.hasher.clone().finalize();
        self.out.write_all(&digest)?;
        let inner = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok((inner, self.records))
    }
}

/// One record of a snapshot stream.
#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub table: u8,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Reads a snapshot stream record by record.
#[derive(Debug)]
pub struct SnapshotFileReader<R: Read> {
    input: BufReader<R>,
    hasher: Sha256,
    finished: bool,
}

impl<R: Read> SnapshotFileReader<R> {
    pub fn new(inner: R) -> Result<Self, SnapshotError> {
        let mut reader = Self {
            input: BufReader::with_capacity(256 * 1024, inner),
            hasher: Sha256::new(),
            finished: false,
        };
        let mut magic = [0u8; 8];
        reader.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        Ok(reader)
    }

    fn take(&mut self, buffer: &mut [u8]) -> Result<(), SnapshotError> {
        self.input.read_exact(buffer).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => SnapshotError::Truncated,
            _ => SnapshotError::Io(e),
        })?;
        self.hasher.update(&*buffer);
        Ok(())
    }

    fn take_part(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let mut length = [0u8; 4];
        self.take(&mut length)?;
        let length = u32::from_le_bytes(length);
        if length > RECORD_PART_BYTES_MAX {
            return Err(SnapshotError::RecordTooLarge(u64::from(length)));
        }
        let mut part = vec![0u8; length as usize];
        self.take(&mut part)?;
        Ok(part)
    }

    /// The next record, or `None` after the end marker once the checksum and
    /// the absence of trailing bytes were verified.
    pub fn next_record(&mut self) -> Result<Option<SnapshotRecord>, SnapshotError> {
        if self.finished {
            return Ok(None);
        }
        let mut table = [0u8; 1];
        self.take(&mut table)?;
        if table[0] == END {
            let expected = self.hasher.clone().finalize();
            let mut found = [0u8; 32];
            self.input
                .read_exact(&mut found)
                .map_err(|_| SnapshotError::Truncated)?;
            if found[..] != expected[..] {
                return Err(SnapshotError::ChecksumMismatch);
            }
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra)? != 0 {
                return Err(SnapshotError::TrailingData);
            }
            self.finished = true;
            return Ok(None);
        }
        let key = self.take_part()?;
        let value = self.take_part()?;
        Ok(Some(SnapshotRecord {
            table: table[0],
            key,
            value,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut writer = SnapshotFileWriter::new(Vec::new()).unwrap();
        writer.record(1, b"a", b"one").unwrap();
        writer.record(2, b"", &[7u8; 1000]).unwrap();
        writer.finish().unwrap().0
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<SnapshotRecord>, SnapshotError> {
        let mut reader = SnapshotFileReader::new(bytes)?;
        let mut records = Vec::new();
        while let Some(record) = reader.next_record()? {
            records.push(record);
        }
        Ok(records)
    }

    #[test]
    fn round_trip() {
        let records = read_all(&sample()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].key, b"a");
        assert_eq!(records[1].value.len(), 1000);
    }

    #[test]
    fn every_corruption_is_detected() {
        let good = sample();
        // Flip each byte in turn: every single-byte change must be caught.
        for position in 0..good.len() {
            let mut bad = good.clone();
            bad[position] ^= 0x5a;
            assert!(read_all(&bad).is_err(), "flip at {position} went unnoticed");
        }
        for length in 0..good.len() {
            assert!(
                read_all(&good[..length]).is_err(),
                "truncation at {length} went unnoticed"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(read_all(&long), Err(SnapshotError::TrailingData)));
    }
}
