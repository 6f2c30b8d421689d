//! SURPLUS: a budget holding more than `surplus_weeks` (default 8) weeks of
//! its care plan's weekly value, over and above what is left of the plan's
//! contingency. Councils reclaim a surplus of "more than 8 weeks funding"
//! (St Helens; Sefton and Haringey expect an account to be 4–8 weeks in
//! credit), and NHS (Direct Payments) Regulations 2013 reg 15(1)(c) lets the
//! commissioner reclaim payments that "have not been used ... and have
//! accumulated". A new budget is loaded in advance, so the flag is muted for
//! the first `surplus_mute_weeks` (default 11: Staffordshire pays new card
//! users an 11-week float) from the budget period's start
//! (shared/research/controls-and-reporting.md, "Surplus and contingency
//! thresholds").
//!
//! Time-based: derived at the as-of date from the budget as it stands at
//! the head. The weekly value is the plan lines' annual total / 52, exactly;
//! the threshold `surplus_weeks × annual / 52` is rounded **down** to the
//! penny, which for a held amount in whole pence is the same test as against
//! the exact figure (held − contingency left > threshold). Unpaid wages and
//! invoices ("known unpaid bills", Durham) are not in the ledger, so they
//! cannot be deducted: the reviewer does, before reclaiming.
//!
//! Not flagged: budgets with no care plan (no weekly value), notional
//! budgets (the commissioner holds the money: `held` is always 0), stopped
//! budgets (their money is reclaimed on closure anyway).
//!
//! The key is the state the rule reads — `{plan}-{paid_in}-{spent}`: the
//! plan's approval sequence and the budget's paid-in and spent totals — so
//! the same state gives the same id at any later as-of date (a review of the
//! flag keeps applying) and a money movement or a new plan makes a new id.
//! (The budget's `last_sequence` would not do: a `FlagReviewed` of this very
//! flag moves it on, and the review would be lost.)

use super::{AsOf, Context, Flag, FlagCode, Rule, Severity};
use crate::event::Management;
use crate::ledger::Budget;
use crate::money::Money;
use crate::projections::Committed;

/// Stateless: everything it reads is in the budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surplus;

/// Whole pence of `m` (Money is always at scale 2).
fn pence(m: Money) -> i128 {
    let d = m.as_decimal();
    debug_assert_eq!(d.scale(), 2);
    d.mantissa()
}

/// `weeks` weeks of `annual` a year: `weeks × annual / 52`, rounded down to
/// the penny (exact integer arithmetic in pence).
fn weeks_of(annual: Money, weeks: u32) -> Money {
    let p = (pence(annual) * i128::from(weeks)).div_euclid(52);
    Money::from_pence(i64::try_from(p).unwrap_or(i64::MAX))
}

impl Surplus {
    fn check(b: &Budget, at: &AsOf<'_>) -> Option<Flag> {
        if b.stopped || b.management == Management::Notional {
            return None;
        }
        let plan = b.plan.as_ref()?;
        let controls = at.controls(&b.commissioner_id);
        let mute_ends = b.period_start.days() + 7 * i64::from(controls.surplus_mute_weeks);
        if at.on.days() < mute_ends {
            return None;
        }
        let annual = plan
            .spec
            .lines
            .iter()
            .try_fold(Money::ZERO, |t, l| t.checked_add(l.annual))?;
        let weekly = annual.as_decimal() / rust_decimal::Decimal::from(52);
        let threshold = weeks_of(annual, controls.surplus_weeks);
        let held = b.held();
        let contingency = plan.contingency_left();
        let over_contingency = held.checked_sub(contingency)?;
        if over_contingency <= threshold {
            return None;
        }
        let excess = over_contingency.checked_sub(threshold)?;
        let key = format!("{}-{}-{}", plan.approved_at, b.paid_in, b.spent);
        let mut f = Flag::new(FlagCode::Surplus, Severity::Low, b, &key);
        // The plan the weekly value is read from; the figures are in the
        // key and the explanation.
        f.sequences = vec![plan.approved_at];
        f.thresholds = vec![
            ("surplus_weeks", controls.surplus_weeks.to_string()),
            (
                "surplus_mute_weeks",
                controls.surplus_mute_weeks.to_string(),
            ),
        ];
        f.explanation = format!(
            "held {held}, less {contingency} left of the contingency, is {over_contingency} as of {on}: {excess} above {weeks} weeks of care plan {plan_id:?} ({threshold}; its lines total {annual} a year, {weekly} a week). Councils reclaim a surplus above 8 weeks (St Helens); unpaid wages and invoices are not in the ledger: deduct them before reclaiming (Reclaim, ground SURPLUS)",
            on = at.on,
            weeks = controls.surplus_weeks,
            plan_id = plan.spec.plan_id,
            weekly = weekly.round_dp(2),
        );
        Some(f)
    }
}

impl Rule for Surplus {
    fn apply(&mut self, _c: &Committed<'_>, _cx: &Context<'_>, _out: &mut Vec<Flag>) {}

    fn as_of(&self, at: &AsOf<'_>, out: &mut Vec<Flag>) {
        out.extend(at.balances.budgets().filter_map(|b| Surplus::check(b, at)));
    }
}

#[cfg(test)]
pub(super) mod kit {
    //! A pure harness for the flag rules' unit tests: folds hand-built
    //! committed entries through `Balances` and `Flags`, as `ReadModel` does.

    use crate::chain::Refusal;
    use crate::event::{
        AgeBand, AllocationBasis, Cohort, Date, Event, EventKind, Management, PlanLineSpec,
        PlanSpec,
    };
    use crate::ledger::Head;
    use crate::money::Money;
    use crate::projections::flags::{Flag, Flags};
    use crate::projections::{Balances, Committed, Projection};

    /// The commissioner of every kit budget.
    pub const ICB: &str = "icb-1";

    /// A date from its parts.
    pub fn date(year: u16, month: u8, day: u8) -> Date {
        Date { year, month, day }
    }

    /// Pounds and pence.
    pub fn money(pounds: i64, pence: i64) -> Money {
        Money::from_pence(pounds * 100 + pence)
    }

    /// The balances, the flags and the next sequence.
    #[derive(Default)]
    pub struct Kit {
        pub balances: Balances,
        pub flags: Flags,
        pub head: u64,
        /// recorded_at of the next entry, microseconds.
        pub now_micros: i64,
    }

    impl Kit {
        /// Folds one entry on `budget` signed by `signer`, occurring on
        /// `on`; a refusal if `refused` is a code. Returns its sequence and
        /// the flags it raised.
        pub fn entry(
            &mut self,
            signer: &str,
            budget: &str,
            on: Date,
            kind: EventKind,
            refused: Option<u32>,
        ) -> (u64, Vec<Flag>) {
            self.head += 1;
            let event = Event {
                event_id: format!("ev-{}", self.head),
                budget_id: budget.to_string(),
                occurred_at_micros: on.days() * 86_400_000_000,
                kind,
            };
            let refusal = refused.map(|code| Refusal::new(code, false, "refused"));
            let c = Committed {
                head: Head {
                    sequence: self.head,
                    hash: [0; 32],
                    recorded_at_micros: self.now_micros,
                },
                signer_id: signer,
                event: &event,
                refusal: refusal.as_ref(),
            };
            self.balances.apply(&c);
            self.flags.apply(&c, &self.balances);
            let raised = self.flags.raised_by(self.head).cloned().collect();
            (self.head, raised)
        }

        /// An applied entry by the commissioner.
        pub fn ok(&mut self, budget: &str, on: Date, kind: EventKind) -> u64 {
            self.entry(ICB, budget, on, kind, None).0
        }

        /// Opens `budget` (period 2026-04-01 to 2027-03-31).
        pub fn open(&mut self, budget: &str, management: Management) -> u64 {
            let kind = EventKind::BudgetOpened {
                holder_ref: format!("holder-{budget}"),
                commissioner_id: ICB.into(),
                period_start: date(2026, 4, 1),
                period_end: date(2027, 3, 31),
                management,
                funds_holder_id: None,
                payroll_provider_id: None,
                plan_facilitator_id: None,
                cohort: Cohort::Other,
                age_band: AgeBand::Adult,
            };
            self.ok(budget, date(2026, 4, 1), kind)
        }

        /// Approves a plan of `lines` (category, annual) and `contingency`,
        /// in force over the budget period.
        pub fn plan(&mut self, budget: &str, lines: &[(&str, Money)], contingency: Money) -> u64 {
            let spec = PlanSpec {
                plan_id: format!("plan-{}", self.head + 1),
                lines: lines
                    .iter()
                    .enumerate()
                    .map(|(i, (category, annual))| PlanLineSpec {
                        line_id: format!("l{i}"),
                        category: (*category).into(),
                        annual: *annual,
                        description: String::new(),
                    })
                    .collect(),
                contingency,
                valid_from: date(2026, 4, 1),
                valid_to: date(2027, 3, 31),
                review_due: date(2026, 10, 1),
            };
            self.ok(budget, date(2026, 4, 1), EventKind::CarePlanApproved(spec))
        }

        /// Allocates and disburses `amount` on `on`; returns the disbursement.
        pub fn fund(&mut self, budget: &str, on: Date, amount: Money) -> u64 {
            let basis = AllocationBasis::NeedsBased;
            self.ok(budget, on, EventKind::Allocation { amount, basis });
            self.ok(budget, on, EventKind::Disbursement { amount })
        }

        /// A purchase in `category`.
        pub fn buy(
            &mut self,
            budget: &str,
            on: Date,
            amount: Money,
            category: &str,
            receipt: &str,
        ) -> u64 {
            let kind = EventKind::Purchase {
                amount,
                category: category.into(),
                supplier_ref: "shop".into(),
                description: "things".into(),
                receipt_ref: receipt.into(),
                supplier_sector: None,
            };
            self.ok(budget, on, kind)
        }

        /// Every flag as of `on`.
        pub fn list(&self, on: Date) -> Vec<Flag> {
            self.flags.list(&self.balances, on, self.head)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kit::*;
    use super::*;
    use crate::controls::Controls;
    use crate::event::{EventKind, Management};

    fn surplus(k: &Kit, on: crate::event::Date) -> Vec<Flag> {
        k.list(on)
            .into_iter()
            .filter(|f| f.code == FlagCode::Surplus)
            .collect()
    }

    #[test]
    fn the_threshold_rounds_down_to_the_penny() {
        // 8 weeks of 10,000.00 a year is 1,538.4615...: 1,538.46.
        assert_eq!(weeks_of(money(10_000, 0), 8), money(1538, 46));
        assert_eq!(weeks_of(money(5_200, 0), 8), money(800, 0));
        assert_eq!(weeks_of(money(0, 1), 8), Money::ZERO);
    }

    #[test]
    fn held_above_eight_weeks_after_the_contingency_is_flagged_after_the_mute() {
        let mut k = Kit::default();
        k.open("b", Management::DirectPayment);
        // 10,000.00 a year: 8 weeks is 1,538.46 (1,538.4615... exactly).
        let plan = k.plan("b", &[("therapy", money(10_000, 0))], money(100, 0));
        k.fund("b", date(2026, 4, 1), money(1638, 46));
        // Week 12 starts on day 77: 2026-06-17.
        let (week11, week12) = (date(2026, 6, 16), date(2026, 6, 17));
        assert!(
            surplus(&k, week12).is_empty(),
            "exactly 8 weeks after the contingency"
        );
        let s = k.fund("b", date(2026, 4, 2), money(0, 1));
        assert!(surplus(&k, week11).is_empty(), "muted in week 11");
        let f = surplus(&k, week12);
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.id, format!("SURPLUS:b:{plan}-1638.47-0.00"));
        assert_eq!(f.sequences, [plan]);
        assert!(s > plan);
        assert_eq!(f.severity, Severity::Low);
        assert!(
            f.explanation.contains("0.01 above 8 weeks"),
            "{}",
            f.explanation
        );
        assert!(f.explanation.contains("1538.46"), "{}", f.explanation);
        // The same state, a year later: the same id.
        assert_eq!(surplus(&k, date(2027, 6, 1))[0].id, f.id);
    }

    #[test]
    fn what_is_left_of_the_contingency_is_deducted() {
        let mut k = Kit::default();
        k.open("b", Management::DirectPayment);
        // 5,252.00 a year: 8 weeks is 808.00. Contingency 100.00.
        let lines = [("therapy", money(5200, 0)), ("equipment", money(52, 0))];
        k.plan("b", &lines, money(100, 0));
        k.fund("b", date(2026, 4, 1), money(960, 0));
        // 82.00 of equipment: 52.00 from its line, 30.00 from the
        // contingency, which has 70.00 left. Held 878.00 - 70.00 = 808.00.
        k.buy("b", date(2026, 5, 1), money(82, 0), "equipment", "r-1");
        let on = date(2026, 7, 1);
        assert!(surplus(&k, on).is_empty());
        k.fund("b", date(2026, 5, 2), money(0, 1));
        let f = surplus(&k, on);
        assert_eq!(f.len(), 1);
        assert!(f[0].id.ends_with("-960.01-82.00"), "{}", f[0].id);
        assert!(
            f[0].explanation
                .contains("held 878.01, less 70.00 left of the contingency, is 808.01"),
            "{}",
            f[0].explanation
        );
    }

    #[test]
    fn notional_planless_and_stopped_budgets_are_not_flagged() {
        let mut k = Kit::default();
        let on = date(2026, 12, 1);
        k.open("no-plan", Management::ThirdParty);
        k.fund("no-plan", date(2026, 4, 1), money(5000, 0));
        k.open("notional", Management::Notional);
        k.plan("notional", &[("therapy", money(52, 0))], Money::ZERO);
        let basis = crate::event::AllocationBasis::NeedsBased;
        let amount = money(5000, 0);
        k.ok("notional", on, EventKind::Allocation { amount, basis });
        k.open("stopped", Management::DirectPayment);
        k.plan("stopped", &[("therapy", money(52, 0))], Money::ZERO);
        k.fund("stopped", date(2026, 4, 1), money(5000, 0));
        assert_eq!(surplus(&k, on).len(), 1);
        let reason = "moved away".to_string();
        k.ok("stopped", on, EventKind::BudgetStopped { reason });
        assert!(surplus(&k, on).is_empty());
    }

    #[test]
    fn controls_set_the_weeks_and_the_mute() {
        let mut k = Kit::default();
        k.open("b", Management::DirectPayment);
        k.plan("b", &[("therapy", money(5200, 0))], Money::ZERO);
        k.fund("b", date(2026, 4, 1), money(900, 0));
        let on = date(2026, 6, 17);
        let f = surplus(&k, on);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].thresholds[0], ("surplus_weeks", "8".to_string()));
        let controls = Controls {
            surplus_weeks: 9,
            ..Controls::default()
        };
        k.ok("", on, EventKind::ControlsConfigured(controls));
        assert!(surplus(&k, on).is_empty(), "900.00 is 9 weeks exactly");
        let controls = Controls {
            surplus_mute_weeks: 12,
            surplus_weeks: 4,
            ..Controls::default()
        };
        k.ok("", on, EventKind::ControlsConfigured(controls));
        assert!(surplus(&k, on).is_empty(), "muted in week 12 now");
        assert_eq!(surplus(&k, date(2026, 6, 24)).len(), 1);
    }
}
