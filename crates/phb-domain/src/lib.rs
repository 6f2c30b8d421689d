//! The pure core of phb-ledger.
//!
//! Domain types (money, events), validation of the exact bytes clients sign,
//! authorisation, the budget rules, the hash chain and the projections.
//! No IO, no async, no clock: time comes in as an argument. Everything that
//! writes (`phb-engine`) and everything that replays (startup, auditors)
//! goes through the same `Ledger::decide` / `Ledger::apply`.
#![deny(missing_docs)]

pub mod categories;
pub mod chain;
pub mod controls;
pub mod error;
pub mod event;
pub mod ledger;
pub mod money;
pub mod projections;
pub mod text;
pub mod wire;

pub use chain::{entry_hash, entry_hash_with, Hash, LogEntry, Refusal, SignedEvent, GENESIS_HASH};
pub use error::{Reject, RejectCode};
pub use event::{Event, EventKind, Management, Role};
pub use ledger::{
    Admission, Admitted, Budget, Change, Head, HoldingsScope, Ledger, Organisation, Reader,
    ReplayError, Stored, Undo,
};
pub use money::Money;
pub use projections::{Committed, Flags, Projection, ReadModel};
