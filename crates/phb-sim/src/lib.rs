//! The one simulation model of phb-ledger's write path, driven both by the
//! property tests (`crates/phb-domain/tests/properties.rs`, proptest) and by
//! the fuzz targets (`fuzz/`, libFuzzer):
//!
//! * [`cast`]: the root key and a handful of organisations with keys derived
//!   from small seeds, the budgets they run, and the events that set them up;
//! * [`writer`]: `phb-engine`'s writer without the store, driving
//!   `Ledger::admit` / `Ledger::admit_failed_batch` exactly as
//!   `Writer::process` and `abort_batch` do;
//! * [`state`]: the observable state ([`state::Snapshot`]) and the figure
//!   invariants every budget must satisfy;
//! * [`amount`]: the documented amount grammar read into integer pence, and
//!   the reading of printed figures back into pence;
//! * [`model`]: the integer-pence model of the accepted events;
//! * [`check`]: the checks after every admission, every request and at the
//!   end of a run ([`check::Sim`]).
//!
//! Each generator (proptest strategies, libFuzzer bytes) keeps its own input
//! language and builds signed events from it; everything after "here is a
//! signed event" lives here, once. The fuzz crate keeps its deliberately
//! independent oracles (the amount-grammar automaton and the restatement of
//! the validation rules) to itself, and checks this model's oracle against
//! the automaton.
//!
//! Everything here panics on a broken invariant: that is how a property test
//! or a fuzz target reports it.

// A model that shares documentation with the code it checks: every public
// item says what it stands for.
#![deny(missing_docs)]
// The model checks a crate that has no `unsafe`; it needs none either.
#![forbid(unsafe_code)]

pub mod amount;
pub mod cast;
pub mod check;
pub mod model;
pub mod state;
pub mod writer;
