//! The one place domain refusals become gRPC statuses.

use phb_domain::{Reject, RejectCode};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A gRPC status code as the docs and gRPC tools spell it (`ALREADY_EXISTS`);
/// a value outside the enum is `UNKNOWN`, as tonic reads it.
pub fn code_name(code: i32) -> &'static str {
    phb_proto::code_name(i64::from(code)).unwrap_or("UNKNOWN")
}

/// The gRPC code for a refusal class.
pub fn code(c: RejectCode) -> Code {
    match c {
        RejectCode::InvalidArgument => Code::InvalidArgument,
        RejectCode::Unauthenticated => Code::Unauthenticated,
        RejectCode::PermissionDenied => Code::PermissionDenied,
        RejectCode::NotFound => Code::NotFound,
        RejectCode::FailedPrecondition => Code::FailedPrecondition,
        RejectCode::AlreadyExists => Code::AlreadyExists,
        RejectCode::Aborted => Code::Aborted,
        RejectCode::Unavailable => Code::Unavailable,
    }
}

/// A status for a refusal; INVALID_ARGUMENT carries a BadRequest field violation.
pub fn from_reject(r: &Reject) -> Status {
    match (&r.field, r.code) {
        (Some(field), RejectCode::InvalidArgument) => invalid(field, &r.message),
        _ => Status::new(code(r.code), r.message.clone()),
    }
}

/// INVALID_ARGUMENT with a google.rpc.BadRequest naming `field`.
pub fn invalid(field: &str, message: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(field, message),
    )
}

/// The response metadata key naming the writer's address when an instance
/// that reads a shared log refuses an append (docs/high-availability.md).
pub const WRITER_METADATA: &str = "x-phb-writer";

/// UNAVAILABLE for an append sent to a reader of a shared log, naming the
/// writer in the message and in `x-phb-writer` when one holds the role.
pub fn not_the_writer(refusal: &Reject, writer: Option<&str>) -> Status {
    let mut status = Status::new(Code::Unavailable, refusal.message.clone());
    if let Some(value) = writer.and_then(|w| w.parse().ok()) {
        status.metadata_mut().insert(WRITER_METADATA, value);
    }
    status
}
