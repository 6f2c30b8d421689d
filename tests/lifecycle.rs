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

/// GET on the metrics port, as Prometheus or a probe would.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics port");
    write!(s, "GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line `name{labels} value` in an exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// The metrics port (issue 11): the counters move with appends and
/// refusals, the group commit and fsync histograms fill, the log gauges are
/// the log's, flags raised are counted by code; /livez and /readyz answer;
/// logs are JSON lines when asked and carry a span per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_move_with_the_ledger() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let server = Server::start_with(ServerOptions {
        env: vec![
            ("PHB_LEDGER_METRICS_LISTEN".into(), addr.clone().into()),
            ("PHB_LEDGER_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info,phb_grpc=debug".into()),
        ],
        ..ServerOptions::default()
    });
    let w = World::with_server(server).await;
    assert_eq!(http_get(&addr, "/livez").0, 200);
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    assert_eq!(http_get(&addr, "/nothing").0, 404);
    let (_, before) = http_get(&addr, "/metrics");
    let ok_before = sample(&before, "phb_append_events_total{code=\"OK\"}");

    let b = "metrics-1";
    w.open_direct(b).await;
    w.fund(b, "500.00", Some("500.00")).await;
    w.agree(b, provider(), "prov-m", "respite").await;
    let acct = w.account.clone();
    w.ok(&acct, b, pay("10.00", provider(), "prov-m", "respite"))
        .await;
    // The same invoice on another budget: written and flagged.
    let b2 = "metrics-2";
    w.open_direct(b2).await;
    w.fund(b2, "500.00", Some("500.00")).await;
    w.agree(b2, provider(), "prov-m", "respite").await;
    w.ok(&acct, b2, pay("10.00", provider(), "prov-m", "respite"))
        .await;
    w.refused(
        &acct,
        b,
        pay("9999.00", provider(), "prov-m", "respite"),
        tonic::Code::FailedPrecondition,
    )
    .await;
    let entries = w.log_len().await;

    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        sample(&text, "phb_append_events_total{code=\"OK\"}") >= ok_before + 10.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "phb_append_events_total{code=\"FAILED_PRECONDITION\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "phb_flags_raised_total{code=\"DUPLICATE_PAYMENT\"}"),
        1.0
    );
    assert!(sample(&text, "phb_requests_total{method=\"Append\",code=\"OK\"}") >= 10.0);
    assert!(
        sample(
            &text,
            "phb_request_duration_seconds_count{method=\"Append\"}"
        ) >= 10.0
    );
    assert!(sample(&text, "phb_group_commit_entries_count") >= 10.0);
    assert!(sample(&text, "phb_log_sync_seconds_count") >= 10.0);
    assert_eq!(sample(&text, "phb_log_entries"), entries as f64);
    assert!(sample(&text, "phb_log_bytes") > 1000.0);
    // Statement rows (here more than a dozen) live in the index once it has
    // them; memory holds only those of the last groups.
    assert!(
        sample(&text, "phb_statement_rows_resident") <= 2.0,
        "{text}"
    );
    assert!(sample(&text, "phb_connections") >= 1.0);
    assert_eq!(sample(&text, "phb_writable"), 1.0);

    // Logs: one JSON object per line; calls in an `rpc` span with method,
    // organisation and code.
    let stderr = w.server.stderr();
    let mut saw_call = false;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["fields"]["message"] == "call answered" && v["span"]["method"] == "ReadLog" {
            assert_eq!(v["span"]["org"], w.auditor.id.as_str(), "{line}");
            assert_eq!(v["span"]["code"], "OK", "{line}");
            saw_call = true;
        }
    }
    assert!(saw_call, "an rpc span for ReadLog:\n{stderr}");
}
