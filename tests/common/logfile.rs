//! An independent reader and writer of `log/ledger.log`, written from
//! docs/log-format.md §5 (not from phb-store), for tests that cut, flip or
//! extend the file and for tests that map sequences to byte ranges.

use std::path::{Path, PathBuf};

/// The 16-byte file header.
pub const HEADER: [u8; 16] = *b"PHBLEDG1\0\0\0\x01\0\0\0\0";
/// Frame bytes before each payload: u32be length, u32be CRC-32C.
pub const FRAME_LEN: usize = 8;

/// `DATA/log/ledger.log`.
pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("log").join("ledger.log")
}

/// CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, init and final XOR
/// 0xFFFFFFFF (check value of "123456789" is 0xE3069283).
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    crc ^ 0xFFFF_FFFF
}

/// Where one record sits in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The record's sequence.
    pub sequence: u64,
    /// Byte offset of its frame.
    pub offset: u64,
    /// Frame plus payload, in bytes.
    pub len: u64,
}

impl Span {
    /// The offset just past the record.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Every record of a well-formed log, in order. Panics on any damage: use it
/// on logs the test has not damaged.
pub fn spans(bytes: &[u8]) -> Vec<Span> {
    assert!(bytes.len() >= 16, "log shorter than its header");
    assert_eq!(bytes[..16], HEADER, "log header");
    let mut out = Vec::new();
    let mut at = 16usize;
    while at < bytes.len() {
        let frame = bytes
            .get(at..at + FRAME_LEN)
            .unwrap_or_else(|| panic!("record frame at {at} cut short"));
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        let crc = u32::from_be_bytes(frame[4..].try_into().unwrap());
        let payload = bytes
            .get(at + FRAME_LEN..at + FRAME_LEN + len)
            .unwrap_or_else(|| panic!("record at {at} runs past the end"));
        assert_eq!(crc32c(payload), crc, "CRC of the record at {at}");
        let sequence = u64::from_be_bytes(payload[..8].try_into().unwrap());
        assert_eq!(
            sequence,
            out.len() as u64 + 1,
            "sequence of the record at {at}"
        );
        out.push(Span {
            sequence,
            offset: at as u64,
            len: (FRAME_LEN + len) as u64,
        });
        at += FRAME_LEN + len;
    }
    out
}

/// Encodes one entry as a record: `u32be len ‖ u32be crc32c(payload) ‖ payload`.
pub fn encode_record(e: &phb_domain::LogEntry) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&e.sequence.to_be_bytes());
    payload.extend_from_slice(&e.recorded_at_micros.to_be_bytes());
    payload.extend_from_slice(&e.prev_hash);
    payload.extend_from_slice(&e.hash);
    for part in [
        e.signed.signer_id.as_bytes(),
        &e.signed.signature,
        &e.signed.event,
    ] {
        payload.extend_from_slice(&(part.len() as u32).to_be_bytes());
        payload.extend_from_slice(part);
    }
    if let Some(r) = &e.refusal {
        payload.push(b'R');
        payload.extend_from_slice(&r.code.to_be_bytes());
        payload.push(r.flags());
        payload.extend_from_slice(&(r.message.len() as u32).to_be_bytes());
        payload.extend_from_slice(r.message.as_bytes());
    }
    let mut out = Vec::with_capacity(FRAME_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// A wire entry (ReadLog) as the domain type, for `encode_record`.
pub fn entry_from_pb(e: &phb_proto::v1::LogEntry) -> phb_domain::LogEntry {
    let ts = e.recorded_at.as_ref().expect("recorded_at");
    let se = e.signed_event.as_ref().expect("signed_event");
    phb_domain::LogEntry {
        sequence: e.sequence,
        recorded_at_micros: ts.seconds * 1_000_000 + i64::from(ts.nanos / 1000),
        prev_hash: e
            .prev_hash
            .as_slice()
            .try_into()
            .expect("32-byte prev_hash"),
        hash: e.hash.as_slice().try_into().expect("32-byte hash"),
        signed: phb_domain::SignedEvent {
            event: se.event.clone(),
            signer_id: se.signer_id.clone(),
            signature: se.signature.clone(),
        },
        refusal: e.refusal.as_ref().map(|r| phb_domain::Refusal {
            code: r.code,
            in_atomic_batch: r.in_atomic_batch,
            first_in_batch: r.first_in_batch,
            message: r.message.clone(),
        }),
    }
}
