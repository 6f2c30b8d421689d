//! Why an event or a call was refused. One enum for the whole core; the gRPC
//! shell maps `RejectCode` to a status code in exactly one place.

use std::fmt;

/// The most characters of client input a refusal message quotes back.
pub const MAX_QUOTED_CHARS: usize = 64;

/// Client input as a refusal message quotes it: Debug-escaped, and cut to
/// `MAX_QUOTED_CHARS` characters (with its full length in bytes) when longer.
/// Refusals travel back in the response and into the server log, so they
/// must stay small whatever was sent: unquoted, 60 KiB of U+0001 in a
/// ledger_id would come back as 360 KiB, and a batch of them would outgrow
/// the 8 MiB response limit and turn per-event answers into a call error.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &s[..cut], s.len()),
    }
}

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

    /// The class for a google.rpc.Code number, if it is one of ours.
    pub fn from_grpc(code: u32) -> Option<RejectCode> {
        [
            RejectCode::InvalidArgument,
            RejectCode::Unauthenticated,
            RejectCode::PermissionDenied,
            RejectCode::NotFound,
            RejectCode::FailedPrecondition,
            RejectCode::AlreadyExists,
            RejectCode::Aborted,
            RejectCode::Unavailable,
        ]
        .into_iter()
        .find(|c| c.grpc_code() as u32 == code)
    }

    /// True for the refusals the ledger's rules make about a well-formed,
    /// authenticated event (`Ledger::decide`): these are final and recorded
    /// in the log, so the same signed event can never be applied later.
    /// The others (malformed, unauthenticated, an event id already used,
    /// storage unavailable) decide nothing about the event: it may be
    /// corrected or retried under the same id.
    pub fn is_decision(self) -> bool {
        matches!(
            self,
            RejectCode::PermissionDenied
                | RejectCode::FailedPrecondition
                | RejectCode::NotFound
                | RejectCode::AlreadyExists
        )
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

    /// The refusal a log entry records, as the client was first told it.
    /// A code we do not know (only a doctored log has one) reads as
    /// FAILED_PRECONDITION, which still refuses.
    pub fn from_refusal(r: &crate::chain::Refusal) -> Self {
        let code = RejectCode::from_grpc(r.code).unwrap_or(RejectCode::FailedPrecondition);
        Self::new(code, r.message.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_and_bounds_client_input() {
        assert_eq!(quote("phb-prod"), "\"phb-prod\"");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let q = quote(&"\u{1}".repeat(60 * 1024));
        assert!(q.len() < 64 * 10, "{} bytes", q.len());
        assert!(q.ends_with("... (61440 bytes)"), "{q}");
        let exact = "x".repeat(MAX_QUOTED_CHARS);
        assert_eq!(quote(&exact), format!("{exact:?}"));
        // Cuts on a character boundary.
        assert!(quote(&"é".repeat(100)).starts_with("\"éé"));
    }
}
