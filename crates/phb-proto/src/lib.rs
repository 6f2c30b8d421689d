//! The wire contract of phb-ledger: types generated from `proto/phb/ledger/v1`.
//!
//! Nothing here is hand-written apart from this module and [`codec`] (prost's
//! codec with decode errors mapped to the right status code): the proto files
//! are the source of truth that partner organisations generate their own
//! clients from.
#![deny(missing_docs)]

pub mod codec;

/// Package `phb.ledger.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("phb.ledger.v1");
}

/// The encoded `FileDescriptorSet` of `proto/`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/phb_ledger_v1_descriptor.bin"));

/// The full gRPC service name, as used in method paths.
pub const SERVICE_NAME: &str = "phb.ledger.v1.LedgerService";
