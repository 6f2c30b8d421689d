//! Fuzz-chosen sequences of structurally valid, really signed events (keys
//! from small seeds, `phb_sim::cast`), singly or in atomic requests, driven
//! through the shared simulation model (`phb_sim`, which the property tests
//! drive too): its writer runs `Ledger` exactly as `phb-engine`'s writer
//! does (`Ledger::admit`: decode → duplicate? → authenticate → (signer,
//! event id) used? → decide → apply, a refusal by the rules recorded as a
//! refusal entry; an atomic request with a refused event rolls back its own
//! entries and, if the refusal was a decision of the rules, records every
//! one of its events as refused with `Ledger::admit_refused`).
//!
//! Asserts (`phb_sim::check`) after every admission: every budget's figures
//! are non-negative and consistent and equal an independent integer-pence
//! model of the applied events; a written event takes the next sequence and
//! an unused (signer, event id), is an organisation event exactly when root
//! signed it, is allowed by the authorisation rules as restated there, and
//! does not touch a stopped budget; a recorded refusal is a decision of the
//! rules (or the batch's), takes the next sequence and changes nothing else;
//! a duplicate, a retry of a recorded refusal (answered with that refusal)
//! or an unrecorded refusal changes nothing; an event id is refused
//! ALREADY_EXISTS only for its own signer's other bytes; an amount the
//! grammar refuses is never written or recorded. After each request:
//! re-submitting what was just written or recorded is answered the same way
//! again and changes nothing; an atomic one is all or nothing on budgets,
//! organisations and keys, and a failed one adds only its recorded
//! refusals. At the end: replaying the whole log (refusal entries included)
//! into a fresh ledger reproduces the state after every prefix and the same
//! events, with no (signer, event id) twice; every recorded refusal, sent
//! again, gets its refusal again; and rolling back any suffix of undo
//! records restores the state at that point.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use phb_domain::{Reject, SignedEvent};
use phb_proto::v1 as pb;
use phb_sim::cast::{
    self, org_index, signing_key, BUDGETS, DAY, GHOST, HOUR, KEYS_PER_ORG, LEDGER_ID, MINUTE, ORGS,
    ROOT, T0,
};
use phb_sim::check::Sim;
use phb_sim::writer::{Observer, Outcome, Writer};
use prost::Message;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

const MAX_BATCHES: usize = 16;
const MAX_STEPS: usize = 8;

// Every choice is a fixed-size value (no strings or vectors), so the fuzzer's
// byte mutations map onto steps evenly; most values of each knob give a
// valid, naturally signed event and a few give a fault, so sequences get deep
// into budget states instead of stopping at the first validation rule.

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Amount {
    /// Up to £655.36: within what the setup's budgets hold.
    Small(u16),
    /// Up to £1,000,000.
    Medium(u32),
    /// A valid amount, spelled in one of several ways (one of them has three
    /// decimals and is invalid).
    Spelled(u16, u8),
    /// Pence up to twice the bound.
    Big(u64),
    /// One of `BAD_AMOUNTS`.
    Bad(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    Register {
        org: u8,
        roles: u8,
        key: u8,
    },
    Rotate {
        org: u8,
        key: u8,
    },
    Open {
        budget: u8,
        shape: u8,
        who: [u8; 3],
        dates: u8,
    },
    Allocate {
        budget: u8,
        amount: Amount,
        basis: u8,
    },
    Disburse {
        budget: u8,
        amount: Amount,
    },
    Pay {
        budget: u8,
        amount: Amount,
        payee_kind: u8,
        category: u8,
        via_payroll: bool,
    },
    Purchase {
        budget: u8,
        amount: Amount,
        text: u8,
    },
    Review {
        budget: u8,
        delta: Amount,
        negative: bool,
        text: u8,
    },
    Stop {
        budget: u8,
        text: u8,
    },
    /// An earlier submission, verbatim.
    Resubmit(u16),
    /// An earlier submission with one byte changed, re-signed by its signer.
    Mutate {
        of: u16,
        pos: u16,
        xor: u8,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Step {
    op: Op,
    /// < 200: the natural signer and its current key; else a fault.
    sig: u8,
    alt: u8,
    /// < 240: a fresh event id; else a reused or invalid one.
    id: u8,
    /// < 200: that many minutes ago; else a clock fault.
    when: u8,
}

struct Batch {
    atomic: bool,
    /// How far the server clock moves first, in tens of minutes (may go back).
    advance: i8,
    steps: Vec<Step>,
}

struct Input {
    /// >= 192: skip the registrations in the low six bits.
    skip: u8,
    /// Which undo suffix to roll back at the end.
    rollback_at: u16,
    batches: Vec<Batch>,
}

impl Input {
    /// `skip`, `rollback_at`, then batches until the data runs out: a header
    /// byte (bit 0 atomic, the rest the step count), the clock advance, the
    /// steps.
    fn parse(data: &[u8]) -> arbitrary::Result<Input> {
        let mut u = Unstructured::new(data);
        let skip = u.arbitrary()?;
        let rollback_at = u.arbitrary()?;
        let mut batches = Vec::new();
        while !u.is_empty() && batches.len() < MAX_BATCHES {
            let header: u8 = u.arbitrary()?;
            let advance = u.arbitrary()?;
            let n = usize::from(header >> 1) % MAX_STEPS + 1;
            let mut steps = Vec::with_capacity(n);
            for _ in 0..n {
                if u.is_empty() {
                    break;
                }
                steps.push(u.arbitrary()?);
            }
            batches.push(Batch {
                atomic: header & 1 == 1,
                advance,
                steps,
            });
        }
        Ok(Input {
            skip,
            rollback_at,
            batches,
        })
    }
}

const TEXTS: [&str; 12] = [
    "annual review",
    "moved to cluster costs",
    "naïve ünïcode ✓ \u{1f469}\u{200d}\u{1f4bb}",
    "שלום",
    // Invalid from here.
    "",
    "   ",
    "tab\there",
    "chair \u{202e}00.001",
    "\u{200b}\u{3164}\u{2060}\u{feff}",
    "chair\u{e0048}\u{e0049}",
    "\u{1f600}\u{fe01}\u{fe02}\u{fe03}",
    "\u{2800}",
];
const CATEGORIES: [&str; 5] = [
    "personal_assistant",
    "respite",
    "exercise_wellbeing",
    "Bad Cat",
    "gambling",
];
const BAD_AMOUNTS: [&str; 16] = [
    "",
    "0",
    "0.00",
    "-5",
    "1e3",
    "NaN",
    " 5",
    "+5",
    "1,000",
    "١٢",
    "1.",
    ".5",
    "0.001",
    "1000000000.01",
    "99999999999",
    "--1",
];

/// Mostly `0..valid`, sometimes `valid..all`.
fn mostly(x: u8, valid: usize, all: usize) -> usize {
    if x < 224 {
        usize::from(x) % valid
    } else {
        valid + usize::from(x) % (all - valid)
    }
}

fn spell(pence: u64, style: u8) -> String {
    let (p, r) = (pence / 100, pence % 100);
    match style % 8 {
        0..=2 => format!("{p}.{r:02}"),
        3 => format!("{p}"),
        4 => format!("{p}.{}", r / 10),
        5 => format!("00{p}.{r:02}"),
        6 => format!("{p}.{r}"),
        _ => format!("{p}.{r:02}0"),
    }
}

fn amount_str(a: &Amount) -> String {
    match *a {
        Amount::Small(p) => spell(u64::from(p) + 1, 0),
        Amount::Medium(p) => spell(u64::from(p) % 100_000_000 + 1, 0),
        Amount::Spelled(p, style) => spell(u64::from(p) + 1, style),
        Amount::Big(p) => spell(p % 200_000_000_000, 0),
        Amount::Bad(i) => BAD_AMOUNTS[usize::from(i) % BAD_AMOUNTS.len()].to_string(),
    }
}

struct Run {
    sim: Sim,
    submitted: Vec<SignedEvent>,
    used_ids: Vec<String>,
    counter: u32,
    now: i64,
}

impl Run {
    /// The key `org` signs with now.
    fn current_key(&self, org: usize) -> SigningKey {
        cast::current_key(self.sim.ledger(), org)
    }

    /// (own shape, odd `who[0]`) any member of the cast.
    fn open_signer(&self, op: &Op) -> usize {
        match op {
            Op::Open {
                budget, shape, who, ..
            } => {
                if *shape >= 128 && who[0] % 2 == 1 {
                    usize::from(who[0] / 2) % ORGS.len()
                } else {
                    BUDGETS[usize::from(*budget) % BUDGETS.len()].commissioner
                }
            }
            _ => ROOT,
        }
    }

    fn natural_signer(&self, op: &Op) -> usize {
        let l = self.sim.ledger();
        let budget = |b: u8| usize::from(b) % BUDGETS.len();
        match op {
            Op::Register { .. } | Op::Rotate { .. } => ROOT,
            Op::Resubmit(_) | Op::Mutate { .. } => ROOT,
            Op::Open { .. } => self.open_signer(op),
            Op::Allocate { budget: b, .. }
            | Op::Disburse { budget: b, .. }
            | Op::Review { budget: b, .. }
            | Op::Stop { budget: b, .. } => cast::commissioner(l, budget(*b)),
            Op::Pay {
                budget: b,
                via_payroll,
                ..
            } => cast::payer(l, budget(*b), *via_payroll),
            Op::Purchase { budget: b, .. } => cast::purchaser(l, budget(*b)),
        }
    }

    fn kind(&self, op: &Op) -> Option<(String, pb::event::Kind)> {
        use pb::event::Kind as K;
        let budget = |b: u8| usize::from(b) % BUDGETS.len();
        let bid = |b: u8| BUDGETS[budget(b)].id.to_string();
        let text = |t: u8| TEXTS[mostly(t, 4, TEXTS.len())].to_string();
        let key = |org: usize, k: u8| match k {
            0..232 => signing_key(org, usize::from(k) % KEYS_PER_ORG)
                .verifying_key()
                .to_bytes()
                .to_vec(),
            232..244 => {
                // A small-order point: must be refused.
                let mut k = vec![0u8; 32];
                k[0] = 1;
                k
            }
            244..250 => signing_key(ROOT, 0).verifying_key().to_bytes().to_vec(),
            _ => vec![9u8; 31],
        };
        Some(match op {
            Op::Register { org, roles, key: k } => {
                let org = usize::from(*org) % ORGS.len();
                let rs: Vec<i32> = if *roles < 192 {
                    cast::roles(org).iter().map(|r| *r as i32).collect()
                } else {
                    (0..6).filter(|i| roles & (1 << i) != 0).collect()
                };
                (
                    String::new(),
                    K::OrganisationRegistered(pb::OrganisationRegistered {
                        organisation_id: ORGS[org].to_string(),
                        roles: rs,
                        public_key: key(org, *k),
                    }),
                )
            }
            Op::Rotate { org, key: k } => {
                let org = usize::from(*org) % ORGS.len();
                (
                    String::new(),
                    K::KeyRotated(pb::KeyRotated {
                        organisation_id: ORGS[org].to_string(),
                        new_public_key: key(org, *k),
                    }),
                )
            }
            Op::Open {
                budget: b,
                shape,
                who,
                dates,
            } => {
                let kind = if *shape < 128 {
                    cast::open_kind(budget(*b))
                } else {
                    // Its own shape: any holder and payroll provider (or
                    // none), any management; its natural commissioner
                    // unless bit 0 picks another.
                    let org = |x: u8| match usize::from(x) % (ORGS.len() + 1) {
                        i if i == ORGS.len() => String::new(),
                        i => ORGS[i].to_string(),
                    };
                    let (start, end) = [
                        ("2024-04-01", "2025-03-31"),
                        ("2024-02-29", "2024-02-29"),
                        ("2000-01-01", "2199-12-31"),
                        ("2025-03-31", "2024-04-01"),
                        ("2023-02-29", "2024-01-01"),
                    ][mostly(*dates, 3, 5)];
                    K::BudgetOpened(pb::BudgetOpened {
                        holder_ref: format!("holder-x{b}"),
                        commissioner_id: ORGS[self.open_signer(op)].to_string(),
                        period_start: start.into(),
                        period_end: end.into(),
                        management: [1, 2, 3, 0, 4][mostly(*shape, 3, 5)],
                        funds_holder_id: org(who[1]),
                        payroll_provider_id: org(who[2]),
                        plan_facilitator_id: String::new(),
                        ..Default::default()
                    })
                };
                (bid(*b), kind)
            }
            Op::Allocate {
                budget: b,
                amount,
                basis,
            } => (
                bid(*b),
                K::Allocation(pb::Allocation {
                    amount: amount_str(amount),
                    basis: [1, 2, 3, 4, 0, 5][mostly(*basis, 4, 6)],
                }),
            ),
            Op::Disburse { budget: b, amount } => (
                bid(*b),
                K::Disbursement(pb::Disbursement {
                    amount: amount_str(amount),
                }),
            ),
            Op::Pay {
                budget: b,
                amount,
                payee_kind,
                category,
                ..
            } => (
                bid(*b),
                K::Payment(cast::payment(
                    &amount_str(amount),
                    [1, 2, 0, 3][mostly(*payee_kind, 2, 4)],
                    "pa-001",
                    CATEGORIES[mostly(*category, 3, 5)],
                    "wk-12",
                )),
            ),
            Op::Purchase {
                budget: b,
                amount,
                text: t,
            } => (
                bid(*b),
                K::Purchase(pb::Purchase {
                    amount: amount_str(amount),
                    category: CATEGORIES[usize::from(*t) % 3].into(),
                    supplier_ref: "sup:1".into(),
                    description: text(*t),
                    receipt_ref: "r-1".into(),
                    ..Default::default()
                }),
            ),
            Op::Review {
                budget: b,
                delta,
                negative,
                text: t,
            } => {
                let d = amount_str(delta);
                (
                    bid(*b),
                    K::ReviewAdjustment(pb::ReviewAdjustment {
                        delta: if *negative { format!("-{d}") } else { d },
                        reason: text(*t),
                    }),
                )
            }
            Op::Stop { budget: b, text: t } => (
                bid(*b),
                K::BudgetStopped(pb::BudgetStopped { reason: text(*t) }),
            ),
            Op::Resubmit(_) | Op::Mutate { .. } => return None,
        })
    }

    fn build(&mut self, step: &Step) -> SignedEvent {
        match step.op {
            Op::Resubmit(i) if !self.submitted.is_empty() => {
                return self.submitted[usize::from(i) % self.submitted.len()].clone();
            }
            Op::Mutate { of, pos, xor } if !self.submitted.is_empty() => {
                let orig = &self.submitted[usize::from(of) % self.submitted.len()];
                let mut bytes = orig.event.clone();
                if !bytes.is_empty() {
                    let at = usize::from(pos) % bytes.len();
                    bytes[at] ^= xor;
                }
                let org = org_index(&orig.signer_id).unwrap_or(ROOT);
                let signed = cast::sign_bytes_with(&self.current_key(org), org, bytes);
                self.submitted.push(signed.clone());
                return signed;
            }
            _ => {}
        }
        let (budget_id, kind) = self
            .kind(&step.op)
            .unwrap_or_else(|| (String::new(), cast::register_kind(GHOST)));
        let event_id = match step.id {
            0..240 => {
                self.counter += 1;
                format!("ev-{}", self.counter)
            }
            240..250 if !self.used_ids.is_empty() => {
                self.used_ids[usize::from(step.alt) % self.used_ids.len()].clone()
            }
            250..253 => "has space".to_string(),
            253 => "x".repeat(129),
            _ => String::new(),
        };
        self.used_ids.push(event_id.clone());
        let occurred = match step.when {
            0..200 => Some(cast::timestamp(self.now - i64::from(step.when) * MINUTE)),
            200..210 => Some(cast::timestamp(self.now + 23 * HOUR)),
            210..220 => Some(cast::timestamp(self.now + 24 * HOUR + MINUTE)),
            220..225 => Some(cast::timestamp(946_684_799 * 1_000_000)),
            225..230 => Some(prost_types::Timestamp {
                seconds: self.now / 1_000_000,
                nanos: -1,
            }),
            230..235 => None,
            _ => Some(cast::timestamp(self.now - 400 * DAY)),
        };
        let ev = pb::Event {
            event_id,
            ledger_id: if step.id == 239 {
                "another-ledger".into()
            } else {
                LEDGER_ID.into()
            },
            budget_id,
            occurred_at: occurred,
            kind: Some(kind),
        };
        let mut bytes = ev.encode_to_vec();
        let natural = self.natural_signer(&step.op);
        let alt = usize::from(step.alt);
        let (signer, key) = match step.sig {
            0..200 => (natural, self.current_key(natural)),
            200..216 => {
                let o = alt % ORGS.len();
                (o, self.current_key(o))
            }
            216..232 => (natural, signing_key(natural, alt % KEYS_PER_ORG)),
            _ => (natural, self.current_key(natural)),
        };
        let mut signed = cast::sign_bytes_with(&key, signer, bytes.clone());
        match step.sig {
            232..240 => signed.signature[alt / 8 % 64] ^= 1 << (alt % 8),
            240..244 => {
                signed.signature.pop();
            }
            244..248 => {
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
                signed.event = bytes;
            }
            248.. => signed.signer_id = "nobody".into(),
            _ => {}
        }
        self.submitted.push(signed.clone());
        signed
    }

    fn batch(&mut self, batch: &Batch) {
        self.now += i64::from(batch.advance) * 10 * MINUTE;
        let steps = &batch.steps[..batch.steps.len().min(MAX_STEPS)];
        let built: Vec<_> = steps.iter().map(|s| self.build(s)).collect();
        if trace() {
            self.sim
                .request_with(&built, batch.atomic, self.now, &mut Tracer);
        } else {
            self.sim.request(&built, batch.atomic, self.now);
        }
    }
}

/// Prints every submission and its outcome, before the checks see it.
struct Tracer;

impl Observer for Tracer {
    fn batch_recorded(
        &mut self,
        _w: &Writer,
        built: &[SignedEvent],
        failed_at: usize,
        outcomes: &[Outcome],
        _start: usize,
    ) {
        eprintln!(
            "atomic batch of {} failed at {failed_at}, recorded: {outcomes:?}",
            built.len()
        );
    }

    fn after(
        &mut self,
        _w: &Writer,
        signed: &SignedEvent,
        outcome: &Outcome,
        recording: Option<&Reject>,
    ) {
        let what = pb::Event::decode(&*signed.event)
            .ok()
            .and_then(|e| e.kind.map(|k| (e.budget_id, k)))
            .map(|(b, k)| format!("{} {b}", kind_name(&k)));
        let how = match outcome {
            Outcome::Refused {
                reject,
                sequence,
                duplicate,
            } => format!(
                "Refused at {sequence}{} {:?} {}",
                if *duplicate { " (retry)" } else { "" },
                reject.code,
                reject.message
            ),
            Outcome::Rejected(e) => format!("Rejected {:?} {}", e.code, e.message),
            o => format!("{o:?}"),
        };
        let mode = if recording.is_some() {
            " [recording]"
        } else {
            ""
        };
        eprintln!(
            "{} {}{mode}: {how}",
            signed.signer_id,
            what.unwrap_or_default()
        );
    }
}

/// `PHB_FUZZ_TRACE=1`: print every submission and its outcome (for running
/// single inputs by hand; see docs/fuzzing.md).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("PHB_FUZZ_TRACE").is_some())
}

fn kind_name(k: &pb::event::Kind) -> &'static str {
    use pb::event::Kind as K;
    match k {
        K::OrganisationRegistered(_) => "OrganisationRegistered",
        K::KeyRotated(_) => "KeyRotated",
        K::BudgetOpened(_) => "BudgetOpened",
        K::Allocation(_) => "Allocation",
        K::Disbursement(_) => "Disbursement",
        K::Payment(_) => "Payment",
        K::Purchase(_) => "Purchase",
        K::ReviewAdjustment(_) => "ReviewAdjustment",
        K::BudgetStopped(_) => "BudgetStopped",
        K::CarePlanApproved(_) => "CarePlanApproved",
        K::FacilitatorAppointed(_) => "FacilitatorAppointed",
        K::BudgetSuspended(_) => "BudgetSuspended",
        K::BudgetResumed(_) => "BudgetResumed",
        K::HolderDied(_) => "HolderDied",
        K::Reclaim(_) => "Reclaim",
        K::Refund(_) => "Refund",
        K::ServiceAgreementApproved(_) => "ServiceAgreementApproved",
        K::CardTransaction(_) => "CardTransaction",
        K::HospitalAdmission(_) => "HospitalAdmission",
        K::HospitalDischarge(_) => "HospitalDischarge",
        K::ReviewRecorded(_) => "ReviewRecorded",
        K::ExternalMatchRecorded(_) => "ExternalMatchRecorded",
        K::ControlsConfigured(_) => "ControlsConfigured",
        K::FlagReviewed(_) => "FlagReviewed",
    }
}

/// The state after the setup, and what the checks need of it.
/// The state after the setup (each event checked as it is written), and
/// what the generator needs of it.
#[derive(Clone)]
struct Start {
    sim: Sim,
    setup: Vec<SignedEvent>,
}

fn start(mask: u32) -> Start {
    let setup = cast::setup_events(mask);
    let mut sim = Sim::new();
    sim.setup(&setup, T0 - HOUR);
    Start { sim, setup }
}

thread_local! {
    static STARTS: RefCell<HashMap<u32, Start>> = RefCell::new(HashMap::new());
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::parse(data) else {
        return;
    };
    // Mostly the whole cast; sometimes without some registrations.
    let mask = if input.skip < 192 {
        0
    } else {
        u32::from(input.skip & 63)
    };
    let s = STARTS.with(|c| {
        c.borrow_mut()
            .entry(mask)
            .or_insert_with(|| start(mask))
            .clone()
    });
    let mut run = Run {
        sim: s.sim,
        submitted: s.setup,
        used_ids: Vec::new(),
        counter: 0,
        now: T0,
    };
    for b in input.batches.iter().take(MAX_BATCHES) {
        run.batch(b);
    }
    // Replay, refusals final, and rolling back to a fuzz-chosen point.
    run.sim
        .finish(run.now + MINUTE, usize::from(input.rollback_at));
});
