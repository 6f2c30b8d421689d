//! Property tests of the pure core.
//!
//! The cast of `phb_sim::cast` (the root key, commissioners, payroll
//! providers, third parties, an account provider and one organisation
//! nobody registered), each with real ed25519 keys, submits random sequences
//! of every kind of event: signed by the right or the wrong organisation,
//! with the right, a stale, a corrupted or a truncated signature, with valid
//! and invalid amounts, ids, texts and times, singly or in atomic batches.
//! The generator (proptest strategies of `Op`s below) is this file's own;
//! what happens to a signed event is the shared simulation model,
//! `phb_sim`, which the fuzz targets drive too: its writer drives `Ledger`
//! exactly as `phb-engine`'s writer does (`Ledger::admit`: decode →
//! duplicate check → `authenticate` → (signer, event id) unused → `decide` →
//! `apply` as the next entry, a refusal by the rules as a refusal entry; an
//! atomic request rolls back its own entries on the first refusal and, if
//! that refusal was a decision of the rules, records every event of the
//! request as refused with `Ledger::admit_failed_batch`), with its own index of
//! (signer, event id) → (sequence, digest, refusal) standing in for the
//! store's, and its checks (`phb_sim::check`) run after every event:
//!
//! * figures are never negative, `paid_in <= allocated` and
//!   `spent <= paid_in` (non-notional), `spent <= allocated`, every figure
//!   prints with exactly two decimals, and the figures equal an independent
//!   integer-pence model of the applied events;
//! * a written event was allowed by the authorisation rules as restated in
//!   `phb_sim::check::check_authorised`, and its amount is the grammar's
//!   reading of the signed string;
//! * a refused event changes no budget, organisation or key, and moves the
//!   head by exactly one when (and only when) its refusal is recorded, which
//!   only decisions of the rules are; a duplicate changes nothing; a
//!   resubmission of a recorded refusal gets that refusal again;
//! * an event id is used once per signer, and another signer's use of it
//!   does not matter;
//! * a stopped budget never changes again;
//! * every event written or recorded, sent again at once, is answered the
//!   same way and changes nothing;
//! * an atomic batch is all or nothing on budgets and organisations, fails
//!   where its events one by one first fail (checked here), and when it
//!   succeeds equals sequential application (checked here);
//! * replaying the whole log (refusal entries included) into a fresh ledger
//!   gives the same state after every prefix, rolling back any suffix
//!   restores the earlier state, and every recorded refusal is still final
//!   at the end.
//!
//! Targeted tests at the end replay issue 6's defects 6 and 7.
//!
//! `PROPTEST_CASES=5000 cargo test -p phb-domain --test properties --release`
//! runs a longer search.

use ed25519_dalek::Signer;
use phb_domain::money::{parse_nonzero_delta, parse_positive, Money};
use phb_domain::{Budget, Ledger, RejectCode, SignedEvent};
use phb_proto::v1 as pb;
use phb_sim::amount::{canonical, figure_pence, grammar_pence};
use phb_sim::cast::{
    self, signing_key, BUDGETS, DAY, GHOST, HOUR, KEYS_PER_ORG, LEDGER_ID, ORGS, ROOT,
};
use phb_sim::check::{replay, Sim};
use phb_sim::state::{snapshot, Snapshot};
use phb_sim::writer::{aborted_by, Outcome};
use proptest::prelude::*;
use prost::Message;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------
// What the generator picks from (the cast is `phb_sim::cast`)
// ---------------------------------------------------------------------------

/// The budgets the setup opens: all but the last, which only random
/// BudgetOpened events may open.
const OPENED: usize = BUDGETS.len() - 1;

const DATES: [(&str, &str); 6] = [
    ("2024-04-01", "2025-03-31"),
    ("2024-04-01", "2024-04-01"),
    ("2000-02-29", "2199-12-31"),
    ("2025-03-31", "2024-04-01"), // ends before it starts
    ("2023-02-29", "2024-01-01"), // no such day
    ("24-04-01", "2025-03-31"),   // not YYYY-MM-DD
];
const CATEGORIES: [&str; 7] = [
    "personal_assistant",
    "respite",
    "exercise_wellbeing",
    "Bad Cat",
    "",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", // 65
    "gambling", // excluded outright: a recorded refusal
];
const REFS: [&str; 4] = ["pa-001", "prov:cmht.7", "bad ref!", ""];
const TEXTS: [&str; 11] = [
    "annual review",
    "moved to cluster costs",
    "naïve ünïcode ✓ \u{1F469}\u{200D}\u{1F4BB}",
    "",
    "   ",
    "tab\there",
    "bell\u{7}",
    // Blank: invisible characters are not content.
    "\u{200B}\u{3164}",
    "\u{FEFF}",
    // Hidden text in tag characters.
    "chair\u{E0048}\u{E0049}",
    "\u{1F600}\u{FE01}\u{FE02}\u{FE03}",
];
const BAD_IDS: [&str; 4] = [
    "",
    "has space",
    "é",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // 129
];
const BAD_AMOUNTS: [&str; 20] = [
    "1e3",
    "0.001",
    "-5",
    "",
    "NaN",
    "0",
    "0.00",
    " 5",
    "5 ",
    "+5",
    "1,000",
    "١٢",
    "1000000000.01",
    "99999999999999999999",
    "1.",
    ".5",
    "-0.01",
    "5.5.5",
    "0x10",
    "inf",
];

// ---------------------------------------------------------------------------
// What the generator produces
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum KeyChoice {
    Seed(usize),
    /// A small-order point: must be refused.
    Weak,
    /// 31 bytes: must be refused.
    WrongLength,
    /// The root's public key, registered for an organisation.
    RootKey,
}

#[derive(Debug, Clone)]
enum Op {
    Register {
        org: usize,
        roles: Vec<i32>,
        key: KeyChoice,
    },
    Rotate {
        org: usize,
        key: KeyChoice,
    },
    Open {
        budget: usize,
        /// Use the budget's configured shape; else the fields below.
        natural: bool,
        commissioner: usize,
        management: i32,
        funds_holder: Option<usize>,
        payroll: Option<usize>,
        dates: usize,
    },
    Allocate {
        budget: usize,
        amount: String,
        basis: i32,
    },
    Disburse {
        budget: usize,
        amount: String,
    },
    Pay {
        budget: usize,
        amount: String,
        payee_kind: i32,
        payee: usize,
        category: usize,
        reference: usize,
        via_payroll: bool,
    },
    Purchase {
        budget: usize,
        amount: String,
        category: usize,
        supplier: usize,
        description: usize,
    },
    Review {
        budget: usize,
        delta: String,
        reason: usize,
    },
    Stop {
        budget: usize,
        reason: usize,
    },
    /// The setup care plan (`cast::plan_kind`): approved again, it starts
    /// its lines afresh.
    Plan {
        budget: usize,
    },
    /// Setup agreement `index` of `cast::agreement_kinds` (again: refused,
    /// the id exists).
    Agree {
        budget: usize,
        index: usize,
    },
    /// Random bytes as the event.
    Garbage(Vec<u8>),
    /// A byte of an earlier submission's event changed, then re-signed.
    Mutate {
        of: usize,
        pos: usize,
        xor: u8,
    },
    /// An earlier submission, verbatim.
    Resubmit(usize),
}

#[derive(Debug, Clone)]
enum Who {
    /// Whoever should sign this event.
    Natural,
    /// Some member of the cast.
    Cast(usize),
}

#[derive(Debug, Clone)]
enum Sig {
    /// The signer's current key.
    Current,
    /// A particular key (usually the wrong one).
    Key(usize, usize),
    /// The right signature with one bit flipped.
    Flipped(usize),
    /// 63 bytes.
    Short,
    /// Signed, then the event bytes were changed.
    Tampered,
}

#[derive(Debug, Clone)]
enum EventIdChoice {
    Fresh,
    Reuse(usize),
    Invalid(usize),
    /// A particular id (the targeted tests only).
    Named(&'static str),
}

#[derive(Debug, Clone)]
enum When {
    Past(i64),
    Ahead23h,
    Ahead25h,
    Before2000,
    BadNanos,
    Missing,
}

#[derive(Debug, Clone)]
struct Step {
    op: Op,
    who: Who,
    sig: Sig,
    id: EventIdChoice,
    when: When,
    right_ledger: bool,
}

#[derive(Debug, Clone)]
struct Batch {
    atomic: bool,
    /// How far the server clock moves before this request (may go back).
    advance: i64,
    steps: Vec<Step>,
}

/// A positive amount as a client would usually write it.
fn pence_str(p: i64) -> String {
    canonical(p)
}

fn valid_amount(max_pence: i64) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (1..=max_pence).prop_map(pence_str),
        1 => (1..=max_pence / 100).prop_map(|p| p.to_string()),
        1 => (1..=max_pence / 10).prop_map(|d| format!("{}.{}", d / 10, d % 10)),
        1 => (1..=max_pence).prop_map(|p| format!("00{}", pence_str(p))),
        1 => Just("0.01".to_string()),
    ]
}

fn amount(max_pence: i64) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => valid_amount(max_pence),
        1 => Just("1000000000.00".to_string()),
        2 => prop::sample::select(&BAD_AMOUNTS[..]).prop_map(String::from),
    ]
}

fn delta() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => (any::<bool>(), valid_amount(800_000))
            .prop_map(|(neg, s)| if neg { format!("-{s}") } else { s }),
        1 => prop::sample::select(&["0", "-0.00", "--5", "", "-", "-1e2", "-0.001"][..])
            .prop_map(String::from),
    ]
}

fn key_choice() -> impl Strategy<Value = KeyChoice> {
    prop_oneof![
        8 => (0..KEYS_PER_ORG).prop_map(KeyChoice::Seed),
        1 => Just(KeyChoice::Weak),
        1 => Just(KeyChoice::WrongLength),
        1 => Just(KeyChoice::RootKey),
    ]
}

fn budget_ix() -> impl Strategy<Value = usize> {
    0..BUDGETS.len()
}

/// Usually an index below `valid` (the valid choices come first in each
/// table), sometimes any index below `all`.
fn mostly(valid: usize, all: usize) -> impl Strategy<Value = usize> {
    prop_oneof![12 => 0..valid, 1 => 0..all]
}

fn mostly_i32(
    valid: std::ops::Range<i32>,
    all: std::ops::Range<i32>,
) -> impl Strategy<Value = i32> {
    prop_oneof![12 => valid, 1 => all]
}

fn roles() -> impl Strategy<Value = Vec<i32>> {
    prop_oneof![
        4 => prop::sample::subsequence(vec![1, 2, 3, 4, 5], 1..=3),
        1 => prop::collection::vec(0..7i32, 0..4),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..ORGS.len(), roles(), key_choice())
            .prop_map(|(org, roles, key)| Op::Register { org, roles, key }),
        1 => (0..ORGS.len(), key_choice()).prop_map(|(org, key)| Op::Rotate { org, key }),
        2 => (
            budget_ix(),
            prop::bool::weighted(0.6),
            0..ORGS.len(),
            mostly_i32(1..4, 0..5),
            prop::option::of(0..ORGS.len()),
            prop::option::of(0..ORGS.len()),
            mostly(3, DATES.len()),
        )
            .prop_map(
                |(budget, natural, commissioner, management, funds_holder, payroll, dates)| {
                    Op::Open {
                        budget,
                        natural,
                        commissioner,
                        management,
                        funds_holder,
                        payroll,
                        dates,
                    }
                }
            ),
        3 => (budget_ix(), amount(2_000_000), mostly_i32(1..5, 0..6))
            .prop_map(|(budget, amount, basis)| Op::Allocate { budget, amount, basis }),
        4 => (budget_ix(), amount(1_000_000))
            .prop_map(|(budget, amount)| Op::Disburse { budget, amount }),
        7 => (
            budget_ix(),
            amount(500_000),
            mostly_i32(1..3, 0..3),
            mostly(2, REFS.len()),
            mostly(3, CATEGORIES.len()),
            mostly(4, TEXTS.len()),
            any::<bool>(),
        )
            .prop_map(
                |(budget, amount, payee_kind, payee, category, reference, via_payroll)| Op::Pay {
                    budget,
                    amount,
                    payee_kind,
                    payee,
                    category,
                    reference,
                    via_payroll,
                }
            ),
        6 => (
            budget_ix(),
            amount(500_000),
            mostly(3, CATEGORIES.len()),
            mostly(2, REFS.len()),
            mostly(4, TEXTS.len()),
        )
            .prop_map(|(budget, amount, category, supplier, description)| Op::Purchase {
                budget,
                amount,
                category,
                supplier,
                description,
            }),
        3 => (budget_ix(), delta(), mostly(3, TEXTS.len()))
            .prop_map(|(budget, delta, reason)| Op::Review { budget, delta, reason }),
        1 => (budget_ix(), mostly(3, TEXTS.len())).prop_map(|(budget, reason)| Op::Stop { budget, reason }),
        1 => budget_ix().prop_map(|budget| Op::Plan { budget }),
        1 => (budget_ix(), 0..cast::agreement_kinds().len())
            .prop_map(|(budget, index)| Op::Agree { budget, index }),
        1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(Op::Garbage),
        1 => (any::<usize>(), any::<usize>(), 1..=255u8)
            .prop_map(|(of, pos, xor)| Op::Mutate { of, pos, xor }),
        1 => any::<usize>().prop_map(Op::Resubmit),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let who = prop_oneof![
        8 => Just(Who::Natural),
        2 => (0..ORGS.len()).prop_map(Who::Cast),
    ];
    let sig = prop_oneof![
        16 => Just(Sig::Current),
        1 => (0..ORGS.len(), 0..KEYS_PER_ORG).prop_map(|(o, k)| Sig::Key(o, k)),
        1 => (0..512usize).prop_map(Sig::Flipped),
        1 => Just(Sig::Short),
        1 => Just(Sig::Tampered),
    ];
    let id = prop_oneof![
        24 => Just(EventIdChoice::Fresh),
        1 => any::<usize>().prop_map(EventIdChoice::Reuse),
        1 => (0..BAD_IDS.len()).prop_map(EventIdChoice::Invalid),
    ];
    let when = prop_oneof![
        60 => (0..30 * DAY).prop_map(When::Past),
        1 => Just(When::Ahead23h),
        1 => Just(When::Ahead25h),
        1 => Just(When::Before2000),
        1 => Just(When::BadNanos),
        1 => Just(When::Missing),
    ];
    (op(), who, sig, id, when, prop::bool::weighted(0.99)).prop_map(
        |(op, who, sig, id, when, right_ledger)| Step {
            op,
            who,
            sig,
            id,
            when,
            right_ledger,
        },
    )
}

fn batch() -> impl Strategy<Value = Batch> {
    let advance = prop_oneof![
        6 => 0..60_000_000i64,
        2 => 0..30 * DAY,
        1 => -5_000_000..0i64,
    ];
    let steps = prop_oneof![
        3 => prop::collection::vec(step(), 1..=1),
        1 => prop::collection::vec(step(), 2..=4),
    ];
    let random =
        (prop::bool::weighted(0.25), advance, steps).prop_map(|(atomic, advance, steps)| Batch {
            atomic,
            advance,
            steps,
        });
    prop_oneof![4 => random, 1 => coherent_batch()]
}

/// A plausible request: valid events on one budget, signed by whoever
/// should sign them (these mostly succeed, so atomic batches do too).
fn coherent_batch() -> impl Strategy<Value = Batch> {
    let op = |budget: usize| {
        prop_oneof![
            2 => (valid_amount(300_000), 1..5i32)
                .prop_map(move |(amount, basis)| Op::Allocate { budget, amount, basis }),
            2 => valid_amount(200_000).prop_map(move |amount| Op::Disburse { budget, amount }),
            3 => (valid_amount(100_000), 1..3i32, 0..2usize, 0..3usize, any::<bool>()).prop_map(
                move |(amount, payee_kind, payee, category, via_payroll)| Op::Pay {
                    budget,
                    amount,
                    payee_kind,
                    payee,
                    category,
                    reference: 0,
                    via_payroll,
                }
            ),
            2 => (valid_amount(100_000), 0..3usize).prop_map(move |(amount, category)| {
                Op::Purchase {
                    budget,
                    amount,
                    category,
                    supplier: 0,
                    description: 0,
                }
            }),
            1 => (any::<bool>(), valid_amount(100_000)).prop_map(move |(neg, d)| Op::Review {
                budget,
                delta: if neg { format!("-{d}") } else { d },
                reason: 0,
            }),
        ]
    };
    (0..OPENED, any::<bool>(), 0..60_000_000i64).prop_flat_map(move |(budget, atomic, advance)| {
        prop::collection::vec(op(budget), 1..=4).prop_map(move |ops| Batch {
            atomic,
            advance,
            steps: ops
                .into_iter()
                .map(|op| Step {
                    op,
                    who: Who::Natural,
                    sig: Sig::Current,
                    id: EventIdChoice::Fresh,
                    when: When::Past(0),
                    right_ledger: true,
                })
                .collect(),
        })
    })
}

/// Registers the cast (but the ghost), opens the budgets but the last,
/// allocates each and disburses the first four (not notional): each setup
/// event is included unless its mask bit is false.
fn setup(mask: &[bool], alloc: &[i64], disb: &[i64]) -> Vec<Batch> {
    let natural = |op| Step {
        op,
        who: Who::Natural,
        sig: Sig::Current,
        id: EventIdChoice::Fresh,
        when: When::Past(0),
        right_ledger: true,
    };
    let mut ops = Vec::new();
    for org in 1..GHOST {
        ops.push(Op::Register {
            org,
            roles: cast::roles(org).iter().map(|r| *r as i32).collect(),
            key: KeyChoice::Seed(0),
        });
    }
    for budget in 0..OPENED {
        ops.push(Op::Open {
            budget,
            natural: true,
            commissioner: 0,
            management: 0,
            funds_holder: None,
            payroll: None,
            dates: 0,
        });
    }
    for budget in 0..OPENED {
        ops.push(Op::Plan { budget });
        for index in 0..cast::agreement_kinds().len() {
            ops.push(Op::Agree { budget, index });
        }
    }
    for (budget, &pence) in alloc.iter().enumerate().take(OPENED) {
        ops.push(Op::Allocate {
            budget,
            amount: pence_str(pence),
            basis: 2,
        });
    }
    for (budget, &pence) in disb.iter().enumerate().take(4) {
        ops.push(Op::Disburse {
            budget,
            amount: pence_str(pence),
        });
    }
    ops.into_iter()
        .zip(mask.iter().chain(std::iter::repeat(&true)))
        .filter(|(_, keep)| **keep)
        .map(|(op, _)| Batch {
            atomic: false,
            advance: 1_000_000,
            steps: vec![natural(op)],
        })
        .collect()
}

fn scenario() -> impl Strategy<Value = Vec<Batch>> {
    (
        prop::collection::vec(prop::bool::weighted(0.95), 24),
        prop::collection::vec(100_000..2_000_000i64, 6),
        prop::collection::vec(50_000..1_500_000i64, 4),
        prop::collection::vec(batch(), 1..40),
    )
        .prop_map(|(mask, alloc, disb, rest)| {
            let mut all = setup(&mask, &alloc, &disb);
            all.extend(rest);
            all
        })
}

// ---------------------------------------------------------------------------
// The harness: a client that builds requests, and the shared model
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Harness {
    /// The writer and its checks.
    sim: Sim,
    /// Every submission, for Resubmit and Mutate.
    submitted: Vec<SignedEvent>,
    used_ids: Vec<String>,
    now: i64,
    counter: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            sim: Sim::new(),
            submitted: Vec::new(),
            used_ids: Vec::new(),
            now: cast::T0,
            counter: 0,
        }
    }

    fn ledger(&self) -> &Ledger {
        self.sim.ledger()
    }

    fn natural_signer(&self, op: &Op) -> usize {
        let l = self.ledger();
        match op {
            Op::Register { .. } | Op::Rotate { .. } | Op::Garbage(_) => ROOT,
            Op::Mutate { .. } | Op::Resubmit(_) => ROOT,
            Op::Open {
                budget,
                natural,
                commissioner,
                ..
            } => {
                if *natural {
                    BUDGETS[*budget].commissioner
                } else {
                    *commissioner
                }
            }
            Op::Allocate { budget, .. }
            | Op::Disburse { budget, .. }
            | Op::Review { budget, .. }
            | Op::Stop { budget, .. }
            | Op::Plan { budget }
            | Op::Agree { budget, .. } => cast::commissioner(l, *budget),
            Op::Pay {
                budget,
                via_payroll,
                ..
            } => cast::payer(l, *budget, *via_payroll),
            Op::Purchase { budget, .. } => cast::purchaser(l, *budget),
        }
    }

    fn public_key(choice: &KeyChoice, org: usize) -> Vec<u8> {
        match choice {
            KeyChoice::Seed(k) => signing_key(org, *k).verifying_key().to_bytes().to_vec(),
            KeyChoice::Weak => {
                let mut identity = vec![0u8; 32];
                identity[0] = 1;
                identity
            }
            KeyChoice::WrongLength => vec![7u8; 31],
            KeyChoice::RootKey => signing_key(ROOT, 0).verifying_key().to_bytes().to_vec(),
        }
    }

    /// The event bytes a client would send for `step`.
    fn event_bytes(&mut self, step: &Step, now: i64) -> Vec<u8> {
        use pb::event::Kind as K;
        let event_id = match &step.id {
            EventIdChoice::Fresh => {
                self.counter += 1;
                format!("ev-{}", self.counter)
            }
            EventIdChoice::Reuse(i) if !self.used_ids.is_empty() => {
                self.used_ids[i % self.used_ids.len()].clone()
            }
            EventIdChoice::Reuse(_) => "ev-0".to_string(),
            EventIdChoice::Invalid(i) => BAD_IDS[*i].to_string(),
            EventIdChoice::Named(id) => id.to_string(),
        };
        self.used_ids.push(event_id.clone());
        let (budget_id, kind) = match &step.op {
            Op::Register { org, roles, key } => (
                String::new(),
                K::OrganisationRegistered(pb::OrganisationRegistered {
                    organisation_id: ORGS[*org].to_string(),
                    roles: roles.clone(),
                    public_key: Self::public_key(key, *org),
                }),
            ),
            Op::Rotate { org, key } => (
                String::new(),
                K::KeyRotated(pb::KeyRotated {
                    organisation_id: ORGS[*org].to_string(),
                    new_public_key: Self::public_key(key, *org),
                }),
            ),
            Op::Open {
                budget,
                natural,
                commissioner,
                management,
                funds_holder,
                payroll,
                dates,
            } => {
                let cfg = &BUDGETS[*budget];
                let name = |o: Option<usize>| o.map(|o| ORGS[o].to_string()).unwrap_or_default();
                let opened = if *natural {
                    pb::BudgetOpened {
                        holder_ref: format!("holder-{budget}"),
                        commissioner_id: ORGS[cfg.commissioner].to_string(),
                        period_start: DATES[0].0.to_string(),
                        period_end: DATES[0].1.to_string(),
                        management: cfg.management as i32,
                        funds_holder_id: name(cfg.funds_holder),
                        payroll_provider_id: name(cfg.payroll),
                        plan_facilitator_id: String::new(),
                        ..Default::default()
                    }
                } else {
                    pb::BudgetOpened {
                        holder_ref: format!("holder-x{budget}"),
                        commissioner_id: ORGS[*commissioner].to_string(),
                        period_start: DATES[*dates].0.to_string(),
                        period_end: DATES[*dates].1.to_string(),
                        management: *management,
                        funds_holder_id: name(*funds_holder),
                        payroll_provider_id: name(*payroll),
                        plan_facilitator_id: String::new(),
                        ..Default::default()
                    }
                };
                (cfg.id.to_string(), K::BudgetOpened(opened))
            }
            Op::Allocate {
                budget,
                amount,
                basis,
            } => (
                BUDGETS[*budget].id.to_string(),
                K::Allocation(pb::Allocation {
                    amount: amount.clone(),
                    basis: *basis,
                }),
            ),
            Op::Disburse { budget, amount } => (
                BUDGETS[*budget].id.to_string(),
                K::Disbursement(pb::Disbursement {
                    amount: amount.clone(),
                }),
            ),
            Op::Pay {
                budget,
                amount,
                payee_kind,
                payee,
                category,
                reference,
                ..
            } => (
                BUDGETS[*budget].id.to_string(),
                K::Payment(cast::payment(
                    amount,
                    *payee_kind,
                    REFS[*payee],
                    CATEGORIES[*category],
                    TEXTS[*reference],
                )),
            ),
            Op::Purchase {
                budget,
                amount,
                category,
                supplier,
                description,
            } => (
                BUDGETS[*budget].id.to_string(),
                K::Purchase(pb::Purchase {
                    amount: amount.clone(),
                    category: CATEGORIES[*category].to_string(),
                    supplier_ref: REFS[*supplier].to_string(),
                    description: TEXTS[*description].to_string(),
                    receipt_ref: "r-1".to_string(),
                    ..Default::default()
                }),
            ),
            Op::Review {
                budget,
                delta,
                reason,
            } => (
                BUDGETS[*budget].id.to_string(),
                K::ReviewAdjustment(pb::ReviewAdjustment {
                    delta: delta.clone(),
                    reason: TEXTS[*reason].to_string(),
                }),
            ),
            Op::Stop { budget, reason } => (
                BUDGETS[*budget].id.to_string(),
                K::BudgetStopped(pb::BudgetStopped {
                    reason: TEXTS[*reason].to_string(),
                }),
            ),
            Op::Plan { budget } => (BUDGETS[*budget].id.to_string(), cast::plan_kind()),
            Op::Agree { budget, index } => (
                BUDGETS[*budget].id.to_string(),
                cast::agreement_kinds().swap_remove(*index),
            ),
            Op::Garbage(bytes) => return bytes.clone(),
            Op::Mutate { of, pos, xor } => {
                if self.submitted.is_empty() {
                    return vec![0x0a, 0x01, b'x'];
                }
                let mut bytes = self.submitted[of % self.submitted.len()].event.clone();
                if !bytes.is_empty() {
                    let at = pos % bytes.len();
                    bytes[at] ^= xor;
                }
                return bytes;
            }
            Op::Resubmit(_) => unreachable!("resubmissions are not built"),
        };
        let micros = match step.when {
            When::Past(d) => Some(now - d),
            When::Ahead23h => Some(now + 23 * HOUR),
            When::Ahead25h => Some(now + 25 * HOUR),
            When::Before2000 => Some(946_684_799 * 1_000_000),
            When::BadNanos | When::Missing => None,
        };
        let occurred_at = match step.when {
            When::Missing => None,
            When::BadNanos => Some(prost_types::Timestamp {
                seconds: now / 1_000_000,
                nanos: 1_000_000_000,
            }),
            _ => micros.map(|m| prost_types::Timestamp {
                seconds: m.div_euclid(1_000_000),
                nanos: (m.rem_euclid(1_000_000) * 1000) as i32,
            }),
        };
        let ev = pb::Event {
            event_id,
            ledger_id: if step.right_ledger {
                LEDGER_ID.to_string()
            } else {
                "some-other-ledger".to_string()
            },
            budget_id,
            occurred_at,
            kind: Some(kind),
        };
        ev.encode_to_vec()
    }

    /// Builds the signed submission for `step` against the current state.
    fn build(&mut self, step: &Step, now: i64) -> SignedEvent {
        if let Op::Resubmit(i) = step.op {
            if self.submitted.is_empty() {
                return SignedEvent {
                    event: Vec::new(),
                    signer_id: "root".into(),
                    signature: vec![0; 64],
                };
            }
            return self.submitted[i % self.submitted.len()].clone();
        }
        let mut event = self.event_bytes(step, now);
        let signer = match step.who {
            Who::Natural => self.natural_signer(&step.op),
            Who::Cast(o) => o,
        };
        let key = match step.sig {
            Sig::Key(o, k) => signing_key(o, k),
            _ => cast::current_key(self.ledger(), signer),
        };
        let mut signature = key.sign(&event).to_bytes().to_vec();
        match step.sig {
            Sig::Flipped(bit) => signature[bit / 8 % 64] ^= 1 << (bit % 8),
            Sig::Short => {
                signature.pop();
            }
            Sig::Tampered => {
                if event.is_empty() {
                    event.push(0);
                } else {
                    let last = event.len() - 1;
                    event[last] ^= 1;
                }
            }
            Sig::Current | Sig::Key(..) => {}
        }
        let signed = SignedEvent {
            event,
            signer_id: ORGS[signer].to_string(),
            signature,
        };
        self.submitted.push(signed.clone());
        signed
    }

    /// Builds a request against the current state (as a client would) and
    /// processes it; returns what was sent and what came back.
    fn process(&mut self, batch: &Batch) -> (Vec<SignedEvent>, Vec<Outcome>) {
        self.now += batch.advance;
        let now = self.now;
        let built: Vec<_> = batch.steps.iter().map(|s| self.build(s, now)).collect();
        let outcomes = self.run(&built, batch.atomic, now);
        (built, outcomes)
    }

    /// `Writer::process` for one request, with every check of
    /// `phb_sim::check`.
    fn run(&mut self, built: &[SignedEvent], atomic: bool, now: i64) -> Vec<Outcome> {
        self.sim.request(built, atomic, now)
    }
}

fn config(default_cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default_cases;
    }
    c.max_shrink_iters = 4096;
    c
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(160))]

    /// Invariants after every event; a refusal changes no budget or
    /// organisation and moves the head by one exactly when it is recorded
    /// (decisions of the rules only); duplicates and retries change nothing;
    /// atomic batches are all or nothing on budgets and organisations, fail
    /// where their events one by one first fail, and otherwise equal
    /// sequential application; replay of the whole log (refusal entries
    /// included) reproduces state and head; rolling back any suffix restores
    /// the earlier state; every recorded refusal is final.
    #[test]
    fn ledger_sequences(batches in scenario(), keep in any::<usize>()) {
        let mut h = Harness::new();
        for batch in &batches {
            let before = h.clone();
            let pre = snapshot(h.ledger());
            let (built, outcomes) = h.process(batch);
            prop_assert_eq!(outcomes.len(), built.len());
            if batch.atomic {
                // The same submissions, one by one, on the state before.
                let mut seq = before;
                let seq_out = seq.run(&built, false, h.now);
                match seq_out.iter().position(Outcome::is_refusal) {
                    Some(i) => check_failed_batch(&h, &pre, &outcomes, &seq_out, i)?,
                    None => {
                        prop_assert_eq!(&outcomes, &seq_out);
                        prop_assert_eq!(snapshot(h.ledger()), snapshot(seq.ledger()));
                        prop_assert_eq!(&h.sim.w.log, &seq.sim.w.log);
                    }
                }
            }
        }
        // Replay after every prefix (refusal entries included), recorded_at
        // never going back, every recorded refusal final a second later,
        // and rolling back to any point (`keep` entries) restoring it.
        h.sim.finish(h.now + 1_000_000, keep);
    }

    /// Applying a random batch and rolling it back restores exactly the state
    /// before it (what atomic requests rely on), at any point of a history.
    #[test]
    fn rollback_restores_state(batches in scenario(), trial in prop::collection::vec(step(), 1..12)) {
        let mut h = Harness::new();
        for batch in &batches {
            h.process(batch);
        }
        let pre = snapshot(h.ledger());
        let pre_len = h.sim.w.log.len();
        let now = h.now + 1_000_000;
        let built: Vec<_> = trial.iter().map(|s| h.build(s, now)).collect();
        h.run(&built, false, now);
        h.sim.rollback_to(pre_len);
        prop_assert_eq!(snapshot(h.ledger()), pre);
    }
}

/// An atomic batch that failed (`outcomes`, now in `h`), against the same
/// events one by one on the state before it (`seq_out`, first refusal at
/// `i`; `pre` the state before).
fn check_failed_batch(
    h: &Harness,
    pre: &Snapshot,
    outcomes: &[Outcome],
    seq_out: &[Outcome],
    i: usize,
) -> Result<(), TestCaseError> {
    let failure = &seq_out[i];
    let decided = matches!(failure, Outcome::Refused { .. });
    // It fails where its events one by one first fail, for the same reason.
    match (failure, &outcomes[i]) {
        (Outcome::Rejected(a), Outcome::Rejected(b)) => prop_assert_eq!(a, b),
        (
            Outcome::Refused {
                duplicate: true, ..
            },
            b,
        ) => prop_assert_eq!(failure, b),
        // Recorded again after the rollback, as part of the batch (or, if it
        // can no longer be recorded, answered unrecorded).
        (
            Outcome::Refused {
                reject: a,
                duplicate: false,
                ..
            },
            Outcome::Refused {
                reject: b,
                duplicate: false,
                ..
            }
            | Outcome::Rejected(b),
        ) => prop_assert_eq!(a, b),
        (a, b) => prop_assert!(false, "failed one by one with {:?}, atomically {:?}", a, b),
    }
    let aborted = aborted_by(i, &failure.reject().unwrap().message);
    for (j, o) in outcomes.iter().enumerate().filter(|(j, _)| *j != i) {
        match o {
            // A retry of a refusal recorded before: that refusal stands.
            Outcome::Refused {
                duplicate: true, ..
            } => prop_assert!(decided),
            Outcome::Refused { reject, .. } => {
                prop_assert!(decided);
                prop_assert_eq!(reject, &aborted);
            }
            Outcome::Rejected(r) => prop_assert_eq!(r, &aborted),
            o => prop_assert!(false, "event {} of a failed batch: {:?}", j, o),
        }
    }
    // All or nothing on budgets and organisations; the log grows by the
    // batch's recorded refusals alone, and only if it failed by a decision.
    let now = snapshot(h.ledger());
    prop_assert_eq!(
        now.with_head(pre.head),
        pre.clone(),
        "failed atomic batch left changes"
    );
    let recorded = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                Outcome::Refused {
                    duplicate: false,
                    ..
                }
            )
        })
        .count();
    if !decided {
        prop_assert_eq!(recorded, 0);
    }
    let log = &h.sim.w.log;
    prop_assert_eq!(log.len() as u64, pre.head.sequence + recorded as u64);
    for e in &log[pre.head.sequence as usize..] {
        prop_assert!(e.refusal.as_ref().is_some_and(|r| r.in_atomic_batch));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Any pence value in range prints with two decimals and parses back.
    #[test]
    fn money_round_trips(p in 1i64..=100_000_000_000) {
        let m = Money::from_pence(p);
        let s = m.to_string();
        prop_assert_eq!(&s, &pence_str(p));
        prop_assert_eq!(figure_pence(m, &s), p);
        prop_assert_eq!(parse_positive(&s), Ok(m));
        prop_assert_eq!(s.parse::<Money>(), Ok(m));
        let neg = parse_nonzero_delta(&format!("-{s}")).unwrap();
        prop_assert_eq!(neg, Money::from_pence(-p));
        prop_assert_eq!(neg.to_string(), format!("-{s}"));
        prop_assert_eq!(figure_pence(neg, "negated"), -p);
    }

    /// Sums of parsed amounts equal the integer sums of their pence.
    #[test]
    fn money_sums_are_exact(v in prop::collection::vec((1i64..=100_000_000_000, any::<bool>()), 0..60)) {
        let mut total = Money::ZERO;
        let mut pence = 0i64;
        for (p, neg) in &v {
            let s = if *neg { format!("-{}", pence_str(*p)) } else { pence_str(*p) };
            total = total.checked_add(parse_nonzero_delta(&s).unwrap()).unwrap();
            pence += if *neg { -p } else { *p };
            prop_assert_eq!(total, Money::from_pence(pence));
            prop_assert_eq!(figure_pence(total, "total"), pence);
        }
        let mut back = total;
        for (p, neg) in v.iter().rev() {
            back = back.checked_sub(Money::from_pence(if *neg { -p } else { *p })).unwrap();
        }
        prop_assert_eq!(back, Money::ZERO);
        prop_assert_eq!(back.to_string(), "0.00");
    }

    /// Strings of roughly the right shape are accepted exactly when the
    /// documented grammar says so, with the same value.
    #[test]
    fn money_parse_matches_grammar(s in "-{0,2}0{0,3}[0-9]{0,12}(\\.[0-9]{0,3})?[e+ ]?") {
        let oracle = grammar_pence(&s);
        match (s.parse::<Money>(), oracle) {
            (Ok(m), Some(p)) => {
                prop_assert_eq!(m, Money::from_pence(p));
                prop_assert_eq!(figure_pence(m, &s).abs(), p.abs());
            }
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "{:?}: parsed {:?}, grammar says {:?}", s, got, want),
        }
        prop_assert_eq!(parse_positive(&s).is_ok(), oracle.is_some_and(|p| p > 0));
        prop_assert_eq!(parse_nonzero_delta(&s).is_ok(), oracle.is_some_and(|p| p != 0));
    }

    /// Anything at all: never panics, and what is accepted fits the grammar.
    #[test]
    fn money_parse_arbitrary(s in any::<String>()) {
        match s.parse::<Money>() {
            Ok(m) => prop_assert_eq!(Some(figure_pence(m, &s)), grammar_pence(&s)),
            Err(_) => prop_assert_eq!(grammar_pence(&s), None),
        }
    }
}

/// The generator must reach every kind of accepted event and every kind of
/// refusal, or the properties above prove little. Runs a fixed-seed sample.
#[test]
fn generator_reaches_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut accepted: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let (mut atomic_ok, mut atomic_failed, mut atomic_decided, mut duplicates) = (0, 0, 0, 0);
    let (mut recorded, mut retries, mut aborted_recorded, mut shared_ids) = (0, 0, 0, 0);
    for _ in 0..48 {
        let batches = scenario().new_tree(&mut runner).unwrap().current();
        let mut h = Harness::new();
        for batch in &batches {
            let (_, outcomes) = h.process(batch);
            if batch.atomic && batch.steps.len() > 1 {
                if outcomes.iter().all(|o| !o.is_refusal()) {
                    atomic_ok += 1;
                } else {
                    atomic_failed += 1;
                    if outcomes
                        .iter()
                        .any(|o| matches!(o, Outcome::Refused { .. }))
                    {
                        atomic_decided += 1;
                    }
                }
            }
            for o in &outcomes {
                let r = match o {
                    Outcome::Duplicate(_) => {
                        duplicates += 1;
                        continue;
                    }
                    Outcome::Written(_) => continue,
                    Outcome::Refused {
                        duplicate: true, ..
                    } => {
                        retries += 1;
                        continue;
                    }
                    Outcome::Refused { reject, .. } => {
                        recorded += 1;
                        if reject.code == RejectCode::Aborted {
                            aborted_recorded += 1;
                        }
                        reject
                    }
                    Outcome::Rejected(r) => r,
                };
                let key = match &r.field {
                    Some(f) if r.code == RejectCode::InvalidArgument => {
                        format!("InvalidArgument {}", f)
                    }
                    _ if r.code == RejectCode::FailedPrecondition => {
                        let rule = [
                            ("overspend", "overspend"),
                            ("would exceed the allocation", "over-disbursement"),
                            ("would take allocated", "review floor"),
                            ("is stopped", "stopped"),
                            ("is notional", "notional disbursement"),
                        ]
                        .iter()
                        .find(|(needle, _)| r.message.contains(needle))
                        .map_or("other", |(_, rule)| rule);
                        format!("FailedPrecondition {rule}")
                    }
                    // Decided by the rules (recorded) or an event id the
                    // signer already used (not recorded).
                    _ if r.code == RejectCode::AlreadyExists => match o {
                        Outcome::Refused { .. } => "AlreadyExists decided".to_string(),
                        _ => "AlreadyExists event_id".to_string(),
                    },
                    _ => format!("{:?}", r.code),
                };
                *refused.entry(key).or_default() += 1;
            }
        }
        let w = &h.sim.w;
        for (_, ev) in w
            .log
            .iter()
            .zip(&w.events)
            .filter(|(e, _)| e.refusal.is_none())
        {
            *accepted.entry(ev.kind.name()).or_default() += 1;
        }
        shared_ids += h.sim.checks.shared_ids;
    }
    eprintln!("accepted: {accepted:#?}\nrefused: {refused:#?}\natomic ok {atomic_ok}, atomic failed {atomic_failed} ({atomic_decided} by a decision), duplicates {duplicates}\nrefusals recorded {recorded} ({aborted_recorded} ABORTED), retries of a recorded refusal {retries}, written under another signer's event id {shared_ids}");
    for kind in [
        "OrganisationRegistered",
        "KeyRotated",
        "BudgetOpened",
        "Allocation",
        "Disbursement",
        "Payment",
        "Purchase",
        "ReviewAdjustment",
        "BudgetStopped",
    ] {
        assert!(
            accepted.get(kind).copied().unwrap_or(0) >= 3,
            "{kind} rarely accepted"
        );
    }
    for code in [
        "Unauthenticated",
        "PermissionDenied",
        "NotFound",
        "FailedPrecondition overspend",
        "FailedPrecondition over-disbursement",
        "FailedPrecondition review floor",
        "FailedPrecondition stopped",
        "FailedPrecondition notional disbursement",
        "AlreadyExists decided",
        "AlreadyExists event_id",
        "Aborted",
    ] {
        assert!(refused.contains_key(code), "no {code} refusal generated");
    }
    assert!(
        refused
            .keys()
            .filter(|k| k.starts_with("InvalidArgument"))
            .count()
            >= 10
    );
    assert!(atomic_ok > 0 && atomic_failed > 0 && atomic_decided > 0 && duplicates > 0);
    assert!(recorded > 0 && aborted_recorded > 0 && retries > 0 && shared_ids > 0);
}

// ---------------------------------------------------------------------------
// Targeted cases (issue 6, defects 6 and 7)
// ---------------------------------------------------------------------------

/// A valid event for `op`, signed by whoever should sign it.
fn natural(op: Op) -> Step {
    Step {
        op,
        who: Who::Natural,
        sig: Sig::Current,
        id: EventIdChoice::Fresh,
        when: When::Past(0),
        right_ledger: true,
    }
}

fn named(id: &'static str, op: Op) -> Step {
    Step {
        id: EventIdChoice::Named(id),
        ..natural(op)
    }
}

fn pay(budget: usize, amount: &str) -> Op {
    Op::Pay {
        budget,
        amount: amount.to_string(),
        payee_kind: pb::PayeeKind::Provider as i32,
        payee: 0,
        // respite: the setup agreement with a provider.
        category: 1,
        reference: 0,
        via_payroll: false,
    }
}

fn allocate(budget: usize, amount: &str) -> Op {
    Op::Allocate {
        budget,
        amount: amount.to_string(),
        basis: 1,
    }
}

fn disburse(budget: usize, amount: &str) -> Op {
    Op::Disburse {
        budget,
        amount: amount.to_string(),
    }
}

impl Harness {
    /// The cast registered (but the ghost), the budgets but the last
    /// opened, each allocated 1,000.00 and the first four disbursed 500.00.
    fn with_cast() -> Harness {
        let mut h = Harness::new();
        for b in setup(&[], &[100_000; OPENED], &[50_000; 4]) {
            let (_, out) = h.process(&b);
            assert!(matches!(out[..], [Outcome::Written(_)]), "{out:?}");
        }
        h
    }

    /// One request of `steps`, a second after the last.
    fn request(&mut self, atomic: bool, steps: Vec<Step>) -> (Vec<SignedEvent>, Vec<Outcome>) {
        self.process(&Batch {
            atomic,
            advance: 1_000_000,
            steps,
        })
    }

    /// One event alone.
    fn one(&mut self, step: Step) -> (SignedEvent, Outcome) {
        let (mut built, mut out) = self.request(false, vec![step]);
        (built.remove(0), out.remove(0))
    }

    /// Signed events sent again, a second after the last request.
    fn again(&mut self, signed: &[SignedEvent], atomic: bool) -> Vec<Outcome> {
        self.now += 1_000_000;
        self.run(signed, atomic, self.now)
    }

    fn budget(&self, b: usize) -> Budget {
        self.ledger().budget(BUDGETS[b].id).unwrap().clone()
    }
}

fn assert_replays(h: &Harness) {
    let (fresh, _) = replay(&h.sim.w.log);
    assert_eq!(snapshot(&fresh), snapshot(h.ledger()));
}

/// Defect 7: a payment refused for lack of funds, a corrected payment, a
/// disbursement that would now cover the first: the first payment's signed
/// bytes sent again are refused with the original refusal, alone or in an
/// atomic batch, and change no budget.
#[test]
fn a_refused_payment_is_never_paid_later() {
    let mut h = Harness::with_cast();
    assert_eq!(h.budget(0).held(), Money::from_pence(50_000));
    let (big, o) = h.one(natural(pay(0, "550.00")));
    let Outcome::Refused {
        reject,
        sequence,
        duplicate: false,
    } = o
    else {
        panic!("{o:?}")
    };
    assert_eq!(reject.code, RejectCode::FailedPrecondition, "{reject}");
    assert_eq!(h.budget(0).spent, Money::ZERO);

    let (_, o) = h.one(natural(pay(0, "400.00")));
    assert!(matches!(o, Outcome::Written(_)), "{o:?}");
    let (_, o) = h.one(natural(disburse(0, "500.00")));
    assert!(matches!(o, Outcome::Written(_)), "{o:?}");
    let funded = h.budget(0);
    assert_eq!(
        funded.held(),
        Money::from_pence(60_000),
        "550.00 would fit now"
    );

    let head = h.ledger().head();
    let retry = Outcome::Refused {
        reject: reject.clone(),
        sequence,
        duplicate: true,
    };
    assert_eq!(
        h.again(std::slice::from_ref(&big), false),
        std::slice::from_ref(&retry)
    );
    assert_eq!((h.budget(0), h.ledger().head()), (funded.clone(), head));

    // In an atomic batch the retry fails the batch with the original
    // refusal, and the batch's other event is recorded ABORTED.
    let now = h.now + 1_000_000;
    let small = h.build(&natural(pay(0, "10.00")), now);
    let out = h.again(&[small.clone(), big.clone()], true);
    let aborted = aborted_by(1, &reject.message);
    assert_eq!(
        out,
        [
            Outcome::Refused {
                reject: aborted,
                sequence: head.sequence + 1,
                duplicate: false,
            },
            retry,
        ]
    );
    assert_eq!(h.budget(0), funded);
    assert_eq!(h.ledger().head().sequence, head.sequence + 1);
    assert_replays(&h);
}

/// Defect 6: event ids are scoped to the signer. Another organisation can
/// neither take a commissioner's planned id nor learn that it exists.
#[test]
fn the_same_event_id_from_two_signers_is_two_events() {
    let mut h = Harness::with_cast();
    let planned = "c1-2026-06-alloc-dp1";
    // tp, funds holder of b-tp-1, uses the id first for its own purchase.
    let purchase = Op::Purchase {
        budget: 2,
        amount: "5.00".into(),
        category: 0,
        supplier: 0,
        description: 0,
    };
    let (p, o) = h.one(named(planned, purchase));
    assert_eq!(p.signer_id, "tp");
    assert!(matches!(o, Outcome::Written(_)), "{o:?}");
    // comm-a's own event under its planned id is written too.
    let (a, o) = h.one(named(planned, allocate(0, "100.00")));
    assert_eq!(a.signer_id, "comm-a");
    let Outcome::Written(alloc_seq) = o else {
        panic!("{o:?}")
    };
    // An organisation with no write rights (the ghost, registered now as
    // an auditor) is refused for its rights, not told that the id exists.
    let (_, o) = h.one(natural(Op::Register {
        org: GHOST,
        roles: vec![pb::Role::Auditor as i32],
        key: KeyChoice::Seed(0),
    }));
    assert!(matches!(o, Outcome::Written(_)), "{o:?}");
    let auditor = Step {
        who: Who::Cast(GHOST),
        ..named(planned, allocate(0, "100.00"))
    };
    let (_, o) = h.one(auditor);
    match &o {
        Outcome::Refused {
            reject,
            duplicate: false,
            ..
        } => {
            assert_eq!(reject.code, RejectCode::PermissionDenied, "{reject}");
            assert!(!reject.message.contains("sequence"), "{reject}");
        }
        o => panic!("{o:?}"),
    }
    // comm-a itself reusing the id for other bytes: ALREADY_EXISTS, naming
    // its own entry.
    let (_, o) = h.one(named(planned, allocate(0, "7.00")));
    match &o {
        Outcome::Rejected(r) => {
            assert_eq!(r.code, RejectCode::AlreadyExists, "{r}");
            assert!(r.message.contains(&format!("sequence {alloc_seq}")), "{r}");
        }
        o => panic!("{o:?}"),
    }
    // Both in one atomic request, from two signers: both written.
    let shared = "shared-1";
    let (_, out) = h.request(
        true,
        vec![
            named(shared, allocate(0, "1.00")),
            named(shared, allocate(1, "1.00")),
        ],
    );
    assert!(
        matches!(out[..], [Outcome::Written(_), Outcome::Written(_)]),
        "{out:?}"
    );
    assert_replays(&h);
}

/// Defect 7 for atomic requests: no event of a batch that failed by a
/// decision of the rules can be written later on its own, even once the
/// state would allow all of it; a batch that failed for a malformed or
/// unauthenticated event decides nothing, and its other events may be sent
/// again.
#[test]
fn no_event_of_a_batch_refused_by_the_rules_is_written_later() {
    let mut h = Harness::with_cast();
    let pre = snapshot(h.ledger());
    let (built, out) = h.request(
        true,
        vec![
            natural(allocate(0, "100.00")),
            natural(disburse(0, "50.00")),
            natural(pay(0, "5000.00")),
        ],
    );
    let overspend = match &out[2] {
        Outcome::Refused {
            reject,
            duplicate: false,
            ..
        } if reject.code == RejectCode::FailedPrecondition => reject.clone(),
        o => panic!("{o:?}"),
    };
    let aborted = aborted_by(2, &overspend.message);
    for (i, o) in out[..2].iter().enumerate() {
        assert_eq!(
            o,
            &Outcome::Refused {
                reject: aborted.clone(),
                sequence: pre.head.sequence + 1 + i as u64,
                duplicate: false,
            }
        );
    }
    assert_eq!(snapshot(h.ledger()).with_head(pre.head), pre);
    assert_eq!(h.ledger().head().sequence, pre.head.sequence + 3);

    // Enough money for all three now.
    for step in [
        natural(allocate(0, "10000.00")),
        natural(disburse(0, "6000.00")),
    ] {
        let (_, o) = h.one(step);
        assert!(matches!(o, Outcome::Written(_)), "{o:?}");
    }
    let funded = h.budget(0);
    for (i, signed) in built.iter().enumerate() {
        let o = h.again(std::slice::from_ref(signed), false);
        assert!(
            matches!(&o[..], [Outcome::Refused { duplicate: true, reject, .. }]
                if reject.code == if i == 2 { RejectCode::FailedPrecondition } else { RejectCode::Aborted }),
            "event {i}: {o:?}"
        );
    }
    // Nor together, atomically.
    let o = h.again(&built, true);
    assert!(
        o.iter().all(|o| matches!(
            o,
            Outcome::Refused {
                duplicate: true,
                ..
            }
        )),
        "{o:?}"
    );
    assert_eq!(h.budget(0), funded);

    // A batch that fails for an unauthenticated event records nothing.
    let head = h.ledger().head();
    let forged = Step {
        sig: Sig::Short,
        ..natural(allocate(0, "2.00"))
    };
    let (built, out) = h.request(true, vec![natural(allocate(0, "1.00")), forged]);
    match &out[..] {
        [Outcome::Rejected(a), Outcome::Rejected(r)] => {
            assert_eq!(r.code, RejectCode::Unauthenticated, "{r}");
            assert_eq!(a, &aborted_by(1, &r.message));
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(h.ledger().head(), head);
    let o = h.again(&built[..1], false);
    assert!(matches!(o[..], [Outcome::Written(_)]), "{o:?}");
    assert_replays(&h);
}

/// An atomic request that registers an organisation, uses it, then fails by
/// a decision: the whole request is recorded as the batch saw it (the new
/// organisation's event authenticates through the batch's own
/// registration), so once the organisation is registered by another event,
/// the recorded event still cannot be written on its own.
#[test]
fn a_batch_that_registers_its_signer_is_final_too() {
    let mut h = Harness::with_cast();
    let register = || {
        natural(Op::Register {
            org: GHOST,
            roles: vec![pb::Role::Commissioner as i32],
            key: KeyChoice::Seed(0),
        })
    };
    let open = natural(Op::Open {
        budget: OPENED,
        natural: false,
        commissioner: GHOST,
        management: pb::Management::Notional as i32,
        funds_holder: None,
        payroll: None,
        dates: 0,
    });
    let (built, out) = h.request(true, vec![register(), open, natural(pay(0, "5000.00"))]);
    assert!(
        matches!(&out[2], Outcome::Refused { reject, .. } if reject.code == RejectCode::FailedPrecondition),
        "{out:?}"
    );
    let (_, o) = h.one(register());
    assert!(matches!(o, Outcome::Written(_)), "{o:?}");
    // The budget opening that was answered ABORTED is written now.
    let o = h.again(&built[1..2], false);
    assert!(
        o[0].is_refusal(),
        "an event of a failed batch was written later: {o:?}"
    );
}

/// The same for a key rotation: an atomic request that rotates a key,
/// uses the new key, then fails by a decision. The event signed with the
/// new key is recorded as the batch saw it, so it stays refused even once
/// the key is rotated to the same value by another event.
#[test]
fn a_batch_that_rotates_its_signers_key_is_final_too() {
    let mut h = Harness::with_cast();
    let rotate = || {
        natural(Op::Rotate {
            org: 1,
            key: KeyChoice::Seed(1),
        })
    };
    let with_new_key = Step {
        sig: Sig::Key(1, 1),
        ..natural(allocate(0, "100.00"))
    };
    let (built, out) = h.request(
        true,
        vec![rotate(), with_new_key, natural(pay(0, "5000.00"))],
    );
    assert!(
        matches!(&out[2], Outcome::Refused { reject, .. } if reject.code == RejectCode::FailedPrecondition),
        "{out:?}"
    );
    let (_, o) = h.one(rotate());
    assert!(matches!(o, Outcome::Written(_)), "{o:?}");
    // The allocation that was answered ABORTED is written now.
    let o = h.again(&built[1..2], false);
    assert!(
        o[0].is_refusal(),
        "an event of a failed batch was written later: {o:?}"
    );
}
