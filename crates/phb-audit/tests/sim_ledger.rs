//! `phb_audit::verify` on ledgers written in-process by the simulation
//! model's writer (`phb-sim`, the engine's writer without the store): more
//! entries than one signature batch, recorded refusals, and failed atomic
//! batches that rotate a key and sign with the new one before failing
//! (the batch check must track that key tentatively, as the replay does).
//! `speed` (ignored; run it with `--release`) measures the verification
//! rate docs/audit.md quotes.

use ed25519_dalek::SigningKey;
use phb_audit::export::Export;
use phb_audit::{LedgerKey, Location, VerifyOptions};
use phb_chain::merkle::MemoryTree;
use phb_chain::note::{sign_checkpoint, Checkpoint};
use phb_proto::v1 as pb;
use phb_sim::cast::{
    current_key, event, payment, signing_key, BUDGETS, LEDGER_ID, MINUTE, ORGS, ROOT, T0,
};
use phb_sim::writer::Writer;
use prost::Message;

const ORIGIN: &str = "phb-ledger/phb-fuzz-ledger";

fn ledger_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn signed(
    w: &Writer,
    org: usize,
    id: &str,
    budget: &str,
    now: i64,
    kind: pb::event::Kind,
) -> phb_chain::SignedEvent {
    let bytes = event(id, budget, now, kind).encode_to_vec();
    phb_sim::cast::sign_bytes_with(&current_key(&w.ledger, org), org, bytes)
}

fn pay(amount: &str) -> pb::event::Kind {
    pb::event::Kind::Payment(payment(
        amount,
        pb::PayeeKind::Provider as i32,
        "prov:cmht.7",
        "respite",
        "",
    ))
}

/// A ledger of about `n` entries: allocations, disbursements, payments,
/// overspends (recorded refusals), and every 300 entries a failed atomic
/// batch that rotates the third party's key, pays with the new key, then
/// overspends.
fn build(n: usize) -> Writer {
    let mut w = Writer::with(&phb_sim::cast::setup_events(0), T0);
    let mut now = T0;
    let mut i = 0usize;
    let mut rotations = 1usize;
    // Budgets with a funds holder or notional: dp-1, tp-1, n-1.
    let budgets = [0usize, 2, 4];
    while w.log.len() < n {
        i += 1;
        now += MINUTE;
        let b = budgets[i % budgets.len()];
        let id = BUDGETS[b].id;
        let c = BUDGETS[b].commissioner;
        let notional = BUDGETS[b].management == pb::Management::Notional;
        if i.is_multiple_of(300) {
            let org = 4; // the third party of b-tp-1
            let next = signing_key(org, rotations % phb_sim::cast::KEYS_PER_ORG);
            rotations += 1;
            let rotate = pb::event::Kind::KeyRotated(pb::KeyRotated {
                organisation_id: ORGS[org].into(),
                new_public_key: next.verifying_key().to_bytes().to_vec(),
            });
            let ev =
                |tag: &str, kind| event(&format!("{tag}-{i}"), "b-tp-1", now, kind).encode_to_vec();
            let batch = vec![
                phb_sim::cast::sign_bytes_with(
                    &signing_key(ROOT, 0),
                    ROOT,
                    event(&format!("rot-{i}"), "", now, rotate).encode_to_vec(),
                ),
                phb_sim::cast::sign_bytes_with(&next, org, ev("p", pay("1.00"))),
                phb_sim::cast::sign_bytes_with(&next, org, ev("o", pay("9999999.00"))),
            ];
            w.process(&batch, true, now, &mut ());
            continue;
        }
        let (org, kind) = match i % 4 {
            0 => (
                c,
                pb::event::Kind::Allocation(pb::Allocation {
                    amount: "10.00".into(),
                    basis: pb::AllocationBasis::NeedsBased as i32,
                }),
            ),
            1 if !notional => (
                c,
                pb::event::Kind::Disbursement(pb::Disbursement {
                    amount: "5.00".into(),
                }),
            ),
            3 => (phb_sim::cast::payer(&w.ledger, b, false), pay("9999999.00")),
            _ => (phb_sim::cast::payer(&w.ledger, b, false), pay("1.00")),
        };
        let s = signed(&w, org, &format!("e-{i}"), id, now, kind);
        w.try_one(&s, now);
    }
    w
}

/// The export of `w` with checkpoints at `sizes`.
fn export(w: &Writer, sizes: &[u64]) -> Export {
    let tree = MemoryTree::from_entry_hashes(w.log.iter().map(|e| &e.hash)).unwrap();
    Export {
        ledger_id: LEDGER_ID.into(),
        entries: w.log.clone(),
        checkpoints: sizes
            .iter()
            .map(|&size| {
                let c = Checkpoint {
                    origin: ORIGIN.into(),
                    size,
                    root: tree.root_at(size).unwrap(),
                };
                sign_checkpoint(&ledger_key(), ORIGIN, &c).unwrap()
            })
            .collect(),
    }
}

fn options() -> VerifyOptions {
    VerifyOptions::new(
        signing_key(ROOT, 0).verifying_key(),
        LedgerKey {
            key: ledger_key().verifying_key(),
            name: Some(ORIGIN.into()),
        },
    )
}

#[test]
fn sim_ledgers_verify_across_batches_and_rotations() {
    let w = build(2600);
    let n = w.log.len() as u64;
    let refused = w.log.iter().filter(|e| e.refusal.is_some()).count();
    let in_batches = w
        .log
        .iter()
        .filter(|e| e.refusal.as_ref().is_some_and(|r| r.in_atomic_batch))
        .count();
    assert!(
        refused > 500 && in_batches >= 24,
        "{refused} refused, {in_batches} in batches"
    );
    let x = export(&w, &[1, n / 2, n]);
    let bytes = x.to_bytes().unwrap();
    let v = phb_audit::verify(bytes.as_slice(), &options()).unwrap();
    assert_eq!(v.summary.entries, n);
    assert_eq!(v.summary.signatures, n);
    assert_eq!(v.summary.checkpoints, 3);
    assert_eq!(v.summary.refusals as usize, refused);
    assert!(v.warnings.is_empty());

    // A payment inside a failed batch, signed by the key the batch itself
    // rotated to: its signature damaged, it is named (in the second batch
    // of signatures, past the first chunk).
    let k = w
        .log
        .iter()
        .position(|e| {
            e.sequence > 1100
                && e.refusal
                    .as_ref()
                    .is_some_and(|r| r.in_atomic_batch && !r.first_in_batch)
                && e.signed.signer_id == ORGS[4]
        })
        .unwrap();
    let mut bad = x.clone();
    bad.entries[k].signed.signature[10] ^= 1;
    for i in k..bad.entries.len() {
        let prev = bad.entries[i - 1].hash;
        let e = &mut bad.entries[i];
        e.prev_hash = prev;
        e.hash = phb_chain::entry_hash_with(
            &prev,
            e.sequence,
            e.recorded_at_micros,
            &e.signed,
            e.refusal.as_ref(),
        );
    }
    bad.checkpoints.clear();
    let f = phb_audit::verify(bad.to_bytes().unwrap().as_slice(), &options()).unwrap_err();
    assert_eq!(f.location, Location::Entry(k as u64 + 1), "{f}");

    // A checkpoint signed by another key, or for another root.
    let mut other = x.clone();
    other.checkpoints[1] = sign_checkpoint(
        &SigningKey::from_bytes(&[7; 32]),
        ORIGIN,
        &Checkpoint {
            origin: ORIGIN.into(),
            size: n / 2,
            root: [0; 32],
        },
    )
    .unwrap();
    let f = phb_audit::verify(other.to_bytes().unwrap().as_slice(), &options()).unwrap_err();
    assert_eq!(
        f.location,
        Location::Checkpoint {
            index: 1,
            size: Some(n / 2)
        },
        "{f}"
    );
    let mut other = x.clone();
    other.checkpoints[1] = sign_checkpoint(
        &ledger_key(),
        ORIGIN,
        &Checkpoint {
            origin: ORIGIN.into(),
            size: n / 2,
            root: [0; 32],
        },
    )
    .unwrap();
    let f = phb_audit::verify(other.to_bytes().unwrap().as_slice(), &options()).unwrap_err();
    assert!(f.reason.contains("rewritten"), "{f}");
}

/// A ledger of about `n` entries written with `Ledger::admit` directly
/// (the model's writer keeps an undo record per entry, each a copy of a
/// budget: too much memory for a large ledger), shaped like a real one:
/// one budget per 100 entries (opened, given a plan and agreements, funded),
/// then payments by the funds holder round the budgets, with allocations,
/// disbursements and recorded overspends among them.
fn build_large(n: usize) -> Vec<phb_chain::LogEntry> {
    let w = Writer::with(&phb_sim::cast::setup_events(0), T0);
    let (mut ledger, mut log) = (w.ledger, w.log);
    let keys: Vec<SigningKey> = (0..ORGS.len()).map(|o| signing_key(o, 0)).collect();
    let mut now = T0;
    let mut i = 0usize;
    let mut add = |ledger: &mut phb_domain::Ledger,
                   log: &mut Vec<phb_chain::LogEntry>,
                   org: usize,
                   budget: &str,
                   kind: pb::event::Kind| {
        i += 1;
        now += 1_000_000;
        let bytes = event(&format!("e-{i}"), budget, now, kind).encode_to_vec();
        let s = phb_sim::cast::sign_bytes_with(&keys[org], org, bytes);
        match ledger.admit(&s, now, None, |_, _| Ok(None)) {
            Ok(phb_domain::Admission::Written(a)) | Ok(phb_domain::Admission::Refused(a, _)) => {
                log.push(a.entry)
            }
            other => panic!("{other:?}"),
        }
    };
    // Budget 0's configuration: a direct payment held by org 5.
    let (c, holder) = (BUDGETS[0].commissioner, 5);
    let provider = pb::PayeeKind::Provider as i32;
    let budgets: Vec<String> = (0..(n / 100).max(1)).map(|k| format!("big-{k}")).collect();
    for b in &budgets {
        add(&mut ledger, &mut log, c, b, phb_sim::cast::open_kind(0));
        add(&mut ledger, &mut log, c, b, phb_sim::cast::plan_kind());
        // Its own provider, under its own agreement.
        let agreement = pb::event::Kind::ServiceAgreementApproved(pb::ServiceAgreementApproved {
            agreement_id: phb_sim::cast::agreement_id(provider, &format!("prov-{b}"), "respite"),
            payee_ref: format!("prov-{b}"),
            payee_kind: provider,
            payee_sector: pb::Sector::Independent as i32,
            category: "respite".into(),
            unit: pb::Unit::Item as i32,
            rate: "1.00".into(),
            max_units_per_week: 0,
            valid_from: phb_sim::cast::IN_FORCE_FROM.into(),
            valid_to: phb_sim::cast::IN_FORCE_TO.into(),
            connected_person: false,
        });
        add(&mut ledger, &mut log, c, b, agreement);
        let alloc = pb::event::Kind::Allocation(pb::Allocation {
            amount: "4800.00".into(),
            basis: pb::AllocationBasis::NeedsBased as i32,
        });
        add(&mut ledger, &mut log, c, b, alloc);
        let disburse = pb::event::Kind::Disbursement(pb::Disbursement {
            amount: "2400.00".into(),
        });
        add(&mut ledger, &mut log, c, b, disburse);
    }
    let mut k = 0usize;
    while log.len() < n {
        k += 1;
        let b = &budgets[k % budgets.len()];
        let (org, kind) = match k % 10 {
            0 => (
                c,
                pb::event::Kind::Allocation(pb::Allocation {
                    amount: "10.00".into(),
                    basis: pb::AllocationBasis::NeedsBased as i32,
                }),
            ),
            1 => (
                c,
                pb::event::Kind::Disbursement(pb::Disbursement {
                    amount: "5.00".into(),
                }),
            ),
            9 => (holder, pay("9999999.00")),
            _ => {
                // Amounts and service days vary, as real claims do.
                let amount = format!("{}.{:02}", 1 + k % 7, k % 100);
                let mut p = payment(&amount, provider, &format!("prov-{b}"), "respite", "");
                p.service_from = format!("2023-12-{:02}", 1 + k % 31);
                p.service_to = p.service_from.clone();
                (holder, pb::event::Kind::Payment(p))
            }
        };
        add(&mut ledger, &mut log, org, b, kind);
    }
    log
}

/// The verification rate for docs/audit.md: `cargo test -p phb-audit
/// --release --test sim_ledger -- --ignored --nocapture`
/// (`PHB_AUDIT_ENTRIES`, default 200,000).
#[test]
#[ignore]
fn speed() {
    let n = std::env::var("PHB_AUDIT_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let t = std::time::Instant::now();
    let log = build_large(n);
    eprintln!("built {} entries in {:?}", log.len(), t.elapsed());
    let w = Writer {
        log,
        ..Writer::new()
    };
    let x = export(&w, &[w.log.len() as u64]);
    let bytes = x.to_bytes().unwrap();
    eprintln!("export: {} bytes", bytes.len());
    let v = phb_audit::verify(bytes.as_slice(), &options()).unwrap();
    eprintln!("{}", v.summary);
}
