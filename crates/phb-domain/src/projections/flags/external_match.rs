//! EXTERNAL_MATCH: a data match recorded from outside the ledger
//! (`ExternalMatchRecorded`), e.g. the National Fraud Initiative's
//! deceased-person or payroll matches. Every recorded match is a flag: the
//! ledger cannot judge it, a person must.

use super::{Context, Flag, FlagCode, Rule, Severity};
use crate::event::{EventKind, MatchKind};
use crate::projections::Committed;

/// Stateless: each match is its own flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalMatch;

impl Rule for ExternalMatch {
    fn apply(&mut self, c: &Committed<'_>, cx: &Context<'_>, out: &mut Vec<Flag>) {
        let EventKind::ExternalMatchRecorded {
            source,
            kind,
            reference,
        } = &c.event.kind
        else {
            return;
        };
        let (Some(b), true) = (cx.budget, c.applied()) else {
            return;
        };
        let sequence = c.head.sequence;
        let (severity, what) = match kind {
            MatchKind::Deceased => (Severity::High, "a deceased-person"),
            MatchKind::Payroll => (Severity::Medium, "a payroll"),
            MatchKind::Other => (Severity::Medium, "a"),
        };
        let mut f = Flag::new(FlagCode::ExternalMatch, severity, b, &sequence.to_string());
        f.sequences = vec![sequence];
        f.explanation = format!(
            "{source} recorded {what} match (reference {reference}) against this budget at #{sequence}; check it against the budget's records and record the outcome with FlagReviewed"
        );
        out.push(f);
    }
}
