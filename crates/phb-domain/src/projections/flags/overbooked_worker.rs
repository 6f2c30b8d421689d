//! OVERBOOKED_WORKER: one worker paid for more hours than a person can work
//! — more than `worker_hours_per_week` hours in an ISO week (Monday to
//! Sunday) or more than `worker_hours_per_day` hours in a day — summed across
//! every budget that pays them (360 Assurance's PHB risk list: care claimed
//! but not given, false timesheets; the NFI's payroll matches find one person
//! on two full-time payrolls). Defaults: 16 hours a day, from US
//! fiscal/employer agents, which never pay a worker for more than 16 hours in
//! a 24-hour period (financialmanagementservices.org); 60 hours a week is our
//! choice (no source found). Shared/research/controls-and-reporting.md, §3,
//! §5 and "Flag rules".
//!
//! Hours come from payments under agreements whose unit is HOUR: the
//! payment's units over its service period, spread evenly over the period's
//! days and summed as exact fractions (40 hours over Monday to Sunday is
//! 40/7 hours a day, and exactly 40 in the week). Days are calendar days, the
//! nearest the ledger's service periods (dates) come to "any 24 hours". Only
//! payments to a person count: payee kind PERSONAL_ASSISTANT, or an
//! agreement with a payee of sector INDIVIDUAL (a self-employed assistant
//! invoicing as a provider); an agency's payee reference stands for many
//! workers, so its hours are not one person's. Payments by the day, week or
//! item say nothing about hours and are not counted.
//!
//! Raised once per offending payment, on the payment itself (key: its
//! sequence), when a week or day its service period touches is over a
//! limit with it: `sequences` lists the other payments (on any budget) that
//! make up the excess, then it. The limits are those of the paying budget's
//! commissioner. A refund does not take hours back: the flag was raised when
//! the payment was recorded.

use super::{Context, Flag, FlagCode, Rule, Severity};
use crate::event::{Date, EventKind, PayeeKind, Sector, Unit};
use crate::money::MAX_AMOUNT_POUNDS;
use crate::projections::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::projections::Committed;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};

/// One hourly payment: who paid it, its service days and its hours.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shift {
    budget: String,
    /// First and last day of the service (days since 1970-01-01).
    from: i64,
    to: i64,
    /// Hours, in hundredths.
    hundredths: i128,
}

impl Shift {
    fn days(&self) -> i128 {
        i128::from(self.to - self.from + 1)
    }

    /// Its hours on days `from..=to`, in hundredths, as a fraction
    /// (numerator, denominator), or `None` if it has no day there.
    fn hours_in(&self, from: i64, to: i64) -> Option<(i128, i128)> {
        let days = self.to.min(to) - self.from.max(from) + 1;
        (days > 0).then(|| (self.hundredths * i128::from(days), self.days()))
    }
}

/// One worker's hourly payments, by (first day, sequence).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Worker {
    /// The longest service period so far, in days less one: every payment
    /// that reaches a day `d` starts on or after `d - longest`.
    longest: i64,
    shifts: BTreeMap<(i64, u64), Shift>,
}

/// Every worker's hourly payments, by payee reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverbookedWorker {
    workers: BTreeMap<String, Worker>,
}

/// The Monday of `day`'s ISO week (days since 1970-01-01, a Thursday).
fn week_start(day: i64) -> i64 {
    day - (day + 3).rem_euclid(7)
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

/// The exact sum of the fractions `terms` (numerator, positive
/// denominator), reduced; `None` if it overflows (only with very many
/// payments of coprime lengths on one day).
fn sum_exact(terms: &[(i128, i128)]) -> Option<(i128, i128)> {
    let (mut n, mut d) = (0i128, 1i128);
    for &(tn, td) in terms {
        let g = gcd(tn, td).max(1);
        let (tn, td) = (tn / g, td / g);
        let lcm = (d / gcd(d, td)).checked_mul(td)?;
        n = n
            .checked_mul(lcm / d)?
            .checked_add(tn.checked_mul(lcm / td)?)?;
        d = lcm;
        let g = gcd(n, d).max(1);
        (n, d) = (n / g, d / g);
    }
    Some((n, d))
}

/// Whether the hours `terms` (fractions of hundredths) add up to more than
/// `limit` hours, and their sum in hours to two places (for the
/// explanation).
fn over(terms: &[(i128, i128)], limit: u32) -> (bool, Decimal) {
    let limit = i128::from(limit) * 100;
    if let Some((n, d)) = sum_exact(terms) {
        let (q, r) = (n.div_euclid(d), n.rem_euclid(d));
        let rounded = q + i128::from(r >= d - r);
        if let Ok(hours) = Decimal::try_from_i128_with_scale(rounded, 2) {
            return (q > limit || (q == limit && r > 0), hours);
        }
    }
    // Overflow: 28 significant digits instead.
    let mut sum = Decimal::ZERO;
    for &(n, d) in terms {
        let term = Decimal::try_from_i128_with_scale(n, 2)
            .ok()
            .and_then(|n| n.checked_div(Decimal::from_i128_with_scale(d, 0)));
        sum = term
            .and_then(|t| sum.checked_add(t))
            .unwrap_or(Decimal::MAX);
    }
    let limit = Decimal::from_i128_with_scale(limit, 2);
    (sum > limit, sum.round_dp(2))
}

/// The first offending day or week: its first day and the hours.
type Excess = Option<(i64, Decimal)>;

impl Rule for OverbookedWorker {
    fn apply(&mut self, c: &Committed<'_>, cx: &Context<'_>, out: &mut Vec<Flag>) {
        let (Some(b), true) = (cx.budget, c.applied()) else {
            return;
        };
        let EventKind::Payment {
            payee_kind,
            payee_ref,
            service: Some(claim),
            ..
        } = &c.event.kind
        else {
            return;
        };
        let Some(agreement) = b.agreements.get(&claim.agreement_id) else {
            return;
        };
        let a_person = *payee_kind == PayeeKind::PersonalAssistant
            || agreement.payee_sector == Sector::Individual;
        if agreement.unit != Unit::Hour || !a_person {
            return;
        }
        let sequence = c.head.sequence;
        let mut hundredths = claim.units.as_decimal();
        hundredths.rescale(2);
        let me = Shift {
            budget: b.id.clone(),
            from: claim.from.days(),
            to: claim.to.days(),
            hundredths: hundredths.mantissa(),
        };
        let worker = self.workers.entry(payee_ref.clone()).or_default();
        let (first_week, last_week) = (week_start(me.from), week_start(me.to));
        // Every payment reaching a week this one touches, then this one.
        let mut all: Vec<(u64, &Shift)> = worker
            .shifts
            .range((first_week - worker.longest, 0)..=(last_week + 6, u64::MAX))
            .filter(|(_, s)| s.to >= first_week)
            .map(|(&(_, seq), s)| (seq, s))
            .collect();
        all.push((sequence, &me));
        let (per_week, per_day) = (
            cx.controls.worker_hours_per_week,
            cx.controls.worker_hours_per_day,
        );
        // Where some payment starts or stops: between two of these, every
        // day (and every whole week) has the same payments.
        let edges: BTreeSet<i64> = all.iter().flat_map(|(_, s)| [s.from, s.to + 1]).collect();
        let mut offenders = BTreeSet::new();
        let mut check = |first: i64, last: i64, limit: u32| -> Excess {
            let on: Vec<(u64, (i128, i128))> = all
                .iter()
                .filter_map(|(seq, s)| s.hours_in(first, last).map(|h| (*seq, h)))
                .collect();
            let terms: Vec<(i128, i128)> = on.iter().map(|(_, h)| *h).collect();
            let (is_over, hours) = over(&terms, limit);
            if !is_over {
                return None;
            }
            offenders.extend(on.iter().map(|(seq, _)| *seq).filter(|s| *s != sequence));
            Some((first, hours))
        };
        // Days: each run of days between edges, inside this payment.
        let mut day_excess: Excess = None;
        let inside = edges.iter().copied().filter(|&d| me.from < d && d <= me.to);
        let days = std::iter::once(me.from).chain(inside);
        for day in days {
            let e = check(day, day, per_day);
            day_excess = day_excess.or(e);
        }
        // Weeks: those with an edge, and the first of each run of weeks
        // without one (the rest of the run has the same hours).
        let weeks: BTreeSet<i64> = std::iter::once(first_week)
            .chain(
                edges
                    .iter()
                    .flat_map(|&d| [week_start(d), week_start(d) + 7]),
            )
            .filter(|w| (first_week..=last_week).contains(w))
            .collect();
        let mut week_excess: Excess = None;
        for week in weeks {
            let e = check(week, week + 6, per_week);
            week_excess = week_excess.or(e);
        }
        let found = week_excess.is_some() || day_excess.is_some();
        let others: Vec<String> = offenders
            .iter()
            .map(|seq| {
                let s = all.iter().find(|(q, _)| q == seq).map(|(_, s)| s);
                match s {
                    Some(s) if s.budget != b.id => format!("#{seq} (budget {})", s.budget),
                    _ => format!("#{seq}"),
                }
            })
            .collect();
        let longest = me.to - me.from;
        worker.longest = worker.longest.max(longest);
        worker.shifts.insert((me.from, sequence), me);
        if !found {
            return;
        }
        let mut seen = Vec::new();
        if let Some((week, hours)) = week_excess {
            seen.push(format!(
                "{hours} hours in the week of {} (more than {per_week} a week)",
                Date::from_days(week)
            ));
        }
        if let Some((day, hours)) = day_excess {
            seen.push(format!(
                "{hours} hours on {} (more than {per_day} a day)",
                Date::from_days(day)
            ));
        }
        let with = if others.is_empty() {
            "on its own".to_string()
        } else {
            format!("with {}", others.join(", "))
        };
        let mut f = Flag::new(
            FlagCode::OverbookedWorker,
            Severity::High,
            b,
            &sequence.to_string(),
        );
        f.sequences = offenders.into_iter().collect();
        f.sequences.push(sequence);
        f.thresholds = vec![
            ("worker_hours_per_week", per_week.to_string()),
            ("worker_hours_per_day", per_day.to_string()),
        ];
        f.explanation = format!(
            "{payee_ref} is paid at #{sequence} for {} hours from {} to {}; {with} that makes {}: more than one person can work, so check the timesheets and who did the work",
            claim.units,
            claim.from,
            claim.to,
            seen.join(" and ")
        );
        out.push(f);
    }
}

/// Snapshot: the map of payee → its hourly payments in (first day,
/// sequence) order, each its sequence, budget id, first and last days (as
/// dates) and hours in hundredths (`u64`). `longest` is not written: it is
/// the longest of the payments, as the fold keeps it. Decoding checks what
/// the sums divide and multiply by: a period does not end before it starts,
/// and the hours are positive and at most what an amount can be.
impl OverbookedWorker {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        let OverbookedWorker { workers } = self;
        w.seq(workers, |w, (payee, worker)| {
            let Worker { longest: _, shifts } = worker;
            w.str(payee);
            w.seq(shifts, |w, ((_, sequence), shift)| {
                let Shift {
                    budget,
                    from,
                    to,
                    hundredths,
                } = shift;
                w.u64(*sequence);
                w.str(budget);
                w.date(Date::from_days(*from));
                w.date(Date::from_days(*to));
                // Hours are a payment's units (at most an amount's
                // pence); a value out of range writes 0, which decoding
                // refuses, so the caller folds the log instead.
                w.u64(u64::try_from(*hundredths).unwrap_or(0));
            });
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<OverbookedWorker, SnapshotError> {
        let most = u64::try_from(MAX_AMOUNT_POUNDS).unwrap_or(0) * 100;
        let workers = r.map(|r| {
            let payee = r.string()?;
            let shifts = r.map(|r| {
                let at = r.position();
                let sequence = r.u64()?;
                let budget = r.string()?;
                let (from, to) = (r.date()?.days(), r.date()?.days());
                let hundredths = r.u64()?;
                if to < from || hundredths == 0 || hundredths > most {
                    return Err(SnapshotReader::bad(
                        at,
                        "an hourly payment ends before it starts or has no or too many hours",
                    ));
                }
                let shift = Shift {
                    budget,
                    from,
                    to,
                    hundredths: i128::from(hundredths),
                };
                Ok(((from, sequence), shift))
            })?;
            let longest = shifts.values().map(|s| s.to - s.from).fold(0, i64::max);
            Ok((payee, Worker { longest, shifts }))
        })?;
        Ok(OverbookedWorker { workers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday() {
        let d = |y, m, d| {
            Date {
                year: y,
                month: m,
                day: d,
            }
            .days()
        };
        assert_eq!(week_start(d(2026, 11, 30)), d(2026, 11, 30));
        assert_eq!(week_start(d(2026, 12, 6)), d(2026, 11, 30));
        assert_eq!(week_start(d(2026, 12, 7)), d(2026, 12, 7));
    }

    #[test]
    fn hours_add_up_exactly() {
        // 40 hours over 7 days plus 20 over 5: exactly 60 in the week.
        let a = Shift {
            budget: "a".into(),
            from: 0,
            to: 6,
            hundredths: 4000,
        };
        let b = Shift {
            budget: "b".into(),
            from: 0,
            to: 4,
            hundredths: 2000,
        };
        let terms = [a.hours_in(0, 6).unwrap(), b.hours_in(0, 6).unwrap()];
        assert_eq!(over(&terms, 60), (false, Decimal::new(6000, 2)));
        assert_eq!(over(&terms, 59), (true, Decimal::new(6000, 2)));
        // A 4-weekly period not aligned to the week: 2/28 + 5/28 of 240.
        let c = Shift {
            budget: "c".into(),
            from: -26,
            to: 1,
            hundredths: 24000,
        };
        let d = Shift {
            budget: "d".into(),
            from: 2,
            to: 29,
            hundredths: 24000,
        };
        let terms = [c.hours_in(0, 6).unwrap(), d.hours_in(0, 6).unwrap()];
        assert_eq!(over(&terms, 60), (false, Decimal::new(6000, 2)));
        // 10 hours over 3 days: 3.33 a day, 10 in all.
        let e = Shift {
            budget: "e".into(),
            from: 0,
            to: 2,
            hundredths: 1000,
        };
        let day = e.hours_in(1, 1).unwrap();
        assert_eq!(over(&[day], 3), (true, Decimal::new(333, 2)));
        assert_eq!(over(&[day, day, day], 10), (false, Decimal::new(1000, 2)));
        assert_eq!(e.hours_in(3, 9), None);
        // Coprime lengths by the hundred: still an answer.
        let many: Vec<(i128, i128)> = (0..200).map(|i| (1, 2 * i + 3)).collect();
        let (_, hours) = over(&many, 1);
        assert!(hours > Decimal::ZERO);
    }

    /// One worker's payments, each (sequence, first day, last day,
    /// hundredths), as the snapshot writes them.
    fn snapshot(shifts: &[(u64, Date, Date, u64)]) -> Result<OverbookedWorker, SnapshotError> {
        let mut out = Vec::new();
        let mut w = SnapshotWriter::new(&mut out);
        w.len(1);
        w.str("pa-1");
        w.seq(shifts, |w, &(sequence, from, to, hundredths)| {
            w.u64(sequence);
            w.str("b");
            w.date(from);
            w.date(to);
            w.u64(hundredths);
        });
        SnapshotReader::read_all(&out, OverbookedWorker::read)
    }

    #[test]
    fn a_snapshot_keeps_periods_the_sums_can_divide_by() {
        let d = |day| Date {
            year: 2026,
            month: 12,
            day,
        };
        // The longest period is derived, as the fold keeps it.
        let ok = snapshot(&[(3, d(1), d(7), 4000), (2, d(2), d(2), 800)]).unwrap();
        let worker = &ok.workers["pa-1"];
        assert_eq!(worker.longest, 6);
        assert_eq!(worker.shifts[&(d(1).days(), 3)].hundredths, 4000);
        let one_day = snapshot(&[(2, d(2), d(2), 800)]).unwrap();
        assert_eq!(one_day.workers["pa-1"].longest, 0);
        for bad in [
            [(3, d(7), d(1), 4000)],
            [(3, d(1), d(7), 0)],
            [(3, d(1), d(7), 100_000_000_001)],
        ] {
            assert!(matches!(
                snapshot(&bad),
                Err(SnapshotError::BadValue { .. })
            ));
        }
        // Out of (first day, sequence) order.
        assert!(snapshot(&[(2, d(2), d(2), 800), (3, d(1), d(7), 4000)]).is_err());
    }
}
