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
/// The earliest spending with a key and the latest ones (at most
/// `MAX_LISTED`, oldest first), each (budget, sequence), and how many there
/// were in all: a flag names a bounded list, so a payee paid the same claim
/// a thousand times costs each fold no more than the tenth time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    first: Option<(String, u64)>,
    latest: std::collections::VecDeque<(String, u64)>,
    count: u64,
}

/// The most earlier spendings a flag lists besides the first.
const MAX_LISTED: usize = 8;

impl Seen {
    fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The spendings listed: the first, then the latest.
    fn listed(&self) -> impl Iterator<Item = &(String, u64)> {
        self.first.iter().chain(self.latest.iter())
    }

    fn push(&mut self, s: (String, u64)) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(s);
            return;
        }
        if self.latest.len() == MAX_LISTED {
            self.latest.pop_front();
        }
        self.latest.push_back(s);
    }
}

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
        let mut matches = 0u64;
        if let Some((from, to)) = claim {
            let seen = self
                .by_claim
                .entry((payee.clone(), amount, from, to))
                .or_default();
            if !seen.is_empty() {
                why.push(format!(
                    "the same payee, amount ({amount}) and service period ({from} to {to})"
                ));
                earlier.extend(seen.listed().cloned());
                matches = matches.max(seen.count);
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
                earlier.extend(seen.listed().cloned());
                matches = matches.max(seen.count);
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
        let more = match matches.saturating_sub(earlier.len() as u64) {
            0 => String::new(),
            n => format!(" (and {n} more between them)"),
        };
        f.explanation = format!(
            "{amount} to {payee} at #{sequence} has {} as {}{more}: check it is not paid twice",
            why.join(" and "),
            list.join(", ")
        );
        out.push(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_of_earlier_spendings_is_bounded() {
        let mut seen = Seen::default();
        for s in 1..=1000u64 {
            seen.push(("b".into(), s));
        }
        let listed: Vec<u64> = seen.listed().map(|(_, s)| *s).collect();
        assert_eq!(listed.len(), 1 + MAX_LISTED);
        assert_eq!(listed[0], 1);
        assert_eq!(*listed.last().unwrap(), 1000);
        assert_eq!(seen.count, 1000);
    }
}
