//! Budgets: opening one, and the money rules of every budget event.

use super::agreements;
use super::plans::{self, CarePlan, Charge, Uncovered};
use super::spendings::Spendings;
use super::{Change, Ledger, Organisation};
use crate::categories::{self, Category};
use crate::error::Reject;
use crate::event::{AgreementSpec, BudgetChange, BudgetOpening, Date, Management, Role};
use crate::money::Money;
use std::collections::BTreeMap;

/// A Payment or Purchase, as refunds need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spending {
    /// Who recorded it.
    pub signer_id: String,
    /// How much.
    pub amount: Money,
    /// How much of it was refunded.
    pub refunded: Money,
    /// The care plan it was charged to (`CarePlan::approved_at`) and what
    /// that charge still holds after refunds: a refund gives it back to the
    /// plan's lines and contingency while that plan is in force. A plan
    /// approved later starts afresh, so a refund then lowers only `spent`.
    pub charge: (u64, Charge),
}

impl Spending {
    /// What may still be refunded.
    pub fn refundable(&self) -> Money {
        self.amount
            .checked_sub(self.refunded)
            .unwrap_or(Money::ZERO)
    }
}

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
    /// Plan facilitator.
    pub plan_facilitator_id: Option<String>,
    /// The care plan in force, if one was approved.
    pub plan: Option<CarePlan>,
    /// Suspended (until resumed)?
    pub suspended: bool,
    /// The holder's date of death, once recorded.
    pub died_on: Option<Date>,
    /// Every Payment and Purchase by sequence, for refunds: who recorded it,
    /// how much, how much is refunded.
    pub spendings: Spendings,
    /// Approved service agreements by id.
    pub agreements: BTreeMap<String, AgreementSpec>,
    /// In hospital since, if admitted and not discharged.
    pub in_hospital_since: Option<Date>,
    /// The latest review date recorded.
    pub last_review: Option<Date>,
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
            || self.plan_facilitator_id.as_deref() == Some(org)
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
        must_have(
            o.plan_facilitator_id,
            Role::PlanFacilitator,
            "plan_facilitator_id",
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
            plan_facilitator_id: o.plan_facilitator_id.map(str::to_string),
            plan: None,
            suspended: false,
            died_on: None,
            spendings: Spendings::default(),
            agreements: BTreeMap::new(),
            in_hospital_since: None,
            last_review: None,
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
        on: Date,
    ) -> Result<Change, Reject> {
        let budget = self.budgets.get(budget_id).ok_or_else(|| {
            Reject::not_found(format!(
                "budget {budget_id:?} does not exist; open it with BudgetOpened first"
            ))
        })?;
        self.authorise(signer, budget, kind_name, change)?;
        // A stopped budget still gets its flags reviewed and its data
        // matches recorded: that is when deaths and overpayments surface.
        let after_stop_too = matches!(
            change,
            BudgetChange::ExternalMatch | BudgetChange::FlagReviewed
        );
        if budget.stopped && !after_stop_too {
            return Err(Reject::precondition(format!(
                "budget {:?} is stopped; nothing more may be recorded against it",
                budget.id
            )));
        }
        let mut b = budget.clone();
        let overflow = || Reject::precondition("amount would overflow the budget's totals");
        let moves_money_out = matches!(
            change,
            BudgetChange::Disbursement { .. }
                | BudgetChange::Payment { .. }
                | BudgetChange::Purchase { .. }
                | BudgetChange::Card { .. }
        );
        if moves_money_out && b.suspended {
            return Err(Reject::precondition(format!(
                "budget {:?} is suspended: nothing is disbursed, paid or bought until BudgetResumed",
                b.id
            )));
        }
        if let (true, Some(died)) = (moves_money_out, b.died_on) {
            // A payment under an agreement is for its service period.
            let until = match change {
                BudgetChange::Payment {
                    service: Some(claim),
                    ..
                } => claim.to.max(on),
                _ => on,
            };
            if until > died {
                return Err(Reject::precondition(format!(
                    "the budget holder died on {died}; nothing is disbursed, paid or bought for {until}, after that date"
                )));
            }
        }
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
            | BudgetChange::Purchase {
                amount, category, ..
            } => spend(&mut b, signer, change, amount, category, on)?,
            BudgetChange::Card {
                amount,
                mcc,
                channel,
            } => {
                let category = card_category(mcc, channel)?;
                spend(&mut b, signer, change, amount, category, on)?
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
            BudgetChange::PlanApproved(spec) => {
                for (i, line) in spec.lines.iter().enumerate() {
                    if let Some(Category::Excluded { code, rule }) =
                        categories::classify(&line.category)
                    {
                        return Err(Reject::precondition(format!(
                            "plan line {i} ({:?}) is for category {code:?}, which is excluded: {rule}",
                            line.line_id
                        )));
                    }
                }
                let total = spec.total().ok_or_else(overflow)?;
                let is_commissioner = signer.id == b.commissioner_id;
                // Seed 004: a facilitator may sign off a plan unless it is
                // more than 15 % above the budget (the allocation).
                if !is_commissioner && above_facilitator_limit(total, b.allocated) {
                    return Err(Reject::denied(format!(
                        "plan {:?} totals {total} (lines plus contingency), more than 15 % above the allocation of {}: only the commissioner ({:?}) may approve it",
                        spec.plan_id, b.allocated, b.commissioner_id
                    )));
                }
                b.plan = Some(CarePlan::new((*spec).clone(), plans::PENDING, &signer.id));
            }
            BudgetChange::AgreementApproved(spec) => {
                if spec.connected_person && signer.id != b.commissioner_id {
                    return Err(Reject::denied(format!(
                        "an agreement with a connected person (SI 2017/219) is approved by the commissioner ({:?}) only",
                        b.commissioner_id
                    )));
                }
                if let Some(Category::Excluded { code, rule }) =
                    categories::classify(&spec.category)
                {
                    return Err(Reject::precondition(format!(
                        "agreement {:?} is for category {code:?}, which is excluded: {rule}",
                        spec.agreement_id
                    )));
                }
                if b.agreements.contains_key(&spec.agreement_id) {
                    return Err(Reject::exists(format!(
                        "agreement {:?} already exists on budget {:?}; approve a new one under a new agreement_id",
                        spec.agreement_id, b.id
                    )));
                }
                b.agreements
                    .insert(spec.agreement_id.clone(), (*spec).clone());
            }
            BudgetChange::Admitted { date } => {
                if let Some(since) = b.in_hospital_since {
                    return Err(Reject::precondition(format!(
                        "the holder is already recorded in hospital since {since}"
                    )));
                }
                b.in_hospital_since = Some(date);
            }
            BudgetChange::Discharged { date } => {
                let Some(since) = b.in_hospital_since else {
                    return Err(Reject::precondition(
                        "the holder is not recorded in hospital",
                    ));
                };
                if date < since {
                    return Err(Reject::precondition(format!(
                        "discharge on {date} is before the admission on {since}"
                    )));
                }
                b.in_hospital_since = None;
            }
            // Flags' business (the projections): the write model only checks
            // who signs (`authorise`) and that the budget exists.
            BudgetChange::ExternalMatch | BudgetChange::FlagReviewed => {}
            BudgetChange::Reviewed { date } => {
                b.last_review = Some(b.last_review.map_or(date, |d| d.max(date)));
            }
            BudgetChange::Suspend => {
                if b.suspended {
                    return Err(Reject::precondition(format!(
                        "budget {:?} is already suspended",
                        b.id
                    )));
                }
                b.suspended = true;
            }
            BudgetChange::Resume => {
                if !b.suspended {
                    return Err(Reject::precondition(format!(
                        "budget {:?} is not suspended",
                        b.id
                    )));
                }
                b.suspended = false;
            }
            BudgetChange::HolderDied { date } => {
                if let Some(died) = b.died_on {
                    return Err(Reject::precondition(format!(
                        "the holder's death is already recorded (on {died})"
                    )));
                }
                b.died_on = Some(date);
            }
            BudgetChange::Reclaim { amount } => {
                if b.management == Management::Notional {
                    return Err(Reject::precondition(format!(
                        "budget {:?} is notional: nothing was paid out, so nothing is reclaimed",
                        b.id
                    )));
                }
                let held = b.held();
                if amount > held {
                    return Err(Reject::precondition(format!(
                        "reclaiming {amount} exceeds what is held: {held}"
                    )));
                }
                b.paid_in = b.paid_in.checked_sub(amount).ok_or_else(overflow)?;
                b.allocated = b.allocated.checked_sub(amount).ok_or_else(overflow)?;
            }
            BudgetChange::Refund {
                original_sequence,
                amount,
            } => {
                let Some(original) = b.spendings.get_mut(&original_sequence) else {
                    return Err(Reject::precondition(format!(
                        "there is no Payment or Purchase at sequence {original_sequence} on budget {:?}",
                        b.id
                    )));
                };
                if original.signer_id != signer.id {
                    return Err(Reject::denied(format!(
                        "the spending at sequence {original_sequence} was recorded by {:?}; only it may record its refund",
                        original.signer_id
                    )));
                }
                let left = original.refundable();
                if amount > left {
                    return Err(Reject::precondition(format!(
                        "refunding {amount} exceeds what is left of the spending at sequence {original_sequence}: {left} of {}",
                        original.amount
                    )));
                }
                original.refunded = original.refunded.checked_add(amount).ok_or_else(overflow)?;
                let (charged_to, charge) = &mut original.charge;
                if let Some(plan) = b.plan.as_mut().filter(|p| p.approved_at == *charged_to) {
                    plan.give_back(charge, amount);
                }
                b.spent = b.spent.checked_sub(amount).ok_or_else(overflow)?;
            }
            BudgetChange::FacilitatorAppointed { organisation_id } => {
                match self.orgs.get(organisation_id) {
                    Some(o) if o.has(Role::PlanFacilitator) => {}
                    Some(_) => {
                        return Err(Reject::precondition(format!(
                            "{organisation_id:?} does not hold the role PlanFacilitator"
                        )))
                    }
                    None => {
                        return Err(Reject::precondition(format!(
                        "{organisation_id:?} is not a registered organisation; register it first"
                    )))
                    }
                }
                b.plan_facilitator_id = Some(organisation_id.to_string());
            }
        }
        Ok(Change::Budget(b))
    }
}

/// True if `total` is more than 115 % of `allocated`: compared exactly, in
/// pence, as `total × 100 > allocated × 115`.
pub fn above_facilitator_limit(total: Money, allocated: Money) -> bool {
    total.as_decimal() * rust_decimal::Decimal::from(100)
        > allocated.as_decimal() * rust_decimal::Decimal::from(115)
}

/// The plan's charge for a spending, or the refusal that names the figures.
fn plan_charge(
    plan: &CarePlan,
    category: &str,
    amount: Money,
    on: Date,
) -> Result<plans::Charge, Reject> {
    let id = &plan.spec.plan_id;
    plan.charge(category, amount, on).map_err(|why| match why {
        Uncovered::NotInForce => Reject::precondition(format!(
            "care plan {id:?} is in force from {} to {}; spending on {on} is outside it",
            plan.spec.valid_from, plan.spec.valid_to
        )),
        Uncovered::Category => Reject::precondition(format!(
            "care plan {id:?} has no line for category {category:?}; it covers {}",
            plan.categories().join(", ")
        )),
        Uncovered::Exceeds {
            lines_left,
            contingency_left,
        } => Reject::precondition(format!(
            "spending {amount} on {category:?} exceeds care plan {id:?}: {lines_left} is left on its {category:?} lines and {contingency_left} of the contingency"
        )),
    })
}

/// The category a card payment is charged to: from its merchant category
/// code (`categories::category_of_mcc`), or `cash` for an ATM withdrawal;
/// blocked codes and codes the ledger does not recognise decline the card.
/// Cash, like any spending, then needs a plan line for it (`spend`).
fn card_category(mcc: u32, channel: crate::event::CardChannel) -> Result<&'static str, Reject> {
    if let Some((_, rule)) = categories::BLOCKED_MCCS.iter().find(|(c, _)| *c == mcc) {
        return Err(Reject::precondition(format!(
            "merchant category {mcc} is blocked on personal health budget cards: {rule}"
        )));
    }
    if channel == crate::event::CardChannel::Atm {
        return Ok("cash");
    }
    categories::category_of_mcc(mcc).ok_or_else(|| {
        Reject::precondition(format!(
            "merchant category {mcc} is not one the ledger maps to a spending category; the card is declined: pay by invoice"
        ))
    })
}

/// A spending of `amount` in `category` (a Payment, Purchase or approved
/// card payment): the category exclusions, the service agreement (for a
/// payment), the care plan, then the money; on success `b` records it.
fn spend(
    b: &mut Budget,
    signer: &Organisation,
    change: BudgetChange<'_>,
    amount: Money,
    category: &str,
    on: Date,
) -> Result<(), Reject> {
    let overflow = || Reject::precondition("amount would overflow the budget's totals");
    if let Some(Category::Excluded { code, rule }) = categories::classify(category) {
        return Err(Reject::precondition(format!(
            "category {code:?} is excluded whatever the care plan says: {rule}"
        )));
    }
    if let BudgetChange::Payment {
        payee_kind,
        payee_ref,
        service,
        ..
    } = change
    {
        agreements::check_payment(b, payee_kind, payee_ref, category, amount, service, on)?;
    }
    // NHS (Direct Payments) Regulations 2013 reg 13: money is spent only
    // under an agreed care plan; NDIS and US fiscal agents likewise refuse
    // a claim with no plan line (shared/research/controls-and-reporting.md).
    let Some(plan) = &b.plan else {
        return Err(Reject::precondition(format!(
            "budget {:?} has no approved care plan: nothing is spent until one is approved (CarePlanApproved) with a line for {category:?}",
            b.id
        )));
    };
    let charge = plan_charge(plan, category, amount, on)?;
    let charged_to = plan.approved_at;
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
    if let Some(plan) = &mut b.plan {
        plan.apply(&charge);
    }
    b.spendings.insert(
        plans::PENDING,
        Spending {
            signer_id: signer.id.clone(),
            amount,
            refunded: Money::ZERO,
            charge: (charged_to, charge),
        },
    );
    Ok(())
}
