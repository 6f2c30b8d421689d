//! SPIKE: a week's spending on a budget far above its usual — more than
//! `spike_multiple` times its weekly average over the `spike_weeks` weeks
//! before. A sudden jump is how misuse and misappropriation often show
//! (360 Assurance's PHB risk list: purposes outside the plan, cash covered
//! by false receipts; family financial abuse is about half of social-care
//! fraud cases); it may also be a one-off the plan allows (equipment, a
//! respite break), so a person looks. Defaults 3 times and 12 weeks: our
//! choice (no source found: shared/research/controls-and-reporting.md, "Not
//! supported by the evidence found").
//!
//! Spending is every Payment, Purchase and approved CardTransaction (a
//! declined one is a recorded refusal and moves nothing), counted in the
//! ISO week (Monday to Sunday, UTC) of its `occurred_at` date, gross of
//! later refunds. The average is over exactly `spike_weeks` weeks before the
//! spending's week, weeks with no spending counting as zero; the comparison
//! is exact (the week's total times `spike_weeks` against the multiple
//! times the trailing total). A budget is checked only once its spending
//! history is at least `spike_weeks` weeks old — its first spending in a
//! week at least `spike_weeks` weeks before — since otherwise every first
//! week would be a spike (an average of zero). After `spike_weeks` weeks with
//! no spending at all, any spending is a spike.
//!
//! Raised at most once per budget and week, on the spending that first
//! takes the week over the line (key: the week's Monday, e.g. `2026-11-30`);
//! `sequences` lists the week's spending recorded so far, oldest first. A
//! spending recorded late for an earlier week counts in that week.

use super::{Context, Flag, FlagCode, Rule, Severity};
use crate::event::{Date, EventKind};
use crate::money::Money;
use crate::projections::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::projections::Committed;
use rust_decimal::{Decimal, RoundingStrategy};
use std::collections::{BTreeMap, BTreeSet};

/// One week's spending on one budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Week {
    total: Money,
    sequences: Vec<u64>,
}

/// One budget's spending by week (Monday, days since 1970-01-01), and the
/// weeks already flagged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Spending {
    weeks: BTreeMap<i64, Week>,
    flagged: BTreeSet<i64>,
}

/// Every budget's weekly spending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spike {
    budgets: BTreeMap<String, Spending>,
}

impl Rule for Spike {
    fn apply(&mut self, c: &Committed<'_>, cx: &Context<'_>, out: &mut Vec<Flag>) {
        let (Some(b), true) = (cx.budget, c.applied()) else {
            return;
        };
        let amount = match &c.event.kind {
            EventKind::Payment { amount, .. }
            | EventKind::Purchase { amount, .. }
            | EventKind::CardTransaction { amount, .. } => *amount,
            _ => return,
        };
        let sequence = c.head.sequence;
        let week = Date::from_unix_micros(c.event.occurred_at_micros).week_start_days();
        let spending = self.budgets.entry(b.id.clone()).or_default();
        let this = spending.weeks.entry(week).or_default();
        // Unreachable overflow (amounts are at most £1bn each): keep the total.
        this.total = this.total.checked_add(amount).unwrap_or(this.total);
        this.sequences.push(sequence);
        let total = this.total;
        let n = cx.controls.spike_weeks;
        let multiple = cx.controls.spike_multiple;
        let window = week - 7 * i64::from(n);
        let old_enough = spending.weeks.keys().next().is_some_and(|&w| w <= window);
        if spending.flagged.contains(&week) || !old_enough {
            return;
        }
        let trailing: Decimal = spending
            .weeks
            .range(window..week)
            .map(|(_, w)| w.total.as_decimal())
            .sum();
        let line = multiple * trailing;
        if total.as_decimal() * Decimal::from(n) <= line {
            return;
        }
        spending.flagged.insert(week);
        let average = (trailing / Decimal::from(n))
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        let this = &spending.weeks[&week];
        let monday = Date::from_days(week);
        let list: Vec<String> = this.sequences.iter().map(|s| format!("#{s}")).collect();
        let mut f = Flag::new(FlagCode::Spike, Severity::Medium, b, &monday.to_string());
        f.sequences = this.sequences.clone();
        f.thresholds = vec![
            ("spike_multiple", multiple.normalize().to_string()),
            ("spike_weeks", n.to_string()),
        ];
        f.explanation = format!(
            "spending of {total} in the week of {monday} ({}) is more than {} times the weekly average of {average:.2} over the {n} weeks from {} to {} ({trailing:.2} in all): check what it was for",
            list.join(", "),
            multiple.normalize(),
            Date::from_days(window),
            Date::from_days(week - 1),
        );
        out.push(f);
    }
}

/// Snapshot: the map of budget id → its weeks (a map of the week's Monday,
/// as a date, → its total and its spendings' sequences), then the weeks
/// flagged (a set of Mondays). Decoding checks every week is named by its
/// Monday, as the fold keys them (its trailing weeks are a range of keys).
impl Spike {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        let Spike { budgets } = self;
        w.seq(budgets, |w, (id, spending)| {
            let Spending { weeks, flagged } = spending;
            w.str(id);
            w.seq(weeks, |w, (monday, week)| {
                let Week { total, sequences } = week;
                w.date(Date::from_days(*monday));
                w.money(*total);
                w.seq(sequences, |w, s| w.u64(*s));
            });
            w.seq(flagged, |w, monday| w.date(Date::from_days(*monday)));
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<Spike, SnapshotError> {
        fn monday(r: &mut SnapshotReader<'_>) -> Result<i64, SnapshotError> {
            let at = r.position();
            let d = r.date()?;
            if d.week_start_days() != d.days() {
                return Err(SnapshotReader::bad(
                    at,
                    "a week that does not start on a Monday",
                ));
            }
            Ok(d.days())
        }
        let budgets = r.map(|r| {
            let id = r.string()?;
            let weeks = r.map(|r| {
                let monday = monday(r)?;
                let week = Week {
                    total: r.money()?,
                    sequences: r.seq(SnapshotReader::u64)?,
                };
                Ok((monday, week))
            })?;
            let flagged = r.map(|r| Ok((monday(r)?, ())))?.into_keys().collect();
            Ok((id, Spending { weeks, flagged }))
        })?;
        Ok(Spike { budgets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One budget with one week, named by `day`, flagged too.
    fn snapshot(day: Date) -> Result<Spike, SnapshotError> {
        let mut out = Vec::new();
        let mut w = SnapshotWriter::new(&mut out);
        w.len(1);
        w.str("b");
        w.len(1);
        w.date(day);
        w.money(Money::from_pence(500));
        w.seq([7u64, 9], |w, s| w.u64(s));
        w.len(1);
        w.date(day);
        SnapshotReader::read_all(&out, Spike::read)
    }

    #[test]
    fn weeks_are_named_by_their_monday() {
        let monday = Date {
            year: 2026,
            month: 11,
            day: 30,
        };
        let spike = snapshot(monday).unwrap();
        let spending = &spike.budgets["b"];
        assert_eq!(spending.weeks[&monday.days()].sequences, [7, 9]);
        assert!(spending.flagged.contains(&monday.days()));
        let tuesday = Date {
            day: 1,
            month: 12,
            ..monday
        };
        assert!(matches!(
            snapshot(tuesday),
            Err(SnapshotError::BadValue { .. })
        ));
    }
}
