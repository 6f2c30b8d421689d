//! Property tests of the pure core.
//!
//! A fixed cast (the root key, commissioners, payroll providers, third
//! parties, an account provider, an auditor and one organisation nobody
//! registered), each with real ed25519 keys, submits random sequences of
//! every kind of event: signed by the right or the wrong organisation, with
//! the right, a stale, a corrupted or a truncated signature, with valid and
//! invalid amounts, ids, texts and times, singly or in atomic batches. The
//! harness drives `Ledger` exactly as `phb-engine`'s writer does
//! (`decode` → duplicate check → `authenticate` → `decide` → `apply` with a
//! head from `LogEntry::next`; atomic requests roll back their own undo
//! records on the first refusal) and checks after every event:
//!
//! * figures are never negative, `paid_in <= allocated` and
//!   `spent <= paid_in` (non-notional), `spent <= allocated`, every figure
//!   prints with exactly two decimals, and the figures equal an independent
//!   integer-pence model of the accepted events;
//! * a refused event, or a duplicate, changes nothing;
//! * a stopped budget never changes again;
//! * an atomic batch is all or nothing, and when it succeeds it equals
//!   sequential application;
//! * replaying the accepted log into a fresh ledger gives the same state and
//!   head, and rolling back any suffix restores the earlier state.
//!
//! `PROPTEST_CASES=5000 cargo test -p phb-domain --test properties --release`
//! runs a longer search.

use ed25519_dalek::{Signer, SigningKey};
use phb_domain::event::{EventKind, Management, PayeeKind, Role};
use phb_domain::money::{parse_nonzero_delta, parse_positive, Money};
use phb_domain::{
    Admission, Budget, Event, Head, Ledger, LogEntry, Organisation, Reject, RejectCode,
    SignedEvent, Stored, Undo, GENESIS_HASH,
};
use phb_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;
use std::collections::{BTreeMap, HashMap};

// ---------------------------------------------------------------------------
// The cast
// ---------------------------------------------------------------------------

const LEDGER_ID: &str = "phb-test-ledger";
/// 2024-01-01T00:00:00Z in microseconds.
const T0: i64 = 1_704_067_200 * 1_000_000;
const HOUR: i64 = 3600 * 1_000_000;
const DAY: i64 = 24 * HOUR;

const ROOT: usize = 0;
const GHOST: usize = 9;
const ORGS: [&str; 10] = [
    "root",
    "comm-a",
    "comm-b",
    "payroll-1",
    "payroll-2",
    "tp-1",
    "tp-2",
    "acct-1",
    "auditor",
    "ghost",
];
/// Keys per organisation: index 0 is the one registered at setup, the others
/// are what KeyRotated may rotate to (or a stale key after a rotation).
const KEYS_PER_ORG: usize = 4;

fn cast_roles(org: usize) -> Vec<i32> {
    use pb::Role as R;
    let roles: &[R] = match org {
        1 => &[R::Commissioner],
        2 => &[R::Commissioner, R::Auditor],
        3 => &[R::PayrollProvider],
        4 => &[R::PayrollProvider, R::ThirdParty],
        5 | 6 => &[R::ThirdParty],
        7 => &[R::AccountProvider],
        8 => &[R::Auditor],
        _ => &[],
    };
    roles.iter().map(|r| *r as i32).collect()
}

fn signing_key(org: usize, k: usize) -> SigningKey {
    SigningKey::from_bytes(&[(10 * org + 1 + k) as u8; 32])
}

fn org_index(id: &str) -> usize {
    ORGS.iter().position(|o| *o == id).unwrap_or(GHOST)
}

struct BudgetCfg {
    id: &'static str,
    commissioner: usize,
    management: pb::Management,
    funds_holder: Option<usize>,
    payroll: Option<usize>,
}

const BUDGETS: [BudgetCfg; 7] = [
    BudgetCfg {
        id: "b-dp-1",
        commissioner: 1,
        management: pb::Management::DirectPayment,
        funds_holder: Some(7),
        payroll: Some(3),
    },
    BudgetCfg {
        id: "b-dp-2",
        commissioner: 2,
        management: pb::Management::DirectPayment,
        funds_holder: None,
        payroll: Some(4),
    },
    BudgetCfg {
        id: "b-tp-1",
        commissioner: 1,
        management: pb::Management::ThirdParty,
        funds_holder: Some(5),
        payroll: Some(3),
    },
    BudgetCfg {
        id: "b-tp-2",
        commissioner: 2,
        management: pb::Management::ThirdParty,
        funds_holder: Some(4),
        payroll: None,
    },
    BudgetCfg {
        id: "b-n-1",
        commissioner: 1,
        management: pb::Management::Notional,
        funds_holder: None,
        payroll: None,
    },
    BudgetCfg {
        id: "b-n-2",
        commissioner: 2,
        management: pb::Management::Notional,
        funds_holder: None,
        payroll: None,
    },
    // Never opened by the setup: only random BudgetOpened events may open it.
    BudgetCfg {
        id: "b-late",
        commissioner: 2,
        management: pb::Management::DirectPayment,
        funds_holder: Some(7),
        payroll: Some(4),
    },
];

const DATES: [(&str, &str); 6] = [
    ("2024-04-01", "2025-03-31"),
    ("2024-04-01", "2024-04-01"),
    ("2000-02-29", "2199-12-31"),
    ("2025-03-31", "2024-04-01"), // ends before it starts
    ("2023-02-29", "2024-01-01"), // no such day
    ("24-04-01", "2025-03-31"),   // not YYYY-MM-DD
];
const CATEGORIES: [&str; 6] = [
    "personal_care",
    "respite",
    "gym-membership",
    "Bad Cat",
    "",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", // 65
];
const REFS: [&str; 4] = ["pa-001", "prov:cmht.7", "bad ref!", ""];
const TEXTS: [&str; 7] = [
    "annual review",
    "moved to cluster costs",
    "naïve ünïcode ✓",
    "",
    "   ",
    "tab\there",
    "bell\u{7}",
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

fn pence_str(p: i64) -> String {
    format!("{}.{:02}", p / 100, p % 100)
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
    (0..6usize, any::<bool>(), 0..60_000_000i64).prop_flat_map(move |(budget, atomic, advance)| {
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

/// Registers the cast, opens the six budgets, allocates and disburses:
/// each setup event is included unless its mask bit is false.
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
    for org in 1..=8 {
        ops.push(Op::Register {
            org,
            roles: cast_roles(org),
            key: KeyChoice::Seed(0),
        });
    }
    for budget in 0..6 {
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
    for (budget, &pence) in alloc.iter().enumerate().take(6) {
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
// Oracles
// ---------------------------------------------------------------------------

/// The documented amount grammar, independently of `money.rs`:
/// `-?[0-9]{1,10}(\.[0-9]{1,2})?`, at most 1,000,000,000.00 in size.
/// Returns signed pence.
fn oracle_pence(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f) || f.len() > 2) {
        return None;
    }
    // At most 10 integer digits, leading zeros included (docs/api.md).
    if int.len() > 10 {
        return None;
    }
    let int = int.trim_start_matches('0');
    let pounds: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let pence: i64 = match frac {
        None => 0,
        Some(f) if f.len() == 1 => f.parse::<i64>().ok()? * 10,
        Some(f) => f.parse().ok()?,
    };
    let v = pounds * 100 + pence;
    if v > 100_000_000_000 {
        return None;
    }
    Some(if neg { -v } else { v })
}

/// A figure as printed: digits, '.', exactly two digits.
fn printed_pence(m: Money) -> i64 {
    let s = m.to_string();
    let (int, frac) = s
        .split_once('.')
        .unwrap_or_else(|| panic!("{s:?} has no decimal point"));
    let (neg, int) = match int.strip_prefix('-') {
        Some(i) => (true, i),
        None => (false, int),
    };
    assert!(
        !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()),
        "{s:?}"
    );
    assert!(
        frac.len() == 2 && frac.bytes().all(|b| b.is_ascii_digit()),
        "{s:?} does not have exactly two decimals"
    );
    assert_eq!(m.as_decimal().scale(), 2, "{s:?} is not at scale 2");
    let v = int.parse::<i64>().unwrap() * 100 + frac.parse::<i64>().unwrap();
    if neg {
        -v
    } else {
        v
    }
}

// ---------------------------------------------------------------------------
// The harness: the writer's sequence, on a Ledger
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    head: Head,
    budgets: Vec<Budget>,
    orgs: Vec<Option<Organisation>>,
}

fn snapshot(l: &Ledger) -> Snapshot {
    Snapshot {
        head: l.head(),
        budgets: l.budgets().cloned().collect(),
        orgs: ORGS[1..]
            .iter()
            .map(|o| l.organisation(o).cloned())
            .collect(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Written(u64),
    Duplicate(u64),
}

/// An accepted entry: the decoded event and, if it carries an amount, the
/// oracle's reading of the amount string the client signed.
#[derive(Debug, Clone)]
struct Accepted {
    event: Event,
    raw_pence: Option<i64>,
}

#[derive(Clone)]
struct Harness {
    ledger: Ledger,
    log: Vec<LogEntry>,
    accepted: Vec<Accepted>,
    undos: Vec<Undo>,
    /// `snapshots[n]` is the state after `n` entries.
    snapshots: Vec<Snapshot>,
    /// event_id → (sequence, digest): the store's index.
    ids: HashMap<String, (u64, [u8; 32])>,
    /// Every submission, for Resubmit and Mutate.
    submitted: Vec<SignedEvent>,
    used_ids: Vec<String>,
    now: i64,
    counter: u64,
    keys: HashMap<[u8; 32], SigningKey>,
}

impl Harness {
    fn new() -> Harness {
        let mut keys = HashMap::new();
        for org in 0..ORGS.len() {
            for k in 0..KEYS_PER_ORG {
                let sk = signing_key(org, k);
                keys.insert(sk.verifying_key().to_bytes(), sk);
            }
        }
        let ledger = Ledger::new(LEDGER_ID, signing_key(ROOT, 0).verifying_key());
        let first = snapshot(&ledger);
        Harness {
            ledger,
            log: Vec::new(),
            accepted: Vec::new(),
            undos: Vec::new(),
            snapshots: vec![first],
            ids: HashMap::new(),
            submitted: Vec::new(),
            used_ids: Vec::new(),
            now: T0,
            counter: 0,
            keys,
        }
    }

    /// The key `org` signs with now (its first key if it has none we know).
    fn current_key(&self, org: usize) -> SigningKey {
        self.ledger
            .signer_key(ORGS[org])
            .and_then(|k| self.keys.get(&k.to_bytes()))
            .cloned()
            .unwrap_or_else(|| signing_key(org, 0))
    }

    fn natural_signer(&self, op: &Op) -> usize {
        let budget_of = |b: usize| self.ledger.budget(BUDGETS[b].id);
        let commissioner = |b: usize| {
            budget_of(b).map_or(BUDGETS[b].commissioner, |x| org_index(&x.commissioner_id))
        };
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
            | Op::Stop { budget, .. } => commissioner(*budget),
            Op::Pay {
                budget,
                via_payroll,
                ..
            } => match budget_of(*budget) {
                Some(b) if b.management == Management::Notional => commissioner(*budget),
                Some(b) => {
                    let payroll = b.payroll_provider_id.as_deref().map(org_index);
                    let holder = b.funds_holder_id.as_deref().map(org_index);
                    let first = if *via_payroll {
                        payroll.or(holder)
                    } else {
                        holder.or(payroll)
                    };
                    first.unwrap_or_else(|| commissioner(*budget))
                }
                None => commissioner(*budget),
            },
            Op::Purchase { budget, .. } => match budget_of(*budget) {
                Some(b) if b.management != Management::Notional => b
                    .funds_holder_id
                    .as_deref()
                    .map_or_else(|| commissioner(*budget), org_index),
                _ => commissioner(*budget),
            },
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
                K::Payment(pb::Payment {
                    amount: amount.clone(),
                    payee_kind: *payee_kind,
                    payee_ref: REFS[*payee].to_string(),
                    category: CATEGORIES[*category].to_string(),
                    reference: TEXTS[*reference].to_string(),
                }),
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
            _ => self.current_key(signer),
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

    /// `Writer::try_one`, minus the store: the same `Ledger::admit`, with the
    /// harness's own id index standing in for the store's.
    fn try_one(&mut self, signed: &SignedEvent, now: i64) -> Result<Outcome, Reject> {
        let (ids, log) = (&self.ids, &self.log);
        let stored = |id: &str| {
            Ok(ids.get(id).map(|&(sequence, digest)| Stored {
                sequence,
                digest,
                entry_hash: log[sequence as usize - 1].hash,
            }))
        };
        let a = match self.ledger.admit(signed, now, None, stored)? {
            Admission::Duplicate(s) => return Ok(Outcome::Duplicate(s.sequence)),
            Admission::Written(a) => *a,
        };
        let sequence = a.entry.sequence;
        self.undos.push(a.undo);
        self.ids
            .insert(a.event.event_id.clone(), (sequence, a.digest));
        self.log.push(a.entry);
        self.accepted.push(Accepted {
            event: a.event,
            raw_pence: None,
        });
        self.snapshots.push(snapshot(&self.ledger));
        Ok(Outcome::Written(sequence))
    }

    /// Drops entries after the first `len`, as the writer does for a failed
    /// atomic request (the ledger itself is rolled back by the caller).
    fn truncate(&mut self, len: usize) {
        for a in &self.accepted[len..] {
            self.ids.remove(&a.event.event_id);
        }
        self.log.truncate(len);
        self.accepted.truncate(len);
        self.undos.truncate(len);
        self.snapshots.truncate(len + 1);
    }

    /// One event with every per-event check.
    fn submit_checked(&mut self, signed: &SignedEvent, now: i64) -> Result<Outcome, Reject> {
        let raw = raw_amount(signed);
        let before = snapshot(&self.ledger);
        let result = self.try_one(signed, now);
        let after = snapshot(&self.ledger);
        match &result {
            Ok(Outcome::Written(seq)) => {
                assert_eq!(*seq, before.head.sequence + 1);
                let acc = self.accepted.last_mut().unwrap();
                if let Some((raw, _)) = &raw {
                    let pence =
                        oracle_pence(raw).unwrap_or_else(|| panic!("amount {raw:?} was accepted"));
                    let m = match &acc.event.kind {
                        EventKind::Allocation { amount, .. }
                        | EventKind::Disbursement { amount }
                        | EventKind::Payment { amount, .. }
                        | EventKind::Purchase { amount, .. } => *amount,
                        EventKind::ReviewAdjustment { delta, .. } => *delta,
                        k => panic!("{} carried an amount", k.name()),
                    };
                    assert_eq!(m, Money::from_pence(pence), "{raw:?}");
                    assert_eq!(printed_pence(m), pence, "{raw:?}");
                    acc.raw_pence = Some(pence);
                }
                check_authorised(&before, &signed.signer_id, &acc.event);
                // A stopped budget never changes again.
                for b in &before.budgets {
                    if b.stopped {
                        assert_eq!(Some(b), self.ledger.budget(&b.id), "stopped budget changed");
                    }
                }
            }
            Ok(Outcome::Duplicate(_)) | Err(_) => {
                assert_eq!(
                    before, after,
                    "a refused or duplicate event changed the state"
                );
            }
        }
        if let Some((raw, is_delta)) = &raw {
            let valid = oracle_pence(raw).is_some_and(|p| if *is_delta { p != 0 } else { p > 0 });
            if !valid {
                let r = result.as_ref().expect_err("invalid amount accepted");
                assert_eq!(r.code, RejectCode::InvalidArgument, "{raw:?}: {r}");
            }
        }
        check_invariants(self);
        result
    }

    /// `Writer::process` for one request.
    /// Builds a request against the current state (as a client would) and
    /// processes it; returns what was sent and what came back.
    fn process(&mut self, batch: &Batch) -> (Vec<SignedEvent>, Vec<Result<Outcome, Reject>>) {
        self.now += batch.advance;
        let now = self.now;
        let built: Vec<_> = batch.steps.iter().map(|s| self.build(s, now)).collect();
        let outcomes = self.run(&built, batch.atomic, now);
        (built, outcomes)
    }

    fn run(
        &mut self,
        built: &[SignedEvent],
        atomic: bool,
        now: i64,
    ) -> Vec<Result<Outcome, Reject>> {
        let start_len = self.log.len();
        let mut outcomes = Vec::new();
        for signed in built {
            let r = self.submit_checked(signed, now);
            let failed = r.is_err();
            outcomes.push(r);
            if failed && atomic {
                let undo = self.undos.split_off(start_len);
                self.ledger.rollback(undo);
                self.truncate(start_len);
                return outcomes;
            }
        }
        outcomes
    }
}

/// The rules of who may record what (domain.md, ledger.proto), written out
/// independently of `Ledger::authorise`, checked for every accepted event
/// against the state before it.
fn check_authorised(before: &Snapshot, signer: &str, event: &Event) {
    let kind = event.kind.name();
    if event.kind.is_organisation_event() {
        assert_eq!(signer, "root", "{kind} accepted from {signer}");
        return;
    }
    let org = before.orgs[org_index(signer) - 1]
        .as_ref()
        .unwrap_or_else(|| panic!("{kind} accepted from unregistered {signer}"));
    assert_eq!(org.id, signer);
    let budget = before.budgets.iter().find(|b| b.id == event.budget_id);
    if let EventKind::BudgetOpened {
        commissioner_id,
        management,
        funds_holder_id,
        payroll_provider_id,
        ..
    } = &event.kind
    {
        assert!(budget.is_none(), "budget {} opened twice", event.budget_id);
        assert_eq!(commissioner_id, signer, "opened by someone else");
        assert!(org.roles.contains(&Role::Commissioner));
        let has = |id: &Option<String>, role: Role| {
            id.as_ref().is_none_or(|id| {
                before
                    .orgs
                    .iter()
                    .flatten()
                    .any(|o| &o.id == id && o.roles.contains(&role))
            })
        };
        let holder_role = match management {
            Management::ThirdParty => Role::ThirdParty,
            _ => Role::AccountProvider,
        };
        assert!(
            has(funds_holder_id, holder_role),
            "funds holder without the role"
        );
        assert!(
            has(payroll_provider_id, Role::PayrollProvider),
            "payroll without the role"
        );
        match management {
            Management::ThirdParty => assert!(funds_holder_id.is_some()),
            Management::Notional => {
                assert!(funds_holder_id.is_none() && payroll_provider_id.is_none())
            }
            Management::DirectPayment => {}
        }
        return;
    }
    let b = budget.unwrap_or_else(|| panic!("{kind} accepted on unopened {}", event.budget_id));
    assert!(!b.stopped, "{kind} accepted on stopped budget {}", b.id);
    let commissioner = b.commissioner_id == signer && org.roles.contains(&Role::Commissioner);
    let holder = b.funds_holder_id.as_deref() == Some(signer)
        && (org.roles.contains(&Role::ThirdParty) || org.roles.contains(&Role::AccountProvider));
    let payroll = b.payroll_provider_id.as_deref() == Some(signer)
        && org.roles.contains(&Role::PayrollProvider);
    let notional = b.management == Management::Notional;
    let ok = match &event.kind {
        EventKind::Allocation { .. }
        | EventKind::ReviewAdjustment { .. }
        | EventKind::BudgetStopped { .. } => commissioner,
        EventKind::Disbursement { .. } => commissioner && !notional,
        EventKind::Payment { payee_kind, .. } => {
            if notional {
                commissioner
            } else {
                holder || (payroll && *payee_kind == PayeeKind::PersonalAssistant)
            }
        }
        EventKind::Purchase { .. } => {
            if notional {
                commissioner
            } else {
                holder
            }
        }
        _ => unreachable!(),
    };
    assert!(ok, "{kind} on {} accepted from {signer}", b.id);
}

/// The amount string an event carries, read straight from the signed bytes,
/// and whether it is a (signed) review delta.
fn raw_amount(signed: &SignedEvent) -> Option<(String, bool)> {
    use pb::event::Kind as K;
    match pb::Event::decode(signed.event.as_slice()).ok()?.kind? {
        K::Allocation(a) => Some((a.amount, false)),
        K::Disbursement(d) => Some((d.amount, false)),
        K::Payment(p) => Some((p.amount, false)),
        K::Purchase(p) => Some((p.amount, false)),
        K::ReviewAdjustment(r) => Some((r.delta, true)),
        _ => None,
    }
}

fn check_invariants(h: &Harness) {
    let l = &h.ledger;
    let head = l.head();
    assert_eq!(head.sequence as usize, h.log.len());
    assert_eq!(head.hash, h.log.last().map_or(GENESIS_HASH, |e| e.hash));
    assert_eq!(snapshot(l), h.snapshots[h.log.len()]);
    for b in l.budgets() {
        let figures = [
            ("allocated", b.allocated),
            ("paid_in", b.paid_in),
            ("spent", b.spent),
            ("held", b.held()),
            ("available", b.available()),
        ];
        for (name, m) in figures {
            assert!(!m.is_negative(), "{}: {name} is {m:?}", b.id);
            printed_pence(m);
        }
        assert!(b.spent <= b.allocated, "{}: spent > allocated", b.id);
        assert_eq!(
            printed_pence(b.available()),
            printed_pence(b.allocated) - printed_pence(b.spent)
        );
        if b.management == Management::Notional {
            assert_eq!(b.paid_in, Money::ZERO, "{}: notional paid_in", b.id);
            assert_eq!(b.held(), Money::ZERO);
        } else {
            assert!(b.paid_in <= b.allocated, "{}: paid_in > allocated", b.id);
            assert!(b.spent <= b.paid_in, "{}: spent > paid_in", b.id);
            assert_eq!(
                printed_pence(b.held()),
                printed_pence(b.paid_in) - printed_pence(b.spent)
            );
        }
        assert!(b.last_sequence >= 1 && b.last_sequence <= head.sequence);
        assert_eq!(
            h.accepted[b.last_sequence as usize - 1].event.budget_id,
            b.id
        );
    }
}

/// The figures recomputed in integer pence from the accepted events alone.
fn check_model(h: &Harness) {
    #[derive(Default, Debug, PartialEq)]
    struct Figures {
        allocated: i64,
        paid_in: i64,
        spent: i64,
        stopped: bool,
    }
    let mut model: BTreeMap<&str, Figures> = BTreeMap::new();
    for a in &h.accepted {
        let id = a.event.budget_id.as_str();
        let raw = a.raw_pence;
        match &a.event.kind {
            EventKind::BudgetOpened { .. } => {
                assert!(model.insert(id, Figures::default()).is_none());
            }
            EventKind::Allocation { .. } | EventKind::ReviewAdjustment { .. } => {
                model.get_mut(id).unwrap().allocated += raw.unwrap();
            }
            EventKind::Disbursement { .. } => model.get_mut(id).unwrap().paid_in += raw.unwrap(),
            EventKind::Payment { .. } | EventKind::Purchase { .. } => {
                model.get_mut(id).unwrap().spent += raw.unwrap()
            }
            EventKind::BudgetStopped { .. } => model.get_mut(id).unwrap().stopped = true,
            EventKind::OrganisationRegistered { .. } | EventKind::KeyRotated { .. } => {}
        }
    }
    let real: BTreeMap<&str, Figures> = h
        .ledger
        .budgets()
        .map(|b| {
            (
                b.id.as_str(),
                Figures {
                    allocated: printed_pence(b.allocated),
                    paid_in: printed_pence(b.paid_in),
                    spent: printed_pence(b.spent),
                    stopped: b.stopped,
                },
            )
        })
        .collect();
    assert_eq!(model, real);
}

fn replay(entries: &[LogEntry]) -> (Ledger, Vec<Event>) {
    let mut fresh = Ledger::new(LEDGER_ID, signing_key(ROOT, 0).verifying_key());
    let mut ids = std::collections::HashSet::new();
    let events = entries
        .iter()
        .map(|e| {
            let event = fresh
                .replay(e)
                .unwrap_or_else(|err| panic!("accepted entry does not replay: {err}"));
            // What `Engine::open` checks on top of `Ledger::replay`.
            assert!(
                ids.insert(event.event_id.clone()),
                "event_id reused in the log"
            );
            event
        })
        .collect();
    (fresh, events)
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

    /// Invariants after every event; refusals and duplicates change nothing;
    /// atomic batches are all or nothing and otherwise sequential;
    /// replay reproduces state and head; rolling back any suffix restores
    /// the earlier state.
    #[test]
    fn ledger_sequences(batches in scenario(), suffix in any::<usize>()) {
        let mut h = Harness::new();
        for batch in &batches {
            let before = h.clone();
            let pre = snapshot(&h.ledger);
            let (built, outcomes) = h.process(batch);
            if batch.atomic {
                // The same submissions, one by one, on the state before.
                let mut seq = before;
                let seq_out = seq.run(&built, false, h.now);
                match seq_out.iter().position(|o| o.is_err()) {
                    Some(i) => {
                        prop_assert_eq!(&outcomes[..], &seq_out[..=i], "atomic batch differs from sequential up to its first refusal");
                        prop_assert_eq!(&snapshot(&h.ledger), &pre, "failed atomic batch left changes");
                        prop_assert_eq!(h.log.len() as u64, pre.head.sequence);
                    }
                    None => {
                        prop_assert_eq!(&outcomes, &seq_out);
                        prop_assert_eq!(snapshot(&h.ledger), snapshot(&seq.ledger));
                        prop_assert_eq!(&h.log, &seq.log);
                    }
                }
            }
            check_model(&h);
        }
        prop_assert_eq!(h.log.len(), h.accepted.len());

        // Replay determinism.
        let (fresh, events) = replay(&h.log);
        prop_assert_eq!(snapshot(&fresh), snapshot(&h.ledger));
        prop_assert_eq!(fresh.head(), h.ledger.head());
        for (e, a) in events.iter().zip(&h.accepted) {
            prop_assert_eq!(e, &a.event);
        }
        // recorded_at never goes backwards along the log.
        for w in h.log.windows(2) {
            prop_assert!(w[0].recorded_at_micros <= w[1].recorded_at_micros);
            prop_assert_eq!(w[1].prev_hash, w[0].hash);
        }

        // Rolling back any suffix restores the earlier state.
        let n = h.log.len();
        let k = suffix % (n + 1);
        let mut rolled = h.ledger.clone();
        rolled.rollback(h.undos[n - k..].to_vec());
        prop_assert_eq!(&snapshot(&rolled), &h.snapshots[n - k]);
        let (prefix, _) = replay(&h.log[..n - k]);
        prop_assert_eq!(snapshot(&prefix), snapshot(&rolled));
        // And rolling everything back gives the empty ledger.
        let mut empty = h.ledger.clone();
        empty.rollback(h.undos.clone());
        prop_assert_eq!(&snapshot(&empty), &h.snapshots[0]);
    }

    /// Applying a random batch and rolling it back restores exactly the state
    /// before it (what atomic requests rely on), at any point of a history.
    #[test]
    fn rollback_restores_state(batches in scenario(), trial in prop::collection::vec(step(), 1..12)) {
        let mut h = Harness::new();
        for batch in &batches {
            h.process(batch);
        }
        let pre = snapshot(&h.ledger);
        let pre_len = h.log.len();
        let now = h.now + 1_000_000;
        let built: Vec<_> = trial.iter().map(|s| h.build(s, now)).collect();
        h.run(&built, false, now);
        let undo = h.undos.split_off(pre_len);
        h.ledger.rollback(undo);
        h.truncate(pre_len);
        prop_assert_eq!(snapshot(&h.ledger), pre);
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Any pence value in range prints with two decimals and parses back.
    #[test]
    fn money_round_trips(p in 1i64..=100_000_000_000) {
        let m = Money::from_pence(p);
        let s = m.to_string();
        prop_assert_eq!(&s, &pence_str(p));
        prop_assert_eq!(printed_pence(m), p);
        prop_assert_eq!(parse_positive(&s), Ok(m));
        prop_assert_eq!(s.parse::<Money>(), Ok(m));
        let neg = parse_nonzero_delta(&format!("-{s}")).unwrap();
        prop_assert_eq!(neg, Money::from_pence(-p));
        prop_assert_eq!(neg.to_string(), format!("-{s}"));
        prop_assert_eq!(printed_pence(neg), -p);
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
            prop_assert_eq!(printed_pence(total), pence);
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
        let oracle = oracle_pence(&s);
        match (s.parse::<Money>(), oracle) {
            (Ok(m), Some(p)) => {
                prop_assert_eq!(m, Money::from_pence(p));
                prop_assert_eq!(printed_pence(m).abs(), p.abs());
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
            Ok(m) => prop_assert_eq!(Some(printed_pence(m)), oracle_pence(&s)),
            Err(_) => prop_assert_eq!(oracle_pence(&s), None),
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
    let (mut atomic_ok, mut atomic_failed, mut duplicates) = (0, 0, 0);
    for _ in 0..48 {
        let batches = scenario().new_tree(&mut runner).unwrap().current();
        let mut h = Harness::new();
        for batch in &batches {
            let (_, outcomes) = h.process(batch);
            if batch.atomic && batch.steps.len() > 1 {
                if outcomes.iter().all(|o| o.is_ok()) {
                    atomic_ok += 1;
                } else {
                    atomic_failed += 1;
                }
            }
            for o in &outcomes {
                match o {
                    Ok(Outcome::Duplicate(_)) => duplicates += 1,
                    Ok(Outcome::Written(_)) => {}
                    Err(r) => {
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
                            _ => format!("{:?}", r.code),
                        };
                        *refused.entry(key).or_default() += 1;
                    }
                }
            }
        }
        for a in &h.accepted {
            *accepted.entry(a.event.kind.name()).or_default() += 1;
        }
    }
    eprintln!("accepted: {accepted:#?}\nrefused: {refused:#?}\natomic ok {atomic_ok}, atomic failed {atomic_failed}, duplicates {duplicates}");
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
        "AlreadyExists",
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
    assert!(atomic_ok > 0 && atomic_failed > 0 && duplicates > 0);
}
