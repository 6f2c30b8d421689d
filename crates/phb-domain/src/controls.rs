//! The thresholds the flag rules use (docs/flags.md), their defaults and
//! where each comes from, and a commissioner's own settings
//! (`ControlsConfigured`), which apply to its budgets from that entry's
//! sequence on, so a replay raises the same flags.

use crate::error::Reject;
use phb_proto::v1 as pb;
use rust_decimal::Decimal;

/// A commissioner's flag thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controls {
    /// SURPLUS: weeks of the plan's weekly value that may be held. Default 8:
    /// councils reclaim what is held above eight weeks (St Helens).
    pub surplus_weeks: u32,
    /// SURPLUS: weeks from the budget period's start with no surplus flag.
    /// Default 11: Staffordshire pays new card users an 11-week float.
    pub surplus_mute_weeks: u32,
    /// DURING_ADMISSION: days of a stay before care paid for it is flagged.
    /// Default 28: our choice (no source found for a 4-week retainer; the
    /// Dutch Wlz PGB lapses after two months in an institution).
    pub admission_days: u32,
    /// OVERBOOKED_WORKER: hours a week across every budget. Default 60: our
    /// choice (no source found).
    pub worker_hours_per_week: u32,
    /// OVERBOOKED_WORKER: hours a day. Default 16: US fiscal/employer agents
    /// never pay more than 16 hours in a 24-hour period.
    pub worker_hours_per_day: u32,
    /// SPIKE: multiple of the trailing weekly average. Default 3 (our choice).
    pub spike_multiple: Decimal,
    /// SPIKE: weeks in the trailing average. Default 12 (our choice).
    pub spike_weeks: u32,
    /// CASH_WITHOUT_RECEIPT: days a cash spending may lack a receipt.
    /// Default 30 (our choice).
    pub cash_receipt_days: u32,
    /// REVIEW_OVERDUE: weeks from the first disbursement to the first
    /// review. Default 12: council practice reviews at 6-12 weeks.
    pub first_review_weeks: u32,
    /// REVIEW_OVERDUE: months between reviews, and between audits. Default
    /// 12: reviews at least every 12 months (council practice).
    pub review_interval_months: u32,
    /// REPEATED_REFUSALS: refusals within `refusals_days`. Default 3 (our
    /// choice).
    pub refusals_count: u32,
    /// REPEATED_REFUSALS: the window in days. Default 7 (our choice).
    pub refusals_days: u32,
}

impl Default for Controls {
    fn default() -> Self {
        Controls {
            surplus_weeks: 8,
            surplus_mute_weeks: 11,
            admission_days: 28,
            worker_hours_per_week: 60,
            worker_hours_per_day: 16,
            spike_multiple: Decimal::from(3),
            spike_weeks: 12,
            cash_receipt_days: 30,
            first_review_weeks: 12,
            review_interval_months: 12,
            refusals_count: 3,
            refusals_days: 7,
        }
    }
}

/// A numeric setting: 0 keeps the default; otherwise `min..=max`.
fn setting(field: &str, value: u32, default: u32, min: u32, max: u32) -> Result<u32, Reject> {
    match value {
        0 => Ok(default),
        v if (min..=max).contains(&v) => Ok(v),
        v => Err(Reject::invalid(
            format!("kind.controls_configured.{field}"),
            format!("{field} is {v}; it must be 0 (the default, {default}) or from {min} to {max}"),
        )),
    }
}

impl Controls {
    /// The settings of a signed `ControlsConfigured`, defaults filled in;
    /// INVALID_ARGUMENT naming the field for a value out of range.
    pub fn decode(c: &pb::ControlsConfigured) -> Result<Controls, Reject> {
        let d = Controls::default();
        let spike_multiple = if c.spike_multiple.is_empty() {
            d.spike_multiple
        } else {
            let field = "kind.controls_configured.spike_multiple";
            let bad = || {
                Reject::invalid(
                    field,
                    format!(
                        "spike_multiple {:?} must be a decimal from 1.1 to 100 with at most 2 decimal places, e.g. \"3\" or \"2.5\" (or empty for the default 3)",
                        crate::error::quote(&c.spike_multiple)
                    ),
                )
            };
            let ok_chars = c
                .spike_multiple
                .chars()
                .all(|ch| ch.is_ascii_digit() || ch == '.')
                && !c.spike_multiple.starts_with('.')
                && !c.spike_multiple.ends_with('.');
            if !ok_chars || c.spike_multiple.len() > 6 {
                return Err(bad());
            }
            let m: Decimal = c.spike_multiple.parse().map_err(|_| bad())?;
            if m.scale() > 2 || m < Decimal::new(11, 1) || m > Decimal::from(100) {
                return Err(bad());
            }
            m
        };
        Ok(Controls {
            surplus_weeks: setting("surplus_weeks", c.surplus_weeks, d.surplus_weeks, 1, 104)?,
            surplus_mute_weeks: setting(
                "surplus_mute_weeks",
                c.surplus_mute_weeks,
                d.surplus_mute_weeks,
                1,
                104,
            )?,
            admission_days: setting("admission_days", c.admission_days, d.admission_days, 1, 366)?,
            worker_hours_per_week: setting(
                "worker_hours_per_week",
                c.worker_hours_per_week,
                d.worker_hours_per_week,
                1,
                168,
            )?,
            worker_hours_per_day: setting(
                "worker_hours_per_day",
                c.worker_hours_per_day,
                d.worker_hours_per_day,
                1,
                24,
            )?,
            spike_multiple,
            spike_weeks: setting("spike_weeks", c.spike_weeks, d.spike_weeks, 1, 104)?,
            cash_receipt_days: setting(
                "cash_receipt_days",
                c.cash_receipt_days,
                d.cash_receipt_days,
                1,
                366,
            )?,
            first_review_weeks: setting(
                "first_review_weeks",
                c.first_review_weeks,
                d.first_review_weeks,
                1,
                104,
            )?,
            review_interval_months: setting(
                "review_interval_months",
                c.review_interval_months,
                d.review_interval_months,
                1,
                60,
            )?,
            refusals_count: setting(
                "refusals_count",
                c.refusals_count,
                d.refusals_count,
                2,
                1000,
            )?,
            refusals_days: setting("refusals_days", c.refusals_days, d.refusals_days, 1, 366)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_the_default_and_ranges_are_checked() {
        let c = Controls::decode(&pb::ControlsConfigured::default()).unwrap();
        assert_eq!(c, Controls::default());
        let c = Controls::decode(&pb::ControlsConfigured {
            surplus_weeks: 12,
            spike_multiple: "2.5".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.surplus_weeks, 12);
        assert_eq!(c.spike_multiple, Decimal::new(25, 1));
        for bad in ["1", "0.5", "2.555", "1e3", "-3", ".5", "101", " 3"] {
            let r = Controls::decode(&pb::ControlsConfigured {
                spike_multiple: bad.into(),
                ..Default::default()
            });
            assert!(r.is_err(), "{bad}");
        }
        let r = Controls::decode(&pb::ControlsConfigured {
            worker_hours_per_day: 25,
            ..Default::default()
        });
        assert_eq!(
            r.unwrap_err().field.as_deref(),
            Some("kind.controls_configured.worker_hours_per_day")
        );
    }
}
