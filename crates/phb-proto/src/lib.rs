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

/// The name of a `google.rpc.Code` value as the docs and every gRPC tool
/// spell it (`ALREADY_EXISTS`), or `None` for a value outside the enum.
/// The one table: the gRPC shell, the CLI and the auditor's JSONL use it.
pub fn code_name(code: i64) -> Option<&'static str> {
    Some(match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => return None,
    })
}

/// The full gRPC service name, as used in method paths.
pub const SERVICE_NAME: &str = "phb.ledger.v1.LedgerService";
