//! Writes the seed corpus under `fuzz/corpus/<target>/` from real events
//! built with `phb_client`'s builders and signed with `phb_client::Signer`
//! (the cast's keys, from the same small seeds the targets use):
//!
//! ```sh
//! cd fuzz && cargo run --release --features seed --bin seed
//! ```
//!
//! `ledger_sequence` takes structured (`arbitrary`) input, so its seeds are
//! a minimised sample of a fuzzing run instead (docs/fuzzing.md).

use phb_client::{kinds, Signer};
use phb_domain::{LogEntry, Refusal, SignedEvent, GENESIS_HASH};
use phb_fuzz::wire;
use phb_proto::v1 as pb;
use phb_sim::cast::{self, secret, BUDGETS, HOUR, LEDGER_ID, ORGS, T0};
use std::path::{Path, PathBuf};

fn signer(org: usize) -> Signer {
    Signer::from_secret(ORGS[org], secret(org, 0))
}

fn signed(org: usize, id: &str, budget: &str, kind: pb::event::Kind) -> SignedEvent {
    // The client's builder, with a fixed time so the seeds are reproducible.
    let mut e = phb_client::event(LEDGER_ID, id, budget, kind);
    e.occurred_at = Some(cast::timestamp(T0 - HOUR));
    let s = signer(org).sign(&e);
    SignedEvent {
        event: s.event,
        signer_id: s.signer_id,
        signature: s.signature,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("writing a seed");
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let dirs = ["decode_event", "money", "log_record"].map(|t| {
        let d = root.join(t);
        std::fs::create_dir_all(&d).expect("creating the corpus directory");
        d
    });
    let [decode, money, log] = &dirs;

    let pk = |org: usize, k: usize| cast::signing_key(org, k).verifying_key().to_bytes();
    let b0 = BUDGETS[0].id;
    let bn = BUDGETS[4].id;
    let events: Vec<(&str, SignedEvent)> = vec![
        (
            "register",
            signed(
                0,
                "ev-reg",
                "",
                kinds::register(
                    "ghost",
                    &[pb::Role::Auditor, pb::Role::ThirdParty],
                    &pk(7, 0),
                ),
            ),
        ),
        (
            "rotate",
            signed(0, "ev-rot", "", kinds::rotate("comm-a", &pk(1, 1))),
        ),
        (
            "open-direct",
            signed(
                2,
                "ev-open",
                "b-late",
                kinds::open(
                    "holder-9",
                    "comm-b",
                    pb::Management::DirectPayment,
                    "acct",
                    "both",
                ),
            ),
        ),
        (
            "open-notional",
            signed(
                1,
                "ev-open-n",
                "b-new",
                kinds::open("holder-8", "comm-a", pb::Management::Notional, "", ""),
            ),
        ),
        (
            "allocate",
            signed(
                1,
                "ev-alloc",
                b0,
                kinds::allocate("202.04", pb::AllocationBasis::ClusterCost),
            ),
        ),
        (
            "disburse",
            signed(1, "ev-disb", b0, kinds::disburse("1000")),
        ),
        (
            "pay",
            signed(
                5,
                "ev-pay",
                b0,
                kinds::pay("4.8", pb::PayeeKind::Provider, "prov:7", "respite"),
            ),
        ),
        (
            "pay-payroll",
            signed(
                3,
                "ev-wage",
                b0,
                kinds::pay(
                    "120.00",
                    pb::PayeeKind::PersonalAssistant,
                    "pa-001",
                    "personal_assistant",
                ),
            ),
        ),
        (
            "buy-notional",
            signed(
                1,
                "ev-buy",
                bn,
                kinds::buy("0.01", "gym-membership", "sup:1", "naïve ✓"),
            ),
        ),
        (
            "review-down",
            signed(1, "ev-rev", b0, kinds::review("-587.20", "annual review")),
        ),
        (
            "review-up",
            signed(1, "ev-rev2", b0, kinds::review("1000000000.00", "moved")),
        ),
        ("stop", signed(1, "ev-stop", b0, kinds::stop("moved away"))),
        (
            "bad-amount",
            signed(1, "ev-bad", b0, kinds::disburse("1e9")),
        ),
    ];
    for (name, s) in &events {
        write(decode, name, &wire::encode(s, 128));
    }
    // An unknown field appended to a signed event, an empty event, the
    // right bytes under a custom signer, a far-future clock.
    let (_, pay) = &events[6];
    let mut extra = pay.event.clone();
    extra.extend_from_slice(&[0xA8, 0x01, 0x01]);
    write(
        decode,
        "unknown-field",
        &wire::encode(&signer(5).sign_bytes(extra).into_domain(), 128),
    );
    write(decode, "empty", &[0, 128, 0]);
    let mut custom = pay.clone();
    custom.signer_id = "nobody".into();
    write(decode, "custom-signer", &wire::encode(&custom, 128));
    write(decode, "clock-max", &wire::encode(pay, 0));

    for (i, s) in [
        "202.04",
        "5",
        "4.8",
        "0.01",
        "-587.20",
        "1000000000.00",
        "1000000000.01",
        "9999999999",
        "0000000001.5",
        "1e9",
        "NaN",
        "١٢",
        "+5",
        " 5",
        "0.001",
        "-0",
        "1.",
        ".5",
        "--1",
    ]
    .iter()
    .enumerate()
    {
        write(money, &format!("amount-{i:02}"), s.as_bytes());
    }
    let mut pair = Vec::new();
    pair.extend_from_slice(&(-58_720i64).to_le_bytes());
    pair.extend_from_slice(&100_000_000_000i64.to_le_bytes());
    write(money, "pence-pair", &pair);

    let mut prev = GENESIS_HASH;
    for (i, (name, s)) in events.iter().take(4).enumerate() {
        let e = LogEntry::next(prev, i as u64 + 1, T0 + i as i64, s.clone());
        prev = e.hash;
        let mut record = Vec::new();
        phb_store::logfile::encode_record(&e, &mut record);
        write(log, &format!("record-{name}"), &record[8..]);
    }
    // Entries that record refusals: a payment refused by the rules, and an
    // event of an atomic batch that failed, refused ABORTED.
    let refusals = [
        (
            "refused-pay",
            &events[6].1,
            Refusal::new(
                9,
                false,
                "spending 4.80 would overspend budget \"b-dp-1\": only 0.00 is held",
            ),
        ),
        (
            "refused-aborted",
            &events[4].1,
            Refusal::new(
                10,
                true,
                "not applied: the atomic batch failed at event 1 (budget \"b-dp-1\" is stopped; nothing more may be recorded against it)",
            ),
        ),
    ];
    for (i, (name, s, r)) in refusals.into_iter().enumerate() {
        let sequence = 5 + i as u64;
        let e = LogEntry::sealed(prev, sequence, T0 + 4 + i as i64, s.clone(), Some(r));
        prev = e.hash;
        let mut record = Vec::new();
        phb_store::logfile::encode_record(&e, &mut record);
        write(log, &format!("record-{name}"), &record[8..]);
    }
    println!("wrote seeds under {}", root.display());
}

trait IntoDomain {
    fn into_domain(self) -> SignedEvent;
}

impl IntoDomain for pb::SignedEvent {
    fn into_domain(self) -> SignedEvent {
        SignedEvent {
            event: self.event,
            signer_id: self.signer_id,
            signature: self.signature,
        }
    }
}
