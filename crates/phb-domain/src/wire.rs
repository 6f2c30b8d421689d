//! The read model as the wire has it: the one conversion of budgets and
//! flags to their proto messages, shared by the gRPC shell (answers) and
//! the auditor's tool (comparing a replay with those answers), so the two
//! cannot drift. Plain data in, plain data out: no IO.

use crate::event::{FlagOutcome, Management};
use crate::ledger::Budget;
use crate::projections::flags::{Flag, FlagCode, Flags, Severity};
use phb_proto::v1 as pb;

/// A management option's proto value.
pub fn management_pb(m: Management) -> i32 {
    (match m {
        Management::DirectPayment => pb::Management::DirectPayment,
        Management::ThirdParty => pb::Management::ThirdParty,
        Management::Notional => pb::Management::Notional,
    }) as i32
}

/// A budget as GetBalance and ListBalances answer it.
pub fn balance_pb(b: &Budget) -> pb::Balance {
    pb::Balance {
        budget_id: b.id.clone(),
        holder_ref: b.holder_ref.clone(),
        commissioner_id: b.commissioner_id.clone(),
        management: management_pb(b.management),
        funds_holder_id: b.funds_holder_id.clone().unwrap_or_default(),
        payroll_provider_id: b.payroll_provider_id.clone().unwrap_or_default(),
        plan_facilitator_id: b.plan_facilitator_id.clone().unwrap_or_default(),
        allocated: b.allocated.to_string(),
        paid_in: b.paid_in.to_string(),
        spent: b.spent.to_string(),
        held: b.held().to_string(),
        available: b.available().to_string(),
        stopped: b.stopped,
        last_sequence: b.last_sequence,
        period_start: b.period_start.to_string(),
        period_end: b.period_end.to_string(),
    }
}

/// A flag code's proto value.
pub fn flag_code_pb(c: FlagCode) -> pb::FlagCode {
    match c {
        FlagCode::Surplus => pb::FlagCode::Surplus,
        FlagCode::DuplicatePayment => pb::FlagCode::DuplicatePayment,
        FlagCode::AfterDeath => pb::FlagCode::AfterDeath,
        FlagCode::DuringAdmission => pb::FlagCode::DuringAdmission,
        FlagCode::OverbookedWorker => pb::FlagCode::OverbookedWorker,
        FlagCode::Spike => pb::FlagCode::Spike,
        FlagCode::CashWithoutReceipt => pb::FlagCode::CashWithoutReceipt,
        FlagCode::ReviewOverdue => pb::FlagCode::ReviewOverdue,
        FlagCode::RepeatedRefusals => pb::FlagCode::RepeatedRefusals,
        FlagCode::ExternalMatch => pb::FlagCode::ExternalMatch,
    }
}

/// Where flag `id` stands: its latest review, or open.
pub fn flag_status_pb(flags: &Flags, id: &str) -> pb::FlagStatus {
    match flags.review(id).map(|r| r.outcome) {
        None => pb::FlagStatus::Open,
        Some(FlagOutcome::Confirmed) => pb::FlagStatus::Confirmed,
        Some(FlagOutcome::Dismissed) => pb::FlagStatus::Dismissed,
    }
}

/// A flag with its review, as AppendResult.flags and ListFlags answer it.
pub fn flag_pb(flags: &Flags, f: &Flag) -> pb::Flag {
    let review = flags.review(&f.id);
    pb::Flag {
        flag_id: f.id.clone(),
        code: flag_code_pb(f.code) as i32,
        severity: match f.severity {
            Severity::Low => pb::FlagSeverity::Low,
            Severity::Medium => pb::FlagSeverity::Medium,
            Severity::High => pb::FlagSeverity::High,
        } as i32,
        budget_id: f.budget_id.clone(),
        commissioner_id: f.commissioner_id.clone(),
        sequences: f.sequences.clone(),
        raised_at_sequence: f.raised_at,
        thresholds: f
            .thresholds
            .iter()
            .map(|(name, value)| pb::Threshold {
                name: (*name).to_string(),
                value: value.clone(),
            })
            .collect(),
        explanation: f.explanation.clone(),
        status: flag_status_pb(flags, &f.id) as i32,
        reviewed_by: review.map(|r| r.by.clone()).unwrap_or_default(),
        review_sequence: review.map_or(0, |r| r.sequence),
        review_note: review.map(|r| r.note.clone()).unwrap_or_default(),
    }
}
