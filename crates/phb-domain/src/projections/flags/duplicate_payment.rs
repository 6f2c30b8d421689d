//! DUPLICATE_PAYMENT: the same payee paid the same amount for the same
//! service period twice, or the same payee's invoice (payment `reference`,
//! purchase `receipt_ref`) paid twice — on one budget or across budgets
//! (360 Assurance's PHB risk list: duplicate claims; a personal assistant
//! or provider can invoice two budgets for one visit). Not refused: a second
//! payment can be right (two visits the same week at the same rate), so a
//! person looks.

use super::{Context, Flag, FlagCode, Rule, Severity};
use crate::event::{Date, EventKind};
use crate::money::Money;
use crate::projections::Committed;
use std::collections::BTreeMap;

/// (payee, amount, service from, service to).
type Claim = (String, Money, Date, Date);
/// (budget, sequence) of a spending.
type Seen = Vec<(String, u64)>;

/// Earlier spending by what makes two of them the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DuplicatePayment {
    /// Every payment with that claim, oldest first.
    by_claim: BTreeMap<Claim, Seen>,
    /// (payee, reference) → every spending with it, oldest first.
    by_reference: BTreeMap<(String, String), Seen>,
}

impl Rule for DuplicatePayment {
    fn apply(&mut self, c: &Committed<'_>, cx: &Context<'_>, out: &mut Vec<Flag>) {
        let (Some(b), true) = (cx.budget, c.applied()) else {
            return;
        };
        let sequence = c.head.sequence;
        let (payee, amount, claim, reference) = match &c.event.kind {
            EventKind::Payment {
                payee_ref,
                amount,
                service,
                reference,
                ..
            } => (
                payee_ref,
                *amount,
                service.as_ref().map(|s| (s.from, s.to)),
                reference,
            ),
            EventKind::Purchase {
                supplier_ref,
                amount,
                receipt_ref,
                ..
            } => (supplier_ref, *amount, None, receipt_ref),
            _ => return,
        };
        let mut earlier: Vec<(String, u64)> = Vec::new();
        let mut why = Vec::new();
        if let Some((from, to)) = claim {
            let seen = self
                .by_claim
                .entry((payee.clone(), amount, from, to))
                .or_default();
            if !seen.is_empty() {
                why.push(format!(
                    "the same payee, amount ({amount}) and service period ({from} to {to})"
                ));
                earlier.extend(seen.iter().cloned());
            }
            seen.push((b.id.clone(), sequence));
        }
        if !reference.is_empty() {
            let seen = self
                .by_reference
                .entry((payee.clone(), reference.clone()))
                .or_default();
            if !seen.is_empty() {
                why.push(format!("the same payee and reference {reference:?}"));
                earlier.extend(seen.iter().cloned());
            }
            seen.push((b.id.clone(), sequence));
        }
        if earlier.is_empty() {
            return;
        }
        earlier.sort_by_key(|(_, s)| *s);
        earlier.dedup();
        let list: Vec<String> = earlier
            .iter()
            .map(|(budget, s)| {
                if *budget == b.id {
                    format!("#{s}")
                } else {
                    format!("#{s} (budget {budget})")
                }
            })
            .collect();
        let mut f = Flag::new(
            FlagCode::DuplicatePayment,
            Severity::Medium,
            b,
            &sequence.to_string(),
        );
        f.sequences = earlier.iter().map(|(_, s)| *s).collect();
        f.sequences.push(sequence);
        f.explanation = format!(
            "{amount} to {payee} at #{sequence} has {} as {}: check it is not paid twice",
            why.join(" and "),
            list.join(", ")
        );
        out.push(f);
    }
}
