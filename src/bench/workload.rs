//! The bench's ledger: who is registered, which budgets are opened and how
//! they are funded, and the timed events, all built and signed before any
//! clock starts.
//!
//! Every timed event must be accepted, or the figure would count cheap
//! refusals. So the timed events are planned first and the setup is derived
//! from them: each budget's care-plan lines are what it will spend in each
//! category plus a margin, and its allocation is the plan's total, so no
//! budget, line or agreement can run out whatever order the clients' events
//! arrive in. Payees are per budget and service days differ per payment, so
//! the fraud rules raise no flood of flags a real area would not see.

use phb_client::{kinds, Kind, Signer};
use phb_domain::event::Date;
use phb_proto::v1 as pb;
use std::collections::BTreeMap;

/// How a budget is managed, and so who spends from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Management {
    /// Held by an account provider; its payroll provider pays personal assistants.
    Direct,
    /// Held and spent by a third-party organisation.
    ThirdParty,
    /// Kept and spent by the commissioner.
    Notional,
}

/// Who signs an event.
#[derive(Clone, Copy, Debug)]
pub enum Who {
    Commissioner(usize),
    Payroll,
    Account,
    ThirdParty,
}

/// The organisations, with their keys.
pub struct Cast {
    pub root: Signer,
    pub commissioners: Vec<Signer>,
    pub payroll: Signer,
    pub account: Signer,
    pub third_party: Signer,
    pub auditor: Signer,
}

impl Cast {
    /// A cast whose ids carry `run`, so a bench can run more than once
    /// against one server.
    pub fn new(root: Signer, run: &str) -> Cast {
        let org = |name: &str| Signer::generate(format!("{name}-{run}"));
        Cast {
            root,
            commissioners: ["icb-north", "icb-south", "icb-east"]
                .iter()
                .map(|n| org(n))
                .collect(),
            payroll: org("payroll-co"),
            account: org("dp-account-bank"),
            third_party: org("support-trust"),
            auditor: org("audit-office"),
        }
    }

    pub fn signer(&self, who: Who) -> &Signer {
        match who {
            Who::Commissioner(i) => &self.commissioners[i],
            Who::Payroll => &self.payroll,
            Who::Account => &self.account,
            Who::ThirdParty => &self.third_party,
        }
    }

    /// The registrations, signed by root.
    fn registrations(&self) -> Vec<(pb::Role, &Signer)> {
        let mut regs: Vec<(pb::Role, &Signer)> = self
            .commissioners
            .iter()
            .map(|c| (pb::Role::Commissioner, c))
            .collect();
        regs.push((pb::Role::PayrollProvider, &self.payroll));
        regs.push((pb::Role::AccountProvider, &self.account));
        regs.push((pb::Role::ThirdParty, &self.third_party));
        regs.push((pb::Role::Auditor, &self.auditor));
        regs
    }
}

/// One budget and what the timed events will spend from it.
pub struct Budget {
    pub id: String,
    pub management: Management,
    pub commissioner: usize,
    /// Pence the timed events spend, by category.
    spend: BTreeMap<&'static str, i64>,
    /// Payments planned so far: picks each one's service day.
    payments: i64,
}

/// The NHS financial year containing `today` (1 April to 31 March): the
/// budgets' period, their plans' and agreements' term.
pub struct Year {
    pub start: Date,
    pub end: Date,
    pub today: Date,
}

impl Year {
    pub fn containing(today: Date) -> Year {
        let first = if today.month >= 4 {
            today.year
        } else {
            today.year - 1
        };
        Year {
            start: Date {
                year: first,
                month: 4,
                day: 1,
            },
            end: Date {
                year: first + 1,
                month: 3,
                day: 31,
            },
            today,
        }
    }

    /// Days from the year's start to today, both included: a service day
    /// must be over by the payment date (services are paid in arrears).
    fn days_so_far(&self) -> i64 {
        (self.today.days() - self.start.days() + 1).max(1)
    }
}

/// A small deterministic generator (xorshift64*): the mixture of events is
/// the same for the same counts, so runs compare.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n (n > 0; the bias is negligible for small n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Pence as the ledger's amount text.
pub fn pounds(pence: i64) -> String {
    format!("{}.{:02}", pence / 100, pence % 100)
}

// Agreed rates, in pence: two personal assistants an hour, a physiotherapist
// a session, respite a day, a clinical service an item.
const PA_A_RATE: i64 = 1250;
const PA_B_RATE: i64 = 1320;
const PHYSIO_RATE: i64 = 4500;
const RESPITE_RATE: i64 = 12_000;
const CLINIC_RATE: i64 = 6000;
const NOTIONAL_CLINIC_RATE: i64 = 20_204;

/// Card payments: merchant category codes the ledger maps to a category.
const CARD_MCCS: [(u32, &str); 3] = [
    (5941, "exercise_wellbeing"),
    (4111, "transport"),
    (5310, "equipment"),
];

/// The plan and the events being built.
pub struct Workload {
    pub ledger_id: String,
    pub run: String,
    pub year: Year,
    pub budgets: Vec<Budget>,
    occurred_at: prost_types::Timestamp,
    rng: Rng,
    next_setup_id: u64,
}

/// What a timed event is, for the workload's description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sort {
    Payroll,
    ProviderPayment,
    Purchase,
    Card,
}

impl Sort {
    pub fn name(self) -> &'static str {
        match self {
            Sort::Payroll => "payroll payments to personal assistants",
            Sort::ProviderPayment => "provider payments under agreements",
            Sort::Purchase => "purchases",
            Sort::Card => "card payments",
        }
    }
}

/// One timed run's events, before signing.
pub struct Timed {
    pub events: Vec<Unsigned>,
    /// How many of each sort.
    pub mix: BTreeMap<Sort, usize>,
    /// What they spend in all, in pence.
    pub pence: i64,
}

/// An event to be signed.
pub struct Unsigned {
    pub who: Who,
    pub event: pb::Event,
}

impl Workload {
    pub fn new(ledger_id: &str, run: &str, budgets: usize, today: Date) -> Workload {
        let budgets = (0..budgets)
            .map(|i| Budget {
                id: format!("b-{run}-{i:06}"),
                // Half direct payments, a third held by a third party, the
                // rest notional: roughly the mix councils report.
                management: match i % 20 {
                    0..=9 => Management::Direct,
                    10..=16 => Management::ThirdParty,
                    _ => Management::Notional,
                },
                commissioner: i % 3,
                spend: BTreeMap::new(),
                payments: 0,
            })
            .collect();
        Workload {
            ledger_id: ledger_id.to_string(),
            run: run.to_string(),
            year: Year::containing(today),
            budgets,
            occurred_at: phb_client::now_timestamp(),
            // A fixed seed: the same counts give the same mixture.
            rng: Rng::new(0x5eed),
            next_setup_id: 0,
        }
    }

    fn event(&self, id: String, budget: &str, kind: Kind) -> pb::Event {
        pb::Event {
            event_id: id,
            ledger_id: self.ledger_id.clone(),
            budget_id: budget.to_string(),
            occurred_at: Some(self.occurred_at),
            kind: Some(kind),
        }
    }

    /// `n` timed events for run `set` (each timed run has its own: a
    /// resent event would be a duplicate, not a new append), each on a
    /// budget picked at random, of a kind its management allows.
    pub fn timed(&mut self, set: usize, n: usize) -> Timed {
        let mut out = Vec::with_capacity(n);
        let mut mix = BTreeMap::new();
        let mut total = 0i64;
        for i in 0..n {
            let b = self.rng.below(self.budgets.len() as u64) as usize;
            let roll = self.rng.below(100);
            let extra = self.rng.next();
            let (sort, who, kind, category, pence) = self.pick(b, roll, extra);
            let budget = &mut self.budgets[b];
            *budget.spend.entry(category).or_default() += pence;
            total += pence;
            budget.payments += 1;
            *mix.entry(sort).or_default() += 1;
            let id = format!("{}-t{set}-{i}", self.run);
            let event = self.event(id, &self.budgets[b].id, kind);
            out.push(Unsigned { who, event });
        }
        Timed {
            events: out,
            mix,
            pence: total,
        }
    }

    /// The next spending on budget `b`: (sort, signer, kind, category, pence).
    fn pick(&self, b: usize, roll: u64, extra: u64) -> (Sort, Who, Kind, &'static str, i64) {
        let budget = &self.budgets[b];
        // One service day per payment on the budget, cycling over the
        // days of the year so far: the same payee is never paid twice for
        // one day until the days run out.
        let day =
            Date::from_days(self.year.start.days() + budget.payments % self.year.days_so_far());
        let day = day.to_string();
        let small = |lo: i64, hi: i64| lo + (extra % (hi - lo + 1) as u64) as i64;
        let under = |agreement: &str,
                     payee_kind: pb::PayeeKind,
                     payee: &str,
                     category: &str,
                     units: i64,
                     rate: i64| {
            Kind::Payment(pb::Payment {
                amount: pounds(units * rate),
                payee_kind: payee_kind as i32,
                payee_ref: payee.into(),
                category: category.into(),
                agreement_id: agreement.into(),
                units: units.to_string(),
                service_from: day.clone(),
                service_to: day.clone(),
                ..Default::default()
            })
        };
        let id = &budget.id;
        match budget.management {
            Management::Direct => match roll {
                // Wages: 1 to 8 hours for one of two assistants.
                0..=54 => {
                    let hours = 1 + (extra % 8) as i64;
                    let (who, rate) = if extra & 0x100 == 0 {
                        ("a", PA_A_RATE)
                    } else {
                        ("b", PA_B_RATE)
                    };
                    let k = under(
                        &format!("agr-{id}-pa-{who}"),
                        pb::PayeeKind::PersonalAssistant,
                        &format!("pa-{id}-{who}"),
                        "personal_assistant",
                        hours,
                        rate,
                    );
                    let pence = hours * rate;
                    (Sort::Payroll, Who::Payroll, k, "personal_assistant", pence)
                }
                55..=69 => {
                    let k = under(
                        &format!("agr-{id}-physio"),
                        pb::PayeeKind::Provider,
                        &format!("physio-{id}"),
                        "clinical_service",
                        1,
                        PHYSIO_RATE,
                    );
                    (
                        Sort::ProviderPayment,
                        Who::Account,
                        k,
                        "clinical_service",
                        PHYSIO_RATE,
                    )
                }
                70..=84 => {
                    let pence = small(500, 8000);
                    let k = kinds::buy(
                        &pounds(pence),
                        "equipment",
                        &format!("supplier-{}", extra % 50),
                        "mobility aid",
                    );
                    (Sort::Purchase, Who::Account, k, "equipment", pence)
                }
                _ => {
                    let (mcc, category) = CARD_MCCS[(extra % 3) as usize];
                    let pence = small(200, 4000);
                    let k = kinds::card(&pounds(pence), mcc, pb::CardChannel::Pos);
                    (Sort::Card, Who::Account, k, category, pence)
                }
            },
            Management::ThirdParty => match roll {
                0..=49 => {
                    let k = under(
                        &format!("agr-{id}-respite"),
                        pb::PayeeKind::Provider,
                        &format!("respite-{id}"),
                        "respite",
                        1,
                        RESPITE_RATE,
                    );
                    let who = Who::ThirdParty;
                    (Sort::ProviderPayment, who, k, "respite", RESPITE_RATE)
                }
                50..=79 => {
                    let k = under(
                        &format!("agr-{id}-clinic"),
                        pb::PayeeKind::Provider,
                        &format!("clinic-{id}"),
                        "clinical_service",
                        1,
                        CLINIC_RATE,
                    );
                    let who = Who::ThirdParty;
                    (
                        Sort::ProviderPayment,
                        who,
                        k,
                        "clinical_service",
                        CLINIC_RATE,
                    )
                }
                _ => {
                    let pence = small(300, 6000);
                    let k = kinds::buy(
                        &pounds(pence),
                        "community_activity",
                        &format!("club-{}", extra % 40),
                        "activity session",
                    );
                    let who = Who::ThirdParty;
                    (Sort::Purchase, who, k, "community_activity", pence)
                }
            },
            Management::Notional => {
                let k = under(
                    &format!("agr-{id}-cmht"),
                    pb::PayeeKind::Provider,
                    &format!("cmht-{id}"),
                    "clinical_service",
                    1,
                    NOTIONAL_CLINIC_RATE,
                );
                let who = Who::Commissioner(budget.commissioner);
                let pence = NOTIONAL_CLINIC_RATE;
                (Sort::ProviderPayment, who, k, "clinical_service", pence)
            }
        }
    }

    /// The registrations, signed by root, in one request.
    pub fn registrations(&mut self, cast: &Cast) -> Vec<pb::SignedEvent> {
        let regs: Vec<(pb::Role, Signer)> = cast
            .registrations()
            .into_iter()
            .map(|(r, s)| (r, s.clone()))
            .collect();
        regs.iter()
            .map(|(role, s)| {
                let id = self.setup_id();
                let k = kinds::register(&s.id, &[*role], &s.public_key().to_bytes());
                cast.root.sign(&self.event(id, "", k))
            })
            .collect()
    }

    fn setup_id(&mut self) -> String {
        self.next_setup_id += 1;
        format!("{}-s{}", self.run, self.next_setup_id)
    }

    /// Each budget's setup, in order (open, fund, plan, agreements), signed
    /// by its commissioner: call after every timed run is planned.
    pub fn setup(&mut self, cast: &Cast) -> Vec<Vec<Unsigned>> {
        let mut out = Vec::with_capacity(self.budgets.len());
        for i in 0..self.budgets.len() {
            let kinds = self.setup_kinds(cast, i);
            let who = Who::Commissioner(self.budgets[i].commissioner);
            let budget_id = self.budgets[i].id.clone();
            let events = kinds
                .into_iter()
                .map(|k| {
                    let id = self.setup_id();
                    Unsigned {
                        who,
                        event: self.event(id, &budget_id, k),
                    }
                })
                .collect();
            out.push(events);
        }
        out
    }

    fn setup_kinds(&self, cast: &Cast, i: usize) -> Vec<Kind> {
        let b = &self.budgets[i];
        let y = &self.year;
        let (holder, payroll) = match b.management {
            Management::Direct => (cast.account.id.clone(), cast.payroll.id.clone()),
            Management::ThirdParty => (cast.third_party.id.clone(), String::new()),
            Management::Notional => (String::new(), String::new()),
        };
        let management = match b.management {
            Management::Direct => pb::Management::DirectPayment,
            Management::ThirdParty => pb::Management::ThirdParty,
            Management::Notional => pb::Management::Notional,
        };
        let commissioner = cast.commissioners[b.commissioner].id.clone();
        let open = Kind::BudgetOpened(pb::BudgetOpened {
            holder_ref: format!("holder-{i}"),
            commissioner_id: commissioner,
            period_start: y.start.to_string(),
            period_end: y.end.to_string(),
            management: management as i32,
            funds_holder_id: holder,
            payroll_provider_id: payroll,
            plan_facilitator_id: String::new(),
            cohort: pb::Cohort::Unspecified as i32,
            age_band: pb::AgeBand::Unspecified as i32,
        });
        // Every category the budget may spend in gets a line, planned or
        // not, so a plan always has lines; each is what the timed events
        // spend there plus a tenth and 100.00.
        let categories: &[&'static str] = match b.management {
            Management::Direct => &[
                "personal_assistant",
                "clinical_service",
                "equipment",
                "exercise_wellbeing",
                "transport",
            ],
            Management::ThirdParty => &["respite", "clinical_service", "community_activity"],
            Management::Notional => &["clinical_service"],
        };
        let lines: Vec<(String, &str, i64)> = categories
            .iter()
            .map(|c| {
                let spent = b.spend.get(c).copied().unwrap_or(0);
                (format!("line-{c}"), *c, spent + spent / 10 + 10_000)
            })
            .collect();
        let total: i64 = lines.iter().map(|(_, _, p)| p).sum();
        let plan = Kind::CarePlanApproved(pb::CarePlanApproved {
            plan_id: format!("plan-{}", b.id),
            lines: lines
                .iter()
                .map(|(id, category, pence)| pb::PlanLine {
                    line_id: id.clone(),
                    category: (*category).into(),
                    annual_amount: pounds(*pence),
                    description: "agreed support".into(),
                })
                .collect(),
            contingency_amount: "0.00".into(),
            valid_from: y.start.to_string(),
            valid_to: y.end.to_string(),
            review_due: Date {
                year: y.start.year,
                month: 10,
                day: 1,
            }
            .to_string(),
        });
        let mut out = vec![
            open,
            kinds::allocate(&pounds(total), pb::AllocationBasis::NeedsBased),
        ];
        if b.management != Management::Notional {
            out.push(kinds::disburse(&pounds(total)));
        }
        out.push(plan);
        let id = &b.id;
        let agreement = |name: &str,
                         payee: String,
                         kind: pb::PayeeKind,
                         category: &str,
                         unit: pb::Unit,
                         rate: i64| {
            Kind::ServiceAgreementApproved(pb::ServiceAgreementApproved {
                agreement_id: format!("agr-{id}-{name}"),
                payee_ref: payee,
                payee_kind: kind as i32,
                payee_sector: match kind {
                    pb::PayeeKind::PersonalAssistant => pb::Sector::Individual,
                    _ => pb::Sector::Independent,
                } as i32,
                category: category.into(),
                unit: unit as i32,
                rate: pounds(rate),
                // No weekly limit: the bench's payments are one per day
                // and far below any, and a limit could refuse a payment
                // when many land on one budget.
                max_units_per_week: 0,
                valid_from: y.start.to_string(),
                valid_to: y.end.to_string(),
                connected_person: false,
            })
        };
        use pb::{PayeeKind as P, Unit as U};
        match b.management {
            Management::Direct => {
                for (who, rate) in [("a", PA_A_RATE), ("b", PA_B_RATE)] {
                    out.push(agreement(
                        &format!("pa-{who}"),
                        format!("pa-{id}-{who}"),
                        P::PersonalAssistant,
                        "personal_assistant",
                        U::Hour,
                        rate,
                    ));
                }
                out.push(agreement(
                    "physio",
                    format!("physio-{id}"),
                    P::Provider,
                    "clinical_service",
                    U::Item,
                    PHYSIO_RATE,
                ));
            }
            Management::ThirdParty => {
                out.push(agreement(
                    "respite",
                    format!("respite-{id}"),
                    P::Provider,
                    "respite",
                    U::Day,
                    RESPITE_RATE,
                ));
                out.push(agreement(
                    "clinic",
                    format!("clinic-{id}"),
                    P::Provider,
                    "clinical_service",
                    U::Item,
                    CLINIC_RATE,
                ));
            }
            Management::Notional => out.push(agreement(
                "cmht",
                format!("cmht-{id}"),
                P::Provider,
                "clinical_service",
                U::Item,
                NOTIONAL_CLINIC_RATE,
            )),
        }
        out
    }
}

/// Signs `events` on every core: signing is the client's work, done before
/// any clock starts.
pub fn sign_all(cast: &Cast, events: Vec<Unsigned>) -> anyhow::Result<Vec<pb::SignedEvent>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = events.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = events
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|u| cast.signer(u.who).sign(&u.event))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(events.len());
        for h in handles {
            let part = h
                .join()
                .map_err(|_| anyhow::anyhow!("a signing thread panicked"))?;
            out.extend(part);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(year: u16, month: u8, day: u8) -> Date {
        Date { year, month, day }
    }

    #[test]
    fn the_financial_year_runs_from_april_to_march() {
        for (today, first) in [
            (date(2026, 12, 1), 2026),
            (date(2027, 3, 31), 2026),
            (date(2027, 4, 1), 2027),
        ] {
            let y = Year::containing(today);
            assert_eq!(y.start, date(first, 4, 1), "{today}");
            assert_eq!(y.end, date(first + 1, 3, 31), "{today}");
        }
        assert_eq!(Year::containing(date(2026, 4, 1)).days_so_far(), 1);
        assert_eq!(Year::containing(date(2026, 4, 30)).days_so_far(), 30);
    }

    #[test]
    fn plans_cover_what_the_timed_events_spend_and_services_are_in_arrears() {
        let root = Signer::generate("root");
        let cast = Cast::new(root, "t");
        let today = date(2026, 6, 15);
        let mut w = Workload::new("l", "t", 20, today);
        let t = w.timed(0, 2000);
        assert_eq!(t.events.len(), 2000);
        assert_eq!(t.mix.values().sum::<usize>(), 2000);
        let mut spent = 0i64;
        for u in &t.events {
            let amount = match &u.event.kind {
                Some(Kind::Payment(p)) => {
                    assert!(p.service_to.as_str() <= "2026-06-15", "{p:?}");
                    assert!(p.service_from.as_str() >= "2026-04-01", "{p:?}");
                    &p.amount
                }
                Some(Kind::Purchase(p)) => &p.amount,
                Some(Kind::CardTransaction(c)) => &c.amount,
                other => panic!("unexpected timed event {other:?}"),
            };
            let (pounds, pence) = amount.split_once('.').expect("two decimals");
            spent += pounds.parse::<i64>().unwrap() * 100 + pence.parse::<i64>().unwrap();
        }
        assert_eq!(spent, t.pence);
        // Each budget's plan has a line for every category it spends in,
        // at least what it spends there, and is allocated in full.
        let setup = w.setup(&cast);
        for (b, events) in w.budgets.iter().zip(&setup) {
            let plan = events
                .iter()
                .find_map(|u| match &u.event.kind {
                    Some(Kind::CarePlanApproved(p)) => Some(p),
                    _ => None,
                })
                .expect("a plan");
            for (category, pence) in &b.spend {
                let line = plan
                    .lines
                    .iter()
                    .find(|l| l.category == *category)
                    .unwrap_or_else(|| panic!("{}: no {category} line", b.id));
                let (pounds, p) = line.annual_amount.split_once('.').unwrap();
                let line_pence = pounds.parse::<i64>().unwrap() * 100 + p.parse::<i64>().unwrap();
                assert!(line_pence > *pence, "{}: {category}", b.id);
            }
        }
    }
}
