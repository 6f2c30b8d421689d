//! What the phb-ledger fuzz targets have of their own: the input layout of
//! `decode_event`, and the oracles kept independent of everything else on
//! purpose (an automaton for the amount grammar, a restatement of the
//! validation rules from docs/api.md, a reading of the wire format). The
//! cast, the writer model, the state snapshot, the pence model and the
//! checks shared with the property tests are `phb_sim`.

pub mod check;
pub mod oracle;
pub mod schema;
pub mod wire;
