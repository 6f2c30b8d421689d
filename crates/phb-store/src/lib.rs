//! Durable storage for phb-ledger.
//!
//! * `log/ledger.log` — the append-only record of every entry, checksummed
//!   and fdatasync'd before acknowledgement. The source of truth.
//! * `index/` — a sled database mapping event ids to (sequence, digest) and
//!   sequences to file offsets. It is derived from the log: written after
//!   the log is durable, re-built from the log on open if it is behind, and
//!   thrown away and re-built if sled cannot open it. sled's own `flush`
//!   does not fsync (sled #1452), which is why it never holds the truth.
//!
//! Knows nothing of gRPC or of budget rules; it only checks framing,
//! checksums and sequence continuity.
#![deny(missing_docs)]

pub mod dirlock;
mod indexer;
pub mod logfile;
pub mod shared;
pub mod snapshots;

pub use dirlock::{is_lock_conflict, DataDirLock, LockError};
pub use shared::{Confirmed, Lead, SharedLog, SharedLogError};
pub use snapshots::{Snapshots, StoredSnapshot};

use logfile::{encode_record, read_record, LogFile, ReadOutcome, HEADER_LEN};
use phb_chain::merkle::{root_nodes, Frontier, NodeId};
use phb_chain::{Hash, LogEntry, Refusal};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The most entries one `append` may carry (a group commit).
pub const MAX_GROUP_ENTRIES: usize = 4096;
/// sled cache bound (memory can reach several times this: sled #1309).
pub const INDEX_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The sled tree the index lives in. `v1` keyed event ids alone; `v2`
/// keys them by (signer, event id) and records refusals. An index in an
/// older tree is dropped and `v2` built from the log.
const INDEX_TREE: &str = "v2";
const OLD_INDEX_TREES: &[&str] = &["v1"];
const KEY_EVENT: u8 = b'e';
const KEY_SEQ: u8 = b's';
/// A Merkle tree node (a complete subtree): `n ‖ u8(level) ‖ u64be(index)`
/// → its 32-byte hash. Written in the same batch as the entries' index
/// records, so the index's watermark covers the tree's nodes too.
const KEY_NODE: u8 = b'n';
const KEY_INDEXED_THROUGH: &[u8] = b"m/indexed_through";
/// Records the caller derives from committed entries and keeps here
/// instead of in memory (the engine's statement rows): opaque keys and
/// values, written on the index thread, in their own tree of the index's
/// database so they share its fate (a rebuilt index starts without them).
const DERIVED_TREE: &str = "derived-v1";
/// The derived records' watermark: every record of every entry up to it
/// is stored. Callers' keys never start with 0xFF (see `put_derived`).
const KEY_DERIVED_THROUGH: &[u8] = b"\xffderived_through";
/// At most this many derived records in one `put_derived` call.
pub const MAX_DERIVED_RECORDS: usize = 65_536;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An IO call failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The log is damaged somewhere other than a torn tail.
    #[error("log corrupted at {}offset {offset}: {detail}", sequence.map(|s| format!("sequence {s}, ")).unwrap_or_default())]
    Corrupt {
        /// The sequence expected at the damaged place, if known.
        sequence: Option<u64>,
        /// Byte offset in ledger.log.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The index database failed.
    #[error("index: {0}")]
    Index(#[from] sled::Error),
    /// An earlier fsync, cut-back of a failed write, or index operation
    /// failed; the process must restart to recover from disk.
    #[error(
        "the log refuses writes after a storage failure it cannot undo (a failed fsync, cut-back of a failed write, or index operation); restart the server to recover"
    )]
    Poisoned,
    /// A snapshot's resume point does not fit this log and index; nothing
    /// was changed. The caller opens again without it.
    #[error("cannot resume at the snapshot: {0}")]
    Resume(String),
    /// The caller's visitor refused an entry during open.
    #[error("entry at sequence {sequence}: {detail}")]
    Rejected {
        /// Where.
        sequence: u64,
        /// Why.
        detail: String,
    },
}

/// An index hit for an idempotency key (signer, event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedEvent {
    /// Where it was written.
    pub sequence: u64,
    /// Its idempotency digest (`SignedEvent::digest`).
    pub digest: Hash,
    /// The entry hash it was written with.
    pub entry_hash: Hash,
    /// `Some` if the entry records a refusal.
    pub refusal: Option<Refusal>,
}

/// How to open the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Rebuild an index that records more entries than the log holds,
    /// instead of refusing to start. Such an index is evidence that
    /// committed entries were lost or removed; an operator sets this only
    /// after investigating (docs/operations.md).
    pub allow_index_rebuild: bool,
}

/// Where a start resumes instead of reading the log from its start: the
/// last entry a snapshot of the caller's state includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Its sequence.
    pub sequence: u64,
    /// Its entry hash, as the snapshot recorded it: the log must hold the
    /// same entry there.
    pub entry_hash: Hash,
}

/// What `Store::open_resuming` calls while it opens.
pub trait Replay {
    /// Offered the kept snapshots before the log is read: the resume point
    /// of the one loaded, or `None` to read the whole log. `derived_through`
    /// is the derived records' watermark (`Store::derived_through`): a
    /// snapshot that relies on derived records beyond it does not fit.
    fn resume(&mut self, snapshots: &Snapshots, derived_through: u64) -> Option<Resume>;
    /// The resume point did not fit the log (why): forget the state loaded
    /// from the snapshot; every entry is visited from the first.
    fn resume_refused(&mut self, why: &str);
    /// Each entry after the resume point, in order; an `Err` refuses the
    /// open.
    fn visit(&mut self, entry: &LogEntry) -> Result<(), String>;
}

/// What `open` found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// The sequence the open resumed after (entries up to it were neither
    /// read nor visited), if it resumed at a snapshot.
    pub resumed_at: Option<u64>,
    /// Entries in the log.
    pub entries: u64,
    /// Bytes of torn tail cut off (an unacknowledged, partly written group).
    pub truncated_bytes: u64,
    /// Entries re-indexed because the index was behind.
    pub reindexed: u64,
    /// True if the index was unreadable and rebuilt from scratch.
    pub index_rebuilt: bool,
}

/// The log plus its index.
pub struct Store {
    log: LogFile,
    index: sled::Tree,
    /// The caller's derived records (`put_derived`).
    derived: sled::Tree,
    /// The Merkle tree's right edge at `head_sequence`.
    frontier: Frontier,
    snapshots: Snapshots,
    _db: sled::Db,
    log_path: PathBuf,
    head_sequence: u64,
    /// Writes the index behind the acknowledgement (`indexer.rs`); its
    /// `failed` is set when indexing failed after the log was durable.
    indexer: indexer::Indexer,
    /// Set when an index lookup failed: sled's IO errors are sticky, and
    /// without lookups duplicates cannot be detected, so no more writes
    /// until a restart re-checks (and if need be rebuilds) the index.
    index_failed: std::cell::Cell<bool>,
}

/// One entry to append, with the event id it indexes under.
pub struct Append<'a> {
    /// The entry (sequence must follow the store's head).
    pub entry: &'a LogEntry,
    /// Its event id.
    pub event_id: &'a str,
}

fn seq_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = KEY_SEQ;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `'e' ‖ signer_id ‖ 0x00 ‖ event_id`. Ids never contain 0x00 (signer
/// ids are registered organisation ids or "root"; event ids are checked),
/// so the key names one (signer, event id) pair.
fn node_key(id: NodeId) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = KEY_NODE;
    k[1] = id.level;
    k[2..].copy_from_slice(&id.index.to_be_bytes());
    k
}

/// The number of complete subtrees (stored nodes) in a tree of `size`
/// leaves: `size` leaves, `size / 2` pairs, and so on.
fn node_count(size: u64) -> u64 {
    (0..64).map(|level| size >> level).sum()
}

fn put_nodes(batch: &mut sled::Batch, nodes: &[(NodeId, Hash)]) {
    for (id, hash) in nodes {
        batch.insert(&node_key(*id), &hash[..]);
    }
}

fn event_key(signer_id: &str, event_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(signer_id.len() + event_id.len() + 2);
    k.push(KEY_EVENT);
    k.extend_from_slice(signer_id.as_bytes());
    k.push(0);
    k.extend_from_slice(event_id.as_bytes());
    k
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovering a torn tail, and
    /// calls `visit` with every entry in order (the caller replays them).
    ///
    /// The index is checked against the log as it is read: every entry it
    /// claims must be there with the same offset, digest and hash, and it
    /// must hold nothing else. An index that cannot be opened or read, or
    /// that disagrees with the log, is derived data gone bad: it is deleted
    /// and rebuilt from the log rather than trusted or refused. Only an
    /// index whose watermark records entries beyond the log's end refuses
    /// the start, whether or not it agrees with the entries the log still
    /// has (committed entries are missing, or the log was rewritten), unless
    /// `options.allow_index_rebuild`.
    pub fn open(
        dir: &Path,
        options: OpenOptions,
        visit: &mut dyn FnMut(&LogEntry) -> Result<(), String>,
    ) -> Result<(Store, OpenReport), StoreError> {
        struct Visit<'a>(&'a mut dyn FnMut(&LogEntry) -> Result<(), String>);
        impl Replay for Visit<'_> {
            fn resume(&mut self, _: &Snapshots, _: u64) -> Option<Resume> {
                None
            }
            fn resume_refused(&mut self, _: &str) {}
            fn visit(&mut self, entry: &LogEntry) -> Result<(), String> {
                (self.0)(entry)
            }
        }
        Store::open_resuming(dir, options, &mut Visit(visit))
    }

    /// As `open`, but first offers the kept snapshots to `replay.resume`:
    /// if it names a resume point (a snapshot it loaded), the log is read
    /// from the entry after it. The resume point must be an indexed entry
    /// whose hash is the one the snapshot recorded, and the Merkle tree's
    /// nodes up to it must be stored; otherwise `replay.resume_refused` is
    /// called and the whole log is read. Entries before the resume point
    /// are not read (their checksums are checked when they are read, and
    /// by a full open). If the index turns out to need a rebuild after a
    /// resume, `StoreError::Resume` is returned (a rebuild needs the whole
    /// log) and the caller opens again without a snapshot.
    pub fn open_resuming(
        dir: &Path,
        options: OpenOptions,
        replay: &mut dyn Replay,
    ) -> Result<(Store, OpenReport), StoreError> {
        let io = |what: &str, e| StoreError::Io(format!("{what} {}", dir.display()), e);
        if !dir.join("log").is_dir() {
            std::fs::create_dir_all(dir.join("log")).map_err(|e| io("creating", e))?;
            // The new directory's entry must survive a crash with the log in it.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("syncing", e))?;
        }
        let log_path = dir.join("log").join("ledger.log");
        let mut log = LogFile::open(&log_path)?;
        let index_path = dir.join("index");
        let mut report = OpenReport::default();
        let mut index = match OpenedIndex::open(&index_path) {
            Ok(ix) => Some(ix),
            // Another process holds sled's lock: the index is in use, not
            // damaged. Rebuilding it would destroy a live server's index.
            Err(IndexOpenError::Locked(e)) => return Err(StoreError::Index(e)),
            Err(IndexOpenError::Unusable(e)) => {
                tracing::warn!(error = %e, "index unreadable; rebuilding it from the log");
                None
            }
        };
        // What the index vouched for when it was opened: kept even if the
        // index is later found to disagree with the log, because an index
        // that knew more entries than the log holds is evidence of loss or
        // tampering however the remaining entries compare.
        let vouched_through = index.as_ref().map_or(0, |ix| ix.indexed_through);

        let len = log.len_on_disk()?;
        let mut offset = HEADER_LEN;
        let mut expected = 1u64;
        let mut frontier = Frontier::new();
        if let Some(ix) = &index {
            let snapshots = open_snapshots(dir)?;
            if let Some(r) = replay.resume(&snapshots, ix.derived_through) {
                match ix.resume_point(&log, len, r).and_then(|p| {
                    ix.check_prefix(&log, r.sequence, p.1, r.entry_hash)
                        .map(|()| p)
                }) {
                    Err(e @ StoreError::Corrupt { .. }) => return Err(e),
                    Ok((at, next, f)) => {
                        tracing::info!(
                            sequence = r.sequence,
                            offset = at,
                            "resuming after a snapshot"
                        );
                        report.resumed_at = Some(r.sequence);
                        (offset, expected, frontier) = (next, r.sequence + 1, f);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "not resuming at the snapshot; reading the whole log");
                        replay.resume_refused(&e.to_string());
                    }
                }
            }
        }
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        loop {
            let outcome = read_record(log.file(), offset, len)
                .map_err(|e| StoreError::Io(format!("reading {}", log_path.display()), e))?;
            match outcome {
                ReadOutcome::End => break,
                ReadOutcome::Damaged { declared_end } => {
                    let corrupt = |detail: String| StoreError::Corrupt {
                        sequence: Some(expected),
                        offset,
                        detail,
                    };
                    let indexed_through = index.as_ref().map_or(0, |ix| ix.indexed_through);
                    if indexed_through >= expected {
                        // The index was written after this entry was fsync'd
                        // (and agreed with every entry before it): it was
                        // committed, so this is damage, not a torn write.
                        return Err(corrupt(format!(
                            "record is damaged but the index shows it was committed (indexed through sequence {indexed_through}); restore from a backup or replica (docs/operations.md)"
                        )));
                    }
                    let zero_tail = tail_is_zero(log.file(), offset, len)?;
                    if !zero_tail {
                        if declared_end < len {
                            return Err(corrupt("record fails its checksum but is followed by more data; this is not a torn tail. Restore from a backup or replica (docs/operations.md)".into()));
                        }
                        // A damaged length field also looks like "runs past the
                        // end". Only a tail with no valid record after it is torn.
                        if let Some((at, seq)) = find_record_after(log.file(), offset, len)? {
                            return Err(corrupt(format!(
                                "record is damaged and a valid record (sequence {seq}) follows at offset {at}; this is not a torn tail. Restore from a backup or replica (docs/operations.md)"
                            )));
                        }
                    }
                    // A torn final group: never acknowledged (acks follow fsync).
                    report.truncated_bytes = len - offset;
                    tracing::warn!(
                        offset,
                        bytes = report.truncated_bytes,
                        sequence = expected,
                        "cutting off a torn, unacknowledged tail of the log"
                    );
                    log.truncate_to(offset)?;
                    break;
                }
                ReadOutcome::Entry(entry, next) => {
                    if entry.sequence != expected {
                        return Err(StoreError::Corrupt {
                            sequence: Some(expected),
                            offset,
                            detail: format!("found sequence {} in its place", entry.sequence),
                        });
                    }
                    replay
                        .visit(&entry)
                        .map_err(|detail| StoreError::Rejected {
                            sequence: entry.sequence,
                            detail,
                        })?;
                    let id = stored_event_id(&entry)?;
                    let made = frontier
                        .append(&entry.hash)
                        .map_err(|e| StoreError::Rejected {
                            sequence: entry.sequence,
                            detail: e.to_string(),
                        })?;
                    if let Some(ix) = &index {
                        let checked = if entry.sequence <= ix.indexed_through {
                            ix.agrees(&entry, &id, offset, &made)
                        } else {
                            index_entry(&mut batch, &id, &entry, offset);
                            put_nodes(&mut batch, &made);
                            pending += 1;
                            report.reindexed += 1;
                            if pending >= MAX_GROUP_ENTRIES {
                                pending = 0;
                                batch.insert(KEY_INDEXED_THROUGH, &entry.sequence.to_be_bytes());
                                ix.tree
                                    .apply_batch(std::mem::take(&mut batch))
                                    .map_err(|e| format!("writing: {e}"))
                            } else {
                                Ok(())
                            }
                        };
                        if let Err(why) = checked {
                            tracing::warn!(sequence = entry.sequence, problem = %why, "the index disagrees with the log; rebuilding it from the log");
                            index = None;
                        }
                    }
                    expected += 1;
                    offset = next;
                }
            }
        }
        let head_sequence = expected - 1;
        if vouched_through > head_sequence {
            // The index is only written after the log is durable, so it can
            // only be ahead if committed entries vanished from the log.
            if !options.allow_index_rebuild {
                return Err(StoreError::Corrupt {
                    sequence: Some(head_sequence + 1),
                    offset,
                    detail: format!(
                        "the log ends at sequence {head_sequence} but its index records entries through {vouched_through}: committed entries are missing or the log was rewritten. Nothing was changed. Restore the log from a backup or replica; if an older log was restored on purpose, start once with --allow-index-rebuild to rebuild the index from the log (docs/operations.md)"
                    ),
                });
            }
            tracing::warn!(
                log_head = head_sequence,
                index_through = vouched_through,
                "the index records entries the log lacks; rebuilding it as --allow-index-rebuild asks"
            );
            index = None;
        }
        if index
            .as_ref()
            .is_some_and(|ix| ix.derived_through > head_sequence)
        {
            // Derived records are written after their group's index
            // records, so this cannot happen without the index being
            // ahead too; treat it as an index that disagrees.
            tracing::warn!(
                head_sequence,
                "derived records beyond the log's head; rebuilding the index"
            );
            index = None;
        }
        if let Some(ix) = &index {
            let finished = if pending > 0 {
                batch.insert(KEY_INDEXED_THROUGH, &head_sequence.to_be_bytes());
                ix.tree
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(|e| format!("writing: {e}"))
            } else {
                Ok(())
            }
            .and_then(|()| ix.holds_only(head_sequence, report.resumed_at.is_none()));
            if let Err(why) = finished {
                tracing::warn!(problem = %why, "the index disagrees with the log; rebuilding it from the log");
                index = None;
            }
        }
        let index = match index {
            Some(ix) => ix,
            None => {
                report.index_rebuilt = true;
                report.reindexed = head_sequence;
                if report.resumed_at.is_some() {
                    // The entries before the resume point were not read, so
                    // they cannot be re-indexed from here: open in full.
                    return Err(StoreError::Resume(
                        "the index must be rebuilt, which needs the whole log".into(),
                    ));
                }
                rebuild_index(&index_path, &log, offset, head_sequence)?
            }
        };
        let snapshots = open_snapshots(dir)?;
        // Snapshots were kept in sled before they were files.
        if index
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == snapshots::LEGACY_TREE.as_bytes())
        {
            index.db.drop_tree(snapshots::LEGACY_TREE)?;
        }
        index.tree.flush()?;
        log.set_committed_len(offset);
        report.entries = head_sequence;
        let indexer = indexer::Indexer::start(
            index.tree.clone(),
            index.derived.clone(),
            index.derived_through,
        )
        .map_err(|e| StoreError::Io("starting the index thread".into(), e))?;
        Ok((
            Store {
                log,
                derived: index.derived,
                index: index.tree,
                frontier,
                snapshots,
                _db: index.db,
                log_path,
                head_sequence,
                indexer,
                index_failed: std::cell::Cell::new(false),
            },
            report,
        ))
    }

    /// False once a failure means only a restart can make writes safe again.
    pub fn accepts_writes(&self) -> bool {
        self.log.accepts_writes() && !self.indexer.shared.failed() && !self.index_failed.get()
    }

    /// The log file's committed length in bytes.
    pub fn log_bytes(&self) -> u64 {
        self.log.committed_len()
    }

    /// The last sequence in the log.
    pub fn head_sequence(&self) -> u64 {
        self.head_sequence
    }

    /// Appends a group of entries durably (one write, one fdatasync), then
    /// indexes them. Returns only after the entries are on disk.
    pub fn append(&mut self, group: &[Append<'_>]) -> Result<(), StoreError> {
        assert!(!group.is_empty() && group.len() <= MAX_GROUP_ENTRIES);
        if self.indexer.shared.failed() || self.index_failed.get() {
            return Err(StoreError::Poisoned);
        }
        let mut buf = Vec::new();
        let mut relative = Vec::with_capacity(group.len());
        for (i, a) in group.iter().enumerate() {
            relative.push(buf.len() as u64);
            assert_eq!(
                a.entry.sequence,
                self.head_sequence + 1 + i as u64,
                "appended sequences must continue the log without gaps"
            );
            encode_record(a.entry, &mut buf);
        }
        let mut frontier = self.frontier.clone();
        let mut nodes = Vec::with_capacity(2 * group.len() + 64);
        for a in group {
            nodes.extend(
                frontier
                    .append(&a.entry.hash)
                    .expect("the log holds fewer than 2^63 entries"),
            );
        }
        let start = self.log.append_durable(&buf)?;
        self.head_sequence += group.len() as u64;
        self.frontier = frontier;
        debug_assert_eq!(self.frontier.size(), self.head_sequence);
        // Index after durability, behind the acknowledgement: the records go
        // to `Recent` (looked up first) now and to sled on the index thread.
        // If sled fails, the log still holds the entries, the next open
        // re-indexes them, and writes are refused until then.
        let mut batch = sled::Batch::default();
        let mut keys = Vec::with_capacity(group.len());
        {
            let mut recent = self.indexer.shared.recent();
            for (a, rel) in group.iter().zip(relative) {
                let offset = start + rel;
                index_entry(&mut batch, a.event_id, a.entry, offset);
                let key = event_key(&a.entry.signed.signer_id, a.event_id);
                recent.events.insert(
                    key.clone(),
                    IndexedEvent {
                        sequence: a.entry.sequence,
                        digest: a.entry.signed.digest(),
                        entry_hash: a.entry.hash,
                        refusal: a.entry.refusal.clone(),
                    },
                );
                recent.offsets.insert(a.entry.sequence, offset);
                keys.push(key);
            }
            for (id, hash) in &nodes {
                recent.nodes.insert(*id, *hash);
            }
        }
        put_nodes(&mut batch, &nodes);
        batch.insert(KEY_INDEXED_THROUGH, &self.head_sequence.to_be_bytes());
        self.indexer.submit(indexer::Group {
            batch,
            events: keys,
            sequences: group[0].entry.sequence..=self.head_sequence,
            nodes: nodes.into_iter().map(|(id, _)| id).collect(),
        });
        Ok(())
    }

    /// Queues derived records (key, value) for the index thread, after
    /// the group's index records; with `through`, the derived watermark
    /// moves there once they are applied (every record of every entry up
    /// to `through` must then have been put). Keys must not start with
    /// 0xFF; at most `MAX_DERIVED_RECORDS` records. Blocks while the index
    /// thread's queue is full. If sled fails, the watermark stops and
    /// writes are refused as for the index.
    pub fn put_derived(&self, records: Vec<(Vec<u8>, Vec<u8>)>, through: Option<u64>) {
        assert!(records.len() <= MAX_DERIVED_RECORDS);
        assert!(records.iter().all(|(k, _)| k.first() != Some(&0xFF)));
        assert!(through.is_none_or(|t| t <= self.head_sequence));
        let mut batch = sled::Batch::default();
        for (k, v) in records {
            batch.insert(k, v);
        }
        if let Some(t) = through {
            batch.insert(KEY_DERIVED_THROUGH, &t.to_be_bytes());
        }
        self.indexer.submit_derived(batch, through);
    }

    /// The derived records' watermark: every derived record of every entry
    /// up to it is in sled (readable by `LogReader::derived`).
    pub fn derived_through(&self) -> u64 {
        self.indexer.shared.derived_through()
    }

    /// The Merkle tree's right edge over the whole log (its size is the
    /// head sequence).
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// The snapshots kept beside the index.
    pub fn snapshots(&self) -> Snapshots {
        self.snapshots.clone()
    }

    /// Writes the index out to its files (sled's `flush`: not an fsync, see
    /// the crate docs; the index never needs to be durable, only complete
    /// after a clean stop so it can vouch for the last committed entries).
    pub fn flush_index(&self) -> Result<(), StoreError> {
        self.indexer
            .flush()
            .map_err(|e| StoreError::Io("writing the index out".into(), std::io::Error::other(e)))
    }

    /// Looks up an idempotency key: the event id `event_id` of `signer_id`.
    /// An error (sled failing, or a malformed value) means the index can no
    /// longer be trusted: the store then refuses writes until a restart.
    pub fn find_event(
        &self,
        signer_id: &str,
        event_id: &str,
    ) -> Result<Option<IndexedEvent>, StoreError> {
        self.lookup(signer_id, event_id).inspect_err(|e| {
            tracing::error!(error = %e, "index lookup failed; refusing writes until restart");
            self.index_failed.set(true);
        })
    }

    fn lookup(&self, signer_id: &str, event_id: &str) -> Result<Option<IndexedEvent>, StoreError> {
        let key = event_key(signer_id, event_id);
        if let Some(hit) = self.indexer.shared.recent().events.get(&key) {
            return Ok(Some(hit.clone()));
        }
        let Some(v) = self.index.get(key)? else {
            return Ok(None);
        };
        parse_index_value(&v)
            .map(Some)
            .ok_or_else(|| bad_index(event_id))
    }

    /// A reader that can fetch entries up to the current head, independent of
    /// later appends.
    pub fn reader(&self) -> Result<LogReader, StoreError> {
        let file = File::open(&self.log_path)
            .map_err(|e| StoreError::Io(format!("opening {}", self.log_path.display()), e))?;
        Ok(LogReader {
            file,
            index: self.index.clone(),
            derived: self.derived.clone(),
            recent: self.indexer.shared.clone(),
            resume: std::sync::Mutex::new((1, HEADER_LEN)),
            index_failed: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

fn bad_index(what: &str) -> StoreError {
    StoreError::Corrupt {
        sequence: None,
        offset: 0,
        detail: format!(
            "index value for {what:?} is malformed; delete the index directory to rebuild it"
        ),
    }
}

/// `u64be(sequence) ‖ digest ‖ entry hash`, and for a refusal
/// `‖ u32be(code) ‖ u8(flags) ‖ message` (so a retry is answered with the
/// original refusal without reading the log).
fn index_value(entry: &LogEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(72);
    v.extend_from_slice(&entry.sequence.to_be_bytes());
    v.extend_from_slice(&entry.signed.digest());
    v.extend_from_slice(&entry.hash);
    if let Some(r) = &entry.refusal {
        v.extend_from_slice(&r.code.to_be_bytes());
        v.push(r.flags());
        v.extend_from_slice(r.message.as_bytes());
    }
    v
}

/// The inverse of `index_value`; `None` if malformed.
fn parse_index_value(v: &[u8]) -> Option<IndexedEvent> {
    let refusal = match v.get(72..) {
        None => return None,
        Some([]) => None,
        Some(rest) => {
            let code = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
            let (in_atomic_batch, first_in_batch) = Refusal::from_flags(*rest.get(4)?)?;
            Some(Refusal {
                code,
                in_atomic_batch,
                first_in_batch,
                message: String::from_utf8(rest.get(5..)?.to_vec()).ok()?,
            })
        }
    };
    Some(IndexedEvent {
        sequence: be_u64(v)?,
        digest: v.get(8..40)?.try_into().ok()?,
        entry_hash: v.get(40..72)?.try_into().ok()?,
        refusal,
    })
}

/// The two index records of one entry: its idempotency key, and where it
/// starts. The only place index records are made (append, re-index, rebuild).
fn index_entry(batch: &mut sled::Batch, event_id: &str, entry: &LogEntry, offset: u64) {
    batch.insert(
        event_key(&entry.signed.signer_id, event_id),
        index_value(entry),
    );
    batch.insert(&seq_key(entry.sequence), &offset.to_be_bytes());
}

/// The event id a stored entry indexes under: the `event_id` field of its
/// event bytes, read as `phb_domain::event::decode_event_id` reads it (the
/// store does not depend on the domain crate; a stored event was validated
/// when it was written, so reading this one field is all it needs).
fn stored_event_id(entry: &LogEntry) -> Result<String, StoreError> {
    use prost::Message as _;
    let id = phb_proto::v1::Event::decode(entry.signed.event.as_slice())
        .ok()
        .map(|e| e.event_id);
    id.ok_or_else(|| StoreError::Rejected {
        sequence: entry.sequence,
        detail: "stored event has no readable event_id".into(),
    })
}

/// Why the index could not be opened.
enum IndexOpenError {
    /// Another process holds it: never a reason to rebuild.
    Locked(sled::Error),
    /// Damaged or unreadable: derived data gone bad, rebuilt from the log.
    Unusable(String),
}

/// An index opened at start-up, with the watermark it claims.
struct OpenedIndex {
    db: sled::Db,
    tree: sled::Tree,
    indexed_through: u64,
    derived: sled::Tree,
    derived_through: u64,
}

impl OpenedIndex {
    /// Opens the index; any failure (including a panic inside sled on a
    /// damaged file) is reported as a reason to rebuild it.
    fn open(path: &Path) -> Result<OpenedIndex, IndexOpenError> {
        let opened = std::panic::catch_unwind(|| -> Result<OpenedIndex, IndexOpenError> {
            let db = open_index(path).map_err(|e| {
                if dirlock::is_lock_conflict(&e) {
                    IndexOpenError::Locked(e)
                } else {
                    IndexOpenError::Unusable(e.to_string())
                }
            })?;
            let unusable = |e: sled::Error| IndexOpenError::Unusable(e.to_string());
            for old in OLD_INDEX_TREES {
                db.drop_tree(old).map_err(unusable)?;
            }
            let tree = db.open_tree(INDEX_TREE).map_err(unusable)?;
            let derived = db.open_tree(DERIVED_TREE).map_err(unusable)?;
            let watermark = |tree: &sled::Tree, key: &[u8]| match tree.get(key).map_err(unusable)? {
                None => Ok(0),
                Some(v) if v.len() == 8 => Ok(be_u64(&v).unwrap_or(0)),
                Some(v) => Err(IndexOpenError::Unusable(format!(
                    "malformed watermark ({} bytes)",
                    v.len()
                ))),
            };
            let indexed_through = watermark(&tree, KEY_INDEXED_THROUGH)?;
            let derived_through = watermark(&derived, KEY_DERIVED_THROUGH)?;
            Ok(OpenedIndex {
                db,
                tree,
                indexed_through,
                derived,
                derived_through,
            })
        });
        opened.unwrap_or_else(|_| {
            Err(IndexOpenError::Unusable(
                "sled panicked opening the index".into(),
            ))
        })
    }

    /// True if the index holds exactly what the log says for `entry`.
    fn agrees(
        &self,
        entry: &LogEntry,
        id: &str,
        offset: u64,
        nodes: &[(NodeId, Hash)],
    ) -> Result<(), String> {
        let seq = entry.sequence;
        for (node, hash) in nodes {
            let stored = self
                .tree
                .get(node_key(*node))
                .map_err(|e| format!("reading: {e}"))?;
            if stored.as_deref() != Some(&hash[..]) {
                return Err(format!(
                    "wrong or missing Merkle node (level {}, index {}) at sequence {seq}",
                    node.level, node.index
                ));
            }
        }
        let at = self
            .tree
            .get(seq_key(seq))
            .map_err(|e| format!("reading: {e}"))?;
        if at.as_deref() != Some(&offset.to_be_bytes()[..]) {
            return Err(format!("wrong or missing offset for sequence {seq}"));
        }
        let hit = self
            .tree
            .get(event_key(&entry.signed.signer_id, id))
            .map_err(|e| format!("reading: {e}"))?;
        if hit.as_deref() != Some(&index_value(entry)[..]) {
            return Err(format!(
                "wrong or missing event id entry for sequence {seq}"
            ));
        }
        Ok(())
    }

    /// True if the index holds nothing but the entries 1..=head: no
    /// offset past the head, and (if `count`, a full open) exactly one
    /// event key and offset per entry and the tree's nodes.
    fn holds_only(&self, head: u64, count: bool) -> Result<(), String> {
        if let Some(item) = self
            .tree
            .range(seq_key(head.saturating_add(1))..=seq_key(u64::MAX))
            .next()
        {
            let (k, _) = item.map_err(|e| format!("reading: {e}"))?;
            return Err(format!(
                "an offset for sequence {:?}, past the log's head {head}",
                be_u64(&k[1..])
            ));
        }
        if !count {
            return Ok(());
        }
        for (prefix, expected) in [
            (KEY_EVENT, head),
            (KEY_SEQ, head),
            (KEY_NODE, node_count(head)),
        ] {
            let mut n = 0u64;
            for item in self.tree.scan_prefix([prefix]) {
                item.map_err(|e| format!("reading: {e}"))?;
                n += 1;
            }
            if n != expected {
                return Err(format!(
                    "{n} '{}' keys for {head} log entries ({expected} expected)",
                    prefix as char
                ));
            }
        }
        Ok(())
    }

    /// Checks a resume point and finds where reading continues: the offset
    /// of its record, the offset after it, and the Merkle frontier there.
    fn resume_point(
        &self,
        log: &LogFile,
        len: u64,
        r: Resume,
    ) -> Result<(u64, u64, Frontier), StoreError> {
        let refuse = |why: String| StoreError::Resume(why);
        let seq = r.sequence;
        if seq == 0 || seq > self.indexed_through {
            return Err(refuse(format!(
                "sequence {seq} is not indexed (indexed through {})",
                self.indexed_through
            )));
        }
        let at = self
            .tree
            .get(seq_key(seq))?
            .as_deref()
            .and_then(be_u64)
            .ok_or_else(|| refuse(format!("no offset for sequence {seq}")))?;
        let outcome = read_record(log.file(), at, len)
            .map_err(|e| StoreError::Io("reading the log".into(), e))?;
        let ReadOutcome::Entry(entry, next) = outcome else {
            return Err(refuse(format!("no whole record at sequence {seq}")));
        };
        if entry.sequence != seq || entry.hash != r.entry_hash || !entry.hash_is_valid() {
            return Err(refuse(format!(
                "the log's entry {seq} is not the one the snapshot was taken after"
            )));
        }
        let mut hashes = Vec::new();
        for id in root_nodes(seq).map_err(|e| refuse(e.to_string()))? {
            let stored = self.tree.get(node_key(id))?;
            let hash = stored
                .as_deref()
                .and_then(|h| Hash::try_from(h).ok())
                .ok_or_else(|| refuse(format!("Merkle node {id:?} is missing")))?;
            hashes.push(hash);
        }
        let frontier = Frontier::from_nodes(seq, hashes).map_err(|e| refuse(e.to_string()))?;
        Ok((at, next, frontier))
    }

    /// The check of the log before a resume point at `seq` (its record
    /// ending at `end`): every record's checksum, sequence, entry hash and
    /// link, on two threads (the halves split at an indexed offset and
    /// joined by their link), ending at the snapshot's entry. Damage is
    /// `StoreError::Corrupt` naming the sequence, as a full open reports it.
    fn check_prefix(
        &self,
        log: &LogFile,
        seq: u64,
        end: u64,
        hash: Hash,
    ) -> Result<(), StoreError> {
        let corrupt = |d: logfile::ChainDamage| {
            StoreError::Corrupt {
            sequence: Some(d.sequence),
            offset: d.offset,
            detail: format!(
                "{}; the start was refused before anything was changed. Restore from a backup or replica (docs/operations.md)",
                d.detail
            ),
        }
        };
        let mid = seq / 2;
        let split = match self.tree.get(seq_key(mid + 1))? {
            Some(v) if mid >= 1 => be_u64(&v).filter(|o| *o > HEADER_LEN && *o < end),
            _ => None,
        };
        let file = log.file();
        let ranges = match split {
            Some(at) => std::thread::scope(|s| {
                let second = s.spawn(|| logfile::check_chain(file, at, end, mid + 1));
                let first = logfile::check_chain(file, HEADER_LEN, at, 1);
                let second = second.join().unwrap_or_else(|_| {
                    Err(logfile::ChainDamage {
                        sequence: mid + 1,
                        offset: at,
                        detail: "the check panicked".into(),
                    })
                });
                (first, Some((second, at)))
            }),
            None => (logfile::check_chain(file, HEADER_LEN, end, 1), None),
        };
        let first = ranges.0.map_err(corrupt)?;
        if first.first_prev != phb_chain::GENESIS_HASH {
            return Err(corrupt(logfile::ChainDamage {
                sequence: 1,
                offset: HEADER_LEN,
                detail: "the first entry does not start the chain".into(),
            }));
        }
        let last = match ranges.1 {
            None => first,
            Some((second, at)) => {
                let second = second.map_err(corrupt)?;
                if first.last_sequence != mid || second.first_prev != first.last_hash {
                    return Err(corrupt(logfile::ChainDamage {
                        sequence: mid + 1,
                        offset: at,
                        detail:
                            "the entry does not name the previous entry's hash: the chain is broken"
                                .into(),
                    }));
                }
                second
            }
        };
        if last.last_sequence != seq || last.last_hash != hash {
            return Err(StoreError::Resume(format!(
                "the log's entry {seq} is not the one the snapshot was taken after"
            )));
        }
        Ok(())
    }
}

fn open_snapshots(dir: &Path) -> Result<Snapshots, StoreError> {
    let path = dir.join("snapshots");
    Snapshots::open(&path).map_err(|e| StoreError::Io(format!("opening {}", path.display()), e))
}

/// Deletes the index and builds it again from the log's first `end` bytes
/// (already read and verified: `head` entries).
fn rebuild_index(
    path: &Path,
    log: &LogFile,
    end: u64,
    head: u64,
) -> Result<OpenedIndex, StoreError> {
    let io = |what: &str, e| StoreError::Io(format!("{what} {}", path.display()), e);
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(|e| io("removing", e))?,
        Ok(_) => std::fs::remove_file(path).map_err(|e| io("removing", e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", e)),
    }
    let db = open_index(path)?;
    let tree = db.open_tree(INDEX_TREE)?;
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    let mut offset = HEADER_LEN;
    let mut seq = 0u64;
    let mut frontier = Frontier::new();
    while offset < end {
        let outcome = read_record(log.file(), offset, end)
            .map_err(|e| StoreError::Io("re-reading the log to rebuild the index".into(), e))?;
        let ReadOutcome::Entry(entry, next) = outcome else {
            return Err(StoreError::Corrupt {
                sequence: Some(seq + 1),
                offset,
                detail: "the log changed while the index was being rebuilt".into(),
            });
        };
        seq = entry.sequence;
        index_entry(&mut batch, &stored_event_id(&entry)?, &entry, offset);
        let made = frontier
            .append(&entry.hash)
            .map_err(|e| StoreError::Rejected {
                sequence: seq,
                detail: e.to_string(),
            })?;
        put_nodes(&mut batch, &made);
        pending += 1;
        if pending >= MAX_GROUP_ENTRIES {
            batch.insert(KEY_INDEXED_THROUGH, &seq.to_be_bytes());
            tree.apply_batch(std::mem::take(&mut batch))?;
            pending = 0;
        }
        offset = next;
    }
    debug_assert_eq!(seq, head);
    batch.insert(KEY_INDEXED_THROUGH, &head.to_be_bytes());
    tree.apply_batch(batch)?;
    tracing::info!(entries = head, "index rebuilt from the log");
    let derived = db.open_tree(DERIVED_TREE)?;
    Ok(OpenedIndex {
        db,
        tree,
        indexed_through: head,
        derived,
        derived_through: 0,
    })
}

fn open_index(path: &Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(path)
        .cache_capacity(INDEX_CACHE_BYTES)
        .mode(sled::Mode::HighThroughput)
        .open()
}

/// Looks for a whole, checksummed record starting anywhere after `from`.
/// The damaged record's true length is at most `MAX_PAYLOAD`, so the next
/// intact record, if any, starts within the window searched.
fn find_record_after(file: &File, from: u64, len: u64) -> Result<Option<(u64, u64)>, StoreError> {
    use std::os::unix::fs::FileExt;
    let window = (len - from).min(2 * (logfile::FRAME_LEN + u64::from(logfile::MAX_PAYLOAD)));
    let mut buf = vec![0u8; window as usize];
    file.read_exact_at(&mut buf, from)
        .map_err(|e| StoreError::Io("reading log tail".into(), e))?;
    for start in 1..buf.len().saturating_sub(logfile::FRAME_LEN as usize) {
        let frame = &buf[start..start + 8];
        let plen = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        if plen == 0 || plen > logfile::MAX_PAYLOAD {
            continue;
        }
        let Some(payload) = buf.get(start + 8..start + 8 + plen as usize) else {
            continue;
        };
        let crc = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if crc32c::crc32c(payload) == crc {
            if let Some(e) = logfile::decode_payload(payload) {
                return Ok(Some((from + start as u64, e.sequence)));
            }
        }
    }
    Ok(None)
}

fn tail_is_zero(file: &File, from: u64, len: u64) -> Result<bool, StoreError> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| StoreError::Io("reading log tail".into(), e))?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Reads committed entries by sequence.
///
/// The index's sequence → offset entries only speed reads up: when the index
/// fails (sled's IO errors are sticky, e.g. after the disk filled up) or is
/// wrong, the reader walks the log file itself, from where its last read
/// ended if it can, so reads keep working while writes are refused.
pub struct LogReader {
    file: File,
    index: sled::Tree,
    derived: sled::Tree,
    /// Committed entries the index thread has not written to sled yet.
    recent: std::sync::Arc<indexer::Shared>,
    /// (next sequence, its offset) after the last read.
    resume: std::sync::Mutex<(u64, u64)>,
    /// Set once the index failed a read (warned about once).
    index_failed: std::sync::atomic::AtomicBool,
}

impl LogReader {
    /// Reads up to `max` entries starting at `from`, not past `through`
    /// (the committed head the caller knows about).
    pub fn read(&self, from: u64, through: u64, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        if from == 0 || from > through || max == 0 {
            return Ok(Vec::new());
        }
        let len = self
            .file
            .metadata()
            .map_err(|e| StoreError::Io("reading log size".into(), e))?
            .len();
        if let Some(offset) = self.indexed_offset(from) {
            if let Ok(out) = self.read_at(offset, from, through, max, len) {
                return Ok(out);
            }
            tracing::warn!(
                sequence = from,
                offset,
                "the index points at the wrong place; reading the log without it"
            );
        }
        let offset = self.scan_to(from, len)?;
        self.read_at(offset, from, through, max, len)
    }

    /// Where an idempotency key stands, per the index (`None` if unknown or
    /// the index fails: callers use this only to avoid refusing too early).
    pub fn find_event(&self, signer_id: &str, event_id: &str) -> Option<IndexedEvent> {
        let key = event_key(signer_id, event_id);
        if let Some(hit) = self.recent.recent().events.get(&key) {
            return Some(hit.clone());
        }
        let v = self.index.get(key).ok()??;
        parse_index_value(&v)
    }

    /// Up to `max` derived records with keys in `from..=to`, in key
    /// order (only records up to `Store::derived_through` are sure to be
    /// there).
    pub fn derived(
        &self,
        from: &[u8],
        to: &[u8],
        max: usize,
    ) -> Result<Vec<(sled::IVec, sled::IVec)>, StoreError> {
        let mut out = Vec::new();
        for item in self.derived.range(from..=to).take(max) {
            out.push(item?);
        }
        Ok(out)
    }

    /// A stored Merkle tree node (a complete subtree), if the index has it:
    /// nodes are written with the index, after their entries are durable.
    pub fn node(&self, id: NodeId) -> Result<Option<Hash>, StoreError> {
        if let Some(hash) = self.recent.recent().nodes.get(&id) {
            return Ok(Some(*hash));
        }
        Ok(self
            .index
            .get(node_key(id))?
            .and_then(|h| Hash::try_from(&h[..]).ok()))
    }

    /// The offset the index gives for `seq`, if it can.
    fn indexed_offset(&self, seq: u64) -> Option<u64> {
        if let Some(offset) = self.recent.recent().offsets.get(&seq) {
            return Some(*offset);
        }
        match self.index.get(seq_key(seq)) {
            Ok(Some(v)) => be_u64(&v),
            Ok(None) => None,
            Err(e) => {
                use std::sync::atomic::Ordering;
                if !self.index_failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "index unreadable; reading the log without it");
                }
                None
            }
        }
    }

    /// Walks the log to the record of `seq`.
    fn scan_to(&self, seq: u64, len: u64) -> Result<u64, StoreError> {
        let (mut at_seq, mut offset) = *self.resume.lock().unwrap_or_else(|p| p.into_inner());
        if at_seq > seq {
            (at_seq, offset) = (1, HEADER_LEN);
        }
        loop {
            if at_seq == seq {
                return Ok(offset);
            }
            match read_record(&self.file, offset, len)
                .map_err(|e| StoreError::Io("reading log".into(), e))?
            {
                ReadOutcome::Entry(e, next) if e.sequence == at_seq => {
                    at_seq += 1;
                    offset = next;
                }
                _ => {
                    return Err(StoreError::Corrupt {
                        sequence: Some(at_seq),
                        offset,
                        detail: format!("committed entry unreadable while looking for {seq}"),
                    })
                }
            }
        }
    }

    fn read_at(
        &self,
        mut offset: u64,
        from: u64,
        through: u64,
        max: usize,
        len: u64,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let mut out = Vec::new();
        let mut seq = from;
        while seq <= through && out.len() < max {
            match read_record(&self.file, offset, len)
                .map_err(|e| StoreError::Io("reading log".into(), e))?
            {
                ReadOutcome::Entry(e, next) if e.sequence == seq => {
                    out.push(*e);
                    offset = next;
                    seq += 1;
                }
                _ => {
                    return Err(StoreError::Corrupt {
                        sequence: Some(seq),
                        offset,
                        detail: "committed entry unreadable".into(),
                    })
                }
            }
        }
        *self.resume.lock().unwrap_or_else(|p| p.into_inner()) = (seq, offset);
        Ok(out)
    }
}
