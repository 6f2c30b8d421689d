//! The verifiable log through the real binary (docs/audit.md): receipts
//! (AppendResult.tree_size), signed checkpoints verified with the ledger key
//! taken from the data directory (out of band), inclusion proofs of every
//! entry and consistency proofs between checkpoints verified with
//! phb-chain's verifiers, and a log whose signed-for tail was removed
//! refused at start even when the index check is waived.

mod common;

use common::*;
use phb_chain::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use phb_chain::note;
use phb_client::{kinds, methods};
use phb_proto::v1 as pb;
use std::time::Duration;
use tonic::Code;

fn hash(b: &[u8]) -> phb_domain::Hash {
    b.try_into().expect("32-byte hash")
}

async fn checkpoint(w: &World, size: u64) -> Result<pb::GetCheckpointResponse, tonic::Status> {
    let req = w.auditor.request(
        methods::GET_CHECKPOINT,
        pb::GetCheckpointRequest { tree_size: size },
    );
    Ok(w.client.clone().get_checkpoint(req).await?.into_inner())
}

async fn inclusion(
    w: &World,
    reader: &phb_client::Signer,
    sequence: u64,
    tree_size: u64,
) -> Result<pb::GetInclusionProofResponse, tonic::Status> {
    let req = reader.request(
        methods::GET_INCLUSION_PROOF,
        pb::GetInclusionProofRequest {
            sequence,
            tree_size,
        },
    );
    Ok(w.client
        .clone()
        .get_inclusion_proof(req)
        .await?
        .into_inner())
}

async fn consistency(
    w: &World,
    from_size: u64,
    to_size: u64,
) -> Result<pb::GetConsistencyProofResponse, tonic::Status> {
    let req = w.auditor.request(
        methods::GET_CONSISTENCY_PROOF,
        pb::GetConsistencyProofRequest { from_size, to_size },
    );
    Ok(w.client
        .clone()
        .get_consistency_proof(req)
        .await?
        .into_inner())
}

/// The ledger's public key as the operator hands it over: from the data
/// directory's ledger.key, not from the server's answers.
fn ledger_public_key(w: &World) -> ed25519_dalek::VerifyingKey {
    let text = std::fs::read_to_string(w.server.data_dir().join("ledger.key")).expect("ledger.key");
    phb_client::Signer::from_secret_hex("ledger", &text)
        .expect("hex secret")
        .public_key()
}

const ORIGIN: &str = "phb-ledger/phb-test";

#[tokio::test]
async fn receipts_checkpoints_and_proofs_verify() {
    let mut w = World::new().await;
    let b = "proof-1";
    w.open_third_party(b).await;
    w.fund(b, "500.00", Some("500.00")).await;
    let tp = w.third_party.clone();
    // Receipts: every result names a tree that includes its entry.
    let mut receipts = Vec::new();
    for i in 0..5 {
        let r = w
            .append(
                &tp,
                b,
                kinds::buy("1.00", "equipment", &format!("s-{i}"), "kit"),
            )
            .await;
        let s = assert_written(&r);
        assert_eq!(r.tree_size, s, "{r:?}");
        receipts.push((s, r.entry_hash.clone(), r.tree_size));
    }
    // A recorded refusal's receipt covers its entry too.
    let r = w
        .append(
            &tp,
            b,
            kinds::buy("1000.00", "equipment", "s-x", "too much"),
        )
        .await;
    assert_refused(&r, Code::FailedPrecondition);
    assert_eq!(r.tree_size, r.refusal_sequence);
    receipts.push((r.refusal_sequence, r.entry_hash.clone(), r.tree_size));

    // The latest checkpoint, verified with the key from the data directory.
    let key = ledger_public_key(&w);
    let first = checkpoint(&w, 0).await.expect("a checkpoint");
    let head = w.log_len().await;
    assert_eq!(first.tree_size, head);
    let c = note::parse_and_verify(&first.checkpoint, ORIGIN, &key, ORIGIN).expect("verifies");
    assert_eq!((c.size, c.root.to_vec()), (head, first.root_hash.clone()));
    assert_eq!(first.verifier_key, note::vkey(ORIGIN, &key).unwrap());
    // Another key does not verify it.
    let other = phb_client::Signer::generate("x").public_key();
    assert!(note::parse_and_verify(&first.checkpoint, ORIGIN, &other, ORIGIN).is_err());

    // Every entry's inclusion proof at the checkpoint's size.
    let log = w.log().await;
    for e in &log {
        let p = inclusion(&w, &w.auditor, e.sequence, first.tree_size)
            .await
            .unwrap();
        assert_eq!(p.entry_hash, e.hash);
        assert_eq!(p.root_hash, first.root_hash);
        let proof: Vec<_> = p.hashes.iter().map(|h| hash(h)).collect();
        verify_inclusion(
            &leaf_hash(&hash(&e.hash)),
            e.sequence - 1,
            head,
            &proof,
            &hash(&first.root_hash),
        )
        .unwrap_or_else(|err| panic!("entry {}: {err}", e.sequence));
        // A wrong sibling fails.
        if let Some(first_node) = proof.first() {
            let mut bad = proof.clone();
            bad[0][0] ^= 1;
            assert_ne!(bad[0], *first_node);
            assert!(verify_inclusion(
                &leaf_hash(&hash(&e.hash)),
                e.sequence - 1,
                head,
                &bad,
                &hash(&first.root_hash)
            )
            .is_err());
        }
    }
    // Each receipt proves its entry in its own tree size (any registered
    // organisation may ask: the payer itself).
    for (s, h, size) in &receipts {
        let p = inclusion(&w, &tp, *s, *size).await.unwrap();
        let proof: Vec<_> = p.hashes.iter().map(|h| hash(h)).collect();
        verify_inclusion(
            &leaf_hash(&hash(h)),
            s - 1,
            *size,
            &proof,
            &hash(&p.root_hash),
        )
        .unwrap();
    }

    // More entries, a second checkpoint, and a consistency proof that the
    // new tree extends the one the partner kept; it survives a restart.
    for i in 0..3 {
        w.ok(
            &tp,
            b,
            kinds::buy("2.00", "equipment", &format!("t-{i}"), "kit"),
        )
        .await;
    }
    let second = checkpoint(&w, 0).await.unwrap();
    assert_eq!(second.tree_size, head + 3);
    w.server.restart();
    w.reconnect().await;
    let kept = checkpoint(&w, first.tree_size).await.unwrap();
    assert_eq!(kept.checkpoint, first.checkpoint, "checkpoints are kept");
    assert_eq!(
        checkpoint(&w, second.tree_size).await.unwrap().checkpoint,
        second.checkpoint
    );
    let p = consistency(&w, first.tree_size, second.tree_size)
        .await
        .unwrap();
    let proof: Vec<_> = p.hashes.iter().map(|h| hash(h)).collect();
    verify_consistency(
        first.tree_size,
        second.tree_size,
        &hash(&first.root_hash),
        &hash(&second.root_hash),
        &proof,
    )
    .unwrap();
    let mut bad = proof.clone();
    bad[0][31] ^= 0x80;
    assert!(verify_consistency(
        first.tree_size,
        second.tree_size,
        &hash(&first.root_hash),
        &hash(&second.root_hash),
        &bad
    )
    .is_err());

    // Bad arguments and callers.
    assert_status(checkpoint(&w, 2).await, Code::NotFound);
    assert_status(inclusion(&w, &w.auditor, 0, 0).await, Code::InvalidArgument);
    assert_status(inclusion(&w, &w.auditor, 5, 4).await, Code::InvalidArgument);
    assert_status(
        inclusion(&w, &w.auditor, 1, second.tree_size + 1).await,
        Code::FailedPrecondition,
    );
    assert_status(consistency(&w, 0, 3).await, Code::InvalidArgument);
    assert_status(consistency(&w, 4, 3).await, Code::InvalidArgument);
    let stranger = phb_client::Signer::generate("stranger");
    assert_status(inclusion(&w, &stranger, 1, 0).await, Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_below_a_checkpoint_refuses_to_start() {
    let mut w = World::new().await;
    let b = "cut";
    w.open_third_party(b).await;
    w.fund(b, "100.00", Some("50.00")).await;
    let signed_for = checkpoint(&w, 0).await.unwrap().tree_size;
    assert!(w.server.terminate(Duration::from_secs(10)).is_some());
    // An insider removes the last entry (a whole record: the chain of what
    // is left is intact) and waives the index check.
    let path = w.server.data_dir().join("log").join("ledger.log");
    let bytes = std::fs::read(&path).unwrap();
    let last = *common::logfile::spans(&bytes).last().unwrap();
    std::fs::write(&path, &bytes[..last.offset as usize]).unwrap();
    w.server
        .set_wrapper(vec!["env".into(), "PHB_ALLOW_INDEX_REBUILD=true".into()]);
    let failure = w.server.expect_start_failure(Duration::from_secs(30));
    assert!(
        failure.stderr.contains(&format!(
            "checkpoint {signed_for} was issued for {signed_for} entries"
        )) && failure
            .stderr
            .contains(&format!("holds only {}", signed_for - 1)),
        "{}",
        failure.stderr
    );
}

/// A receipt ties to the partner's own bytes (issue 11's client finding):
/// an AppendResult's `recorded_at` and `prev_hash`, with its `sequence` and
/// the SignedEvent the partner sent, recompute its `entry_hash` exactly as
/// docs/log-format.md §2 says — for the write and for a duplicate retry —
/// and the entries chain: each prev_hash is the previous result's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_recomputes_from_the_partners_own_bytes() {
    let w = World::new().await;
    let b = "receipt-1";
    let opened = w.open_direct(b).await;
    let commissioner = w.commissioner.clone();
    let signed = w.sign(
        &commissioner,
        b,
        kinds::allocate("100.00", pb::AllocationBasis::NeedsBased),
    );
    let recompute = |r: &pb::AppendResult| {
        let at = r
            .recorded_at
            .as_ref()
            .expect("recorded_at on a written event");
        let micros = at.seconds * 1_000_000 + i64::from(at.nanos) / 1000;
        assert_eq!(at.nanos % 1000, 0, "whole microseconds");
        let prev: phb_chain::Hash = r
            .prev_hash
            .as_slice()
            .try_into()
            .expect("32-byte prev_hash");
        let mine = phb_chain::SignedEvent {
            event: signed.event.clone(),
            signer_id: signed.signer_id.clone(),
            signature: signed.signature.clone(),
        };
        (
            phb_chain::entry_hash_with(&prev, r.sequence, micros, &mine, None),
            prev,
        )
    };
    let first = w.append_signed(signed.clone()).await;
    let seq = assert_written(&first);
    assert!(seq > opened);
    let (hash, prev) = recompute(&first);
    assert_eq!(hash.to_vec(), first.entry_hash, "the receipt recomputes");
    // prev_hash is the previous entry's hash, as the log says.
    let log = w.log().await;
    assert_eq!(log[seq as usize - 2].hash, prev.to_vec());
    // A retry: the same receipt, recomputable the same way.
    let again = w.append_signed(signed.clone()).await;
    assert!(again.duplicate);
    assert_eq!(
        (
            again.sequence,
            &again.entry_hash,
            &again.recorded_at,
            &again.prev_hash
        ),
        (
            first.sequence,
            &first.entry_hash,
            &first.recorded_at,
            &first.prev_hash
        )
    );
    // A refusal carries neither (its hash also covers the refusal record).
    let refused = w
        .append(
            &commissioner,
            "no-such-budget",
            kinds::allocate("1.00", pb::AllocationBasis::NeedsBased),
        )
        .await;
    assert!(refused.error.is_some());
    assert!(refused.recorded_at.is_none() && refused.prev_hash.is_empty());
}
