//! Balances: every budget's figures, folded from committed entries.

use super::snapshot::{Format, SnapshotError, SnapshotReader, SnapshotWriter};
use super::{plus, Committed, Projection};
use crate::categories;
use crate::event::{CardChannel, Date, EventKind};
use crate::ledger::{Budget, CarePlan, Spending};
use crate::money::Money;
use std::collections::BTreeMap;

/// Every budget, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balances {
    budgets: BTreeMap<String, Budget>,
}

impl Balances {
    /// A budget by id.
    pub fn budget(&self, id: &str) -> Option<&Budget> {
        self.budgets.get(id)
    }

    /// Budgets with id > `after`, in id order.
    pub fn budgets_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Budget> + 'a {
        use std::ops::Bound;
        self.budgets
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
            .map(|(_, b)| b)
    }

    /// All budgets in id order.
    pub fn budgets(&self) -> impl Iterator<Item = &Budget> {
        self.budgets.values()
    }
}

/// `Balances`' snapshot: its header, then every budget in id order (each
/// carries its id; the layout is `SnapshotWriter::budget`).
const FORMAT: Format = Format {
    tag: *b"BALS",
    version: 1,
};

impl Balances {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        w.header(FORMAT);
        w.seq(self.budgets.values(), |w, b| w.budget(b));
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<Balances, SnapshotError> {
        r.header(FORMAT)?;
        let budgets = r.map(|r| {
            let b = r.budget()?;
            Ok((b.id.clone(), b))
        })?;
        Ok(Balances { budgets })
    }
}

/// A committed spending: the same figures, refund record and plan charge
/// as the write model made.
fn spend(b: &mut Budget, c: &Committed<'_>, sequence: u64, amount: Money, category: &str) {
    b.spent = plus(b.spent, amount);
    let plan = b
        .plan
        .as_mut()
        .expect("committed spending was made under a care plan");
    let on = Date::from_unix_micros(c.event.occurred_at_micros);
    let charge = plan
        .charge(category, amount, on)
        .expect("committed spending was checked against the plan by the write model");
    plan.apply(&charge);
    b.spendings.insert(
        sequence,
        Spending {
            signer_id: c.signer_id.to_string(),
            amount,
            refunded: Money::ZERO,
            charge: (plan.approved_at, charge),
        },
    );
}

/// `a - b`, never below zero by the write model's rules.
fn minus(a: Money, b: Money) -> Money {
    a.checked_sub(b)
        .filter(|m| !m.is_negative())
        .expect("committed amounts were checked by the write model")
}

impl Projection for Balances {
    fn apply(&mut self, c: &Committed<'_>) {
        if !c.applied() {
            return;
        }
        let id = &c.event.budget_id;
        let sequence = c.head.sequence;
        if let EventKind::BudgetOpened {
            holder_ref,
            commissioner_id,
            period_start,
            period_end,
            management,
            funds_holder_id,
            payroll_provider_id,
            plan_facilitator_id,
            ..
        } = &c.event.kind
        {
            let opened = Budget {
                id: id.clone(),
                holder_ref: holder_ref.clone(),
                commissioner_id: commissioner_id.clone(),
                period_start: *period_start,
                period_end: *period_end,
                management: *management,
                funds_holder_id: funds_holder_id.clone(),
                payroll_provider_id: payroll_provider_id.clone(),
                plan_facilitator_id: plan_facilitator_id.clone(),
                plan: None,
                suspended: false,
                died_on: None,
                spendings: Default::default(),
                agreements: Default::default(),
                in_hospital_since: None,
                last_review: None,
                allocated: Money::ZERO,
                paid_in: Money::ZERO,
                spent: Money::ZERO,
                stopped: false,
                last_sequence: sequence,
            };
            let previous = self.budgets.insert(id.clone(), opened);
            assert!(previous.is_none(), "budget {id} opened twice in the log");
            return;
        }
        let Some(b) = self.budgets.get_mut(id) else {
            // Organisation events name no budget.
            assert!(
                c.event.kind.is_organisation_event(),
                "event on unopened budget {id}"
            );
            return;
        };
        match &c.event.kind {
            EventKind::Allocation { amount, .. } => b.allocated = plus(b.allocated, *amount),
            EventKind::Disbursement { amount } => b.paid_in = plus(b.paid_in, *amount),
            EventKind::Payment {
                amount, category, ..
            }
            | EventKind::Purchase {
                amount, category, ..
            } => spend(b, c, sequence, *amount, category),
            EventKind::CardTransaction {
                amount,
                mcc,
                channel,
                ..
            } => {
                let category = match channel {
                    CardChannel::Atm => "cash",
                    _ => categories::category_of_mcc(*mcc)
                        .expect("committed card payments have a mapped merchant category"),
                };
                spend(b, c, sequence, *amount, category)
            }
            EventKind::HospitalAdmission { date } => b.in_hospital_since = Some(*date),
            EventKind::HospitalDischarge { .. } => b.in_hospital_since = None,
            EventKind::ReviewRecorded { date, .. } => {
                b.last_review = Some(b.last_review.map_or(*date, |d| d.max(*date)))
            }
            EventKind::CarePlanApproved(spec) => {
                b.plan = Some(CarePlan::new(spec.clone(), sequence, c.signer_id));
            }
            EventKind::ServiceAgreementApproved(spec) => {
                b.agreements.insert(spec.agreement_id.clone(), spec.clone());
            }
            EventKind::FacilitatorAppointed { organisation_id } => {
                b.plan_facilitator_id = Some(organisation_id.clone());
            }
            EventKind::ReviewAdjustment { delta, .. } => b.allocated = plus(b.allocated, *delta),
            EventKind::BudgetStopped { .. } => b.stopped = true,
            EventKind::BudgetSuspended { .. } => b.suspended = true,
            EventKind::BudgetResumed => b.suspended = false,
            EventKind::HolderDied { date } => b.died_on = Some(*date),
            EventKind::Reclaim { amount, .. } => {
                b.paid_in = minus(b.paid_in, *amount);
                b.allocated = minus(b.allocated, *amount);
            }
            EventKind::Refund {
                original_sequence,
                amount,
            } => {
                let s = b
                    .spendings
                    .get_mut(original_sequence)
                    .expect("a committed refund names a spending of its budget");
                s.refunded = plus(s.refunded, *amount);
                let (charged_to, charge) = &mut s.charge;
                if let Some(plan) = b.plan.as_mut().filter(|p| p.approved_at == *charged_to) {
                    plan.give_back(charge, *amount);
                }
                b.spent = minus(b.spent, *amount);
            }
            // The flags' business; the budget's last entry moves on.
            EventKind::ExternalMatchRecorded { .. } | EventKind::FlagReviewed { .. } => {}
            EventKind::BudgetOpened { .. }
            | EventKind::OrganisationRegistered { .. }
            | EventKind::KeyRotated { .. }
            | EventKind::ControlsConfigured(_) => return,
        }
        b.last_sequence = sequence;
        debug_assert!(!b.held().is_negative() && !b.available().is_negative());
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.write(&mut SnapshotWriter::new(out));
    }

    fn decode(bytes: &[u8]) -> Result<Balances, SnapshotError> {
        SnapshotReader::read_all(bytes, Balances::read)
    }
}
