//! Snapshots of the projections (`Projection::encode` / `decode`).
//!
//! A realistic log is written by the simulation's writer (`phb_sim`): the
//! cast's setup (registrations, openings, care plans, agreements,
//! allocations, disbursements), then hand-picked events on top — payments,
//! purchases, a card payment, refunds (to the plan in force and to a plan
//! since replaced, charged to lines and to the contingency), a second care
//! plan, a new agreement, review adjustments, hospital stays, reviews,
//! suspension, reclaim, a death, a stop, a key rotation, a facilitator, and
//! refusals (overspend, wrong signer, no such budget, stopped budget, a
//! failed atomic batch) — then traffic that raises every kind of flag:
//! two commissioners' thresholds, hours beyond a day's and a week's,
//! duplicate claims, care paid during hospital stays, a spike, repeated
//! refusals, cash without receipts, data matches, a death with money moved
//! after it, and reviews of flags. Every projection is folded over it as
//! the engine folds (`Committed::of` in log order), and:
//!
//! * after every entry, each projection (the whole `ReadModel`, and its
//!   `Flags` on their own) decodes from its snapshot to an equal value that
//!   re-encodes to the same bytes, and the decoded copy, folded over the
//!   rest of the log, ends equal to the original (same bytes again);
//! * every truncation of a snapshot is `Truncated`, and single-byte
//!   corruptions decode to an error or to a value whose encoding is exactly
//!   the corrupted bytes, never a panic.
//!
//! Then seeded random traffic of the same kinds on top (`busy_log`): the
//! read model restored from a snapshot at any entry and folded on is the
//! read model folded from the start, and lists the same flags at any date.

use phb_domain::chain::LogEntry;
use phb_domain::event::{Date, Event};
use phb_domain::projections::flags::FlagCode;
use phb_domain::projections::{Balances, Directory, Holdings, SnapshotError, Statements};
use phb_domain::{Committed, Flags, Money, Projection, ReadModel, SignedEvent};
use phb_proto::v1 as pb;
use phb_sim::cast::{
    self, current_key, event, sign_bytes_with, signing_key, BUDGETS, DAY, GHOST, HOUR, LEDGER_ID,
    MINUTE, ROOT, T0,
};
use phb_sim::writer::{Outcome, Writer};
use prost::Message;
use std::collections::BTreeSet;
use std::fmt::Debug;

// The cast (`phb_sim::cast::ORGS`).
const COMM_A: usize = 1;
const COMM_B: usize = 2;
const PAYROLL: usize = 3;
const TP: usize = 4;
const ACCT: usize = 5;
/// b-tp-2's funds holder ("both").
const TP_2_HOLDER: usize = 6;
// The budgets (`phb_sim::cast::BUDGETS`).
const DP_1: usize = 0; // comm-a, held by acct, payroll
const DP_2: usize = 1; // comm-b, no funds holder
const TP_1: usize = 2; // comm-a, held by tp, payroll
const TP_2: usize = 3; // comm-b, held by both
const N_1: usize = 4; // comm-a, notional
const LATE: usize = 5; // never opened

/// The simulation's writer and a clock.
struct Log {
    w: Writer,
    now: i64,
    next_id: usize,
}

impl Log {
    fn new() -> Log {
        let w = Writer::with(&cast::setup_events(0), T0 - HOUR);
        assert_eq!(w.log.len(), cast::setup_events(0).len(), "setup refused");
        Log {
            w,
            now: T0,
            next_id: 0,
        }
    }

    /// `kind` on budget `b` (none for organisation events) under a fresh
    /// event id, signed by `org` with the key the ledger holds for it.
    fn signed(&mut self, org: usize, b: Option<usize>, kind: pb::event::Kind) -> SignedEvent {
        self.next_id += 1;
        let budget = b.map_or("", |b| BUDGETS[b].id);
        let ev = event(&format!("snap-{}", self.next_id), budget, self.now, kind);
        let key = current_key(&self.w.ledger, org);
        sign_bytes_with(&key, org, ev.encode_to_vec())
    }

    fn send(&mut self, org: usize, b: Option<usize>, kind: pb::event::Kind) -> Outcome {
        let s = self.signed(org, b, kind);
        self.now += MINUTE;
        self.w.try_one(&s, self.now)
    }

    /// Written: its sequence.
    fn ok(&mut self, org: usize, b: Option<usize>, kind: pb::event::Kind) -> u64 {
        match self.send(org, b, kind.clone()) {
            Outcome::Written(seq) => seq,
            o => panic!("{kind:?} by {org} on {b:?}: {o:?}"),
        }
    }

    /// The date events are sent on now.
    fn today(&self) -> Date {
        Date::from_unix_micros(self.now)
    }

    /// Refused, and the refusal recorded.
    fn refused(&mut self, org: usize, b: Option<usize>, kind: pb::event::Kind) {
        match self.send(org, b, kind.clone()) {
            Outcome::Refused {
                duplicate: false, ..
            } => {}
            o => panic!("{kind:?} by {org} on {b:?} not recorded as refused: {o:?}"),
        }
    }
}

fn payment(amount: &str, kind: pb::PayeeKind, payee: &str, category: &str) -> pb::event::Kind {
    pb::event::Kind::Payment(cast::payment(amount, kind as i32, payee, category, "inv"))
}

fn purchase(amount: &str, category: &str) -> pb::event::Kind {
    pb::event::Kind::Purchase(pb::Purchase {
        amount: amount.into(),
        category: category.into(),
        supplier_ref: "shop-1".into(),
        description: "kit".into(),
        receipt_ref: "r-1".into(),
        supplier_sector: pb::Sector::Independent as i32,
    })
}

fn refund(original_sequence: u64, amount: &str) -> pb::event::Kind {
    pb::event::Kind::Refund(pb::Refund {
        original_sequence,
        amount: amount.into(),
    })
}

fn date_kind(k: fn(String) -> pb::event::Kind, d: &str) -> pb::event::Kind {
    k(d.to_string())
}

/// `hours` hours of care from `payee` as a personal assistant (1.00 an hour
/// under the setup's agreements) over `from..=to`.
fn care(hours: u32, payee: &str, from: &str, to: &str, reference: &str) -> pb::event::Kind {
    let kind = pb::PayeeKind::PersonalAssistant as i32;
    let category = cast::PLAN_CATEGORIES[0];
    pb::event::Kind::Payment(pb::Payment {
        amount: format!("{hours}.00"),
        payee_kind: kind,
        payee_ref: payee.into(),
        category: category.into(),
        reference: reference.into(),
        agreement_id: cast::agreement_id(kind, payee, category),
        units: format!("{hours}.00"),
        service_from: from.into(),
        service_to: to.into(),
    })
}

fn cash_purchase(amount: &str, receipt: &str) -> pb::event::Kind {
    pb::event::Kind::Purchase(pb::Purchase {
        amount: amount.into(),
        category: "cash".into(),
        supplier_ref: "market-1".into(),
        description: "cash spending".into(),
        receipt_ref: receipt.into(),
        supplier_sector: pb::Sector::Individual as i32,
    })
}

fn atm(amount: &str) -> pb::event::Kind {
    pb::event::Kind::CardTransaction(pb::CardTransaction {
        card_ref: "card-1".into(),
        merchant_ref: "atm-1".into(),
        mcc: 6011,
        amount: amount.into(),
        channel: pb::CardChannel::Atm as i32,
    })
}

fn flag_reviewed(flag_id: &str, outcome: pb::FlagOutcome, note: &str) -> pb::event::Kind {
    pb::event::Kind::FlagReviewed(pb::FlagReviewed {
        flag_id: flag_id.into(),
        outcome: outcome as i32,
        note: note.into(),
    })
}

fn external_match(kind: pb::MatchKind, reference: &str) -> pb::event::Kind {
    pb::event::Kind::ExternalMatchRecorded(pb::ExternalMatchRecorded {
        source: "nfi".into(),
        kind: kind as i32,
        reference: reference.into(),
    })
}

/// The realistic log: the setup, then the events of the module comment.
fn build_log() -> Writer {
    let mut l = Log::new();
    script(&mut l);
    l.w
}

/// The events of the module comment, after the setup.
fn script(l: &mut Log) {
    use pb::event::Kind as K;
    // Spending on b-dp-1: by its funds holder, its payroll, a card.
    let p1 = l.ok(
        ACCT,
        Some(DP_1),
        payment("100.00", pb::PayeeKind::Provider, "prov:cmht.7", "respite"),
    );
    l.ok(
        PAYROLL,
        Some(DP_1),
        payment(
            "50.00",
            pb::PayeeKind::PersonalAssistant,
            "pa-001",
            "personal_assistant",
        ),
    );
    l.ok(
        ACCT,
        Some(DP_1),
        K::CardTransaction(pb::CardTransaction {
            card_ref: "card-1".into(),
            merchant_ref: "gym-1".into(),
            mcc: 5940,
            amount: "20.00".into(),
            channel: pb::CardChannel::Pos as i32,
        }),
    );
    l.ok(ACCT, Some(DP_1), refund(p1, "30.00"));
    // Refusals: overspend, the wrong signer, no such budget, too big a refund.
    l.refused(
        ACCT,
        Some(DP_1),
        payment("5000.00", pb::PayeeKind::Provider, "prov:cmht.7", "respite"),
    );
    l.refused(
        TP,
        Some(DP_1),
        payment("1.00", pb::PayeeKind::Provider, "prov:cmht.7", "respite"),
    );
    l.refused(ACCT, Some(DP_1), refund(p1, "70.01"));
    l.refused(ACCT, Some(LATE), purchase("1.00", "respite"));
    // b-tp-1: a purchase on the setup plan, then a small second plan whose
    // respite lines and contingency a purchase fills; refunds to each.
    let old = l.ok(TP, Some(TP_1), purchase("75.50", "exercise_wellbeing"));
    let line = |id: &str, category: &str, annual: &str| pb::PlanLine {
        line_id: id.into(),
        category: category.into(),
        annual_amount: annual.into(),
        description: format!("{category} line"),
    };
    l.ok(
        COMM_A,
        Some(TP_1),
        K::CarePlanApproved(pb::CarePlanApproved {
            plan_id: "plan-2".into(),
            lines: vec![
                line("l-pa", "personal_assistant", "10.00"),
                line("l-r1", "respite", "20.00"),
                line("l-r2", "respite", "5.00"),
            ],
            contingency_amount: "100.00".into(),
            valid_from: "2023-12-01".into(),
            valid_to: "2025-03-31".into(),
            review_due: "2024-06-30".into(),
        }),
    );
    let big = l.ok(TP, Some(TP_1), purchase("40.00", "respite"));
    l.ok(TP, Some(TP_1), refund(big, "10.00"));
    l.ok(TP, Some(TP_1), refund(old, "5.50"));
    l.refused(TP, Some(TP_1), purchase("200.00", "respite"));
    // A new agreement with a connected person, weekly.
    l.ok(
        COMM_A,
        Some(DP_1),
        K::ServiceAgreementApproved(pb::ServiceAgreementApproved {
            agreement_id: "agr-weekly".into(),
            payee_ref: "pa-002".into(),
            payee_kind: pb::PayeeKind::PersonalAssistant as i32,
            payee_sector: pb::Sector::Individual as i32,
            category: "personal_assistant".into(),
            unit: pb::Unit::Week as i32,
            rate: "310.25".into(),
            max_units_per_week: 1,
            valid_from: "2023-12-01".into(),
            valid_to: "2024-12-31".into(),
            connected_person: true,
        }),
    );
    // b-n-1 (notional): allocation, review, spending, a hospital stay.
    l.ok(
        COMM_A,
        Some(N_1),
        K::Allocation(pb::Allocation {
            amount: "250.00".into(),
            basis: pb::AllocationBasis::OneOff as i32,
        }),
    );
    l.ok(
        COMM_A,
        Some(N_1),
        K::ReviewAdjustment(pb::ReviewAdjustment {
            delta: "-100.00".into(),
            reason: "review".into(),
        }),
    );
    l.ok(
        COMM_A,
        Some(N_1),
        payment(
            "40.00",
            pb::PayeeKind::PersonalAssistant,
            "pa-001",
            "personal_assistant",
        ),
    );
    l.ok(
        COMM_A,
        Some(N_1),
        date_kind(
            |date| K::HospitalAdmission(pb::HospitalAdmission { date }),
            "2023-12-20",
        ),
    );
    l.ok(
        COMM_A,
        Some(N_1),
        date_kind(
            |date| K::HospitalDischarge(pb::HospitalDischarge { date }),
            "2023-12-28",
        ),
    );
    l.ok(
        COMM_A,
        Some(DP_1),
        K::ReviewRecorded(pb::ReviewRecorded {
            date: "2023-12-15".into(),
            kind: pb::ReviewKind::CareReview as i32,
            outcome: "fine".into(),
        }),
    );
    // A facilitator: registered by root, appointed by the commissioner.
    let ghost = pb::OrganisationRegistered {
        organisation_id: cast::ORGS[GHOST].into(),
        roles: vec![pb::Role::PlanFacilitator as i32, pb::Role::Auditor as i32],
        public_key: signing_key(GHOST, 0).verifying_key().to_bytes().to_vec(),
    };
    l.ok(ROOT, None, K::OrganisationRegistered(ghost));
    l.ok(
        COMM_A,
        Some(N_1),
        K::FacilitatorAppointed(pb::FacilitatorAppointed {
            organisation_id: cast::ORGS[GHOST].into(),
        }),
    );
    // b-tp-2: suspended, resumed, some reclaimed.
    l.ok(
        COMM_B,
        Some(TP_2),
        K::BudgetSuspended(pb::BudgetSuspended {
            reason: "audit".into(),
        }),
    );
    l.refused(TP_2_HOLDER, Some(TP_2), purchase("1.00", "respite"));
    l.ok(COMM_B, Some(TP_2), K::BudgetResumed(pb::BudgetResumed {}));
    l.ok(
        COMM_B,
        Some(TP_2),
        K::Reclaim(pb::Reclaim {
            amount: "100.00".into(),
            ground: pb::ReclaimGround::Surplus as i32,
        }),
    );
    // The payroll provider's key rotates; it pays with the new one.
    l.ok(
        ROOT,
        None,
        K::KeyRotated(pb::KeyRotated {
            organisation_id: cast::ORGS[PAYROLL].into(),
            new_public_key: signing_key(PAYROLL, 1).verifying_key().to_bytes().to_vec(),
        }),
    );
    l.ok(
        PAYROLL,
        Some(TP_1),
        payment(
            "5.00",
            pb::PayeeKind::PersonalAssistant,
            "pa-001",
            "personal_assistant",
        ),
    );
    // b-dp-2: the holder dies, the budget stops; nothing more is written.
    l.ok(
        COMM_B,
        Some(DP_2),
        date_kind(|date| K::HolderDied(pb::HolderDied { date }), "2023-12-30"),
    );
    l.ok(
        COMM_B,
        Some(DP_2),
        K::BudgetStopped(pb::BudgetStopped {
            reason: "died".into(),
        }),
    );
    l.refused(
        COMM_B,
        Some(DP_2),
        K::Allocation(pb::Allocation {
            amount: "1.00".into(),
            basis: pb::AllocationBasis::OneOff as i32,
        }),
    );
    // A failed atomic batch, recorded whole.
    let batch: Vec<_> = ["10.00", "999999.00"]
        .iter()
        .map(|a| l.signed(ACCT, Some(DP_1), purchase(a, "respite")))
        .collect();
    l.now += MINUTE;
    let out = l.w.process(&batch, true, l.now, &mut ());
    assert!(
        out.iter().all(|o| matches!(
            o,
            Outcome::Refused {
                duplicate: false,
                ..
            }
        )),
        "{out:?}"
    );
    // More ordinary traffic after all that.
    l.ok(
        COMM_B,
        Some(TP_2),
        K::Disbursement(pb::Disbursement {
            amount: "300.00".into(),
        }),
    );
    l.ok(
        TP_2_HOLDER,
        Some(TP_2),
        purchase("12.34", "exercise_wellbeing"),
    );
    l.now += DAY;
    l.ok(ACCT, Some(DP_1), purchase("0.01", "respite"));
    flagged_traffic(l);
}

/// Traffic that raises every kind of flag (the module comment), from
/// 2 January 2024.
fn flagged_traffic(l: &mut Log) {
    use pb::event::Kind as K;
    // comm-a's own thresholds; comm-b's multiple is written with two places.
    l.ok(
        COMM_A,
        None,
        K::ControlsConfigured(pb::ControlsConfigured {
            admission_days: 5,
            worker_hours_per_day: 12,
            spike_multiple: "2.5".into(),
            spike_weeks: 2,
            refusals_count: 2,
            refusals_days: 3,
            cash_receipt_days: 20,
            ..Default::default()
        }),
    );
    l.ok(
        COMM_B,
        None,
        K::ControlsConfigured(pb::ControlsConfigured {
            spike_multiple: "3.00".into(),
            surplus_weeks: 4,
            ..Default::default()
        }),
    );
    // Care paid for days 5 to 8 of b-n-1's stay (from 20 December).
    let during_stay = l.ok(
        COMM_A,
        Some(N_1),
        care(6, "pa-001", "2023-12-24", "2023-12-27", "n-1"),
    );
    // A week of 90 hours from one assistant, paid on two budgets.
    l.now += 6 * DAY;
    let rota = care(90, "prov:cmht.7", "2024-01-01", "2024-01-07", "rota-1");
    l.ok(PAYROLL, Some(DP_1), rota.clone());
    l.ok(TP_2_HOLDER, Some(TP_2), rota);
    // 400.00 on b-dp-1 in the week of 15 January: more than 2.5 times its
    // weekly average over the two weeks before.
    l.now += 8 * DAY;
    l.ok(ACCT, Some(DP_1), purchase("400.00", "respite"));
    // Two overspends within three days.
    for _ in 0..2 {
        l.refused(
            ACCT,
            Some(DP_1),
            payment("5000.00", pb::PayeeKind::Provider, "prov:cmht.7", "respite"),
        );
    }
    // Cash: a plan with a cash line, an ATM withdrawal, a purchase without a
    // receipt (and one with).
    let K::CarePlanApproved(mut plan) = cast::plan_kind() else {
        unreachable!("the setup plan is a CarePlanApproved")
    };
    plan.plan_id = "plan-3".into();
    plan.lines.push(pb::PlanLine {
        line_id: "line-cash".into(),
        category: "cash".into(),
        annual_amount: "500.00".into(),
        description: "cash".into(),
    });
    l.ok(COMM_A, Some(DP_1), K::CarePlanApproved(plan));
    l.ok(ACCT, Some(DP_1), atm("30.00"));
    l.ok(ACCT, Some(DP_1), cash_purchase("12.00", ""));
    l.ok(ACCT, Some(DP_1), cash_purchase("8.00", "till-7"));
    // Data matches: payroll on b-dp-1; a death on b-tp-2 not yet recorded.
    l.ok(
        COMM_A,
        Some(DP_1),
        external_match(pb::MatchKind::Payroll, "nfi-1"),
    );
    l.ok(
        COMM_B,
        Some(TP_2),
        external_match(pb::MatchKind::Deceased, "nfi-2"),
    );
    // b-tp-2's holder dies today, and money still moves today.
    let today = l.today().to_string();
    l.ok(
        COMM_B,
        Some(TP_2),
        K::HolderDied(pb::HolderDied {
            date: today.clone(),
        }),
    );
    l.ok(
        COMM_B,
        Some(TP_2),
        K::Disbursement(pb::Disbursement {
            amount: "50.00".into(),
        }),
    );
    // b-dp-1 in hospital since 10 January; care paid for today, day 7.
    l.ok(
        COMM_A,
        Some(DP_1),
        date_kind(
            |date| K::HospitalAdmission(pb::HospitalAdmission { date }),
            "2024-01-10",
        ),
    );
    l.ok(
        PAYROLL,
        Some(DP_1),
        care(3, "pa-001", &today, &today, "day-7"),
    );
    // Reviews: the spike twice (the latest counts), the care during the
    // stay, and a time-based flag.
    let spike = "SPIKE:b-dp-1:2024-01-15";
    let (dismissed, confirmed) = (pb::FlagOutcome::Dismissed, pb::FlagOutcome::Confirmed);
    l.ok(
        COMM_A,
        Some(DP_1),
        flag_reviewed(spike, dismissed, "equipment"),
    );
    l.ok(
        COMM_A,
        Some(DP_1),
        flag_reviewed(spike, confirmed, "not equipment"),
    );
    l.ok(
        COMM_A,
        Some(N_1),
        flag_reviewed(
            &format!("DURING_ADMISSION:b-n-1:{during_stay}"),
            dismissed,
            "support in hospital was agreed",
        ),
    );
    l.ok(
        COMM_A,
        Some(DP_1),
        flag_reviewed("REVIEW_OVERDUE:b-dp-1:care-2024-03-24", confirmed, "late"),
    );
    // Later, comm-a changes its thresholds again; b-tp-1's audit is done.
    l.now += 3 * DAY;
    l.ok(
        COMM_A,
        None,
        K::ControlsConfigured(pb::ControlsConfigured {
            refusals_count: 4,
            worker_hours_per_week: 50,
            ..Default::default()
        }),
    );
    l.ok(
        COMM_A,
        Some(TP_1),
        K::ReviewRecorded(pb::ReviewRecorded {
            date: today,
            kind: pb::ReviewKind::FinancialAudit as i32,
            outcome: "in order".into(),
        }),
    );
}

/// The codes of the flags `read` lists on `on`.
fn codes(read: &ReadModel, on: Date) -> BTreeSet<FlagCode> {
    let head = read.head().sequence;
    let flags = read.flags().list(read.balances(), on, head);
    flags.iter().map(|f| f.code).collect()
}

/// The codes of the flags entries `from..` raised.
fn raised_codes(read: &ReadModel, from: u64) -> BTreeSet<FlagCode> {
    (from..=read.head().sequence)
        .flat_map(|s| read.flags().raised_by(s).map(|f| f.code))
        .collect()
}

/// Every projection, folded side by side as the engine folds.
#[derive(Debug, Clone, PartialEq)]
struct Folds {
    read: ReadModel,
    balances: Balances,
    directory: Directory,
    holdings: Holdings,
    statements: Statements,
}

impl Folds {
    fn new() -> Folds {
        let root = signing_key(ROOT, 0).verifying_key();
        Folds {
            read: ReadModel::new(LEDGER_ID, root),
            balances: Balances::default(),
            directory: Directory::new(root),
            holdings: Holdings::default(),
            statements: Statements::default(),
        }
    }

    fn apply(&mut self, entry: &LogEntry, event: &Event) {
        let c = Committed::of(entry, event);
        self.read.apply(&c);
        self.balances.apply(&c);
        self.directory.apply(&c);
        self.holdings.apply(&c);
        self.statements.apply(&c);
    }
}

/// A snapshot codec: `Projection`'s, or the flags' own (`Flags` is no
/// `Projection`: its fold also reads the balances).
trait Codec: Sized + Debug + PartialEq {
    fn to_bytes(&self) -> Vec<u8>;
    fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError>;
}

macro_rules! projection_codec {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn to_bytes(&self) -> Vec<u8> {
                let mut out = Vec::new();
                Projection::encode(self, &mut out);
                out
            }
            fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
                <$t as Projection>::decode(bytes)
            }
        }
    )*};
}

projection_codec!(ReadModel, Balances, Directory, Holdings, Statements);

impl Codec for Flags {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
    fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        Flags::decode(bytes)
    }
}

fn encode<P: Codec>(p: &P) -> Vec<u8> {
    p.to_bytes()
}

/// `p` decoded from its snapshot: equal, and encoding to the same bytes.
fn round_trip<P: Codec>(p: &P) -> P {
    let bytes = encode(p);
    let decoded = P::from_bytes(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert!(&decoded == p, "decoded differs");
    assert_eq!(encode(&decoded), bytes, "re-encoding differs");
    decoded
}

#[test]
fn every_projection_round_trips_after_every_entry_and_folds_on_alike() {
    let w = build_log();
    let entries: Vec<(&LogEntry, &Event)> = w.log.iter().zip(&w.events).collect();
    let mut f = Folds::new();
    for k in 0..=entries.len() {
        if k > 0 {
            let (e, ev) = entries[k - 1];
            f.apply(e, ev);
        }
        let mut decoded = Folds {
            read: round_trip(&f.read),
            balances: round_trip(&f.balances),
            directory: round_trip(&f.directory),
            holdings: round_trip(&f.holdings),
            statements: round_trip(&f.statements),
        };
        round_trip(f.read.flags());
        // The read model's parts are the projections folded beside it.
        assert_eq!(f.read.balances(), &f.balances);
        assert_eq!(f.read.directory(), &f.directory);
        assert_eq!(f.read.holdings(), &f.holdings);
        assert_eq!(f.read.statements(), &f.statements);
        // The decoded copies fold the rest of the log like the originals.
        let mut original = f.clone();
        for (e, ev) in &entries[k..] {
            original.apply(e, ev);
            decoded.apply(e, ev);
        }
        assert!(decoded == original, "after decoding at entry {k}");
        assert_eq!(encode(&decoded.balances), encode(&original.balances));
        assert_eq!(encode(&decoded.directory), encode(&original.directory));
        assert_eq!(encode(&decoded.holdings), encode(&original.holdings));
        assert_eq!(encode(&decoded.statements), encode(&original.statements));
        assert_eq!(encode(&decoded.read), encode(&original.read));
    }

    // The log exercised what the snapshots hold.
    let b = |i: usize| f.balances.budget(BUDGETS[i].id).expect("opened");
    let tp1 = b(TP_1);
    let plan = tp1.plan.as_ref().expect("a plan");
    assert_eq!(plan.spec.plan_id, "plan-2");
    assert_eq!(
        plan.line_spent[1..],
        [Money::from_pence(2_000), Money::from_pence(500)]
    );
    assert_eq!(plan.contingency_used, Money::from_pence(500));
    let charged_to_old = tp1
        .spendings
        .values()
        .filter(|s| s.charge.0 != plan.approved_at)
        .count();
    assert!(charged_to_old > 0 && tp1.spendings.values().any(|s| s.refunded > Money::ZERO));
    assert!(b(DP_1).agreements.contains_key("agr-weekly"));
    assert!(b(DP_2).stopped && b(DP_2).died_on.is_some());
    assert!(b(N_1).plan_facilitator_id.is_some() && b(N_1).last_review.is_none());
    assert!(b(DP_1).last_review.is_some());
    assert_eq!(
        f.directory.signer_key(cast::ORGS[PAYROLL]),
        Some(&signing_key(PAYROLL, 1).verifying_key())
    );
    let rows = f.statements.rows(BUDGETS[DP_1].id).expect("a statement");
    assert!(rows.iter().any(|r| r.refusal_code.is_some()));
    assert!(rows.iter().any(|r| r.kind == "card_transaction"));
    assert!(f.holdings.budget(BUDGETS[DP_2].id).is_none());
    assert!(f.holdings.budget(BUDGETS[TP_2].id).is_some());

    // Flags of every kind: raised by entries, and derived as of 1 July.
    use FlagCode as C;
    let event_driven = [
        C::DuplicatePayment,
        C::AfterDeath,
        C::DuringAdmission,
        C::OverbookedWorker,
        C::Spike,
        C::RepeatedRefusals,
        C::ExternalMatch,
    ];
    assert_eq!(raised_codes(&f.read, 1), BTreeSet::from(event_driven));
    assert_eq!(codes(&f.read, date(2024, 7, 1)).len(), 10);
    let flags = f.read.flags();
    let review = flags.review("SPIKE:b-dp-1:2024-01-15").expect("reviewed");
    assert_eq!(review.outcome, phb_domain::event::FlagOutcome::Confirmed);
    assert_eq!(flags.controls(cast::ORGS[COMM_A]).refusals_count, 4);
    assert_eq!(flags.controls(cast::ORGS[COMM_B]).surplus_weeks, 4);
}

/// Forgetting statement rows (the server stores each row and then forgets
/// it, `phb-engine`'s rows.rs) changes no figure and no later fold: at
/// every entry the stored rows up to a budget's `forgotten_through` and
/// the resident rows after it are exactly the statement a fold that
/// forgets nothing holds, and the forgetting state round-trips through
/// its snapshot.
#[test]
fn stored_rows_and_resident_rows_are_the_whole_statement() {
    use phb_domain::projections::{decode_statement_row, encode_statement_row, statement_row_key};
    let w = build_log();
    let mut full = Statements::default();
    let mut forgetting = Statements::default();
    let mut stored = std::collections::BTreeMap::new();
    for (k, (e, ev)) in w.log.iter().zip(&w.events).enumerate() {
        let c = Committed::of(e, ev);
        full.apply(&c);
        forgetting.apply(&c);
        if let Some(row) = forgetting.row(&ev.budget_id, e.sequence) {
            let mut v = Vec::new();
            encode_statement_row(row, &mut v);
            assert_eq!(&decode_statement_row(&v).unwrap(), row);
            stored.insert(statement_row_key(&ev.budget_id, e.sequence), v);
        }
        // A watermark that lags, and a budget forgotten on its own.
        if k % 3 == 0 {
            forgetting.forget_all_through(e.sequence.saturating_sub(2));
        } else {
            forgetting.forget(&ev.budget_id, e.sequence);
        }
        let forgetting_decoded = round_trip(&forgetting);
        assert_eq!(
            forgetting_decoded.forgotten_max(),
            forgetting.forgotten_max()
        );
        for b in BUDGETS {
            let (Some(all), Some(through)) = (full.rows(b.id), forgetting.forgotten_through(b.id))
            else {
                assert!(forgetting.rows(b.id).is_none());
                continue;
            };
            let mut whole: Vec<_> = stored
                .range(statement_row_key(b.id, 0)..=statement_row_key(b.id, through))
                .map(|(_, v)| decode_statement_row(v).unwrap())
                .collect();
            whole.extend(forgetting.rows(b.id).unwrap().iter().cloned());
            assert_eq!(
                whole, all,
                "statement of {} after entry {}",
                b.id, e.sequence
            );
            assert_eq!(forgetting.figures(b.id), full.figures(b.id));
        }
    }
    assert!(forgetting.forgotten_max() > 0);
    assert!(forgetting.total_rows() * 4 < full.total_rows());
    // A row stored under a damaged encoding is an error, not a panic.
    let (_, v) = stored.iter().next().unwrap();
    assert!(decode_statement_row(&v[..v.len() - 1]).is_err());
}

fn date(year: u16, month: u8, day: u8) -> Date {
    Date { year, month, day }
}

/// Decodes `bytes` as a `P`: any outcome but a panic; a value only if its
/// encoding is exactly `bytes` (decoding accepts one spelling of a value).
fn decode_any<P: Codec>(bytes: &[u8]) -> Result<P, SnapshotError> {
    let r = P::from_bytes(bytes);
    if let Ok(p) = &r {
        assert_eq!(encode(p), bytes, "a non-canonical snapshot decoded: {p:?}");
    }
    r
}

/// Every truncation of `p`'s snapshot, single-byte corruptions (three masks
/// at every `stride`-th byte) and a byte too many; how many corruptions
/// decoded.
fn hostile<P: Codec>(p: &P, stride: usize) -> usize {
    let bytes = encode(p);
    for n in 0..bytes.len() {
        match decode_any::<P>(&bytes[..n]) {
            Err(SnapshotError::Truncated { .. }) => {}
            other => panic!("{n}-byte prefix of {} decoded as {other:?}", bytes.len()),
        }
    }
    let mut decoded = 0;
    let mut corrupt = bytes.clone();
    for i in (0..bytes.len()).step_by(stride) {
        for mask in [0x01, 0x80, 0xff] {
            corrupt[i] ^= mask;
            decoded += usize::from(decode_any::<P>(&corrupt).is_ok());
            corrupt[i] ^= mask;
        }
    }
    // And a byte past the end (of a snapshot that decodes).
    if P::from_bytes(&bytes).is_ok() {
        let mut longer = bytes;
        longer.push(0);
        assert!(matches!(
            P::from_bytes(&longer),
            Err(SnapshotError::TrailingBytes { count: 1, .. })
        ));
    }
    decoded
}

#[test]
fn truncated_or_corrupt_snapshots_are_errors_never_panics() {
    let w = build_log();
    let mut f = Folds::new();
    let (mut read_model_attacked, mut flags_attacked) = (false, 0);
    for (e, ev) in w.log.iter().zip(&w.events) {
        f.apply(e, ev);
        if f.read.flags().raised_count() == 0 {
            continue;
        }
        // The whole read model once its flags hold something (it is large:
        // its parts alone at the end below).
        if !read_model_attacked {
            hostile(&f.read, 31);
            read_model_attacked = true;
        }
        // The flags on their own as they grow (every byte at the end).
        if e.sequence % 20 == 0 {
            flags_attacked += 1;
            hostile(f.read.flags(), 5);
        }
    }
    assert!(read_model_attacked && flags_attacked >= 3);
    let survived = hostile(f.read.flags(), 1)
        + hostile(&f.balances, 3)
        + hostile(&f.directory, 1)
        + hostile(&f.holdings, 1)
        + hostile(&f.statements, 3);
    // Some corruptions hit free bytes (a figure, a sequence, a letter of an
    // id) and decode to another valid value; many do not.
    assert!(survived > 0);

    // A snapshot of one projection is not another's.
    let bytes = encode(&f.balances);
    assert!(matches!(
        Statements::decode(&bytes),
        Err(SnapshotError::BadTag { .. })
    ));
    assert!(matches!(
        Flags::decode(&bytes),
        Err(SnapshotError::BadTag { .. })
    ));
    // A future version is refused, not guessed at.
    let mut future = bytes.clone();
    future[4] = 2;
    assert!(matches!(
        Balances::decode(&future),
        Err(SnapshotError::BadVersion {
            expected: 1,
            found: 2,
            ..
        })
    ));
    let mut flags = encode(f.read.flags());
    assert_eq!(flags[..8], *b"FLGS\x01\0\0\0");
    flags[4] = 2;
    assert!(matches!(
        Flags::decode(&flags),
        Err(SnapshotError::BadVersion {
            expected: 1,
            found: 2,
            ..
        })
    ));
    // A read model of version 2 (one byte for its flags) is refused.
    let mut old = encode(&f.read);
    assert_eq!(old[..8], *b"RDMD\x03\0\0\0");
    old[4] = 2;
    assert!(matches!(
        ReadModel::decode(&old),
        Err(SnapshotError::BadVersion {
            expected: 3,
            found: 2,
            ..
        })
    ));
    // A hostile count is refused before anything is allocated for it.
    let mut huge = bytes[..8].to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Balances::decode(&huge),
        Err(SnapshotError::Truncated { .. })
    ));
}

/// A small deterministic generator (xorshift64*), so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// 0 (the default) or a value from `from..=to`.
    fn setting(&mut self, from: u32, to: u32) -> u32 {
        if self.below(3) == 0 {
            0
        } else {
            from + self.below(u64::from(to - from + 1)) as u32
        }
    }
}

/// `script`'s log, then `ops` random events of the kinds that raise flags,
/// on the budgets that still spend, with time passing (any event may be
/// refused, and most refusals are recorded); and the first entry of the
/// random part.
fn busy_log(seed: u64, ops: usize) -> (Writer, u64) {
    use pb::event::Kind as K;
    let mut l = Log::new();
    script(&mut l);
    let random_from = l.w.log.len() as u64 + 1;
    let root = signing_key(ROOT, 0).verifying_key();
    // The flags so far, to review some of them.
    let mut view = ReadModel::new(LEDGER_ID, root);
    let mut rng = Rng(seed);
    let budgets = [DP_1, TP_1, TP_2, N_1];
    for _ in 0..ops {
        for i in view.head().sequence as usize..l.w.log.len() {
            view.apply(&Committed::of(&l.w.log[i], &l.w.events[i]));
        }
        let mut b = *rng.pick(&budgets);
        let today = l.today();
        let ago = |days: u64| Date::from_days(today.days() - days as i64).to_string();
        let commissioner = cast::commissioner(&l.w.ledger, b);
        let kind = match rng.below(100) {
            0..=19 => {
                l.now += HOUR * (1 + rng.below(120)) as i64;
                continue;
            }
            20..=39 => {
                let end = rng.below(3);
                let start = end + rng.below(7);
                let payee = rng.pick(&cast::AGREED_PAYEES);
                let hours = 1 + rng.below(24) as u32;
                let reference = rng.pick(&["", "r-1", "r-2", "r-3"]);
                let payer = cast::payer(&l.w.ledger, b, rng.below(2) == 0);
                l.send(
                    payer,
                    Some(b),
                    care(hours, payee, &ago(start), &ago(end), reference),
                );
                continue;
            }
            40..=51 => {
                let amount = rng.pick(&["25.00", "40.00", "60.00"]);
                let payee = rng.pick(&cast::AGREED_PAYEES);
                let reference = rng.pick(&["", "inv-1", "inv-2"]);
                let kind = pb::PayeeKind::Provider as i32;
                let p = cast::payment(amount, kind, payee, "respite", reference);
                let payer = cast::payer(&l.w.ledger, b, false);
                l.send(payer, Some(b), K::Payment(p));
                continue;
            }
            52..=63 => {
                let purchaser = cast::purchaser(&l.w.ledger, b);
                let kind = K::Purchase(pb::Purchase {
                    amount: rng.pick(&["5.00", "20.00", "150.00", "600.00"]).to_string(),
                    category: rng
                        .pick(&["respite", "exercise_wellbeing", "cash"])
                        .to_string(),
                    supplier_ref: "shop-2".into(),
                    description: "things".into(),
                    receipt_ref: rng.pick(&["", "r-9", "r-10"]).to_string(),
                    supplier_sector: pb::Sector::Independent as i32,
                });
                l.send(purchaser, Some(b), kind);
                continue;
            }
            64..=69 => {
                let payer = cast::payer(&l.w.ledger, b, false);
                let kind = pb::PayeeKind::Provider;
                l.send(
                    payer,
                    Some(b),
                    payment("99999.00", kind, "prov:cmht.7", "respite"),
                );
                continue;
            }
            70..=74 => {
                let amount = "500.00".to_string();
                let basis = pb::AllocationBasis::OneOff as i32;
                let allocation = K::Allocation(pb::Allocation {
                    amount: amount.clone(),
                    basis,
                });
                l.send(commissioner, Some(b), allocation);
                if b == N_1 {
                    continue;
                }
                K::Disbursement(pb::Disbursement { amount })
            }
            75..=79 => {
                let in_hospital =
                    l.w.ledger
                        .budget(BUDGETS[b].id)
                        .is_some_and(|x| x.in_hospital_since.is_some());
                if in_hospital {
                    K::HospitalDischarge(pb::HospitalDischarge {
                        date: today.to_string(),
                    })
                } else {
                    K::HospitalAdmission(pb::HospitalAdmission {
                        date: ago(rng.below(10)),
                    })
                }
            }
            80..=84 => {
                let kind = *rng.pick(&[pb::ReviewKind::CareReview, pb::ReviewKind::FinancialAudit]);
                K::ReviewRecorded(pb::ReviewRecorded {
                    date: ago(rng.below(30)),
                    kind: kind as i32,
                    outcome: "seen".into(),
                })
            }
            85..=88 => {
                let controls = pb::ControlsConfigured {
                    surplus_weeks: rng.setting(1, 10),
                    surplus_mute_weeks: rng.setting(1, 12),
                    admission_days: rng.setting(1, 30),
                    worker_hours_per_week: rng.setting(30, 80),
                    worker_hours_per_day: rng.setting(8, 24),
                    spike_multiple: rng.pick(&["", "1.5", "2", "2.25", "4.00"]).to_string(),
                    spike_weeks: rng.setting(1, 6),
                    cash_receipt_days: rng.setting(5, 40),
                    first_review_weeks: rng.setting(2, 12),
                    review_interval_months: rng.setting(1, 12),
                    refusals_count: rng.setting(2, 5),
                    refusals_days: rng.setting(1, 10),
                };
                let org = *rng.pick(&[COMM_A, COMM_B]);
                l.send(org, None, K::ControlsConfigured(controls));
                continue;
            }
            89..=92 => {
                let head = view.head().sequence;
                let listed = view.flags().list(view.balances(), today, head);
                if listed.is_empty() {
                    continue;
                }
                let f = &listed[rng.below(listed.len() as u64) as usize];
                b = BUDGETS
                    .iter()
                    .position(|x| x.id == f.budget_id)
                    .expect("a cast budget");
                let outcome = *rng.pick(&[pb::FlagOutcome::Confirmed, pb::FlagOutcome::Dismissed]);
                let reviewer = cast::commissioner(&l.w.ledger, b);
                l.send(reviewer, Some(b), flag_reviewed(&f.id, outcome, "looked"));
                continue;
            }
            93..=96 => {
                let kind = *rng.pick(&[
                    pb::MatchKind::Deceased,
                    pb::MatchKind::Payroll,
                    pb::MatchKind::Other,
                ]);
                external_match(kind, "nfi-9")
            }
            _ => {
                let amount = *rng.pick(&["10.00", "40.00"]);
                l.send(ACCT, Some(DP_1), atm(amount));
                continue;
            }
        };
        l.send(commissioner, Some(b), kind);
    }
    (l.w, random_from)
}

#[test]
fn a_read_model_restored_at_any_entry_and_folded_on_is_the_full_fold() {
    let root = signing_key(ROOT, 0).verifying_key();
    let dates = [date(2024, 2, 1), date(2024, 7, 1), date(2025, 3, 31)];
    for seed in [0x5eed_0001_u64, 0x5eed_0002, 0x5eed_0003] {
        let (w, random_from) = busy_log(seed, 150);
        let entries: Vec<(&LogEntry, &Event)> = w.log.iter().zip(&w.events).collect();
        let mut full = ReadModel::new(LEDGER_ID, root);
        for (e, ev) in &entries {
            full.apply(&Committed::of(e, ev));
        }
        // Not vacuous: the random part raised flags of several kinds on its
        // own, and every kind holds as of July.
        let random = raised_codes(&full, random_from);
        assert!(
            random.len() >= 5,
            "seed {seed:#x}: the random traffic raised only {random:?}"
        );
        assert_eq!(codes(&full, dates[1]).len(), 10, "seed {seed:#x}");
        let head = full.head().sequence;
        let lists: Vec<_> = dates
            .iter()
            .map(|on| full.flags().list(full.balances(), *on, head))
            .collect();
        let mut prefix = ReadModel::new(LEDGER_ID, root);
        for s in 0..=entries.len() {
            if s > 0 {
                let (e, ev) = entries[s - 1];
                prefix.apply(&Committed::of(e, ev));
            }
            let mut restored = round_trip(&prefix);
            for (e, ev) in &entries[s..] {
                restored.apply(&Committed::of(e, ev));
            }
            assert!(restored == full, "seed {seed:#x}: snapshot at {s}");
            for (on, list) in dates.iter().zip(&lists) {
                let listed = restored.flags().list(restored.balances(), *on, head);
                assert_eq!(&listed, list, "seed {seed:#x}: snapshot at {s}, as of {on}");
            }
        }
    }
}
