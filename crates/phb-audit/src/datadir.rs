//! Reading a data directory for an export, without a server and without
//! changing anything: `ledger-id`, `log/ledger.log` (docs/log-format.md §5)
//! and `checkpoints.notes` (docs/audit.md). Nothing is locked or written,
//! so it also reads the directory of a running server; the entries of a
//! group being written at that moment may be cut off (a torn tail), which
//! is reported, not exported.

use phb_chain::LogEntry;
use phb_store::logfile::{decode_payload, FRAME_LEN, HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// The log file, relative to the data directory.
pub const LOG_FILE: &str = "log/ledger.log";
/// The kept checkpoints, relative to the data directory.
pub const CHECKPOINTS_FILE: &str = "checkpoints.notes";
/// The ledger id file.
pub const LEDGER_ID_FILE: &str = "ledger-id";
/// The longest note accepted from `checkpoints.notes` (as the server).
const MAX_KEPT_NOTE_BYTES: u32 = 4096;

/// Why a data directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The log is damaged before its end (the server would refuse to start).
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, where.
        reason: String,
    },
}

/// The ledger id in `ledger-id`.
pub fn ledger_id(dir: &Path) -> Result<String, DataDirError> {
    let path = dir.join(LEDGER_ID_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| DataDirError::Io {
        path: path.clone(),
        source,
    })?;
    let id = text.trim().to_string();
    phb_domain::event::check_id("ledger-id", &id, phb_domain::event::MAX_ID_LEN).map_err(|r| {
        DataDirError::Corrupt {
            path,
            reason: r.message,
        }
    })?;
    Ok(id)
}

/// Reads every whole record of `log/ledger.log` in order, handing each
/// entry to `each`; answers the length of the torn tail. A damaged record
/// that runs to the end of the file, or an all-zero tail, is a torn tail
/// (an unacknowledged write, which the server cuts off when it starts):
/// its length is the answer, not an error. Damage followed by more data is
/// an error naming the sequence.
pub fn read_log(
    dir: &Path,
    mut each: impl FnMut(LogEntry) -> Result<(), DataDirError>,
) -> Result<u64, DataDirError> {
    let path = dir.join(LOG_FILE);
    let io = |source| DataDirError::Io {
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let corrupt = |reason: String| DataDirError::Corrupt {
        path: path.clone(),
        reason,
    };
    let mut header = [0u8; HEADER_LEN as usize];
    if len < HEADER_LEN {
        return Err(corrupt(format!(
            "the log is {len} bytes, shorter than its 16-byte header"
        )));
    }
    r.read_exact(&mut header).map_err(io)?;
    if &header[..8] != MAGIC || header[8..12] != VERSION.to_be_bytes() || header[12..16] != [0; 4] {
        return Err(corrupt(
            "the log's header is not PHBLEDG1, version 1".into(),
        ));
    }
    let mut at = HEADER_LEN;
    let mut next = 1u64;
    let mut payload = Vec::new();
    while at < len {
        let left = len - at;
        // Damage followed by more data: the log is corrupt (a torn write
        // runs to the end of the file).
        let damaged = |what: String| {
            corrupt(format!(
                "the record of sequence {next} at byte {at} {what}, and more data follows it"
            ))
        };
        if left < FRAME_LEN {
            return Ok(left);
        }
        let mut frame = [0u8; FRAME_LEN as usize];
        r.read_exact(&mut frame).map_err(io)?;
        let plen = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
        let crc = u32::from_be_bytes(frame[4..].try_into().expect("4 bytes"));
        if plen == 0 && crc == 0 {
            // An all-zero tail (preallocated or zero-filled by a crash).
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).map_err(io)?;
            if rest.iter().all(|b| *b == 0) {
                return Ok(left);
            }
            return Err(damaged("is zero-length".into()));
        }
        if u64::from(plen) > left - FRAME_LEN {
            // Runs past the end: a write cut short.
            return Ok(left);
        }
        if plen > MAX_PAYLOAD {
            return Err(damaged(format!(
                "states a {plen}-byte payload (at most 1 MiB)"
            )));
        }
        payload.resize(plen as usize, 0);
        r.read_exact(&mut payload).map_err(io)?;
        let end = at + FRAME_LEN + u64::from(plen);
        if crc32c::crc32c(&payload) != crc {
            if end == len {
                return Ok(left);
            }
            return Err(damaged("fails its CRC".into()));
        }
        let entry = decode_payload(&payload).ok_or_else(|| {
            corrupt(format!(
                "the record of sequence {next} at byte {at} passes its CRC but does not decode"
            ))
        })?;
        if entry.sequence != next {
            return Err(corrupt(format!(
                "the record at byte {at} holds sequence {} where {next} was expected",
                entry.sequence
            )));
        }
        each(entry)?;
        next += 1;
        at = end;
    }
    Ok(0)
}

/// The notes in `checkpoints.notes` (absent: none), each as a 4-byte
/// big-endian length and the note; a torn last record is reported in the
/// answer's second part.
pub fn read_checkpoints(dir: &Path) -> Result<(Vec<String>, u64), DataDirError> {
    let path = dir.join(CHECKPOINTS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(source) => return Err(DataDirError::Io { path, source }),
    };
    let mut notes = Vec::new();
    let mut at = 0usize;
    while at + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let end = at + 4 + len as usize;
        if len == 0 || len > MAX_KEPT_NOTE_BYTES || end > bytes.len() {
            break;
        }
        let text = std::str::from_utf8(&bytes[at + 4..end]).map_err(|_| DataDirError::Corrupt {
            path: path.clone(),
            reason: format!("checkpoint {} is not UTF-8", notes.len()),
        })?;
        notes.push(text.to_string());
        at = end;
    }
    Ok((notes, (bytes.len() - at) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use phb_chain::SignedEvent;

    fn entries(n: u64) -> Vec<LogEntry> {
        let mut prev = phb_chain::GENESIS_HASH;
        (1..=n)
            .map(|s| {
                let e = LogEntry::next(
                    prev,
                    s,
                    s as i64,
                    SignedEvent {
                        event: vec![1, 2, 3],
                        signer_id: "root".into(),
                        signature: vec![9; 64],
                    },
                );
                prev = e.hash;
                e
            })
            .collect()
    }

    fn write(dir: &Path, log: &[u8], notes: &[u8]) {
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join(LOG_FILE), log).unwrap();
        std::fs::write(dir.join(CHECKPOINTS_FILE), notes).unwrap();
        std::fs::write(dir.join(LEDGER_ID_FILE), "phb-test\n").unwrap();
    }

    fn read(dir: &Path) -> Result<(Vec<LogEntry>, u64), DataDirError> {
        let mut out = Vec::new();
        let torn = read_log(dir, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok((out, torn))
    }

    #[test]
    fn whole_records_a_torn_tail_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let es = entries(3);
        let mut log = b"PHBLEDG1\0\0\0\x01\0\0\0\0".to_vec();
        let mut ends = Vec::new();
        for e in &es {
            phb_store::logfile::encode_record(e, &mut log);
            ends.push(log.len());
        }
        let mut notes = Vec::new();
        notes.extend_from_slice(&5u32.to_be_bytes());
        notes.extend_from_slice(b"note\n");
        notes.extend_from_slice(&[0, 0, 0]);
        write(dir.path(), &log, &notes);
        assert_eq!(ledger_id(dir.path()).unwrap(), "phb-test");
        assert_eq!(read(dir.path()).unwrap(), (es.clone(), 0));
        assert_eq!(
            read_checkpoints(dir.path()).unwrap(),
            (vec!["note\n".to_string()], 3)
        );

        // A write cut short: the whole records, and the rest reported.
        for cut in [ends[1] + 3, ends[2] - 1] {
            write(dir.path(), &log[..cut], &notes);
            let (got, torn) = read(dir.path()).unwrap();
            assert_eq!(got, es[..2].to_vec());
            assert_eq!(torn, (cut - ends[1]) as u64);
        }
        // A zero-filled tail.
        let mut zeros = log.clone();
        zeros.extend_from_slice(&[0; 40]);
        write(dir.path(), &zeros, &notes);
        assert_eq!(read(dir.path()).unwrap(), (es.clone(), 40));
        // Damage with a record after it: an error naming the sequence.
        let mut bad = log.clone();
        bad[ends[0] + 20] ^= 1;
        write(dir.path(), &bad, &notes);
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("sequence 2"), "{err}");
        // Damage in the last record: a torn tail.
        let mut last = log.clone();
        last[ends[2] - 1] ^= 1;
        write(dir.path(), &last, &notes);
        assert_eq!(read(dir.path()).unwrap().0, es[..2].to_vec());
    }
}
