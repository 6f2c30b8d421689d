//! Why an event or a call was refused. One enum for the whole core; the gRPC
//! shell maps `RejectCode` to a status code in exactly one place.

use std::fmt;

/// The class of a refusal. Each maps to one gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// Malformed input, bad amount, wrong ledger id.
    InvalidArgument,
    /// Unknown signer or a signature that does not verify.
    Unauthenticated,
    /// The signer's role or relationship to the budget does not allow this.
    PermissionDenied,
    /// Unknown budget.
    NotFound,
    /// The ledger's state does not allow this (overspend, stopped budget...).
    FailedPrecondition,
    /// An id is already used for something else.
    AlreadyExists,
    /// Not applied because another event in the same atomic batch failed.
    Aborted,
    /// Storage cannot accept writes right now.
    Unavailable,
}

impl RejectCode {
    /// The google.rpc.Code number.
    pub fn grpc_code(self) -> i32 {
        match self {
            RejectCode::InvalidArgument => 3,
            RejectCode::NotFound => 5,
            RejectCode::AlreadyExists => 6,
            RejectCode::PermissionDenied => 7,
            RejectCode::FailedPrecondition => 9,
            RejectCode::Aborted => 10,
            RejectCode::Unavailable => 14,
            RejectCode::Unauthenticated => 16,
        }
    }
}

/// A refusal: what class, which field (if one), and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Reject {
    /// The class of refusal.
    pub code: RejectCode,
    /// Dotted path of the offending `Event` field, e.g. `kind.payment.amount`.
    pub field: Option<String>,
    /// What was wrong and what to change.
    pub message: String,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{:?}: {}: {}", self.code, field, self.message),
            None => write!(f, "{:?}: {}", self.code, self.message),
        }
    }
}

impl Reject {
    fn new(code: RejectCode, message: impl Into<String>) -> Self {
        Reject {
            code,
            field: None,
            message: message.into(),
        }
    }
    /// Malformed input in `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Reject {
            code: RejectCode::InvalidArgument,
            field: Some(field.into()),
            message: message.into(),
        }
    }
    /// Bad or unknown signature.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(RejectCode::Unauthenticated, message)
    }
    /// Role or relationship does not allow this.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(RejectCode::PermissionDenied, message)
    }
    /// Unknown budget.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(RejectCode::NotFound, message)
    }
    /// State does not allow this.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(RejectCode::FailedPrecondition, message)
    }
    /// Id already used.
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(RejectCode::AlreadyExists, message)
    }
    /// Batch aborted.
    pub fn aborted(message: impl Into<String>) -> Self {
        Self::new(RejectCode::Aborted, message)
    }
    /// Storage unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(RejectCode::Unavailable, message)
    }
}
