//! Restart from a snapshot of the projections (issue 10): a clean stop
//! keeps a snapshot at the head; the next start loads it and replays only
//! the log after it; a crash after more writes replays the tail after the
//! same snapshot. Every answer — balances, statements, holdings, flags,
//! checkpoints and proofs — must be exactly what a full replay of the log
//! (`--verify-full`, which ignores snapshots) gives.

mod common;

use common::*;
use phb_client::methods;
use phb_proto::v1 as pb;
use std::time::Duration;

fn pa() -> pb::PayeeKind {
    pb::PayeeKind::PersonalAssistant
}

fn prov() -> pb::PayeeKind {
    pb::PayeeKind::Provider
}

/// Everything the server answers about the ledger, as the auditor (and a
/// third party, for its holdings) reads it.
#[derive(Debug, PartialEq)]
struct Answers {
    balances: Vec<pb::Balance>,
    statements: Vec<Vec<pb::StatementRow>>,
    holdings: pb::GetHoldingsResponse,
    flags: Vec<pb::Flag>,
    checkpoint_root: Vec<u8>,
    proofs: Vec<pb::GetInclusionProofResponse>,
    consistency: pb::GetConsistencyProofResponse,
}

async fn answers(w: &World) -> Answers {
    let balances = w.all_balances().await;
    let mut statements = Vec::new();
    for b in &balances {
        statements.push(
            statement_all(&w.client, &w.auditor, &b.budget_id, 7)
                .await
                .unwrap(),
        );
    }
    let holdings = get_holdings(&w.client, &w.third_party, &w.third_party.id)
        .await
        .unwrap();
    let flags = all_flags(&w.client, &w.auditor, pb::ListFlagsRequest::default()).await;
    let head = w.log_len().await;
    let req = w.auditor.request(
        methods::GET_CHECKPOINT,
        pb::GetCheckpointRequest { tree_size: 0 },
    );
    let checkpoint = w
        .client
        .clone()
        .get_checkpoint(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checkpoint.tree_size, head);
    let mut proofs = Vec::new();
    for sequence in [1, head / 3, head / 2, head - 1, head] {
        let req = w.auditor.request(
            methods::GET_INCLUSION_PROOF,
            pb::GetInclusionProofRequest {
                sequence: sequence.max(1),
                tree_size: 0,
            },
        );
        proofs.push(
            w.client
                .clone()
                .get_inclusion_proof(req)
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let req = w.auditor.request(
        methods::GET_CONSISTENCY_PROOF,
        pb::GetConsistencyProofRequest {
            from_size: head / 3,
            to_size: 0,
        },
    );
    let consistency = w
        .client
        .clone()
        .get_consistency_proof(req)
        .await
        .unwrap()
        .into_inner();
    Answers {
        balances,
        statements,
        holdings,
        flags,
        checkpoint_root: checkpoint.root_hash,
        proofs,
        consistency,
    }
}

/// A few weeks of a realistic ledger on `budgets`, with a duplicate
/// payment (a flag), refusals recorded, and a third party's holdings.
async fn activity(w: &World, budgets: &[&str], round: u32) {
    for (i, b) in budgets.iter().enumerate() {
        let payer = if i % 2 == 0 {
            w.payroll.clone()
        } else {
            w.third_party.clone()
        };
        for week in 0..4 {
            let amount = format!("{}.{:02}", 40 + week + round, i);
            w.pay(
                &payer,
                b,
                &amount,
                pa(),
                &format!("pa-{i}"),
                "personal_assistant",
            )
            .await;
        }
        // The same provider invoice twice: written, and flagged. (The funds
        // holder pays: the account provider on a direct payment, the third
        // party on its budget.)
        let holder = if i % 2 == 0 {
            w.account.clone()
        } else {
            w.third_party.clone()
        };
        w.pay(&holder, b, "70.00", prov(), "prov-1", "respite")
            .await;
        w.pay(&holder, b, "70.00", prov(), "prov-1", "respite")
            .await;
        // An overspend: refused, and the refusal recorded.
        let r = w
            .append(
                &payer,
                b,
                pay("999999.00", pa(), &format!("pa-{i}"), "personal_assistant"),
            )
            .await;
        assert!(r.error.is_some(), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_snapshot_answers_as_a_full_replay() {
    let mut w = World::new().await;
    let budgets = ["snap-1", "snap-2", "snap-3"];
    w.open_direct(budgets[0]).await;
    w.open_third_party(budgets[1]).await;
    w.open_direct(budgets[2]).await;
    for b in budgets {
        w.fund(b, "9000.00", Some("9000.00")).await;
    }
    activity(&w, &budgets, 0).await;
    let before = answers(&w).await;
    assert!(
        before
            .flags
            .iter()
            .any(|f| f.code == pb::FlagCode::DuplicatePayment as i32),
        "the ledger must hold flags, so the snapshot must carry them: {:?}",
        before.flags
    );
    let at_stop = w.log_len().await;

    // A clean stop keeps a snapshot at the head; the next start loads it.
    assert!(w.server.terminate(Duration::from_secs(20)).is_some());
    assert!(w.server.stderr_of_start(1).contains("snapshot kept"));
    w.server.start_again();
    w.reconnect().await;
    let second = w.server.stderr_of_start(2);
    assert!(
        second.contains("loaded a snapshot") && second.contains("resuming after a snapshot"),
        "the second start must resume at the snapshot:\n{second}"
    );
    assert!(second.contains(&format!("sequence={at_stop}")), "{second}");
    assert_eq!(answers(&w).await, before);

    // More writes, then a crash: no snapshot at the stop, so the next start
    // loads the same snapshot and replays the tail after it.
    activity(&w, &budgets, 1).await;
    let after = answers(&w).await;
    assert_ne!(after.balances, before.balances);
    w.server.kill();
    w.server.start_again();
    w.reconnect().await;
    let third = w.server.stderr_of_start(3);
    assert!(third.contains("resuming after a snapshot"), "{third}");
    assert_eq!(answers(&w).await, after);

    // A full replay, ignoring the snapshots, gives exactly the same.
    w.server.kill();
    w.server.set_env("PHB_LEDGER_VERIFY_FULL", "true");
    w.server.start_again();
    w.reconnect().await;
    let full = w.server.stderr_of_start(4);
    assert!(!full.contains("loaded a snapshot"), "{full}");
    assert_eq!(answers(&w).await, after);

    // A snapshot that does not fit the log (here: the log's entry at its
    // sequence is not the one it was taken after, because the snapshot is
    // from another ledger's data directory) is skipped, never trusted.
    w.server.remove_env("PHB_LEDGER_VERIFY_FULL");
    assert!(w.server.terminate(Duration::from_secs(20)).is_some());
    let other = World::new().await;
    other.open_direct("other-1").await;
    assert!(other.server.terminate(Duration::from_secs(20)).is_some());
    let ours = w.server.data_dir().join("index");
    std::fs::remove_dir_all(&ours).unwrap();
    copy_dir(&other.server.data_dir().join("index"), &ours);
    w.server.start_again();
    w.reconnect().await;
    let fifth = w.server.stderr_of_start(5);
    assert!(!fifth.contains("resuming after a snapshot"), "{fifth}");
    assert_eq!(answers(&w).await, after);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
