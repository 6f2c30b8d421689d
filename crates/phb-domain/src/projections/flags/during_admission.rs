//! DURING_ADMISSION: personal-assistant or care payments (payee kind
//! PERSONAL_ASSISTANT, or category `personal_assistant`, `agency_care` or
//! `respite`) whose service period includes days of a hospital stay beyond
//! its first `admission_days` days. Usual care is not given in hospital
//! (Oldham: "the usual routine care is not provided when in the hospital
//! setting"), so money keeps flowing to carers for care that may not be
//! given; but a personal assistant may support someone in hospital (the
//! Greater Manchester ICB allows it: FOI 2025/1329), so this is a flag, never
//! a refusal. Default 28 days: our choice — no source was found for a
//! four-week retainer; the nearest practice is the Dutch Wlz PGB, which
//! lapses two months after admission to an institution
//! (shared/research/controls-and-reporting.md, §3 and §5).
//!
//! A stay runs from `HospitalAdmission{date}` to `HospitalDischarge{date}`,
//! or is still open. Its days are counted from the date of admission, which
//! is day 1, to the day before the discharge date: the day of discharge is a
//! day at home (the person leaves hospital that day and care at home starts
//! again), which also matches the NHS length of stay (discharge date minus
//! admission date). So with the default 28 a stay from 1 September with
//! discharge on 29 September has 28 days (1–28 September) and never flags;
//! discharge on 30 September makes 29 days, and care paid for 29 September
//! (day 29) is flagged. An open stay has no last day.
//!
//! Every stay of every budget is kept: a payment is recorded in arrears and
//! may be for an earlier stay. Payments without a service period (PAYE,
//! pension) are for no particular days and are not checked.

use super::{Context, Flag, FlagCode, Rule, Severity};
use crate::event::{Date, EventKind, PayeeKind};
use crate::projections::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::projections::Committed;
use std::collections::BTreeMap;

/// The categories of care given at home.
const CARE_CATEGORIES: [&str; 3] = ["personal_assistant", "agency_care", "respite"];

/// One hospital stay.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stay {
    /// The date of admission: day 1.
    admitted: Date,
    /// The HospitalAdmission entry.
    admitted_at: u64,
    /// The discharge date and its entry, once discharged.
    discharged: Option<(Date, u64)>,
}

impl Stay {
    /// The days (since 1970-01-01) of this stay beyond its first
    /// `admission_days` that fall in `from..=to`, if any.
    fn late_days_in(&self, admission_days: u32, from: i64, to: i64) -> Option<(i64, i64)> {
        let first_late = self.admitted.days() + i64::from(admission_days);
        let start = from.max(first_late);
        let end = match self.discharged {
            Some((d, _)) => to.min(d.days() - 1),
            None => to,
        };
        (start <= end).then_some((start, end))
    }

    /// The day number of `day` in this stay (the admission date is day 1).
    fn day_number(&self, day: i64) -> i64 {
        day - self.admitted.days() + 1
    }
}

/// Every budget's hospital stays, in the order recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DuringAdmission {
    stays: BTreeMap<String, Vec<Stay>>,
}

impl Rule for DuringAdmission {
    fn apply(&mut self, c: &Committed<'_>, cx: &Context<'_>, out: &mut Vec<Flag>) {
        let (Some(b), true) = (cx.budget, c.applied()) else {
            return;
        };
        let sequence = c.head.sequence;
        let (amount, payee_kind, payee_ref, category, claim) = match &c.event.kind {
            EventKind::HospitalAdmission { date } => {
                self.stays.entry(b.id.clone()).or_default().push(Stay {
                    admitted: *date,
                    admitted_at: sequence,
                    discharged: None,
                });
                return;
            }
            EventKind::HospitalDischarge { date } => {
                // The rules admit only someone not in hospital and discharge
                // only someone in it: the open stay is the last one.
                if let Some(stay) = self
                    .stays
                    .get_mut(&b.id)
                    .and_then(|s| s.last_mut())
                    .filter(|s| s.discharged.is_none())
                {
                    stay.discharged = Some((*date, sequence));
                }
                return;
            }
            EventKind::Payment {
                amount,
                payee_kind,
                payee_ref,
                category,
                service: Some(claim),
                ..
            } => (amount, payee_kind, payee_ref, category, claim),
            _ => return,
        };
        let is_care = *payee_kind == PayeeKind::PersonalAssistant
            || CARE_CATEGORIES.contains(&category.as_str());
        if !is_care {
            return;
        }
        let Some(stays) = self.stays.get(&b.id) else {
            return;
        };
        let days = cx.controls.admission_days;
        let (from, to) = (claim.from.days(), claim.to.days());
        let mut sequences = Vec::new();
        let mut seen = Vec::new();
        for stay in stays {
            let Some((start, end)) = stay.late_days_in(days, from, to) else {
                continue;
            };
            sequences.push(stay.admitted_at);
            let until = match stay.discharged {
                Some((d, at)) => {
                    sequences.push(at);
                    format!("discharged on {d} (#{at})")
                }
                None => "still in hospital".to_string(),
            };
            let which = if start == end {
                format!(
                    "{} (day {})",
                    Date::from_days(start),
                    stay.day_number(start)
                )
            } else {
                format!(
                    "{} to {} (days {} to {})",
                    Date::from_days(start),
                    Date::from_days(end),
                    stay.day_number(start),
                    stay.day_number(end)
                )
            };
            seen.push(format!(
                "{which} of the hospital stay from {} (admitted at #{}, {until})",
                stay.admitted, stay.admitted_at
            ));
        }
        if seen.is_empty() {
            return;
        }
        sequences.sort_unstable();
        sequences.dedup();
        sequences.push(sequence);
        let mut f = Flag::new(
            FlagCode::DuringAdmission,
            Severity::Medium,
            b,
            &sequence.to_string(),
        );
        f.sequences = sequences;
        f.thresholds = vec![("admission_days", days.to_string())];
        f.explanation = format!(
            "{amount} to {payee_ref} ({category}) at #{sequence} pays for care from {} to {}, which includes {}: more than {days} days into the stay; a personal assistant may support someone in hospital, so check the care was given and agreed",
            claim.from,
            claim.to,
            seen.join(" and ")
        );
        out.push(f);
    }
}

/// Snapshot: the map of budget id → its stays in the order recorded, each
/// the admission date and entry, then the discharge (date and entry) if
/// any.
impl DuringAdmission {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        let DuringAdmission { stays } = self;
        w.seq(stays, |w, (id, stays)| {
            w.str(id);
            w.seq(stays, |w, stay| {
                let Stay {
                    admitted,
                    admitted_at,
                    discharged,
                } = stay;
                w.date(*admitted);
                w.u64(*admitted_at);
                w.option(*discharged, |w, (d, sequence)| {
                    w.date(d);
                    w.u64(sequence);
                });
            });
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<DuringAdmission, SnapshotError> {
        let stays = r.map(|r| {
            let id = r.string()?;
            let stays = r.seq(|r| {
                Ok(Stay {
                    admitted: r.date()?,
                    admitted_at: r.u64()?,
                    discharged: r.option(|r| Ok((r.date()?, r.u64()?)))?,
                })
            })?;
            Ok((id, stays))
        })?;
        Ok(DuringAdmission { stays })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: u16, m: u8, d: u8) -> Date {
        Date {
            year: y,
            month: m,
            day: d,
        }
    }

    #[test]
    fn the_admission_date_is_day_1_and_the_discharge_date_is_not_in_hospital() {
        let sep = |d| date(2026, 9, d).days();
        let stay = |discharge: Option<u8>| Stay {
            admitted: date(2026, 9, 1),
            admitted_at: 7,
            discharged: discharge.map(|d| (date(2026, 9, d), 9)),
        };
        // Discharged on the 29th: 28 days in hospital, none beyond day 28.
        assert_eq!(stay(Some(29)).late_days_in(28, sep(1), sep(30)), None);
        // Discharged on the 30th: the 29th is day 29.
        let s = stay(Some(30));
        assert_eq!(
            s.late_days_in(28, sep(1), sep(30)),
            Some((sep(29), sep(29)))
        );
        assert_eq!(s.day_number(sep(29)), 29);
        // A period ending on day 28 of an open stay: nothing yet.
        assert_eq!(stay(None).late_days_in(28, sep(22), sep(28)), None);
        assert_eq!(
            stay(None).late_days_in(28, sep(22), sep(30)),
            Some((sep(29), sep(30)))
        );
        // A period before the stay, or after the discharge: nothing.
        assert_eq!(stay(Some(30)).late_days_in(1, sep(30), sep(30)), None);
        // Same-day discharge: no day in hospital.
        assert_eq!(stay(Some(1)).late_days_in(1, sep(1), sep(30)), None);
    }
}
