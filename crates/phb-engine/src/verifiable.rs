//! The verifiable log: the RFC 9162 Merkle tree over the log's entry hashes
//! and the signed checkpoints (C2SP tlog-checkpoint) the ledger key issues
//! (docs/audit.md). Both are derived from the log and rebuilt at every
//! start; the checkpoints are also kept, in `checkpoints.notes`, because a
//! partner who holds one can prove the log was never rewritten — and so can
//! the server itself: at start every kept checkpoint must match the tree
//! rebuilt from the log, or the start is refused (entries were removed or
//! rewritten).

use phb_chain::merkle::MemoryTree;
use phb_chain::note::{self, Checkpoint};
use phb_domain::Hash;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The file the checkpoints are kept in, in the data directory: each note
/// as a 4-byte big-endian length and its UTF-8 bytes.
pub const CHECKPOINTS_FILE: &str = "checkpoints.notes";
/// The longest note accepted from the file.
const MAX_NOTE_BYTES: u32 = 4096;

/// Why the kept checkpoints do not fit the log.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("checkpoints file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A kept note does not open under the ledger key, or is not a
    /// checkpoint of this ledger.
    #[error("checkpoint {index} in {path} is not a checkpoint of this ledger signed by its ledger key: {reason}")]
    BadNote {
        /// The file.
        path: PathBuf,
        /// Its position in the file (0-based).
        index: usize,
        /// Why.
        reason: String,
    },
    /// A checkpoint states more entries than the log holds: entries the
    /// ledger once signed for are gone.
    #[error("checkpoint {size} was issued for {size} entries, but the log holds only {held}: signed-for entries are missing (restore the log from a backup; see docs/operations.md)")]
    LogShorter {
        /// The checkpoint's size.
        size: u64,
        /// The log's length.
        held: u64,
    },
    /// A checkpoint's root differs from the log's: history was rewritten.
    #[error("checkpoint {size} states root {stated}, but the log's first {size} entries give {actual}: the log was rewritten after the checkpoint was issued")]
    RootMismatch {
        /// The size.
        size: u64,
        /// The root it states (hex).
        stated: String,
        /// The log's root (hex).
        actual: String,
    },
    /// Signing failed (a bad origin name).
    #[error("cannot sign a checkpoint: {0}")]
    Sign(String),
}

/// The tree and the checkpoints, as one unit the writer appends to.
pub struct Verifiable {
    tree: MemoryTree,
    key: ed25519_dalek::SigningKey,
    origin: String,
    path: PathBuf,
    file: File,
    notes: BTreeMap<u64, String>,
    every: u64,
}

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

impl Verifiable {
    /// The tree `tree` (of the whole log) and the checkpoints kept in
    /// `data_dir`, each checked against it. A torn last record (a crash
    /// while appending) is cut off.
    pub fn open(
        data_dir: &Path,
        tree: MemoryTree,
        origin: String,
        key: ed25519_dalek::SigningKey,
        every: u64,
    ) -> Result<Verifiable, CheckpointError> {
        let path = data_dir.join(CHECKPOINTS_FILE);
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut notes = BTreeMap::new();
        let mut at = 0usize;
        let verifying = key.verifying_key();
        while at + 4 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            let end = at + 4 + len as usize;
            if len > MAX_NOTE_BYTES || end > bytes.len() {
                break;
            }
            let bad = |reason: String| CheckpointError::BadNote {
                path: path.clone(),
                index: notes.len(),
                reason,
            };
            let text = std::str::from_utf8(&bytes[at + 4..end])
                .map_err(|e| bad(e.to_string()))?
                .to_string();
            let c = note::parse_and_verify(&text, &origin, &verifying, &origin)
                .map_err(|e| bad(e.to_string()))?;
            if c.size > tree.size() {
                return Err(CheckpointError::LogShorter {
                    size: c.size,
                    held: tree.size(),
                });
            }
            let actual = tree.root_at(c.size).map_err(|e| bad(e.to_string()))?;
            if actual != c.root {
                return Err(CheckpointError::RootMismatch {
                    size: c.size,
                    stated: hex(&c.root),
                    actual: hex(&actual),
                });
            }
            notes.insert(c.size, text);
            at = end;
        }
        if at != bytes.len() {
            tracing::warn!(path = %path.display(), kept = at, dropped = bytes.len() - at, "cutting a torn checkpoint record off the end");
            file.set_len(at as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        Ok(Verifiable {
            tree,
            key,
            origin,
            path,
            file,
            notes,
            every: every.max(1),
        })
    }

    /// The tree.
    pub fn tree(&self) -> &MemoryTree {
        &self.tree
    }

    /// Appends the next entry's hash.
    pub fn append(&mut self, entry_hash: &Hash) {
        self.tree
            .append(entry_hash)
            .expect("the log holds fewer than 2^63 entries");
    }

    /// The size of the latest checkpoint (0 if none).
    pub fn latest_size(&self) -> u64 {
        self.notes.keys().next_back().copied().unwrap_or(0)
    }

    /// True if `every` entries have been appended since the latest
    /// checkpoint.
    pub fn due(&self) -> bool {
        self.tree.size() >= self.latest_size() + self.every
    }

    /// The checkpoint issued at `size`, if any.
    pub fn at(&self, size: u64) -> Option<&str> {
        self.notes.get(&size).map(String::as_str)
    }

    /// The latest checkpoint, issued now at the current size if the latest
    /// is older (or there is none): signed, appended to the file and
    /// fsync'd before it is returned. An empty log has no checkpoint.
    pub fn latest(&mut self) -> Result<Option<(u64, String)>, CheckpointError> {
        let size = self.tree.size();
        if size == 0 {
            return Ok(None);
        }
        if self.latest_size() < size {
            self.issue()?;
        }
        Ok(self.notes.get(&size).map(|n| (size, n.clone())))
    }

    /// Signs and keeps a checkpoint at the current size.
    pub fn issue(&mut self) -> Result<(), CheckpointError> {
        let size = self.tree.size();
        if size == 0 || self.notes.contains_key(&size) {
            return Ok(());
        }
        let c = Checkpoint {
            origin: self.origin.clone(),
            size,
            root: self.tree.root(),
        };
        let text = note::sign_checkpoint(&self.key, &self.origin, &c)
            .map_err(|e| CheckpointError::Sign(e.to_string()))?;
        let mut record = Vec::with_capacity(4 + text.len());
        record.extend_from_slice(&(text.len() as u32).to_be_bytes());
        record.extend_from_slice(text.as_bytes());
        let io = |source| CheckpointError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&record).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.notes.insert(size, text);
        Ok(())
    }

    /// The ledger key as a C2SP verifier key.
    pub fn verifier_key(&self) -> String {
        note::vkey(&self.origin, &self.key.verifying_key()).unwrap_or_default()
    }

    /// The checkpoints' origin line (and key name).
    pub fn origin(&self) -> &str {
        &self.origin
    }
}
