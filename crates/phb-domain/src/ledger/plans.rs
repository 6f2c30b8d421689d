//! Care plans: what a budget's money may be spent on, and how much of each
//! plan line is used. One pure type, `CarePlan`, used by the write model to
//! decide and by the balances projection to fold, so the two cannot differ.

use crate::event::{Date, PlanSpec};
use crate::money::Money;

/// `CarePlan::approved_at` of a plan decided but not yet applied: `apply`
/// sets the entry's sequence (no entry has sequence 0).
pub const PENDING: u64 = 0;

/// A care plan in force on a budget, with what has been spent under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarePlan {
    /// The plan as approved.
    pub spec: PlanSpec,
    /// The log sequence of the approval.
    pub approved_at: u64,
    /// Who approved it.
    pub approved_by: String,
    /// Spent against each line, in the plan's line order.
    pub line_spent: Vec<Money>,
    /// Spent beyond the lines, drawn on the contingency.
    pub contingency_used: Money,
}

/// Where one spending would be charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// (line index, amount) for each line charged, in line order.
    pub lines: Vec<(usize, Money)>,
    /// The part drawn on the contingency.
    pub contingency: Money,
}

/// Why a plan does not cover a spending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uncovered {
    /// Not in force on the spending's date.
    NotInForce,
    /// No line of the plan is for the category.
    Category,
    /// The category's lines plus the unused contingency are less than the amount.
    Exceeds {
        /// What is left on the category's lines.
        lines_left: Money,
        /// What is left of the contingency.
        contingency_left: Money,
    },
}

impl CarePlan {
    /// A new plan, approved at `approved_at` by `approved_by`, nothing spent.
    pub fn new(spec: PlanSpec, approved_at: u64, approved_by: &str) -> CarePlan {
        let line_spent = vec![Money::ZERO; spec.lines.len()];
        CarePlan {
            spec,
            approved_at,
            approved_by: approved_by.to_string(),
            line_spent,
            contingency_used: Money::ZERO,
        }
    }

    /// True on the days from `valid_from` to `valid_to`, inclusive.
    pub fn in_force(&self, on: Date) -> bool {
        self.spec.valid_from <= on && on <= self.spec.valid_to
    }

    /// What is left of line `i` (never negative).
    pub fn line_left(&self, i: usize) -> Money {
        self.spec.lines[i]
            .annual
            .checked_sub(self.line_spent[i])
            .filter(|m| !m.is_negative())
            .unwrap_or(Money::ZERO)
    }

    /// What is left of the contingency (never negative).
    pub fn contingency_left(&self) -> Money {
        self.spec
            .contingency
            .checked_sub(self.contingency_used)
            .filter(|m| !m.is_negative())
            .unwrap_or(Money::ZERO)
    }

    /// Where `amount` in `category`, spent on `on`, would be charged: the
    /// category's lines in plan order, each up to what is left of it, then
    /// the contingency; or why the plan does not cover it.
    pub fn charge(&self, category: &str, amount: Money, on: Date) -> Result<Charge, Uncovered> {
        if !self.in_force(on) {
            return Err(Uncovered::NotInForce);
        }
        let lines: Vec<usize> = (0..self.spec.lines.len())
            .filter(|&i| self.spec.lines[i].category == category)
            .collect();
        if lines.is_empty() {
            return Err(Uncovered::Category);
        }
        let mut due = amount;
        let mut charged = Vec::new();
        for i in lines.iter().copied() {
            if due == Money::ZERO {
                break;
            }
            let take = self.line_left(i).min(due);
            if take > Money::ZERO {
                charged.push((i, take));
                due = due.checked_sub(take).unwrap_or(Money::ZERO);
            }
        }
        if due > self.contingency_left() {
            let lines_left = lines
                .iter()
                .try_fold(Money::ZERO, |t, &i| t.checked_add(self.line_left(i)));
            return Err(Uncovered::Exceeds {
                lines_left: lines_left.unwrap_or(Money::ZERO),
                contingency_left: self.contingency_left(),
            });
        }
        Ok(Charge {
            lines: charged,
            contingency: due,
        })
    }

    /// Gives back `amount` of a refunded spending that `charge` (made on
    /// this plan) recorded: the contingency first, then its lines last to
    /// first, the reverse of the order `charge` fills them, so a refund
    /// followed by the same spending charges the same places. `charge` keeps
    /// what it still holds. A refund never exceeds what its spending still
    /// holds (the write model checks it against the spending's amount, which
    /// its charge equals).
    pub fn give_back(&mut self, charge: &mut Charge, amount: Money) {
        let mut due = amount;
        let take = |held: &mut Money, due: &mut Money| {
            let t = (*held).min(*due);
            *held = held.checked_sub(t).unwrap_or(Money::ZERO);
            *due = due.checked_sub(t).unwrap_or(Money::ZERO);
            t
        };
        let t = take(&mut charge.contingency, &mut due);
        self.contingency_used = self.contingency_used.checked_sub(t).unwrap_or(Money::ZERO);
        for (i, held) in charge.lines.iter_mut().rev() {
            let t = take(held, &mut due);
            self.line_spent[*i] = self.line_spent[*i].checked_sub(t).unwrap_or(Money::ZERO);
        }
        charge.lines.retain(|(_, m)| *m > Money::ZERO);
        debug_assert_eq!(due, Money::ZERO, "a refund exceeded its spending's charge");
    }

    /// Records a charge `charge` computed on this plan.
    pub fn apply(&mut self, charge: &Charge) {
        for (i, m) in &charge.lines {
            self.line_spent[*i] = self.line_spent[*i]
                .checked_add(*m)
                .unwrap_or(self.line_spent[*i]);
        }
        self.contingency_used = self
            .contingency_used
            .checked_add(charge.contingency)
            .unwrap_or(self.contingency_used);
        debug_assert!(self.contingency_used <= self.spec.contingency);
    }

    /// The categories the plan covers, for messages.
    pub fn categories(&self) -> Vec<&str> {
        let mut c: Vec<&str> = self
            .spec
            .lines
            .iter()
            .map(|l| l.category.as_str())
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    }
}
