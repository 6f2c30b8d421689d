//! Shared pieces of the phb-ledger fuzz targets: the cast (organisations with
//! keys derived from small seeds), a writer that drives `Ledger` exactly as
//! `phb-engine` does, an independent oracle of the amount grammar, and the
//! state checks every target asserts.

pub mod cast;
pub mod check;
pub mod oracle;
pub mod schema;
pub mod wire;
pub mod writer;
