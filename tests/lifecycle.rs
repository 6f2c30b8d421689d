//! Suspension, death, reclaim and refund (issue 7), through the real binary:
//! each rule with its near miss, and the figures reconciling in balances,
//! holdings and statements, before and after a restart.

mod common;

use common::*;
use phb_client::kinds;
use phb_proto::v1 as pb;
use tonic::Code;

fn provider() -> pb::PayeeKind {
    pb::PayeeKind::Provider
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_stops_money_moving_until_resumed() {
    let w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let d = "life-susp";
    w.open_direct(d).await;
    w.fund(d, "1000.00", Some("500.00")).await;
    w.agree(d, provider(), "p-1", "therapy").await;
    w.refused(&c, d, kinds::resume(), Code::FailedPrecondition)
        .await;
    w.ok(&c, d, kinds::suspend("review of spending")).await;
    w.refused(&c, d, kinds::suspend("again"), Code::FailedPrecondition)
        .await;
    let payment = || pay("10.00", provider(), "p-1", "therapy");
    let r = w
        .refused(&acct, d, payment(), Code::FailedPrecondition)
        .await;
    assert!(r.error.unwrap().message.contains("suspended"));
    w.refused(&c, d, kinds::disburse("1.00"), Code::FailedPrecondition)
        .await;
    // Entitlement may still change while suspended.
    w.ok(&c, d, kinds::allocate("1.00", pb::AllocationBasis::OneOff))
        .await;
    w.refused(&acct, d, kinds::suspend("not mine"), Code::PermissionDenied)
        .await;
    w.ok(&c, d, kinds::resume()).await;
    w.ok(&acct, d, payment()).await;
    assert_eq!(w.balance(d).await.spent, "10.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_spent_for_a_date_after_death() {
    let w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let (d, e) = ("life-died", "life-alive");
    for b in [d, e] {
        w.open_direct(b).await;
        w.fund(b, "1000.00", Some("500.00")).await;
        w.agree(b, provider(), "p-1", "therapy").await;
    }
    // Died today: spending dated today (occurred_at now) is not after it.
    w.ok(&c, e, kinds::died(&day(0))).await;
    w.ok(&acct, e, pay("10.00", provider(), "p-1", "therapy"))
        .await;
    // Died yesterday: nothing for today.
    w.ok(&c, d, kinds::died(&day(-1))).await;
    let r = w
        .refused(
            &acct,
            d,
            pay("10.00", provider(), "p-1", "therapy"),
            Code::FailedPrecondition,
        )
        .await;
    assert!(r.error.unwrap().message.contains(&day(-1)));
    w.refused(&c, d, kinds::disburse("1.00"), Code::FailedPrecondition)
        .await;
    w.refused(&c, d, kinds::died(&day(-2)), Code::FailedPrecondition)
        .await;
    // The money held is reclaimed on the ground of death.
    w.ok(&c, d, kinds::reclaim("500.00", pb::ReclaimGround::Death))
        .await;
    let b = w.balance(d).await;
    assert_eq!(
        (b.allocated.as_str(), b.paid_in.as_str(), b.held.as_str()),
        ("500.00", "0.00", "0.00")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_and_refund_arithmetic_reconciles_everywhere() {
    let mut w = World::new().await;
    let (c, acct, tp) = (
        w.commissioner.clone(),
        w.account.clone(),
        w.third_party.clone(),
    );
    let d = "life-money";
    w.open_direct(d).await;
    w.fund(d, "2000.00", Some("1000.00")).await;
    let paid = w
        .pay(&acct, d, "300.00", provider(), "p-1", "therapy")
        .await;
    // Reclaim: at most what is held (700.00).
    w.refused(
        &c,
        d,
        kinds::reclaim("700.01", pb::ReclaimGround::Surplus),
        Code::FailedPrecondition,
    )
    .await;
    w.ok(&c, d, kinds::reclaim("200.00", pb::ReclaimGround::Surplus))
        .await;
    w.refused(
        &acct,
        d,
        kinds::reclaim("1.00", pb::ReclaimGround::Surplus),
        Code::PermissionDenied,
    )
    .await;
    // Refund: at most the original less earlier refunds, by its recorder.
    w.ok(&acct, d, kinds::refund(paid, "100.00")).await;
    w.refused(
        &acct,
        d,
        kinds::refund(paid, "200.01"),
        Code::FailedPrecondition,
    )
    .await;
    w.ok(&acct, d, kinds::refund(paid, "200.00")).await;
    w.refused(
        &acct,
        d,
        kinds::refund(paid, "0.01"),
        Code::FailedPrecondition,
    )
    .await;
    // Not a spending on this budget; not its recorder.
    let r = w
        .refused(&acct, d, kinds::refund(1, "1.00"), Code::FailedPrecondition)
        .await;
    assert!(r.error.unwrap().message.contains("no Payment or Purchase"));
    let paid2 = w.pay(&acct, d, "50.00", provider(), "p-1", "therapy").await;
    w.refused(&c, d, kinds::refund(paid2, "1.00"), Code::PermissionDenied)
        .await;
    let b = w.balance(d).await;
    // allocated 2000 - 200; paid in 1000 - 200; spent 300 - 300 + 50.
    assert_eq!(
        (
            b.allocated.as_str(),
            b.paid_in.as_str(),
            b.spent.as_str(),
            b.held.as_str()
        ),
        ("1800.00", "800.00", "50.00", "750.00")
    );
    // Holdings and the statement say the same.
    let h = get_holdings(&w.client, &acct, &acct.id).await.unwrap();
    let row = h.holdings.iter().find(|r| r.budget_id == d).unwrap();
    assert_eq!(
        (row.paid_in.as_str(), row.spent.as_str(), row.held.as_str()),
        ("800.00", "50.00", "750.00")
    );
    let rows = statement_all(&w.client, &w.auditor, d, 7).await.unwrap();
    let last = rows.last().unwrap();
    assert_eq!(
        (
            last.allocated.as_str(),
            last.paid_in.as_str(),
            last.spent.as_str(),
            last.held.as_str()
        ),
        ("1800.00", "800.00", "50.00", "750.00")
    );
    let kinds: Vec<_> = rows
        .iter()
        .filter(|r| !r.refused)
        .map(|r| (r.kind.as_str(), r.amount.as_str()))
        .filter(|(k, _)| *k == "reclaim" || *k == "refund")
        .collect();
    assert_eq!(
        kinds,
        [
            ("reclaim", "-200.00"),
            ("refund", "100.00"),
            ("refund", "200.00")
        ]
    );
    // A restart folds the log to the same answers; the auditor agrees.
    let before = (
        w.balance(d).await,
        statement_all(&w.client, &w.auditor, d, 100).await.unwrap(),
    );
    w.server.restart();
    w.reconnect().await;
    let after = (
        w.balance(d).await,
        statement_all(&w.client, &w.auditor, d, 100).await.unwrap(),
    );
    assert_eq!(before, after);
    audit_log(&w.log().await, &w.server.root.public_key());
    // The third party cannot refund the account provider's spending.
    w.refused(&tp, d, kinds::refund(paid2, "1.00"), Code::PermissionDenied)
        .await;
}
