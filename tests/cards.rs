//! Card transactions at authorisation time, hospital stays and reviews
//! (issue 7), through the real binary.

mod common;

use common::*;
use phb_client::kinds;
use phb_domain::categories::BLOCKED_MCCS;
use phb_proto::v1 as pb;
use tonic::Code;

/// Every blocked merchant category code declines the card naming the rule;
/// a mapped code is approved and spent; an unknown code declines; cash only
/// where the plan has a cash line; nothing at all without an approved plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_authorisations_follow_the_merchant_category() {
    let w = World::new().await;
    let (c, acct, tp) = (
        w.commissioner.clone(),
        w.account.clone(),
        w.third_party.clone(),
    );
    let d = "card-dp";
    w.open_without_plan(d, pb::Management::DirectPayment).await;
    w.fund(d, "2000.00", Some("2000.00")).await;
    let pos = pb::CardChannel::Pos;
    for (mcc, rule) in BLOCKED_MCCS {
        let r = w
            .refused(
                &acct,
                d,
                kinds::card("5.00", *mcc, pos),
                Code::FailedPrecondition,
            )
            .await;
        let message = r.error.unwrap().message;
        assert!(
            message.contains(&mcc.to_string()) && message.contains(rule),
            "{message}"
        );
    }
    // A gym (7997 -> exercise_wellbeing) is declined while no plan is
    // approved, and approved under a plan with an exercise_wellbeing line.
    let r = w
        .refused(
            &acct,
            d,
            kinds::card("30.00", 7997, pos),
            Code::FailedPrecondition,
        )
        .await;
    assert!(r.error.unwrap().message.contains("no approved care plan"));
    let r = w
        .refused(
            &acct,
            d,
            kinds::card("20.00", 6011, pb::CardChannel::Atm),
            Code::FailedPrecondition,
        )
        .await;
    let m = r.error.unwrap().message;
    assert!(
        m.contains("no approved care plan") && m.contains("\"cash\""),
        "{m}"
    );
    let gym_only = [("gym", "exercise_wellbeing", "600.00", "")];
    w.ok(&c, d, kinds::plan("gym-plan", &gym_only, "0.00"))
        .await;
    w.ok(&acct, d, kinds::card("30.00", 7997, pos)).await;
    // A pharmacy (5912 -> pharmaceuticals) is excluded outright.
    let r = w
        .refused(
            &acct,
            d,
            kinds::card("5.00", 5912, pos),
            Code::FailedPrecondition,
        )
        .await;
    assert!(r.error.unwrap().message.contains("pharmaceuticals"));
    // A code the ledger does not map.
    let r = w
        .refused(
            &acct,
            d,
            kinds::card("5.00", 3000, pos),
            Code::FailedPrecondition,
        )
        .await;
    assert!(r.error.unwrap().message.contains("pay by invoice"));
    // Cash needs a plan with a cash line: this one has none.
    let atm = pb::CardChannel::Atm;
    let r = w
        .refused(
            &acct,
            d,
            kinds::card("20.00", 6011, atm),
            Code::FailedPrecondition,
        )
        .await;
    let message = r.error.unwrap().message;
    assert!(
        message.contains("\"cash\"") && message.contains("exercise_wellbeing"),
        "{message}"
    );
    let lines = [
        ("gym", "exercise_wellbeing", "600.00", ""),
        ("cash", "cash", "50.00", "small purchases"),
    ];
    w.ok(&c, d, kinds::plan("card-plan", &lines, "0.00")).await;
    w.ok(&acct, d, kinds::card("20.00", 6011, atm)).await;
    w.refused(
        &acct,
        d,
        kinds::card("30.01", 6011, atm),
        Code::FailedPrecondition,
    )
    .await;
    // Only the account provider asks for authorisations.
    w.refused(
        &tp,
        d,
        kinds::card("1.00", 7997, pos),
        Code::PermissionDenied,
    )
    .await;
    assert_eq!(w.balance(d).await.spent, "50.00");
    // A card payment can be refunded like any spending.
    let seq = w.ok(&acct, d, kinds::card("10.00", 7997, pos)).await;
    w.ok(&acct, d, kinds::refund(seq, "10.00")).await;
    assert_eq!(w.balance(d).await.spent, "50.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hospital_stays_and_reviews_are_recorded() {
    let mut w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let d = "stay-dp";
    w.open_direct(d).await;
    w.fund(d, "100.00", Some("100.00")).await;
    w.agree(d, pb::PayeeKind::Provider, "p", "therapy").await;
    w.refused(
        &c,
        d,
        kinds::discharged("2026-05-01"),
        Code::FailedPrecondition,
    )
    .await;
    w.ok(&c, d, kinds::admitted("2026-05-01")).await;
    w.refused(
        &c,
        d,
        kinds::admitted("2026-05-02"),
        Code::FailedPrecondition,
    )
    .await;
    w.refused(
        &c,
        d,
        kinds::discharged("2026-04-30"),
        Code::FailedPrecondition,
    )
    .await;
    // Personal assistants may support someone in hospital: not refused.
    w.ok(
        &acct,
        d,
        pay("10.00", pb::PayeeKind::Provider, "p", "therapy"),
    )
    .await;
    w.ok(&c, d, kinds::discharged("2026-06-15")).await;
    w.ok(
        &c,
        d,
        kinds::reviewed(
            "2026-07-01",
            pb::ReviewKind::CareReview,
            "plan still meets needs",
        ),
    )
    .await;
    w.refused(
        &acct,
        d,
        kinds::reviewed("2026-07-01", pb::ReviewKind::FinancialAudit, "ok"),
        Code::PermissionDenied,
    )
    .await;
    let rows = statement_all(&w.client, &w.auditor, d, 100).await.unwrap();
    let kinds: Vec<_> = rows
        .iter()
        .filter(|r| !r.refused)
        .map(|r| r.kind.as_str())
        .collect();
    assert!(
        kinds.ends_with(&[
            "hospital_admission",
            "payment",
            "hospital_discharge",
            "review_recorded"
        ]),
        "{kinds:?}"
    );
    w.server.restart();
    w.reconnect().await;
    audit_log(&w.log().await, &w.server.root.public_key());
    assert_eq!(w.balance(d).await.spent, "10.00");
}
