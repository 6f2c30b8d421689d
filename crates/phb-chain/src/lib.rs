//! The ledger's tamper evidence, pure: what an auditor recomputes.
//!
//! - [`entry`]: log entries, the entry hash that chains them and the
//!   signature checks (docs/log-format.md gives every hashed byte).
//!
//! No IO, no async, no clock, no floating point. Depends only on sha2,
//! ed25519-dalek and thiserror; never on the domain crate, storage
//! or tokio, so the store, the server and offline auditors' tools can all
//! use it.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod entry;

pub use entry::{
    entry_hash, entry_hash_with, parse_public_key, verify_signature, Hash, LogEntry, Refusal,
    SignedEvent, GENESIS_HASH,
};
