//! GetHoldings and GetBudgetStatement against the real server: holdings
//! reconcile to the balances to the penny, statements' running figures
//! follow GetBalance after every step, refusals are rows that change no
//! figure, paging covers every row once, read scopes, and identical answers
//! after a restart (the projections rebuilt from the log).

mod common;

use common::*;
use pb::{AllocationBasis as Basis, Management, PayeeKind};
use phb_client::{kinds, methods, Signer};
use phb_proto::v1 as pb;
use tonic::Code;

/// The figures a statement row and a balance share, in pence.
fn figures_of_row(r: &pb::StatementRow) -> (i64, i64, i64, i64) {
    (
        pence(&r.allocated),
        pence(&r.paid_in),
        pence(&r.spent),
        pence(&r.held),
    )
}

fn figures_of_balance(b: &pb::Balance) -> (i64, i64, i64, i64) {
    (
        pence(&b.allocated),
        pence(&b.paid_in),
        pence(&b.spent),
        pence(&b.held),
    )
}

/// Opens a third-party budget of the second commissioner, held by the
/// third party, and approves the standing plan on it.
async fn open_c2_third_party(w: &World, budget_id: &str) {
    let c2 = w.commissioner2.clone();
    let k = kinds::open(
        &format!("holder-{budget_id}"),
        &c2.id,
        Management::ThirdParty,
        &w.third_party.id,
        "",
    );
    w.ok(&c2, budget_id, k).await;
    w.ok(&c2, budget_id, standing_plan()).await;
}

/// Checks a holdings answer row by row against GetBalance and its totals
/// against the rows' sums, in pence.
async fn check_reconciles(w: &World, h: &pb::GetHoldingsResponse, expect_budgets: &[&str]) {
    let ids: Vec<&str> = h.holdings.iter().map(|r| r.budget_id.as_str()).collect();
    assert_eq!(ids, expect_budgets, "rows by budget id: {h:?}");
    let (mut paid_in, mut spent, mut held) = (0i64, 0i64, 0i64);
    for row in &h.holdings {
        let b = w.balance(&row.budget_id).await;
        assert_eq!(row.paid_in, b.paid_in, "{row:?} vs {b:?}");
        assert_eq!(row.spent, b.spent, "{row:?} vs {b:?}");
        assert_eq!(row.held, b.held, "{row:?} vs {b:?}");
        assert_eq!(row.holder_ref, b.holder_ref);
        assert_eq!(row.commissioner_id, b.commissioner_id);
        assert_eq!(row.management, b.management);
        assert_eq!(row.stopped, b.stopped);
        assert_eq!(b.funds_holder_id, h.organisation_id);
        assert!(row.last_movement_sequence <= b.last_sequence);
        assert_eq!(
            row.last_movement_at.is_some(),
            row.last_movement_sequence != 0
        );
        paid_in += pence(&b.paid_in);
        spent += pence(&b.spent);
        held += pence(&b.held);
    }
    assert_eq!(pence(&h.total_paid_in), paid_in, "{h:?}");
    assert_eq!(pence(&h.total_spent), spent, "{h:?}");
    assert_eq!(pence(&h.total_held), held, "{h:?}");
    assert_eq!(held, paid_in - spent);
}

/// Builds a ledger with several budgets per funds holder and some refusals.
/// Returns the budgets' ids.
async fn populate(w: &World) -> Vec<&'static str> {
    let (tp, acct, payroll, c) = (
        w.third_party.clone(),
        w.account.clone(),
        w.payroll.clone(),
        w.commissioner.clone(),
    );
    for b in ["tp-a", "tp-b", "tp-c"] {
        w.open_third_party(b).await;
    }
    for b in ["dp-a", "dp-b"] {
        w.open_direct(b).await;
    }
    w.open_notional("nt-a").await;
    open_c2_third_party(w, "c2-tp").await;

    w.fund("tp-a", "1200.00", Some("1000.01")).await;
    w.fund("tp-b", "333.33", Some("333.33")).await;
    w.fund("tp-c", "50.00", None).await;
    w.fund("dp-a", "999.99", Some("500.50")).await;
    w.fund("dp-b", "10.00", Some("0.01")).await;
    w.fund("nt-a", "700.00", None).await;
    let c2 = w.commissioner2.clone();
    w.ok(&c2, "c2-tp", kinds::allocate("420.00", Basis::OneOff))
        .await;
    w.ok(&c2, "c2-tp", kinds::disburse("419.99")).await;

    let pa = PayeeKind::PersonalAssistant;
    let prov = PayeeKind::Provider;
    w.pay(&tp, "tp-a", "364.00", pa, "pa-1", "personal_assistant")
        .await;
    w.ok(
        &tp,
        "tp-a",
        kinds::buy("0.03", "equipment", "shop-1", "pens"),
    )
    .await;
    w.pay(&tp, "tp-b", "333.33", prov, "prov-1", "respite")
        .await;
    w.ok(
        &tp,
        "c2-tp",
        kinds::buy("19.98", "therapy", "shop-2", "session"),
    )
    .await;
    w.ok(
        &acct,
        "dp-a",
        kinds::buy("100.49", "equipment", "shop-3", "chair"),
    )
    .await;
    w.pay(&payroll, "dp-a", "200.00", pa, "pa-2", "personal_assistant")
        .await;
    w.pay(&c, "nt-a", "70.00", prov, "prov-2", "therapy").await;
    w.ok(&c, "tp-a", kinds::review("-100.00", "review")).await;
    // Refused, recorded: an overspend (under the agreement) and a purchase
    // by the wrong holder.
    w.refused(
        &tp,
        "tp-b",
        pay("0.01", prov, "prov-1", "respite"),
        Code::FailedPrecondition,
    )
    .await;
    w.refused(
        &acct,
        "tp-a",
        kinds::buy("1.00", "equipment", "shop-1", "x"),
        Code::PermissionDenied,
    )
    .await;
    w.ok(&c, "tp-c", kinds::stop("moved away")).await;
    vec!["c2-tp", "dp-a", "dp-b", "nt-a", "tp-a", "tp-b", "tp-c"]
}

/// Holdings of a third party and an account provider across several
/// budgets reconcile exactly to the balances; scopes; errors; restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holdings_reconcile_and_survive_restart() {
    let mut w = World::new().await;
    let budgets = populate(&w).await;
    let cl = w.client.clone();
    let (tp, acct, payroll, c, c2, auditor, root) = (
        w.third_party.clone(),
        w.account.clone(),
        w.payroll.clone(),
        w.commissioner.clone(),
        w.commissioner2.clone(),
        w.auditor.clone(),
        w.server.root.clone(),
    );

    // The funds holders themselves: every budget they hold.
    let tp_h = get_holdings(&cl, &tp, &tp.id).await.unwrap();
    assert!(!tp_h.restricted);
    check_reconciles(&w, &tp_h, &["c2-tp", "tp-a", "tp-b", "tp-c"]).await;
    assert_eq!(
        (
            tp_h.total_paid_in.as_str(),
            tp_h.total_spent.as_str(),
            tp_h.total_held.as_str()
        ),
        ("1753.33", "717.34", "1035.99")
    );
    let acct_h = get_holdings(&cl, &acct, &acct.id).await.unwrap();
    check_reconciles(&w, &acct_h, &["dp-a", "dp-b"]).await;
    assert_eq!(
        (
            acct_h.total_paid_in.as_str(),
            acct_h.total_spent.as_str(),
            acct_h.total_held.as_str()
        ),
        ("500.51", "300.49", "200.02")
    );
    // The last movement: tp-a's was its purchase (the review and the
    // refusals after it moved no money); tp-c never moved money.
    let row = |h: &pb::GetHoldingsResponse, id: &str| {
        h.holdings
            .iter()
            .find(|r| r.budget_id == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&tp_h, "tp-c").last_movement_sequence, 0);
    assert!(row(&tp_h, "tp-c").stopped);
    let tp_a = row(&tp_h, "tp-a");
    let log = w.log().await;
    let e = &log[(tp_a.last_movement_sequence - 1) as usize];
    assert!(e.refusal.is_none());
    assert_eq!(e.recorded_at, tp_a.last_movement_at);
    let ev =
        <pb::Event as prost::Message>::decode(e.signed_event.as_ref().unwrap().event.as_slice())
            .unwrap();
    assert!(
        matches!(ev.kind, Some(pb::event::Kind::Purchase(_))),
        "{ev:?}"
    );

    // Auditors and root read the same answer.
    for reader in [&auditor, &root] {
        assert_eq!(get_holdings(&cl, reader, &tp.id).await.unwrap(), tp_h);
        assert_eq!(get_holdings(&cl, reader, &acct.id).await.unwrap(), acct_h);
    }
    // A commissioner sees the rows of its own budgets only, totals over them.
    let mine = get_holdings(&cl, &c, &tp.id).await.unwrap();
    assert!(mine.restricted);
    check_reconciles(&w, &mine, &["tp-a", "tp-b", "tp-c"]).await;
    let theirs = get_holdings(&cl, &c2, &tp.id).await.unwrap();
    assert!(theirs.restricted);
    check_reconciles(&w, &theirs, &["c2-tp"]).await;
    let none = get_holdings(&cl, &c2, &acct.id).await.unwrap();
    assert!(none.holdings.is_empty() && none.restricted);
    assert_eq!(none.total_held, "0.00");
    // Other organisations may not read a funds holder's holdings.
    for (reader, org) in [(&payroll, &tp.id), (&acct, &tp.id), (&tp, &acct.id)] {
        assert_status(get_holdings(&cl, reader, org).await, Code::PermissionDenied);
    }
    // Not a funds holder, unknown, malformed.
    for org in [&c.id, &payroll.id, &auditor.id] {
        assert_status(
            get_holdings(&cl, &auditor, org).await,
            Code::FailedPrecondition,
        );
    }
    assert_status(get_holdings(&cl, &auditor, "nobody").await, Code::NotFound);
    assert_status(get_holdings(&cl, &auditor, "root").await, Code::NotFound);
    assert_status(
        get_holdings(&cl, &auditor, "not an id!").await,
        Code::InvalidArgument,
    );
    // The method path is signed: a GetBalance signature does not do.
    let mut req = tonic::Request::new(pb::GetHoldingsRequest {
        organisation_id: tp.id.clone(),
    });
    auditor.authorize_at(&mut req, methods::GET_BALANCE, phb_client::unix_now());
    assert_status(cl.clone().get_holdings(req).await, Code::Unauthenticated);

    // After a restart both queries answer the same (rebuilt from the log).
    let mut statements = Vec::new();
    for b in &budgets {
        statements.push(statement_all(&cl, &auditor, b, 4).await.unwrap());
    }
    w.server.restart();
    w.reconnect().await;
    let cl = w.client.clone();
    let again = get_holdings(&cl, &auditor, &tp.id).await.unwrap();
    assert_eq!(again, tp_h);
    assert_eq!(get_holdings(&cl, &acct, &acct.id).await.unwrap(), acct_h);
    assert_eq!(get_holdings(&cl, &c, &tp.id).await.unwrap(), mine);
    for (b, before) in budgets.iter().zip(&statements) {
        let after = statement_all(&cl, &auditor, b, 1000).await.unwrap();
        assert_eq!(&after, before, "statement of {b} after restart");
    }
}

/// Runs `step`, then checks the statement grew by one row whose figures
/// equal GetBalance (or, for a refusal, the previous row's).
struct Follow<'a> {
    w: &'a World,
    budget: &'a str,
    rows: Vec<pb::StatementRow>,
}

impl Follow<'_> {
    async fn check(&mut self, sequence: u64, kind: &str, signer: &Signer, amount: &str) {
        let reader = self.w.auditor.clone();
        let rows = statement_all(&self.w.client, &reader, self.budget, 1000)
            .await
            .unwrap();
        assert_eq!(rows.len(), self.rows.len() + 1, "one new row: {rows:?}");
        assert_eq!(
            rows[..self.rows.len()],
            self.rows[..],
            "earlier rows unchanged"
        );
        let last = rows.last().unwrap();
        let b = self.w.balance(self.budget).await;
        assert_eq!(
            figures_of_row(last),
            figures_of_balance(&b),
            "{last:?} vs {b:?}"
        );
        assert_eq!(last.sequence, sequence);
        assert_eq!(last.kind, kind);
        assert_eq!(last.signer_id, signer.id);
        assert_eq!(last.amount, amount);
        assert!(last.recorded_at.is_some() && last.occurred_at.is_some());
        if last.refused {
            let prev = &self.rows.last().unwrap();
            assert_eq!(
                figures_of_row(last),
                figures_of_row(prev),
                "a refusal changes nothing"
            );
        } else {
            assert_eq!(last.refusal_code, 0);
            assert!(last.refusal_message.is_empty());
        }
        self.rows = rows;
    }

    async fn ok(&mut self, signer: &Signer, k: phb_client::Kind, kind: &str, amount: &str) {
        let seq = self.w.ok(signer, self.budget, k).await;
        self.check(seq, kind, signer, amount).await;
    }

    async fn refused(
        &mut self,
        signer: &Signer,
        k: phb_client::Kind,
        c: Code,
        kind: &str,
        amount: &str,
    ) {
        let r = self.w.refused(signer, self.budget, k, c).await;
        self.check(r.refusal_sequence, kind, signer, amount).await;
        let last = self.rows.last().unwrap();
        assert!(last.refused);
        assert_eq!(last.refusal_code as i32, code(c));
        assert_eq!(last.refusal_message, r.error.as_ref().unwrap().message);
    }
}

/// Statement running figures equal GetBalance after every step; refused
/// events are rows that change no figure; the rows are the budget's entries
/// in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_follows_balance_step_by_step() {
    let w = World::new().await;
    let (tp, c, c2, acct, payroll) = (
        w.third_party.clone(),
        w.commissioner.clone(),
        w.commissioner2.clone(),
        w.account.clone(),
        w.payroll.clone(),
    );
    let budget = "st-dp";
    let open = kinds::open(
        "holder-st",
        &c.id,
        Management::DirectPayment,
        &acct.id,
        &payroll.id,
    );
    let mut f = Follow {
        w: &w,
        budget,
        rows: Vec::new(),
    };
    f.ok(&c, open, "budget_opened", "").await;
    assert_eq!(f.rows[0].allocated, "0.00");
    f.ok(&c, standing_plan(), "care_plan_approved", "").await;
    f.ok(
        &c,
        kinds::allocate("1000.00", Basis::NeedsBased),
        "allocation",
        "1000.00",
    )
    .await;
    f.ok(&c, kinds::disburse("600.10"), "disbursement", "600.10")
        .await;
    let pa = PayeeKind::PersonalAssistant;
    let agreed = w.agree(budget, pa, "pa-1", "personal_assistant").await;
    f.check(agreed, "service_agreement_approved", &c, "").await;
    f.ok(
        &payroll,
        pay("364.05", pa, "pa-1", "personal_assistant"),
        "payment",
        "-364.05",
    )
    .await;
    f.refused(
        &acct,
        kinds::buy("236.06", "equipment", "shop", "too much"),
        Code::FailedPrecondition,
        "purchase",
        "-236.06",
    )
    .await;
    f.ok(
        &acct,
        kinds::buy("236.05", "equipment", "shop", "all of it"),
        "purchase",
        "-236.05",
    )
    .await;
    assert_eq!(f.rows.last().unwrap().held, "0.00");
    f.refused(
        &tp,
        kinds::disburse("1.00"),
        Code::PermissionDenied,
        "disbursement",
        "1.00",
    )
    .await;
    // Another commissioner opening the same id: ALREADY_EXISTS, recorded.
    let again = kinds::open("holder-x", &c2.id, Management::Notional, "", "");
    f.refused(&c2, again, Code::AlreadyExists, "budget_opened", "")
        .await;
    f.ok(
        &c,
        kinds::review("-399.90", "review"),
        "review_adjustment",
        "-399.90",
    )
    .await;
    f.ok(
        &c,
        kinds::review("0.01", "review"),
        "review_adjustment",
        "0.01",
    )
    .await;
    f.ok(&c, kinds::stop("ended"), "budget_stopped", "").await;
    f.refused(
        &c,
        kinds::disburse("0.01"),
        Code::FailedPrecondition,
        "disbursement",
        "0.01",
    )
    .await;

    // The last row's figures are the balance's; every entry of the log that
    // names the budget (and is not about a budget that did not exist) is a
    // row, at its sequence and recorded time.
    let b = w.balance(budget).await;
    let last = f.rows.last().unwrap();
    assert_eq!(figures_of_row(last), figures_of_balance(&b));
    assert_eq!(
        (
            b.allocated.as_str(),
            b.paid_in.as_str(),
            b.spent.as_str(),
            b.held.as_str()
        ),
        ("600.11", "600.10", "600.10", "0.00")
    );
    let log = w.log().await;
    let on_budget: Vec<&pb::LogEntry> = log
        .iter()
        .filter(|e| {
            let ev = <pb::Event as prost::Message>::decode(
                e.signed_event.as_ref().unwrap().event.as_slice(),
            )
            .unwrap();
            ev.budget_id == budget
        })
        .collect();
    assert_eq!(on_budget.len(), f.rows.len());
    for (e, r) in on_budget.iter().zip(&f.rows) {
        assert_eq!(e.sequence, r.sequence);
        assert_eq!(e.recorded_at, r.recorded_at);
        assert_eq!(e.signed_event.as_ref().unwrap().signer_id, r.signer_id);
        assert_eq!(e.refusal.is_some(), r.refused);
    }
    // A refusal on a budget that does not exist belongs to no statement.
    w.refused(&c, "st-none", kinds::disburse("1.00"), Code::NotFound)
        .await;
    assert_status(
        statement_all(&w.client, &w.auditor, "st-none", 10).await,
        Code::NotFound,
    );
}

/// Paging covers every row exactly once, whatever the page size; tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_pages_cover_every_row_once() {
    let w = World::new().await;
    let (tp, c) = (w.third_party.clone(), w.commissioner.clone());
    let budget = "pg-tp";
    w.open_third_party(budget).await;
    w.fund(budget, "500.00", Some("500.00")).await;
    // Interleave another budget's entries so sequences have gaps.
    w.open_third_party("pg-other").await;
    w.agree(budget, PayeeKind::Provider, "prov", "respite")
        .await;
    for i in 0..20 {
        let payment = pay("1.01", PayeeKind::Provider, "prov", "respite");
        w.ok(&tp, budget, payment).await;
        if i % 3 == 0 {
            w.fund("pg-other", "1.00", None).await;
        }
        if i % 7 == 0 {
            w.refused(
                &tp,
                budget,
                kinds::buy("999.00", "equipment", "shop", "x"),
                Code::FailedPrecondition,
            )
            .await;
        }
    }
    w.ok(&c, budget, kinds::stop("done")).await;
    let cl = &w.client;
    let auditor = w.auditor.clone();
    let whole = statement_all(cl, &auditor, budget, 1000).await.unwrap();
    // Opened, its plan, allocated, disbursed, the agreement; 20 payments,
    // 3 refusals and the stop.
    let n = 5 + 20 + 3 + 1;
    assert_eq!(whole.len(), n);
    assert!(whole.windows(2).all(|p| p[0].sequence < p[1].sequence));
    let n = n as u32;
    for size in [0, 1, 2, 5, 7, n - 1, n, n + 1, 5000] {
        let paged = statement_all(cl, &auditor, budget, size).await.unwrap();
        assert_eq!(paged, whole, "page size {size}");
    }
    // Page sizes: 0 means 100 (all n here); exact pages end with an empty token.
    let p = statement_page(cl, &auditor, budget, 9, "").await.unwrap();
    assert_eq!(p.rows.len(), 9);
    assert_eq!(p.next_page_token, format!("after:{}", whole[8].sequence));
    let p = statement_page(cl, &auditor, budget, n, "").await.unwrap();
    assert_eq!(p.rows.len(), n as usize);
    assert!(p.next_page_token.is_empty());
    let end = format!("after:{}", whole.last().unwrap().sequence);
    let p = statement_page(cl, &auditor, budget, 10, &end)
        .await
        .unwrap();
    assert!(p.rows.is_empty() && p.next_page_token.is_empty());
    for bad in [
        "x",
        "after:",
        "after:-1",
        "after:1x",
        "after:99999999999999999999999",
        "before:3",
    ] {
        assert_status(
            statement_page(cl, &auditor, budget, 10, bad).await,
            Code::InvalidArgument,
        );
    }
}

/// GetBudgetStatement has GetBalance's read scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_read_scope() {
    let w = World::new().await;
    let (tp, c, c2, acct, payroll, auditor, root) = (
        w.third_party.clone(),
        w.commissioner.clone(),
        w.commissioner2.clone(),
        w.account.clone(),
        w.payroll.clone(),
        w.auditor.clone(),
        w.server.root.clone(),
    );
    w.open_third_party("sc-tp").await;
    w.fund("sc-tp", "10.00", Some("10.00")).await;
    w.open_direct("sc-dp").await;
    let cl = &w.client;
    // Opened, the standing plan, allocated, disbursed.
    for reader in [&c, &tp, &auditor, &root] {
        let rows = statement_all(cl, reader, "sc-tp", 10).await.unwrap();
        assert_eq!(rows.len(), 4, "as {}", reader.id);
    }
    // Opened, the standing plan.
    for reader in [&c, &acct, &payroll, &auditor, &root] {
        assert_eq!(
            statement_all(cl, reader, "sc-dp", 10).await.unwrap().len(),
            2
        );
    }
    // Another commissioner, an unrelated provider.
    for (reader, b) in [
        (&c2, "sc-tp"),
        (&c2, "sc-dp"),
        (&acct, "sc-tp"),
        (&payroll, "sc-tp"),
        (&tp, "sc-dp"),
    ] {
        assert_status(
            statement_page(cl, reader, b, 10, "").await,
            Code::PermissionDenied,
        );
    }
    assert_status(
        statement_page(cl, &c, "sc-none", 10, "").await,
        Code::NotFound,
    );
    assert_status(
        statement_page(cl, &c, "bad id!", 10, "").await,
        Code::InvalidArgument,
    );
    // Authenticated like every read: no metadata, or another method's path.
    let plain = tonic::Request::new(pb::GetBudgetStatementRequest {
        budget_id: "sc-tp".into(),
        page_size: 0,
        page_token: String::new(),
    });
    assert_status(
        cl.clone().get_budget_statement(plain).await,
        Code::Unauthenticated,
    );
    let mut req = tonic::Request::new(pb::GetBudgetStatementRequest {
        budget_id: "sc-tp".into(),
        page_size: 0,
        page_token: String::new(),
    });
    auditor.authorize_at(&mut req, methods::GET_HOLDINGS, phb_client::unix_now());
    assert_status(
        cl.clone().get_budget_statement(req).await,
        Code::Unauthenticated,
    );
}
