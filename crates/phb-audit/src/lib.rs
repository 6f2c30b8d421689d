//! The auditors' toolkit for phb-ledger, without a runtime (no tokio, no
//! network): what `phb-ledger export` and `phb-ledger audit verify` are
//! made of, testable on their own.
//!
//! - [`export`]: the export file — a header, the log entries as canonical
//!   protobuf `LogEntry` messages, the signed checkpoints, an end record —
//!   its strict, bounded reader and its writer (docs/audit.md, "Export
//!   files", gives every byte);
//! - [`jsonl`]: one JSON object per entry, for people and spreadsheets;
//! - [`datadir`]: the entries and checkpoints of a data directory, read
//!   without a server and without changing anything;
//! - [`verify()`]: the whole verification of an export — sequences, the
//!   hash chain, every signature (batched) under the signer's key at that
//!   point, every rule and signer's authority re-decided by
//!   `phb_domain::Ledger::replay`, the Merkle root of the first n entries
//!   against every checkpoint, every projection recomputed — with the
//!   first failure named by its sequence;
//! - [`receipts`]: the receipts a partner kept, checked against an export;
//! - [`against`]: the recomputed balances and flags compared with a live
//!   server's answers (which the caller fetches).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod against;
pub mod datadir;
pub mod export;
pub mod jsonl;
pub mod receipts;
mod signatures;
pub mod verify;

pub use verify::{verify, Summary, Verified, VerifyOptions};

use ed25519_dalek::VerifyingKey;

/// Every checkpoint origin (and ledger key name) of this software is
/// `phb-ledger/{ledger id}`.
pub const ORIGIN_PREFIX: &str = "phb-ledger/";

/// Where a verification failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The file header (magic, version, ledger id).
    Header,
    /// The entry record at this position, counted from 1: the entry of this
    /// sequence in a valid export.
    Entry(u64),
    /// The checkpoint record at this index (from 0), and the tree size it
    /// states if it could be read.
    Checkpoint {
        /// Its index among the checkpoint records.
        index: usize,
        /// The tree size it states.
        size: Option<u64>,
    },
    /// The end record, or what follows it.
    End,
    /// The projections recomputed from the entries disagree with each other.
    Projections,
    /// A receipt (its line in the receipts file, from 1, and the sequence
    /// it names).
    Receipt {
        /// The line.
        line: usize,
        /// The sequence it names.
        sequence: u64,
    },
    /// The live server's answers (`--against`).
    Server,
    /// The options given (keys, ledger id).
    Options,
}

impl Location {
    /// The sequence of the entry this location is in, if any.
    pub fn sequence(&self) -> Option<u64> {
        match self {
            Location::Entry(s) => Some(*s),
            Location::Receipt { sequence, .. } => Some(*sequence),
            _ => None,
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Header => write!(f, "export header"),
            Location::Entry(s) => write!(f, "entry at sequence {s}"),
            Location::Checkpoint {
                index,
                size: Some(size),
            } => write!(f, "checkpoint {index} (tree size {size})"),
            Location::Checkpoint { index, size: None } => write!(f, "checkpoint {index}"),
            Location::End => write!(f, "end record"),
            Location::Projections => write!(f, "recomputed projections"),
            Location::Receipt { line, sequence } => {
                write!(f, "receipt on line {line} (sequence {sequence})")
            }
            Location::Server => write!(f, "the live server's answer"),
            Location::Options => write!(f, "options"),
        }
    }
}

/// The first thing found wrong: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where.
    pub location: Location,
    /// Why, in words.
    pub reason: String,
}

impl Failure {
    /// A failure at `location`.
    pub fn new(location: Location, reason: impl Into<String>) -> Failure {
        Failure {
            location,
            reason: reason.into(),
        }
    }

    /// The sequence of the entry it names, if any.
    pub fn sequence(&self) -> Option<u64> {
        self.location.sequence()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

impl std::error::Error for Failure {}

impl From<export::FormatError> for Failure {
    fn from(e: export::FormatError) -> Failure {
        match e {
            export::FormatError::Malformed { location, reason } => Failure { location, reason },
            export::FormatError::Io(e) => {
                Failure::new(Location::End, format!("reading the export: {e}"))
            }
        }
    }
}

/// The ledger key as given: the key, and the name it was published under
/// if it came as a C2SP verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerKey {
    /// The Ed25519 public key.
    pub key: VerifyingKey,
    /// The verifier key's name (`phb-ledger/{ledger id}`), if given as one.
    pub name: Option<String>,
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Reads a public key in 64 hex characters, strictly (a canonical point of
/// prime order, as the ledger accepts keys).
pub fn parse_public_key_hex(text: &str) -> Result<VerifyingKey, String> {
    let bytes = hex32(text).ok_or("not 64 hex characters")?;
    phb_chain::parse_public_key(&bytes)
        .ok_or_else(|| "not a valid Ed25519 public key (weak, mixed-order or non-canonical)".into())
}

/// Reads `--ledger-key`: a C2SP verifier key (`phb-ledger/ID+KEYHASH+BASE64`,
/// as `GetCheckpoint.verifier_key` spells it) or 64 hex characters.
pub fn parse_ledger_key(text: &str) -> Result<LedgerKey, String> {
    let text = text.trim();
    if text.contains('+') {
        let (name, key) = phb_chain::parse_vkey(text).map_err(|e| e.to_string())?;
        return Ok(LedgerKey {
            key,
            name: Some(name),
        });
    }
    Ok(LedgerKey {
        key: parse_public_key_hex(text)?,
        name: None,
    })
}
