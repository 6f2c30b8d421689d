//! REVIEW_OVERDUE: a budget whose care review or financial audit is late.
//!
//! - **Care review** (`ReviewRecorded` of kind CARE_REVIEW): the first is
//!   due within `first_review_weeks` (default 12) of the day the money
//!   started — the budget's first `Disbursement`, or for a notional budget
//!   (nothing is disbursed) its first spending — and each later one within
//!   `review_interval_months` (default 12) of the last. Council practice
//!   reviews a new direct payment at 6–12 weeks (Wigan and Gateshead: 12
//!   weeks) and then at least every 12 months (the Care and Support (Direct
//!   Payments) Regulations 2014 reg 7 set the same outer limit; a
//!   Nottinghamshire direct payment left unreviewed for 4 years ended in a
//!   £53,145.25 repayment demand and an ombudsman finding against the
//!   council).
//! - **Financial audit** (`ReviewRecorded` of kind FINANCIAL_AUDIT),
//!   separately: within `review_interval_months` of the money starting, then
//!   of the last audit (Wigan and Worcestershire audit annually).
//!
//! (shared/research/controls-and-reporting.md §2 and "Flag rules".) A review
//! dated before the money started does not count as the first one.
//!
//! Time-based: the rule keeps, per budget, when the money started and the
//! latest review of each kind, and derives at the as-of date. A review is
//! late the day after it was due. The key is the missed due date and the
//! kind (`care-2026-06-24`, `audit-2027-04-01`), so a recorded review (a new
//! due date) clears the flag and a later miss is a new flag. Severity LOW,
//! MEDIUM once more than 3 months late (our choice: a quarter's slippage is
//! what the quarterly returns would show). Stopped budgets, and budgets
//! whose holder's death is recorded, are not flagged: nothing is reviewed
//! any more.

use super::{AsOf, Context, Flag, FlagCode, Rule, Severity};
use crate::event::{Date, EventKind, Management, ReviewKind};
use crate::ledger::Budget;
use crate::projections::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::projections::Committed;
use std::collections::BTreeMap;

/// The latest date representable (`Date` years run to 2199).
const LAST_DAY: Date = Date {
    year: 2199,
    month: 12,
    day: 31,
};

/// Months late after which the flag is MEDIUM (our choice).
const MEDIUM_AFTER_MONTHS: u32 = 3;

/// `d` plus `n` days (at most `LAST_DAY`).
fn plus_days(d: Date, n: i64) -> Date {
    let days = d.days().saturating_add(n);
    if days >= LAST_DAY.days() {
        LAST_DAY
    } else {
        Date::from_days(days)
    }
}

/// `d` plus `n` calendar months, the day clamped to the month's last
/// (2026-01-31 + 1 month = 2026-02-28); at most `LAST_DAY`.
fn plus_months(d: Date, n: u32) -> Date {
    let months = i64::from(d.year) * 12 + i64::from(d.month) - 1 + i64::from(n);
    let (year, month) = (months / 12, (months % 12 + 1) as u8);
    if year > i64::from(LAST_DAY.year) {
        return LAST_DAY;
    }
    let year = year as u16;
    let first = Date {
        year,
        month,
        day: 1,
    };
    let next = if month == 12 {
        Date {
            year: year + 1,
            month: 1,
            day: 1,
        }
    } else {
        Date {
            year,
            month: month + 1,
            day: 1,
        }
    };
    let last = (next.days() - first.days()) as u8;
    Date {
        year,
        month,
        day: d.day.min(last),
    }
}

/// A dated entry: its date and sequence.
type Dated = (Date, u64);

/// What the rule knows of one budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Reviews {
    /// The first disbursement (or a notional budget's first spending).
    money_from: Option<Dated>,
    /// The care review with the latest date.
    care: Option<Dated>,
    /// The financial audit with the latest date.
    audit: Option<Dated>,
}

/// Per budget, when the money started and the latest review of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewOverdue {
    budgets: BTreeMap<String, Reviews>,
}

/// The later of `seen` and `(date, sequence)` by date (the first recorded
/// wins a tie).
fn latest(seen: &mut Option<Dated>, date: Date, sequence: u64) {
    if seen.is_none_or(|(d, _)| date > d) {
        *seen = Some((date, sequence));
    }
}

impl Rule for ReviewOverdue {
    fn apply(&mut self, c: &Committed<'_>, cx: &Context<'_>, _out: &mut Vec<Flag>) {
        let (Some(b), true) = (cx.budget, c.applied()) else {
            return;
        };
        let sequence = c.head.sequence;
        let on = Date::from_unix_micros(c.event.occurred_at_micros);
        let notional = b.management == Management::Notional;
        match &c.event.kind {
            EventKind::Disbursement { .. } => {}
            EventKind::Payment { .. }
            | EventKind::Purchase { .. }
            | EventKind::CardTransaction { .. }
                if notional => {}
            EventKind::ReviewRecorded { date, kind, .. } => {
                let r = self.budgets.entry(b.id.clone()).or_default();
                match kind {
                    ReviewKind::CareReview => latest(&mut r.care, *date, sequence),
                    ReviewKind::FinancialAudit => latest(&mut r.audit, *date, sequence),
                }
                return;
            }
            _ => return,
        }
        let r = self.budgets.entry(b.id.clone()).or_default();
        if r.money_from.is_none() {
            r.money_from = Some((on, sequence));
        }
    }

    fn as_of(&self, at: &AsOf<'_>, out: &mut Vec<Flag>) {
        for (id, r) in &self.budgets {
            let Some(b) = at.balances.budget(id) else {
                continue;
            };
            let Some(money) = r.money_from else {
                continue;
            };
            if b.stopped || b.died_on.is_some() {
                continue;
            }
            out.extend(care(b, r, money, at));
            out.extend(audit(b, r, money, at));
        }
    }
}

/// The care-review flag, if one is late.
fn care(b: &Budget, r: &Reviews, money: Dated, at: &AsOf<'_>) -> Option<Flag> {
    let controls = at.controls(&b.commissioner_id);
    let since = r.care.filter(|(d, _)| *d >= money.0);
    let (due, threshold, why) = match since {
        None => {
            let weeks = controls.first_review_weeks;
            let due = plus_days(money.0, 7 * i64::from(weeks));
            let why = format!(
                "no care review is recorded since the money started on {} (#{}): the first was due within {weeks} weeks, by {due}",
                money.0, money.1
            );
            (due, ("first_review_weeks", weeks), why)
        }
        Some((last, s)) => {
            let months = controls.review_interval_months;
            let due = plus_months(last, months);
            let why = format!(
                "the last care review was on {last} (#{s}): the next was due within {months} months, by {due}"
            );
            (due, ("review_interval_months", months), why)
        }
    };
    let sequences = match since {
        Some((_, s)) => vec![money.1, s],
        None => vec![money.1],
    };
    late(b, "care", due, threshold, why, sequences, at)
}

/// The financial-audit flag, if one is late.
fn audit(b: &Budget, r: &Reviews, money: Dated, at: &AsOf<'_>) -> Option<Flag> {
    let months = at.controls(&b.commissioner_id).review_interval_months;
    let since = r.audit.filter(|(d, _)| *d >= money.0);
    let (due, why, sequences) = match since {
        None => {
            let due = plus_months(money.0, months);
            let why = format!(
                "no financial audit is recorded since the money started on {} (#{}): the first was due within {months} months, by {due}",
                money.0, money.1
            );
            (due, why, vec![money.1])
        }
        Some((last, s)) => {
            let due = plus_months(last, months);
            let why = format!(
                "the last financial audit was on {last} (#{s}): the next was due within {months} months, by {due}"
            );
            (due, why, vec![money.1, s])
        }
    };
    late(
        b,
        "audit",
        due,
        ("review_interval_months", months),
        why,
        sequences,
        at,
    )
}

/// The flag for a review of `kind` due on `due`, if `at.on` is after it.
fn late(
    b: &Budget,
    kind: &str,
    due: Date,
    threshold: (&'static str, u32),
    why: String,
    mut sequences: Vec<u64>,
    at: &AsOf<'_>,
) -> Option<Flag> {
    if at.on <= due {
        return None;
    }
    let severity = if at.on > plus_months(due, MEDIUM_AFTER_MONTHS) {
        Severity::Medium
    } else {
        Severity::Low
    };
    let mut f = Flag::new(
        FlagCode::ReviewOverdue,
        severity,
        b,
        &format!("{kind}-{due}"),
    );
    sequences.sort_unstable();
    sequences.dedup();
    f.sequences = sequences;
    f.thresholds = vec![(threshold.0, threshold.1.to_string())];
    let days = at.on.days() - due.days();
    let what = if kind == "care" {
        "care review"
    } else {
        "financial audit"
    };
    f.explanation = format!(
        "{why}; {days} days late as of {}: record the {what} (ReviewRecorded) once it has taken place",
        at.on
    );
    Some(f)
}

/// Snapshot: the map of budget id → when the money started, the latest
/// care review and the latest financial audit, each an optional (date,
/// sequence).
impl ReviewOverdue {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        let ReviewOverdue { budgets } = self;
        let dated = |w: &mut SnapshotWriter<'_>, (d, sequence): Dated| {
            w.date(d);
            w.u64(sequence);
        };
        w.seq(budgets, |w, (id, reviews)| {
            let Reviews {
                money_from,
                care,
                audit,
            } = reviews;
            w.str(id);
            w.option(*money_from, dated);
            w.option(*care, dated);
            w.option(*audit, dated);
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<ReviewOverdue, SnapshotError> {
        let dated = |r: &mut SnapshotReader<'_>| -> Result<Dated, SnapshotError> {
            Ok((r.date()?, r.u64()?))
        };
        let budgets = r.map(|r| {
            let id = r.string()?;
            let reviews = Reviews {
                money_from: r.option(dated)?,
                care: r.option(dated)?,
                audit: r.option(dated)?,
            };
            Ok((id, reviews))
        })?;
        Ok(ReviewOverdue { budgets })
    }
}

#[cfg(test)]
mod tests {
    use super::super::surplus::kit::*;
    use super::*;
    use crate::controls::Controls;
    use crate::money::Money;

    fn overdue(k: &Kit, on: Date) -> Vec<(String, Severity)> {
        k.list(on)
            .into_iter()
            .filter(|f| f.code == FlagCode::ReviewOverdue)
            .map(|f| (f.id, f.severity))
            .collect()
    }

    fn reviewed(k: &mut Kit, b: &str, on: Date, kind: ReviewKind) -> u64 {
        let outcome = "fine".to_string();
        k.ok(
            b,
            on,
            EventKind::ReviewRecorded {
                date: on,
                kind,
                outcome,
            },
        )
    }

    #[test]
    fn months_clamp_to_the_month_end() {
        assert_eq!(plus_months(date(2026, 1, 31), 1), date(2026, 2, 28));
        assert_eq!(plus_months(date(2027, 12, 31), 2), date(2028, 2, 29));
        assert_eq!(plus_months(date(2026, 4, 1), 12), date(2027, 4, 1));
        assert_eq!(plus_months(date(2199, 6, 1), 12), LAST_DAY);
        assert_eq!(plus_days(date(2199, 12, 30), 7), LAST_DAY);
    }

    #[test]
    fn the_first_care_review_is_due_twelve_weeks_after_the_first_disbursement() {
        let mut k = Kit::default();
        k.open("b", Management::DirectPayment);
        // Nothing disbursed, nothing due.
        assert!(overdue(&k, date(2028, 1, 1)).is_empty());
        let d = k.fund("b", date(2026, 4, 1), money(1000, 0));
        k.fund("b", date(2026, 5, 1), money(1000, 0));
        // Due 2026-04-01 + 84 days = 2026-06-24.
        assert!(overdue(&k, date(2026, 6, 24)).is_empty());
        let late = overdue(&k, date(2026, 6, 25));
        assert_eq!(
            late,
            [("REVIEW_OVERDUE:b:care-2026-06-24".into(), Severity::Low)]
        );
        let f = k
            .list(date(2026, 6, 25))
            .into_iter()
            .find(|f| f.code == FlagCode::ReviewOverdue)
            .unwrap();
        assert_eq!(f.sequences, [d]);
        assert_eq!(f.thresholds, [("first_review_weeks", "12".to_string())]);
        assert!(f.explanation.contains("1 days late"), "{}", f.explanation);
        // More than 3 months late: MEDIUM.
        let at = overdue(&k, date(2026, 9, 24));
        assert_eq!(at[0].1, Severity::Low);
        let at = overdue(&k, date(2026, 9, 25));
        assert_eq!(at[0].1, Severity::Medium);
        // And the audit, a year after the money started.
        assert_eq!(overdue(&k, date(2027, 4, 1)).len(), 1);
        let both = overdue(&k, date(2027, 4, 2));
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].0, "REVIEW_OVERDUE:b:audit-2027-04-01");
        // A review clears the care flag; the next is due a year after it.
        let r = reviewed(&mut k, "b", date(2026, 6, 20), ReviewKind::CareReview);
        assert!(overdue(&k, date(2026, 6, 25)).is_empty());
        assert!(overdue(&k, date(2027, 3, 20)).is_empty());
        let late = overdue(&k, date(2027, 6, 21));
        assert_eq!(late.len(), 2);
        assert_eq!(late[1].0, "REVIEW_OVERDUE:b:care-2027-06-20");
        let f = k
            .list(date(2027, 6, 21))
            .into_iter()
            .find(|f| f.id.ends_with("care-2027-06-20"))
            .unwrap();
        assert_eq!(f.sequences, [d, r]);
        // An audit clears the audit flag only.
        reviewed(&mut k, "b", date(2027, 3, 30), ReviewKind::FinancialAudit);
        let late = overdue(&k, date(2027, 6, 21));
        assert_eq!(
            late,
            [("REVIEW_OVERDUE:b:care-2027-06-20".into(), Severity::Low)]
        );
        // A stopped budget has none.
        let reason = "ended".to_string();
        k.ok("b", date(2027, 6, 21), EventKind::BudgetStopped { reason });
        assert!(overdue(&k, date(2028, 6, 21)).is_empty());
    }

    #[test]
    fn a_review_before_the_money_started_is_not_the_first() {
        let mut k = Kit::default();
        k.open("b", Management::ThirdParty);
        reviewed(&mut k, "b", date(2026, 3, 1), ReviewKind::CareReview);
        k.fund("b", date(2026, 4, 1), money(10, 0));
        assert_eq!(overdue(&k, date(2026, 6, 25)).len(), 1);
    }

    #[test]
    fn a_notional_budget_starts_at_its_first_spending() {
        let mut k = Kit::default();
        k.open("n", Management::Notional);
        k.plan("n", &[("therapy", money(5000, 0))], Money::ZERO);
        let basis = crate::event::AllocationBasis::NeedsBased;
        let amount = money(5000, 0);
        k.ok(
            "n",
            date(2026, 4, 1),
            EventKind::Allocation { amount, basis },
        );
        assert!(overdue(&k, date(2027, 1, 1)).is_empty());
        let s = k.buy("n", date(2026, 5, 1), money(10, 0), "therapy", "r");
        k.buy("n", date(2026, 6, 1), money(10, 0), "therapy", "r2");
        // 2026-05-01 + 84 days = 2026-07-24.
        assert!(overdue(&k, date(2026, 7, 24)).is_empty());
        let f: Vec<Flag> = k
            .list(date(2026, 7, 25))
            .into_iter()
            .filter(|f| f.code == FlagCode::ReviewOverdue)
            .collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].id, "REVIEW_OVERDUE:n:care-2026-07-24");
        assert_eq!(f[0].sequences, [s]);
    }

    #[test]
    fn controls_set_the_first_review_and_the_interval() {
        let mut k = Kit::default();
        k.open("b", Management::DirectPayment);
        k.fund("b", date(2026, 4, 1), money(10, 0));
        let controls = Controls {
            first_review_weeks: 6,
            review_interval_months: 6,
            ..Controls::default()
        };
        k.ok(
            "",
            date(2026, 4, 1),
            EventKind::ControlsConfigured(controls),
        );
        // 2026-04-01 + 42 days = 2026-05-13; the audit by 2026-10-01.
        assert!(overdue(&k, date(2026, 5, 13)).is_empty());
        assert_eq!(
            overdue(&k, date(2026, 10, 2)),
            [
                ("REVIEW_OVERDUE:b:audit-2026-10-01".into(), Severity::Low),
                ("REVIEW_OVERDUE:b:care-2026-05-13".into(), Severity::Medium),
            ]
        );
    }
}
