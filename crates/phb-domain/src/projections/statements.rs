//! Statements: every entry on a budget, in log order, with the running
//! figures after it — what an auditor or a funds holder reads.
//!
//! Applied events change the running figures exactly as `Balances` does.
//! Recorded refusals of events on an existing budget (the counter-fraud
//! record: an attempted overspend, a payment by the wrong organisation, a
//! second opening of the same id) are rows too, flagged with their code;
//! they change no figure. Refusals naming a budget that does not exist (yet)
//! belong to no statement.
//!
//! Rows are compact — no event bytes, no free text; the signer id is shared
//! between rows — about 150 bytes each, one per entry on the budget, kept in
//! memory for the life of the process (ARCHITECTURE.md, "Known limits").
//! A refusal's message stays in the log: readers fetch it by sequence.

use super::snapshot::{Format, SnapshotError, SnapshotReader, SnapshotWriter};
use super::{plus, Committed, Projection};
use crate::event::{EventKind, Management, KIND_FIELDS};
use crate::money::Money;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One entry on a budget's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    /// The entry's log sequence.
    pub sequence: u64,
    /// When the server recorded it, microseconds since the epoch.
    pub recorded_at_micros: i64,
    /// When the event says it happened, microseconds since the epoch.
    pub occurred_at_micros: i64,
    /// The event kind: the name of its `Event.kind` field in the proto
    /// (e.g. "payment").
    pub kind: &'static str,
    /// Who signed the event.
    pub signer_id: Arc<str>,
    /// The event's amount, signed by its effect on the budget: positive for
    /// allocations and disbursements, negative for payments and purchases,
    /// the delta for review adjustments; `None` for openings and stops. For
    /// a refused row, the amount that was attempted.
    pub amount: Option<Money>,
    /// Allocated after this entry.
    pub allocated: Money,
    /// Paid in after this entry.
    pub paid_in: Money,
    /// Spent after this entry.
    pub spent: Money,
    /// Held after this entry (`paid_in − spent`; zero on notional budgets).
    pub held: Money,
    /// `Some(code)` (google.rpc.Code) if the entry records a refusal.
    pub refusal_code: Option<u32>,
}

/// One budget's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    notional: bool,
    allocated: Money,
    paid_in: Money,
    spent: Money,
    rows: Vec<StatementRow>,
}

impl Statement {
    fn held(&self) -> Money {
        if self.notional {
            Money::ZERO
        } else {
            self.paid_in.checked_sub(self.spent).unwrap_or(Money::ZERO)
        }
    }
}

/// Every budget's statement, by budget id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statements {
    budgets: BTreeMap<String, Statement>,
    /// Signer ids, shared by the rows that name them.
    signers: BTreeSet<Arc<str>>,
}

fn negative(a: Money) -> Money {
    Money::ZERO
        .checked_sub(a)
        .expect("an amount's negation fits")
}

impl Statements {
    /// The rows of `budget_id` with sequence > `after`, in sequence order;
    /// `None` if the budget was never opened.
    pub fn rows_after(&self, budget_id: &str, after: u64) -> Option<&[StatementRow]> {
        let s = self.budgets.get(budget_id)?;
        let start = s.rows.partition_point(|r| r.sequence <= after);
        Some(&s.rows[start..])
    }

    /// Every row of `budget_id`.
    pub fn rows(&self, budget_id: &str) -> Option<&[StatementRow]> {
        self.rows_after(budget_id, 0)
    }

    /// How many rows all statements hold (for memory accounting).
    pub fn total_rows(&self) -> usize {
        self.budgets.values().map(|s| s.rows.len()).sum()
    }

    fn signer(&mut self, id: &str) -> Arc<str> {
        if let Some(s) = self.signers.get(id) {
            return s.clone();
        }
        let s: Arc<str> = Arc::from(id);
        self.signers.insert(s.clone());
        s
    }
}

/// The `Statements`' snapshot: its header; the signer ids, sorted, each
/// once; then every budget's statement in id order: id, notional, running
/// figures, and its rows, each naming its signer by index (`u32`) in that
/// list and its kind by index (`u8`) in `KIND_FIELDS`.
const FORMAT: Format = Format {
    tag: *b"STMT",
    version: 1,
};

impl Statements {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        w.header(FORMAT);
        let signers: Vec<&str> = self.signers.iter().map(|s| &**s).collect();
        w.seq(&signers, |w, s| w.str(s));
        w.seq(&self.budgets, |w, (id, s)| {
            w.str(id);
            w.bool(s.notional);
            w.money(s.allocated);
            w.money(s.paid_in);
            w.money(s.spent);
            w.seq(&s.rows, |w, row| {
                let kind = KIND_FIELDS
                    .iter()
                    .position(|k| *k == row.kind)
                    .expect("a row's kind is one of KIND_FIELDS");
                let signer = signers
                    .binary_search(&&*row.signer_id)
                    .expect("a row's signer is interned in `signers`");
                w.u64(row.sequence);
                w.i64(row.recorded_at_micros);
                w.i64(row.occurred_at_micros);
                w.u8(u8::try_from(kind).expect("fewer than 256 kinds"));
                w.len(signer);
                w.option(row.amount, SnapshotWriter::money);
                w.money(row.allocated);
                w.money(row.paid_in);
                w.money(row.spent);
                w.money(row.held);
                w.option(row.refusal_code, SnapshotWriter::u32);
            });
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<Statements, SnapshotError> {
        r.header(FORMAT)?;
        let at = r.position();
        let signers: Vec<Arc<str>> = r.seq(|r| r.str().map(Arc::from))?;
        if !signers.windows(2).all(|w| w[0] < w[1]) {
            return Err(SnapshotReader::bad(at, "signer ids not sorted or repeated"));
        }
        let budgets = r.map(|r| {
            let id = r.string()?;
            let notional = r.bool()?;
            let (allocated, paid_in, spent) = (r.money()?, r.money()?, r.money()?);
            let at = r.position();
            let rows = r.seq(|r| {
                let sequence = r.u64()?;
                let recorded_at_micros = r.i64()?;
                let occurred_at_micros = r.i64()?;
                let kind_at = r.position();
                let kind = KIND_FIELDS
                    .get(usize::from(r.u8()?))
                    .ok_or_else(|| SnapshotReader::bad(kind_at, "unknown event kind"))?;
                let signer_at = r.position();
                let signer_id = usize::try_from(r.u32()?)
                    .ok()
                    .and_then(|i| signers.get(i))
                    .ok_or_else(|| SnapshotReader::bad(signer_at, "no such signer id"))?
                    .clone();
                Ok(StatementRow {
                    sequence,
                    recorded_at_micros,
                    occurred_at_micros,
                    kind,
                    signer_id,
                    amount: r.option(SnapshotReader::money)?,
                    allocated: r.money()?,
                    paid_in: r.money()?,
                    spent: r.money()?,
                    held: r.money()?,
                    refusal_code: r.option(SnapshotReader::u32)?,
                })
            })?;
            if rows.is_empty() || !rows.windows(2).all(|w| w[0].sequence < w[1].sequence) {
                return Err(SnapshotReader::bad(
                    at,
                    "rows missing or out of sequence order",
                ));
            }
            let s = Statement {
                notional,
                allocated,
                paid_in,
                spent,
                rows,
            };
            Ok((id, s))
        })?;
        Ok(Statements {
            budgets,
            signers: signers.into_iter().collect(),
        })
    }
}

impl Projection for Statements {
    fn apply(&mut self, c: &Committed<'_>) {
        let kind = &c.event.kind;
        if kind.is_organisation_event() {
            return;
        }
        let id = &c.event.budget_id;
        let opened_here = c.applied() && matches!(kind, EventKind::BudgetOpened { .. });
        if opened_here {
            let notional = matches!(
                kind,
                EventKind::BudgetOpened {
                    management: Management::Notional,
                    ..
                }
            );
            let previous = self.budgets.insert(
                id.clone(),
                Statement {
                    notional,
                    allocated: Money::ZERO,
                    paid_in: Money::ZERO,
                    spent: Money::ZERO,
                    rows: Vec::new(),
                },
            );
            assert!(previous.is_none(), "budget {id} opened twice in the log");
        } else if !self.budgets.contains_key(id) {
            // A refusal naming a budget that does not exist.
            assert!(!c.applied(), "event on unopened budget {id}");
            return;
        }
        let signer_id = self.signer(c.signer_id);
        let s = self
            .budgets
            .get_mut(id)
            .expect("the budget exists: checked or inserted above");
        let amount = match kind {
            EventKind::Allocation { amount, .. } | EventKind::Disbursement { amount } => {
                Some(*amount)
            }
            EventKind::Payment { amount, .. }
            | EventKind::Purchase { amount, .. }
            | EventKind::CardTransaction { amount, .. } => Some(negative(*amount)),
            EventKind::HospitalAdmission { .. }
            | EventKind::HospitalDischarge { .. }
            | EventKind::ReviewRecorded { .. } => None,
            EventKind::ReviewAdjustment { delta, .. } => Some(*delta),
            EventKind::Reclaim { amount, .. } => Some(negative(*amount)),
            EventKind::Refund { amount, .. } => Some(*amount),
            EventKind::BudgetSuspended { .. }
            | EventKind::ServiceAgreementApproved(_)
            | EventKind::BudgetResumed
            | EventKind::HolderDied { .. } => None,
            EventKind::BudgetOpened { .. }
            | EventKind::BudgetStopped { .. }
            | EventKind::CarePlanApproved(_)
            | EventKind::FacilitatorAppointed { .. }
            | EventKind::ExternalMatchRecorded { .. }
            | EventKind::FlagReviewed { .. }
            | EventKind::ControlsConfigured(_)
            | EventKind::OrganisationRegistered { .. }
            | EventKind::KeyRotated { .. } => None,
        };
        if c.applied() {
            match kind {
                EventKind::Allocation { amount, .. } => s.allocated = plus(s.allocated, *amount),
                EventKind::Disbursement { amount } => s.paid_in = plus(s.paid_in, *amount),
                EventKind::Payment { amount, .. }
                | EventKind::Purchase { amount, .. }
                | EventKind::CardTransaction { amount, .. } => s.spent = plus(s.spent, *amount),
                EventKind::ReviewAdjustment { delta, .. } => {
                    s.allocated = plus(s.allocated, *delta)
                }
                EventKind::Reclaim { amount, .. } => {
                    s.paid_in = plus(s.paid_in, negative(*amount));
                    s.allocated = plus(s.allocated, negative(*amount));
                }
                EventKind::Refund { amount, .. } => s.spent = plus(s.spent, negative(*amount)),
                _ => {}
            }
        }
        let held = s.held();
        debug_assert!(
            KIND_FIELDS.contains(&kind.field_name()),
            "add the kind to KIND_FIELDS"
        );
        s.rows.push(StatementRow {
            sequence: c.head.sequence,
            recorded_at_micros: c.head.recorded_at_micros,
            occurred_at_micros: c.event.occurred_at_micros,
            kind: kind.field_name(),
            signer_id,
            amount,
            allocated: s.allocated,
            paid_in: s.paid_in,
            spent: s.spent,
            held,
            refusal_code: c.refusal.map(|r| r.code),
        });
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.write(&mut SnapshotWriter::new(out));
    }

    fn decode(bytes: &[u8]) -> Result<Statements, SnapshotError> {
        SnapshotReader::read_all(bytes, Statements::read)
    }
}
