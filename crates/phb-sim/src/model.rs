//! The integer-pence model of the accepted events: each budget's figures
//! summed from the amount strings the clients signed, read by the grammar
//! oracle ([`crate::amount::grammar_pence`]), never by `money.rs`.

use crate::amount::{grammar_pence, signed_amount};
use crate::state::check_budget;
use phb_domain::event::EventKind;
use phb_domain::{Event, Ledger, LogEntry, SignedEvent};
use std::collections::BTreeMap;

/// One budget's figures in pence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    /// Allocations plus review deltas.
    pub allocated: i64,
    /// Disbursements.
    pub paid_in: i64,
    /// Payments plus purchases.
    pub spent: i64,
    /// Stopped?
    pub stopped: bool,
}

/// Every budget's figures, by budget id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PenceModel {
    /// The figures of every budget opened so far.
    pub budgets: BTreeMap<String, Figures>,
}

impl PenceModel {
    /// Adds an applied event (`event`, decoded from `signed`). Panics if it
    /// opens a budget twice, touches one never opened or one stopped, or
    /// carries an amount the grammar refuses.
    pub fn apply(&mut self, event: &Event, signed: &SignedEvent) {
        let pence = signed_amount(signed)
            .map(|(s, _)| grammar_pence(&s).unwrap_or_else(|| panic!("amount {s:?} was applied")));
        let id = &event.budget_id;
        match &event.kind {
            EventKind::BudgetOpened { .. } => {
                let fresh = self.budgets.insert(id.clone(), Figures::default());
                assert!(fresh.is_none(), "budget {id} opened twice");
            }
            EventKind::OrganisationRegistered { .. } | EventKind::KeyRotated { .. } => {}
            kind => {
                let m = self
                    .budgets
                    .get_mut(id)
                    .unwrap_or_else(|| panic!("{} on budget {id}, never opened", kind.name()));
                assert!(!m.stopped, "stopped budget {id} changed");
                let p = || pence.unwrap_or_else(|| panic!("{} without an amount", kind.name()));
                match kind {
                    EventKind::Allocation { .. } | EventKind::ReviewAdjustment { .. } => {
                        m.allocated += p()
                    }
                    EventKind::Disbursement { .. } => m.paid_in += p(),
                    EventKind::Payment { .. } | EventKind::Purchase { .. } => m.spent += p(),
                    EventKind::BudgetStopped { .. } => m.stopped = true,
                    // Rules for spending, not figures.
                    EventKind::CarePlanApproved(_) | EventKind::ServiceAgreementApproved(_) => {}
                    _ => unreachable!("the simulation sends no other kinds"),
                }
            }
        }
    }

    /// The model of a whole log folded from scratch: its applied entries
    /// (`events[i]` decoded from `log[i]`), refusal entries skipped.
    pub fn fold(log: &[LogEntry], events: &[Event]) -> PenceModel {
        let mut m = PenceModel::default();
        for (e, ev) in log.iter().zip(events) {
            if e.refusal.is_none() {
                m.apply(ev, &e.signed);
            }
        }
        m
    }

    /// Asserts that `l`'s budgets are exactly the model's, figure for
    /// figure (checking every budget's invariants on the way).
    pub fn check(&self, l: &Ledger) {
        let real: BTreeMap<String, Figures> = l
            .budgets()
            .map(|b| {
                let [allocated, paid_in, spent] = check_budget(b);
                let f = Figures {
                    allocated,
                    paid_in,
                    spent,
                    stopped: b.stopped,
                };
                (b.id.clone(), f)
            })
            .collect();
        assert_eq!(
            real, self.budgets,
            "the ledger differs from the pence model"
        );
    }
}
