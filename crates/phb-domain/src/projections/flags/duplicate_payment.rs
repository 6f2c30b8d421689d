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
use crate::projections::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
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

/// Snapshot: the claims (a map of (payee, amount, service from, service to)
/// → what was seen), then the references (a map of (payee, reference) →
/// what was seen). What was seen is the spendings listed — the first, then
/// the latest, each (budget id, sequence) — and how many there were in all.
/// Decoding checks the list is what `Seen::push` keeps: at least one, and
/// as many as there were up to `1 + MAX_LISTED`.
impl DuplicatePayment {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        let DuplicatePayment {
            by_claim,
            by_reference,
        } = self;
        w.seq(by_claim, |w, ((payee, amount, from, to), seen)| {
            w.str(payee);
            w.money(*amount);
            w.date(*from);
            w.date(*to);
            seen.write(w);
        });
        w.seq(by_reference, |w, ((payee, reference), seen)| {
            w.str(payee);
            w.str(reference);
            seen.write(w);
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<DuplicatePayment, SnapshotError> {
        let by_claim = r.map(|r| {
            let claim = (r.string()?, r.money()?, r.date()?, r.date()?);
            Ok((claim, Seen::read(r)?))
        })?;
        let by_reference = r.map(|r| {
            let key = (r.string()?, r.string()?);
            Ok((key, Seen::read(r)?))
        })?;
        Ok(DuplicatePayment {
            by_claim,
            by_reference,
        })
    }
}

impl Seen {
    fn write(&self, w: &mut SnapshotWriter<'_>) {
        let Seen {
            first: _,
            latest: _,
            count,
        } = self;
        let listed: Vec<&(String, u64)> = self.listed().collect();
        w.seq(listed, |w, (budget, sequence)| {
            w.str(budget);
            w.u64(*sequence);
        });
        w.u64(*count);
    }

    fn read(r: &mut SnapshotReader<'_>) -> Result<Seen, SnapshotError> {
        let at = r.position();
        let mut listed = r.seq(|r| Ok((r.string()?, r.u64()?)))?.into_iter();
        let count = r.u64()?;
        let kept = usize::try_from(count).map_or(1 + MAX_LISTED, |c| c.min(1 + MAX_LISTED));
        if count == 0 || listed.len() != kept {
            return Err(SnapshotReader::bad(
                at,
                "a duplicate-payment key lists other than its first and latest spendings",
            ));
        }
        Ok(Seen {
            first: listed.next(),
            latest: listed.collect(),
            count,
        })
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

    /// A `Seen` of `listed` sequences and `count`, as the snapshot writes
    /// it.
    fn seen(listed: u64, count: u64) -> Result<Seen, SnapshotError> {
        let mut out = Vec::new();
        let mut w = SnapshotWriter::new(&mut out);
        w.seq((1..=listed).collect::<Vec<u64>>(), |w, s| {
            w.str("b");
            w.u64(s);
        });
        w.u64(count);
        SnapshotReader::read_all(&out, Seen::read)
    }

    #[test]
    fn a_snapshot_lists_what_push_keeps() {
        let mut pushed = Seen::default();
        for s in 1..=1000u64 {
            pushed.push(("b".into(), s));
        }
        let mut out = Vec::new();
        pushed.write(&mut SnapshotWriter::new(&mut out));
        assert_eq!(SnapshotReader::read_all(&out, Seen::read), Ok(pushed));
        let listed = 1 + MAX_LISTED as u64;
        assert!(seen(1, 1).is_ok() && seen(3, 3).is_ok() && seen(listed, 1000).is_ok());
        for (listed, count) in [(0, 0), (1, 0), (2, 3), (3, 2), (listed - 1, 1000)] {
            assert!(
                matches!(seen(listed, count), Err(SnapshotError::BadValue { .. })),
                "{listed} of {count}"
            );
        }
    }
}
