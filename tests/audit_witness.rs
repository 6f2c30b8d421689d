//! The partners' commands of the verifiable log through the real binary
//! (docs/audit.md, "Witnessing and proving"): `audit prove` of receipts
//! against the latest checkpoint and against one kept earlier, `audit
//! consistency` from an early checkpoint, `audit witness` keeping its state;
//! and the insider's attack the checkpoints exist for — the log's tail
//! removed (whole records, so the chain of what is left verifies), the
//! server's own evidence (checkpoints.notes, the index) deleted so it starts
//! cleanly, then a new tail appended — caught by the witness (rollback,
//! then fork at the same size, then fork past it) and by the receipts.

mod common;

use common::*;
use phb_client::{kinds, Signer};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_phb-ledger");
const ORIGIN: &str = "phb-ledger/phb-test";

/// A partner running `phb-ledger audit ...` against a test server.
struct Partner {
    dir: tempfile::TempDir,
    key_file: PathBuf,
    id: String,
    server: String,
    /// The ledger key as the operator hands it over: 64 hex.
    ledger_hex: String,
    /// The same key as a C2SP verifier key.
    ledger_vkey: String,
}

impl Partner {
    fn new(w: &World, reader: &Signer) -> Partner {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("reader.key");
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&key_file)
            .unwrap();
        writeln!(f, "{}", reader.secret_hex()).unwrap();
        let text = std::fs::read_to_string(w.server.data_dir().join("ledger.key")).unwrap();
        let key = Signer::from_secret_hex("ledger", &text)
            .unwrap()
            .public_key();
        Partner {
            dir,
            key_file,
            id: reader.id.clone(),
            server: format!("http://{}", w.server.addr),
            ledger_hex: hex::encode(key.as_bytes()),
            ledger_vkey: phb_chain::note::vkey(ORIGIN, &key).unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `phb-ledger audit {sub} --server .. --signer .. --key .. {args}`.
    fn run(&self, sub: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("audit")
            .arg(sub)
            .args(["--server", &self.server, "--signer", &self.id, "--key"])
            .arg(&self.key_file)
            .args(args)
            .env_remove("PHB_DATA")
            .env_remove("PHB_LEDGER_DATA")
            .env_remove("PHB_LEDGER_CONFIG")
            .output()
            .expect("running phb-ledger audit")
    }

    fn ok(&self, sub: &str, args: &[&str]) -> String {
        let out = self.run(sub, args);
        let (stdout, stderr) = texts(&out);
        assert!(
            out.status.success(),
            "audit {sub} {args:?} failed:\n{stdout}\n{stderr}"
        );
        stdout
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, sub: &str, args: &[&str]) -> String {
        let out = self.run(sub, args);
        let (stdout, stderr) = texts(&out);
        assert!(
            !out.status.success(),
            "audit {sub} {args:?} was expected to fail:\n{stdout}\n{stderr}"
        );
        stderr
    }

    fn witness(&self, state: &Path) -> Output {
        let state = state.to_str().unwrap();
        self.run(
            "witness",
            &[
                "--ledger-key",
                &self.ledger_vkey,
                "--state",
                state,
                "--once",
            ],
        )
    }
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A kept receipt: the AppendResult's sequence, entry hash (hex) and tree size.
struct Receipt {
    sequence: u64,
    entry_hash: String,
    tree_size: u64,
}

async fn buy(w: &World, budget: &str, tag: &str) -> Receipt {
    let tp = w.third_party.clone();
    let r = w
        .append(&tp, budget, kinds::buy("1.00", "equipment", tag, "kit"))
        .await;
    let sequence = assert_written(&r);
    assert_eq!(r.tree_size, sequence, "{r:?}");
    Receipt {
        sequence,
        entry_hash: hex::encode(&r.entry_hash),
        tree_size: r.tree_size,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prove_receipts_and_consistency_from_an_early_checkpoint() {
    let w = World::new().await;
    let b = "prove-1";
    w.open_third_party(b).await;
    w.fund(b, "500.00", Some("500.00")).await;
    let p = Partner::new(&w, &w.payroll);
    let (hex_key, vkey) = (p.ledger_hex.clone(), p.ledger_vkey.clone());

    // An early checkpoint, saved by the first proof.
    let early = p.path("early.checkpoint");
    let early_s = early.to_str().unwrap();
    let out = p.ok(
        "prove",
        &[
            "--ledger-key",
            &hex_key,
            "--sequence",
            "1",
            "--save",
            early_s,
        ],
    );
    let early_size = w.log_len().await;
    assert!(
        out.contains("proved: entry 1 ")
            && out.contains(&format!("checkpoint {early_size} of {ORIGIN}")),
        "{out}"
    );

    // Receipts kept by the payer, then the ledger grows past them.
    let mut receipts = Vec::new();
    for i in 0..6 {
        receipts.push(buy(&w, b, &format!("s-{i}")).await);
    }
    for i in 0..5 {
        buy(&w, b, &format!("t-{i}")).await;
    }
    let head = w.log_len().await;

    // Each receipt against the latest checkpoint, which is later than it,
    // with the key in either form.
    for (i, r) in receipts.iter().enumerate() {
        assert!(r.tree_size < head);
        let key = if i % 2 == 0 { &hex_key } else { &vkey };
        let seq = r.sequence.to_string();
        let out = p.ok(
            "prove",
            &[
                "--ledger-key",
                key,
                "--sequence",
                &seq,
                "--entry-hash",
                &r.entry_hash,
            ],
        );
        assert!(
            out.contains(&format!(
                "proved: entry {seq} (entry hash {})",
                r.entry_hash
            )) && out.contains(&format!("checkpoint {head} of {ORIGIN}"))
                && out.contains("receipt: the entry hash is the one you kept"),
            "{out}"
        );
    }
    // Every entry of the early checkpoint, proved in that checkpoint (one
    // the auditor already trusts), with --ledger-id given.
    for s in 1..=early_size {
        let seq = s.to_string();
        let out = p.ok(
            "prove",
            &[
                "--ledger-key",
                &hex_key,
                "--ledger-id",
                LEDGER_ID,
                "--sequence",
                &seq,
                "--checkpoint",
                early_s,
            ],
        );
        assert!(
            out.contains(&format!("checkpoint {early_size} of {ORIGIN}")),
            "{out}"
        );
    }
    // A receipt later than the kept checkpoint is not in it.
    let r = &receipts[0];
    let seq = r.sequence.to_string();
    let err = p.fails(
        "prove",
        &[
            "--ledger-key",
            &vkey,
            "--sequence",
            &seq,
            "--checkpoint",
            early_s,
        ],
    );
    assert!(
        err.contains(&format!("entry {seq} is not in checkpoint {early_size}")),
        "{err}"
    );
    // Another entry hash than the ledger holds: refused, naming both.
    let wrong = receipts[1].entry_hash.clone();
    let err = p.fails(
        "prove",
        &[
            "--ledger-key",
            &vkey,
            "--sequence",
            &seq,
            "--entry-hash",
            &wrong,
        ],
    );
    assert!(
        err.contains(&format!("has entry hash {}, not {wrong}", r.entry_hash)),
        "{err}"
    );
    let err = p.fails(
        "prove",
        &[
            "--ledger-key",
            &vkey,
            "--sequence",
            &seq,
            "--entry-hash",
            "abc",
        ],
    );
    assert!(err.contains("--entry-hash must be 64 hex"), "{err}");
    // Past the head.
    let beyond = (head + 50).to_string();
    let err = p.fails("prove", &["--ledger-key", &vkey, "--sequence", &beyond]);
    assert!(err.contains(&format!("entry {beyond} is not in")), "{err}");

    // Consistency from the early checkpoint to the latest; the latest saved.
    let later = p.path("later.checkpoint");
    let later_s = later.to_str().unwrap();
    let out = p.ok(
        "consistency",
        &["--ledger-key", &vkey, "--from", early_s, "--save", later_s],
    );
    assert!(
        out.contains(&format!("checkpoint {head} of {ORIGIN} (root"))
            && out.contains(&format!("extends checkpoint {early_size} of {ORIGIN}"))
            && out.contains("consistency proof of"),
        "{out}"
    );
    // From the latest itself: the same checkpoint.
    let out = p.ok(
        "consistency",
        &["--ledger-key", &hex_key, "--from", later_s],
    );
    assert!(out.contains("same size, same root"), "{out}");
    // The server's copy of the early checkpoint is the one saved.
    let kept = checkpoint_note(&w, early_size).await;
    assert_eq!(std::fs::read_to_string(&early).unwrap(), kept);

    // A kept checkpoint altered (its size line) no longer verifies.
    let text = std::fs::read_to_string(&early).unwrap();
    let forged = text.replacen(
        &format!("\n{early_size}\n"),
        &format!("\n{}\n", early_size + 1),
        1,
    );
    assert_ne!(forged, text);
    let forged_path = p.path("forged.checkpoint");
    std::fs::write(&forged_path, forged).unwrap();
    let err = p.fails(
        "consistency",
        &[
            "--ledger-key",
            &vkey,
            "--from",
            forged_path.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("is not a checkpoint of this ledger signed by the ledger key")
            && err.contains("does not verify"),
        "{err}"
    );
    let err = p.fails(
        "prove",
        &[
            "--ledger-key",
            &vkey,
            "--sequence",
            "1",
            "--checkpoint",
            forged_path.to_str().unwrap(),
        ],
    );
    assert!(err.contains("does not verify"), "{err}");
    // A missing file.
    let err = p.fails(
        "consistency",
        &[
            "--ledger-key",
            &vkey,
            "--from",
            p.path("nope").to_str().unwrap(),
        ],
    );
    assert!(err.contains("no such file"), "{err}");

    // Bad ledger keys are refused: another key (hex or verifier key), a
    // malformed one, another ledger id.
    let other = Signer::generate("x").public_key();
    let other_hex = hex::encode(other.as_bytes());
    let other_vkey = phb_chain::note::vkey(ORIGIN, &other).unwrap();
    for key in [&other_hex, &other_vkey] {
        let err = p.fails("prove", &["--ledger-key", key, "--sequence", "1"]);
        assert!(
            err.contains("the server's latest checkpoint is not a checkpoint of this ledger signed by the ledger key")
                && err.contains("is not signed by key"),
            "{err}"
        );
        let err = p.fails("consistency", &["--ledger-key", key, "--from", early_s]);
        assert!(err.contains("is not signed by key"), "{err}");
    }
    for key in ["zz", "abcd", &format!("{vkey}x"), &hex_key[..62]] {
        let err = p.fails("prove", &["--ledger-key", key, "--sequence", "1"]);
        assert!(err.contains("--ledger-key is neither"), "{key}: {err}");
    }
    let err = p.fails(
        "prove",
        &[
            "--ledger-key",
            &hex_key,
            "--ledger-id",
            "other",
            "--sequence",
            "1",
        ],
    );
    assert!(err.contains("checkpoint origin is"), "{err}");
    let err = p.fails(
        "prove",
        &[
            "--ledger-key",
            &vkey,
            "--ledger-id",
            "other",
            "--sequence",
            "1",
        ],
    );
    assert!(err.contains("the verifier key is for"), "{err}");
    // The witness too: a state kept under the right key is refused under another.
    let state = p.path("witness");
    let state_s = state.to_str().unwrap();
    p.ok(
        "witness",
        &["--ledger-key", &vkey, "--state", state_s, "--once"],
    );
    let err = p.fails(
        "witness",
        &["--ledger-key", &other_hex, "--state", state_s, "--once"],
    );
    assert!(
        err.contains("the witness's kept checkpoint in") && err.contains("is not signed by key"),
        "{err}"
    );
    // A stranger's read calls are refused.
    let stranger = Partner::new(&w, &Signer::generate("stranger"));
    let err = stranger.fails("prove", &["--ledger-key", &vkey, "--sequence", "1"]);
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
}

/// The note of the server's checkpoint at `size`.
async fn checkpoint_note(w: &World, size: u64) -> String {
    let req = w.auditor.request(
        phb_client::methods::GET_CHECKPOINT,
        phb_proto::v1::GetCheckpointRequest { tree_size: size },
    );
    w.client
        .clone()
        .get_checkpoint(req)
        .await
        .unwrap()
        .into_inner()
        .checkpoint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_removed_and_the_chain_recomputed_is_caught_by_the_witness_and_by_receipts() {
    let mut w = World::new().await;
    let b = "witnessed";
    w.open_third_party(b).await;
    w.fund(b, "500.00", Some("500.00")).await;
    let mut p = Partner::new(&w, &w.third_party);
    let state = p.path("witness-state");
    let state_file = state.join("checkpoint");

    // First round: trusted on first use; the same head again: unchanged.
    let mut receipts = Vec::new();
    for i in 0..4 {
        receipts.push(buy(&w, b, &format!("a-{i}")).await);
    }
    let first = w.log_len().await;
    let out = p.witness(&state);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("kept checkpoint {first} of {ORIGIN}"))
            && stdout.contains("trusted on first use"),
        "{stdout}"
    );
    let out = p.witness(&state);
    assert!(out.status.success(), "{:?}", texts(&out));
    assert!(texts(&out).0.contains("unchanged"), "{:?}", texts(&out));

    // The ledger grows; the witness proves the new head extends the kept one.
    for i in 0..5 {
        receipts.push(buy(&w, b, &format!("b-{i}")).await);
    }
    let head = w.log_len().await;
    let out = p.witness(&state);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("kept checkpoint {head} of {ORIGIN}"))
            && stdout.contains(&format!("extends checkpoint {first} of {ORIGIN}")),
        "{stdout}"
    );
    let kept = std::fs::read(&state_file).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&kept),
        checkpoint_note(&w, head).await
    );
    // The receipts all prove against the kept checkpoint now.
    let state_cp = state_file.to_str().unwrap().to_string();
    for r in &receipts {
        let seq = r.sequence.to_string();
        p.ok(
            "prove",
            &[
                "--ledger-key",
                &p.ledger_hex,
                "--sequence",
                &seq,
                "--entry-hash",
                &r.entry_hash,
                "--checkpoint",
                &state_cp,
            ],
        );
    }

    // The insider: stop the server, cut the last three records (whole
    // records: what is left is a valid chain), delete the evidence the
    // server keeps (checkpoints.notes, the index), start it again.
    assert!(w.server.terminate(Duration::from_secs(10)).is_some());
    let data = w.server.data_dir();
    let log_path = logfile::log_path(&data);
    let bytes = std::fs::read(&log_path).unwrap();
    let spans = logfile::spans(&bytes);
    assert_eq!(spans.len() as u64, head);
    let cut = spans[spans.len() - 3];
    std::fs::write(&log_path, &bytes[..cut.offset as usize]).unwrap();
    std::fs::remove_file(data.join("checkpoints.notes")).unwrap();
    std::fs::remove_dir_all(data.join("index")).unwrap();
    w.server.start_again();
    w.reconnect().await;
    p.server = format!("http://{}", w.server.addr); // a new port
    assert_eq!(w.log_len().await, head - 3, "the server starts cleanly");
    let removed: Vec<&Receipt> = receipts.iter().filter(|r| r.sequence > head - 3).collect();
    assert_eq!(removed.len(), 3);

    // Rollback: the server now signs a smaller tree.
    let refused = |out: &Output, what: &str| {
        let (stdout, stderr) = texts(out);
        assert!(
            !out.status.success(),
            "the witness accepted a {what}:\n{stdout}\n{stderr}"
        );
        assert_eq!(
            std::fs::read(&state_file).unwrap(),
            kept,
            "the kept state must not be replaced on a {what}"
        );
        assert!(
            stderr.contains(&format!("checkpoint {head} of {ORIGIN}"))
                && stderr.contains("was not replaced"),
            "{stderr}"
        );
        stderr
    };
    let stderr = refused(&witness_at(&p, &w, &state), "rollback");
    assert!(
        stderr.contains("ROLLBACK")
            && stderr.contains(&format!("checkpoint {} of {ORIGIN}", head - 3)),
        "{stderr}"
    );

    // A new tail of the same length: a fork at the same size.
    for i in 0..3 {
        buy(&w, b, &format!("c-{i}")).await;
    }
    assert_eq!(w.log_len().await, head);
    let stderr = refused(&witness_at(&p, &w, &state), "fork at the same size");
    assert!(
        stderr.contains("FORK") && stderr.contains("another root for the same number of entries"),
        "{stderr}"
    );

    // Longer than the kept one: the consistency proof fails.
    for i in 0..4 {
        buy(&w, b, &format!("d-{i}")).await;
    }
    let now = w.log_len().await;
    assert_eq!(now, head + 4);
    let stderr = refused(&witness_at(&p, &w, &state), "fork past the kept size");
    assert!(
        stderr.contains("FORK")
            && stderr.contains(&format!("checkpoint {now} of {ORIGIN}"))
            && stderr.contains("does not extend")
            && stderr.contains("the consistency proof between them does not verify"),
        "{stderr}"
    );
    // The refused checkpoints are kept as evidence beside the state.
    let evidence: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("refused-"))
        .collect();
    assert_eq!(evidence.len(), 3, "{evidence:?}");
    // And `audit consistency` from the kept checkpoint says the same.
    let err = p.fails(
        "consistency",
        &["--ledger-key", &p.ledger_vkey, "--from", &state_cp],
    );
    assert!(err.contains("FORK"), "{err}");

    // The receipts: a removed entry's receipt fails against the latest
    // checkpoint (another entry has its sequence now) and against the kept one.
    for r in &removed {
        let seq = r.sequence.to_string();
        let err = p.fails(
            "prove",
            &[
                "--ledger-key",
                &p.ledger_vkey,
                "--sequence",
                &seq,
                "--entry-hash",
                &r.entry_hash,
            ],
        );
        assert!(
            err.contains(&format!("entry {seq} in checkpoint {now} of {ORIGIN}"))
                && err.contains(&format!("not {} as your receipt says", r.entry_hash)),
            "{err}"
        );
        let err = p.fails(
            "prove",
            &[
                "--ledger-key",
                &p.ledger_vkey,
                "--sequence",
                &seq,
                "--entry-hash",
                &r.entry_hash,
                "--checkpoint",
                &state_cp,
            ],
        );
        assert!(
            err.contains(&format!(
                "the inclusion proof of entry {seq} does not verify against checkpoint {head} of {ORIGIN}"
            )),
            "{err}"
        );
    }
    // A receipt for an entry that survived still proves in the latest
    // checkpoint, but no entry proves in the kept one any more: the tree it
    // signed for is gone.
    let survivor = &receipts[0];
    let seq = survivor.sequence.to_string();
    p.ok(
        "prove",
        &[
            "--ledger-key",
            &p.ledger_vkey,
            "--sequence",
            &seq,
            "--entry-hash",
            &survivor.entry_hash,
        ],
    );
    let err = p.fails(
        "prove",
        &[
            "--ledger-key",
            &p.ledger_vkey,
            "--sequence",
            &seq,
            "--entry-hash",
            &survivor.entry_hash,
            "--checkpoint",
            &state_cp,
        ],
    );
    assert!(err.contains("does not verify against"), "{err}");

    // What the witness is for: one that starts afresh now has nothing to
    // compare with and accepts the rewritten ledger.
    let out = p.witness(&p.path("fresh-state"));
    assert!(out.status.success(), "{:?}", texts(&out));
    assert!(texts(&out).0.contains("trusted on first use"));
}

/// One witness round against the server where it listens now.
fn witness_at(p: &Partner, w: &World, state: &Path) -> Output {
    assert_eq!(p.server, format!("http://{}", w.server.addr));
    p.witness(state)
}
