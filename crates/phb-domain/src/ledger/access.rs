//! Who may write what on a budget, and who may read what.

use super::{Budget, Ledger, Organisation};
use crate::error::Reject;
use crate::event::{BudgetChange, Management, PayeeKind, Role, ROOT_SIGNER};

/// What a reader may see of a funds holder's holdings (`GetHoldings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldingsScope {
    /// Every budget it holds: the funds holder itself, auditors and root.
    All,
    /// Only the budgets whose commissioner is the reader: a commissioner
    /// checking what is held for its own budgets.
    OwnBudgets,
    /// Nothing: refused.
    Denied,
}

/// Who is reading.
#[derive(Debug, Clone, Copy)]
pub enum Reader<'a> {
    /// The ledger's root key.
    Root,
    /// A registered organisation.
    Organisation(&'a Organisation),
}

impl Ledger {
    /// Who `org_id` is as a reader, if anyone.
    pub fn reader(&self, org_id: &str) -> Option<Reader<'_>> {
        if org_id == ROOT_SIGNER {
            Some(Reader::Root)
        } else {
            self.orgs.get(org_id).map(Reader::Organisation)
        }
    }

    /// Whether the reader may see `budget`: auditors and root everything,
    /// commissioners their budgets, providers the budgets that name them.
    pub fn may_read(reader: Reader<'_>, budget: &Budget) -> bool {
        match reader {
            Reader::Root => true,
            Reader::Organisation(o) => o.has(Role::Auditor) || budget.names(&o.id),
        }
    }

    /// What the reader may see of the holdings of funds holder `holder_id`.
    pub fn holdings_scope(reader: Reader<'_>, holder_id: &str) -> HoldingsScope {
        match reader {
            Reader::Root => HoldingsScope::All,
            Reader::Organisation(o) if o.has(Role::Auditor) || o.id == holder_id => {
                HoldingsScope::All
            }
            Reader::Organisation(o) if o.has(Role::Commissioner) => HoldingsScope::OwnBudgets,
            Reader::Organisation(_) => HoldingsScope::Denied,
        }
    }

    /// Whether the reader may stream the whole log.
    pub fn may_read_log(reader: Reader<'_>) -> bool {
        match reader {
            Reader::Root => true,
            Reader::Organisation(o) => o.has(Role::Auditor),
        }
    }

    /// Who may do what on an existing budget.
    pub(super) fn authorise(
        &self,
        signer: &Organisation,
        budget: &Budget,
        kind_name: &str,
        change: BudgetChange<'_>,
    ) -> Result<(), Reject> {
        let is_commissioner = signer.has(Role::Commissioner) && budget.commissioner_id == signer.id;
        let is_funds_holder = budget.funds_holder_id.as_deref() == Some(signer.id.as_str())
            && (signer.has(Role::ThirdParty) || signer.has(Role::AccountProvider));
        let is_payroll = budget.payroll_provider_id.as_deref() == Some(signer.id.as_str())
            && signer.has(Role::PayrollProvider);
        let is_facilitator = budget.plan_facilitator_id.as_deref() == Some(signer.id.as_str())
            && signer.has(Role::PlanFacilitator);
        let notional = budget.management == Management::Notional;
        let allowed = match change {
            BudgetChange::Allocation { .. }
            | BudgetChange::Disbursement { .. }
            | BudgetChange::ReviewAdjustment { .. }
            | BudgetChange::FacilitatorAppointed { .. }
            | BudgetChange::Suspend
            | BudgetChange::Resume
            | BudgetChange::HolderDied { .. }
            | BudgetChange::Reclaim { .. }
            | BudgetChange::Stop { .. } => is_commissioner,
            // Which spender may refund which spending is checked with the
            // spending (`decide_budget`).
            BudgetChange::Refund { .. } => is_commissioner || is_funds_holder || is_payroll,
            BudgetChange::PlanApproved(_) | BudgetChange::AgreementApproved(_) => {
                is_commissioner || is_facilitator
            }
            BudgetChange::Payment { payee_kind, .. } => {
                (notional && is_commissioner)
                    || (!notional && is_funds_holder)
                    || (!notional
                        && is_payroll
                        && matches!(
                            payee_kind,
                            PayeeKind::PersonalAssistant
                                | PayeeKind::TaxAuthority
                                | PayeeKind::PensionScheme
                        ))
            }
            BudgetChange::Purchase { .. } => {
                (notional && is_commissioner) || (!notional && is_funds_holder)
            }
            // The account provider asks at authorisation time.
            BudgetChange::Card { .. } => {
                !notional && is_funds_holder && signer.has(Role::AccountProvider)
            }
            BudgetChange::Admitted { .. }
            | BudgetChange::Discharged { .. }
            | BudgetChange::Reviewed { .. }
            | BudgetChange::ExternalMatch
            | BudgetChange::FlagReviewed => is_commissioner,
        };
        if allowed {
            return Ok(());
        }
        let why = match change {
            BudgetChange::Payment { .. } | BudgetChange::Purchase { .. } if notional => {
                "on a notional budget only its commissioner pays and buys".to_string()
            }
            BudgetChange::Payment {
                payee_kind: PayeeKind::Provider,
                ..
            } if is_payroll => {
                "a payroll provider pays personal assistants only (payee_kind PAYEE_KIND_PERSONAL_ASSISTANT)".to_string()
            }
            BudgetChange::PlanApproved(_) | BudgetChange::AgreementApproved(_) => format!(
                "care plans are approved by the budget's commissioner ({:?}) or its plan facilitator ({:?})",
                budget.commissioner_id,
                budget.plan_facilitator_id.as_deref().unwrap_or("none")
            ),
            BudgetChange::Payment { .. } | BudgetChange::Purchase { .. } => {
                "spending is recorded by the budget's funds holder, or its payroll provider for personal assistants' wages".to_string()
            }
            _ => format!(
                "only the budget's commissioner ({:?}) records {}",
                budget.commissioner_id, kind_name
            ),
        };
        Err(Reject::denied(format!(
            "{:?} may not record {} on budget {:?}: {why}",
            signer.id, kind_name, budget.id
        )))
    }

    /// Whether the reader may list the budgets of commissioner `filter`
    /// (empty: every budget it may read). A commissioner lists its own; an
    /// auditor or root any; a provider may filter by any commissioner (it
    /// still sees only the budgets that name it).
    pub fn may_list(reader: Reader<'_>, filter: &str) -> bool {
        match reader {
            Reader::Root => true,
            Reader::Organisation(o) => {
                filter.is_empty()
                    || filter == o.id
                    || o.has(Role::Auditor)
                    || !o.has(Role::Commissioner)
            }
        }
    }
}
