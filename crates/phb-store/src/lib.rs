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

pub mod logfile;

use logfile::{encode_record, read_record, LogFile, ReadOutcome, HEADER_LEN};
use phb_domain::{Hash, LogEntry};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The most entries one `append` may carry (a group commit).
pub const MAX_GROUP_ENTRIES: usize = 4096;
/// sled cache bound (memory can reach several times this: sled #1309).
pub const INDEX_CACHE_BYTES: u64 = 64 * 1024 * 1024;

const KEY_EVENT: u8 = b'e';
const KEY_SEQ: u8 = b's';
const KEY_INDEXED_THROUGH: &[u8] = b"m/indexed_through";

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
    /// An earlier fsync or index write failed; the process must restart to
    /// recover from disk.
    #[error(
        "the log refuses writes after a failed fsync or index write; restart the server to recover"
    )]
    Poisoned,
    /// The caller's visitor refused an entry during open.
    #[error("entry at sequence {sequence}: {detail}")]
    Rejected {
        /// Where.
        sequence: u64,
        /// Why.
        detail: String,
    },
}

/// An index hit for an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexedEvent {
    /// Where it was written.
    pub sequence: u64,
    /// Its idempotency digest (`SignedEvent::digest`).
    pub digest: Hash,
    /// The entry hash it was written with.
    pub entry_hash: Hash,
}

/// What `open` found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
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
    _db: sled::Db,
    log_path: PathBuf,
    head_sequence: u64,
    /// Set when indexing failed after the log was durable: lookups may miss
    /// the newest ids, so no more writes until a restart re-indexes.
    index_behind: bool,
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

fn event_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(KEY_EVENT);
    k.extend_from_slice(id.as_bytes());
    k
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovering a torn tail, and
    /// calls `visit` with every entry in order (the caller replays them).
    pub fn open(
        dir: &Path,
        visit: &mut dyn FnMut(&LogEntry) -> Result<(), String>,
    ) -> Result<(Store, OpenReport), StoreError> {
        let io = |what: &str, e| StoreError::Io(format!("{what} {}", dir.display()), e);
        std::fs::create_dir_all(dir.join("log")).map_err(|e| io("creating", e))?;
        let log_path = dir.join("log").join("ledger.log");
        let mut log = LogFile::open(&log_path)?;
        let index_path = dir.join("index");
        let mut report = OpenReport::default();
        let db = match open_index(&index_path) {
            Ok(db) => db,
            Err(e) => {
                // The index is derived data: rebuild rather than refuse to start.
                tracing::warn!(error = %e, "index unreadable; rebuilding it from the log");
                std::fs::remove_dir_all(&index_path).map_err(|e| io("removing index in", e))?;
                report.index_rebuilt = true;
                open_index(&index_path)?
            }
        };
        let index = db.open_tree("v1")?;
        let indexed_through = index
            .get(KEY_INDEXED_THROUGH)?
            .and_then(|v| be_u64(&v))
            .unwrap_or(0);

        let len = log.len_on_disk()?;
        let mut offset = HEADER_LEN;
        let mut expected = 1u64;
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
                    if indexed_through >= expected {
                        // The index was written after this entry was fsync'd:
                        // it was committed, so this is damage, not a torn write.
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
                    visit(&entry).map_err(|detail| StoreError::Rejected {
                        sequence: entry.sequence,
                        detail,
                    })?;
                    if entry.sequence > indexed_through {
                        index_entry(&mut batch, &entry, offset)?;
                        pending += 1;
                        report.reindexed += 1;
                        if pending >= MAX_GROUP_ENTRIES {
                            batch.insert(KEY_INDEXED_THROUGH, &entry.sequence.to_be_bytes());
                            index.apply_batch(std::mem::take(&mut batch))?;
                            pending = 0;
                        }
                    }
                    expected += 1;
                    offset = next;
                }
            }
        }
        let head_sequence = expected - 1;
        if indexed_through > head_sequence {
            // The index is only written after the log is durable, so it can
            // only be ahead if committed entries vanished from the log.
            return Err(StoreError::Corrupt {
                sequence: Some(head_sequence + 1),
                offset,
                detail: format!(
                    "the log ends at sequence {head_sequence} but its index records entries through {indexed_through}: committed entries are missing. Restore the log from a backup or replica; if the log was restored on purpose, delete {} so it is rebuilt",
                    index_path.display()
                ),
            });
        }
        if pending > 0 {
            batch.insert(KEY_INDEXED_THROUGH, &head_sequence.to_be_bytes());
            index.apply_batch(batch)?;
        }
        index.flush()?;
        log.set_committed_len(offset);
        report.entries = head_sequence;
        Ok((
            Store {
                log,
                index,
                _db: db,
                log_path,
                head_sequence,
                index_behind: false,
            },
            report,
        ))
    }

    /// False once a failure means only a restart can make writes safe again.
    pub fn accepts_writes(&self) -> bool {
        self.log.accepts_writes() && !self.index_behind
    }

    /// The last sequence in the log.
    pub fn head_sequence(&self) -> u64 {
        self.head_sequence
    }

    /// Appends a group of entries durably (one write, one fdatasync), then
    /// indexes them. Returns only after the entries are on disk.
    pub fn append(&mut self, group: &[Append<'_>]) -> Result<(), StoreError> {
        assert!(!group.is_empty() && group.len() <= MAX_GROUP_ENTRIES);
        if self.index_behind {
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
        let start = self.log.append_durable(&buf)?;
        self.head_sequence += group.len() as u64;
        // Index after durability. If this fails, the log still holds the
        // entries and the next open re-indexes them.
        let mut batch = sled::Batch::default();
        for (a, rel) in group.iter().zip(relative) {
            batch.insert(event_key(a.event_id), index_value(a.entry));
            batch.insert(&seq_key(a.entry.sequence), &(start + rel).to_be_bytes());
        }
        batch.insert(KEY_INDEXED_THROUGH, &self.head_sequence.to_be_bytes());
        if let Err(e) = self.index.apply_batch(batch) {
            // The entries are durable and will be acknowledged; refuse later
            // writes so an unindexed id can never be written twice.
            tracing::error!(error = %e, "indexing failed after a durable append; refusing writes until restart");
            self.index_behind = true;
        }
        Ok(())
    }

    /// Looks up an event id.
    pub fn find_event(&self, event_id: &str) -> Result<Option<IndexedEvent>, StoreError> {
        let Some(v) = self.index.get(event_key(event_id))? else {
            return Ok(None);
        };
        let sequence = be_u64(&v).ok_or_else(|| bad_index(event_id))?;
        let hash_at = |r: std::ops::Range<usize>| -> Result<Hash, StoreError> {
            v.get(r)
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| bad_index(event_id))
        };
        Ok(Some(IndexedEvent {
            sequence,
            digest: hash_at(8..40)?,
            entry_hash: hash_at(40..72)?,
        }))
    }

    /// A reader that can fetch entries up to the current head, independent of
    /// later appends.
    pub fn reader(&self) -> Result<LogReader, StoreError> {
        let file = File::open(&self.log_path)
            .map_err(|e| StoreError::Io(format!("opening {}", self.log_path.display()), e))?;
        Ok(LogReader {
            file,
            index: self.index.clone(),
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

fn index_value(entry: &LogEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(72);
    v.extend_from_slice(&entry.sequence.to_be_bytes());
    v.extend_from_slice(&entry.signed.digest());
    v.extend_from_slice(&entry.hash);
    v
}

fn index_entry(batch: &mut sled::Batch, entry: &LogEntry, offset: u64) -> Result<(), StoreError> {
    let id = phb_domain::event::decode_event_id(&entry.signed.event).ok_or_else(|| {
        StoreError::Rejected {
            sequence: entry.sequence,
            detail: "stored event has no readable event_id".into(),
        }
    })?;
    batch.insert(event_key(&id), index_value(entry));
    batch.insert(&seq_key(entry.sequence), &offset.to_be_bytes());
    Ok(())
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
pub struct LogReader {
    file: File,
    index: sled::Tree,
}

impl LogReader {
    /// Reads up to `max` entries starting at `from`, not past `through`
    /// (the committed head the caller knows about).
    pub fn read(&self, from: u64, through: u64, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        let mut out = Vec::new();
        if from == 0 || from > through {
            return Ok(out);
        }
        let Some(off) = self.index.get(seq_key(from))? else {
            return Err(StoreError::Corrupt {
                sequence: Some(from),
                offset: 0,
                detail: "sequence missing from index".into(),
            });
        };
        let mut offset = be_u64(&off).ok_or_else(|| bad_index("offset"))?;
        let len = self
            .file
            .metadata()
            .map_err(|e| StoreError::Io("reading log size".into(), e))?
            .len();
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
        Ok(out)
    }
}
