//! The ledger's tamper evidence, pure: what an auditor recomputes.
//!
//! - [`entry`]: log entries, the entry hash that chains them and the
//!   signature checks (docs/log-format.md gives every hashed byte);
//! - [`merkle`]: the RFC 9162 Merkle tree over the entry hashes, appended
//!   incrementally, with inclusion and consistency proofs and their
//!   verifiers;
//! - [`note`]: checkpoints (signed tree heads) in the C2SP tlog-checkpoint
//!   and signed-note formats, and the verifier-key text of the ledger key.
//!
//! No IO, no async, no clock, no floating point. Depends only on sha2,
//! ed25519-dalek, base64 and thiserror; never on the domain crate, storage
//! or tokio, so the store, the server and offline auditors' tools can all
//! use it.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod entry;
pub mod merkle;
pub mod note;

pub use entry::{
    entry_hash, entry_hash_with, parse_public_key, verify_signature, Hash, LogEntry, Refusal,
    SignedEvent, GENESIS_HASH,
};
pub use merkle::{
    consistency_plan, inclusion_plan, leaf_hash, node_hash, root_nodes, verify_consistency,
    verify_inclusion, Frontier, MemoryTree, NodeId, ProofError, ProofPlan, EMPTY_ROOT,
};
pub use note::{
    open_note, parse_and_verify, parse_vkey, sign_checkpoint, sign_note, vkey, Checkpoint,
    NoteError,
};
