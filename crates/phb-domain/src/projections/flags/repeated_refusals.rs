//! REPEATED_REFUSALS: `refusals_count` (default 3) refused attempts to move
//! money out of one budget within `refusals_days` (default 7) days — both
//! our choice. A refusal by the rules is recorded in the log; one is a
//! mistake, several in a week look like someone trying the limits: an
//! attempted overspend, spending outside the plan, a blocked merchant
//! (360 Assurance's PHB fraud risks: misuse and misappropriation;
//! shared/research/controls-and-reporting.md §3).
//!
//! Counted: recorded refusals (FAILED_PRECONDITION or PERMISSION_DENIED) of
//! a Payment, Purchase, CardTransaction or Disbursement on a budget that
//! exists, by the time each was recorded (`recorded_at`): a refusal counts
//! if it was recorded at most `refusals_days` × 24 hours before the one
//! being folded. Event-driven: the refusal that brings the count to the
//! threshold raises the flag (its answer carries it), listing the refusals
//! in the window. At most one flag per run: no new flag until the count in
//! the window has fallen below the threshold again.

use super::{Context, Flag, FlagCode, Rule, Severity};
use crate::event::EventKind;
use crate::money::Money;
use crate::projections::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::projections::Committed;
use std::collections::BTreeMap;

/// A day in microseconds.
const DAY_MICROS: i64 = 86_400_000_000;

/// The longest window `ControlsConfigured` allows (`refusals_days` ≤ 366):
/// refusals older than this can never count again and are forgotten.
const LONGEST_WINDOW_DAYS: i64 = 366;

/// FAILED_PRECONDITION and PERMISSION_DENIED (google.rpc.Code numbers).
const COUNTED_CODES: [(u32, &str); 2] = [(9, "FAILED_PRECONDITION"), (7, "PERMISSION_DENIED")];

/// The kinds of event counted: a closed set, so a snapshot can name one by
/// a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Payment,
    Purchase,
    CardTransaction,
    Disbursement,
}

impl Attempt {
    /// The event kind's name.
    fn name(self) -> &'static str {
        match self {
            Attempt::Payment => "Payment",
            Attempt::Purchase => "Purchase",
            Attempt::CardTransaction => "CardTransaction",
            Attempt::Disbursement => "Disbursement",
        }
    }
}

/// One counted refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refused {
    recorded_at_micros: i64,
    sequence: u64,
    what: Attempt,
    amount: Money,
    /// Its name in `COUNTED_CODES`.
    code: &'static str,
}

/// One budget's recent refusals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Recent {
    /// Oldest first.
    refused: Vec<Refused>,
    /// True once a flag was raised, until the count in the window falls
    /// below the threshold.
    flagged: bool,
}

/// Per budget, the refusals of the last `LONGEST_WINDOW_DAYS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepeatedRefusals {
    budgets: BTreeMap<String, Recent>,
}

impl Rule for RepeatedRefusals {
    fn apply(&mut self, c: &Committed<'_>, cx: &Context<'_>, out: &mut Vec<Flag>) {
        let (Some(b), Some(refusal)) = (cx.budget, c.refusal) else {
            return;
        };
        let Some(&(_, code)) = COUNTED_CODES.iter().find(|(n, _)| *n == refusal.code) else {
            return;
        };
        let (what, amount) = match &c.event.kind {
            EventKind::Payment { amount, .. } => (Attempt::Payment, *amount),
            EventKind::Purchase { amount, .. } => (Attempt::Purchase, *amount),
            EventKind::CardTransaction { amount, .. } => (Attempt::CardTransaction, *amount),
            EventKind::Disbursement { amount } => (Attempt::Disbursement, *amount),
            _ => return,
        };
        let now = c.head.recorded_at_micros;
        let sequence = c.head.sequence;
        let (count, days) = (cx.controls.refusals_count, cx.controls.refusals_days);
        let from = now.saturating_sub(i64::from(days) * DAY_MICROS);
        let r = self.budgets.entry(b.id.clone()).or_default();
        let kept_from = now.saturating_sub(LONGEST_WINDOW_DAYS * DAY_MICROS);
        r.refused.retain(|x| x.recorded_at_micros >= kept_from);
        let in_window = |r: &Recent| {
            r.refused
                .iter()
                .filter(|x| x.recorded_at_micros >= from)
                .count()
        };
        if in_window(r) < count as usize {
            r.flagged = false;
        }
        r.refused.push(Refused {
            recorded_at_micros: now,
            sequence,
            what,
            amount,
            code,
        });
        if r.flagged || in_window(r) < count as usize {
            return;
        }
        r.flagged = true;
        let window: Vec<&Refused> = r
            .refused
            .iter()
            .filter(|x| x.recorded_at_micros >= from)
            .collect();
        let mut f = Flag::new(
            FlagCode::RepeatedRefusals,
            Severity::Medium,
            b,
            &sequence.to_string(),
        );
        f.sequences = window.iter().map(|x| x.sequence).collect();
        f.thresholds = vec![
            ("refusals_count", count.to_string()),
            ("refusals_days", days.to_string()),
        ];
        let list: Vec<String> = window
            .iter()
            .map(|x| {
                let (sequence, what) = (x.sequence, x.what.name());
                format!("#{sequence} {what} of {} ({})", x.amount, x.code)
            })
            .collect();
        f.explanation = format!(
            "{} refused attempts to move money out of this budget within {days} days: {}. Repeated refusals can be an attempted overspend, spending outside the plan or at a blocked merchant: check who is trying to spend and on what",
            window.len(),
            list.join(", ")
        );
        out.push(f);
    }
}

/// Snapshot: the map of budget id → its recent refusals, oldest first (each
/// recorded at, in microseconds; sequence; the kind as a tag — 0 Payment,
/// 1 Purchase, 2 CardTransaction, 3 Disbursement; amount; the code's name,
/// one of `COUNTED_CODES`), then whether a flag was raised in the current
/// run.
impl RepeatedRefusals {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        let RepeatedRefusals { budgets } = self;
        w.seq(budgets, |w, (id, recent)| {
            let Recent { refused, flagged } = recent;
            w.str(id);
            w.seq(refused, |w, x| {
                let Refused {
                    recorded_at_micros,
                    sequence,
                    what,
                    amount,
                    code,
                } = x;
                w.i64(*recorded_at_micros);
                w.u64(*sequence);
                w.u8(match what {
                    Attempt::Payment => 0,
                    Attempt::Purchase => 1,
                    Attempt::CardTransaction => 2,
                    Attempt::Disbursement => 3,
                });
                w.money(*amount);
                w.str(code);
            });
            w.bool(*flagged);
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<RepeatedRefusals, SnapshotError> {
        let budgets = r.map(|r| {
            let id = r.string()?;
            let refused = r.seq(|r| {
                let recorded_at_micros = r.i64()?;
                let sequence = r.u64()?;
                let at = r.position();
                let what = match r.u8()? {
                    0 => Attempt::Payment,
                    1 => Attempt::Purchase,
                    2 => Attempt::CardTransaction,
                    3 => Attempt::Disbursement,
                    _ => return Err(SnapshotReader::bad(at, "unknown kind of refused attempt")),
                };
                let amount = r.money()?;
                let at = r.position();
                let name = r.str()?;
                let code = COUNTED_CODES
                    .iter()
                    .find(|(_, n)| *n == name)
                    .map(|(_, n)| *n)
                    .ok_or_else(|| SnapshotReader::bad(at, "a refusal code that is not counted"))?;
                Ok(Refused {
                    recorded_at_micros,
                    sequence,
                    what,
                    amount,
                    code,
                })
            })?;
            let flagged = r.bool()?;
            Ok((id, Recent { refused, flagged }))
        })?;
        Ok(RepeatedRefusals { budgets })
    }
}

#[cfg(test)]
mod tests {
    use super::super::surplus::kit::*;
    use super::*;
    use crate::controls::Controls;
    use crate::event::{Date, Management};

    const HOUR: i64 = 3_600_000_000;

    /// A refused purchase of 999.00 on `b` at `hours` into the kit's clock.
    fn refused(k: &mut Kit, b: &str, hours: i64, code: u32) -> (u64, Vec<Flag>) {
        k.now_micros = hours * HOUR;
        let kind = EventKind::Purchase {
            amount: money(999, 0),
            category: "therapy".into(),
            supplier_ref: "s".into(),
            description: "too much".into(),
            receipt_ref: String::new(),
            supplier_sector: None,
        };
        k.entry("fh", b, date(2026, 5, 1), kind, Some(code))
    }

    fn setup() -> Kit {
        let mut k = Kit::default();
        k.open("b", Management::ThirdParty);
        k.plan("b", &[("therapy", money(5000, 0))], Money::ZERO);
        k.fund("b", date(2026, 4, 1), money(100, 0));
        k
    }

    #[test]
    fn three_refusals_within_seven_days_raise_one_flag() {
        let mut k = setup();
        let (a, f) = refused(&mut k, "b", 0, 9);
        assert!(f.is_empty());
        let (b, f) = refused(&mut k, "b", 24, 7);
        assert!(f.is_empty());
        // Not counted: another code, another kind, a budget that does not
        // exist.
        assert!(refused(&mut k, "b", 25, 5).1.is_empty());
        assert!(refused(&mut k, "nope", 25, 9).1.is_empty());
        k.now_micros = 26 * HOUR;
        let (_, f) = k.entry(
            ICB,
            "b",
            date(2026, 5, 1),
            EventKind::ReviewRecorded {
                date: date(2026, 5, 1),
                kind: crate::event::ReviewKind::CareReview,
                outcome: String::new(),
            },
            Some(9),
        );
        assert!(f.is_empty());
        // The third, exactly 7 days after the first: flagged.
        let (c, f) = refused(&mut k, "b", 7 * 24, 9);
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.id, format!("REPEATED_REFUSALS:b:{c}"));
        assert_eq!(f.sequences, [a, b, c]);
        assert_eq!(f.raised_at, c);
        assert_eq!(f.severity, Severity::Medium);
        assert!(
            f.explanation.starts_with("3 refused attempts")
                && f.explanation
                    .contains(&format!("#{b} Purchase of 999.00 (PERMISSION_DENIED)")),
            "{}",
            f.explanation
        );
        // A fourth in the same run (4 in the window): no new flag.
        assert!(refused(&mut k, "b", 7 * 24, 9).1.is_empty());
        // Later, the first two have left the window (2 in it before this
        // one): a new run, a new flag.
        let (e, f) = refused(&mut k, "b", 8 * 24 + 1, 9);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].sequences, [c, c + 1, e]);
        assert_eq!(k.flags.raised_count(), 2);
    }

    #[test]
    fn two_refusals_a_week_apart_are_not_a_run() {
        let mut k = setup();
        refused(&mut k, "b", 0, 9);
        refused(&mut k, "b", 24, 9);
        // 7 days and an hour after the first: only two in the window.
        assert!(refused(&mut k, "b", 7 * 24 + 1, 9).1.is_empty());
        assert_eq!(k.flags.raised_count(), 0);
    }

    #[test]
    fn controls_change_the_count_from_their_sequence_on() {
        let mut k = setup();
        refused(&mut k, "b", 0, 9);
        refused(&mut k, "b", 1, 9);
        let controls = Controls {
            refusals_count: 2,
            ..Controls::default()
        };
        k.ok(
            "",
            Date::from_days(0),
            EventKind::ControlsConfigured(controls),
        );
        // The earlier two were folded under a count of 3: no flag then; the
        // next refusal is counted against 2 (3 in the window): flagged.
        let (s, f) = refused(&mut k, "b", 2, 9);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].sequences.len(), 3);
        assert_eq!(f[0].sequences.last(), Some(&s));
        assert_eq!(f[0].thresholds[0], ("refusals_count", "2".to_string()));
    }

    /// One budget's one refusal of kind tag `what` and code `code`.
    fn snapshot(what: u8, code: &str) -> Result<RepeatedRefusals, SnapshotError> {
        let mut out = Vec::new();
        let mut w = SnapshotWriter::new(&mut out);
        w.len(1);
        w.str("b");
        w.len(1);
        w.i64(HOUR);
        w.u64(4);
        w.u8(what);
        w.money(money(999, 0));
        w.str(code);
        w.bool(true);
        SnapshotReader::read_all(&out, RepeatedRefusals::read)
    }

    #[test]
    fn a_snapshot_names_counted_kinds_and_codes() {
        let r = snapshot(2, "PERMISSION_DENIED").unwrap();
        let recent = &r.budgets["b"];
        assert!(recent.flagged);
        assert_eq!(recent.refused[0].what, Attempt::CardTransaction);
        assert_eq!(recent.refused[0].code, "PERMISSION_DENIED");
        for (what, code) in [(4, "FAILED_PRECONDITION"), (0, "NOT_FOUND"), (0, "")] {
            assert!(matches!(
                snapshot(what, code),
                Err(SnapshotError::BadValue { .. })
            ));
        }
    }
}
