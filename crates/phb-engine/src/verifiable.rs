//! The verifiable log: the RFC 9162 Merkle tree over the log's entry hashes
//! and the signed checkpoints (C2SP tlog-checkpoint) the ledger key issues
//! (docs/audit.md). The tree's nodes are kept by the store beside the index
//! (derived data, written with each group, rebuilt from the log if lost);
//! this holds its right edge and reads proofs from the stored nodes. The
//! checkpoints are kept, in `checkpoints.notes`, because a partner who
//! holds one can prove the log was never rewritten — and so can the server
//! itself: at start every kept checkpoint must match the tree, or the start
//! is refused (entries were removed or rewritten).

use phb_chain::merkle::{
    consistency_plan, fold_right, inclusion_plan, root_nodes, Frontier, NodeId, ProofError,
};
use phb_chain::note::{self, Checkpoint};
use phb_domain::Hash;
use phb_store::{LogReader, StoreError};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Why a root or proof could not be read from the stored tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The sizes asked for do not make a proof.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// Reading a node failed.
    #[error("reading the tree: {0}")]
    Store(#[from] StoreError),
    /// A size beyond the log.
    #[error("tree size {size} is beyond the log's {held} entries")]
    Beyond {
        /// The size asked for.
        size: u64,
        /// The log's length.
        held: u64,
    },
    /// A node the tree must hold is not stored (the index failed after a
    /// write; the server refuses writes until a restart rebuilds it).
    #[error("Merkle node (level {}, index {}) is not stored", .0.level, .0.index)]
    Missing(NodeId),
}

/// The tree and the checkpoints, as one unit the writer appends to.
pub struct Verifiable {
    frontier: Frontier,
    nodes: Arc<LogReader>,
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
    /// The tree whose right edge is `frontier` (of the whole log) and whose
    /// nodes `nodes` reads, and the checkpoints kept in `data_dir`, each
    /// checked against it. A torn last record (a crash while appending) is
    /// cut off.
    pub fn open(
        data_dir: &Path,
        frontier: Frontier,
        nodes: Arc<LogReader>,
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
        let mut v = Verifiable {
            frontier,
            nodes,
            key,
            origin,
            path: path.clone(),
            file,
            notes: BTreeMap::new(),
            every: every.max(1),
        };
        let origin = v.origin.clone();
        let verifying = v.key.verifying_key();
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
            if c.size > v.size() {
                return Err(CheckpointError::LogShorter {
                    size: c.size,
                    held: v.size(),
                });
            }
            let actual = v.root_at(c.size).map_err(|e| bad(e.to_string()))?;
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
            v.file.set_len(at as u64).map_err(io)?;
            v.file.sync_all().map_err(io)?;
        }
        v.notes = notes;
        Ok(v)
    }

    /// The number of entries in the tree (the committed head).
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Moves the tree on to the store's frontier after a committed group.
    pub fn advance(&mut self, frontier: &Frontier) {
        assert!(
            frontier.size() >= self.frontier.size(),
            "the tree never shrinks"
        );
        self.frontier.clone_from(frontier);
    }

    fn node(&self, id: NodeId) -> Result<Hash, TreeError> {
        self.nodes.node(id)?.ok_or(TreeError::Missing(id))
    }

    /// The root of the tree of the first `size` entries (RFC 9162 MTH).
    pub fn root_at(&self, size: u64) -> Result<Hash, TreeError> {
        if size == self.size() {
            return Ok(self.frontier.root());
        }
        self.check_size(size)?;
        let nodes = root_nodes(size)?
            .into_iter()
            .map(|id| self.node(id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(fold_right(&nodes))
    }

    /// The inclusion proof of leaf `index` (entry `index + 1`) in the tree
    /// of `size` entries, from the stored nodes.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        self.check_size(size)?;
        inclusion_plan(index, size)?.resolve(|id| self.node(id))
    }

    /// The consistency proof between the trees of `m` and `n` entries.
    pub fn consistency_proof(&self, m: u64, n: u64) -> Result<Vec<Hash>, TreeError> {
        self.check_size(n)?;
        consistency_plan(m, n)?.resolve(|id| self.node(id))
    }

    fn check_size(&self, size: u64) -> Result<(), TreeError> {
        if size > self.size() {
            return Err(TreeError::Beyond {
                size,
                held: self.size(),
            });
        }
        Ok(())
    }

    /// The size of the latest checkpoint (0 if none).
    pub fn latest_size(&self) -> u64 {
        self.notes.keys().next_back().copied().unwrap_or(0)
    }

    /// True if `every` entries have been appended since the latest
    /// checkpoint.
    pub fn due(&self) -> bool {
        self.size() >= self.latest_size() + self.every
    }

    /// The checkpoint issued at `size`, if any.
    pub fn at(&self, size: u64) -> Option<&str> {
        self.notes.get(&size).map(String::as_str)
    }

    /// The latest checkpoint, issued now at the current size if the latest
    /// is older (or there is none): signed, appended to the file and
    /// fsync'd before it is returned. An empty log has no checkpoint.
    pub fn latest(&mut self) -> Result<Option<(u64, String)>, CheckpointError> {
        let size = self.size();
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
        let size = self.size();
        if size == 0 || self.notes.contains_key(&size) {
            return Ok(());
        }
        let c = Checkpoint {
            origin: self.origin.clone(),
            size,
            root: self.frontier.root(),
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
        phb_metrics::global().checkpoints.inc();
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
