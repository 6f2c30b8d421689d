//! Service agreements and payment-time controls (issue 7), through the real
//! binary: each check with its near miss, a payroll run (net wages, PAYE/NI
//! and pension as one atomic batch), and connected persons.

mod common;

use common::*;
use phb_client::{kinds, Kind};
use phb_proto::v1 as pb;
use tonic::Code;

/// An hourly agreement with `payee`, in force from 60 days ago for a year.
fn agreement(id: &str, payee: &str, rate: &str, max_per_week: u32, connected: bool) -> Kind {
    Kind::ServiceAgreementApproved(pb::ServiceAgreementApproved {
        agreement_id: id.into(),
        payee_ref: payee.into(),
        payee_kind: pb::PayeeKind::PersonalAssistant as i32,
        payee_sector: pb::Sector::Individual as i32,
        category: "personal_assistant".into(),
        unit: pb::Unit::Hour as i32,
        rate: rate.into(),
        max_units_per_week: max_per_week,
        valid_from: day(-60),
        valid_to: day(300),
        connected_person: connected,
    })
}

/// Opens direct-payment budget `d` (the account provider and payroll
/// provider) with no plan, then the commissioner approves the test's own
/// plan: a line of `amount` for each of `categories`, no contingency.
async fn open_with_plan(w: &World, d: &str, categories: &[&str], amount: &str) {
    w.open_without_plan(d, pb::Management::DirectPayment).await;
    let ids: Vec<String> = categories.iter().map(|c| format!("line-{c}")).collect();
    let lines: Vec<(&str, &str, &str, &str)> = ids
        .iter()
        .zip(categories)
        .map(|(id, c)| (id.as_str(), *c, amount, "agreed services"))
        .collect();
    w.ok(
        &w.commissioner.clone(),
        d,
        kinds::plan(&format!("plan-{d}"), &lines, "0.00"),
    )
    .await;
}

/// A wage under agreement `id` for the week that ended `ended` days ago.
fn wage(amount: &str, payee: &str, id: &str, hours: &str, ended: i64) -> Kind {
    kinds::pay_under(
        amount,
        payee,
        "personal_assistant",
        id,
        hours,
        &day(-ended - 6),
        &day(-ended),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_must_follow_their_agreement() {
    let w = World::new().await;
    let (c, payroll) = (w.commissioner.clone(), w.payroll.clone());
    let d = "agree-dp";
    open_with_plan(&w, d, &["personal_assistant"], "5000.00").await;
    w.fund(d, "5000.00", Some("5000.00")).await;
    w.ok(&c, d, agreement("pa-1-2026", "pa-1", "12.50", 20, false))
        .await;
    // 20 hours in a week that has ended, at 12.50.
    w.ok(&payroll, d, wage("250.00", "pa-1", "pa-1-2026", "20", 7))
        .await;
    // More than 20 hours in one week.
    let r = w
        .refused(
            &payroll,
            d,
            wage("262.50", "pa-1", "pa-1-2026", "21", 14),
            Code::FailedPrecondition,
        )
        .await;
    assert!(r.error.unwrap().message.contains("a week"));
    // Not rate x units.
    let r = w
        .refused(
            &payroll,
            d,
            wage("250.01", "pa-1", "pa-1-2026", "20", 14),
            Code::FailedPrecondition,
        )
        .await;
    assert!(r.error.unwrap().message.contains("12.50"));
    // Half hours are fine.
    w.ok(&payroll, d, wage("243.75", "pa-1", "pa-1-2026", "19.5", 14))
        .await;
    // A service period that has not ended yet: paid in arrears only.
    let early = kinds::pay_under(
        "125.00",
        "pa-1",
        "personal_assistant",
        "pa-1-2026",
        "10",
        &day(-3),
        &day(3),
    );
    let r = w
        .refused(&payroll, d, early, Code::FailedPrecondition)
        .await;
    assert!(r.error.unwrap().message.contains("arrears"));
    // Another payee, an unknown agreement, a period outside the agreement.
    w.refused(
        &payroll,
        d,
        wage("125.00", "pa-2", "pa-1-2026", "10", 21),
        Code::FailedPrecondition,
    )
    .await;
    w.refused(
        &payroll,
        d,
        wage("125.00", "pa-1", "no-such", "10", 21),
        Code::FailedPrecondition,
    )
    .await;
    w.refused(
        &payroll,
        d,
        wage("125.00", "pa-1", "pa-1-2026", "10", 90),
        Code::FailedPrecondition,
    )
    .await;
    // A personal assistant is paid under an agreement, never without one.
    let r = w
        .refused(
            &payroll,
            d,
            kinds::pay(
                "10.00",
                pb::PayeeKind::PersonalAssistant,
                "pa-1",
                "personal_assistant",
            ),
            Code::FailedPrecondition,
        )
        .await;
    let message = r.error.unwrap().message;
    assert!(
        message.contains("needs a service agreement") && message.contains("agreement_id"),
        "{message}"
    );
    assert_eq!(w.balance(d).await.spent, "493.75");
}

/// A payroll run: net wages under the agreement, PAYE/NI to the tax
/// authority and pension contributions, one atomic batch from the payroll
/// provider; a failing line fails (and records) the whole run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payroll_run_is_one_atomic_batch() {
    let w = World::new().await;
    let (c, payroll) = (w.commissioner.clone(), w.payroll.clone());
    let d = "agree-run";
    open_with_plan(
        &w,
        d,
        &["personal_assistant", "tax_and_pension", "agency_care"],
        "5000.00",
    )
    .await;
    w.fund(d, "5000.00", Some("5000.00")).await;
    w.ok(&c, d, agreement("pa-3-2026", "pa-3", "12.00", 40, false))
        .await;
    let run = |net: &str, hours: &str| {
        vec![
            w.sign(&payroll, d, wage(net, "pa-3", "pa-3-2026", hours, 7)),
            w.sign(
                &payroll,
                d,
                kinds::pay(
                    "61.20",
                    pb::PayeeKind::TaxAuthority,
                    "hmrc",
                    "tax_and_pension",
                ),
            ),
            w.sign(
                &payroll,
                d,
                kinds::pay(
                    "14.40",
                    pb::PayeeKind::PensionScheme,
                    "nest",
                    "tax_and_pension",
                ),
            ),
        ]
    };
    // 41 hours: over the agreement's 40 a week, so nothing of the run is paid.
    let rs = w.append_batch(run("492.00", "41"), true).await;
    assert_refused(&rs[0], Code::FailedPrecondition);
    assert_refused(&rs[1], Code::Aborted);
    assert_eq!(w.balance(d).await.spent, "0.00");
    let rs = w.append_batch(run("480.00", "40"), true).await;
    for r in &rs {
        assert_written(r);
    }
    assert_eq!(w.balance(d).await.spent, "555.60");
    // A payroll provider pays wages, tax and pensions, never providers:
    // not even under an agreement in force and within the plan.
    w.agree(d, pb::PayeeKind::Provider, "agency", "agency_care")
        .await;
    w.refused(
        &payroll,
        d,
        pay("1.00", pb::PayeeKind::Provider, "agency", "agency_care"),
        Code::PermissionDenied,
    )
    .await;
    // The near miss: the account provider may.
    w.ok(
        &w.account.clone(),
        d,
        pay("1.00", pb::PayeeKind::Provider, "agency", "agency_care"),
    )
    .await;
    assert_eq!(w.balance(d).await.spent, "556.60");
}

/// Connected persons (SI 2017/219) only under an agreement the commissioner
/// approved; excluded categories never; the rules survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_persons_and_who_approves() {
    let mut w = World::new().await;
    let c = w.commissioner.clone();
    let d = "agree-conn";
    open_with_plan(&w, d, &["personal_assistant"], "1000.00").await;
    w.fund(d, "1000.00", Some("1000.00")).await;
    let f = w.appoint_facilitator(d).await;
    // The facilitator may approve an ordinary agreement, not a connected one.
    w.ok(&f, d, agreement("pa-5", "pa-5", "11.00", 0, false))
        .await;
    let r = w
        .refused(
            &f,
            d,
            agreement("sister", "rel-1", "11.00", 0, true),
            Code::PermissionDenied,
        )
        .await;
    assert!(r.error.unwrap().message.contains("connected person"));
    w.ok(&c, d, agreement("sister", "rel-1", "11.00", 0, true))
        .await;
    // The same id twice is a decision: ALREADY_EXISTS, recorded.
    w.refused(
        &c,
        d,
        agreement("sister", "rel-1", "12.00", 0, true),
        Code::AlreadyExists,
    )
    .await;
    // An excluded category.
    let mut bad = agreement("gp", "gp-1", "30.00", 0, false);
    if let Kind::ServiceAgreementApproved(a) = &mut bad {
        a.category = "gp_primary_care".into();
        a.payee_kind = pb::PayeeKind::Provider as i32;
        a.payee_sector = pb::Sector::Nhs as i32;
    }
    w.refused(&c, d, bad, Code::FailedPrecondition).await;
    w.ok(
        &w.payroll.clone(),
        d,
        wage("110.00", "rel-1", "sister", "10", 7),
    )
    .await;
    let before = w.balance(d).await;
    w.server.restart();
    w.reconnect().await;
    assert_eq!(w.balance(d).await, before);
    w.refused(
        &w.payroll.clone(),
        d,
        wage("110.00", "rel-1", "sister", "10.5", 14),
        Code::FailedPrecondition,
    )
    .await;
    audit_log(&w.log().await, &w.server.root.public_key());
}

/// Payment-time rule: a payment to a personal assistant or a provider needs
/// a service agreement in force for that payee and category, even on a
/// budget that has no agreement at all; tax and pension payments by the
/// payroll provider need none. Each with its near miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pa_and_provider_payments_need_an_agreement_tax_does_not() {
    let mut w = World::new().await;
    let (acct, payroll) = (w.account.clone(), w.payroll.clone());
    let d = "agree-needed";
    open_with_plan(
        &w,
        d,
        &["personal_assistant", "agency_care", "tax_and_pension"],
        "1000.00",
    )
    .await;
    w.fund(d, "1000.00", Some("1000.00")).await;
    let pa = pb::PayeeKind::PersonalAssistant;
    let provider = pb::PayeeKind::Provider;
    // No agreement on the budget: both refused, naming the rule.
    for (signer, kind, payee, category) in [
        (&payroll, pa, "pa-9", "personal_assistant"),
        (&acct, provider, "agency-9", "agency_care"),
    ] {
        let r = w
            .refused(
                signer,
                d,
                kinds::pay("10.00", kind, payee, category),
                Code::FailedPrecondition,
            )
            .await;
        let message = r.error.unwrap().message;
        assert!(message.contains("needs a service agreement"), "{message}");
    }
    assert_eq!(w.balance(d).await.spent, "0.00");
    // Tax and pension, signed by the payroll provider the budget names:
    // no agreement needed.
    w.ok(
        &payroll,
        d,
        kinds::pay(
            "61.20",
            pb::PayeeKind::TaxAuthority,
            "hmrc",
            "tax_and_pension",
        ),
    )
    .await;
    w.ok(
        &payroll,
        d,
        kinds::pay(
            "14.40",
            pb::PayeeKind::PensionScheme,
            "nest",
            "tax_and_pension",
        ),
    )
    .await;
    assert_eq!(w.balance(d).await.spent, "75.60");
    // The near miss: once agreements are approved, the same payments
    // naming them are made.
    w.agree(d, pa, "pa-9", "personal_assistant").await;
    w.agree(d, provider, "agency-9", "agency_care").await;
    w.ok(&payroll, d, pay("10.00", pa, "pa-9", "personal_assistant"))
        .await;
    w.ok(&acct, d, pay("10.00", provider, "agency-9", "agency_care"))
        .await;
    // An agreement with one payee does not cover another.
    let r = w
        .refused(
            &acct,
            d,
            kinds::pay("10.00", provider, "agency-10", "agency_care"),
            Code::FailedPrecondition,
        )
        .await;
    assert!(r
        .error
        .unwrap()
        .message
        .contains("needs a service agreement"));
    let before = w.balance(d).await;
    assert_eq!(before.spent, "95.60");
    // The same after a restart: the rule is a fold of the log.
    w.server.restart();
    w.reconnect().await;
    assert_eq!(w.balance(d).await, before);
    w.refused(
        &payroll,
        d,
        kinds::pay("10.00", pa, "pa-9", "personal_assistant"),
        Code::FailedPrecondition,
    )
    .await;
    audit_log(&w.log().await, &w.server.root.public_key());
}
