//! Issue 6 ("Safety round 2"), the write-path defects, each through the real
//! binary: refusals are final and recorded (7), idempotency keys are scoped
//! to the signer (6), forged signatures never reach the writer (5), refusal
//! logging is escaped and bounded (8), an index that vouches for more than
//! the log holds refuses the start (2), and the header's reserved bytes are
//! named when they are wrong (12).

mod common;

use common::*;
use phb_client::{kinds, Signer};
use phb_proto::v1 as pb;
use std::time::{Duration, Instant};
use tonic::Code;

fn provider() -> pb::PayeeKind {
    pb::PayeeKind::Provider
}

/// Defect 7: a payment refused for lack of funds, followed by a corrected
/// payment and a new disbursement, can never be paid by resubmitting the
/// refused bytes — not after a restart, not after the index is rebuilt —
/// and an auditor's replay agrees with the recorded refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_payment_is_never_paid_later() {
    let mut w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let d = "final-dp";
    w.open_direct(d).await;
    w.agree(d, provider(), "p-1", "therapy").await;
    w.fund(d, "1000.00", Some("500.00")).await;
    let overspend = w.sign(&acct, d, pay("550.00", provider(), "p-1", "therapy"));
    let refused = w.append_signed(overspend.clone()).await;
    assert_refused(&refused, Code::FailedPrecondition);
    assert!(refused.refusal_sequence > 0, "{refused:?}");
    // The payer corrects it under a new id; then more money arrives.
    w.ok(&acct, d, pay("400.00", provider(), "p-1", "therapy"))
        .await;
    w.ok(&c, d, kinds::disburse("500.00")).await;
    assert_eq!(w.balance(d).await.held, "600.00");
    let check = |r: &pb::AppendResult| {
        assert_eq!(result_code(r), Code::FailedPrecondition as i32, "{r:?}");
        assert!(r.duplicate && r.sequence == 0, "{r:?}");
        assert_eq!(r.refusal_sequence, refused.refusal_sequence, "{r:?}");
        assert_eq!(r.entry_hash, refused.entry_hash);
        assert_eq!(r.error, refused.error, "the original refusal");
    };
    check(&w.append_signed(overspend.clone()).await);
    // Across a clean restart, and a kill with the index thrown away.
    w.server.restart();
    w.reconnect().await;
    check(&w.append_signed(overspend.clone()).await);
    w.server.kill();
    std::fs::remove_dir_all(w.server.data_dir().join("index")).unwrap();
    w.server.start_again();
    w.reconnect().await;
    check(&w.append_signed(overspend.clone()).await);
    let b = w.balance(d).await;
    assert_eq!((b.spent.as_str(), b.held.as_str()), ("400.00", "600.00"));
    // The log records the refusal, and an independent replay agrees.
    let log = w.log().await;
    let entry = &log[(refused.refusal_sequence - 1) as usize];
    let r = entry.refusal.as_ref().expect("a recorded refusal");
    assert_eq!((r.code, r.in_atomic_batch), (9, false));
    assert_eq!(entry.signed_event.as_ref(), Some(&overspend));
    let audited = audit_log(&log, &w.server.root.public_key());
    assert_eq!(replay_figures(&audited)[d].2, pence("400.00"));
}

/// Defect 7: the events of an atomic batch refused by the rules cannot be
/// written later one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_refused_atomic_batch_cannot_be_sent_alone() {
    let w = World::new().await;
    let (c, acct) = (w.commissioner.clone(), w.account.clone());
    let d = "final-batch";
    w.open_direct(d).await;
    w.agree(d, provider(), "p-1", "therapy").await;
    w.agree(d, provider(), "p-2", "therapy").await;
    w.fund(d, "1000.00", Some("500.00")).await;
    let batch = vec![
        w.sign(&acct, d, pay("300.00", provider(), "p-1", "therapy")),
        w.sign(&acct, d, pay("300.00", provider(), "p-2", "therapy")),
    ];
    let rs = w.append_batch(batch.clone(), true).await;
    assert_refused(&rs[0], Code::Aborted);
    assert_refused(&rs[1], Code::FailedPrecondition);
    w.ok(&c, d, kinds::disburse("500.00")).await;
    for (e, original) in batch.iter().zip(&rs) {
        let r = w.append_signed(e.clone()).await;
        assert_eq!(result_code(&r), result_code(original), "{r:?}");
        assert!(r.duplicate && r.refusal_sequence == original.refusal_sequence);
    }
    assert_eq!(w.balance(d).await.spent, "0.00");
    let log = w.log().await;
    for r in &rs {
        let e = &log[(r.refusal_sequence - 1) as usize];
        assert!(e.refusal.as_ref().is_some_and(|x| x.in_atomic_batch));
    }
}

/// Defect 6: idempotency keys are (signer, event id). A third party cannot
/// take a commissioner's planned id, and an organisation with no right to
/// write learns nothing of another's events from the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_belong_to_their_signer() {
    let w = World::new().await;
    let (c, tp, auditor) = (
        w.commissioner.clone(),
        w.third_party.clone(),
        w.auditor.clone(),
    );
    let d = "ids-dp";
    w.open_direct(d).await;
    let planned = "c1-2026-06-alloc-dp1";
    // The third party writes first under the commissioner's planned id.
    let mut squat = w.event(d, kinds::buy("1.00", "equipment", "s", "x"));
    squat.event_id = planned.into();
    let squatted = w.append_signed(tp.sign(&squat)).await;
    assert_refused(&squatted, Code::PermissionDenied);
    // The commissioner's real event is written all the same.
    let mut real = w.event(d, kinds::allocate("100.00", pb::AllocationBasis::OneOff));
    real.event_id = planned.into();
    let written = w.append_signed(c.sign(&real)).await;
    let seq = assert_written(&written);
    assert_eq!(w.balance(d).await.allocated, "100.00");
    // An auditor (no write rights) probing the id gets its own decision:
    // nothing names the commissioner's sequence or content.
    let mut probe = w.event(d, kinds::allocate("1.00", pb::AllocationBasis::OneOff));
    probe.event_id = planned.into();
    let answer = w.append_signed(auditor.sign(&probe)).await;
    assert_refused(&answer, Code::PermissionDenied);
    let message = &answer.error.as_ref().unwrap().message;
    assert!(
        !message.contains(&seq.to_string()) && !message.contains("100.00"),
        "{message}"
    );
    assert_ne!(answer.refusal_sequence, seq);
    // The commissioner's retry is a duplicate of its own event; its reuse
    // of the id for other content is ALREADY_EXISTS naming its own sequence.
    let again = w.append_signed(c.sign(&real)).await;
    assert!(again.duplicate && again.sequence == seq, "{again:?}");
    let mut other = real.clone();
    other.kind = Some(kinds::allocate("5.00", pb::AllocationBasis::OneOff));
    let reused = w.append_signed(c.sign(&other)).await;
    assert_refused(&reused, Code::AlreadyExists);
    assert!(reused.error.unwrap().message.contains(&seq.to_string()));
    // The log holds the same event id three times, under three signers,
    // and the server replays it after a restart.
    let log = w.log().await;
    let signers: Vec<_> = log
        .iter()
        .filter_map(|e| {
            let s = e.signed_event.as_ref()?;
            let ev = <pb::Event as prost::Message>::decode(s.event.as_slice()).ok()?;
            (ev.event_id == planned).then(|| s.signer_id.clone())
        })
        .collect();
    assert_eq!(
        signers,
        vec![tp.id.clone(), c.id.clone(), auditor.id.clone()]
    );
    audit_log(&log, &w.server.root.public_key());
}

/// Defect 5: events with forged signatures are refused before they reach
/// the writer, so a flood of them does not slow legitimate appends down
/// (before the fix the writer re-verified each one: 3-4 flooding clients
/// took a single Append from about 1 ms to 150-840 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_signatures_do_not_slow_the_writer() {
    let w = World::new().await;
    let acct = w.account.clone();
    let d = "flood-dp";
    w.open_direct(d).await;
    w.agree(d, provider(), "p", "therapy").await;
    w.fund(d, "100000.00", Some("100000.00")).await;
    let forger = Signer::generate(acct.id.clone());
    let forged: Vec<pb::SignedEvent> = (0..500)
        .map(|i| {
            let mut e = w.event(d, pay("0.01", provider(), "p", "therapy"));
            e.event_id = format!("forged-{i}");
            forger.sign(&e)
        })
        .collect();
    // One forged batch: every event refused UNAUTHENTICATED, nothing recorded.
    let rs = w.append_batch(forged.clone(), false).await;
    assert!(rs
        .iter()
        .all(|r| result_code(r) == Code::Unauthenticated as i32 && r.refusal_sequence == 0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    for _ in 0..4 {
        let mut client = w.server.client().await;
        let (forged, stop) = (forged.clone(), stop.clone());
        flooders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client
                    .append(pb::AppendRequest {
                        events: forged.clone(),
                        atomic: false,
                    })
                    .await;
                sent += forged.len() as u64;
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        w.ok(&acct, d, pay("0.01", provider(), "p", "therapy"))
            .await;
        latencies.push(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut forged_sent = 0;
    for f in flooders {
        forged_sent += f.await.unwrap();
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "legitimate Append under a flood of {forged_sent} forged events: median {median:?}, max {:?}",
        latencies.last().unwrap()
    );
    assert!(
        forged_sent >= 2000,
        "the flood was too small to mean anything"
    );
    assert!(
        median < Duration::from_millis(60),
        "median {median:?} with forged events flooding the server: {latencies:?}"
    );
    // None of them was written or recorded.
    assert_eq!(w.balance(d).await.spent, "0.15");
}

/// Defect 8: client strings are escaped and cut in the server log, and a
/// flood of refusals cannot drive the log faster than a fixed rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_logging_is_escaped_and_bounded() {
    let w = World::new().await;
    let acct = w.account.clone();
    let forged_line = "2026-01-01T00:00:00Z  INFO phb_ledger: payment approved by root";
    let mut e = w.event("x", pay("1.00", provider(), "p", "therapy"));
    e.event_id = format!("ok\n{forged_line}\x1b[2J\x1b[31m{}", "A".repeat(5000));
    let r = w.append_signed(acct.sign(&e)).await;
    assert_refused(&r, Code::InvalidArgument);
    // A flood of garbage: 20 requests of 1000 malformed events.
    let garbage: Vec<pb::SignedEvent> = (0..1000)
        .map(|i| pb::SignedEvent {
            event: vec![0xff; 40 + i % 7],
            signer_id: format!("nobody\n{i}"),
            signature: vec![0; 64],
        })
        .collect();
    let before = w.server.stderr().len();
    let started = Instant::now();
    let mut sent_bytes = 0;
    for _ in 0..20 {
        sent_bytes += garbage.iter().map(|g| g.event.len() + 72).sum::<usize>();
        w.append_batch(garbage.clone(), false).await;
    }
    let elapsed = started.elapsed().as_secs() + 1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stderr = w.server.stderr();
    for line in stderr.lines() {
        assert!(
            !line.contains('\x1b'),
            "terminal escape in the log: {line:?}"
        );
        assert!(
            !line.starts_with(forged_line),
            "a client forged a log line: {line:?}"
        );
        assert!(line.len() < 2048, "a log line of {} bytes", line.len());
    }
    let flood_log = stderr.len() - before;
    let refusal_lines = stderr[before..]
        .lines()
        .filter(|l| l.contains("event refused"))
        .count();
    eprintln!(
        "{sent_bytes} bytes of garbage in {elapsed} s gave {flood_log} bytes of log, {refusal_lines} refusal lines"
    );
    assert!(
        refusal_lines as u64 <= 20 * (elapsed + 1),
        "{refusal_lines} refusal lines in {elapsed} s"
    );
    assert!(flood_log < sent_bytes / 4, "{flood_log} bytes of log");
}

/// Defect 2: with the log's last record removed, an index that knew more
/// entries refuses the start, naming both; the operator flag allows the
/// rebuild after investigation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_shorter_than_its_index_refuses_to_start() {
    let mut w = World::new().await;
    let d = "short-dp";
    w.open_direct(d).await;
    w.fund(d, "100.00", Some("50.00")).await;
    let head = w.log_len().await;
    assert!(w.server.terminate(Duration::from_secs(10)).is_some());
    let path = w.server.data_dir().join("log").join("ledger.log");
    let bytes = std::fs::read(&path).unwrap();
    let last = *common::logfile::spans(&bytes).last().unwrap();
    std::fs::write(&path, &bytes[..last.offset as usize]).unwrap();
    let failure = w.server.expect_start_failure(Duration::from_secs(30));
    let text = failure.stderr;
    assert!(
        text.contains(&format!("ends at sequence {}", head - 1))
            && text.contains(&format!("through {head}"))
            && text.contains("--allow-index-rebuild"),
        "{text}"
    );
    w.server
        .set_wrapper(vec!["env".into(), "PHB_ALLOW_INDEX_REBUILD=true".into()]);
    w.server.start_again();
    w.reconnect().await;
    assert_eq!(w.log_len().await, head - 1);
    w.server.set_wrapper(Vec::new());
    w.server.restart();
    w.reconnect().await;
    assert_eq!(w.log_len().await, head - 1);
}

/// Defect 12: the header's reserved bytes (12-15) are checked, and the
/// refusal names them rather than blaming the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_header_bytes_are_named() {
    let mut w = World::new().await;
    assert!(w.server.terminate(Duration::from_secs(10)).is_some());
    let path = w.server.data_dir().join("log").join("ledger.log");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[13] = 1;
    std::fs::write(&path, &bytes).unwrap();
    let failure = w.server.expect_start_failure(Duration::from_secs(30));
    assert!(
        failure.stderr.contains("reserved") && !failure.stderr.contains("version 1 is not"),
        "{}",
        failure.stderr
    );
}

/// Defect 7, atomic batches that register or re-key their own signer: an
/// event that authenticates only through an earlier event of the batch is
/// recorded too when the batch fails by a decision (the auditor re-runs the
/// batch against the keys it saw), so it cannot be written later on its
/// own, even once its signer is registered by another event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_that_registers_its_signer_is_final() {
    let mut w = World::new().await;
    let (c, root) = (w.commissioner.clone(), w.server.root.clone());
    let newcomer = Signer::generate("late-tp-2");
    let d = "batch-reg";
    w.open_direct(d).await;
    w.agree(d, provider(), "p", "therapy").await;
    let register = w.sign(
        &root,
        "",
        kinds::register(
            &newcomer.id,
            &[pb::Role::Commissioner],
            &newcomer.public_key().to_bytes(),
        ),
    );
    let k = kinds::open("h-new", &newcomer.id, pb::Management::Notional, "", "");
    let open = w.sign(&newcomer, "nb-1", k);
    // Fails by a decision: the commissioner pays on a direct-payment budget
    // (only its funds holder may).
    let overspend = w.sign(&c, d, pay("5.00", provider(), "p", "therapy"));
    let rs = w
        .append_batch(vec![register.clone(), open.clone(), overspend], true)
        .await;
    assert_refused(&rs[0], Code::Aborted);
    assert_refused(&rs[1], Code::Aborted);
    assert_refused(&rs[2], Code::PermissionDenied);
    assert!(rs.iter().all(|r| r.refusal_sequence > 0), "{rs:?}");
    let log = w.log().await;
    let first = &log[(rs[0].refusal_sequence - 1) as usize];
    assert!(first.refusal.as_ref().is_some_and(|r| r.first_in_batch));
    // The log replays after a restart (the batch is re-run as recorded) and
    // an independent auditor verifies every signature in it.
    w.server.restart();
    w.reconnect().await;
    audit_log(&w.log().await, &w.server.root.public_key());
    // Register the newcomer under a new event: its recorded event stays refused.
    let mut again = <pb::Event as prost::Message>::decode(register.event.as_slice()).unwrap();
    again.event_id = w.new_id("reg-again");
    assert_written(&w.append_signed(root.sign(&again)).await);
    let r = w.append_signed(open).await;
    assert!(
        r.duplicate && result_code(&r) == Code::Aborted as i32,
        "{r:?}"
    );
    assert_status(
        get_balance(&w.client, &w.auditor, "nb-1").await,
        Code::NotFound,
    );
    audit_log(&w.log().await, &w.server.root.public_key());
}
