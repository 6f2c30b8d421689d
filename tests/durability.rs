//! Durability and concurrency against the real server: idempotent retries,
//! atomic and non-atomic batches, racing spenders, and SIGKILL + restart.

mod common;

use common::*;
use pb::{AllocationBasis as Basis, PayeeKind, Role};
use phb_client::{kinds, Signer};
use phb_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

fn provider() -> PayeeKind {
    PayeeKind::Provider
}
fn pa() -> PayeeKind {
    PayeeKind::PersonalAssistant
}

/// Re-sending the same signed event is safe: duplicate = true, the original
/// sequence and hash, nothing new written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry() {
    let w = World::new().await;
    let (acct, c) = (w.account.clone(), w.commissioner.clone());
    let d = "idem-dp";
    w.open_direct(d).await;
    w.agree(d, provider(), "p-1", "therapy").await;
    w.fund(d, "500.00", Some("500.00")).await;

    let e = w.sign(&acct, d, pay("100.00", provider(), "p-1", "therapy"));
    let first = w.append_signed(e.clone()).await;
    let seq = assert_written(&first);
    let len = w.log_len().await;
    let bal = w.balance(d).await;
    assert_eq!(bal.spent, "100.00");
    for _ in 0..3 {
        let again = w.append_signed(e.clone()).await;
        assert_eq!(result_code(&again), 0, "{again:?}");
        assert!(again.duplicate);
        assert_eq!(again.sequence, seq);
        assert_eq!(again.entry_hash, first.entry_hash);
        assert_eq!(again.event_id, first.event_id);
    }
    assert_eq!(w.log_len().await, len, "retries write nothing");
    assert_eq!(w.balance(d).await, bal, "retries change nothing");

    // A retry alongside a new event in one request.
    let new = w.sign(&acct, d, pay("1.00", provider(), "p-1", "therapy"));
    let rs = w.append_batch(vec![e.clone(), new.clone()], false).await;
    assert!(rs[0].duplicate && rs[0].sequence == seq && result_code(&rs[0]) == 0);
    assert_eq!(assert_written(&rs[1]), len + 1);
    // The same new event twice in one request: written once.
    let twice = w.sign(&acct, d, pay("2.00", provider(), "p-1", "therapy"));
    for atomic in [false, true] {
        let twice = if atomic {
            w.sign(&acct, d, pay("2.00", provider(), "p-1", "therapy"))
        } else {
            twice.clone()
        };
        let rs = w
            .append_batch(vec![twice.clone(), twice.clone()], atomic)
            .await;
        let s = assert_written(&rs[0]);
        assert_eq!(result_code(&rs[1]), 0);
        assert!(rs[1].duplicate, "{:?}", rs[1]);
        assert_eq!(rs[1].sequence, s);
        assert_eq!(rs[1].entry_hash, rs[0].entry_hash);
    }
    assert_eq!(w.balance(d).await.spent, "105.00");

    // A refusal by the rules is final (issue 6, defect 7): a retry gets the
    // original refusal, and the same signed event is never applied later,
    // even once the money is there; a new event (new id) is.
    let big = w.sign(&acct, d, pay("400.00", provider(), "p-1", "therapy"));
    let refused = w.append_signed(big.clone()).await;
    assert_refused(&refused, Code::FailedPrecondition);
    let retried = w.append_signed(big.clone()).await;
    assert_eq!(result_code(&retried), Code::FailedPrecondition as i32);
    assert!(retried.duplicate, "{retried:?}");
    assert_eq!(
        (
            retried.refusal_sequence,
            &retried.entry_hash,
            &retried.error
        ),
        (
            refused.refusal_sequence,
            &refused.entry_hash,
            &refused.error
        ),
        "the original refusal, word for word"
    );
    w.ok(&c, d, kinds::allocate("5.00", Basis::OneOff)).await;
    w.ok(&c, d, kinds::disburse("5.00")).await;
    let late = w.append_signed(big.clone()).await;
    assert_eq!(late, retried, "still the original refusal");
    assert_eq!(w.balance(d).await.held, "400.00");
    w.ok(&acct, d, pay("400.00", provider(), "p-1", "therapy"))
        .await;
    assert_eq!(w.balance(d).await.held, "0.00");

    // Many clients retrying the same event at once: exactly one write.
    let e = w.sign(&c, d, kinds::review("10.00", "uplift"));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = w.server.client().await;
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            client
                .append(pb::AppendRequest {
                    events: vec![e],
                    atomic: false,
                })
                .await
                .unwrap()
                .into_inner()
                .results
                .remove(0)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert!(results.iter().all(|r| result_code(r) == 0), "{results:?}");
    assert_eq!(
        results.iter().filter(|r| !r.duplicate).count(),
        1,
        "{results:?}"
    );
    let s = results[0].sequence;
    assert!(results
        .iter()
        .all(|r| r.sequence == s && r.entry_hash == results[0].entry_hash));
    assert_eq!(w.log_len().await, s);
    assert_eq!(w.balance(d).await.allocated, "515.00");
}

/// An atomic batch that fails half-way applies nothing; the failing event
/// has its own code and every other one ABORTED. Non-atomic batches apply
/// the good events and refuse the bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_atomic_and_not() {
    let w = World::new().await;
    let (c, acct, payroll) = (w.commissioner.clone(), w.account.clone(), w.payroll.clone());
    let d = "batch-dp";
    w.open_direct(d).await;
    w.agree(d, provider(), "p-1", "therapy").await;
    w.agree(d, pa(), "pa-1", "personal_assistant").await;
    // The payments refused for other reasons are to a payee under an
    // agreement too, so that the reason tested is the only one.
    w.agree(d, provider(), "p", "therapy").await;
    w.fund(d, "1000.00", Some("500.00")).await;
    let bal = w.balance(d).await;
    let len = w.log_len().await;

    let good = |amount: &str| w.sign(&acct, d, pay(amount, provider(), "p-1", "therapy"));
    let good_pa =
        |amount: &str| w.sign(&payroll, d, pay(amount, pa(), "pa-1", "personal_assistant"));
    // A payroll run where one payslip would overspend.
    let run = vec![
        good("100.00"),
        good_pa("100.00"),
        good("1000.00"),
        good_pa("50.00"),
    ];
    let rs = w.append_batch(run.clone(), true).await;
    assert_refused(&rs[2], Code::FailedPrecondition);
    for i in [0, 1, 3] {
        assert_refused(&rs[i], Code::Aborted);
        assert_eq!(rs[i].error.as_ref().unwrap().code, 10);
    }
    // A batch refused by the rules is recorded, event by event in request
    // order, so that none of its events can be applied later on its own
    // (issue 6, defect 7); nothing of it is applied.
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.refusal_sequence, len + 1 + i as u64, "{r:?}");
    }
    let mut len = len + 4;
    assert_eq!(w.log_len().await, len, "the batch is recorded as refused");
    assert_eq!(w.balance(d).await, bal, "nothing of the batch is applied");

    // The failure may come from an earlier event of the same batch.
    let rs = w
        .append_batch(vec![good("300.00"), good("300.00")], true)
        .await;
    assert_refused(&rs[0], Code::Aborted);
    assert_refused(&rs[1], Code::FailedPrecondition);
    len += 2;
    // Failures of every kind, anywhere in the batch. Decisions of the rules
    // are recorded; malformed or unauthenticated batches record nothing.
    let mut bad_sig = good("1.00");
    bad_sig.signature[10] ^= 0x40;
    let cases: Vec<(Vec<pb::SignedEvent>, usize, Code)> = vec![
        (
            vec![
                w.sign(&acct, d, pay("0.001", provider(), "p", "therapy")),
                good("1.00"),
            ],
            0,
            Code::InvalidArgument,
        ),
        (
            vec![good("1.00"), good("2.00"), bad_sig],
            2,
            Code::Unauthenticated,
        ),
        (
            vec![
                good("1.00"),
                w.sign(&payroll, d, pay("1.00", provider(), "p", "therapy")),
            ],
            1,
            Code::PermissionDenied,
        ),
        (
            vec![good("1.00"), w.sign(&c, "no-such", kinds::stop("x"))],
            1,
            Code::NotFound,
        ),
        (
            vec![
                good("1.00"),
                w.sign(
                    &c,
                    d,
                    kinds::open("h", &c.id, pb::Management::Notional, "", ""),
                ),
                good("1.00"),
            ],
            1,
            Code::AlreadyExists,
        ),
    ];
    for (events, failing, code) in cases {
        let n = events.len() as u64;
        let rs = w.append_batch(events, true).await;
        for (i, r) in rs.iter().enumerate() {
            assert_refused(r, if i == failing { code } else { Code::Aborted });
        }
        if is_decision(code) {
            for (i, r) in rs.iter().enumerate() {
                assert_eq!(r.refusal_sequence, len + 1 + i as u64, "{code:?}: {r:?}");
            }
            len += n;
        } else {
            assert!(rs.iter().all(|r| r.refusal_sequence == 0), "{rs:?}");
        }
        assert_eq!(w.log_len().await, len, "{code:?}");
    }
    assert_eq!(w.balance(d).await, bal);

    // The aborted events of the payroll run were recorded: sent again on
    // their own, even though they would fit now, each gets its original
    // refusal back and nothing is applied.
    let first_run = len;
    let retry = vec![run[0].clone(), run[1].clone(), run[3].clone()];
    let rs = w.append_batch(retry, true).await;
    for r in &rs {
        assert_eq!(result_code(r), Code::Aborted as i32, "{r:?}");
        assert!(
            r.duplicate && r.sequence == 0 && r.refusal_sequence > 0,
            "{r:?}"
        );
    }
    let rs = w.append_batch(vec![run[0].clone()], false).await;
    assert!(
        rs[0].duplicate && result_code(&rs[0]) == Code::Aborted as i32,
        "{rs:?}"
    );
    assert_eq!(w.log_len().await, first_run, "retries record nothing new");
    assert_eq!(w.balance(d).await, bal);
    // New events (new ids) for the same payments are written.
    let again = vec![good("100.00"), good_pa("100.00"), good_pa("50.00")];
    let rs = w.append_batch(again, true).await;
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(assert_written(r), len + 1 + i as u64);
    }
    let bal = w.balance(d).await;
    assert_eq!(
        (bal.spent.as_str(), bal.held.as_str()),
        ("250.00", "250.00")
    );

    // Later events in an atomic batch see the earlier ones: open, fund and
    // spend a new budget in one request.
    let n = "batch-new";
    let k = kinds::open("h-new", &c.id, pb::Management::DirectPayment, &acct.id, "");
    let setup = vec![
        w.sign(&c, n, k.clone()),
        w.sign(&c, n, standing_plan()),
        w.sign(&c, n, kinds::allocate("80.00", Basis::OneOff)),
        w.sign(&c, n, kinds::disburse("80.00")),
        w.sign(&acct, n, kinds::buy("80.00", "equipment", "s", "x")),
        w.sign(&acct, n, kinds::buy("0.01", "equipment", "s", "x")),
    ];
    let rs = w.append_batch(setup.clone(), true).await;
    assert_refused(&rs[5], Code::FailedPrecondition);
    assert_status(get_balance(&w.client, &w.auditor, n).await, Code::NotFound);
    // The refused batch is final: its first five events, sent again, get
    // their recorded refusals; the same request signed anew is written.
    let rs = w.append_batch(setup[..5].to_vec(), true).await;
    assert!(
        rs.iter()
            .all(|r| r.duplicate && result_code(r) == Code::Aborted as i32),
        "{rs:?}"
    );
    let setup: Vec<_> = setup[..5]
        .iter()
        .zip([&c, &c, &c, &c, &acct])
        .map(|(e, signer)| {
            let mut ev = <pb::Event as prost::Message>::decode(e.event.as_slice()).unwrap();
            ev.event_id = w.new_id("again");
            signer.sign(&ev)
        })
        .collect();
    let rs = w.append_batch(setup, true).await;
    rs.iter().for_each(|r| {
        assert_written(r);
    });
    let bal_n = w.balance(n).await;
    assert_eq!(
        (bal_n.spent.as_str(), bal_n.held.as_str()),
        ("80.00", "0.00")
    );

    // Non-atomic: the good ones are written, the bad ones refused.
    let len = w.log_len().await;
    let nobody = Signer::generate("nobody");
    let mixed = vec![
        good("10.00"),
        good("1000.00"),
        good_pa("20.00"),
        w.sign(&acct, d, pay("-5", provider(), "p", "therapy")),
        w.sign(&nobody, d, pay("1.00", provider(), "p", "therapy")),
        w.sign(&payroll, d, pay("1.00", provider(), "p", "therapy")),
        good("30.00"),
    ];
    let rs = w.append_batch(mixed, false).await;
    let expect = [
        None,
        Some(Code::FailedPrecondition),
        None,
        Some(Code::InvalidArgument),
        Some(Code::Unauthenticated),
        Some(Code::PermissionDenied),
        None,
    ];
    let mut next = len + 1;
    for (r, e) in rs.iter().zip(expect) {
        match e {
            None => {
                assert_eq!(assert_written(r), next);
                next += 1;
            }
            Some(code) => {
                assert_refused(r, code);
                if is_decision(code) {
                    // Recorded in order with the written ones.
                    assert_eq!(r.refusal_sequence, next, "{r:?}");
                    next += 1;
                }
            }
        }
    }
    assert_eq!(w.log_len().await, len + 5, "3 written, 2 refusals recorded");
    assert_eq!(w.balance(d).await.spent, "310.00");

    // Request-level limits: an empty request and more than 1000 events fail the RPC.
    let mut cl = w.client.clone();
    let empty = cl
        .append(pb::AppendRequest {
            events: vec![],
            atomic: false,
        })
        .await;
    assert_status(empty, Code::InvalidArgument);
    let t = "batch-thousand";
    w.open_third_party(t).await;
    w.agree(t, provider(), "p", "therapy").await;
    w.fund(t, "10.00", Some("10.00")).await;
    let tp = w.third_party.clone();
    let thousand: Vec<_> = (0..1001)
        .map(|_| w.sign(&tp, t, pay("0.01", provider(), "p", "therapy")))
        .collect();
    let len = w.log_len().await;
    for atomic in [false, true] {
        let too_many = cl
            .append(pb::AppendRequest {
                events: thousand.clone(),
                atomic,
            })
            .await;
        assert_status(too_many, Code::InvalidArgument);
    }
    assert_eq!(w.log_len().await, len);
    // Exactly 1000 is allowed: £10.00 spent a penny at a time, all or nothing.
    let rs = w.append_batch(thousand[..1000].to_vec(), true).await;
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(assert_written(r), len + 1 + i as u64);
    }
    let bal = w.balance(t).await;
    assert_eq!((bal.spent.as_str(), bal.held.as_str()), ("10.00", "0.00"));
    assert_refused(
        &w.append_signed(thousand[1000].clone()).await,
        Code::FailedPrecondition,
    );
    // Over a thousand entries: the log streams in several chunks, intact,
    // from the start and from any point.
    let log = w.log().await;
    assert!(log.len() > 1000);
    audit_log(&log, &w.server.root.public_key());
    for from in [255u64, 256, 257, 700] {
        let part = read_log(&w.client, &w.auditor, from).await;
        assert_eq!(part.as_slice(), &log[(from - 1) as usize..], "from {from}");
    }
}

/// Later events of a request see organisations registered and keys rotated
/// earlier in it; a restart replays them to the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_rotations_within_a_batch() {
    let mut w = World::new().await;
    let (c, root) = (w.commissioner.clone(), w.server.root.clone());
    let k1 = Signer::generate("late-tp");
    let b = "late-b";
    let setup = vec![
        w.sign(
            &root,
            "",
            kinds::register(&k1.id, &[Role::ThirdParty], &k1.public_key().to_bytes()),
        ),
        w.sign(
            &c,
            b,
            kinds::open("h-late", &c.id, pb::Management::ThirdParty, &k1.id, ""),
        ),
        w.sign(&c, b, standing_plan()),
        w.sign(&c, b, kinds::allocate("100.00", Basis::OneOff)),
        w.sign(&c, b, kinds::disburse("100.00")),
        w.sign(&k1, b, kinds::buy("40.00", "equipment", "s", "x")),
    ];
    for r in w.append_batch(setup, true).await {
        assert_written(&r);
    }
    // Rotate and use the new key in the same atomic batch.
    let k2 = Signer::generate(k1.id.clone());
    let rs = w
        .append_batch(
            vec![
                w.sign(
                    &root,
                    "",
                    kinds::rotate(&k1.id, &k2.public_key().to_bytes()),
                ),
                w.sign(&k2, b, kinds::buy("10.00", "equipment", "s", "x")),
            ],
            true,
        )
        .await;
    rs.iter().for_each(|r| {
        assert_written(r);
    });
    // The key that was current when the request arrived stops working at
    // the rotation inside the request; the new one starts there.
    let k3 = Signer::generate(k1.id.clone());
    let rs = w
        .append_batch(
            vec![
                w.sign(&k2, b, kinds::buy("1.00", "equipment", "s", "x")),
                w.sign(
                    &root,
                    "",
                    kinds::rotate(&k1.id, &k3.public_key().to_bytes()),
                ),
                w.sign(&k2, b, kinds::buy("10.00", "equipment", "s", "x")),
                w.sign(&k3, b, kinds::buy("5.00", "equipment", "s", "x")),
            ],
            false,
        )
        .await;
    assert_written(&rs[0]);
    assert_written(&rs[1]);
    assert_refused(&rs[2], Code::Unauthenticated);
    assert_written(&rs[3]);
    // An atomic batch that rotates and then fails leaves the old key in place.
    let k4 = Signer::generate(k1.id.clone());
    let rs = w
        .append_batch(
            vec![
                w.sign(
                    &root,
                    "",
                    kinds::rotate(&k1.id, &k4.public_key().to_bytes()),
                ),
                w.sign(&k4, b, kinds::buy("1000.00", "equipment", "s", "x")),
            ],
            true,
        )
        .await;
    assert_refused(&rs[0], Code::Aborted);
    assert_refused(&rs[1], Code::FailedPrecondition);
    w.refused(
        &k4,
        b,
        kinds::buy("1.00", "equipment", "s", "x"),
        Code::Unauthenticated,
    )
    .await;
    w.ok(&k3, b, kinds::buy("1.00", "equipment", "s", "x"))
        .await;
    let bal = w.balance(b).await;
    assert_eq!((bal.spent.as_str(), bal.held.as_str()), ("57.00", "43.00"));

    let before = snapshot(&w).await;
    audit_log(&before.0, &root.public_key());
    w.server.restart();
    w.reconnect().await;
    assert_eq!(snapshot(&w).await, before);
    w.refused(
        &k2,
        b,
        kinds::buy("1.00", "equipment", "s", "x"),
        Code::Unauthenticated,
    )
    .await;
    w.ok(&k3, b, kinds::buy("1.00", "equipment", "s", "x"))
        .await;
}

/// 8 tasks x 20 payments race on a budget that can afford only some of
/// them: never overspent, spent == sum of acknowledged payments, and exactly
/// as many acknowledged as the money allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_spenders_never_overspend() {
    let w = Arc::new(World::new().await);
    let d = "race-dp";
    w.open_direct(d).await;
    w.fund(d, "1000.00", Some("1000.00")).await;
    const TASKS: usize = 8;
    const EACH: usize = 20;
    // Every payee is paid under an agreement (approved before the race).
    for t in 0..TASKS {
        if t % 2 == 0 {
            w.agree(d, provider(), &format!("p-{t}"), "therapy").await;
        } else {
            for i in 0..EACH {
                let payee = format!("pa-{t}-{i}");
                w.agree(d, pa(), &payee, "personal_assistant").await;
            }
        }
    }
    let amount = 750; // £7.50: 160 x 7.50 = 1200.00 asked, 133 affordable

    // A watcher reads the balance throughout the race.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (w, stop) = (w.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            let mut last_spent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let b = w.balance_as(&w.payroll, d).await;
                let (paid_in, spent, held) = (pence(&b.paid_in), pence(&b.spent), pence(&b.held));
                assert!(held >= 0, "held went negative: {b:?}");
                assert!(spent <= paid_in, "overspent: {b:?}");
                assert_eq!(held, paid_in - spent, "{b:?}");
                assert!(spent >= last_spent, "spent went backwards: {b:?}");
                last_spent = spent;
                reads += 1;
            }
            reads
        })
    };

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let w = w.clone();
        let client = w.server.client().await; // a connection of its own
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut acked = Vec::new();
            let mut refused = 0;
            for i in 0..EACH {
                // Half the tasks are the account provider paying invoices,
                // half the payroll provider paying wages.
                let e = if t % 2 == 0 {
                    w.sign(
                        &w.account,
                        d,
                        pay(&pounds(amount), provider(), &format!("p-{t}"), "therapy"),
                    )
                } else {
                    w.sign(
                        &w.payroll,
                        d,
                        pay(
                            &pounds(amount),
                            pa(),
                            &format!("pa-{t}-{i}"),
                            "personal_assistant",
                        ),
                    )
                };
                let r = client
                    .append(pb::AppendRequest {
                        events: vec![e],
                        atomic: false,
                    })
                    .await
                    .expect("Append")
                    .into_inner()
                    .results
                    .remove(0);
                match result_code(&r) {
                    0 => {
                        assert!(!r.duplicate);
                        acked.push(r);
                    }
                    9 => refused += 1,
                    other => panic!("unexpected code {other}: {r:?}"),
                }
            }
            (acked, refused)
        }));
    }
    let mut acked = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (a, r) = t.await.unwrap();
        acked.extend(a);
        refused += r;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = watcher.await.unwrap();
    assert!(reads > 0);

    let affordable = 100_000 / amount as usize; // 133
    assert_eq!(
        acked.len(),
        affordable,
        "acknowledged exactly what the money allowed"
    );
    assert_eq!(acked.len() + refused, TASKS * EACH);
    let b = w.balance(d).await;
    assert_eq!(
        pence(&b.spent),
        acked.len() as i64 * amount,
        "spent == sum of acknowledged"
    );
    assert_eq!(b.spent, "997.50");
    assert_eq!(b.held, "2.50");
    assert_eq!(b.available, "2.50");
    // Every acknowledged payment is in the log at its own sequence.
    let log = w.log().await;
    let events = audit_log(&log, &w.server.root.public_key());
    let mut seqs: Vec<u64> = acked.iter().map(|r| r.sequence).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), acked.len(), "distinct sequences");
    for r in &acked {
        assert_eq!(log[(r.sequence - 1) as usize].hash, r.entry_hash);
        assert_eq!(events[(r.sequence - 1) as usize].event_id, r.event_id);
    }
    assert_eq!(replay_figures(&events)[d].2, pence(&b.spent));
    assert_eq!(b.last_sequence, *seqs.last().unwrap());
}

/// Racing spenders with different amounts: spent is the sum of what was
/// acknowledged, and every refused payment was more than what was left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_amounts_and_batches() {
    let w = Arc::new(World::new().await);
    let d = "race-mixed";
    w.open_third_party(d).await;
    w.fund(d, "2000.00", Some("1234.56")).await;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let w = w.clone();
        let client = w.server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut acked = 0i64;
            let mut refused = Vec::new();
            let mut seed = t * 7919 + 17;
            for _ in 0..10 {
                // Non-atomic batches of three: each event stands alone.
                let mut amounts = Vec::new();
                let events = (0..3)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let p = 1 + ((seed >> 33) % 6000) as i64;
                        amounts.push(p);
                        w.sign(
                            &w.third_party,
                            d,
                            kinds::buy(&pounds(p), "equipment", "s", "x"),
                        )
                    })
                    .collect();
                let rs = client
                    .append(pb::AppendRequest {
                        events,
                        atomic: false,
                    })
                    .await
                    .expect("Append")
                    .into_inner()
                    .results;
                for (r, p) in rs.iter().zip(amounts) {
                    match result_code(r) {
                        0 => acked += p,
                        9 => refused.push(p),
                        other => panic!("unexpected code {other}: {r:?}"),
                    }
                }
            }
            (acked, refused)
        }));
    }
    let mut acked = 0;
    let mut refused = Vec::new();
    for t in tasks {
        let (a, r) = t.await.unwrap();
        acked += a;
        refused.extend(r);
    }
    let b = w.balance(d).await;
    assert_eq!(pence(&b.spent), acked);
    assert!(pence(&b.held) >= 0);
    assert_eq!(pence(&b.held), 123456 - acked);
    // held only falls during the race, so each refusal (amount > held then)
    // is also more than what is held at the end.
    assert!(!refused.is_empty(), "the race should exhaust the budget");
    let least_refused = *refused.iter().min().unwrap();
    assert!(
        least_refused > pence(&b.held),
        "refused {least_refused} with {} held",
        b.held
    );
    let events = audit_log(&w.log().await, &w.server.root.public_key());
    assert_eq!(replay_figures(&events)[d].2, acked);
}

/// Builds a varied history: every kind, a key rotation, a stopped budget.
/// Returns the commissioner's new signer and a sample of signed events.
async fn build_history(w: &World) -> (Signer, Vec<pb::SignedEvent>) {
    let (c, acct, payroll, tp, root) = (
        w.commissioner.clone(),
        w.account.clone(),
        w.payroll.clone(),
        w.third_party.clone(),
        w.server.root.clone(),
    );
    let mut sample = Vec::new();
    w.open_direct("h-dp").await;
    w.agree("h-dp", provider(), "cmht", "clinical_service")
        .await;
    w.agree("h-dp", pa(), "pa-1", "personal_assistant").await;
    w.fund("h-dp", "4800.00", Some("4000.00")).await;
    let e = w.sign(
        &acct,
        "h-dp",
        pay("808.16", provider(), "cmht", "clinical_service"),
    );
    assert_written(&w.append_signed(e.clone()).await);
    sample.push(e);
    w.ok(
        &payroll,
        "h-dp",
        pay("2184.00", pa(), "pa-1", "personal_assistant"),
    )
    .await;
    w.open_third_party("h-tp").await;
    w.fund("h-tp", "6061.20", Some("5000.00")).await;
    w.ok(&c, "h-tp", kinds::review("-587.20", "cluster cost"))
        .await;
    w.ok(
        &tp,
        "h-tp",
        kinds::buy("500.00", "respite", "r-1", "respite break"),
    )
    .await;
    w.open_notional("h-n").await;
    w.agree("h-n", provider(), "cmht", "clinical_service").await;
    w.fund("h-n", "3855.00", None).await;
    w.ok(
        &c,
        "h-n",
        pay("202.04", provider(), "cmht", "clinical_service"),
    )
    .await;
    w.ok(&c, "h-n", kinds::stop("holder moved away")).await;
    // Rotate the commissioner's key; keep working with the new one.
    let new = Signer::generate(c.id.clone());
    w.ok(
        &root,
        "",
        kinds::rotate(&c.id, &new.public_key().to_bytes()),
    )
    .await;
    let e = w.sign(&new, "h-dp", kinds::review("100.00", "uplift"));
    assert_written(&w.append_signed(e.clone()).await);
    sample.push(e);
    let extra = Signer::generate("late-org");
    w.ok(
        &root,
        "",
        kinds::register(&extra.id, &[Role::Auditor], &extra.public_key().to_bytes()),
    )
    .await;
    // A commissioner-2 budget too, and a batch.
    let c2 = w.commissioner2.clone();
    let k = kinds::open(
        "h-c2",
        &c2.id,
        pb::Management::DirectPayment,
        &acct.id,
        &payroll.id,
    );
    w.ok(&c2, "h-c2", k).await;
    w.ok(&c2, "h-c2", standing_plan()).await;
    w.ok(
        &c2,
        "h-c2",
        harness_agreement(pa(), "pa-9", "personal_assistant"),
    )
    .await;
    let batch = vec![
        w.sign(&c2, "h-c2", kinds::allocate("1820.00", Basis::ClusterCost)),
        w.sign(&c2, "h-c2", kinds::disburse("1820.00")),
        w.sign(
            &payroll,
            "h-c2",
            pay("600.00", pa(), "pa-9", "personal_assistant"),
        ),
    ];
    sample.extend(batch.clone());
    for r in w.append_batch(batch, true).await {
        assert_written(&r);
    }
    (new, sample)
}

/// The agreement `World::agree` approves, for a budget of another
/// commissioner to sign: `pay` pays under it.
fn harness_agreement(payee_kind: PayeeKind, payee_ref: &str, category: &str) -> phb_client::Kind {
    let mut k = kinds::agreement(
        &agreement_for(payee_ref, category),
        payee_ref,
        category,
        "1.00",
        0,
    );
    if let phb_client::Kind::ServiceAgreementApproved(a) = &mut k {
        a.payee_kind = payee_kind as i32;
        if payee_kind == PayeeKind::Provider {
            a.payee_sector = pb::Sector::Independent as i32;
            a.unit = pb::Unit::Item as i32;
        }
    }
    k
}

/// A snapshot of everything a client can observe.
async fn snapshot(w: &World) -> (Vec<pb::LogEntry>, Vec<pb::Balance>) {
    let log = w.log().await;
    let balances = w.all_balances().await;
    (log, balances)
}

/// SIGKILL and restart on the same data directory: identical balances,
/// identical chain, idempotency and rotated keys remembered, and the chain
/// continues from the same head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_yields_identical_state() {
    let mut w = World::new().await;
    let (new_c, sample) = build_history(&w).await;
    let old_c = w.commissioner.clone();
    let (log, balances) = snapshot(&w).await;
    audit_log(&log, &w.server.root.public_key());
    assert_eq!(balances.len(), 4);

    w.server.kill();
    assert!(!w.server.is_running());
    w.server.restart();
    w.reconnect().await;
    let (log2, balances2) = snapshot(&w).await;
    assert_eq!(log2, log, "identical chain after restart");
    assert_eq!(balances2, balances, "identical balances after restart");
    for b in &balances {
        assert_eq!(&w.balance(&b.budget_id).await, b);
    }

    // Idempotency survives the restart: retries are duplicates at the
    // original sequence; reused ids with other content are refused.
    for e in &sample {
        let r = w.append_signed(e.clone()).await;
        assert_eq!(result_code(&r), 0, "{r:?}");
        assert!(r.duplicate, "{r:?}");
        let entry = log
            .iter()
            .find(|x| x.signed_event.as_ref() == Some(e))
            .expect("sample in log");
        assert_eq!(r.sequence, entry.sequence);
        assert_eq!(r.entry_hash, entry.hash);
    }
    let by_payroll = sample
        .iter()
        .find(|e| e.signer_id == w.payroll.id)
        .expect("the sample has an event of the payroll provider");
    let mut reused = <pb::Event as prost::Message>::decode(by_payroll.event.as_slice()).unwrap();
    reused.kind = Some(pay("1.00", provider(), "cmht", "clinical_service"));
    assert_refused(
        &w.append_signed(w.payroll.sign(&reused)).await,
        Code::AlreadyExists,
    );
    // The rotation is remembered: old key refused, new key accepted.
    w.refused(
        &old_c,
        "h-dp",
        kinds::allocate("1.00", Basis::OneOff),
        Code::Unauthenticated,
    )
    .await;
    assert_status(
        get_balance(&w.client, &old_c, "h-dp").await,
        Code::Unauthenticated,
    );
    // The stop is remembered.
    w.refused(
        &new_c,
        "h-n",
        kinds::allocate("1.00", Basis::OneOff),
        Code::FailedPrecondition,
    )
    .await;
    // Retries wrote nothing; the refusal by the rules is recorded.
    let log_now = w.log().await;
    assert_eq!(log_now[..log.len()], log[..], "nothing rewritten");
    assert_eq!(log_now.len(), log.len() + 1, "one recorded refusal");
    assert!(log_now[log.len()].refusal.is_some());
    let log = log_now;

    // The chain continues from the same head.
    let r = w
        .append(&new_c, "h-dp", kinds::allocate("1.00", Basis::OneOff))
        .await;
    assert_eq!(assert_written(&r), log.len() as u64 + 1);
    let log3 = w.log().await;
    assert_eq!(log3[..log.len()], log[..]);
    assert_eq!(log3.last().unwrap().prev_hash, log.last().unwrap().hash);
    audit_log(&log3, &w.server.root.public_key());

    // And once more, with the index thrown away: it is rebuilt from the log.
    let (log, balances) = snapshot(&w).await;
    w.server.kill();
    let index = w.server.data_dir().join("index");
    assert!(
        index.is_dir(),
        "expected the sled index at {}",
        index.display()
    );
    std::fs::remove_dir_all(&index).unwrap();
    w.server.restart();
    w.reconnect().await;
    assert_eq!(snapshot(&w).await, (log.clone(), balances));
    for e in &sample {
        let r = w.append_signed(e.clone()).await;
        assert!(
            r.duplicate && result_code(&r) == 0,
            "duplicate detection after re-index: {r:?}"
        );
    }
    assert_eq!(w.log().await, log);
}

/// A torn, unacknowledged tail (a record cut short by a crash) is cut off on
/// restart; everything acknowledged is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_recovered() {
    let mut w = World::new().await;
    build_history(&w).await;
    let before = snapshot(&w).await;
    w.server.kill();
    let path = w.server.data_dir().join("log").join("ledger.log");
    assert!(path.is_file(), "expected the log at {}", path.display());
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        // A frame declaring a 500-byte payload, of which only 20 bytes arrived.
        f.write_all(&500u32.to_be_bytes()).unwrap();
        f.write_all(&[0xab; 24]).unwrap();
        f.sync_all().unwrap();
    }
    w.server.restart();
    w.reconnect().await;
    assert_eq!(snapshot(&w).await, before);
    let r = w
        .append(
            &w.payroll.clone(),
            "h-c2",
            pay("1.00", pa(), "pa-9", "personal_assistant"),
        )
        .await;
    assert_eq!(assert_written(&r), before.0.len() as u64 + 1);
    audit_log(&w.log().await, &w.server.root.public_key());
    assert!(w.server.stderr().contains("torn"), "the recovery is logged");
}

/// SIGKILL while clients are writing: every acknowledged event survives at
/// its sequence with its hash; retrying the unanswered ones is safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_under_load_keeps_every_acknowledged_event() {
    let w = World::new().await;
    let d = "crash-dp";
    w.open_direct(d).await;
    w.fund(d, "100000.00", Some("100000.00")).await;
    // Each task pays its own payee, under an agreement.
    for t in 0..6 {
        if t % 2 == 0 {
            w.agree(d, provider(), &format!("p-{t}"), "therapy").await;
        } else {
            w.agree(d, pa(), &format!("pa-{t}"), "personal_assistant")
                .await;
        }
    }
    let w = Arc::new(w);

    let mut tasks = Vec::new();
    for t in 0..6 {
        let w = w.clone();
        let client = w.server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut acked = Vec::new();
            let mut unanswered = Vec::new();
            for _ in 0..10_000 {
                let e = if t % 2 == 0 {
                    w.sign(
                        &w.account,
                        d,
                        pay("1.00", provider(), &format!("p-{t}"), "therapy"),
                    )
                } else {
                    w.sign(
                        &w.payroll,
                        d,
                        pay("2.00", pa(), &format!("pa-{t}"), "personal_assistant"),
                    )
                };
                let call = client.append(pb::AppendRequest {
                    events: vec![e.clone()],
                    atomic: false,
                });
                match tokio::time::timeout(Duration::from_secs(10), call).await {
                    Ok(Ok(resp)) => {
                        let r = resp.into_inner().results.remove(0);
                        assert_written(&r);
                        acked.push((r, e));
                    }
                    _ => {
                        unanswered.push(e);
                        break;
                    }
                }
            }
            (acked, unanswered)
        }));
    }
    // Let them write for a while, then pull the plug.
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = w.log_len().await;
        if n >= 150 || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    w.server.kill();
    let mut acked = Vec::new();
    let mut unanswered = Vec::new();
    for t in tasks {
        let (a, u) = t.await.unwrap();
        acked.extend(a);
        unanswered.extend(u);
    }
    let mut w = Arc::try_unwrap(w)
        .ok()
        .expect("tasks have let go of the world");
    eprintln!(
        "killed after {} acknowledged, {} unanswered",
        acked.len(),
        unanswered.len()
    );
    assert!(
        acked.len() >= 20,
        "only {} acknowledged before the kill",
        acked.len()
    );

    w.server.restart();
    w.reconnect().await;
    let log = w.log().await;
    let events = audit_log(&log, &w.server.root.public_key());
    for (r, e) in &acked {
        let entry = log
            .get((r.sequence - 1) as usize)
            .unwrap_or_else(|| panic!("acknowledged sequence {} lost", r.sequence));
        assert_eq!(
            entry.hash, r.entry_hash,
            "acknowledged entry {} changed",
            r.sequence
        );
        assert_eq!(entry.signed_event.as_ref(), Some(e));
    }
    // The figures are those of the log.
    let figures = replay_figures(&events);
    let b = w.balance(d).await;
    assert_eq!(pence(&b.spent), figures[d].2);
    let acked_spent: i64 = acked
        .iter()
        .map(|(_, e)| {
            match <pb::Event as prost::Message>::decode(e.event.as_slice())
                .unwrap()
                .kind
            {
                Some(phb_client::Kind::Payment(p)) => pence_in(&p.amount),
                _ => 0,
            }
        })
        .sum();
    assert!(pence(&b.spent) >= acked_spent);
    // Retrying what was never answered is safe: each is written exactly once.
    let mut expected_spent = pence(&b.spent);
    for e in unanswered {
        let r = w.append_signed(e.clone()).await;
        assert_eq!(result_code(&r), 0, "{r:?}");
        if !r.duplicate {
            expected_spent += match <pb::Event as prost::Message>::decode(e.event.as_slice())
                .unwrap()
                .kind
            {
                Some(phb_client::Kind::Payment(p)) => pence_in(&p.amount),
                _ => 0,
            };
        }
    }
    assert_eq!(pence(&w.balance(d).await.spent), expected_spent);
    let events = audit_log(&w.log().await, &w.server.root.public_key());
    assert_eq!(replay_figures(&events)[d].2, expected_spent);
    let by_id: HashMap<_, _> = events.iter().map(|e| (e.event_id.clone(), ())).collect();
    assert_eq!(by_id.len(), events.len(), "no event id written twice");
}

/// SIGTERM stops the server promptly and cleanly, even with a follow
/// stream open, and a restart finds the same ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly() {
    let mut w = World::new().await;
    build_history(&w).await;
    let before = snapshot(&w).await;
    // An idle client connection and an open follow stream.
    let req = w.auditor.request(
        phb_client::methods::READ_LOG,
        pb::ReadLogRequest {
            from_sequence: u64::MAX,
            follow: true,
        },
    );
    let _follow = w.client.clone().read_log(req).await.unwrap().into_inner();
    let status = w.server.terminate(Duration::from_secs(10));
    let status = status.unwrap_or_else(|| {
        panic!(
            "phb-ledger did not exit within 10 s of SIGTERM with a follow stream open; stderr:\n{}",
            w.server.stderr()
        )
    });
    assert!(status.success(), "exit status {status:?}");
    w.server.start_again();
    w.reconnect().await;
    assert_eq!(snapshot(&w).await, before);
}

/// `phb-ledger backup` under write load (issue 11): taken while writers
/// keep appending, the copy verifies, restores into a new directory, and a
/// server started on it holds exactly the live log's first entries up to
/// the recovery point, with balances an independent replay of them gives;
/// it then takes new writes. A backup or restore never writes over a
/// directory that holds anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_write_load_restores_and_verifies() {
    const BIN: &str = env!("CARGO_BIN_EXE_phb-ledger");
    let w = Arc::new(World::new().await);
    let b = "backup-1";
    w.open_direct(b).await;
    w.fund(b, "100000.00", Some("100000.00")).await;
    w.agree(b, provider(), "p-b", "respite").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..4 {
        let (w, stop) = (w.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let acct = w.account.clone();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let amount = format!("1.{:02}", (t * 7 + n) % 100);
                w.ok(&acct, b, pay(&amount, provider(), "p-b", "respite"))
                    .await;
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scratch = w.server.scratch_dir().to_path_buf();
    let backup_dir = scratch.join("backup");
    let data = w.server.data_dir();
    let out = tokio::task::spawn_blocking({
        let (data, backup_dir) = (data.clone(), backup_dir.clone());
        move || {
            std::process::Command::new(BIN)
                .args(["backup", "--data"])
                .arg(&data)
                .arg("--to")
                .arg(&backup_dir)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for h in writers {
        written += h.await.unwrap();
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(written > 20, "the writers kept writing ({written})");
    let point: u64 = text
        .split("recovery point sequence ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no recovery point in: {text}"));
    let live = w.log().await;
    assert!(
        point > 10 && point < live.len() as u64,
        "writes continued past the backup: {point} of {}",
        live.len()
    );
    assert!(!backup_dir.join("index").exists() && !backup_dir.join("root.key").exists());

    // Never over something that exists.
    let refused = std::process::Command::new(BIN)
        .args(["backup", "--data"])
        .arg(&data)
        .arg("--to")
        .arg(&backup_dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not empty"));

    // Restore into a new directory and start a server on it.
    let restored_dir = scratch.join("restored");
    let out = std::process::Command::new(BIN)
        .args(["restore", "--from"])
        .arg(&backup_dir)
        .arg("--data")
        .arg(&restored_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start_with(ServerOptions {
        data_dir: Some(restored_dir),
        root: Some(w.server.root.clone()),
        ..ServerOptions::default()
    });
    let restored = World::attach(server, &w).await;
    let log = restored.log().await;
    assert_eq!(log.len() as u64, point);
    assert_eq!(
        log[..],
        live[..point as usize],
        "the restore is the live log's prefix"
    );
    let audited = audit_log(&log, &w.server.root.public_key());
    let figures = replay_figures(&audited);
    let balance = restored.balance(b).await;
    assert_eq!(
        (pence(&balance.paid_in), pence(&balance.spent)),
        (figures[b].1, figures[b].2),
        "the restored balance is the replay of the restored log"
    );
    // The restored ledger takes writes.
    let acct = restored.account.clone();
    restored
        .ok(&acct, b, pay("2.00", provider(), "p-b", "respite"))
        .await;
}
