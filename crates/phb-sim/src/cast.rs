//! The cast: the root key and a handful of organisations, each with keys
//! derived deterministically from small seeds, and the budgets they run.
//! The fuzz seeder (`fuzz/seed.rs`) builds the same cast with
//! `phb_client::Signer`.
//!
//! The committed fuzz corpus indexes into these tables (a byte modulo
//! `ORGS.len()` or `BUDGETS.len()`) and holds events signed for
//! [`LEDGER_ID`] with these keys: changing a name, an order or a length
//! changes what every corpus input means.

use ed25519_dalek::{Signer as _, SigningKey};
use phb_domain::event::Management;
use phb_domain::{Ledger, SignedEvent};
use phb_proto::v1 as pb;
use prost::Message;

/// The ledger id every simulation runs under (the name is the fuzz
/// corpus's, which holds events signed for it).
pub const LEDGER_ID: &str = "phb-fuzz-ledger";
/// 2024-01-01T00:00:00Z in microseconds: the server clock at the start.
pub const T0: i64 = 1_704_067_200 * 1_000_000;
/// One minute in microseconds.
pub const MINUTE: i64 = 60 * 1_000_000;
/// One hour in microseconds.
pub const HOUR: i64 = 60 * MINUTE;
/// One day in microseconds.
pub const DAY: i64 = 24 * HOUR;

/// Index of the root signer in `ORGS`.
pub const ROOT: usize = 0;
/// Index of the organisation no setup registers.
pub const GHOST: usize = 7;
/// Signer ids. Index 0 is the ledger's root key.
pub const ORGS: [&str; 8] = [
    "root", "comm-a", "comm-b", "payroll", "tp", "acct", "both", "ghost",
];
/// Keys per organisation: 0 is registered at setup, the others are what a
/// rotation may move to (or a stale key after one).
pub const KEYS_PER_ORG: usize = 4;

/// The roles each organisation is registered with at setup.
pub fn roles(org: usize) -> Vec<pb::Role> {
    use pb::Role as R;
    match org {
        1 => vec![R::Commissioner],
        2 => vec![R::Commissioner, R::Auditor],
        3 => vec![R::PayrollProvider],
        4 => vec![R::ThirdParty],
        5 => vec![R::AccountProvider],
        6 => vec![R::PayrollProvider, R::ThirdParty],
        7 => vec![R::Auditor],
        _ => vec![],
    }
}

/// The 32-byte secret seed of key `k` of organisation `org`.
pub fn secret(org: usize, k: usize) -> [u8; 32] {
    [(10 * org + 1 + k) as u8; 32]
}

/// Key `k` of organisation `org`.
pub fn signing_key(org: usize, k: usize) -> SigningKey {
    SigningKey::from_bytes(&secret(org, k))
}

/// The index of a signer id in `ORGS`, if it is one.
pub fn org_index(id: &str) -> Option<usize> {
    ORGS.iter().position(|o| *o == id)
}

/// The key `org` signs with now: the cast key (of any member, the root's
/// included) that the ledger holds for it, else its setup key.
pub fn current_key(l: &Ledger, org: usize) -> SigningKey {
    l.signer_key(ORGS[org])
        .and_then(|k| {
            (0..ORGS.len())
                .flat_map(|o| (0..KEYS_PER_ORG).map(move |i| signing_key(o, i)))
                .find(|sk| sk.verifying_key() == *k)
        })
        .unwrap_or_else(|| signing_key(org, 0))
}

/// A budget of the cast.
pub struct BudgetCfg {
    /// Its id.
    pub id: &'static str,
    /// Index of its commissioner.
    pub commissioner: usize,
    /// How its money is held.
    pub management: pb::Management,
    /// Index of its funds holder.
    pub funds_holder: Option<usize>,
    /// Index of its payroll provider.
    pub payroll: Option<usize>,
}

/// The budgets. The last is never opened by the setup.
pub const BUDGETS: [BudgetCfg; 6] = [
    BudgetCfg {
        id: "b-dp-1",
        commissioner: 1,
        management: pb::Management::DirectPayment,
        funds_holder: Some(5),
        payroll: Some(3),
    },
    BudgetCfg {
        id: "b-dp-2",
        commissioner: 2,
        management: pb::Management::DirectPayment,
        funds_holder: None,
        payroll: Some(6),
    },
    BudgetCfg {
        id: "b-tp-1",
        commissioner: 1,
        management: pb::Management::ThirdParty,
        funds_holder: Some(4),
        payroll: Some(3),
    },
    BudgetCfg {
        id: "b-tp-2",
        commissioner: 2,
        management: pb::Management::ThirdParty,
        funds_holder: Some(6),
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
        id: "b-late",
        commissioner: 2,
        management: pb::Management::DirectPayment,
        funds_holder: Some(5),
        payroll: Some(6),
    },
];

/// A protobuf timestamp for microseconds since the epoch.
pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// An event of this ledger.
pub fn event(
    event_id: &str,
    budget_id: &str,
    occurred_at: i64,
    kind: pb::event::Kind,
) -> pb::Event {
    pb::Event {
        event_id: event_id.to_string(),
        ledger_id: LEDGER_ID.to_string(),
        budget_id: budget_id.to_string(),
        occurred_at: Some(timestamp(occurred_at)),
        kind: Some(kind),
    }
}

/// Signs `bytes` as `ORGS[org]` with key `k`.
pub fn sign_bytes(org: usize, k: usize, bytes: Vec<u8>) -> SignedEvent {
    sign_bytes_with(&signing_key(org, k), org, bytes)
}

/// Signs `bytes` as `ORGS[org]` with `key` (its current key, say, or
/// someone else's).
pub fn sign_bytes_with(key: &SigningKey, org: usize, bytes: Vec<u8>) -> SignedEvent {
    SignedEvent {
        signature: key.sign(&bytes).to_bytes().to_vec(),
        event: bytes,
        signer_id: ORGS[org].to_string(),
    }
}

/// Serializes and signs `ev` as `ORGS[org]` with key `k`.
pub fn sign(org: usize, k: usize, ev: &pb::Event) -> SignedEvent {
    sign_bytes(org, k, ev.encode_to_vec())
}

/// Registration of `org` with its setup roles and key 0.
pub fn register_kind(org: usize) -> pb::event::Kind {
    pb::event::Kind::OrganisationRegistered(pb::OrganisationRegistered {
        organisation_id: ORGS[org].to_string(),
        roles: roles(org).iter().map(|r| *r as i32).collect(),
        public_key: signing_key(org, 0).verifying_key().to_bytes().to_vec(),
    })
}

/// The natural BudgetOpened of budget `b`.
pub fn open_kind(b: usize) -> pb::event::Kind {
    let cfg = &BUDGETS[b];
    let name = |o: Option<usize>| o.map(|o| ORGS[o].to_string()).unwrap_or_default();
    pb::event::Kind::BudgetOpened(pb::BudgetOpened {
        holder_ref: format!("holder-{b}"),
        commissioner_id: ORGS[cfg.commissioner].to_string(),
        period_start: "2024-04-01".to_string(),
        period_end: "2025-03-31".to_string(),
        management: cfg.management as i32,
        funds_holder_id: name(cfg.funds_holder),
        payroll_provider_id: name(cfg.payroll),
        plan_facilitator_id: String::new(),
        ..Default::default()
    })
}

/// Who should sign a commissioner's event on budget `b`: its commissioner
/// as the ledger has it, or as configured if it is not open.
pub fn commissioner(l: &Ledger, b: usize) -> usize {
    l.budget(BUDGETS[b].id)
        .and_then(|x| org_index(&x.commissioner_id))
        .unwrap_or(BUDGETS[b].commissioner)
}

/// Who should sign a payment on budget `b`: its commissioner if notional;
/// else its payroll provider (`via_payroll`) or funds holder, whichever it
/// has, preferring the one asked for; else its commissioner.
pub fn payer(l: &Ledger, b: usize, via_payroll: bool) -> usize {
    match l.budget(BUDGETS[b].id) {
        Some(x) if x.management == Management::Notional => commissioner(l, b),
        Some(x) => {
            let payroll = x.payroll_provider_id.as_deref().and_then(org_index);
            let holder = x.funds_holder_id.as_deref().and_then(org_index);
            let first = if via_payroll {
                payroll.or(holder)
            } else {
                holder.or(payroll)
            };
            first.unwrap_or_else(|| commissioner(l, b))
        }
        None => commissioner(l, b),
    }
}

/// Who should sign a purchase on budget `b`: its funds holder unless it is
/// notional or has none, else its commissioner.
pub fn purchaser(l: &Ledger, b: usize) -> usize {
    match l.budget(BUDGETS[b].id) {
        Some(x) if x.management != Management::Notional => x
            .funds_holder_id
            .as_deref()
            .and_then(org_index)
            .unwrap_or_else(|| commissioner(l, b)),
        _ => commissioner(l, b),
    }
}

/// The categories every setup care plan has a line for (spending needs a
/// plan line: docs/api.md, "Checks at payment time").
pub const PLAN_CATEGORIES: [&str; 3] = ["personal_assistant", "respite", "exercise_wellbeing"];
/// The payees every setup budget has service agreements with: as a
/// personal assistant for `personal_assistant`, and as a provider for
/// `respite`.
pub const AGREED_PAYEES: [&str; 2] = ["pa-001", "prov:cmht.7"];
/// The first day setup plans and agreements are in force (before `T0`).
pub const IN_FORCE_FROM: &str = "2023-12-01";
/// The last day setup plans and agreements are in force.
pub const IN_FORCE_TO: &str = "2025-03-31";

/// The agreement id a payment to `payee_ref` (as `payee_kind`, a
/// `pb::PayeeKind` number) in `category` names; setup approves those of
/// `agreement_kinds`, so other payees, kinds and categories name an
/// agreement that does not exist.
pub fn agreement_id(payee_kind: i32, payee_ref: &str, category: &str) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(24)
            .collect()
    };
    format!("agr-{payee_kind}-{}-{}", safe(payee_ref), safe(category))
}

/// A Payment under the setup's agreements: rate 1.00 per item, so the
/// units are the amount; service on `IN_FORCE_FROM`, before any payment.
/// Tax and pension payments (and unspecified kinds) name no agreement.
pub fn payment(
    amount: &str,
    payee_kind: i32,
    payee_ref: &str,
    category: &str,
    reference: &str,
) -> pb::Payment {
    let mut p = pb::Payment {
        amount: amount.to_string(),
        payee_kind,
        payee_ref: payee_ref.to_string(),
        category: category.to_string(),
        reference: reference.to_string(),
        ..Default::default()
    };
    if payee_kind == pb::PayeeKind::PersonalAssistant as i32
        || payee_kind == pb::PayeeKind::Provider as i32
    {
        p.agreement_id = agreement_id(payee_kind, payee_ref, category);
        p.units = amount.to_string();
        p.service_from = IN_FORCE_FROM.to_string();
        p.service_to = IN_FORCE_FROM.to_string();
    }
    p
}

/// The setup care plan: a line of £1,000,000 for each `PLAN_CATEGORIES`,
/// so the plan never binds before the money does (the pence model knows
/// nothing of plans).
pub fn plan_kind() -> pb::event::Kind {
    pb::event::Kind::CarePlanApproved(pb::CarePlanApproved {
        plan_id: "plan-1".into(),
        lines: PLAN_CATEGORIES
            .iter()
            .map(|c| pb::PlanLine {
                line_id: format!("line-{c}"),
                category: c.to_string(),
                annual_amount: "1000000.00".into(),
                description: "setup line".into(),
            })
            .collect(),
        contingency_amount: "0.00".into(),
        valid_from: IN_FORCE_FROM.into(),
        valid_to: IN_FORCE_TO.into(),
        review_due: "2024-10-01".into(),
    })
}

/// The setup's service agreements: each of `AGREED_PAYEES` as a personal
/// assistant (for `personal_assistant`) and as a provider (for `respite`),
/// at 1.00 per unit with no weekly limit.
pub fn agreement_kinds() -> Vec<pb::event::Kind> {
    let kinds = [
        (
            pb::PayeeKind::PersonalAssistant,
            pb::Sector::Individual,
            pb::Unit::Hour,
            PLAN_CATEGORIES[0],
        ),
        (
            pb::PayeeKind::Provider,
            pb::Sector::Independent,
            pb::Unit::Item,
            PLAN_CATEGORIES[1],
        ),
    ];
    let mut out = Vec::new();
    for (kind, sector, unit, category) in kinds {
        for payee in AGREED_PAYEES {
            out.push(pb::event::Kind::ServiceAgreementApproved(
                pb::ServiceAgreementApproved {
                    agreement_id: agreement_id(kind as i32, payee, category),
                    payee_ref: payee.to_string(),
                    payee_kind: kind as i32,
                    payee_sector: sector as i32,
                    category: category.to_string(),
                    unit: unit as i32,
                    rate: "1.00".into(),
                    max_units_per_week: 0,
                    valid_from: IN_FORCE_FROM.into(),
                    valid_to: IN_FORCE_TO.into(),
                    connected_person: false,
                },
            ));
        }
    }
    out
}

/// The setup: registrations of every organisation but the ghost, then each
/// budget but the last opened, given the setup care plan and agreements,
/// allocated £4,800 and (unless notional) disbursed £1,200. `mask` bit `i` skips step `i` (so the fuzzer can start
/// from a partial cast); later steps that depend on a skipped one are
/// simply refused by the ledger.
pub fn setup_events(mask: u32) -> Vec<SignedEvent> {
    let at = T0 - DAY;
    let mut out = Vec::new();
    let mut step = 0;
    let mut keep = || {
        let k = mask & (1 << (step % 32)) == 0;
        step += 1;
        k
    };
    for org in 1..GHOST {
        if keep() {
            let ev = event(&format!("setup-reg-{org}"), "", at, register_kind(org));
            out.push(sign(ROOT, 0, &ev));
        }
    }
    for (b, cfg) in BUDGETS.iter().enumerate().take(BUDGETS.len() - 1) {
        let c = cfg.commissioner;
        if keep() {
            let ev = event(&format!("setup-open-{b}"), cfg.id, at, open_kind(b));
            out.push(sign(c, 0, &ev));
        }
        if keep() {
            let ev = event(&format!("setup-plan-{b}"), cfg.id, at, plan_kind());
            out.push(sign(c, 0, &ev));
        }
        for (i, kind) in agreement_kinds().into_iter().enumerate() {
            let ev = event(&format!("setup-agr-{b}-{i}"), cfg.id, at, kind);
            out.push(sign(c, 0, &ev));
        }
        if keep() {
            let kind = pb::event::Kind::Allocation(pb::Allocation {
                amount: "4800.00".into(),
                basis: pb::AllocationBasis::NeedsBased as i32,
            });
            out.push(sign(
                c,
                0,
                &event(&format!("setup-alloc-{b}"), cfg.id, at, kind),
            ));
        }
        if cfg.management != pb::Management::Notional && keep() {
            let kind = pb::event::Kind::Disbursement(pb::Disbursement {
                amount: "1200.00".into(),
            });
            out.push(sign(
                c,
                0,
                &event(&format!("setup-disb-{b}"), cfg.id, at, kind),
            ));
        }
    }
    out
}
