//! Snapshots of the projections, kept in sled beside the index: derived
//! data a restart loads instead of replaying the whole log.
//!
//! The store knows nothing of what a snapshot holds: it keeps opaque bytes
//! under the sequence they were taken at, with the hash of that entry, so
//! that a loader can check the snapshot belongs to this log before using
//! it (`Resume` in `Store::open_resuming`). A snapshot is written whole in
//! one sled batch (chunks, then the record that names them), checked with
//! a CRC32C on every read, and only the latest `KEEP` are kept. sled does
//! not fsync (sled #1452): after a power loss a snapshot may be missing or
//! damaged, and the loader then takes an older one or replays the log.

use phb_chain::Hash;

/// How many snapshots are kept (the newest first).
pub const KEEP: usize = 2;
/// Snapshots are stored in chunks of this many bytes (sled handles large
/// values as separate blobs; bounded chunks keep each value small).
const CHUNK_BYTES: usize = 1 << 20;
/// The largest snapshot accepted (so a damaged record cannot make the
/// loader allocate without bound).
pub const MAX_SNAPSHOT_BYTES: u64 = 16 << 30;

const TREE: &str = "snapshots-v1";
const KEY_RECORD: u8 = b'r';
const KEY_CHUNK: u8 = b'c';

/// The handle the engine keeps: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Snapshots {
    tree: sled::Tree,
}

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// The sequence of the last entry it includes.
    pub sequence: u64,
    /// That entry's hash.
    pub entry_hash: Hash,
    /// The snapshot's bytes.
    pub bytes: Vec<u8>,
}

fn record_key(sequence: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = KEY_RECORD;
    k[1..].copy_from_slice(&sequence.to_be_bytes());
    k
}

fn chunk_key(sequence: u64, chunk: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = KEY_CHUNK;
    k[1..9].copy_from_slice(&sequence.to_be_bytes());
    k[9..].copy_from_slice(&chunk.to_be_bytes());
    k
}

/// `entry_hash ‖ u64be(len) ‖ u32be(crc32c(bytes)) ‖ u32be(chunks)`.
fn record(entry_hash: &Hash, bytes: &[u8], chunks: u32) -> Vec<u8> {
    let mut r = Vec::with_capacity(48);
    r.extend_from_slice(entry_hash);
    r.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    r.extend_from_slice(&crc32c::crc32c(bytes).to_be_bytes());
    r.extend_from_slice(&chunks.to_be_bytes());
    r
}

impl Snapshots {
    pub(crate) fn open(db: &sled::Db) -> Result<Snapshots, sled::Error> {
        Ok(Snapshots {
            tree: db.open_tree(TREE)?,
        })
    }

    /// Keeps `bytes` as the snapshot at `sequence` (whose entry hash is
    /// `entry_hash`), then drops all but the newest `KEEP`.
    pub fn put(&self, sequence: u64, entry_hash: &Hash, bytes: &[u8]) -> Result<(), sled::Error> {
        assert!(sequence > 0, "a snapshot is taken after at least one entry");
        assert!((bytes.len() as u64) <= MAX_SNAPSHOT_BYTES);
        let mut batch = sled::Batch::default();
        let mut chunks = 0u32;
        for (i, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            batch.insert(&chunk_key(sequence, i as u32), chunk);
            chunks += 1;
        }
        batch.insert(&record_key(sequence), record(entry_hash, bytes, chunks));
        self.tree.apply_batch(batch)?;
        let kept: Vec<u64> = self.sequences()?;
        for old in kept.iter().rev().skip(KEEP) {
            self.remove(*old)?;
        }
        self.tree.flush()?;
        Ok(())
    }

    /// The sequences snapshots are kept at, oldest first.
    pub fn sequences(&self) -> Result<Vec<u64>, sled::Error> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([KEY_RECORD]) {
            let (k, _) = item?;
            if let Some(s) = k.get(1..9).and_then(|b| b.try_into().ok()) {
                out.push(u64::from_be_bytes(s));
            }
        }
        Ok(out)
    }

    fn remove(&self, sequence: u64) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        batch.remove(&record_key(sequence));
        let mut prefix = vec![KEY_CHUNK];
        prefix.extend_from_slice(&sequence.to_be_bytes());
        for item in self.tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            batch.remove(k);
        }
        self.tree.apply_batch(batch)
    }

    /// The snapshot kept at `sequence`, if it is there and whole: `Ok(None)`
    /// if it is missing or fails its checks (a snapshot is derived data: a
    /// damaged one is skipped, never an error that stops a start).
    pub fn get(&self, sequence: u64) -> Result<Option<StoredSnapshot>, sled::Error> {
        let Some(r) = self.tree.get(record_key(sequence))? else {
            return Ok(None);
        };
        let damaged = |why: &str| {
            tracing::warn!(sequence, problem = why, "skipping a damaged snapshot");
            Ok(None)
        };
        if r.len() != 48 {
            return damaged("malformed record");
        }
        let entry_hash: Hash = r[..32].try_into().expect("32 bytes");
        let len = u64::from_be_bytes(r[32..40].try_into().expect("8 bytes"));
        let crc = u32::from_be_bytes(r[40..44].try_into().expect("4 bytes"));
        let chunks = u32::from_be_bytes(r[44..48].try_into().expect("4 bytes"));
        if len > MAX_SNAPSHOT_BYTES || u64::from(chunks) != len.div_ceil(CHUNK_BYTES as u64) {
            return damaged("impossible length");
        }
        let mut bytes = Vec::with_capacity(len as usize);
        for i in 0..chunks {
            match self.tree.get(chunk_key(sequence, i))? {
                Some(c) if c.len() <= CHUNK_BYTES => bytes.extend_from_slice(&c),
                _ => return damaged("a chunk is missing"),
            }
        }
        if bytes.len() as u64 != len || crc32c::crc32c(&bytes) != crc {
            return damaged("checksum mismatch");
        }
        Ok(Some(StoredSnapshot {
            sequence,
            entry_hash,
            bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_whole_checked_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let s = Snapshots::open(&db).unwrap();
        let big: Vec<u8> = (0..(3 * CHUNK_BYTES + 5))
            .map(|i| (i % 251) as u8)
            .collect();
        for seq in [10u64, 20, 30] {
            s.put(seq, &[seq as u8; 32], &big).unwrap();
        }
        assert_eq!(s.sequences().unwrap(), vec![20, 30]);
        let got = s.get(30).unwrap().unwrap();
        assert_eq!(
            (got.sequence, got.entry_hash, got.bytes),
            (30, [30u8; 32], big.clone())
        );
        assert_eq!(s.get(10).unwrap(), None);
        // A damaged chunk is skipped, not trusted.
        s.tree.insert(chunk_key(30, 1), vec![0u8; 10]).unwrap();
        assert_eq!(s.get(30).unwrap(), None);
        assert!(s.get(20).unwrap().is_some());
    }
}
