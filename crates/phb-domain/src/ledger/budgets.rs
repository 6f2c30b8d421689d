//! Budgets: opening one, and the money rules of every budget event.

use super::{Change, Ledger, Organisation};
use crate::categories::{self, Category};
use crate::error::Reject;
use crate::event::{BudgetChange, BudgetOpening, Date, Management, Role};
use crate::money::Money;

/// A budget and its running figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Its id.
    pub id: String,
    /// Pseudonymous holder reference.
    pub holder_ref: String,
    /// The commissioner.
    pub commissioner_id: String,
    /// First day.
    pub period_start: Date,
    /// Last day.
    pub period_end: Date,
    /// How the money is held.
    pub management: Management,
    /// Who holds the funds.
    pub funds_holder_id: Option<String>,
    /// Payroll provider.
    pub payroll_provider_id: Option<String>,
    /// Allocations plus review deltas.
    pub allocated: Money,
    /// Disbursements.
    pub paid_in: Money,
    /// Payments plus purchases.
    pub spent: Money,
    /// Stopped?
    pub stopped: bool,
    /// Last sequence that changed this budget.
    pub last_sequence: u64,
}

impl Budget {
    /// paid_in - spent, or zero for notional budgets.
    pub fn held(&self) -> Money {
        match self.management {
            Management::Notional => Money::ZERO,
            _ => self.paid_in.checked_sub(self.spent).unwrap_or(Money::ZERO),
        }
    }

    /// allocated - spent.
    pub fn available(&self) -> Money {
        self.allocated
            .checked_sub(self.spent)
            .unwrap_or(Money::ZERO)
    }

    /// How much may be spent now: `held`, or `available` for notional budgets.
    pub(super) fn spendable(&self) -> Money {
        match self.management {
            Management::Notional => self.available(),
            _ => self.held(),
        }
    }

    /// True if `org` is named on the budget in any capacity.
    pub fn names(&self, org: &str) -> bool {
        self.commissioner_id == org
            || self.funds_holder_id.as_deref() == Some(org)
            || self.payroll_provider_id.as_deref() == Some(org)
    }
}

impl Ledger {
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

    /// Opening a budget: by its own commissioner, under a new id, naming
    /// organisations that hold the roles they are named for.
    pub(super) fn decide_open(
        &self,
        signer: &Organisation,
        budget_id: &str,
        o: BudgetOpening<'_>,
    ) -> Result<Change, Reject> {
        if !signer.has(Role::Commissioner) || o.commissioner_id != signer.id {
            return Err(Reject::denied(format!(
                "{:?} may not open a budget for commissioner {:?}: budgets are opened by their own commissioner",
                signer.id, o.commissioner_id
            )));
        }
        if self.budgets.contains_key(budget_id) {
            return Err(Reject::exists(format!(
                "budget {budget_id:?} already exists; choose a new budget_id"
            )));
        }
        let must_have = |id: Option<&str>, role: Role, field: &str| -> Result<(), Reject> {
            let Some(id) = id else { return Ok(()) };
            match self.orgs.get(id) {
                Some(org) if org.has(role) => Ok(()),
                Some(_) => Err(Reject::precondition(format!(
                    "{field} {id:?} does not hold the role {role:?}"
                ))),
                None => Err(Reject::precondition(format!(
                    "{field} {id:?} is not a registered organisation; register it first"
                ))),
            }
        };
        let holder_role = match o.management {
            Management::ThirdParty => Role::ThirdParty,
            _ => Role::AccountProvider,
        };
        must_have(o.funds_holder_id, holder_role, "funds_holder_id")?;
        must_have(
            o.payroll_provider_id,
            Role::PayrollProvider,
            "payroll_provider_id",
        )?;
        Ok(Change::Budget(Budget {
            id: budget_id.to_string(),
            holder_ref: o.holder_ref.to_string(),
            commissioner_id: o.commissioner_id.to_string(),
            period_start: o.period_start,
            period_end: o.period_end,
            management: o.management,
            funds_holder_id: o.funds_holder_id.map(str::to_string),
            payroll_provider_id: o.payroll_provider_id.map(str::to_string),
            allocated: Money::ZERO,
            paid_in: Money::ZERO,
            spent: Money::ZERO,
            stopped: false,
            last_sequence: 0,
        }))
    }

    /// An event on an existing budget: it must exist, the signer must be
    /// allowed (`authorise`), it must not be stopped, and the money rules of
    /// the kind must hold.
    pub(super) fn decide_budget(
        &self,
        signer: &Organisation,
        budget_id: &str,
        kind_name: &str,
        change: BudgetChange<'_>,
    ) -> Result<Change, Reject> {
        let budget = self.budgets.get(budget_id).ok_or_else(|| {
            Reject::not_found(format!(
                "budget {budget_id:?} does not exist; open it with BudgetOpened first"
            ))
        })?;
        self.authorise(signer, budget, kind_name, change)?;
        if budget.stopped {
            return Err(Reject::precondition(format!(
                "budget {:?} is stopped; nothing more may be recorded against it",
                budget.id
            )));
        }
        let mut b = budget.clone();
        let overflow = || Reject::precondition("amount would overflow the budget's totals");
        match change {
            BudgetChange::Allocation { amount } => {
                b.allocated = b.allocated.checked_add(amount).ok_or_else(overflow)?;
            }
            BudgetChange::Disbursement { amount } => {
                if b.management == Management::Notional {
                    return Err(Reject::precondition(format!(
                        "budget {:?} is notional: the commissioner keeps the money, so nothing is disbursed",
                        b.id
                    )));
                }
                let undisbursed = b.allocated.checked_sub(b.paid_in).ok_or_else(overflow)?;
                if amount > undisbursed {
                    return Err(Reject::precondition(format!(
                        "disbursing {amount} would exceed the allocation: allocated {}, already paid in {}, at most {undisbursed} more may be disbursed",
                        b.allocated, b.paid_in
                    )));
                }
                b.paid_in = b.paid_in.checked_add(amount).ok_or_else(overflow)?;
            }
            BudgetChange::Payment {
                amount, category, ..
            }
            | BudgetChange::Purchase { amount, category } => {
                if let Some(Category::Excluded { code, rule }) = categories::classify(category) {
                    return Err(Reject::precondition(format!(
                        "category {code:?} is excluded whatever the care plan says: {rule}"
                    )));
                }
                let spendable = b.spendable();
                if amount > spendable {
                    let what = match b.management {
                        Management::Notional => "available",
                        _ => "held",
                    };
                    return Err(Reject::precondition(format!(
                        "spending {amount} would overspend budget {:?}: only {spendable} is {what}",
                        b.id
                    )));
                }
                b.spent = b.spent.checked_add(amount).ok_or_else(overflow)?;
            }
            BudgetChange::ReviewAdjustment { delta } => {
                let allocated = b.allocated.checked_add(delta).ok_or_else(overflow)?;
                let (floor, what) = match b.management {
                    Management::Notional => (b.spent, "spent"),
                    _ => (b.paid_in, "paid in"),
                };
                if allocated < floor {
                    return Err(Reject::precondition(format!(
                        "a delta of {delta} would take allocated to {allocated}, below the {floor} already {what}"
                    )));
                }
                b.allocated = allocated;
            }
            BudgetChange::Stop { .. } => b.stopped = true,
        }
        Ok(Change::Budget(b))
    }
}
