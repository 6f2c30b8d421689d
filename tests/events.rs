//! Writes against the real server: every event kind, every budget rule and
//! every error code an append can carry.

mod common;

use common::*;
use pb::{AllocationBasis as Basis, Management, PayeeKind, Role};
use phb_client::{kinds, Kind, Signer};
use phb_proto::v1 as pb;
use tonic::Code;

fn provider() -> PayeeKind {
    PayeeKind::Provider
}
fn pa() -> PayeeKind {
    PayeeKind::PersonalAssistant
}

/// The Northamptonshire example (seed 004): a £4,800.00 budget, the spending
/// plan of £4,274.20, a personal computer of £500.00, and £25.80 left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn northamptonshire_example_figures() {
    let w = World::new().await;
    let (c, acct, payroll) = (w.commissioner.clone(), w.account.clone(), w.payroll.clone());
    let b = "nhants-p11";
    let opened = w.open_direct(b).await;
    // The harness approves the standing plan right after the opening.
    let plan = opened + 1;
    let bal = w.balance(b).await;
    assert_eq!(
        (
            bal.allocated.as_str(),
            bal.paid_in.as_str(),
            bal.spent.as_str(),
            bal.held.as_str(),
            bal.available.as_str()
        ),
        ("0.00", "0.00", "0.00", "0.00", "0.00")
    );
    assert_eq!(bal.last_sequence, plan);
    assert_eq!(bal.management, Management::DirectPayment as i32);
    assert_eq!(bal.commissioner_id, c.id);
    assert_eq!(bal.funds_holder_id, acct.id);
    assert_eq!(bal.payroll_provider_id, payroll.id);
    assert_eq!(bal.holder_ref, format!("holder-{b}"));
    assert_eq!(
        (bal.period_start.as_str(), bal.period_end.as_str()),
        ("2026-04-01", "2027-03-31")
    );
    assert!(!bal.stopped);

    w.ok(&c, b, kinds::allocate("4800.00", Basis::ClusterCost))
        .await;
    let bal = w.balance(b).await;
    assert_eq!(
        (
            bal.allocated.as_str(),
            bal.paid_in.as_str(),
            bal.held.as_str(),
            bal.available.as_str()
        ),
        ("4800.00", "0.00", "0.00", "4800.00")
    );
    // Nothing may be spent before money is paid in (even under an
    // agreement in force).
    w.agree(b, provider(), "cmht-trust", "clinical_service")
        .await;
    w.refused(
        &acct,
        b,
        pay("0.01", provider(), "cmht-trust", "clinical_service"),
        Code::FailedPrecondition,
    )
    .await;
    w.ok(&c, b, kinds::disburse("4800.00")).await;
    let bal = w.balance(b).await;
    assert_eq!(
        (bal.paid_in.as_str(), bal.held.as_str()),
        ("4800.00", "4800.00")
    );

    // The spending plan: 4 CMHT sessions, a psychiatric visit, a personal
    // assistant 6 h/week, respite and a gym membership.
    w.pay(
        &acct,
        b,
        "808.16",
        provider(),
        "cmht-trust",
        "clinical_service",
    )
    .await;
    w.pay(
        &acct,
        b,
        "202.04",
        provider(),
        "psychiatry-clinic",
        "clinical_service",
    )
    .await;
    w.pay(
        &payroll,
        b,
        "2184.00",
        pa(),
        "pa-0001",
        "personal_assistant",
    )
    .await;
    w.ok(
        &acct,
        b,
        kinds::buy("500.00", "respite", "respite-breaks", "respite break"),
    )
    .await;
    w.ok(
        &acct,
        b,
        kinds::buy("580.00", "exercise_wellbeing", "gym-01", "gym membership"),
    )
    .await;
    let bal = w.balance(b).await;
    assert_eq!(bal.spent, "4274.20");
    assert_eq!(bal.held, "525.80");
    assert_eq!(bal.available, "525.80");
    // Plus a personal computer.
    let last = w
        .ok(
            &acct,
            b,
            kinds::buy("500.00", "equipment", "pc-shop", "personal computer"),
        )
        .await;
    let bal = w.balance(b).await;
    assert_eq!(bal.allocated, "4800.00");
    assert_eq!(bal.paid_in, "4800.00");
    assert_eq!(bal.spent, "4774.20");
    assert_eq!(bal.held, "25.80");
    assert_eq!(bal.available, "25.80");
    assert_eq!(bal.last_sequence, last);

    // One penny more than is held is refused and nothing changes.
    let r = w
        .refused(
            &acct,
            b,
            kinds::buy("25.81", "equipment", "pc-shop", "printer"),
            Code::FailedPrecondition,
        )
        .await;
    assert!(
        r.error.unwrap().message.contains("25.80"),
        "the refusal says what is held"
    );
    assert_eq!(w.balance(b).await, bal);
    // Exactly what is held is allowed.
    w.ok(
        &acct,
        b,
        kinds::buy("25.80", "equipment", "pc-shop", "printer"),
    )
    .await;
    let bal = w.balance(b).await;
    assert_eq!(
        (
            bal.spent.as_str(),
            bal.held.as_str(),
            bal.available.as_str()
        ),
        ("4800.00", "0.00", "0.00")
    );

    // Every reader that may see it sees the same figures.
    for reader in [&c, &acct, &payroll] {
        assert_eq!(w.balance_as(reader, b).await, bal, "as {}", reader.id);
    }
    // And an auditor replaying the log gets the same figures.
    let events = audit_log(&w.log().await, &w.server.root.public_key());
    let figures = replay_figures(&events);
    assert_eq!(figures[b], (480000, 480000, 480000, false));
}

/// Mental-health cluster costs: an indicative £6,061.20 reviewed down to the
/// £5,474.00 cluster cost, on a third-party budget; every budget event kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_budget_event_kind_third_party_and_notional() {
    let w = World::new().await;
    let (c, tp) = (w.commissioner.clone(), w.third_party.clone());

    let b = "tp-budget-1";
    w.open_third_party(b).await;
    let bal = w.balance(b).await;
    assert_eq!(bal.management, Management::ThirdParty as i32);
    assert_eq!(bal.funds_holder_id, tp.id);
    assert_eq!(bal.payroll_provider_id, "");

    w.ok(&c, b, kinds::allocate("6061.20", Basis::NeedsBased))
        .await;
    w.ok(&c, b, kinds::disburse("3000.00")).await;
    w.ok(&c, b, kinds::disburse("2000.00")).await;
    let s = w
        .ok(
            &c,
            b,
            kinds::review("-587.20", "moved to mental-health cluster cost"),
        )
        .await;
    let bal = w.balance(b).await;
    assert_eq!(
        (
            bal.allocated.as_str(),
            bal.paid_in.as_str(),
            bal.held.as_str(),
            bal.available.as_str()
        ),
        ("5474.00", "5000.00", "5000.00", "5474.00")
    );
    assert_eq!(bal.last_sequence, s);
    // The third party spends on the holder's behalf, by payment and purchase.
    w.pay(
        &tp,
        b,
        "180.71",
        provider(),
        "crisis-team",
        "clinical_service",
    )
    .await;
    w.pay(&tp, b, "120.00", pa(), "pa-77", "personal_assistant")
        .await;
    w.ok(
        &tp,
        b,
        kinds::buy("99.29", "equipment", "shop-9", "weighted blanket"),
    )
    .await;
    w.ok(&c, b, kinds::review("26.00", "annual uplift")).await;
    let bal = w.balance(b).await;
    assert_eq!(bal.allocated, "5500.00");
    assert_eq!(bal.paid_in, "5000.00");
    assert_eq!(bal.spent, "400.00");
    assert_eq!(bal.held, "4600.00");
    assert_eq!(bal.available, "5100.00");
    assert!(!bal.stopped);
    let s = w.ok(&c, b, kinds::stop("holder moved out of area")).await;
    let bal = w.balance(b).await;
    assert!(bal.stopped);
    assert_eq!(bal.last_sequence, s);
    assert_eq!(bal.spent, "400.00");

    // Notional: the commissioner keeps the money and pays for services.
    let n = "notional-1";
    w.open_notional(n).await;
    w.ok(&c, n, kinds::allocate("1820.00", Basis::ExistingServices))
        .await;
    w.pay(
        &c,
        n,
        "202.04",
        provider(),
        "cmht-trust",
        "clinical_service",
    )
    .await;
    w.ok(
        &c,
        n,
        kinds::buy("17.96", "equipment", "shop-1", "pill organiser"),
    )
    .await;
    let bal = w.balance(n).await;
    assert_eq!(bal.management, Management::Notional as i32);
    assert_eq!(bal.funds_holder_id, "");
    assert_eq!(bal.allocated, "1820.00");
    assert_eq!(bal.paid_in, "0.00");
    assert_eq!(bal.spent, "220.00");
    assert_eq!(bal.held, "0.00", "held is 0.00 for notional budgets");
    assert_eq!(bal.available, "1600.00");
    w.ok(
        &c,
        n,
        kinds::review("-1600.00", "needs met by existing contract"),
    )
    .await;
    let bal = w.balance(n).await;
    assert_eq!(
        (bal.allocated.as_str(), bal.available.as_str()),
        ("220.00", "0.00")
    );

    // Direct payment: account provider and payroll provider both spend.
    let d = "dp-1";
    w.open_direct(d).await;
    w.fund(d, "3855.00", Some("3855.00")).await;
    w.pay(
        &w.payroll.clone(),
        d,
        "300.00",
        pa(),
        "pa-1",
        "personal_assistant",
    )
    .await;
    w.pay(
        &w.account.clone(),
        d,
        "55.00",
        provider(),
        "physio-1",
        "therapy",
    )
    .await;
    w.ok(
        &w.account.clone(),
        d,
        kinds::buy("100.00", "equipment", "shop-2", "walking aid"),
    )
    .await;
    let bal = w.balance(d).await;
    assert_eq!(
        (
            bal.spent.as_str(),
            bal.held.as_str(),
            bal.available.as_str()
        ),
        ("455.00", "3400.00", "3400.00")
    );

    // Figures recomputed from the log agree with what the server reports.
    let events = audit_log(&w.log().await, &w.server.root.public_key());
    let figures = replay_figures(&events);
    for bal in w.all_balances().await {
        let (a, p, s, st) = figures[&bal.budget_id];
        assert_eq!(pence(&bal.allocated), a, "{}", bal.budget_id);
        assert_eq!(pence(&bal.paid_in), p, "{}", bal.budget_id);
        assert_eq!(pence(&bal.spent), s, "{}", bal.budget_id);
        assert_eq!(bal.stopped, st, "{}", bal.budget_id);
    }
    // Every budget event kind is in the log, with the registrations, and
    // the care plans and service agreements that spending needs.
    let seen: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| kind_name(e.kind.as_ref().unwrap()))
        .collect();
    let expected: std::collections::BTreeSet<&str> = [
        "OrganisationRegistered",
        "BudgetOpened",
        "Allocation",
        "Disbursement",
        "Payment",
        "Purchase",
        "ReviewAdjustment",
        "BudgetStopped",
        "CarePlanApproved",
        "ServiceAgreementApproved",
    ]
    .into();
    assert_eq!(seen, expected);
}

/// The name of an event kind, for comparing the kinds a log holds.
fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::OrganisationRegistered(_) => "OrganisationRegistered",
        Kind::KeyRotated(_) => "KeyRotated",
        Kind::BudgetOpened(_) => "BudgetOpened",
        Kind::Allocation(_) => "Allocation",
        Kind::Disbursement(_) => "Disbursement",
        Kind::Payment(_) => "Payment",
        Kind::Purchase(_) => "Purchase",
        Kind::ReviewAdjustment(_) => "ReviewAdjustment",
        Kind::BudgetStopped(_) => "BudgetStopped",
        Kind::CarePlanApproved(_) => "CarePlanApproved",
        Kind::ServiceAgreementApproved(_) => "ServiceAgreementApproved",
        _ => "another kind",
    }
}

/// OrganisationRegistered and KeyRotated: after a rotation the old key is
/// refused (writes and reads) and the new one works; events signed earlier
/// stay valid in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_key_rotation() {
    let w = World::new().await;
    let root = w.server.root.clone();
    let old = w.commissioner.clone();
    let b = "rot-1";
    w.open_direct(b).await;
    w.ok(&old, b, kinds::allocate("100.00", Basis::OneOff))
        .await;

    let new = Signer::generate(old.id.clone());
    let new_key = new.public_key().to_bytes();
    w.ok(&root, "", kinds::rotate(&old.id, &new_key)).await;

    // The old key no longer signs anything.
    let r = w
        .refused(
            &old,
            b,
            kinds::allocate("1.00", Basis::OneOff),
            Code::Unauthenticated,
        )
        .await;
    assert!(r.error.unwrap().field.is_empty());
    assert_status(get_balance(&w.client, &old, b).await, Code::Unauthenticated);
    // The new key does.
    w.ok(&new, b, kinds::allocate("1.00", Basis::OneOff)).await;
    assert_eq!(
        get_balance(&w.client, &new, b).await.unwrap().allocated,
        "101.00"
    );

    // Rotating to the current key is refused.
    w.refused(
        &root,
        "",
        kinds::rotate(&old.id, &new_key),
        Code::FailedPrecondition,
    )
    .await;
    // Only root rotates keys and registers organisations.
    let other = Signer::generate("x").public_key().to_bytes();
    w.refused(
        &new,
        "",
        kinds::rotate(&new.id, &other),
        Code::PermissionDenied,
    )
    .await;
    let mallory = Signer::generate("mallory");
    w.refused(
        &new,
        "",
        kinds::register(
            "mallory",
            &[Role::Commissioner],
            &mallory.public_key().to_bytes(),
        ),
        Code::PermissionDenied,
    )
    .await;
    // A key for an organisation that does not exist.
    w.refused(
        &root,
        "",
        kinds::rotate("no-such-org", &other),
        Code::NotFound,
    )
    .await;
    // Registering the same organisation twice.
    w.refused(
        &root,
        "",
        kinds::register(&w.payroll.id, &[Role::PayrollProvider], &other),
        Code::AlreadyExists,
    )
    .await;
    // Bad registrations.
    let mut identity = [0u8; 32];
    identity[0] = 1; // the identity point: a small-order (weak) key
    w.refused(
        &root,
        "",
        kinds::register("weak-org", &[Role::Auditor], &identity),
        Code::InvalidArgument,
    )
    .await;
    w.refused(
        &root,
        "",
        kinds::rotate(&new.id, &identity),
        Code::InvalidArgument,
    )
    .await;
    w.refused(
        &root,
        "",
        kinds::register("root", &[Role::Auditor], &other),
        Code::InvalidArgument,
    )
    .await;
    w.refused(
        &root,
        "",
        kinds::register("no-roles", &[], &other),
        Code::InvalidArgument,
    )
    .await;
    w.refused(
        &root,
        "",
        kinds::register("dup-roles", &[Role::Auditor, Role::Auditor], &other),
        Code::InvalidArgument,
    )
    .await;
    w.refused(
        &root,
        "",
        kinds::register("no-role", &[Role::Unspecified], &other),
        Code::InvalidArgument,
    )
    .await;
    let r = w
        .refused(
            &root,
            "some-budget",
            kinds::register("with-budget", &[Role::Auditor], &other),
            Code::InvalidArgument,
        )
        .await;
    assert_eq!(r.error.unwrap().field, "budget_id");
    let short = Kind::OrganisationRegistered(pb::OrganisationRegistered {
        organisation_id: "short-key".into(),
        roles: vec![Role::Auditor as i32],
        public_key: vec![7; 31],
    });
    let r = w.refused(&root, "", short, Code::InvalidArgument).await;
    assert_eq!(
        r.error.unwrap().field,
        "kind.organisation_registered.public_key"
    );

    // A newly registered organisation with two roles works at once.
    let dual = Signer::generate("dual-org");
    w.ok(
        &root,
        "",
        kinds::register(
            &dual.id,
            &[Role::ThirdParty, Role::AccountProvider],
            &dual.public_key().to_bytes(),
        ),
    )
    .await;
    let k = kinds::open("h-dual", &new.id, Management::ThirdParty, &dual.id, "");
    w.ok(&new, "dual-b", k).await;
    w.ok(&new, "dual-b", standing_plan()).await;
    w.refused(
        &old,
        "dual-b",
        kinds::allocate("10.00", Basis::OneOff),
        Code::Unauthenticated,
    )
    .await;
    w.ok(&new, "dual-b", kinds::allocate("10.00", Basis::OneOff))
        .await;
    w.ok(&new, "dual-b", kinds::disburse("10.00")).await;
    w.ok(
        &dual,
        "dual-b",
        kinds::buy("9.99", "equipment", "s-1", "grab rail"),
    )
    .await;
    assert_eq!(w.balance("dual-b").await.held, "0.01");

    // The log still verifies: entries before the rotation under the old key,
    // after it under the new one.
    let events = audit_log(&w.log().await, &root.public_key());
    assert!(events
        .iter()
        .any(|e| matches!(e.kind, Some(Kind::KeyRotated(_)))));
}

/// Every budget rule refuses with FAILED_PRECONDITION and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_rules() {
    let w = World::new().await;
    let (c, acct, tp, payroll) = (
        w.commissioner.clone(),
        w.account.clone(),
        w.third_party.clone(),
        w.payroll.clone(),
    );
    let fp = Code::FailedPrecondition;

    // Spending beyond held (direct payment): allocated 1000, paid in 300.
    // The payees have agreements in force, so the payments below are
    // refused for the money alone.
    let d = "rule-dp";
    w.open_direct(d).await;
    w.fund(d, "1000.00", Some("300.00")).await;
    w.agree(d, provider(), "p-1", "therapy").await;
    w.agree(d, pa(), "pa-1", "personal_assistant").await;
    let before = w.balance(d).await;
    w.refused(&acct, d, pay("300.01", provider(), "p-1", "therapy"), fp)
        .await;
    w.refused(
        &acct,
        d,
        kinds::buy("300.01", "equipment", "s-1", "chair"),
        fp,
    )
    .await;
    w.refused(
        &payroll,
        d,
        pay("300.01", pa(), "pa-1", "personal_assistant"),
        fp,
    )
    .await;
    assert_eq!(w.balance(d).await, before, "refusals change nothing");
    w.pay(&payroll, d, "200.00", pa(), "pa-1", "personal_assistant")
        .await;
    w.refused(
        &acct,
        d,
        kinds::buy("100.01", "equipment", "s-1", "chair"),
        fp,
    )
    .await;
    w.ok(&acct, d, kinds::buy("100.00", "equipment", "s-1", "chair"))
        .await;
    w.refused(
        &acct,
        d,
        kinds::buy("0.01", "equipment", "s-1", "chair"),
        fp,
    )
    .await;
    let bal = w.balance(d).await;
    assert_eq!(
        (
            bal.spent.as_str(),
            bal.held.as_str(),
            bal.available.as_str()
        ),
        ("300.00", "0.00", "700.00")
    );

    // Spending beyond available (notional).
    let n = "rule-notional";
    w.open_notional(n).await;
    w.fund(n, "500.00", None).await;
    w.agree(n, provider(), "p-1", "therapy").await;
    w.refused(&c, n, pay("500.01", provider(), "p-1", "therapy"), fp)
        .await;
    w.pay(&c, n, "400.00", provider(), "p-1", "therapy").await;
    w.refused(&c, n, kinds::buy("100.01", "equipment", "s-1", "chair"), fp)
        .await;
    w.ok(&c, n, kinds::buy("100.00", "equipment", "s-1", "chair"))
        .await;
    assert_eq!(w.balance(n).await.available, "0.00");
    // Notional budgets are never disbursed.
    w.refused(&c, n, kinds::disburse("1.00"), fp).await;

    // Disbursing beyond allocated - paid_in.
    let t = "rule-tp";
    w.open_third_party(t).await;
    w.refused(&c, t, kinds::disburse("0.01"), fp).await;
    w.fund(t, "1000.00", Some("600.00")).await;
    w.refused(&c, t, kinds::disburse("400.01"), fp).await;
    w.ok(&c, t, kinds::disburse("400.00")).await;
    w.refused(&c, t, kinds::disburse("0.01"), fp).await;
    assert_eq!(w.balance(t).await.paid_in, "1000.00");

    // A review may not take allocated below paid_in.
    w.refused(&c, t, kinds::review("-0.01", "review"), fp).await;
    w.pay(&tp, t, "250.00", provider(), "p-2", "therapy").await;
    // ... even if some has been spent: the floor is paid_in, not spent.
    w.refused(&c, t, kinds::review("-0.01", "review"), fp).await;
    w.ok(&c, t, kinds::review("500.00", "needs increased"))
        .await;
    w.refused(&c, t, kinds::review("-500.01", "review"), fp)
        .await;
    w.ok(&c, t, kinds::review("-500.00", "back again")).await;
    assert_eq!(w.balance(t).await.allocated, "1000.00");

    // For notional budgets the floor is spent.
    let n2 = "rule-notional-2";
    w.open_notional(n2).await;
    w.fund(n2, "1000.00", None).await;
    w.pay(&c, n2, "700.00", provider(), "p-1", "therapy").await;
    w.refused(&c, n2, kinds::review("-300.01", "review"), fp)
        .await;
    w.ok(&c, n2, kinds::review("-300.00", "review")).await;
    let bal = w.balance(n2).await;
    assert_eq!(
        (
            bal.allocated.as_str(),
            bal.spent.as_str(),
            bal.available.as_str()
        ),
        ("700.00", "700.00", "0.00")
    );

    // Nothing after a stop: not even by the commissioner, not even a stop.
    let s = "rule-stopped";
    w.open_direct(s).await;
    w.fund(s, "1000.00", Some("500.00")).await;
    w.agree(s, provider(), "p-1", "therapy").await;
    w.agree(s, pa(), "pa-1", "personal_assistant").await;
    let stop_seq = w.ok(&c, s, kinds::stop("holder died")).await;
    let stopped = w.balance(s).await;
    assert!(stopped.stopped);
    assert_eq!(stopped.last_sequence, stop_seq);
    w.refused(&acct, s, pay("1.00", provider(), "p-1", "therapy"), fp)
        .await;
    w.refused(
        &payroll,
        s,
        pay("1.00", pa(), "pa-1", "personal_assistant"),
        fp,
    )
    .await;
    w.refused(
        &acct,
        s,
        kinds::buy("1.00", "equipment", "s-1", "chair"),
        fp,
    )
    .await;
    w.refused(&c, s, kinds::disburse("1.00"), fp).await;
    w.refused(&c, s, kinds::allocate("1.00", Basis::OneOff), fp)
        .await;
    w.refused(&c, s, kinds::review("1.00", "review"), fp).await;
    w.refused(&c, s, kinds::review("-1.00", "review"), fp).await;
    w.refused(&c, s, kinds::stop("again"), fp).await;
    assert_eq!(w.balance(s).await, stopped);

    // Opening a budget whose named holders lack the right role or do not exist.
    let bad_holder = kinds::open("h", &c.id, Management::ThirdParty, &acct.id, "");
    w.refused(&c, "rule-open-1", bad_holder, fp).await;
    let bad_holder = kinds::open("h", &c.id, Management::DirectPayment, &tp.id, "");
    w.refused(&c, "rule-open-2", bad_holder, fp).await;
    let bad_payroll = kinds::open("h", &c.id, Management::DirectPayment, &acct.id, &acct.id);
    w.refused(&c, "rule-open-3", bad_payroll, fp).await;
    let unknown = kinds::open("h", &c.id, Management::ThirdParty, "no-such-org", "");
    w.refused(&c, "rule-open-4", unknown, fp).await;
    for id in ["rule-open-1", "rule-open-2", "rule-open-3", "rule-open-4"] {
        assert_status(get_balance(&w.client, &w.auditor, id).await, Code::NotFound);
    }
}

/// INVALID_ARGUMENT: malformed bytes, bad amounts, wrong ledger id and other
/// malformed fields; each names the field to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments() {
    let w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let inv = Code::InvalidArgument;
    let d = "inv-dp";
    w.open_direct(d).await;
    w.fund(d, "1000.00", Some("1000.00")).await;
    let before = w.log_len().await;

    // Bytes that are not an Event, correctly signed.
    for bytes in [
        vec![0xff, 0xff, 0xff, 0xff],
        vec![0x0a],
        b"not protobuf at all".to_vec(),
        vec![],
    ] {
        let r = w.append_signed(c.sign_bytes(bytes.clone())).await;
        assert_refused(&r, inv);
        assert_eq!(r.error.unwrap().field, "event", "{bytes:?}");
        assert_eq!(r.event_id, "", "undecodable events echo no id");
    }
    // More than 64 KiB.
    let mut big = w.event(d, kinds::buy("1.00", "equipment", "s-1", "x"));
    if let Some(Kind::Purchase(p)) = &mut big.kind {
        p.description = "x".repeat(70 * 1024);
    }
    let r = w.append_signed(acct.sign(&big)).await;
    assert_refused(&r, inv);
    assert_eq!(r.error.unwrap().field, "event");

    // Bad amounts.
    for amount in [
        "0.001",
        "1e9",
        "-5",
        "0",
        "0.00",
        "",
        "1,000",
        "+5",
        " 5",
        "5 ",
        "NaN",
        "1.",
        ".5",
        "1000000000.01",
        "١٢",
    ] {
        let r = w
            .append(&c, d, kinds::allocate(amount, Basis::OneOff))
            .await;
        assert_refused(&r, inv);
        assert_eq!(
            r.error.unwrap().field,
            "kind.allocation.amount",
            "{amount:?}"
        );
        let r = w
            .append(&acct, d, kinds::pay(amount, provider(), "p", "therapy"))
            .await;
        assert_refused(&r, inv);
        assert_eq!(r.error.unwrap().field, "kind.payment.amount", "{amount:?}");
        let r = w
            .append(&acct, d, kinds::buy(amount, "therapy", "s", "x"))
            .await;
        assert_refused(&r, inv);
        assert_eq!(r.error.unwrap().field, "kind.purchase.amount", "{amount:?}");
        let r = w.append(&c, d, kinds::disburse(amount)).await;
        assert_refused(&r, inv);
        assert_eq!(
            r.error.unwrap().field,
            "kind.disbursement.amount",
            "{amount:?}"
        );
    }
    for delta in ["0", "-0.00", "1.001", "1e3", "+5", ""] {
        let r = w.append(&c, d, kinds::review(delta, "review")).await;
        assert_refused(&r, inv);
        assert_eq!(
            r.error.unwrap().field,
            "kind.review_adjustment.delta",
            "{delta:?}"
        );
    }
    // The largest amount is accepted (on a notional budget, so it can be spent).
    let n = "inv-notional";
    w.open_notional(n).await;
    w.ok(&c, n, kinds::allocate("1000000000.00", Basis::OneOff))
        .await;
    assert_eq!(w.balance(n).await.allocated, "1000000000.00");

    // Wrong ledger id: the event cannot be replayed into another ledger.
    let mut e = w.event(d, kinds::allocate("1.00", Basis::OneOff));
    e.ledger_id = "another-ledger".into();
    let r = w.append_signed(c.sign(&e)).await;
    assert_refused(&r, inv);
    assert_eq!(r.error.as_ref().unwrap().field, "ledger_id");
    assert_eq!(r.event_id, e.event_id, "decodable events echo their id");

    // Field by field.
    type Mutation = Box<dyn Fn(&mut pb::Event)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("event_id", Box::new(|e| e.event_id = String::new())),
        ("event_id", Box::new(|e| e.event_id = "has space".into())),
        ("event_id", Box::new(|e| e.event_id = "x".repeat(129))),
        ("budget_id", Box::new(|e| e.budget_id = String::new())),
        ("budget_id", Box::new(|e| e.budget_id = "budget/1".into())),
        ("occurred_at", Box::new(|e| e.occurred_at = None)),
        (
            "occurred_at",
            Box::new(|e| e.occurred_at.as_mut().unwrap().seconds += 2 * 24 * 3600),
        ),
        (
            "occurred_at",
            Box::new(|e| e.occurred_at.as_mut().unwrap().seconds = 900_000_000),
        ),
        (
            "occurred_at",
            Box::new(|e| e.occurred_at.as_mut().unwrap().nanos = -1),
        ),
        ("kind", Box::new(|e| e.kind = None)),
        (
            "kind.allocation.basis",
            Box::new(|e| e.kind = Some(kinds::allocate("1.00", Basis::Unspecified))),
        ),
        (
            "kind.payment.payee_kind",
            Box::new(|e| e.kind = Some(kinds::pay("1.00", PayeeKind::Unspecified, "p", "therapy"))),
        ),
        (
            "kind.payment.category",
            Box::new(|e| e.kind = Some(kinds::pay("1.00", provider(), "p", "Personal Care"))),
        ),
        (
            "kind.payment.payee_ref",
            Box::new(|e| e.kind = Some(kinds::pay("1.00", provider(), "", "therapy"))),
        ),
        (
            "kind.purchase.supplier_ref",
            Box::new(|e| e.kind = Some(kinds::buy("1.00", "therapy", "John Smith", "x"))),
        ),
        (
            "kind.purchase.description",
            Box::new(|e| e.kind = Some(kinds::buy("1.00", "therapy", "s", "line\nbreak"))),
        ),
        (
            "kind.review_adjustment.reason",
            Box::new(|e| e.kind = Some(kinds::review("1.00", "  "))),
        ),
        (
            "kind.budget_stopped.reason",
            Box::new(|e| e.kind = Some(kinds::stop(""))),
        ),
    ];
    for (field, mutate) in &cases {
        let mut e = w.event(d, kinds::allocate("1.00", Basis::OneOff));
        mutate(&mut e);
        let r = w.append_signed(c.sign(&e)).await;
        assert_refused(&r, inv);
        assert_eq!(r.error.unwrap().field, *field, "case {field}");
    }
    // Slightly in the future (within 24 h) is fine.
    let mut e = w.event(d, kinds::allocate("1.00", Basis::OneOff));
    e.occurred_at.as_mut().unwrap().seconds += 3600;
    assert_written(&w.append_signed(c.sign(&e)).await);

    // BudgetOpened shapes.
    let open = |f: &dyn Fn(&mut pb::BudgetOpened)| {
        let mut k = pb::BudgetOpened {
            holder_ref: "h-1".into(),
            commissioner_id: c.id.clone(),
            period_start: "2026-04-01".into(),
            period_end: "2027-03-31".into(),
            management: Management::DirectPayment as i32,
            funds_holder_id: acct.id.clone(),
            payroll_provider_id: String::new(),
            plan_facilitator_id: String::new(),
            ..Default::default()
        };
        f(&mut k);
        Kind::BudgetOpened(k)
    };
    let open_cases: Vec<(&str, Kind)> = vec![
        (
            "kind.budget_opened.period_end",
            open(&|k| k.period_end = "2026-03-31".into()),
        ),
        (
            "kind.budget_opened.period_start",
            open(&|k| k.period_start = "2026-02-30".into()),
        ),
        (
            "kind.budget_opened.period_start",
            open(&|k| k.period_start = "1/4/2026".into()),
        ),
        ("kind.budget_opened.management", open(&|k| k.management = 0)),
        (
            "kind.budget_opened.holder_ref",
            open(&|k| k.holder_ref = "Jane Doe".into()),
        ),
        (
            "kind.budget_opened.holder_ref",
            open(&|k| k.holder_ref = "x".repeat(65)),
        ),
        (
            "kind.budget_opened.funds_holder_id",
            open(&|k| {
                k.management = Management::ThirdParty as i32;
                k.funds_holder_id = String::new();
            }),
        ),
        (
            "kind.budget_opened.funds_holder_id",
            open(&|k| k.management = Management::Notional as i32),
        ),
    ];
    for (i, (field, kind)) in open_cases.into_iter().enumerate() {
        let r = w.append(&c, &format!("inv-open-{i}"), kind).await;
        assert_refused(&r, inv);
        assert_eq!(r.error.unwrap().field, field, "open case {i}");
    }

    // Only the notional budget (its opening and standing plan) and the two
    // accepted allocations above were written.
    assert_eq!(w.log_len().await, before + 4);
}

/// UNAUTHENTICATED: bad signature, unknown signer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_events() {
    let w = World::new().await;
    let c = w.commissioner.clone();
    let d = "auth-dp";
    w.open_direct(d).await;
    let before = w.log_len().await;
    let un = Code::Unauthenticated;

    // A flipped bit in the signature.
    let mut s = w.sign(&c, d, kinds::allocate("1.00", Basis::OneOff));
    s.signature[0] ^= 1;
    assert_refused(&w.append_signed(s).await, un);
    // A valid signature over different bytes.
    let a = w.sign(&c, d, kinds::allocate("1.00", Basis::OneOff));
    let mut b = w.sign(&c, d, kinds::allocate("2.00", Basis::OneOff));
    b.signature = a.signature.clone();
    assert_refused(&w.append_signed(b).await, un);
    // Signed by someone else's key, claiming to be the commissioner.
    let impostor = Signer::generate(c.id.clone());
    assert_refused(
        &w.append(&impostor, d, kinds::allocate("1.00", Basis::OneOff))
            .await,
        un,
    );
    // A root impostor cannot register organisations.
    let fake_root = Signer::generate("root");
    let k = kinds::register("evil", &[Role::Auditor], &fake_root.public_key().to_bytes());
    assert_refused(&w.append(&fake_root, "", k).await, un);
    // Unknown signers.
    let nobody = Signer::generate("nobody");
    assert_refused(
        &w.append(&nobody, d, kinds::allocate("1.00", Basis::OneOff))
            .await,
        un,
    );
    let empty = Signer::generate("");
    assert_refused(
        &w.append(&empty, d, kinds::allocate("1.00", Basis::OneOff))
            .await,
        un,
    );
    // Signatures of the wrong length, or none.
    for len in [0usize, 63, 65] {
        let mut s = w.sign(&c, d, kinds::allocate("1.00", Basis::OneOff));
        s.signature.resize(len, 0);
        assert_refused(&w.append_signed(s).await, un);
    }
    // A non-canonical signature: S + L (same point, S not reduced) must be refused.
    let mut s = w.sign(&c, d, kinds::allocate("1.00", Basis::OneOff));
    add_group_order(&mut s.signature[32..]);
    assert_refused(&w.append_signed(s).await, un);

    assert_eq!(w.log_len().await, before);
    assert_eq!(w.balance(d).await.allocated, "0.00");
}

/// Adds the ed25519 group order L to a little-endian scalar (makes S non-canonical).
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = s[i] as u16 + L[i] as u16 + carry;
        s[i] = v as u8;
        carry = v >> 8;
    }
}

/// PERMISSION_DENIED: a role or budget that does not allow the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied() {
    let w = World::new().await;
    let (c, c2, acct, tp, payroll, auditor, root) = (
        w.commissioner.clone(),
        w.commissioner2.clone(),
        w.account.clone(),
        w.third_party.clone(),
        w.payroll.clone(),
        w.auditor.clone(),
        w.server.root.clone(),
    );
    let pd = Code::PermissionDenied;
    let d = "pd-dp";
    let t = "pd-tp";
    let n = "pd-notional";
    w.open_direct(d).await;
    w.open_third_party(t).await;
    w.open_notional(n).await;
    w.fund(d, "1000.00", Some("1000.00")).await;
    w.fund(t, "1000.00", Some("1000.00")).await;
    w.fund(n, "1000.00", None).await;
    // The payees have agreements in force: the payments below are refused
    // for who signs them alone.
    w.agree(d, provider(), "p-1", "therapy").await;
    w.agree(t, pa(), "pa-1", "personal_assistant").await;
    w.agree(n, provider(), "p-1", "therapy").await;

    // A payroll provider pays personal assistants only.
    w.refused(&payroll, d, pay("10.00", provider(), "p-1", "therapy"), pd)
        .await;
    w.refused(
        &payroll,
        d,
        kinds::buy("10.00", "equipment", "s-1", "x"),
        pd,
    )
    .await;
    // ... and only on budgets that name it.
    w.refused(
        &payroll,
        t,
        pay("10.00", pa(), "pa-1", "personal_assistant"),
        pd,
    )
    .await;
    // A third party spending on a budget it does not hold.
    w.refused(&tp, d, pay("10.00", provider(), "p-1", "therapy"), pd)
        .await;
    w.refused(&tp, d, kinds::buy("10.00", "equipment", "s-1", "x"), pd)
        .await;
    w.refused(&acct, t, kinds::buy("10.00", "equipment", "s-1", "x"), pd)
        .await;
    // On notional budgets only the commissioner spends.
    w.refused(&acct, n, pay("10.00", provider(), "p-1", "therapy"), pd)
        .await;
    // The commissioner does not spend on held budgets, nor fund holders fund.
    w.refused(&c, d, pay("10.00", provider(), "p-1", "therapy"), pd)
        .await;
    w.refused(&acct, d, kinds::disburse("10.00"), pd).await;
    w.refused(&tp, t, kinds::allocate("10.00", Basis::OneOff), pd)
        .await;
    w.refused(&tp, t, kinds::stop("no"), pd).await;
    w.refused(&payroll, d, kinds::review("-10.00", "no"), pd)
        .await;
    // An auditor writes nothing.
    w.refused(&auditor, d, kinds::allocate("10.00", Basis::OneOff), pd)
        .await;
    w.refused(&auditor, n, pay("10.00", provider(), "p-1", "therapy"), pd)
        .await;
    let k = kinds::open("h", &auditor.id, Management::Notional, "", "");
    w.refused(&auditor, "pd-auditor", k, pd).await;
    // A commissioner opens only its own budgets and funds only its own.
    let k = kinds::open("h", &c2.id, Management::Notional, "", "");
    w.refused(&c, "pd-other", k, pd).await;
    w.refused(&c2, d, kinds::allocate("10.00", Basis::OneOff), pd)
        .await;
    w.refused(&c2, d, kinds::stop("not mine"), pd).await;
    w.refused(&c2, n, pay("10.00", provider(), "p-1", "therapy"), pd)
        .await;
    // A provider cannot open budgets.
    let k = kinds::open("h", &acct.id, Management::DirectPayment, &acct.id, "");
    w.refused(&acct, "pd-acct", k, pd).await;
    // Root only registers organisations and rotates keys.
    w.refused(&root, d, kinds::allocate("10.00", Basis::OneOff), pd)
        .await;
    let k = kinds::open("h", &c.id, Management::Notional, "", "");
    w.refused(&root, "pd-root", k, pd).await;
    // Organisations do not register organisations.
    let k = kinds::register(
        "x-org",
        &[Role::Auditor],
        &Signer::generate("x").public_key().to_bytes(),
    );
    w.refused(&c, "", k, pd).await;

    // The figures are untouched.
    for (b, held) in [(d, "1000.00"), (t, "1000.00"), (n, "0.00")] {
        let bal = w.balance(b).await;
        assert_eq!(
            (
                bal.allocated.as_str(),
                bal.spent.as_str(),
                bal.held.as_str()
            ),
            ("1000.00", "0.00", held),
            "{b}"
        );
    }
    assert_status(
        get_balance(&w.client, &auditor, "pd-other").await,
        Code::NotFound,
    );
}

/// NOT_FOUND and ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_already_exists() {
    let w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    w.refused(
        &c,
        "no-such-budget",
        kinds::allocate("1.00", Basis::OneOff),
        Code::NotFound,
    )
    .await;
    w.refused(
        &acct,
        "no-such-budget",
        pay("1.00", provider(), "p", "therapy"),
        Code::NotFound,
    )
    .await;
    w.refused(&c, "no-such-budget", kinds::stop("x"), Code::NotFound)
        .await;

    let d = "ae-dp";
    let open_seq = w.open_direct(d).await;
    // The harness approves the standing plan right after the opening.
    let plan_seq = open_seq + 1;
    // Re-opening an existing budget id, with a new event id.
    let k = kinds::open("someone-else", &c.id, Management::Notional, "", "");
    w.refused(&c, d, k, Code::AlreadyExists).await;
    // ... even by another commissioner it is refused (not re-assigned).
    let k = kinds::open(
        "someone-else",
        &w.commissioner2.id,
        Management::Notional,
        "",
        "",
    );
    let r = w.append(&w.commissioner2.clone(), d, k).await;
    assert!(
        [Code::AlreadyExists as i32, Code::PermissionDenied as i32].contains(&result_code(&r))
            && r.sequence == 0,
        "{r:?}"
    );
    let bal = w.balance(d).await;
    assert_eq!(
        (bal.holder_ref.as_str(), bal.management),
        (
            format!("holder-{d}").as_str(),
            Management::DirectPayment as i32
        )
    );
    assert_eq!(bal.last_sequence, plan_seq);
    // An agreement in force for the payment below.
    w.agree(d, provider(), "p", "therapy").await;

    // event_id reuse with different content.
    let first = w.event(d, kinds::allocate("100.00", Basis::OneOff));
    let first_seq = assert_written(&w.append_signed(c.sign(&first)).await);
    let mut second = first.clone();
    second.kind = Some(kinds::allocate("200.00", Basis::OneOff));
    let before = w.log_len().await;
    let r = w.append_signed(c.sign(&second)).await;
    assert_refused(&r, Code::AlreadyExists);
    assert!(
        r.error.unwrap().message.contains(&first_seq.to_string()),
        "names the original sequence"
    );
    // The same id on another budget by the same signer is also refused.
    let mut third = first.clone();
    third.budget_id = "other".into();
    assert_refused(&w.append_signed(c.sign(&third)).await, Code::AlreadyExists);
    // Signed by another organisation it is another event (idempotency keys
    // are per signer): decided on its own merits, here refused for lack of
    // funds and recorded, never ALREADY_EXISTS.
    let mut fourth = first.clone();
    fourth.kind = Some(pay("1.00", provider(), "p", "therapy"));
    let r = w.append_signed(acct.sign(&fourth)).await;
    assert_refused(&r, Code::FailedPrecondition);
    assert_eq!(r.refusal_sequence, before + 1, "{r:?}");
    let before = before + 1;
    // Same bytes, re-signed by the same key: the same signed event, a duplicate.
    let again = w.append_signed(c.sign(&first)).await;
    assert_eq!(result_code(&again), 0);
    assert!(again.duplicate);
    assert_eq!(again.sequence, first_seq);
    assert_eq!(w.log_len().await, before);
    assert_eq!(w.balance(d).await.allocated, "100.00");
}
