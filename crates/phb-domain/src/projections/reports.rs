//! Reports: the figures a commissioner owes NHS England each quarter (the
//! Personal Health Budgets collection, DAPB2184) and the spending summary it
//! needs for itself (docs/reports.md).
//!
//! `Reports` is a second-stage projection, like `Flags`: it folds each
//! committed entry after `Balances` has, reading the agreement a payment
//! was made under from the budget as just folded. It keeps only what the
//! reports need:
//!
//! * per budget, what `BudgetOpened` said (commissioner, holder, cohort,
//!   age band, management, period) and the sequences of its opening, its
//!   stop and its recorded death;
//! * every spending — payments, purchases and (approved) card payments — as
//!   a line with its date (`occurred_at`, UTC), budget, category, sector and
//!   amount, and every refund as a negative line with its original's
//!   category and sector and its own date;
//! * for each UTC date on which entries were recorded, the last sequence
//!   recorded on it, so that "the last entry recorded by a day" is a range
//!   lookup.
//!
//! Every figure is an exact `Money` sum over `BTreeMap`s: no clock, no IO,
//! no floating point, so the live service, a restart and an auditor's
//! replay answer the same figures to the penny. The server's clock enters
//! only in the gRPC layer (whether a quarter is complete).

use super::flags::{FlagCode, Flags};
use super::snapshot::{Format, SnapshotError, SnapshotReader, SnapshotWriter};
use super::{plus, Balances, Committed};
use crate::categories;
use crate::event::{AgeBand, CardChannel, Cohort, Date, EventKind, Management, Sector};
use crate::money::Money;
use std::collections::{BTreeMap, BTreeSet};

/// A quarter of an NHS financial year, which runs from 1 April: "2026Q3"
/// is October to December 2026, "2026Q4" January to March 2027.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quarter {
    /// The calendar year the financial year starts in.
    pub year: u16,
    /// 1 to 4.
    pub n: u8,
}

impl Quarter {
    /// Parses "YYYYQn" (n 1-4). The quarter must end by 2199-12-31, the
    /// last date the ledger records; `None` otherwise.
    pub fn parse(s: &str) -> Option<Quarter> {
        let b = s.as_bytes();
        if b.len() != 6 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'Q' {
            return None;
        }
        let year: u16 = s[..4].parse().ok()?;
        let n = match b[5] {
            c @ b'1'..=b'4' => c - b'0',
            _ => return None,
        };
        let q = Quarter { year, n };
        ((2000..=2198).contains(&year) || (year == 2199 && n < 4)).then_some(q)
    }

    /// The quarter `on` falls in.
    pub fn containing(on: Date) -> Quarter {
        if on.month >= 4 {
            Quarter {
                year: on.year,
                n: (on.month - 4) / 3 + 1,
            }
        } else {
            Quarter {
                year: on.year - 1,
                n: 4,
            }
        }
    }

    /// The financial year's first day: 1 April of `year`.
    pub fn year_start(&self) -> Date {
        Date {
            year: self.year,
            month: 4,
            day: 1,
        }
    }

    /// The quarter's first day.
    pub fn first_day(&self) -> Date {
        match self.n {
            1 => self.year_start(),
            2 => date(self.year, 7, 1),
            3 => date(self.year, 10, 1),
            _ => date(self.year + 1, 1, 1),
        }
    }

    /// The quarter's last day.
    pub fn last_day(&self) -> Date {
        match self.n {
            1 => date(self.year, 6, 30),
            2 => date(self.year, 9, 30),
            3 => date(self.year, 12, 31),
            _ => date(self.year + 1, 3, 31),
        }
    }
}

impl std::fmt::Display for Quarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}Q{}", self.year, self.n)
    }
}

fn date(year: u16, month: u8, day: u8) -> Date {
    Date { year, month, day }
}

/// `part` as a percentage of `whole`, with one decimal place, rounded half
/// to even ("12.5"); "0.0" if `whole` is zero. Exact: computed in tenths
/// of a percent on whole pence, never through a float.
pub fn share(part: Money, whole: Money) -> String {
    let (part, whole) = (pence(part), pence(whole));
    if whole == 0 {
        return "0.0".to_string();
    }
    let negative = (part < 0) != (whole < 0);
    let (n, d) = (part.unsigned_abs() * 1000, whole.unsigned_abs());
    let (mut q, r) = (n / d, n % d);
    if 2 * r > d || (2 * r == d && q % 2 == 1) {
        q += 1;
    }
    let sign = if negative && q != 0 { "-" } else { "" };
    format!("{sign}{}.{}", q / 10, q % 10)
}

/// A `Money`'s exact value in pence (it is always held at scale 2).
fn pence(m: Money) -> i128 {
    let mut d = m.as_decimal();
    d.rescale(2);
    d.mantissa()
}

/// A Management as the proto names it.
pub fn management_name(m: Management) -> &'static str {
    match m {
        Management::DirectPayment => "MANAGEMENT_DIRECT_PAYMENT",
        Management::ThirdParty => "MANAGEMENT_THIRD_PARTY",
        Management::Notional => "MANAGEMENT_NOTIONAL",
    }
}

/// A Sector as the proto names it; `None` (not recorded) is
/// "SECTOR_UNSPECIFIED".
pub fn sector_name(s: Option<Sector>) -> &'static str {
    match s {
        None => "SECTOR_UNSPECIFIED",
        Some(Sector::Nhs) => "SECTOR_NHS",
        Some(Sector::LocalAuthority) => "SECTOR_LOCAL_AUTHORITY",
        Some(Sector::Independent) => "SECTOR_INDEPENDENT",
        Some(Sector::Voluntary) => "SECTOR_VOLUNTARY",
        Some(Sector::Individual) => "SECTOR_INDIVIDUAL",
    }
}

/// Every cohort, in the proto's order (not recorded first).
pub const COHORTS: [Cohort; 10] = [
    Cohort::NotRecorded,
    Cohort::ContinuingHealthcare,
    Cohort::FastTrackChc,
    Cohort::Wheelchair,
    Cohort::MentalHealthS117,
    Cohort::LearningDisabilityAutism,
    Cohort::EndOfLife,
    Cohort::Maternity,
    Cohort::ChildrenEhc,
    Cohort::Other,
];

/// Every age band, in the proto's order (not recorded first).
pub const AGE_BANDS: [AgeBand; 3] = [AgeBand::NotRecorded, AgeBand::Adult, AgeBand::Child];

/// Every management option, in the proto's order.
pub const MANAGEMENTS: [Management; 3] = [
    Management::DirectPayment,
    Management::ThirdParty,
    Management::Notional,
];

/// A Cohort as the proto names it ("COHORT_UNSPECIFIED": not recorded).
pub fn cohort_name(c: Cohort) -> &'static str {
    match c {
        Cohort::NotRecorded => "COHORT_UNSPECIFIED",
        Cohort::ContinuingHealthcare => "COHORT_CONTINUING_HEALTHCARE",
        Cohort::FastTrackChc => "COHORT_FAST_TRACK_CHC",
        Cohort::Wheelchair => "COHORT_WHEELCHAIR",
        Cohort::MentalHealthS117 => "COHORT_MENTAL_HEALTH_S117",
        Cohort::LearningDisabilityAutism => "COHORT_LEARNING_DISABILITY_AUTISM",
        Cohort::EndOfLife => "COHORT_END_OF_LIFE",
        Cohort::Maternity => "COHORT_MATERNITY",
        Cohort::ChildrenEhc => "COHORT_CHILDREN_EHC",
        Cohort::Other => "COHORT_OTHER",
    }
}

/// An AgeBand as the proto names it ("AGE_BAND_UNSPECIFIED": not recorded).
pub fn age_band_name(a: AgeBand) -> &'static str {
    match a {
        AgeBand::NotRecorded => "AGE_BAND_UNSPECIFIED",
        AgeBand::Adult => "AGE_BAND_ADULT",
        AgeBand::Child => "AGE_BAND_CHILD",
    }
}

/// What the reports keep of one budget.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Opened {
    commissioner_id: String,
    holder_ref: String,
    cohort: Cohort,
    age_band: AgeBand,
    management: Management,
    period_start: Date,
    period_end: Date,
    /// The BudgetOpened entry.
    opened_at: u64,
    /// The BudgetStopped entry, if stopped.
    stopped_at: Option<u64>,
    /// The date of death and the HolderDied entry, if recorded.
    death: Option<(Date, u64)>,
}

impl Opened {
    /// The budget's value in a return dimension.
    fn value(&self, dimension: Dimension) -> &'static str {
        match dimension {
            Dimension::AgeBand => age_band_name(self.age_band),
            Dimension::Cohort => cohort_name(self.cohort),
            Dimension::Management => management_name(self.management),
        }
    }

    /// Active on `day` as the log stood at `as_of`: its period includes the
    /// day, it was not stopped by then, and no death on or before the day
    /// was recorded by then.
    fn active_on(&self, day: Date, as_of: u64) -> bool {
        self.period_start <= day
            && day <= self.period_end
            && self.stopped_at.is_none_or(|s| s > as_of)
            && self.death.is_none_or(|(died, s)| died > day || s > as_of)
    }
}

/// One spending line: a spending (positive) or a refund (negative).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// Its `occurred_at` date (UTC).
    on: Date,
    budget_id: String,
    category: String,
    /// The payee's or supplier's sector, if recorded.
    sector: Option<Sector>,
    amount: Money,
}

/// A dimension of the quarterly return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dimension {
    AgeBand,
    Cohort,
    Management,
}

impl Dimension {
    const ALL: [Dimension; 3] = [Dimension::AgeBand, Dimension::Cohort, Dimension::Management];

    fn name(self) -> &'static str {
        match self {
            Dimension::AgeBand => "age_band",
            Dimension::Cohort => "cohort",
            Dimension::Management => "management",
        }
    }

    /// Every value of the dimension, in the proto's order.
    fn values(self) -> Vec<&'static str> {
        match self {
            Dimension::AgeBand => AGE_BANDS.iter().map(|a| age_band_name(*a)).collect(),
            Dimension::Cohort => COHORTS.iter().map(|c| cohort_name(*c)).collect(),
            Dimension::Management => MANAGEMENTS.iter().map(|m| management_name(*m)).collect(),
        }
    }
}

/// What the commissioners' reports are computed from, folded from the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reports {
    budgets: BTreeMap<String, Opened>,
    /// Spending and refund lines by sequence.
    lines: BTreeMap<u64, Line>,
    /// For each UTC date entries were recorded on, the last one's sequence.
    days: BTreeMap<Date, u64>,
}

/// One line of a spending breakdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendLine {
    /// A category code, a Management name or a Sector name.
    pub key: String,
    /// Spent, net of refunds, in the range.
    pub amount: Money,
    /// `amount` as a percentage of the total, one decimal place.
    pub share: String,
    /// How many budgets contributed.
    pub budgets: u32,
}

/// A commissioner's spending between two dates (GetSpendingSummary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendingSummary {
    /// Spending dated in the range, less refunds dated in it.
    pub total_spent: Money,
    /// Per category, largest first (ties by key).
    pub by_category: Vec<SpendLine>,
    /// Per management option, largest first (ties by key).
    pub by_management: Vec<SpendLine>,
    /// Per sector, largest first (ties by key).
    pub by_sector: Vec<SpendLine>,
    /// Spent with a recorded sector other than the NHS.
    pub outside_nhs_amount: Money,
    /// `outside_nhs_amount` as a share of the spending with a recorded sector.
    pub outside_nhs_share: String,
    /// Budgets with a SURPLUS flag as of the last day.
    pub surplus_budgets: u32,
    /// What those budgets hold now.
    pub surplus_held: Money,
    /// Open (unreviewed) flags as of the last day, per code, in code order.
    pub open_flags: Vec<(FlagCode, u32)>,
    /// The log head the summary was computed at.
    pub head_sequence: u64,
}

/// One row of the quarterly return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnRow {
    /// "age_band", "cohort" or "management".
    pub dimension: &'static str,
    /// The value's proto name.
    pub value: &'static str,
    /// People counted under this value with a budget in the year to date.
    pub people_year_to_date: u32,
    /// Of those, people active on the quarter's last day.
    pub people_active_at_quarter_end: u32,
    /// Spending in the year to date of the budgets with this value.
    pub spend_year_to_date: Money,
}

/// One quarter's return (GetQuarterlyReturn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarterlyReturn {
    /// The quarter.
    pub quarter: Quarter,
    /// The financial year's first day.
    pub year_start: Date,
    /// The quarter's last day.
    pub quarter_end: Date,
    /// The last entry recorded on or before the quarter's last day (0: none).
    pub as_of_sequence: u64,
    /// People with a budget in the year to date.
    pub people_year_to_date: u32,
    /// Of those, people active on the quarter's last day.
    pub people_active_at_quarter_end: u32,
    /// Spending dated in the year to date, net of refunds.
    pub spend_year_to_date: Money,
    /// The same by age band, cohort and management, every value of each in
    /// the proto's order.
    pub rows: Vec<ReturnRow>,
}

/// A breakdown being summed: per key, the amount and the budgets.
#[derive(Default)]
struct Breakdown<'a>(BTreeMap<&'a str, (Money, BTreeSet<&'a str>)>);

impl<'a> Breakdown<'a> {
    fn add(&mut self, key: &'a str, budget: &'a str, amount: Money) {
        let (sum, budgets) = self.0.entry(key).or_insert((Money::ZERO, BTreeSet::new()));
        *sum = plus(*sum, amount);
        budgets.insert(budget);
    }

    /// The lines, largest first, ties by key.
    fn lines(self, total: Money) -> Vec<SpendLine> {
        let mut lines: Vec<SpendLine> = self
            .0
            .into_iter()
            .map(|(key, (amount, budgets))| SpendLine {
                key: key.to_string(),
                amount,
                share: share(amount, total),
                budgets: count(budgets.len()),
            })
            .collect();
        lines.sort_by(|a, b| b.amount.cmp(&a.amount).then_with(|| a.key.cmp(&b.key)));
        lines
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Reports {
    /// Folds one committed entry, after `balances` has folded it.
    pub fn apply(&mut self, c: &Committed<'_>, balances: &Balances) {
        let sequence = c.head.sequence;
        // recorded_at never decreases along the log: the latest entry of a
        // day is the last one folded on it.
        self.days
            .insert(Date::from_unix_micros(c.head.recorded_at_micros), sequence);
        if !c.applied() {
            return;
        }
        let id = &c.event.budget_id;
        let (amount, category, sector) = match &c.event.kind {
            EventKind::BudgetOpened {
                holder_ref,
                commissioner_id,
                period_start,
                period_end,
                management,
                cohort,
                age_band,
                ..
            } => {
                let opened = Opened {
                    commissioner_id: commissioner_id.clone(),
                    holder_ref: holder_ref.clone(),
                    cohort: *cohort,
                    age_band: *age_band,
                    management: *management,
                    period_start: *period_start,
                    period_end: *period_end,
                    opened_at: sequence,
                    stopped_at: None,
                    death: None,
                };
                self.budgets.insert(id.clone(), opened);
                return;
            }
            EventKind::BudgetStopped { .. } => {
                if let Some(b) = self.budgets.get_mut(id) {
                    b.stopped_at.get_or_insert(sequence);
                }
                return;
            }
            EventKind::HolderDied { date } => {
                if let Some(b) = self.budgets.get_mut(id) {
                    b.death = Some((*date, sequence));
                }
                return;
            }
            EventKind::Payment {
                amount,
                category,
                service,
                ..
            } => {
                // Under an agreement: the agreement's payee sector.
                let sector = service.as_ref().and_then(|s| {
                    let b = balances.budget(id)?;
                    b.agreements.get(&s.agreement_id).map(|a| a.payee_sector)
                });
                (*amount, category.clone(), sector)
            }
            EventKind::Purchase {
                amount,
                category,
                supplier_sector,
                ..
            } => (*amount, category.clone(), *supplier_sector),
            EventKind::CardTransaction {
                amount,
                mcc,
                channel,
                ..
            } => {
                // The category the write model charged (as `Balances`).
                let category = match channel {
                    CardChannel::Atm => "cash",
                    _ => categories::category_of_mcc(*mcc).unwrap_or("unmapped"),
                };
                (*amount, category.to_string(), None)
            }
            EventKind::Refund {
                original_sequence,
                amount,
            } => {
                let Some(original) = self.lines.get(original_sequence) else {
                    debug_assert!(false, "a committed refund names a spending");
                    return;
                };
                let negative = Money::ZERO
                    .checked_sub(*amount)
                    .expect("a refund is within the amount bounds");
                (negative, original.category.clone(), original.sector)
            }
            _ => return,
        };
        if !self.budgets.contains_key(id) {
            debug_assert!(false, "committed spending is on an opened budget");
            return;
        }
        let line = Line {
            on: Date::from_unix_micros(c.event.occurred_at_micros),
            budget_id: id.clone(),
            category,
            sector,
            amount,
        };
        self.lines.insert(sequence, line);
    }

    /// The last sequence recorded on or before `day` (its UTC date), or 0.
    pub fn last_sequence_by(&self, day: Date) -> u64 {
        self.days.range(..=day).next_back().map_or(0, |(_, s)| *s)
    }

    /// `commissioner`'s lines dated from `from` to `to`, recorded by
    /// `as_of`, with their budgets.
    fn lines_of<'a>(
        &'a self,
        commissioner: &'a str,
        from: Date,
        to: Date,
        as_of: u64,
    ) -> impl Iterator<Item = (&'a Line, &'a Opened)> + 'a {
        self.lines
            .range(..=as_of)
            .map(|(_, l)| l)
            .filter(move |l| from <= l.on && l.on <= to)
            .filter_map(move |l| {
                let b = self.budgets.get(&l.budget_id)?;
                (b.commissioner_id == commissioner).then_some((l, b))
            })
    }

    /// `commissioner`'s spending from `from` to `to` (GetSpendingSummary):
    /// the lines as of the head, and the SURPLUS and open flags `flags`
    /// derives as of `to` at `head`.
    pub fn spending_summary(
        &self,
        commissioner: &str,
        from: Date,
        to: Date,
        flags: &Flags,
        balances: &Balances,
        head: u64,
    ) -> SpendingSummary {
        let mut total = Money::ZERO;
        let mut recorded_sector = Money::ZERO;
        let mut outside_nhs = Money::ZERO;
        let (mut category, mut management, mut sector) = (
            Breakdown::default(),
            Breakdown::default(),
            Breakdown::default(),
        );
        for (l, b) in self.lines_of(commissioner, from, to, u64::MAX) {
            total = plus(total, l.amount);
            category.add(&l.category, &l.budget_id, l.amount);
            management.add(management_name(b.management), &l.budget_id, l.amount);
            sector.add(sector_name(l.sector), &l.budget_id, l.amount);
            if let Some(s) = l.sector {
                recorded_sector = plus(recorded_sector, l.amount);
                if s != Sector::Nhs {
                    outside_nhs = plus(outside_nhs, l.amount);
                }
            }
        }
        let mut surplus = BTreeSet::new();
        let mut open: BTreeMap<FlagCode, u32> = BTreeMap::new();
        for f in flags
            .list(balances, to, head)
            .into_iter()
            .filter(|f| f.commissioner_id == commissioner)
        {
            if f.code == FlagCode::Surplus {
                surplus.insert(f.budget_id.clone());
            }
            if flags.review(&f.id).is_none() {
                *open.entry(f.code).or_default() += 1;
            }
        }
        let surplus_held = surplus
            .iter()
            .filter_map(|id| balances.budget(id))
            .fold(Money::ZERO, |sum, b| plus(sum, b.held()));
        SpendingSummary {
            total_spent: total,
            by_category: category.lines(total),
            by_management: management.lines(total),
            by_sector: sector.lines(total),
            outside_nhs_amount: outside_nhs,
            outside_nhs_share: share(outside_nhs, recorded_sector),
            surplus_budgets: count(surplus.len()),
            surplus_held,
            open_flags: open.into_iter().collect(),
            head_sequence: head,
        }
    }

    /// `commissioner`'s return for `quarter` (GetQuarterlyReturn), computed
    /// from the log up to the quarter's last sequence.
    pub fn quarterly_return(&self, commissioner: &str, quarter: Quarter) -> QuarterlyReturn {
        let (start, end) = (quarter.year_start(), quarter.last_day());
        let as_of = self.last_sequence_by(end);
        // People: each holder's budgets opened by as_of whose period
        // overlaps the year to date; a person counts under the first
        // opened, and is active if any of them is.
        let mut people: BTreeMap<&str, (&Opened, bool)> = BTreeMap::new();
        for b in self.budgets.values().filter(|b| {
            b.commissioner_id == commissioner
                && b.opened_at <= as_of
                && b.period_start <= end
                && b.period_end >= start
        }) {
            let active = b.active_on(end, as_of);
            let p = people.entry(&b.holder_ref).or_insert((b, false));
            if b.opened_at < p.0.opened_at {
                p.0 = b;
            }
            p.1 |= active;
        }
        // Per (dimension, value): people, active people, spend. (Not
        // `Default`: `Money::default()` is an unscaled zero, "0".)
        const EMPTY: (u32, u32, Money) = (0, 0, Money::ZERO);
        let mut cells: BTreeMap<(&str, &str), (u32, u32, Money)> = BTreeMap::new();
        let (mut ytd, mut active) = (0u32, 0u32);
        for (first, is_active) in people.values() {
            ytd += 1;
            active += u32::from(*is_active);
            for d in Dimension::ALL {
                let cell = cells.entry((d.name(), first.value(d))).or_insert(EMPTY);
                cell.0 += 1;
                cell.1 += u32::from(*is_active);
            }
        }
        let mut spend = Money::ZERO;
        for (l, b) in self.lines_of(commissioner, start, end, as_of) {
            spend = plus(spend, l.amount);
            for d in Dimension::ALL {
                let cell = cells.entry((d.name(), b.value(d))).or_insert(EMPTY);
                cell.2 = plus(cell.2, l.amount);
            }
        }
        let rows = Dimension::ALL
            .iter()
            .flat_map(|d| d.values().into_iter().map(move |v| (d.name(), v)))
            .map(|(dimension, value)| {
                let (p, a, s) = cells.get(&(dimension, value)).copied().unwrap_or(EMPTY);
                ReturnRow {
                    dimension,
                    value,
                    people_year_to_date: p,
                    people_active_at_quarter_end: a,
                    spend_year_to_date: s,
                }
            })
            .collect();
        QuarterlyReturn {
            quarter,
            year_start: start,
            quarter_end: end,
            as_of_sequence: as_of,
            people_year_to_date: ytd,
            people_active_at_quarter_end: active,
            spend_year_to_date: spend,
            rows,
        }
    }
}

/// `Reports`' snapshot: its header, then the budgets by id, the lines by
/// sequence and the days by date.
const FORMAT: Format = Format {
    tag: *b"RPTS",
    version: 1,
};

fn cohort_tag(c: Cohort) -> u8 {
    match c {
        Cohort::NotRecorded => 0,
        Cohort::ContinuingHealthcare => 1,
        Cohort::FastTrackChc => 2,
        Cohort::Wheelchair => 3,
        Cohort::MentalHealthS117 => 4,
        Cohort::LearningDisabilityAutism => 5,
        Cohort::EndOfLife => 6,
        Cohort::Maternity => 7,
        Cohort::ChildrenEhc => 8,
        Cohort::Other => 9,
    }
}

fn age_band_tag(a: AgeBand) -> u8 {
    match a {
        AgeBand::NotRecorded => 0,
        AgeBand::Adult => 1,
        AgeBand::Child => 2,
    }
}

impl Reports {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        w.header(FORMAT);
        w.seq(&self.budgets, |w, (id, b)| {
            w.str(id);
            w.str(&b.commissioner_id);
            w.str(&b.holder_ref);
            w.u8(cohort_tag(b.cohort));
            w.u8(age_band_tag(b.age_band));
            w.management(b.management);
            w.date(b.period_start);
            w.date(b.period_end);
            w.u64(b.opened_at);
            w.option(b.stopped_at, |w, s| w.u64(s));
            w.option(b.death, |w, (d, s)| {
                w.date(d);
                w.u64(s);
            });
        });
        w.seq(&self.lines, |w, (sequence, l)| {
            w.u64(*sequence);
            w.date(l.on);
            w.str(&l.budget_id);
            w.str(&l.category);
            w.option(l.sector, |w, s| w.sector(s));
            w.money(l.amount);
        });
        w.seq(&self.days, |w, (day, sequence)| {
            w.date(*day);
            w.u64(*sequence);
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<Reports, SnapshotError> {
        r.header(FORMAT)?;
        let budgets = r.map(|r| {
            let id = r.string()?;
            let commissioner_id = r.string()?;
            let holder_ref = r.string()?;
            let at = r.position();
            let cohort = *COHORTS
                .get(usize::from(r.u8()?))
                .ok_or_else(|| SnapshotReader::bad(at, "unknown cohort"))?;
            let at = r.position();
            let age_band = *AGE_BANDS
                .get(usize::from(r.u8()?))
                .ok_or_else(|| SnapshotReader::bad(at, "unknown age band"))?;
            let opened = Opened {
                commissioner_id,
                holder_ref,
                cohort,
                age_band,
                management: r.read_management()?,
                period_start: r.date()?,
                period_end: r.date()?,
                opened_at: r.u64()?,
                stopped_at: r.option(|r| r.u64())?,
                death: r.option(|r| Ok((r.date()?, r.u64()?)))?,
            };
            Ok((id, opened))
        })?;
        let lines = r.map(|r| {
            let sequence = r.u64()?;
            let on = r.date()?;
            let at = r.position();
            let budget_id = r.string()?;
            // Reports look lines' budgets up: each must be there.
            if !budgets.contains_key(&budget_id) {
                return Err(SnapshotReader::bad(at, "a spending line names no budget"));
            }
            let line = Line {
                on,
                budget_id,
                category: r.string()?,
                sector: r.option(|r| r.read_sector())?,
                amount: r.money()?,
            };
            Ok((sequence, line))
        })?;
        let days = r.map(|r| Ok((r.date()?, r.u64()?)))?;
        Ok(Reports {
            budgets,
            lines,
            days,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse_date, AgreementSpec, Event, PayeeKind, ServiceClaim, Unit};
    use crate::ledger::Head;
    use crate::projections::Projection;

    fn d(s: &str) -> Date {
        parse_date("d", s).unwrap()
    }

    fn m(p: i64) -> Money {
        Money::from_pence(p)
    }

    #[test]
    fn quarters_of_the_financial_year() {
        let q = Quarter::parse("2026Q3").unwrap();
        assert_eq!(q, Quarter { year: 2026, n: 3 });
        assert_eq!(q.to_string(), "2026Q3");
        assert_eq!(q.year_start(), d("2026-04-01"));
        assert_eq!(q.first_day(), d("2026-10-01"));
        assert_eq!(q.last_day(), d("2026-12-31"));
        let q4 = Quarter::parse("2026Q4").unwrap();
        assert_eq!(q4.year_start(), d("2026-04-01"));
        assert_eq!(
            (q4.first_day(), q4.last_day()),
            (d("2027-01-01"), d("2027-03-31"))
        );
        let q1 = Quarter::parse("2026Q1").unwrap();
        assert_eq!(
            (q1.first_day(), q1.last_day()),
            (d("2026-04-01"), d("2026-06-30"))
        );
        let q2 = Quarter::parse("2026Q2").unwrap();
        assert_eq!(
            (q2.first_day(), q2.last_day()),
            (d("2026-07-01"), d("2026-09-30"))
        );
        for bad in [
            "", "2026", "2026Q0", "2026Q5", "2026q3", "26Q3", "2026-Q3", "2026Q3 ", " 2026Q3",
            "1999Q4", "2199Q4", "+026Q3", "２026Q3",
        ] {
            assert_eq!(Quarter::parse(bad), None, "{bad:?}");
        }
        assert!(Quarter::parse("2000Q1").is_some());
        assert!(Quarter::parse("2199Q3").is_some());
        // The quarter a date falls in.
        for (day, q) in [
            ("2026-04-01", "2026Q1"),
            ("2026-06-30", "2026Q1"),
            ("2026-07-01", "2026Q2"),
            ("2026-12-31", "2026Q3"),
            ("2027-01-01", "2026Q4"),
            ("2027-03-31", "2026Q4"),
        ] {
            assert_eq!(Quarter::containing(d(day)).to_string(), q, "{day}");
        }
    }

    #[test]
    fn shares_round_half_to_even_exactly() {
        // 1/8 = 12.5 % exactly.
        assert_eq!(share(m(100), m(800)), "12.5");
        // 12.25 % and 12.35 %: exact midpoints go to the even tenth.
        assert_eq!(share(m(1225), m(10_000)), "12.2");
        assert_eq!(share(m(1235), m(10_000)), "12.4");
        assert_eq!(share(m(1245), m(10_000)), "12.4");
        // Just above and below a midpoint.
        assert_eq!(share(m(12_251), m(100_000)), "12.3");
        assert_eq!(share(m(12_249), m(100_000)), "12.2");
        // 1/3 and 2/3.
        assert_eq!(share(m(1), m(3)), "33.3");
        assert_eq!(share(m(2), m(3)), "66.7");
        assert_eq!(share(m(5), m(5)), "100.0");
        assert_eq!(share(m(0), m(5)), "0.0");
        assert_eq!(share(m(5), Money::ZERO), "0.0");
        // 0.04 % rounds to 0.0, 0.05 % to 0.0 (even), 0.06 % to 0.1.
        assert_eq!(share(m(4), m(10_000)), "0.0");
        assert_eq!(share(m(5), m(10_000)), "0.0");
        assert_eq!(share(m(15), m(10_000)), "0.2");
        assert_eq!(share(m(6), m(10_000)), "0.1");
        // A net refund is a negative share; a tiny one is "0.0", not "-0.0".
        assert_eq!(share(m(-250), m(1_000)), "-25.0");
        assert_eq!(share(m(-1), m(100_000)), "0.0");
        // The national evaluation's 12 %.
        assert_eq!(share(m(12_000), m(100_000)), "12.0");
        // Large sums stay exact.
        assert_eq!(share(m(i64::MAX / 3), m(i64::MAX)), "33.3");
    }

    fn head(sequence: u64, day: &str) -> Head {
        let micros = d(day).days() * 86_400_000_000 + 3_600_000_000;
        Head {
            sequence,
            hash: [0; 32],
            recorded_at_micros: micros,
        }
    }

    fn opened(
        holder: &str,
        commissioner: &str,
        management: Management,
        cohort: Cohort,
    ) -> EventKind {
        EventKind::BudgetOpened {
            holder_ref: holder.into(),
            commissioner_id: commissioner.into(),
            period_start: d("2026-04-01"),
            period_end: d("2027-03-31"),
            management,
            funds_holder_id: None,
            payroll_provider_id: None,
            plan_facilitator_id: None,
            cohort,
            age_band: AgeBand::Adult,
        }
    }

    fn purchase(p: i64, category: &str, sector: Option<Sector>) -> EventKind {
        EventKind::Purchase {
            amount: m(p),
            category: category.into(),
            supplier_ref: "s".into(),
            description: "d".into(),
            receipt_ref: String::new(),
            supplier_sector: sector,
        }
    }

    /// Folds (recorded day, budget, occurred day, kind) entries into
    /// `Reports` and `Balances`.
    fn fold(entries: Vec<(&str, &str, &str, EventKind)>) -> (Reports, Balances) {
        let mut reports = Reports::default();
        let mut balances = Balances::default();
        for (i, (recorded, budget, occurred, kind)) in entries.into_iter().enumerate() {
            let event = Event {
                event_id: format!("e{i}"),
                budget_id: budget.into(),
                occurred_at_micros: d(occurred).days() * 86_400_000_000,
                kind,
            };
            let c = Committed {
                head: head(i as u64 + 1, recorded),
                signer_id: "icb",
                event: &event,
                refusal: None,
            };
            // Balances needs plans for spending; the agreements are all
            // these tests read from it.
            if let EventKind::BudgetOpened { .. } | EventKind::ServiceAgreementApproved(_) =
                &event.kind
            {
                balances.apply(&c);
            }
            reports.apply(&c, &balances);
        }
        (reports, balances)
    }

    #[test]
    fn a_small_ledger_reported() {
        let agreement = AgreementSpec {
            agreement_id: "agr".into(),
            payee_ref: "pa".into(),
            payee_kind: PayeeKind::PersonalAssistant,
            payee_sector: Sector::Individual,
            category: "personal_assistant".into(),
            unit: Unit::Hour,
            rate: m(1_500),
            max_units_per_week: 0,
            valid_from: d("2026-04-01"),
            valid_to: d("2027-03-31"),
            connected_person: false,
        };
        let pay = EventKind::Payment {
            amount: m(30_000),
            payee_kind: PayeeKind::PersonalAssistant,
            payee_ref: "pa".into(),
            category: "personal_assistant".into(),
            reference: String::new(),
            service: Some(ServiceClaim {
                agreement_id: "agr".into(),
                units: m(2_000),
                from: d("2026-05-01"),
                to: d("2026-05-07"),
            }),
        };
        let (r, balances) = fold(vec![
            (
                "2026-04-02",
                "b1",
                "2026-04-02",
                opened(
                    "p1",
                    "icb",
                    Management::DirectPayment,
                    Cohort::ContinuingHealthcare,
                ),
            ),
            (
                "2026-04-02",
                "b1",
                "2026-04-02",
                EventKind::ServiceAgreementApproved(agreement),
            ),
            ("2026-05-08", "b1", "2026-05-08", pay),
            (
                "2026-05-08",
                "b2",
                "2026-05-08",
                opened("p1", "icb", Management::Notional, Cohort::Wheelchair),
            ),
            (
                "2026-05-09",
                "b2",
                "2026-05-09",
                purchase(10_000, "equipment", Some(Sector::Nhs)),
            ),
            (
                "2026-07-01",
                "b2",
                "2026-07-01",
                EventKind::Refund {
                    original_sequence: 5,
                    amount: m(2_500),
                },
            ),
            (
                "2026-07-02",
                "b3",
                "2026-07-02",
                opened("p2", "icb", Management::Notional, Cohort::Other),
            ),
            (
                "2026-07-02",
                "b3",
                "2026-07-02",
                EventKind::BudgetStopped { reason: "r".into() },
            ),
            (
                "2026-07-03",
                "x1",
                "2026-07-03",
                opened("p3", "other", Management::Notional, Cohort::Other),
            ),
            (
                "2026-07-03",
                "x1",
                "2026-07-03",
                purchase(99, "equipment", None),
            ),
        ]);
        assert_eq!(r.last_sequence_by(d("2026-04-01")), 0);
        assert_eq!(r.last_sequence_by(d("2026-05-08")), 4);
        assert_eq!(r.last_sequence_by(d("2026-06-30")), 5);
        assert_eq!(r.last_sequence_by(d("2030-01-01")), 10);

        // Q1: p1 only (b1 first), active; the refund is dated in Q2.
        let q1 = r.quarterly_return("icb", Quarter::parse("2026Q1").unwrap());
        assert_eq!(q1.as_of_sequence, 5);
        assert_eq!(
            (q1.people_year_to_date, q1.people_active_at_quarter_end),
            (1, 1)
        );
        assert_eq!(q1.spend_year_to_date, m(40_000));
        let row = |q: &QuarterlyReturn, v: &str| {
            let r = q.rows.iter().find(|r| r.value == v).unwrap();
            (
                r.people_year_to_date,
                r.people_active_at_quarter_end,
                r.spend_year_to_date,
            )
        };
        assert_eq!(row(&q1, "COHORT_CONTINUING_HEALTHCARE"), (1, 1, m(30_000)));
        assert_eq!(row(&q1, "COHORT_WHEELCHAIR"), (0, 0, m(10_000)));
        assert_eq!(q1.rows.len(), 16);
        // Empty rows are zero pounds at two decimal places, as on the wire.
        let empty = q1
            .rows
            .iter()
            .find(|r| r.value == "COHORT_FAST_TRACK_CHC")
            .unwrap();
        assert_eq!(empty.spend_year_to_date.to_string(), "0.00");

        // Q2: p1 and p2 (stopped, so not active); the refund counts.
        let q2 = r.quarterly_return("icb", Quarter::parse("2026Q2").unwrap());
        assert_eq!(q2.as_of_sequence, 10);
        assert_eq!(
            (q2.people_year_to_date, q2.people_active_at_quarter_end),
            (2, 1)
        );
        assert_eq!(q2.spend_year_to_date, m(37_500));
        assert_eq!(row(&q2, "MANAGEMENT_NOTIONAL"), (1, 0, m(7_500)));
        assert_eq!(row(&q2, "MANAGEMENT_DIRECT_PAYMENT"), (1, 1, m(30_000)));
        assert_eq!(row(&q2, "AGE_BAND_ADULT"), (2, 1, m(37_500)));

        // The summary: sectors from the agreement and the purchase.
        let flags = Flags::default();
        let s = r.spending_summary(
            "icb",
            d("2026-04-01"),
            d("2026-12-31"),
            &flags,
            &balances,
            10,
        );
        assert_eq!(s.total_spent, m(37_500));
        let keys = |l: &[SpendLine]| {
            l.iter()
                .map(|l| (l.key.clone(), l.amount, l.share.clone(), l.budgets))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(&s.by_sector),
            [
                ("SECTOR_INDIVIDUAL".into(), m(30_000), "80.0".into(), 1),
                ("SECTOR_NHS".into(), m(7_500), "20.0".into(), 1),
            ]
        );
        assert_eq!(s.outside_nhs_amount, m(30_000));
        assert_eq!(s.outside_nhs_share, "80.0");
        // Only the refund in range: a negative total.
        let s = r.spending_summary(
            "icb",
            d("2026-07-01"),
            d("2026-07-01"),
            &flags,
            &balances,
            10,
        );
        assert_eq!(s.total_spent, m(-2_500));
        assert_eq!(
            keys(&s.by_category),
            [("equipment".into(), m(-2_500), "100.0".into(), 1)]
        );
        // Another commissioner sees only its own; an unknown one nothing.
        let s = r.spending_summary(
            "other",
            d("2026-04-01"),
            d("2026-12-31"),
            &flags,
            &balances,
            10,
        );
        assert_eq!(s.total_spent, m(99));
        assert_eq!(s.by_sector[0].key, "SECTOR_UNSPECIFIED");
        assert_eq!(s.outside_nhs_share, "0.0");
        let q = r.quarterly_return("nobody", Quarter::parse("2026Q2").unwrap());
        assert_eq!(
            (q.people_year_to_date, q.spend_year_to_date),
            (0, Money::ZERO)
        );

        // The snapshot restores it exactly, and re-encodes to the same bytes.
        let mut bytes = Vec::new();
        r.write(&mut SnapshotWriter::new(&mut bytes));
        let back = SnapshotReader::read_all(&bytes, Reports::read).unwrap();
        assert_eq!(back, r);
        let mut again = Vec::new();
        back.write(&mut SnapshotWriter::new(&mut again));
        assert_eq!(again, bytes);
        for n in 0..bytes.len() {
            assert!(SnapshotReader::read_all(&bytes[..n], Reports::read).is_err());
        }
    }
}
