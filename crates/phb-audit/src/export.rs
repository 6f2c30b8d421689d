//! The export file: a portable copy of a ledger's log entries and its
//! checkpoints, for verification away from the server (docs/audit.md,
//! "Export files", gives every byte).
//!
//! ```text
//! file    = header ‖ entry* ‖ checkpoint* ‖ end
//! header  = "PHBEXPT1" ‖ u32be(1) ‖ u32be(0) ‖ u32be(len) ‖ ledger id
//! entry   = 'E' ‖ u32be(len) ‖ LogEntry        (protobuf, canonical encoding)
//! checkpoint = 'C' ‖ u32be(len) ‖ signed note  (UTF-8)
//! end     = 'Z' ‖ u32be(12) ‖ u64be(entries) ‖ u32be(checkpoints)
//! ```
//!
//! The reader is strict and bounded: every length is checked against its
//! limit before anything is allocated, an entry must be the canonical
//! protobuf encoding of a `LogEntry` (re-encoding it gives the same bytes,
//! so no two different files carry the same entries), and nothing may
//! follow the end record.

pub use crate::Location;
use phb_chain::{Hash, LogEntry, Refusal, SignedEvent};
use phb_proto::v1 as pb;
use prost::Message;
use std::io::{Read, Write};

/// The file magic.
pub const MAGIC: &[u8; 8] = b"PHBEXPT1";
/// The format version.
pub const VERSION: u32 = 1;
/// The tag of an entry record.
pub const TAG_ENTRY: u8 = b'E';
/// The tag of a checkpoint record.
pub const TAG_CHECKPOINT: u8 = b'C';
/// The tag of the end record.
pub const TAG_END: u8 = b'Z';
/// The longest ledger id in a header (ids are at most 128 bytes).
pub const MAX_LEDGER_ID_BYTES: u32 = 128;
/// The longest entry record body: an event is at most 64 KiB and a log
/// record at most 1 MiB, so this is generous.
pub const MAX_ENTRY_BYTES: u32 = 2 * 1024 * 1024;
/// The longest checkpoint record body (`phb_chain::note::MAX_NOTE_BYTES`).
pub const MAX_CHECKPOINT_BYTES: u32 = phb_chain::note::MAX_NOTE_BYTES as u32;
/// The length of the end record's body.
pub const END_BODY_BYTES: u32 = 12;

/// Why an export could not be read (or written).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The bytes are not a well-formed export.
    #[error("{location}: {reason}")]
    Malformed {
        /// Where.
        location: Location,
        /// Why.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl FormatError {
    fn at(location: Location, reason: impl Into<String>) -> FormatError {
        FormatError::Malformed {
            location,
            reason: reason.into(),
        }
    }
}

/// The wire form of a log entry, exactly as `ReadLog` sends it
/// (`phb_grpc::entry_pb`): `recorded_at` from microseconds by Euclidean
/// division, so `nanos` is a whole number of microseconds.
pub fn entry_pb(e: &LogEntry) -> pb::LogEntry {
    pb::LogEntry {
        sequence: e.sequence,
        recorded_at: Some(prost_types::Timestamp {
            seconds: e.recorded_at_micros.div_euclid(1_000_000),
            nanos: (e.recorded_at_micros.rem_euclid(1_000_000) * 1000) as i32,
        }),
        prev_hash: e.prev_hash.to_vec(),
        hash: e.hash.to_vec(),
        signed_event: Some(pb::SignedEvent {
            event: e.signed.event.clone(),
            signer_id: e.signed.signer_id.clone(),
            signature: e.signed.signature.clone(),
        }),
        refusal: e.refusal.as_ref().map(|r| pb::Refusal {
            code: r.code,
            in_atomic_batch: r.in_atomic_batch,
            message: r.message.clone(),
            first_in_batch: r.first_in_batch,
        }),
    }
}

/// The log entry a wire `LogEntry` states, read strictly (docs/log-format.md
/// §3): `recorded_at` and `signed_event` present, `0 ≤ nanos < 10^9` and a
/// whole number of microseconds, 32-byte hashes, a refusal's flags valid
/// and its message at most 1,024 bytes. The hash is not checked here.
pub fn entry_from_pb(e: &pb::LogEntry) -> Result<LogEntry, String> {
    let ts = e.recorded_at.as_ref().ok_or("recorded_at is missing")?;
    if !(0..1_000_000_000).contains(&ts.nanos) || ts.nanos % 1000 != 0 {
        return Err(format!(
            "recorded_at.nanos is {}: the server writes whole microseconds from 0 to 999999000",
            ts.nanos
        ));
    }
    let recorded_at_micros = ts
        .seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(ts.nanos / 1000)))
        .ok_or("recorded_at is out of range")?;
    let hash32 = |name: &str, b: &[u8]| -> Result<Hash, String> {
        b.try_into()
            .map_err(|_| format!("{name} is {} bytes; it must be 32", b.len()))
    };
    let se = e.signed_event.as_ref().ok_or("signed_event is missing")?;
    let refusal = match &e.refusal {
        None => None,
        Some(r) => {
            if r.first_in_batch && !r.in_atomic_batch {
                return Err("refusal.first_in_batch is set without in_atomic_batch".into());
            }
            if r.message.len() > phb_chain::entry::MAX_REFUSAL_MESSAGE_BYTES {
                return Err(format!(
                    "refusal.message is {} bytes; at most 1024 are recorded",
                    r.message.len()
                ));
            }
            Some(Refusal {
                code: r.code,
                in_atomic_batch: r.in_atomic_batch,
                first_in_batch: r.first_in_batch,
                message: r.message.clone(),
            })
        }
    };
    Ok(LogEntry {
        sequence: e.sequence,
        recorded_at_micros,
        prev_hash: hash32("prev_hash", &e.prev_hash)?,
        hash: hash32("hash", &e.hash)?,
        signed: SignedEvent {
            event: se.event.clone(),
            signer_id: se.signer_id.clone(),
            signature: se.signature.clone(),
        },
        refusal,
    })
}

/// Writes an export: the header at once, then entries, then checkpoints,
/// then `finish` writes the end record.
pub struct ExportWriter<W: Write> {
    out: W,
    entries: u64,
    checkpoints: u32,
    buf: Vec<u8>,
}

impl<W: Write> ExportWriter<W> {
    /// Starts an export of ledger `ledger_id` on `out`.
    pub fn new(mut out: W, ledger_id: &str) -> Result<ExportWriter<W>, FormatError> {
        if ledger_id.is_empty() || ledger_id.len() > MAX_LEDGER_ID_BYTES as usize {
            return Err(FormatError::at(
                Location::Header,
                format!("ledger id {ledger_id:?} must be 1 to 128 bytes"),
            ));
        }
        let mut header = Vec::with_capacity(20 + ledger_id.len());
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_be_bytes());
        header.extend_from_slice(&0u32.to_be_bytes());
        header.extend_from_slice(&(ledger_id.len() as u32).to_be_bytes());
        header.extend_from_slice(ledger_id.as_bytes());
        out.write_all(&header)?;
        Ok(ExportWriter {
            out,
            entries: 0,
            checkpoints: 0,
            buf: Vec::new(),
        })
    }

    fn record(&mut self, tag: u8, body: &[u8]) -> Result<(), FormatError> {
        self.out.write_all(&[tag])?;
        self.out.write_all(&(body.len() as u32).to_be_bytes())?;
        self.out.write_all(body)?;
        Ok(())
    }

    /// Appends an entry as `ReadLog` sent it (canonically re-encoded).
    pub fn entry_pb(&mut self, e: &pb::LogEntry) -> Result<(), FormatError> {
        let position = self.entries + 1;
        if self.checkpoints > 0 {
            return Err(FormatError::at(
                Location::Entry(position),
                "entries must come before the checkpoints",
            ));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        e.encode(&mut buf)
            .map_err(|err| FormatError::at(Location::Entry(position), err.to_string()))?;
        if buf.is_empty() || buf.len() > MAX_ENTRY_BYTES as usize {
            return Err(FormatError::at(
                Location::Entry(position),
                format!("the entry is {} bytes encoded (1 to 2 MiB)", buf.len()),
            ));
        }
        self.record(TAG_ENTRY, &buf)?;
        self.buf = buf;
        self.entries += 1;
        Ok(())
    }

    /// Appends a log entry.
    pub fn entry(&mut self, e: &LogEntry) -> Result<(), FormatError> {
        self.entry_pb(&entry_pb(e))
    }

    /// Appends a signed checkpoint note.
    pub fn checkpoint(&mut self, note: &str) -> Result<(), FormatError> {
        let location = Location::Checkpoint {
            index: self.checkpoints as usize,
            size: None,
        };
        if note.is_empty() || note.len() > MAX_CHECKPOINT_BYTES as usize {
            return Err(FormatError::at(
                location,
                format!(
                    "a checkpoint note is 1 to 8192 bytes; this one is {}",
                    note.len()
                ),
            ));
        }
        self.record(TAG_CHECKPOINT, note.as_bytes())?;
        self.checkpoints += 1;
        Ok(())
    }

    /// The number of entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Writes the end record and returns the output (not flushed).
    pub fn finish(mut self) -> Result<W, FormatError> {
        let mut body = Vec::with_capacity(END_BODY_BYTES as usize);
        body.extend_from_slice(&self.entries.to_be_bytes());
        body.extend_from_slice(&self.checkpoints.to_be_bytes());
        self.record(TAG_END, &body)?;
        Ok(self.out)
    }
}

/// One record of an export, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An entry record: its position (from 1) and the entry it states.
    Entry(u64, LogEntry),
    /// A checkpoint record: its index (from 0) and its note.
    Checkpoint(usize, String),
}

/// Reads an export record by record, checking the format as it goes;
/// after the last record it checks the end record and that nothing follows.
pub struct ExportReader<R: Read> {
    input: R,
    ledger_id: String,
    entries: u64,
    checkpoints: usize,
    done: bool,
    /// Bytes read so far (for messages).
    offset: u64,
}

impl<R: Read> ExportReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<ExportReader<R>, FormatError> {
        let mut head = [0u8; 20];
        read_exact_or(
            &mut input,
            &mut head,
            Location::Header,
            "the file is shorter than its header",
        )?;
        if &head[..8] != MAGIC {
            return Err(FormatError::at(
                Location::Header,
                "bytes 0-7 are not \"PHBEXPT1\": not a phb-ledger export",
            ));
        }
        let version = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(FormatError::at(
                Location::Header,
                format!("format version {version} (bytes 8-11); this reader knows version 1"),
            ));
        }
        if head[12..16] != [0; 4] {
            return Err(FormatError::at(
                Location::Header,
                "bytes 12-15 (reserved) are not zero",
            ));
        }
        let len = u32::from_be_bytes(head[16..20].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_LEDGER_ID_BYTES {
            return Err(FormatError::at(
                Location::Header,
                format!("the ledger id is {len} bytes (bytes 16-19); it must be 1 to 128"),
            ));
        }
        let mut id = vec![0u8; len as usize];
        read_exact_or(
            &mut input,
            &mut id,
            Location::Header,
            "the ledger id is cut short",
        )?;
        let ledger_id = String::from_utf8(id)
            .ok()
            .filter(|s| {
                phb_domain::event::check_id("ledger_id", s, phb_domain::event::MAX_ID_LEN).is_ok()
            })
            .ok_or_else(|| FormatError::at(Location::Header, "the ledger id is not a valid id"))?;
        Ok(ExportReader {
            input,
            ledger_id,
            entries: 0,
            checkpoints: 0,
            done: false,
            offset: 20 + u64::from(len),
        })
    }

    /// The ledger id the header names.
    pub fn ledger_id(&self) -> &str {
        &self.ledger_id
    }

    /// Where the next record would be.
    fn next_location(&self) -> Location {
        if self.checkpoints == 0 {
            Location::Entry(self.entries + 1)
        } else {
            Location::Checkpoint {
                index: self.checkpoints,
                size: None,
            }
        }
    }

    /// The next entry or checkpoint; `None` after a valid end record with
    /// nothing after it.
    pub fn next_item(&mut self) -> Result<Option<Item>, FormatError> {
        if self.done {
            return Ok(None);
        }
        let at = self.next_location();
        let mut frame = [0u8; 5];
        let offset = self.offset;
        read_exact_or(
            &mut self.input,
            &mut frame,
            at.clone(),
            &format!("the file ends at byte {offset} without its end record: it was cut short"),
        )?;
        self.offset += 5;
        let tag = frame[0];
        let len = u32::from_be_bytes(frame[1..5].try_into().expect("4 bytes"));
        match tag {
            TAG_ENTRY => {
                let at = Location::Entry(self.entries + 1);
                if self.checkpoints > 0 {
                    // Entries come first: name the entry this would be.
                    return Err(FormatError::at(
                        at,
                        "an entry record follows the checkpoint records (entries come first)",
                    ));
                }
                if len == 0 || len > MAX_ENTRY_BYTES {
                    return Err(FormatError::at(
                        at,
                        format!("the entry record's length is {len} (1 to 2 MiB)"),
                    ));
                }
                let body = self.body(len, &at)?;
                let wire = pb::LogEntry::decode(body.as_slice()).map_err(|e| {
                    FormatError::at(at.clone(), format!("not a protobuf LogEntry: {e}"))
                })?;
                if wire.encode_to_vec() != body {
                    return Err(FormatError::at(
                        at,
                        "the LogEntry is not in canonical protobuf encoding (unknown, repeated or out-of-order fields, or non-minimal varints)",
                    ));
                }
                let entry = entry_from_pb(&wire).map_err(|e| FormatError::at(at, e))?;
                self.entries += 1;
                Ok(Some(Item::Entry(self.entries, entry)))
            }
            TAG_CHECKPOINT => {
                let at = Location::Checkpoint {
                    index: self.checkpoints,
                    size: None,
                };
                if len == 0 || len > MAX_CHECKPOINT_BYTES {
                    return Err(FormatError::at(
                        at,
                        format!("the checkpoint record's length is {len} (1 to 8192)"),
                    ));
                }
                let body = self.body(len, &at)?;
                let note = String::from_utf8(body)
                    .map_err(|_| FormatError::at(at, "the note is not UTF-8"))?;
                self.checkpoints += 1;
                Ok(Some(Item::Checkpoint(self.checkpoints - 1, note)))
            }
            TAG_END => {
                if len != END_BODY_BYTES {
                    return Err(FormatError::at(
                        Location::End,
                        format!("the end record's length is {len}; it must be 12"),
                    ));
                }
                let body = self.body(len, &Location::End)?;
                let entries = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
                let checkpoints = u32::from_be_bytes(body[8..].try_into().expect("4 bytes"));
                if entries != self.entries || u64::from(checkpoints) != self.checkpoints as u64 {
                    return Err(FormatError::at(
                        Location::End,
                        format!(
                            "the end record counts {entries} entries and {checkpoints} checkpoints, but the file holds {} and {}: records were removed or added",
                            self.entries, self.checkpoints
                        ),
                    ));
                }
                let mut extra = [0u8; 1];
                loop {
                    match self.input.read(&mut extra) {
                        Ok(0) => break,
                        Ok(_) => {
                            return Err(FormatError::at(
                                Location::End,
                                "bytes follow the end record",
                            ))
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                self.done = true;
                Ok(None)
            }
            other => Err(FormatError::at(
                at,
                format!(
                    "a record with tag 0x{other:02x} at byte {offset} (records are 'E', 'C' or 'Z')"
                ),
            )),
        }
    }

    fn body(&mut self, len: u32, at: &Location) -> Result<Vec<u8>, FormatError> {
        // `len` is bounded by the caller, so this allocation is too.
        let mut body = vec![0u8; len as usize];
        let offset = self.offset;
        read_exact_or(
            &mut self.input,
            &mut body,
            at.clone(),
            &format!(
                "the record at byte {} runs past the end of the file",
                offset - 5
            ),
        )?;
        self.offset += u64::from(len);
        Ok(body)
    }

    /// Entries read so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }
}

fn read_exact_or<R: Read>(
    input: &mut R,
    buf: &mut [u8],
    at: Location,
    short: &str,
) -> Result<(), FormatError> {
    match input.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(FormatError::at(at, short.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// An export held in memory: the ledger id, the entries and the notes.
/// For tools and tests that rewrite exports (`read_all`, `write_all`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The ledger id of the header.
    pub ledger_id: String,
    /// The entries, in file order.
    pub entries: Vec<LogEntry>,
    /// The checkpoint notes, in file order.
    pub checkpoints: Vec<String>,
}

impl Export {
    /// Reads a whole export.
    pub fn read_all<R: Read>(input: R) -> Result<Export, FormatError> {
        let mut r = ExportReader::new(input)?;
        let mut out = Export {
            ledger_id: r.ledger_id().to_string(),
            entries: Vec::new(),
            checkpoints: Vec::new(),
        };
        while let Some(item) = r.next_item()? {
            match item {
                Item::Entry(_, e) => out.entries.push(e),
                Item::Checkpoint(_, n) => out.checkpoints.push(n),
            }
        }
        Ok(out)
    }

    /// Writes it as an export file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        let mut w = ExportWriter::new(Vec::new(), &self.ledger_id)?;
        for e in &self.entries {
            w.entry(e)?;
        }
        for n in &self.checkpoints {
            w.checkpoint(n)?;
        }
        w.finish()
    }

    /// Where each record lies in `to_bytes()`'s output: the header's
    /// length, then (location, start, end) of every record body and frame.
    pub fn layout(&self) -> Vec<(Location, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        let header = 20 + self.ledger_id.len();
        out.push((Location::Header, 0..header));
        let mut at = header;
        for (i, e) in self.entries.iter().enumerate() {
            let len = 5 + entry_pb(e).encoded_len();
            out.push((Location::Entry(i as u64 + 1), at..at + len));
            at += len;
        }
        for (i, n) in self.checkpoints.iter().enumerate() {
            let len = 5 + n.len();
            out.push((
                Location::Checkpoint {
                    index: i,
                    size: None,
                },
                at..at + len,
            ));
            at += len;
        }
        out.push((Location::End, at..at + 5 + END_BODY_BYTES as usize));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, refused: bool) -> LogEntry {
        LogEntry::sealed(
            [seq as u8; 32],
            seq,
            1_764_000_000_000_000 + seq as i64,
            SignedEvent {
                event: vec![0x0a, 0x01, b'a' + seq as u8],
                signer_id: "root".into(),
                signature: vec![7; 64],
            },
            refused.then(|| Refusal::new(9, false, "no")),
        )
    }

    #[test]
    fn round_trip_and_layout() {
        let x = Export {
            ledger_id: "phb-test".into(),
            entries: vec![entry(1, false), entry(2, true), entry(3, false)],
            checkpoints: vec!["note one\n".into(), "note two\n".into()],
        };
        let bytes = x.to_bytes().unwrap();
        // The header docs/audit.md ("Export files") spells out.
        let hex: String = bytes[..28].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5048424558505431000000010000000000000008706862 2d74657374".replace(' ', "")
        );
        assert_eq!(Export::read_all(bytes.as_slice()).unwrap(), x);
        let layout = x.layout();
        assert_eq!(layout.last().unwrap().1.end, bytes.len());
        for w in layout.windows(2) {
            assert_eq!(w[0].1.end, w[1].1.start);
        }
        // Cut anywhere: an error, never a panic or a shorter export.
        for cut in 0..bytes.len() {
            assert!(Export::read_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A byte after the end record.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Export::read_all(longer.as_slice()).is_err());
    }

    #[test]
    fn non_canonical_entries_are_refused() {
        let x = Export {
            ledger_id: "phb-test".into(),
            entries: vec![entry(1, false)],
            checkpoints: vec![],
        };
        let bytes = x.to_bytes().unwrap();
        // Append an unknown field (number 15, varint 0) inside the entry
        // record and fix its length.
        let (_, range) = x.layout()[1].clone();
        let mut body = bytes[range.start + 5..range.end].to_vec();
        body.extend_from_slice(&[0x78, 0x00]);
        let mut out = bytes[..range.start].to_vec();
        out.push(TAG_ENTRY);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&bytes[range.end..]);
        let err = Export::read_all(out.as_slice()).unwrap_err().to_string();
        assert!(err.contains("canonical"), "{err}");
    }

    #[test]
    fn wire_times_must_be_whole_microseconds() {
        let mut w = entry_pb(&entry(1, false));
        assert_eq!(entry_from_pb(&w).unwrap(), entry(1, false));
        w.recorded_at.as_mut().unwrap().nanos += 1;
        assert!(entry_from_pb(&w).is_err());
        w.recorded_at.as_mut().unwrap().nanos = 1_000_000_000;
        assert!(entry_from_pb(&w).is_err());
        let mut neg = entry(1, false);
        neg.recorded_at_micros = -1;
        let w = entry_pb(&neg);
        assert_eq!(w.recorded_at.as_ref().unwrap().seconds, -1);
        assert_eq!(entry_from_pb(&w).unwrap().recorded_at_micros, -1);
    }
}
