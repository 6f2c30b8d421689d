//! The validation rules of docs/api.md §6 restated from the document, kept
//! apart from `phb_domain::event` and from the shared simulation model on
//! purpose: a second reading that can disagree with the first.

use crate::oracle::{oracle_pence, MAX_PENCE};
use phb_domain::event::{
    EventKind, Management, MAX_FUTURE_MICROS, MAX_ID_LEN, MAX_REFERENCE_TEXT_LEN, MAX_REF_LEN,
    MAX_TEXT_LEN, MIN_OCCURRED_AT_MICROS,
};
use phb_domain::Event;
use phb_proto::v1 as pb;
use phb_sim::amount::{amount_of, figure_pence, raw_amount};

fn is_id(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// docs/api.md, "Spending categories", restated from the document.
fn is_category(s: &str) -> bool {
    const VOCABULARY: [&str; 24] = [
        "personal_assistant",
        "agency_care",
        "respite",
        "therapy",
        "equipment",
        "it_equipment",
        "education",
        "exercise_wellbeing",
        "transport",
        "community_activity",
        "clinical_service",
        "household_support",
        "payroll_and_account_fees",
        "employer_insurance",
        "tax_and_pension",
        "cash",
        "gp_primary_care",
        "emergency_care",
        "inpatient_care",
        "pharmaceuticals",
        "alcohol",
        "tobacco",
        "gambling",
        "debt_repayment",
    ];
    VOCABULARY.contains(&s)
}

/// docs/api.md, "Text fields", restated from the document rather than from
/// `phb_domain::text`: at most `max` characters; no control character (Cc),
/// line or paragraph separator, bidi control, tag character, interlinear
/// annotation or unassigned default-ignorable code point; at most two
/// default-ignorable or format characters in a row; and, unless empty and
/// optional, at least one character that is none of those, not White_Space,
/// and not U+2800 or U+1D159.
fn is_text(s: &str, max: usize, required: bool) -> bool {
    // Unicode 16.0.0: Default_Ignorable_Code_Point ∪ General_Category=Cf.
    const INVISIBLE: [(u32, u32); 24] = [
        (0x00ad, 0x00ad),
        (0x034f, 0x034f),
        (0x0600, 0x0605),
        (0x061c, 0x061c),
        (0x06dd, 0x06dd),
        (0x070f, 0x070f),
        (0x0890, 0x0891),
        (0x08e2, 0x08e2),
        (0x115f, 0x1160),
        (0x17b4, 0x17b5),
        (0x180b, 0x180f),
        (0x200b, 0x200f),
        (0x202a, 0x202e),
        (0x2060, 0x206f),
        (0x3164, 0x3164),
        (0xfe00, 0xfe0f),
        (0xfeff, 0xfeff),
        (0xffa0, 0xffa0),
        (0xfff0, 0xfffb),
        (0x110bd, 0x110bd),
        (0x110cd, 0x110cd),
        (0x13430, 0x1343f),
        (0x1bca0, 0x1bca3),
        (0x1d173, 0x1d17a),
    ];
    let within = |u: u32, table: &[(u32, u32)]| table.iter().any(|&(a, b)| a <= u && u <= b);
    let forbidden = |c: char| {
        let u = u32::from(c);
        u < 0x20
            || (0x7f..=0x9f).contains(&u)
            || [0x061c, 0x200e, 0x200f, 0x2028, 0x2029, 0x2065].contains(&u)
            || (0x202a..=0x202e).contains(&u)
            || (0x2066..=0x2069).contains(&u)
            || (0xfff0..=0xfffb).contains(&u)
            // Only VARIATION SELECTOR-17..256 are allowed in U+E0000..U+E0FFF.
            || ((0xe0000..=0xe0fff).contains(&u) && !(0xe0100..=0xe01ef).contains(&u))
    };
    let invisible =
        |c: char| within(u32::from(c), &INVISIBLE) || (0xe0000..=0xe0fff).contains(&u32::from(c));
    let visible = |c: char| {
        !forbidden(c) && !invisible(c) && !c.is_whitespace() && c != '\u{2800}' && c != '\u{1d159}'
    };
    let longest_invisible_run = s
        .chars()
        .fold((0, 0), |(run, longest), c| {
            let run = if invisible(c) { run + 1 } else { 0 };
            (run, longest.max(run))
        })
        .1;
    s.chars().count() <= max
        && !s.chars().any(forbidden)
        && longest_invisible_run <= 2
        && ((s.is_empty() && !required) || s.chars().any(visible))
}

/// Re-checks, independently of `event.rs`, everything docs/api.md §6 says
/// a validated event satisfies, against the protobuf it was decoded from.
pub fn check_event(ev: &Event, raw: &pb::Event, now: i64) {
    assert!(
        is_id(&ev.event_id, MAX_ID_LEN),
        "event_id {:?}",
        ev.event_id
    );
    assert_eq!(ev.event_id, raw.event_id);
    assert_eq!(ev.budget_id, raw.budget_id);
    if ev.kind.is_organisation_event() {
        assert!(
            ev.budget_id.is_empty(),
            "organisation event with a budget_id"
        );
    } else {
        assert!(
            is_id(&ev.budget_id, MAX_ID_LEN),
            "budget_id {:?}",
            ev.budget_id
        );
    }
    let ts = raw
        .occurred_at
        .as_ref()
        .expect("accepted without occurred_at");
    assert!((0..1_000_000_000).contains(&ts.nanos), "nanos {}", ts.nanos);
    let micros = i128::from(ts.seconds) * 1_000_000 + i128::from(ts.nanos / 1000);
    assert_eq!(i128::from(ev.occurred_at_micros), micros);
    assert!(
        ev.occurred_at_micros >= MIN_OCCURRED_AT_MICROS,
        "before 2000"
    );
    assert!(
        i128::from(ev.occurred_at_micros) <= i128::from(now) + i128::from(MAX_FUTURE_MICROS),
        "more than 24 h ahead of {now}"
    );
    let raw_kind = raw.kind.as_ref().expect("accepted without a kind");
    if let Some(m) = amount_of(&ev.kind) {
        let s = raw_amount(raw_kind).expect("amount from a kind without one");
        let p = oracle_pence(s).unwrap_or_else(|| panic!("amount {s:?} accepted"));
        assert_eq!(figure_pence(m, "amount"), p, "amount {s:?}");
        if matches!(ev.kind, EventKind::ReviewAdjustment { .. }) {
            assert_ne!(p, 0, "zero delta {s:?} accepted");
        } else {
            assert!(p > 0, "non-positive amount {s:?} accepted");
        }
        assert!(p.abs() <= MAX_PENCE);
    }
    match &ev.kind {
        EventKind::OrganisationRegistered {
            organisation_id,
            roles,
            ..
        } => {
            assert!(is_id(organisation_id, MAX_ID_LEN));
            assert_ne!(organisation_id, "root");
            assert!(!roles.is_empty());
            assert!(roles.windows(2).all(|w| w[0] < w[1]), "roles {roles:?}");
        }
        EventKind::KeyRotated {
            organisation_id, ..
        } => assert!(is_id(organisation_id, MAX_ID_LEN)),
        EventKind::BudgetOpened {
            holder_ref,
            commissioner_id,
            period_start,
            period_end,
            management,
            funds_holder_id,
            payroll_provider_id,
            plan_facilitator_id,
            // Closed enums: any value decoded is one of them.
            cohort: _,
            age_band: _,
        } => {
            assert!(is_id(holder_ref, MAX_REF_LEN));
            assert!(is_id(commissioner_id, MAX_ID_LEN));
            assert!(period_start <= period_end);
            for d in [period_start, period_end] {
                assert!((2000..=2199).contains(&d.year) && (1..=12).contains(&d.month));
                let leap = (d.year % 4 == 0 && d.year % 100 != 0) || d.year % 400 == 0;
                let days = [
                    31,
                    if leap { 29 } else { 28 },
                    31,
                    30,
                    31,
                    30,
                    31,
                    31,
                    30,
                    31,
                    30,
                    31,
                ];
                assert!(d.day >= 1 && d.day <= days[usize::from(d.month - 1)], "{d}");
            }
            for id in [funds_holder_id, payroll_provider_id, plan_facilitator_id]
                .into_iter()
                .flatten()
            {
                assert!(is_id(id, MAX_ID_LEN));
            }
            match management {
                Management::ThirdParty => assert!(funds_holder_id.is_some()),
                Management::Notional => {
                    assert!(funds_holder_id.is_none() && payroll_provider_id.is_none())
                }
                Management::DirectPayment => {}
            }
        }
        EventKind::Payment {
            payee_ref,
            category,
            reference,
            ..
        } => {
            assert!(is_id(payee_ref, MAX_REF_LEN));
            assert!(is_category(category), "category {category:?}");
            assert!(
                is_text(reference, MAX_REFERENCE_TEXT_LEN, false),
                "reference {reference:?}"
            );
        }
        EventKind::Purchase {
            category,
            supplier_ref,
            description,
            receipt_ref,
            ..
        } => {
            assert!(is_category(category), "category {category:?}");
            assert!(is_id(supplier_ref, MAX_REF_LEN));
            assert!(is_text(description, MAX_TEXT_LEN, false));
            assert!(is_text(receipt_ref, MAX_REFERENCE_TEXT_LEN, false));
        }
        EventKind::ReviewAdjustment { reason, .. } | EventKind::BudgetStopped { reason } => {
            assert!(is_text(reason, MAX_TEXT_LEN, true), "reason {reason:?}");
        }
        EventKind::Allocation { .. } | EventKind::Disbursement { .. } => {}
        EventKind::FacilitatorAppointed { organisation_id } => {
            assert!(is_id(organisation_id, MAX_ID_LEN))
        }
        EventKind::BudgetSuspended { reason } => {
            assert!(is_text(reason, MAX_TEXT_LEN, true), "reason {reason:?}")
        }
        EventKind::BudgetResumed | EventKind::HolderDied { .. } | EventKind::Reclaim { .. } => {}
        EventKind::Refund {
            original_sequence, ..
        } => assert!(*original_sequence > 0),
        EventKind::CardTransaction {
            card_ref,
            merchant_ref,
            mcc,
            ..
        } => {
            assert!(is_id(card_ref, MAX_REF_LEN) && is_id(merchant_ref, MAX_REF_LEN));
            assert!((1..=9999).contains(mcc));
        }
        EventKind::HospitalAdmission { .. } | EventKind::HospitalDischarge { .. } => {}
        EventKind::ReviewRecorded { outcome, .. } => {
            assert!(is_text(outcome, MAX_TEXT_LEN, true), "outcome {outcome:?}")
        }
        EventKind::ServiceAgreementApproved(a) => {
            // docs/api.md "Service agreements", restated.
            assert!(is_id(&a.agreement_id, MAX_ID_LEN));
            assert!(is_id(&a.payee_ref, MAX_REF_LEN));
            assert!(is_category(&a.category), "category {:?}", a.category);
            assert!(a.rate > phb_domain::Money::ZERO);
            assert!(a.valid_from <= a.valid_to);
        }
        EventKind::CarePlanApproved(plan) => {
            // docs/api.md, "Care plans", restated.
            assert!(is_id(&plan.plan_id, MAX_ID_LEN));
            assert!((1..=100).contains(&plan.lines.len()));
            for (i, l) in plan.lines.iter().enumerate() {
                assert!(is_id(&l.line_id, MAX_ID_LEN));
                assert!(plan.lines[..i].iter().all(|x| x.line_id != l.line_id));
                assert!(is_category(&l.category), "category {:?}", l.category);
                assert!(l.annual > phb_domain::Money::ZERO);
                assert!(is_text(&l.description, MAX_TEXT_LEN, false));
            }
            assert!(!plan.contingency.is_negative());
            assert!(plan.valid_from <= plan.valid_to && plan.valid_from <= plan.review_due);
        }
        EventKind::ExternalMatchRecorded {
            source, reference, ..
        } => assert!(is_id(source, MAX_REF_LEN) && is_id(reference, MAX_REF_LEN)),
        EventKind::ControlsConfigured(c) => {
            // proto ControlsConfigured, restated: defaults filled, in range.
            assert!((1..=24).contains(&c.worker_hours_per_day));
            assert!((2..=1000).contains(&c.refusals_count));
            assert!(c.spike_multiple.is_sign_positive() && !c.spike_multiple.is_zero());
        }
        EventKind::FlagReviewed { flag_id, note, .. } => {
            // "{CODE}:{budget_id}:{key}" naming the event's budget.
            let mut parts = flag_id.splitn(2, ':');
            let code = parts.next().unwrap_or_default();
            assert!(
                phb_domain::event::FLAG_CODES.contains(&code),
                "flag id {flag_id:?}"
            );
            assert!(
                flag_id.starts_with(&format!("{code}:{}:", ev.budget_id)),
                "flag id {flag_id:?}"
            );
            assert!(is_text(note, 1024, true), "note {note:?}");
        }
    }
}
