//! The time-based flags (SURPLUS, REVIEW_OVERDUE, CASH_WITHOUT_RECEIPT) and
//! REPEATED_REFUSALS through the real binary (docs/flags.md): each from a
//! realistic scenario and its near miss, the clock moved with ListFlags'
//! `as_of`; `ControlsConfigured` changing a threshold; and a restart
//! deriving the same flags with the same ids.
//!
//! Every date here is fixed (the budgets run 2026-04-01 to 2027-03-31, and
//! past events are dated in 2026 by `occurred_at`), so the flags do not
//! depend on the day the tests run.

mod common;

use common::*;
use phb_client::{kinds, Kind, Signer};
use phb_proto::v1 as pb;
use tonic::Code;

/// Seconds since the epoch at `hour`:00 UTC on `date` (YYYY-MM-DD).
fn at_hour(date: &str, hour: i64) -> prost_types::Timestamp {
    let parts: Vec<&str> = date.split('-').collect();
    let d = phb_domain::event::Date {
        year: parts[0].parse().unwrap(),
        month: parts[1].parse().unwrap(),
        day: parts[2].parse().unwrap(),
    };
    prost_types::Timestamp {
        seconds: d.days() * 86_400 + hour * 3600,
        nanos: 0,
    }
}

/// Appends `kind` on `budget` by `signer`, occurring at noon on `date`.
async fn on_date(
    w: &World,
    signer: &Signer,
    budget: &str,
    date: &str,
    kind: Kind,
) -> pb::AppendResult {
    let mut e = w.event(budget, kind);
    e.occurred_at = Some(at_hour(date, 12));
    w.append_signed(signer.sign(&e)).await
}

/// The flags of `code` on `budget` as of midnight starting `date`, as the
/// auditor lists them.
async fn flags_on(w: &World, budget: &str, code: pb::FlagCode, date: &str) -> Vec<pb::Flag> {
    all_flags(
        &w.client,
        &w.auditor,
        pb::ListFlagsRequest {
            budget_id: budget.into(),
            code: code as i32,
            as_of: Some(at_hour(date, 0)),
            ..Default::default()
        },
    )
    .await
}

fn ids(flags: &[pb::Flag]) -> Vec<&str> {
    flags.iter().map(|f| f.flag_id.as_str()).collect()
}

fn threshold(f: &pb::Flag, name: &str) -> String {
    f.thresholds
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{name} not in {f:?}"))
        .value
        .clone()
}

/// A care plan with a line of 5,200.00 a year of personal assistance
/// (100.00 a week: 8 weeks is 800.00), the `extra` lines and `contingency`,
/// in force 2026-04-01 to 2027-03-31.
fn plan(extra: &[(&str, &str, &str, &str)], contingency: &str) -> Kind {
    let mut lines = vec![("pa", "personal_assistant", "5200.00", "PA support")];
    lines.extend_from_slice(extra);
    kinds::plan("plan-1", &lines, contingency)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surplus_above_eight_weeks_after_the_contingency_is_flagged_after_eleven_weeks() {
    let w = World::new().await;
    let c = w.commissioner.clone();
    let b = "sur";
    w.open_without_plan(b, pb::Management::DirectPayment).await;
    // 5,200.00 a year is 100.00 a week: 8 weeks is 800.00. Contingency 100.00.
    let plan_seq = w.ok(&c, b, plan(&[], "100.00")).await;
    w.fund(b, "5300.00", Some("900.00")).await;
    let surplus = pb::FlagCode::Surplus;
    // The period starts 2026-04-01: weeks 1-11 end on 2026-06-16; week 12
    // starts on 2026-06-17.
    let (week11, week12) = ("2026-06-16", "2026-06-17");
    // Held 900.00 less the contingency is 800.00: 8 weeks exactly.
    assert!(flags_on(&w, b, surplus, week12).await.is_empty());
    // A penny more.
    w.ok(&c, b, kinds::disburse("0.01")).await;
    assert!(
        flags_on(&w, b, surplus, week11).await.is_empty(),
        "muted in week 11"
    );
    let flags = flags_on(&w, b, surplus, week12).await;
    let id = format!("SURPLUS:{b}:{plan_seq}-900.01-0.00");
    assert_eq!(ids(&flags), [id.as_str()]);
    let f = &flags[0];
    assert_eq!(f.severity, pb::FlagSeverity::Low as i32);
    assert_eq!(f.sequences, [plan_seq]);
    assert_eq!(f.raised_at_sequence, w.log_len().await);
    assert_eq!(threshold(f, "surplus_weeks"), "8");
    assert_eq!(threshold(f, "surplus_mute_weeks"), "11");
    assert!(
        f.explanation.contains(
            "held 900.01, less 100.00 left of the contingency, is 800.01 as of 2026-06-17: 0.01 above 8 weeks"
        ) && f.explanation.contains("5200.00 a year, 100.00 a week"),
        "{}",
        f.explanation
    );
    // The same state at a later date: the same flag.
    assert_eq!(
        ids(&flags_on(&w, b, surplus, "2027-01-15").await),
        [id.as_str()]
    );
    // The commissioner dismisses it (unpaid wages are due); the review
    // stays with the flag however often it is derived.
    let review = kinds::flag_reviewed(&id, pb::FlagOutcome::Dismissed, "March wages unpaid");
    w.ok(&c, b, review).await;
    let f = &flags_on(&w, b, surplus, week12).await[0];
    assert_eq!(f.flag_id, id);
    assert_eq!(f.status, pb::FlagStatus::Dismissed as i32);
    // A new movement is a new state: a new, open flag.
    w.ok(&c, b, kinds::disburse("10.00")).await;
    let f = &flags_on(&w, b, surplus, week12).await[0];
    assert_eq!(f.flag_id, format!("SURPLUS:{b}:{plan_seq}-910.01-0.00"));
    assert_eq!(f.status, pb::FlagStatus::Open as i32);
    // Spending it brings the budget back under 8 weeks.
    let payroll = w.payroll.clone();
    w.pay(
        &payroll,
        b,
        "10.02",
        pb::PayeeKind::PersonalAssistant,
        "pa-1",
        "personal_assistant",
    )
    .await;
    assert!(flags_on(&w, b, surplus, week12).await.is_empty());
    w.ok(&c, b, kinds::disburse("0.02")).await;
    assert_eq!(flags_on(&w, b, surplus, week12).await.len(), 1);

    // The commissioner allows 9 weeks (900.00) from now on: 800.01 is
    // under it. The other commissioner's thresholds are untouched.
    w.ok(
        &c,
        "",
        kinds::controls(pb::ControlsConfigured {
            surplus_weeks: 9,
            ..Default::default()
        }),
    )
    .await;
    assert!(flags_on(&w, b, surplus, week12).await.is_empty());
    w.ok(&c, b, kinds::disburse("100.00")).await;
    let f = &flags_on(&w, b, surplus, week12).await[0];
    assert_eq!(threshold(f, "surplus_weeks"), "9");
    assert!(
        f.explanation.contains("0.01 above 9 weeks"),
        "{}",
        f.explanation
    );

    // Near misses: no plan; notional (the commissioner holds the money).
    w.open_without_plan("no-plan", pb::Management::DirectPayment)
        .await;
    w.fund("no-plan", "5000.00", Some("5000.00")).await;
    w.open_without_plan("notional", pb::Management::Notional)
        .await;
    w.ok(&c, "notional", plan(&[], "0.00")).await;
    w.fund("notional", "5000.00", None).await;
    for quiet in ["no-plan", "notional"] {
        assert!(flags_on(&w, quiet, surplus, "2027-01-15").await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn care_reviews_and_audits_are_overdue_after_twelve_weeks_and_twelve_months() {
    let w = World::new().await;
    let c = w.commissioner.clone();
    let b = "rev";
    w.open_direct(b).await;
    w.ok(
        &c,
        b,
        kinds::allocate("12000.00", pb::AllocationBasis::NeedsBased),
    )
    .await;
    let overdue = pb::FlagCode::ReviewOverdue;
    // Nothing disbursed: nothing due.
    assert!(flags_on(&w, b, overdue, "2027-12-01").await.is_empty());
    let first = assert_written(&on_date(&w, &c, b, "2026-04-01", kinds::disburse("1000.00")).await);
    assert_written(&on_date(&w, &c, b, "2026-05-01", kinds::disburse("1000.00")).await);
    // The first care review is due 12 weeks after 2026-04-01: 2026-06-24.
    assert!(flags_on(&w, b, overdue, "2026-06-24").await.is_empty());
    let late = flags_on(&w, b, overdue, "2026-06-25").await;
    let care = format!("REVIEW_OVERDUE:{b}:care-2026-06-24");
    assert_eq!(ids(&late), [care.as_str()]);
    let f = &late[0];
    assert_eq!(f.severity, pb::FlagSeverity::Low as i32);
    assert_eq!(f.sequences, [first]);
    assert_eq!(threshold(f, "first_review_weeks"), "12");
    assert!(
        f.explanation
            .contains("the first was due within 12 weeks, by 2026-06-24")
            && f.explanation.contains("1 days late as of 2026-06-25"),
        "{}",
        f.explanation
    );
    // More than 3 months late: MEDIUM.
    let f = &flags_on(&w, b, overdue, "2026-09-24").await[0];
    assert_eq!(f.severity, pb::FlagSeverity::Low as i32);
    let f = &flags_on(&w, b, overdue, "2026-09-25").await[0];
    assert_eq!(f.severity, pb::FlagSeverity::Medium as i32);
    // The financial audit is due a year after the money started.
    assert_eq!(flags_on(&w, b, overdue, "2027-04-01").await.len(), 1);
    let audit = format!("REVIEW_OVERDUE:{b}:audit-2027-04-01");
    assert_eq!(
        ids(&flags_on(&w, b, overdue, "2027-04-02").await),
        [audit.as_str(), care.as_str()]
    );

    // The care review took place on 2026-06-20: the flag clears, and the
    // next review is due a year later.
    let review = on_date(
        &w,
        &c,
        b,
        "2026-06-20",
        kinds::reviewed("2026-06-20", pb::ReviewKind::CareReview, "meets needs"),
    )
    .await;
    let reviewed = assert_written(&review);
    assert!(review.flags.is_empty());
    assert!(flags_on(&w, b, overdue, "2026-06-25").await.is_empty());
    let next = format!("REVIEW_OVERDUE:{b}:care-2027-06-20");
    assert!(flags_on(&w, b, overdue, "2027-06-20").await.len() == 1);
    let late = flags_on(&w, b, overdue, "2027-06-21").await;
    assert_eq!(ids(&late), [audit.as_str(), next.as_str()]);
    assert_eq!(late[1].sequences, [first, reviewed]);
    assert_eq!(threshold(&late[1], "review_interval_months"), "12");
    // An audit clears the audit flag only.
    w.ok(
        &c,
        b,
        kinds::reviewed("2026-11-02", pb::ReviewKind::FinancialAudit, "in order"),
    )
    .await;
    assert_eq!(
        ids(&flags_on(&w, b, overdue, "2027-06-21").await),
        [next.as_str()]
    );

    // A commissioner reviewing every 6 months: the care review of
    // 2026-06-20 is due again on 2026-12-20.
    w.ok(
        &c,
        "",
        kinds::controls(pb::ControlsConfigured {
            review_interval_months: 6,
            ..Default::default()
        }),
    )
    .await;
    let six = flags_on(&w, b, overdue, "2026-12-21").await;
    assert_eq!(ids(&six), [format!("REVIEW_OVERDUE:{b}:care-2026-12-20")]);
    assert_eq!(threshold(&six[0], "review_interval_months"), "6");

    // A stopped budget is no longer reviewed.
    w.ok(&c, b, kinds::stop("moved out of area")).await;
    assert!(flags_on(&w, b, overdue, "2028-01-01").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cash_without_a_receipt_is_flagged_after_thirty_days() {
    let w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let b = "cash";
    w.open_without_plan(b, pb::Management::DirectPayment).await;
    let extra = [
        ("cash", "cash", "520.00", "small cash purchases"),
        ("kit", "equipment", "500.00", "equipment"),
    ];
    w.ok(&c, b, plan(&extra, "0.00")).await;
    w.fund(b, "6220.00", Some("1000.00")).await;
    let day = "2026-05-01";
    let atm = assert_written(
        &on_date(
            &w,
            &acct,
            b,
            day,
            kinds::card("40.00", 6011, pb::CardChannel::Atm),
        )
        .await,
    );
    let bought = assert_written(
        &on_date(
            &w,
            &acct,
            b,
            day,
            kinds::buy("12.50", "cash", "market", "fruit"),
        )
        .await,
    );
    // Near misses: cash with a receipt reference; equipment without one.
    let mut with_receipt = kinds::buy("8.00", "cash", "market", "bus fares");
    if let Kind::Purchase(p) = &mut with_receipt {
        p.receipt_ref = "till-0042".into();
    }
    assert_written(&on_date(&w, &acct, b, day, with_receipt).await);
    assert_written(
        &on_date(
            &w,
            &acct,
            b,
            day,
            kinds::buy("30.00", "equipment", "shop", "grab rail"),
        )
        .await,
    );

    let cash = pb::FlagCode::CashWithoutReceipt;
    // 30 days after 2026-05-01 is 2026-05-31: not yet.
    assert!(flags_on(&w, b, cash, "2026-05-31").await.is_empty());
    let flags = flags_on(&w, b, cash, "2026-06-01").await;
    let (atm_id, bought_id) = (
        format!("CASH_WITHOUT_RECEIPT:{b}:{atm}"),
        format!("CASH_WITHOUT_RECEIPT:{b}:{bought}"),
    );
    assert_eq!(ids(&flags), [atm_id.as_str(), bought_id.as_str()]);
    let f = &flags[0];
    assert_eq!(f.severity, pb::FlagSeverity::Medium as i32);
    assert_eq!(f.sequences, [atm]);
    assert_eq!(threshold(f, "cash_receipt_days"), "30");
    assert!(
        f.explanation.starts_with(&format!(
            "an ATM withdrawal of 40.00 on 2026-05-01 (#{atm}) has no receipt reference 31 days later"
        )),
        "{}",
        f.explanation
    );
    // The receipts for the withdrawal are seen: dismissed, still listed.
    w.ok(
        &c,
        b,
        kinds::flag_reviewed(
            &atm_id,
            pb::FlagOutcome::Dismissed,
            "receipts seen at audit",
        ),
    )
    .await;
    let flags = flags_on(&w, b, cash, "2026-06-01").await;
    assert_eq!(flags[0].status, pb::FlagStatus::Dismissed as i32);
    assert_eq!(flags[1].status, pb::FlagStatus::Open as i32);
    // The market stall refunds the fruit: no longer cash spent.
    w.ok(&acct, b, kinds::refund(bought, "12.50")).await;
    assert_eq!(
        ids(&flags_on(&w, b, cash, "2026-06-01").await),
        [atm_id.as_str()]
    );
    // A commissioner allowing 45 days from now on.
    w.ok(
        &c,
        "",
        kinds::controls(pb::ControlsConfigured {
            cash_receipt_days: 45,
            ..Default::default()
        }),
    )
    .await;
    assert!(flags_on(&w, b, cash, "2026-06-15").await.is_empty());
    let f = flags_on(&w, b, cash, "2026-06-16").await;
    assert_eq!(threshold(&f[0], "cash_receipt_days"), "45");
}

/// A third-party purchase of `amount` of equipment on `b`.
fn equipment(amount: &str) -> Kind {
    kinds::buy(amount, "equipment", "mobility-shop", "scooter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_refusals_in_seven_days_are_flagged_once() {
    let w = World::new().await;
    let (c, tp, acct) = (
        w.commissioner.clone(),
        w.third_party.clone(),
        w.account.clone(),
    );
    let b = "tries";
    w.open_third_party(b).await;
    w.fund(b, "500.00", Some("300.00")).await;
    // Two overspends: refused and recorded, not flagged.
    let mut refused = Vec::new();
    for _ in 0..2 {
        let r = w.append(&tp, b, equipment("400.00")).await;
        assert_refused(&r, Code::FailedPrecondition);
        assert!(r.flags.is_empty(), "{r:?}");
        refused.push(r.refusal_sequence);
    }
    let codes = pb::FlagCode::RepeatedRefusals;
    assert!(flags_on(&w, b, codes, "2026-12-01").await.is_empty());
    // Not counted: a refusal of something that moves no money.
    let r = w
        .append(
            &acct,
            b,
            kinds::reviewed("2026-06-01", pb::ReviewKind::CareReview, "x"),
        )
        .await;
    assert_refused(&r, Code::PermissionDenied);
    assert!(r.flags.is_empty());
    // The third: the account provider, not named on the budget, tries.
    let r = w.append(&acct, b, equipment("10.00")).await;
    assert_refused(&r, Code::PermissionDenied);
    let third = r.refusal_sequence;
    refused.push(third);
    assert_eq!(flag_codes(&r.flags), ["REPEATED_REFUSALS"], "{r:?}");
    let f = &r.flags[0];
    assert_eq!(f.flag_id, format!("REPEATED_REFUSALS:{b}:{third}"));
    assert_eq!(f.sequences, refused);
    assert_eq!(f.raised_at_sequence, third);
    assert_eq!(f.severity, pb::FlagSeverity::Medium as i32);
    assert_eq!(threshold(f, "refusals_count"), "3");
    assert_eq!(threshold(f, "refusals_days"), "7");
    assert!(
        f.explanation.starts_with("3 refused attempts")
            && f.explanation
                .contains(&format!("#{third} Purchase of 10.00 (PERMISSION_DENIED)")),
        "{}",
        f.explanation
    );
    // A fourth in the same week: no second flag.
    let r = w.append(&tp, b, equipment("400.00")).await;
    assert_refused(&r, Code::FailedPrecondition);
    assert!(r.flags.is_empty());
    // A purchase that is accepted is not a refusal.
    let r = w.append(&tp, b, equipment("20.00")).await;
    assert_written(&r);
    assert!(r.flags.is_empty());
    let listed = flags_on(&w, b, codes, "2026-12-01").await;
    assert_eq!(listed, vec![f.clone()]);

    // The commissioner lowers the count to 2 from here on: a second budget
    // is flagged at its second refusal; the first flag keeps its threshold.
    w.ok(
        &c,
        "",
        kinds::controls(pb::ControlsConfigured {
            refusals_count: 2,
            ..Default::default()
        }),
    )
    .await;
    let b2 = "tries-2";
    w.open_third_party(b2).await;
    w.fund(b2, "500.00", Some("300.00")).await;
    let r = w.append(&tp, b2, equipment("400.00")).await;
    assert!(r.flags.is_empty());
    let r = w.append(&tp, b2, equipment("400.00")).await;
    assert_eq!(flag_codes(&r.flags), ["REPEATED_REFUSALS"]);
    assert_eq!(threshold(&r.flags[0], "refusals_count"), "2");
    let listed = flags_on(&w, b, codes, "2026-12-01").await;
    assert_eq!(threshold(&listed[0], "refusals_count"), "3");
    // A refusal on a budget that does not exist counts for nothing.
    let r = w.append(&tp, "no-such-budget", equipment("1.00")).await;
    assert_refused(&r, Code::NotFound);
    assert!(r.flags.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_derives_the_same_flags_with_the_same_ids() {
    let mut w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let b = "all";
    w.open_without_plan(b, pb::Management::DirectPayment).await;
    w.ok(&c, b, plan(&[("cash", "cash", "520.00", "cash")], "0.00"))
        .await;
    w.ok(
        &c,
        b,
        kinds::allocate("5720.00", pb::AllocationBasis::NeedsBased),
    )
    .await;
    // 2,000.00 disbursed on 2026-04-01: far above 8 weeks of 110.00.
    assert_written(&on_date(&w, &c, b, "2026-04-01", kinds::disburse("2000.00")).await);
    assert_written(
        &on_date(
            &w,
            &acct,
            b,
            "2026-05-01",
            kinds::card("20.00", 6011, pb::CardChannel::Atm),
        )
        .await,
    );
    for _ in 0..3 {
        let r = w
            .append(&acct, b, kinds::card("9999.00", 6011, pb::CardChannel::Atm))
            .await;
        assert_refused(&r, Code::FailedPrecondition);
    }
    let list = |w: &World| {
        let req = pb::ListFlagsRequest {
            as_of: Some(at_hour("2026-09-01", 0)),
            ..Default::default()
        };
        let (client, auditor) = (w.client.clone(), w.auditor.clone());
        async move { all_flags(&client, &auditor, req).await }
    };
    let before = list(&w).await;
    // (Other rules may flag this budget too; these four must.)
    let mine = [
        "CASH_WITHOUT_RECEIPT",
        "REPEATED_REFUSALS",
        "REVIEW_OVERDUE",
        "SURPLUS",
    ];
    let mut codes = flag_codes(&before);
    codes.retain(|c| mine.contains(&c.as_str()));
    codes.sort();
    assert_eq!(
        codes,
        [
            "CASH_WITHOUT_RECEIPT",
            "REPEATED_REFUSALS",
            "REVIEW_OVERDUE",
            "SURPLUS"
        ],
        "{before:?}"
    );
    w.server.restart();
    w.reconnect().await;
    let after = list(&w).await;
    // Derived at the same head and as_of: identical, ids and all.
    assert_eq!(after, before);
}
