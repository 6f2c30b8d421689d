//! `phb-ledger export` and `phb-ledger audit verify` (issue 9): a realistic
//! ledger (several budgets, plans, agreements, payments and purchases,
//! recorded refusals, a failed atomic batch, a key rotation, flags) is
//! exported from the running server and from its data directory; the
//! exports verify, and the summary's figures are the server's. Then the
//! export is damaged every way the issue names — hundreds of single bytes
//! flipped, entries dropped, repeated and swapped, an entry re-signed with
//! a retired key or by an unregistered organisation and the chain
//! recomputed, a tail removed — and every damage is caught, an entry's by
//! its sequence; receipts catch the removed tail; `--against` catches a
//! server whose answers differ.

mod common;

use common::*;
use phb_audit::export::Export;
use phb_audit::{Location, VerifyOptions};
use phb_client::{kinds, Signer};
use phb_proto::v1 as pb;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_phb-ledger");
const ORIGIN: &str = "phb-ledger/phb-test";

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running phb-ledger")
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_key(dir: &Path, name: &str, s: &Signer) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, s.secret_hex()).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The ledger key, read from the data directory (out of band), as a C2SP
/// verifier key.
fn ledger_vkey(w: &World) -> String {
    let text = std::fs::read_to_string(w.server.data_dir().join("ledger.key")).unwrap();
    let s = Signer::from_secret_hex("ledger", text.trim()).unwrap();
    phb_chain::vkey(ORIGIN, &s.public_key()).unwrap()
}

/// What the scenario leaves for the checks.
struct Ledger {
    /// Receipts kept by the funds holders: (sequence, entry hash, tree size).
    receipts: Vec<(u64, Vec<u8>, u64)>,
    /// The third party's key before its rotation, and the rotation's sequence.
    old_third_party: Signer,
    rotated_at: u64,
    /// The third party after the rotation.
    third_party: Signer,
}

fn receipt(r: &pb::AppendResult) -> (u64, Vec<u8>, u64) {
    assert_written(r);
    assert_eq!(r.tree_size, r.sequence);
    (r.sequence, r.entry_hash.clone(), r.tree_size)
}

/// Several budgets of every kind, plans, agreements, payments and
/// purchases, refusals (recorded one by one and as a failed atomic batch),
/// a key rotation, a review adjustment, a stop, and flags.
async fn scenario(w: &World) -> Ledger {
    let prov = pb::PayeeKind::Provider;
    let pa = pb::PayeeKind::PersonalAssistant;
    let c = w.commissioner.clone();
    let account = w.account.clone();
    let payroll = w.payroll.clone();
    let old_tp = w.third_party.clone();
    let mut receipts = Vec::new();

    for b in ["dp-1", "dp-2"] {
        w.open_direct(b).await;
        w.fund(b, "12000.00", Some("6000.00")).await;
    }
    w.open_third_party("tp-1").await;
    w.fund("tp-1", "8000.00", Some("8000.00")).await;
    w.open_notional("nt-1").await;
    w.fund("nt-1", "5000.00", None).await;

    // Payments under agreements, a duplicate pair across two budgets
    // (DUPLICATE_PAYMENT), payroll paying a personal assistant.
    w.pay(&account, "dp-1", "70.00", prov, "prov-1", "respite")
        .await;
    w.agree("dp-2", prov, "prov-1", "respite").await;
    let r = w
        .append(&account, "dp-2", pay("70.00", prov, "prov-1", "respite"))
        .await;
    assert_eq!(flag_codes(&r.flags), ["DUPLICATE_PAYMENT"]);
    let duplicate = r.flags[0].flag_id.clone();
    receipts.push(receipt(&r));
    // The commissioner reviews the flag.
    w.ok(
        &c,
        "dp-2",
        kinds::flag_reviewed(&duplicate, pb::FlagOutcome::Dismissed, "two visits"),
    )
    .await;
    w.pay(&payroll, "dp-1", "180.00", pa, "pa-7", "personal_assistant")
        .await;
    w.pay(&old_tp, "tp-1", "420.50", prov, "prov-2", "therapy")
        .await;
    w.pay(&c, "nt-1", "99.99", prov, "prov-3", "respite").await;
    // Purchases (one of cash without a receipt).
    w.ok(
        &account,
        "dp-1",
        kinds::buy("35.20", "equipment", "shop-1", "a rail"),
    )
    .await;
    w.ok(
        &account,
        "dp-1",
        kinds::buy("60.00", "cash", "shop-2", "cash"),
    )
    .await;
    w.ok(&c, "dp-2", kinds::review("-500.00", "annual review"))
        .await;
    // A refund of a purchase, by its spender; a suspension and resumption.
    let bought = w
        .ok(
            &account,
            "dp-2",
            kinds::buy("80.00", "equipment", "shop-1", "a chair"),
        )
        .await;
    w.ok(&account, "dp-2", kinds::refund(bought, "30.00")).await;
    w.ok(&c, "tp-1", kinds::suspend("awaiting review")).await;
    w.refused(
        &old_tp,
        "tp-1",
        pay("5.00", prov, "prov-2", "therapy"),
        Code::FailedPrecondition,
    )
    .await;
    w.ok(&c, "tp-1", kinds::resume()).await;
    // A stretch of ordinary spending.
    for i in 0..24 {
        let amount = format!("{}.{:02}", 10 + i, i);
        match i % 3 {
            0 => {
                w.pay(&account, "dp-2", &amount, prov, "prov-4", "transport")
                    .await
            }
            1 => {
                w.pay(&old_tp, "tp-1", &amount, prov, "prov-2", "therapy")
                    .await
            }
            _ => w.pay(&c, "nt-1", &amount, prov, "prov-3", "respite").await,
        };
    }

    // Refusals recorded by the rules: an overspend, a permission.
    w.refused(
        &account,
        "dp-1",
        pay("99999.00", prov, "prov-1", "respite"),
        Code::FailedPrecondition,
    )
    .await;
    w.refused(
        &old_tp,
        "tp-1",
        kinds::allocate("1.00", pb::AllocationBasis::OneOff),
        Code::PermissionDenied,
    )
    .await;
    // An atomic batch that fails by a decision: recorded whole.
    let batch = vec![
        w.sign(&account, "dp-1", pay("10.00", prov, "prov-1", "respite")),
        w.sign(&account, "dp-1", pay("88888.00", prov, "prov-1", "respite")),
    ];
    let rs = w.append_batch(batch, true).await;
    assert!(rs.iter().all(|r| r.refusal_sequence > 0), "{rs:?}");

    // The third party's key is rotated; it signs with the new one after.
    let new_tp = Signer::generate(old_tp.id.clone());
    let root = w.server.root.clone();
    let rotated_at = w
        .ok(
            &root,
            "",
            kinds::rotate(&old_tp.id, &new_tp.public_key().to_bytes()),
        )
        .await;
    for amount in ["15.00", "16.00", "17.00"] {
        let r = w
            .append(&new_tp, "tp-1", pay(amount, prov, "prov-2", "therapy"))
            .await;
        receipts.push(receipt(&r));
    }
    w.ok(&c, "nt-1", kinds::stop("moved away")).await;
    let r = w
        .append(&account, "dp-1", pay("12.34", prov, "prov-1", "respite"))
        .await;
    receipts.push(receipt(&r));
    Ledger {
        receipts,
        old_third_party: old_tp,
        rotated_at,
        third_party: new_tp,
    }
}

fn receipts_jsonl(receipts: &[(u64, Vec<u8>, u64)]) -> String {
    receipts
        .iter()
        .map(|(s, h, t)| {
            format!(
                "{{\"sequence\":{s},\"entry_hash\":\"{}\",\"tree_size\":{t}}}\n",
                hex::encode(h)
            )
        })
        .collect()
}

/// The entries from `from` on re-chained: prev_hash and hash recomputed,
/// as someone rewriting the log would.
fn rechain(entries: &mut [phb_chain::LogEntry], from: usize) {
    for i in from..entries.len() {
        let prev = if i == 0 {
            phb_chain::GENESIS_HASH
        } else {
            entries[i - 1].hash
        };
        let e = &mut entries[i];
        e.prev_hash = prev;
        e.hash = phb_chain::entry_hash_with(
            &prev,
            e.sequence,
            e.recorded_at_micros,
            &e.signed,
            e.refusal.as_ref(),
        );
    }
}

fn decode(e: &phb_chain::LogEntry) -> pb::Event {
    <pb::Event as prost::Message>::decode(e.signed.event.as_slice()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_verify_and_every_damage_is_caught() {
    let started = std::time::Instant::now();
    let w = World::new().await;
    let l = scenario(&w).await;
    let scratch = w.server.scratch_dir().to_path_buf();
    let url = format!("http://{}", w.server.addr);
    let auditor_key = write_key(&scratch, "auditor.key", &w.auditor);
    let root_hex = w.server.root.public_key_hex();
    let vkey = ledger_vkey(&w);
    let receipts_file = scratch.join("receipts.jsonl");
    std::fs::write(&receipts_file, receipts_jsonl(&l.receipts)).unwrap();

    // Export from the running server, both formats.
    let from_server = scratch.join("server.phbx");
    let jsonl = scratch.join("server.jsonl");
    for (out, format) in [(&from_server, "binary"), (&jsonl, "jsonl")] {
        ok(&run(&[
            "export",
            "--server",
            &url,
            "--signer",
            &w.auditor.id,
            "--key",
            auditor_key.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--format",
            format,
        ]));
    }
    let log = w.log().await;
    let n = log.len() as u64;
    let export = Export::read_all(std::fs::read(&from_server).unwrap().as_slice()).unwrap();
    assert_eq!(export.ledger_id, LEDGER_ID);
    assert_eq!(export.entries.len() as u64, n);
    assert_eq!(
        export.checkpoints.len(),
        1,
        "the latest checkpoint, at the head"
    );
    for (a, b) in export.entries.iter().zip(&log) {
        assert_eq!(*a, logfile::entry_from_pb(b));
    }

    // JSON lines: one per entry, amounts as strings.
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, n);
    assert_eq!(lines[0]["kind"], "organisation_registered");
    assert_eq!(lines[0]["signer"], "root");
    let payment = lines
        .iter()
        .find(|l| l["kind"] == "payment" && l["refusal"].is_null())
        .unwrap();
    assert!(payment["fields"]["amount"].is_string(), "{payment}");
    assert_eq!(payment["hash"].as_str().unwrap().len(), 64);
    let refused: Vec<&Value> = lines.iter().filter(|l| !l["refusal"].is_null()).collect();
    assert_eq!(refused.len(), 5, "three refusals and a failed batch of two");
    assert!(refused
        .iter()
        .any(|l| l["refusal"]["code_name"] == "FAILED_PRECONDITION"));
    for (l, e) in lines.iter().zip(&log) {
        assert_eq!(l["sequence"], e.sequence);
        assert_eq!(l["hash"], hex::encode(&e.hash));
    }

    // `audit verify` passes, against the live server and with the
    // receipts, and its figures are the server's.
    let verify_args = |file: &Path| -> Vec<String> {
        [
            "audit",
            "verify",
            file.to_str().unwrap(),
            "--root-key",
            &root_hex,
            "--ledger-key",
            &vkey,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let against = |url: &str, key: &Path| -> Vec<String> {
        vec![
            "--against".into(),
            url.into(),
            "--signer".into(),
            w.auditor.id.clone(),
            "--key".into(),
            key.to_str().unwrap().into(),
        ]
    };
    let mut args = verify_args(&from_server);
    args.extend(against(&url, &auditor_key));
    args.extend(["--receipts".into(), receipts_file.to_str().unwrap().into()]);
    let mut json_args = args.clone();
    json_args.push("--json".into());
    let text = ok(&run(&args));
    eprintln!("{text}");
    assert!(text.contains("verified: OK"), "{text}");
    assert!(text.contains("DUPLICATE_PAYMENT 1"), "{text}");
    let summary: Value = serde_json::from_str(ok(&run(&json_args)).trim()).unwrap();
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["entries"], n);
    assert_eq!(summary["refusals"], 5);
    assert_eq!(summary["budgets"], 4);
    assert_eq!(summary["organisations"], 6);
    assert_eq!(summary["checkpoints"], 1);
    assert_eq!(summary["latest_checkpoint"], n);
    assert_eq!(summary["signatures"], n);
    assert_eq!(summary["receipts"], l.receipts.len());
    assert_eq!(summary["against"]["exact"], true);
    assert_eq!(summary["against"]["budgets"], 4);
    let balances = w.all_balances().await;
    let sum = |f: fn(&pb::Balance) -> &str| pounds(balances.iter().map(|b| pence(f(b))).sum());
    assert_eq!(summary["allocated"], sum(|b| &b.allocated));
    assert_eq!(summary["paid_in"], sum(|b| &b.paid_in));
    assert_eq!(summary["spent"], sum(|b| &b.spent));
    assert_eq!(summary["held"], sum(|b| &b.held));
    assert_eq!(summary["flags_by_code"]["DUPLICATE_PAYMENT"], 1);

    // The library's recomputation is the server's, budget by budget.
    let opts = {
        let mut o = VerifyOptions::new(
            w.server.root.public_key(),
            phb_audit::parse_ledger_key(&vkey).unwrap(),
        );
        o.receipts = phb_audit::receipts::parse(&receipts_jsonl(&l.receipts)).unwrap();
        o
    };
    let bytes = std::fs::read(&from_server).unwrap();
    let verified = phb_audit::verify(bytes.as_slice(), &opts).unwrap();
    let ours: Vec<pb::Balance> = verified
        .read
        .balances()
        .budgets()
        .map(phb_audit::against::balance_pb)
        .collect();
    assert_eq!(ours, balances);
    assert!(verified.warnings.is_empty(), "{:?}", verified.warnings);

    flip_bytes(&bytes, &export, &opts);
    drop_repeat_and_swap(&export, &opts);
    forged_signatures(&export, &opts, &l);
    removed_tail(&export, &opts, &l, &scratch, &verify_args);

    // A flipped byte through the command line: non-zero, the sequence named.
    let k = 20usize;
    let range = export.layout()[k].1.clone();
    let mut flipped = bytes.clone();
    flipped[range.end - 70] ^= 0x01;
    let bad = scratch.join("flipped.phbx");
    std::fs::write(&bad, &flipped).unwrap();
    let err = failed(&run(&verify_args(&bad)));
    eprintln!("{err}");
    assert!(err.contains(&format!("entry at sequence {k}")), "{err}");

    // Another server (same budget ids, other figures, a longer log): the
    // comparison fails, naming a budget.
    let other = World::new().await;
    other.open_direct("dp-1").await;
    other.fund("dp-1", "11000.00", Some("6000.00")).await;
    other
        .open_without_plan("pad", pb::Management::Notional)
        .await;
    let pad: Vec<_> = (0..n)
        .map(|_| {
            other.sign(
                &other.commissioner,
                "pad",
                kinds::allocate("1.00", pb::AllocationBasis::OneOff),
            )
        })
        .collect();
    other.append_batch(pad, false).await;
    let other_key = write_key(&scratch, "other-auditor.key", &other.auditor);
    let mut args = verify_args(&from_server);
    args.extend(against(
        &format!("http://{}", other.server.addr),
        &other_key,
    ));
    let err = failed(&run(&args));
    eprintln!("{err}");
    assert!(
        err.contains("the live server's answer: budget dp-1: allocated"),
        "{err}"
    );
    drop(other);

    // Export from the stopped server's data directory: the same entries,
    // and every checkpoint it kept (among them the one issued above).
    assert!(w
        .server
        .terminate(std::time::Duration::from_secs(30))
        .is_some());
    let from_data = scratch.join("data.phbx");
    ok(&run(&[
        "export",
        "--data",
        w.server.data_dir().to_str().unwrap(),
        "--out",
        from_data.to_str().unwrap(),
    ]));
    let data_export = Export::read_all(std::fs::read(&from_data).unwrap().as_slice()).unwrap();
    assert_eq!(data_export.entries, export.entries);
    assert!(data_export.checkpoints.contains(&export.checkpoints[0]));
    let text = ok(&run(&verify_args(&from_data)));
    assert!(text.contains("verified: OK"), "{text}");
    let jsonl_data = scratch.join("data.jsonl");
    ok(&run(&[
        "export",
        "--data",
        w.server.data_dir().to_str().unwrap(),
        "--out",
        jsonl_data.to_str().unwrap(),
        "--format",
        "jsonl",
    ]));
    assert_eq!(
        std::fs::read_to_string(&jsonl_data).unwrap(),
        std::fs::read_to_string(&jsonl).unwrap()
    );
    eprintln!("audit_verify: {n} entries, {:?}", started.elapsed());
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Flips single bytes across the whole export — every header byte; in
/// every entry its frame, its sequence, a byte of its prev_hash, hash,
/// event, signature and refusal message, and two more at random; bytes of
/// the checkpoint and the end record — each caught; in an entry, by that
/// entry's sequence.
fn flip_bytes(bytes: &[u8], export: &Export, opts: &VerifyOptions) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Not 0x06 or 0x1f: they turn an entry's tag 'E' into another record's.
    let masks = [0x01u8, 0x80, 0xff, 0x10, 0x04];
    let mut positions: Vec<(usize, Location)> = Vec::new();
    for (loc, range) in export.layout() {
        let len = range.len();
        let picks: Vec<usize> = match &loc {
            Location::Header => (0..len).collect(),
            // The frame; the sequence; a byte in the middle of prev_hash,
            // hash, event, signature (and refusal message); two at random.
            Location::Entry(k) => {
                let e = &export.entries[*k as usize - 1];
                let record = &bytes[range.clone()];
                let mut fields: Vec<&[u8]> =
                    vec![&e.prev_hash, &e.hash, &e.signed.event, &e.signed.signature];
                if let Some(r) = &e.refusal {
                    fields.push(r.message.as_bytes());
                }
                let mut p: Vec<usize> = (0..5).chain([6]).collect();
                for f in fields {
                    let at = record
                        .windows(f.len())
                        .position(|w| w == f)
                        .expect("the field's bytes are in the record");
                    p.push(at + f.len() / 2);
                }
                p.extend((0..2).map(|_| 5 + rng.below(len - 5)));
                p
            }
            _ => (0..5)
                .chain((0..20).map(|_| 5 + rng.below(len - 5)))
                .collect(),
        };
        positions.extend(picks.into_iter().map(|p| (range.start + p, loc.clone())));
    }
    assert!(positions.len() >= 300, "{} positions", positions.len());
    let mut entries_hit = 0;
    for (i, (p, loc)) in positions.iter().enumerate() {
        let mut damaged = bytes.to_vec();
        damaged[*p] ^= masks[i % masks.len()];
        let err = match phb_audit::verify(damaged.as_slice(), opts) {
            Ok(_) => panic!("a flip at byte {p} ({loc}) verified"),
            Err(f) => f,
        };
        if let Location::Entry(k) = loc {
            entries_hit += 1;
            assert_eq!(
                err.sequence(),
                Some(*k),
                "a flip at byte {p} in the entry at sequence {k} was reported as: {err}"
            );
        }
    }
    assert!(entries_hit >= export.entries.len() * 12);
}

/// Entries dropped, repeated and swapped are caught at the place.
fn drop_repeat_and_swap(export: &Export, opts: &VerifyOptions) {
    let n = export.entries.len();
    for k in [1, 2, n / 2, n - 1, n] {
        let mut x = export.clone();
        x.entries.remove(k - 1);
        let f = phb_audit::verify(x.to_bytes().unwrap().as_slice(), opts).unwrap_err();
        let expect = if k == n {
            // The last entry gone: the checkpoint names the loss.
            Location::Checkpoint {
                index: 0,
                size: Some(n as u64),
            }
        } else {
            Location::Entry(k as u64)
        };
        assert_eq!(f.location, expect, "dropped {k}: {f}");

        let mut x = export.clone();
        x.entries.insert(k, export.entries[k - 1].clone());
        let f = phb_audit::verify(x.to_bytes().unwrap().as_slice(), opts).unwrap_err();
        assert_eq!(f.sequence(), Some(k as u64 + 1), "repeated {k}: {f}");

        if k < n {
            let mut x = export.clone();
            x.entries.swap(k - 1, k);
            let f = phb_audit::verify(x.to_bytes().unwrap().as_slice(), opts).unwrap_err();
            assert_eq!(
                f.sequence(),
                Some(k as u64),
                "swapped {k} and {}: {f}",
                k + 1
            );
        }
    }
}

/// Someone with the log rewrites an entry's signature and recomputes the
/// chain (dropping the checkpoints, which it cannot re-sign): a signature
/// by a key after its rotation, and one by an organisation never
/// registered, are caught at that entry, by the batch check and the replay.
fn forged_signatures(export: &Export, opts: &VerifyOptions, l: &Ledger) {
    let s = export
        .entries
        .iter()
        .position(|e| {
            e.sequence > l.rotated_at
                && e.signed.signer_id == l.third_party.id
                && e.refusal.is_none()
        })
        .expect("a payment by the third party after its rotation");
    let sequence = s as u64 + 1;

    let mut x = export.clone();
    x.checkpoints.clear();
    let event = x.entries[s].signed.event.clone();
    x.entries[s].signed.signature = l.old_third_party.sign_bytes(event).signature;
    rechain(&mut x.entries, s);
    let f = phb_audit::verify(x.to_bytes().unwrap().as_slice(), opts).unwrap_err();
    assert_eq!(f.sequence(), Some(sequence), "{f}");
    assert!(
        f.reason
            .contains(&format!("before the rotation at sequence {}", l.rotated_at)),
        "{f}"
    );

    let ghost = Signer::generate("ghost-org");
    let mut x = export.clone();
    x.checkpoints.clear();
    let signed = ghost.sign_bytes(x.entries[s].signed.event.clone());
    x.entries[s].signed.signer_id = signed.signer_id;
    x.entries[s].signed.signature = signed.signature;
    rechain(&mut x.entries, s);
    let f = phb_audit::verify(x.to_bytes().unwrap().as_slice(), opts).unwrap_err();
    assert_eq!(f.sequence(), Some(sequence), "{f}");
    assert!(f.reason.contains("not a registered organisation"), "{f}");

    // Untouched but re-chained, the same export verifies (the check is the
    // signature, not the rewrite).
    let mut x = export.clone();
    x.checkpoints.clear();
    rechain(&mut x.entries, s);
    assert!(phb_audit::verify(x.to_bytes().unwrap().as_slice(), opts).is_ok());
    assert_eq!(decode(&x.entries[s]).ledger_id, LEDGER_ID);
}

/// A tail removed (and the checkpoints past it with it): the export alone
/// still verifies, but a receipt for a removed entry catches it.
fn removed_tail(
    export: &Export,
    opts: &VerifyOptions,
    l: &Ledger,
    scratch: &Path,
    verify_args: &dyn Fn(&Path) -> Vec<String>,
) {
    let last_receipt = l.receipts.iter().map(|r| r.0).max().unwrap();
    let keep = last_receipt as usize - 1;
    let mut x = export.clone();
    x.entries.truncate(keep);
    x.checkpoints.clear();
    let cut = x.to_bytes().unwrap();
    let mut without = opts.clone();
    without.receipts.clear();
    let v = phb_audit::verify(cut.as_slice(), &without).unwrap();
    assert_eq!(v.summary.entries, keep as u64);
    assert!(!v.warnings.is_empty(), "no checkpoint: a warning");
    let f = phb_audit::verify(cut.as_slice(), opts).unwrap_err();
    assert_eq!(
        f.location,
        Location::Receipt {
            line: l.receipts.len(),
            sequence: last_receipt
        },
        "{f}"
    );
    // Through the command line too.
    let file = scratch.join("cut.phbx");
    std::fs::write(&file, &cut).unwrap();
    let receipts = scratch.join("receipts.jsonl");
    let mut args = verify_args(&file);
    args.extend(["--receipts".into(), receipts.to_str().unwrap().into()]);
    let err = failed(&run(&args));
    assert!(
        err.contains(&format!("sequence {last_receipt}")) && err.contains("removed"),
        "{err}"
    );
}
