//! Flags: things a person must look at that the rules do not refuse (money
//! already spent, a payment probably but not certainly wrong). A flag is
//! derived data, never an edit: a pure function of the log up to the head
//! and an as-of date, so the live service, a restart and an auditor's
//! replay raise exactly the same flags with the same ids (docs/flags.md).
//!
//! Each rule lives in its own module behind `Rule`. Event-driven rules
//! raise flags as entries are folded (`Rule::apply`: the flags an entry
//! raises are answered with its `AppendResult`); time-based rules derive
//! theirs at a date (`Rule::as_of`, for `ListFlags`). A rule reads the
//! thresholds in force when the entry was written: `ControlsConfigured`
//! applies to its commissioner's budgets from its sequence on.
//!
//! `Flags` is a second-stage projection: it folds each committed entry
//! after `Balances` has, and reads the budget's figures from it.

mod after_death;
mod cash_without_receipt;
mod duplicate_payment;
mod during_admission;
mod external_match;
mod overbooked_worker;
mod repeated_refusals;
mod review_overdue;
mod spike;
mod surplus;

use super::{Balances, Committed};
use crate::controls::Controls;
use crate::event::{Date, EventKind, FlagOutcome};
use crate::ledger::Budget;
use std::collections::BTreeMap;

/// The rule that raised a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlagCode {
    /// More held than the plan needs.
    Surplus,
    /// Paid twice.
    DuplicatePayment,
    /// Money moved after the holder's death was recorded.
    AfterDeath,
    /// Care paid for days of a long hospital stay.
    DuringAdmission,
    /// One payee paid for more hours than a person can work.
    OverbookedWorker,
    /// A week's spending far above the budget's usual.
    Spike,
    /// Cash without a receipt.
    CashWithoutReceipt,
    /// A review or audit is overdue.
    ReviewOverdue,
    /// Several refused attempts in a short time.
    RepeatedRefusals,
    /// An external data match.
    ExternalMatch,
}

impl FlagCode {
    /// The code as flag ids and docs spell it (`crate::event::FLAG_CODES`).
    pub fn as_str(self) -> &'static str {
        match self {
            FlagCode::Surplus => "SURPLUS",
            FlagCode::DuplicatePayment => "DUPLICATE_PAYMENT",
            FlagCode::AfterDeath => "AFTER_DEATH",
            FlagCode::DuringAdmission => "DURING_ADMISSION",
            FlagCode::OverbookedWorker => "OVERBOOKED_WORKER",
            FlagCode::Spike => "SPIKE",
            FlagCode::CashWithoutReceipt => "CASH_WITHOUT_RECEIPT",
            FlagCode::ReviewOverdue => "REVIEW_OVERDUE",
            FlagCode::RepeatedRefusals => "REPEATED_REFUSALS",
            FlagCode::ExternalMatch => "EXTERNAL_MATCH",
        }
    }
}

/// How urgently a person should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// When reviewing the budget.
    Low,
    /// This week.
    Medium,
    /// Now.
    High,
}

/// A flag: what was seen, where, and against which thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// `{CODE}:{budget_id}:{key}`: stable across restarts and replays.
    pub id: String,
    /// The rule.
    pub code: FlagCode,
    /// How urgent.
    pub severity: Severity,
    /// The budget it is about.
    pub budget_id: String,
    /// The budget's commissioner.
    pub commissioner_id: String,
    /// The triggering entries, oldest first.
    pub sequences: Vec<u64>,
    /// Raised at: the last triggering entry, or for a time-based flag the
    /// head it was derived at.
    pub raised_at: u64,
    /// The thresholds used, by `ControlsConfigured` field name.
    pub thresholds: Vec<(&'static str, String)>,
    /// What was seen, with the figures.
    pub explanation: String,
}

impl Flag {
    /// A flag on `budget` with the id `{CODE}:{budget}:{key}`.
    pub fn new(code: FlagCode, severity: Severity, budget: &Budget, key: &str) -> Flag {
        Flag {
            id: format!("{}:{}:{key}", code.as_str(), budget.id),
            code,
            severity,
            budget_id: budget.id.clone(),
            commissioner_id: budget.commissioner_id.clone(),
            sequences: Vec::new(),
            raised_at: 0,
            thresholds: Vec::new(),
            explanation: String::new(),
        }
    }
}

/// A commissioner's review of a flag (`FlagReviewed`); the latest counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// What it found.
    pub outcome: FlagOutcome,
    /// Who reviewed it.
    pub by: String,
    /// The FlagReviewed entry.
    pub sequence: u64,
    /// The note.
    pub note: String,
}

/// What a rule sees of one committed entry besides the entry itself.
pub struct Context<'a> {
    /// The entry's budget after it was folded (None for organisation
    /// events and for refusals naming a budget that does not exist).
    pub budget: Option<&'a Budget>,
    /// Every budget, after this entry.
    pub balances: &'a Balances,
    /// The thresholds in force for the budget's commissioner.
    pub controls: &'a Controls,
}

/// What a time-based rule sees when flags are listed.
pub struct AsOf<'a> {
    /// Every budget, at the head.
    pub balances: &'a Balances,
    /// The date the rules read ("how late is it").
    pub on: Date,
    /// The head the flags are derived at.
    pub head: u64,
    flags: &'a Flags,
}

impl AsOf<'_> {
    /// The thresholds in force now for `commissioner`'s budgets.
    pub fn controls(&self, commissioner: &str) -> &Controls {
        self.flags.controls(commissioner)
    }
}

/// One flag rule.
pub(crate) trait Rule {
    /// Folds one committed entry (applied or a recorded refusal), after
    /// `Balances` has; pushes the flags it raises onto `out`.
    fn apply(&mut self, c: &Committed<'_>, cx: &Context<'_>, out: &mut Vec<Flag>);

    /// The flags that hold as of `at` (time-based rules only).
    fn as_of(&self, _at: &AsOf<'_>, _out: &mut Vec<Flag>) {}
}

/// Every flag raised so far, the rules' state, the reviews and each
/// commissioner's thresholds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    controls: BTreeMap<String, Controls>,
    raised: BTreeMap<String, Flag>,
    by_sequence: BTreeMap<u64, Vec<String>>,
    reviews: BTreeMap<String, Review>,
    default_controls: Controls,
    rules: Rules,
}

/// Every rule's state, apart from what `Flags` keeps for all of them, so a
/// fold can lend the rules out while it reads the thresholds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rules {
    external_match: external_match::ExternalMatch,
    after_death: after_death::AfterDeath,
    duplicate_payment: duplicate_payment::DuplicatePayment,
    during_admission: during_admission::DuringAdmission,
    overbooked_worker: overbooked_worker::OverbookedWorker,
    spike: spike::Spike,
    surplus: surplus::Surplus,
    review_overdue: review_overdue::ReviewOverdue,
    cash_without_receipt: cash_without_receipt::CashWithoutReceipt,
    repeated_refusals: repeated_refusals::RepeatedRefusals,
}

impl Rules {
    /// The rules, in the order they fold an entry (one line per rule).
    fn all_mut(&mut self) -> [&mut dyn Rule; 10] {
        [
            &mut self.external_match,
            &mut self.after_death,
            &mut self.duplicate_payment,
            &mut self.during_admission,
            &mut self.overbooked_worker,
            &mut self.spike,
            &mut self.surplus,
            &mut self.review_overdue,
            &mut self.cash_without_receipt,
            &mut self.repeated_refusals,
        ]
    }

    /// The rules, for listing (one line per rule, as in `all_mut`).
    fn all(&self) -> [&dyn Rule; 10] {
        [
            &self.external_match,
            &self.after_death,
            &self.duplicate_payment,
            &self.during_admission,
            &self.overbooked_worker,
            &self.spike,
            &self.surplus,
            &self.review_overdue,
            &self.cash_without_receipt,
            &self.repeated_refusals,
        ]
    }
}

impl Flags {
    /// The thresholds in force for `commissioner`'s budgets.
    pub fn controls(&self, commissioner: &str) -> &Controls {
        self.controls
            .get(commissioner)
            .unwrap_or(&self.default_controls)
    }

    /// Folds one committed entry, after `balances` has folded it.
    pub fn apply(&mut self, c: &Committed<'_>, balances: &Balances) {
        let sequence = c.head.sequence;
        if c.applied() {
            match &c.event.kind {
                EventKind::ControlsConfigured(controls) => {
                    self.controls
                        .insert(c.signer_id.to_string(), controls.clone());
                    return;
                }
                EventKind::FlagReviewed {
                    flag_id,
                    outcome,
                    note,
                } => {
                    let review = Review {
                        outcome: *outcome,
                        by: c.signer_id.to_string(),
                        sequence,
                        note: note.clone(),
                    };
                    self.reviews.insert(flag_id.clone(), review);
                    return;
                }
                _ => {}
            }
        }
        let budget = balances.budget(&c.event.budget_id);
        let controls = budget
            .and_then(|b| self.controls.get(&b.commissioner_id))
            .unwrap_or(&self.default_controls);
        let cx = Context {
            budget,
            balances,
            controls,
        };
        let mut out = Vec::new();
        for rule in self.rules.all_mut() {
            rule.apply(c, &cx, &mut out);
        }
        for mut f in out {
            f.raised_at = sequence;
            debug_assert!(f.sequences.last() == Some(&sequence));
            let id = f.id.clone();
            let fresh = self.raised.insert(id.clone(), f).is_none();
            assert!(fresh, "flag {id} raised twice");
            self.by_sequence.entry(sequence).or_default().push(id);
        }
    }

    /// The flags entry `sequence` raised, in the order raised.
    pub fn raised_by(&self, sequence: u64) -> impl Iterator<Item = &Flag> + '_ {
        self.by_sequence
            .get(&sequence)
            .into_iter()
            .flatten()
            .filter_map(|id| self.raised.get(id))
    }

    /// The latest review of flag `id`, if any.
    pub fn review(&self, id: &str) -> Option<&Review> {
        self.reviews.get(id)
    }

    /// Every flag as of `on` at `head`, by id: the event-driven flags raised
    /// so far and the time-based ones that hold on `on`.
    pub fn list(&self, balances: &Balances, on: Date, head: u64) -> Vec<Flag> {
        let at = AsOf {
            balances,
            on,
            head,
            flags: self,
        };
        let mut derived = Vec::new();
        for rule in self.rules.all() {
            rule.as_of(&at, &mut derived);
        }
        for f in &mut derived {
            f.raised_at = head;
        }
        let mut all: Vec<Flag> = self.raised.values().cloned().collect();
        all.extend(derived);
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.dedup_by(|a, b| a.id == b.id);
        all
    }

    /// How many event-driven flags were raised (for limits and tests).
    pub fn raised_count(&self) -> usize {
        self.raised.len()
    }
}
