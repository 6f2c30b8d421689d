//! The log file: the ledger's source of truth.
//!
//! One append-only file, `ledger.log`: a 16-byte header, then records
//! `u32be len ‖ u32be crc32c(payload) ‖ payload`. docs/log-format.md gives
//! the payload layout. Every group of records is written with one `write`
//! and made durable with one `fdatasync` before anyone is told it is stored.

use crate::StoreError;
use phb_chain::{Hash, LogEntry, Refusal, SignedEvent};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// File magic and format version.
pub const MAGIC: &[u8; 8] = b"PHBLEDG1";
/// Format version written in the header.
pub const VERSION: u32 = 1;
/// Header length in bytes.
pub const HEADER_LEN: u64 = 16;
/// Framing per record: length and CRC.
pub const FRAME_LEN: u64 = 8;
/// The largest payload a record may have; anything larger is corruption.
pub const MAX_PAYLOAD: u32 = 1024 * 1024;
/// Fixed part of a payload: seq, time, prev_hash, hash, three length prefixes.
const FIXED_PAYLOAD: usize = 8 + 8 + 32 + 32 + 4 + 4 + 4;
/// Fixed part of a refusal trailer: tag, code, flags, message length.
const FIXED_REFUSAL: usize = 1 + 4 + 1 + 4;

/// Encodes one record (frame + payload) onto `out`.
pub fn encode_record(entry: &LogEntry, out: &mut Vec<u8>) {
    let s = &entry.signed;
    let trailer = entry
        .refusal
        .as_ref()
        .map_or(0, |r| FIXED_REFUSAL + r.message.len());
    let payload_len =
        FIXED_PAYLOAD + s.signer_id.len() + s.signature.len() + s.event.len() + trailer;
    assert!(
        payload_len <= MAX_PAYLOAD as usize,
        "record exceeds MAX_PAYLOAD"
    );
    let start = out.len();
    out.extend_from_slice(&(payload_len as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&entry.sequence.to_be_bytes());
    out.extend_from_slice(&entry.recorded_at_micros.to_be_bytes());
    out.extend_from_slice(&entry.prev_hash);
    out.extend_from_slice(&entry.hash);
    for part in [s.signer_id.as_bytes(), &s.signature, &s.event] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    if let Some(r) = &entry.refusal {
        out.push(phb_chain::entry::REFUSAL_TAG);
        out.extend_from_slice(&r.code.to_be_bytes());
        out.push(r.flags());
        out.extend_from_slice(&(r.message.len() as u32).to_be_bytes());
        out.extend_from_slice(r.message.as_bytes());
    }
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    debug_assert_eq!(out.len() - start, 8 + payload_len);
}

/// The payload of `entry`'s record (docs/log-format.md), without the frame:
/// what a shared log stores per entry (its own checksums guard it).
pub fn encode_payload(entry: &LogEntry) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(entry, &mut out);
    out.split_off(FRAME_LEN as usize)
}

/// Reads a payload front to back; every read stays inside it.
struct Cursor<'a> {
    p: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.p.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn part(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn done(&self) -> bool {
        self.at == self.p.len()
    }
}

/// Decodes a payload whose CRC already matched.
pub fn decode_payload(p: &[u8]) -> Option<LogEntry> {
    let mut c = Cursor { p, at: 0 };
    let sequence = u64::from_be_bytes(c.take(8)?.try_into().ok()?);
    let recorded_at_micros = i64::from_be_bytes(c.take(8)?.try_into().ok()?);
    let prev_hash: Hash = c.take(32)?.try_into().ok()?;
    let hash: Hash = c.take(32)?.try_into().ok()?;
    let signer_id = String::from_utf8(c.part()?.to_vec()).ok()?;
    let signature = c.part()?.to_vec();
    let event = c.part()?.to_vec();
    let refusal = if c.done() {
        None
    } else {
        if c.take(1)? != [phb_chain::entry::REFUSAL_TAG] {
            return None;
        }
        let code = c.u32()?;
        let (in_atomic_batch, first_in_batch) = Refusal::from_flags(c.take(1)?[0])?;
        let message = c.part()?;
        if message.len() > phb_chain::entry::MAX_REFUSAL_MESSAGE_BYTES {
            return None;
        }
        Some(Refusal {
            code,
            in_atomic_batch,
            first_in_batch,
            message: String::from_utf8(message.to_vec()).ok()?,
        })
    };
    if !c.done() {
        return None;
    }
    Some(LogEntry {
        sequence,
        recorded_at_micros,
        prev_hash,
        hash,
        signed: SignedEvent {
            event,
            signer_id,
            signature,
        },
        refusal,
    })
}

/// What reading one record at an offset found.
pub enum ReadOutcome {
    /// A whole, checksummed record, and the offset after it.
    Entry(Box<LogEntry>, u64),
    /// The file ends exactly here.
    End,
    /// A record that is cut short or fails its checksum, and the offset at
    /// which the declared record would end (may be past the file's end).
    Damaged {
        /// Where the declared record would end.
        declared_end: u64,
    },
}

/// Reads the record at `offset` from a file of length `len`.
pub fn read_record(file: &File, offset: u64, len: u64) -> std::io::Result<ReadOutcome> {
    if offset == len {
        return Ok(ReadOutcome::End);
    }
    if offset + FRAME_LEN > len {
        return Ok(ReadOutcome::Damaged {
            declared_end: offset + FRAME_LEN,
        });
    }
    let mut frame = [0u8; 8];
    file.read_exact_at(&mut frame, offset)?;
    let payload_len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let declared_end = offset + FRAME_LEN + u64::from(payload_len);
    if payload_len == 0 || payload_len > MAX_PAYLOAD || declared_end > len {
        return Ok(ReadOutcome::Damaged { declared_end });
    }
    let mut payload = vec![0u8; payload_len as usize];
    file.read_exact_at(&mut payload, offset + FRAME_LEN)?;
    if crc32c::crc32c(&payload) != crc {
        return Ok(ReadOutcome::Damaged { declared_end });
    }
    match decode_payload(&payload) {
        Some(e) => Ok(ReadOutcome::Entry(Box::new(e), declared_end)),
        None => Ok(ReadOutcome::Damaged { declared_end }),
    }
}

/// The open log file, positioned for appends.
pub struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes known durable and valid: the end of the last fsync'd group.
    committed_len: u64,
    /// Set after a failed fsync: the page cache can no longer be trusted
    /// (the "fsyncgate" lesson), so no further writes until restart.
    poisoned: bool,
}

impl LogFile {
    /// Opens or creates the log file; validates the header. Recovery of the
    /// record tail is the caller's (`Store::open`) job.
    pub fn open(path: &Path) -> Result<LogFile, StoreError> {
        let io = |e| StoreError::Io(format!("opening {}", path.display()), e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Health-budget records: private whatever the umask.
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            let mut header = Vec::with_capacity(HEADER_LEN as usize);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&VERSION.to_be_bytes());
            header.extend_from_slice(&0u32.to_be_bytes());
            file.write_all(&header).map_err(io)?;
            file.sync_all().map_err(io)?;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        } else {
            let mut header = [0u8; HEADER_LEN as usize];
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            if len < HEADER_LEN || file.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
                return Err(StoreError::Corrupt {
                    sequence: None,
                    offset: 0,
                    detail: format!("{} is not a phb-ledger log (bad header)", path.display()),
                });
            }
            let version = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
            if version != VERSION {
                return Err(StoreError::Corrupt {
                    sequence: None,
                    offset: 0,
                    detail: format!(
                        "log format version {version} is not supported (expected {VERSION})"
                    ),
                });
            }
            // Reserved bytes: written as zero. Anything else was written by
            // something other than this format version, or is damage.
            if header[12..16] != [0, 0, 0, 0] {
                return Err(StoreError::Corrupt {
                    sequence: None,
                    offset: 12,
                    detail: format!(
                        "header bytes 12-15 (reserved) must be zero, found {:02x?}; the file is damaged or was not written by phb-ledger",
                        &header[12..16]
                    ),
                });
            }
        }
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            committed_len: HEADER_LEN,
            poisoned: false,
        })
    }

    /// The underlying file, for positional reads.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file's current length on disk.
    pub fn len_on_disk(&self) -> Result<u64, StoreError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| StoreError::Io(format!("reading size of {}", self.path.display()), e))
    }

    /// Cuts a torn tail off at `len` (recovery only) and makes that durable.
    pub fn truncate_to(&mut self, len: u64) -> Result<(), StoreError> {
        let io = |e| StoreError::Io(format!("truncating {}", self.path.display()), e);
        self.file.set_len(len).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        self.committed_len = len;
        Ok(())
    }

    /// Sets the committed length after recovery.
    pub fn set_committed_len(&mut self, len: u64) {
        self.committed_len = len;
    }

    /// False after a failed fsync (or a failed cut-back of a failed write).
    pub fn accepts_writes(&self) -> bool {
        !self.poisoned
    }

    /// Bytes known durable.
    pub fn committed_len(&self) -> u64 {
        self.committed_len
    }

    /// Writes `bytes` (whole records) at the end and fdatasyncs. On success
    /// they are durable; returns the offset they start at. On a failed write
    /// the file is cut back to the committed length; on a failed fsync the
    /// log is poisoned.
    pub fn append_durable(&mut self, bytes: &[u8]) -> Result<u64, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let offset = self.committed_len;
        if let Err(e) = self.file.write_all_at(bytes, offset) {
            // Nothing was acknowledged; remove whatever part reached the file
            // so the next group does not land behind garbage.
            if self.file.set_len(offset).is_err() {
                self.poisoned = true;
            }
            return Err(StoreError::Io(
                format!("writing {}", self.path.display()),
                e,
            ));
        }
        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(StoreError::Io(
                format!("fdatasync of {}", self.path.display()),
                e,
            ));
        }
        let end = offset + bytes.len() as u64;
        // fdatasync can report success for data it did not make durable when
        // the filesystem fails at the same moment: while ext4 aborts its
        // journal, fdatasync may return 0 and the data still be lost (seen
        // in tests/storage_faults.rs). A failed filesystem stays failed, and
        // ext4, XFS and btrfs then refuse every write, even an empty one,
        // before doing anything else: so an empty write after the fsync
        // catches a filesystem that failed before or during the fsync, once
        // the kernel has marked it failed. (ext4 marks it only at the end of
        // its abort, so a window of some milliseconds remains that no
        // application can close.) It costs one syscall and touches nothing.
        if let Err(e) = self.file.write_at(&[], end) {
            self.poisoned = true;
            return Err(StoreError::Io(
                format!(
                    "the filesystem of {} failed during fdatasync; its success cannot be trusted",
                    self.path.display()
                ),
                e,
            ));
        }
        self.committed_len = end;
        Ok(offset)
    }
}

/// What a chain scan of a range of records found: the first record's
/// `prev_hash` and the last record's hash and sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainRange {
    /// The `prev_hash` the first record names.
    pub first_prev: Hash,
    /// The last record's sequence.
    pub last_sequence: u64,
    /// The last record's entry hash.
    pub last_hash: Hash,
}

/// Where and why a chain scan failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDamage {
    /// The sequence expected there.
    pub sequence: u64,
    /// The record's byte offset.
    pub offset: u64,
    /// What is wrong.
    pub detail: String,
}

/// Reads the records in `[from, to)` sequentially (a large buffer, no
/// seeks), expecting sequences `first..` without gaps, and checks each
/// one's checksum, its entry hash (recomputed from its fields) and that
/// it names the previous one's hash. What a start from a snapshot checks of
/// the log before the snapshot instead of replaying it: damage or a
/// rewritten entry anywhere is found, at a small part of a replay's cost.
pub fn check_chain(file: &File, from: u64, to: u64, first: u64) -> Result<ChainRange, ChainDamage> {
    use std::io::Read;
    let damage = |sequence: u64, offset: u64, detail: &str| ChainDamage {
        sequence,
        offset,
        detail: detail.to_string(),
    };
    // Positional reads: two checks may share the file (no shared offset).
    struct At<'a> {
        file: &'a File,
        pos: u64,
    }
    impl std::io::Read for At<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.file.read_at(buf, self.pos)?;
            self.pos += n as u64;
            Ok(n)
        }
    }
    let mut r = std::io::BufReader::with_capacity(4 << 20, At { file, pos: from });
    let mut offset = from;
    let mut expected = first;
    let mut out: Option<ChainRange> = None;
    let mut payload = Vec::new();
    while offset < to {
        let mut frame = [0u8; 8];
        r.read_exact(&mut frame)
            .map_err(|e| damage(expected, offset, &format!("reading: {e}")))?;
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let crc = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let end = offset + FRAME_LEN + u64::from(len);
        if len == 0 || len > MAX_PAYLOAD || end > to {
            return Err(damage(expected, offset, "record length is damaged"));
        }
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload)
            .map_err(|e| damage(expected, offset, &format!("reading: {e}")))?;
        if crc32c::crc32c(&payload) != crc {
            return Err(damage(expected, offset, "record fails its checksum"));
        }
        let Some(e) = decode_payload(&payload) else {
            return Err(damage(expected, offset, "record does not decode"));
        };
        if e.sequence != expected {
            return Err(damage(
                expected,
                offset,
                &format!("found sequence {} in its place", e.sequence),
            ));
        }
        if !e.hash_is_valid() {
            return Err(damage(
                expected,
                offset,
                "the entry hash does not match the entry (it was changed after it was written)",
            ));
        }
        match &mut out {
            None => {
                out = Some(ChainRange {
                    first_prev: e.prev_hash,
                    last_sequence: e.sequence,
                    last_hash: e.hash,
                })
            }
            Some(c) => {
                if e.prev_hash != c.last_hash {
                    return Err(damage(
                        expected,
                        offset,
                        "the entry does not name the previous entry's hash: the chain is broken",
                    ));
                }
                c.last_sequence = e.sequence;
                c.last_hash = e.hash;
            }
        }
        expected += 1;
        offset = end;
    }
    out.ok_or_else(|| damage(first, from, "no records in the range"))
}
