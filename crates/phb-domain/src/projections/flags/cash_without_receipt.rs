//! CASH_WITHOUT_RECEIPT: cash spending with no receipt reference more than
//! `cash_receipt_days` (default 30, our choice) after it was spent. Cash is
//! an ATM withdrawal on the budget's card (`CardTransaction`, channel ATM:
//! it carries no receipt), or a `Purchase` or `Payment` in category `cash`
//! with no receipt reference (a purchase's `receipt_ref`; for a payment,
//! its `reference`, the payee's invoice). 360 Assurance's PHB fraud risks
//! name "cash withdrawals ... covering this up by ... false or inflated
//! receipts"; councils allow cash only where the plan says so and audit the
//! receipts (shared/research/controls-and-reporting.md §2-3).
//!
//! Time-based: the rule keeps each cash spending's date, and at the as-of
//! date flags those more than `cash_receipt_days` old (30 days old is not
//! flagged, 31 is). The ledger has no event yet that attaches a receipt to
//! an earlier spending, so an ATM withdrawal is always flagged once old
//! enough: the reviewer who has seen the receipts dismisses the flag with
//! `FlagReviewed`, and the review stays with it (the key is the spending's
//! sequence). A spending refunded in full is not flagged.

use super::{AsOf, Context, Flag, FlagCode, Rule, Severity};
use crate::event::{CardChannel, Date, EventKind};
use crate::money::Money;
use crate::projections::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::projections::Committed;
use std::collections::BTreeMap;

/// What a cash spending was: a closed set, so a snapshot can name it by a
/// tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CashKind {
    Atm,
    Purchase,
    Payment,
}

impl CashKind {
    /// As the explanation says it.
    fn describe(self) -> &'static str {
        match self {
            CashKind::Atm => "an ATM withdrawal",
            CashKind::Purchase => "a cash purchase",
            CashKind::Payment => "a cash payment",
        }
    }
}

/// One cash spending without a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cash {
    /// When it was spent (its `occurred_at` date).
    on: Date,
    /// How much.
    amount: Money,
    /// What it was, for the explanation.
    what: CashKind,
}

/// Every cash spending without a receipt, by (budget, sequence).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CashWithoutReceipt {
    cash: BTreeMap<(String, u64), Cash>,
}

impl Rule for CashWithoutReceipt {
    fn apply(&mut self, c: &Committed<'_>, cx: &Context<'_>, _out: &mut Vec<Flag>) {
        let (Some(b), true) = (cx.budget, c.applied()) else {
            return;
        };
        let (amount, what) = match &c.event.kind {
            EventKind::CardTransaction {
                amount,
                channel: CardChannel::Atm,
                ..
            } => (*amount, CashKind::Atm),
            EventKind::Purchase {
                amount,
                category,
                receipt_ref,
                ..
            } if category == "cash" && receipt_ref.is_empty() => (*amount, CashKind::Purchase),
            EventKind::Payment {
                amount,
                category,
                reference,
                ..
            } if category == "cash" && reference.is_empty() => (*amount, CashKind::Payment),
            _ => return,
        };
        let on = Date::from_unix_micros(c.event.occurred_at_micros);
        self.cash
            .insert((b.id.clone(), c.head.sequence), Cash { on, amount, what });
    }

    fn as_of(&self, at: &AsOf<'_>, out: &mut Vec<Flag>) {
        for ((id, sequence), cash) in &self.cash {
            let Some(b) = at.balances.budget(id) else {
                continue;
            };
            let refunded_in_full = b
                .spendings
                .get(sequence)
                .is_some_and(|s| s.refundable() == Money::ZERO);
            if refunded_in_full {
                continue;
            }
            let days = at.controls(&b.commissioner_id).cash_receipt_days;
            let age = at.on.days() - cash.on.days();
            if age <= i64::from(days) {
                continue;
            }
            let mut f = Flag::new(
                FlagCode::CashWithoutReceipt,
                Severity::Medium,
                b,
                &sequence.to_string(),
            );
            f.sequences = vec![*sequence];
            f.thresholds = vec![("cash_receipt_days", days.to_string())];
            f.explanation = format!(
                "{} of {} on {} (#{sequence}) has no receipt reference {age} days later, as of {} (the limit is {days} days): ask for the receipts, and once they are seen dismiss this flag with FlagReviewed",
                cash.what.describe(),
                cash.amount,
                cash.on,
                at.on
            );
            out.push(f);
        }
    }
}

/// Snapshot: the map of (budget id, sequence) → the spending's date,
/// amount and kind (a tag: 0 an ATM withdrawal, 1 a cash purchase, 2 a
/// cash payment).
impl CashWithoutReceipt {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        let CashWithoutReceipt { cash } = self;
        w.seq(cash, |w, ((id, sequence), c)| {
            w.str(id);
            w.u64(*sequence);
            w.date(c.on);
            w.money(c.amount);
            w.u8(match c.what {
                CashKind::Atm => 0,
                CashKind::Purchase => 1,
                CashKind::Payment => 2,
            });
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<CashWithoutReceipt, SnapshotError> {
        let cash = r.map(|r| {
            let key = (r.string()?, r.u64()?);
            let on = r.date()?;
            let amount = r.money()?;
            let at = r.position();
            let what = match r.u8()? {
                0 => CashKind::Atm,
                1 => CashKind::Purchase,
                2 => CashKind::Payment,
                _ => return Err(SnapshotReader::bad(at, "unknown kind of cash spending")),
            };
            Ok((key, Cash { on, amount, what }))
        })?;
        Ok(CashWithoutReceipt { cash })
    }
}

#[cfg(test)]
mod tests {
    use super::super::surplus::kit::*;
    use super::*;
    use crate::controls::Controls;
    use crate::event::Management;

    fn cash(k: &Kit, on: Date) -> Vec<Flag> {
        k.list(on)
            .into_iter()
            .filter(|f| f.code == FlagCode::CashWithoutReceipt)
            .collect()
    }

    #[test]
    fn cash_without_a_receipt_is_flagged_after_thirty_days() {
        let mut k = Kit::default();
        k.open("b", Management::DirectPayment);
        let lines = [("cash", money(1000, 0)), ("equipment", money(1000, 0))];
        k.plan("b", &lines, Money::ZERO);
        k.fund("b", date(2026, 4, 1), money(2000, 0));
        let may1 = date(2026, 5, 1);
        let atm = k.ok(
            "b",
            may1,
            EventKind::CardTransaction {
                card_ref: "card".into(),
                merchant_ref: "atm".into(),
                mcc: 6011,
                amount: money(20, 0),
                channel: CardChannel::Atm,
            },
        );
        let bought = k.buy("b", may1, money(15, 0), "cash", "");
        // Near misses: a receipt, another category.
        k.buy("b", may1, money(15, 0), "cash", "till-123");
        k.buy("b", may1, money(15, 0), "equipment", "");
        // 2026-05-31 is 30 days on; 2026-06-01 is 31.
        assert!(cash(&k, date(2026, 5, 31)).is_empty());
        let f = cash(&k, date(2026, 6, 1));
        let ids: Vec<&str> = f.iter().map(|f| f.id.as_str()).collect();
        let (a, p) = (
            format!("CASH_WITHOUT_RECEIPT:b:{atm}"),
            format!("CASH_WITHOUT_RECEIPT:b:{bought}"),
        );
        assert_eq!(ids, [a.as_str(), p.as_str()]);
        assert_eq!(f[0].sequences, [atm]);
        assert_eq!(f[0].severity, Severity::Medium);
        assert!(
            f[0].explanation
                .starts_with("an ATM withdrawal of 20.00 on 2026-05-01"),
            "{}",
            f[0].explanation
        );
        assert!(f[0].explanation.contains("31 days later"));
        // Refunded in full: no longer flagged.
        let (original_sequence, amount) = (bought, money(15, 0));
        k.ok(
            "b",
            may1,
            EventKind::Refund {
                original_sequence,
                amount,
            },
        );
        assert_eq!(cash(&k, date(2026, 6, 1)).len(), 1);
        // A commissioner allowing 45 days.
        let controls = Controls {
            cash_receipt_days: 45,
            ..Controls::default()
        };
        k.ok("", may1, EventKind::ControlsConfigured(controls));
        assert!(cash(&k, date(2026, 6, 15)).is_empty());
        assert_eq!(cash(&k, date(2026, 6, 16))[0].thresholds[0].1, "45");
    }

    #[test]
    fn a_snapshot_names_the_kind_of_cash_by_its_tag() {
        let read = |tag: u8| {
            let mut out = Vec::new();
            let mut w = SnapshotWriter::new(&mut out);
            w.len(1);
            w.str("b");
            w.u64(12);
            w.date(date(2026, 5, 1));
            w.money(money(20, 0));
            w.u8(tag);
            SnapshotReader::read_all(&out, CashWithoutReceipt::read)
        };
        let atm = read(0).unwrap();
        assert_eq!(atm.cash[&("b".to_string(), 12)].what, CashKind::Atm);
        assert_eq!(
            read(2).unwrap().cash.values().next().unwrap().what,
            CashKind::Payment
        );
        assert!(matches!(read(3), Err(SnapshotError::BadValue { .. })));
    }
}
