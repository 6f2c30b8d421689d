//! Care plans (issue 7): who approves them (the 15 % rule), and what they
//! allow at payment time, through the real binary.

mod common;

use common::*;
use phb_client::{kinds, methods, Kind, Signer};
use phb_proto::v1 as pb;
use tonic::Code;

fn provider() -> pb::PayeeKind {
    pb::PayeeKind::Provider
}

async fn care_plan(
    w: &World,
    reader: &Signer,
    d: &str,
) -> Result<pb::GetCarePlanResponse, tonic::Status> {
    let mut client = w.client.clone();
    let req = reader.request(
        methods::GET_CARE_PLAN,
        pb::GetCarePlanRequest {
            budget_id: d.into(),
        },
    );
    client.get_care_plan(req).await.map(|r| r.into_inner())
}

fn plan_of(total_lines: &str, contingency: &str) -> Kind {
    kinds::plan(
        &format!("plan-{total_lines}"),
        &[("l1", "therapy", total_lines, "sessions")],
        contingency,
    )
}

/// Seed 004: a facilitator may sign off a plan unless it is more than 15 %
/// above the budget; then only the commissioner may. Both sides of the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fifteen_percent_rule_on_both_sides_of_the_line() {
    let w = World::new().await;
    let c = w.commissioner.clone();
    let d = "plan-15";
    w.open_direct(d).await;
    w.fund(d, "1000.00", None).await;
    let f = w.appoint_facilitator(d).await;
    // 114.99 %: the facilitator may.
    w.ok(&f, d, plan_of("1099.90", "50.00")).await;
    // Exactly 115 %: not *more* than 15 % above, so the facilitator may.
    w.ok(&f, d, plan_of("1100.00", "50.00")).await;
    // 115.01 %: only the commissioner.
    let r = w
        .refused(&f, d, plan_of("1100.10", "50.00"), Code::PermissionDenied)
        .await;
    let message = r.error.unwrap().message;
    assert!(
        message.contains("15 %") && message.contains("1150.10"),
        "{message}"
    );
    w.ok(&c, d, plan_of("1100.10", "50.00")).await;
    let plan = care_plan(&w, &c, d).await.unwrap();
    assert_eq!(
        (plan.total.as_str(), plan.approved_by.as_str()),
        ("1150.10", c.id.as_str())
    );
    // Another organisation may not approve at all.
    w.refused(
        &w.account.clone(),
        d,
        plan_of("10.00", "0.00"),
        Code::PermissionDenied,
    )
    .await;
    // The facilitator reads the budget it serves.
    assert_eq!(care_plan(&w, &f, d).await.unwrap().plan_id, "plan-1100.10");
}

/// Payment-time checks: the plan's categories, each line's remaining amount
/// plus the unused contingency, the plan's dates; and their near misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_must_fit_the_plan_in_force() {
    let mut w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let d = "plan-fit";
    w.open_without_plan(d, pb::Management::DirectPayment).await;
    w.fund(d, "1000.00", Some("1000.00")).await;
    w.agree(d, provider(), "p-1", "therapy").await;
    let lines = [
        ("t", "therapy", "500.00", "therapy sessions"),
        ("e", "equipment", "100.00", "aids"),
    ];
    w.ok(&c, d, kinds::plan("p1", &lines, "50.00")).await;
    let buy = |amount: &str, category: &str| kinds::buy(amount, category, "s-1", "bought");
    // 120.00 of equipment: 100.00 on its line, 20.00 of the contingency.
    w.ok(&acct, d, buy("120.00", "equipment")).await;
    // 31.00 more does not fit (30.00 of contingency left)...
    let r = w
        .refused(
            &acct,
            d,
            buy("31.00", "equipment"),
            Code::FailedPrecondition,
        )
        .await;
    let message = r.error.unwrap().message;
    assert!(
        message.contains("0.00") && message.contains("30.00"),
        "{message}"
    );
    // ...30.00 does.
    w.ok(&acct, d, buy("30.00", "equipment")).await;
    // A category the plan has no line for.
    let r = w
        .refused(&acct, d, buy("1.00", "respite"), Code::FailedPrecondition)
        .await;
    assert!(r.error.unwrap().message.contains("equipment, therapy"));
    // Therapy: exactly its line, then nothing more (the contingency is spent).
    w.ok(&acct, d, pay("500.00", provider(), "p-1", "therapy"))
        .await;
    w.refused(
        &acct,
        d,
        pay("0.01", provider(), "p-1", "therapy"),
        Code::FailedPrecondition,
    )
    .await;
    let plan = care_plan(&w, &acct, d).await.unwrap();
    let lines: Vec<_> = plan
        .lines
        .iter()
        .map(|l| (l.line_id.as_str(), l.spent.as_str(), l.remaining.as_str()))
        .collect();
    assert_eq!(lines, [("t", "500.00", "0.00"), ("e", "100.00", "0.00")]);
    assert_eq!(plan.contingency_used, "50.00");
    assert_eq!(w.balance(d).await.spent, "650.00");
    // A plan line for an excluded category is refused, naming the rule.
    let bad = kinds::plan("p-bad", &[("g", "gambling", "10.00", "")], "0.00");
    let r = w.refused(&c, d, bad, Code::FailedPrecondition).await;
    assert!(r.error.unwrap().message.contains("excluded"));
    // A new plan supersedes the old; spending is counted from zero under it.
    w.ok(
        &c,
        d,
        kinds::plan("p2", &[("r", "respite", "100.00", "breaks")], "0.00"),
    )
    .await;
    w.ok(&acct, d, buy("100.00", "respite")).await;
    w.refused(&acct, d, buy("1.00", "equipment"), Code::FailedPrecondition)
        .await;
    // A plan not in force on the spending's date.
    let mut expired = kinds::plan("p3", &[("r", "respite", "100.00", "")], "0.00");
    if let Kind::CarePlanApproved(p) = &mut expired {
        p.valid_to = "2026-06-30".into();
    }
    w.ok(&c, d, expired).await;
    let r = w
        .refused(&acct, d, buy("1.00", "respite"), Code::FailedPrecondition)
        .await;
    assert!(r.error.unwrap().message.contains("2026-06-30"));
    // The same answers after a restart: the plan is a fold of the log.
    let before = care_plan(&w, &c, d).await.unwrap();
    w.server.restart();
    w.reconnect().await;
    assert_eq!(care_plan(&w, &c, d).await.unwrap(), before);
    audit_log(&w.log().await, &w.server.root.public_key());
}

/// Without a plan: NOT_FOUND from GetCarePlan (spending is refused:
/// `spending_needs_an_approved_plan_with_its_category`); read scope as
/// GetBalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plan_and_read_scope() {
    let w = World::new().await;
    let d = "plan-none";
    w.open_without_plan(d, pb::Management::DirectPayment).await;
    let e = care_plan(&w, &w.commissioner.clone(), d).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("no approved care plan"));
    let e = care_plan(&w, &w.commissioner2.clone(), d)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = care_plan(&w, &w.auditor.clone(), "no-such")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

/// The Northamptonshire plan (shared/domain.md, seed 004): a £4,800.00
/// budget and its spending plan, spent line by line to the penny.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_northamptonshire_plan() {
    let w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let d = "northants";
    w.open_without_plan(d, pb::Management::DirectPayment).await;
    w.fund(d, "4800.00", Some("4800.00")).await;
    w.agree(d, provider(), "cmht-1", "clinical_service").await;
    w.agree(
        d,
        pb::PayeeKind::PersonalAssistant,
        "pa-1",
        "personal_assistant",
    )
    .await;
    let f = w.appoint_facilitator(d).await;
    let lines = [
        (
            "cmht",
            "clinical_service",
            "808.16",
            "4 CMHT sessions (4 x 202.04)",
        ),
        ("psych", "clinical_service", "202.04", "1 psychiatric visit"),
        (
            "pa",
            "personal_assistant",
            "2184.00",
            "personal assistant 6 h/week",
        ),
        ("respite", "respite", "500.00", "respite break"),
        ("gym", "exercise_wellbeing", "580.00", "gym membership"),
        ("pc", "it_equipment", "500.00", "personal computer"),
    ];
    w.ok(&f, d, kinds::plan("northants-1", &lines, "25.80"))
        .await;
    let plan = care_plan(&w, &c, d).await.unwrap();
    assert_eq!(plan.total, "4800.00");
    for _ in 0..5 {
        w.ok(
            &acct,
            d,
            pay("202.04", provider(), "cmht-1", "clinical_service"),
        )
        .await;
    }
    w.ok(
        &acct,
        d,
        pay(
            "2184.00",
            pb::PayeeKind::PersonalAssistant,
            "pa-1",
            "personal_assistant",
        ),
    )
    .await;
    w.ok(
        &acct,
        d,
        kinds::buy("500.00", "respite", "respite-co", "respite break"),
    )
    .await;
    w.ok(
        &acct,
        d,
        kinds::buy("580.00", "exercise_wellbeing", "gym-9", "gym"),
    )
    .await;
    w.ok(
        &acct,
        d,
        kinds::buy("500.00", "it_equipment", "pc-shop", "computer"),
    )
    .await;
    let plan = care_plan(&w, &c, d).await.unwrap();
    assert!(plan.lines.iter().all(|l| l.remaining == "0.00"), "{plan:?}");
    assert_eq!(plan.contingency_used, "0.00");
    let b = w.balance(d).await;
    assert_eq!((b.spent.as_str(), b.held.as_str()), ("4774.20", "25.80"));
    // The £25.80 left is the contingency: one more CMHT contact does not fit.
    w.refused(
        &acct,
        d,
        pay("202.04", provider(), "cmht-1", "clinical_service"),
        Code::FailedPrecondition,
    )
    .await;
}

/// Each line's (line id, spent, remaining), and the contingency used.
fn usage(plan: &pb::GetCarePlanResponse) -> (Vec<(&str, &str, &str)>, &str) {
    let lines = plan
        .lines
        .iter()
        .map(|l| (l.line_id.as_str(), l.spent.as_str(), l.remaining.as_str()))
        .collect();
    (lines, plan.contingency_used.as_str())
}

/// Spending needs an approved care plan in force with a line for its
/// category. With no plan a Payment, a Purchase and a card payment are each
/// refused naming the rule; under a plan whose lines lack their categories
/// (its contingency notwithstanding) each is refused naming the category;
/// the same spending is made once a plan with those lines is approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_needs_an_approved_plan_with_its_category() {
    let mut w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let d = "plan-needed";
    w.open_without_plan(d, pb::Management::DirectPayment).await;
    w.fund(d, "1000.00", Some("1000.00")).await;
    // An agreement needs no plan; a payment under it still does.
    w.agree(d, provider(), "p-1", "therapy").await;
    let spendings = || {
        [
            ("therapy", pay("10.00", provider(), "p-1", "therapy")),
            ("equipment", kinds::buy("10.00", "equipment", "s-1", "aids")),
            (
                "exercise_wellbeing",
                kinds::card("10.00", 7997, pb::CardChannel::Pos),
            ),
        ]
    };
    for (category, k) in spendings() {
        let r = w.refused(&acct, d, k, Code::FailedPrecondition).await;
        let message = r.error.unwrap().message;
        assert!(
            message.contains("no approved care plan") && message.contains(category),
            "{message}"
        );
    }
    // A plan in force whose lines lack the categories.
    let respite = [("r", "respite", "100.00", "breaks")];
    w.ok(&c, d, kinds::plan("p-respite", &respite, "50.00"))
        .await;
    for (category, k) in spendings() {
        let r = w.refused(&acct, d, k, Code::FailedPrecondition).await;
        let message = r.error.unwrap().message;
        assert!(
            message.contains(&format!("no line for category {category:?}"))
                && message.contains("respite"),
            "{message}"
        );
    }
    assert_eq!(w.balance(d).await.spent, "0.00");
    // The near miss: a plan with a line for each category.
    let lines = [
        ("t", "therapy", "100.00", "sessions"),
        ("e", "equipment", "100.00", "aids"),
        ("g", "exercise_wellbeing", "100.00", "gym"),
    ];
    w.ok(&c, d, kinds::plan("p-all", &lines, "0.00")).await;
    for (_, k) in spendings() {
        w.ok(&acct, d, k).await;
    }
    let plan = care_plan(&w, &c, d).await.unwrap();
    assert_eq!(
        usage(&plan),
        (
            vec![
                ("t", "10.00", "90.00"),
                ("e", "10.00", "90.00"),
                ("g", "10.00", "90.00")
            ],
            "0.00"
        )
    );
    let balance = w.balance(d).await;
    assert_eq!(balance.spent, "30.00");
    // The same answers after a restart.
    w.server.restart();
    w.reconnect().await;
    assert_eq!(care_plan(&w, &c, d).await.unwrap(), plan);
    assert_eq!(w.balance(d).await, balance);
    audit_log(&w.log().await, &w.server.root.public_key());
}

/// A refund gives the money back to the plan it was charged to: the
/// contingency first (if the spending drew on it), then the line; the same
/// after a restart. Spending under a plan since superseded is refunded
/// without touching the plan now in force, while the balance's spent still
/// goes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_gives_the_money_back_to_the_plan() {
    let mut w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let d = "plan-refund";
    w.open_without_plan(d, pb::Management::DirectPayment).await;
    w.fund(d, "1000.00", Some("1000.00")).await;
    w.agree(d, provider(), "p-1", "therapy").await;
    let lines = [
        ("t", "therapy", "100.00", "sessions"),
        ("e", "equipment", "50.00", "aids"),
    ];
    w.ok(&c, d, kinds::plan("p1", &lines, "20.00")).await;
    let buy = |amount: &str| kinds::buy(amount, "equipment", "s-1", "chair");
    // 60.00 of equipment: 50.00 on its line, 10.00 of the contingency.
    let bought = w.ok(&acct, d, buy("60.00")).await;
    let paid = w
        .ok(&acct, d, pay("40.00", provider(), "p-1", "therapy"))
        .await;
    let plan = care_plan(&w, &c, d).await.unwrap();
    assert_eq!(
        usage(&plan),
        (
            vec![("t", "40.00", "60.00"), ("e", "50.00", "0.00")],
            "10.00"
        )
    );
    // 15.00 of the purchase back: the 10.00 of contingency, then 5.00 of
    // its line.
    w.ok(&acct, d, kinds::refund(bought, "15.00")).await;
    let plan = care_plan(&w, &c, d).await.unwrap();
    assert_eq!(
        usage(&plan),
        (
            vec![("t", "40.00", "60.00"), ("e", "45.00", "5.00")],
            "0.00"
        )
    );
    // The whole payment back: its line is whole again.
    w.ok(&acct, d, kinds::refund(paid, "40.00")).await;
    let plan = care_plan(&w, &c, d).await.unwrap();
    let refunded = (
        vec![("t", "0.00", "100.00"), ("e", "45.00", "5.00")],
        "0.00",
    );
    assert_eq!(usage(&plan), refunded);
    assert_eq!(w.balance(d).await.spent, "45.00");
    // What came back may be spent again: 5.00 of the line and 20.00 of the
    // contingency, not a penny more; refunded, it comes back the same.
    let r = w
        .refused(&acct, d, buy("25.01"), Code::FailedPrecondition)
        .await;
    let message = r.error.unwrap().message;
    assert!(
        message.contains("5.00 is left") && message.contains("20.00 of the contingency"),
        "{message}"
    );
    let again = w.ok(&acct, d, buy("25.00")).await;
    let plan = care_plan(&w, &c, d).await.unwrap();
    assert_eq!(
        usage(&plan),
        (
            vec![("t", "0.00", "100.00"), ("e", "50.00", "0.00")],
            "20.00"
        )
    );
    w.ok(&acct, d, kinds::refund(again, "25.00")).await;
    let plan = care_plan(&w, &c, d).await.unwrap();
    assert_eq!(usage(&plan), refunded);
    // The same after a restart: the plan's figures are a fold of the log.
    let balance = w.balance(d).await;
    assert_eq!(balance.spent, "45.00");
    w.server.restart();
    w.reconnect().await;
    assert_eq!(care_plan(&w, &c, d).await.unwrap(), plan);
    assert_eq!(w.balance(d).await, balance);
    // A new plan: its figures start afresh.
    let lines = [("e2", "equipment", "80.00", "aids")];
    w.ok(&c, d, kinds::plan("p2", &lines, "10.00")).await;
    let under_p2 = w.ok(&acct, d, buy("30.00")).await;
    let p2 = care_plan(&w, &c, d).await.unwrap();
    assert_eq!(usage(&p2), (vec![("e2", "30.00", "50.00")], "0.00"));
    assert_eq!(w.balance(d).await.spent, "75.00");
    // The rest of the purchase made under p1 (60.00 - 15.00) comes back:
    // the balance's spent goes down, p2 is untouched.
    w.ok(&acct, d, kinds::refund(bought, "45.00")).await;
    assert_eq!(care_plan(&w, &c, d).await.unwrap(), p2);
    assert_eq!(w.balance(d).await.spent, "30.00");
    // A refund of spending under p2 goes back to p2.
    w.ok(&acct, d, kinds::refund(under_p2, "10.00")).await;
    let p2 = care_plan(&w, &c, d).await.unwrap();
    assert_eq!(usage(&p2), (vec![("e2", "20.00", "60.00")], "0.00"));
    let balance = w.balance(d).await;
    assert_eq!(balance.spent, "20.00");
    w.server.restart();
    w.reconnect().await;
    assert_eq!(care_plan(&w, &c, d).await.unwrap(), p2);
    assert_eq!(w.balance(d).await, balance);
    audit_log(&w.log().await, &w.server.root.public_key());
}
