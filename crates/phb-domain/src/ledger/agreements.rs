//! Service agreements at payment time: a personal assistant or provider is
//! paid under an approved agreement, at its rate, within its weekly units,
//! for a service period inside it that has already ended (in arrears). The
//! Dutch SVB pays only against an approved care agreement at the agreed
//! rate; NDIS refuses claims over the booked quantity or price
//! (shared/research/controls-and-reporting.md).

use super::Budget;
use crate::error::Reject;
use crate::event::{Date, PayeeKind, ServiceClaim};
use crate::money::Money;
use rust_decimal::Decimal;

/// Checks a payment against the budget's agreements.
pub(super) fn check_payment(
    b: &Budget,
    payee_kind: PayeeKind,
    payee_ref: &str,
    category: &str,
    amount: Money,
    service: Option<&ServiceClaim>,
    on: Date,
) -> Result<(), Reject> {
    let needs_agreement = matches!(
        payee_kind,
        PayeeKind::PersonalAssistant | PayeeKind::Provider
    );
    let Some(claim) = service else {
        if needs_agreement {
            return Err(Reject::precondition(format!(
                "a payment to a personal assistant or provider needs a service agreement in force for that payee and category: approve one (ServiceAgreementApproved) on budget {:?} and name it (agreement_id, units, service_from, service_to)",
                b.id
            )));
        }
        return Ok(());
    };
    let a = b.agreements.get(&claim.agreement_id).ok_or_else(|| {
        Reject::precondition(format!(
            "there is no service agreement {:?} on budget {:?}",
            claim.agreement_id, b.id
        ))
    })?;
    let id = &a.agreement_id;
    if a.payee_ref != payee_ref || a.payee_kind != payee_kind || a.category != category {
        return Err(Reject::precondition(format!(
            "agreement {id:?} is with {:?} for {:?}; this payment is to {payee_ref:?} for {category:?}",
            a.payee_ref, a.category
        )));
    }
    if claim.from < a.valid_from || claim.to > a.valid_to {
        return Err(Reject::precondition(format!(
            "agreement {id:?} is in force from {} to {}; the service period {} to {} is not inside it",
            a.valid_from, a.valid_to, claim.from, claim.to
        )));
    }
    if claim.to > on {
        return Err(Reject::precondition(format!(
            "the service period ends on {}, after the payment date {on}: services are paid in arrears",
            claim.to
        )));
    }
    let due = a.rate.as_decimal() * claim.units.as_decimal();
    if due != amount.as_decimal() {
        // In pence where it is exact (most rates and units), else in full.
        let due = if due.scale() <= 2 {
            format!("{due:.2}")
        } else {
            due.normalize().to_string()
        };
        return Err(Reject::precondition(format!(
            "amount {amount} is not rate {} x units {} = {due}",
            a.rate, claim.units
        )));
    }
    if a.max_units_per_week > 0 {
        let days = claim.to.days() - claim.from.days() + 1;
        let weeks = (days + 6) / 7;
        let most = Decimal::from(a.max_units_per_week) * Decimal::from(weeks);
        if claim.units.as_decimal() > most {
            return Err(Reject::precondition(format!(
                "{} units over {days} days ({weeks} weeks) exceed the agreement's {} a week ({most} in all)",
                claim.units, a.max_units_per_week
            )));
        }
    }
    Ok(())
}
