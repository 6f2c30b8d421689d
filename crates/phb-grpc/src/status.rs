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
