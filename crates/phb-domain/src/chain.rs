//! The hash chain and signatures, re-exported from `phb-chain` (where they
//! live, so that the store and auditors' tools need not depend on the
//! domain). Every path `phb_domain::chain::X` keeps working; the bytes
//! hashed are specified in docs/log-format.md.

pub use phb_chain::entry::{
    entry_hash, entry_hash_with, parse_public_key, verify_signature, Hash, LogEntry, Refusal,
    SignedEvent, GENESIS_HASH, MAX_REFUSAL_MESSAGE_BYTES, REFUSAL_TAG,
};
