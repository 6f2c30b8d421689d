//! Append throughput and latency of the write path, against a peer in the same run.
//!
//! Workload: signed 0.01 payments on one well-funded third-party budget, by
//! C concurrent submitters, each event durable before it is acknowledged.
//!
//! * `phb-engine, C=1`: no concurrency, so every event pays its own fdatasync.
//! * `phb-engine, C=64`: group commit: concurrent appends share one fdatasync.
//! * peer `sled insert+flush`: the same events stored in a sled 0.34 tree
//!   with `flush()` after each (what "just use sled" would do; note sled's
//!   flush is not even a real fsync — sled #1452).
//! * peer `file write+fdatasync`: append each event to a file and fdatasync it:
//!   the floor for one-sync-per-event designs.
//!
//! Then the auditor's side, on the log the C=64 run wrote:
//!
//! * `restart: verify + replay`: `Engine::open` on that data directory —
//!   every CRC, the hash chain, every signature re-verified, every rule
//!   re-decided, every projection and the Merkle tree rebuilt, the kept
//!   checkpoints checked: what an auditor's full replay costs per entry.
//! * peers `ed25519 verify, one by one` and `ed25519 verify_batch`: the
//!   signatures alone, the two ways a verifier can check them.
//!
//! Run: `cargo bench --bench append` (EVENTS=N to change the count).

use phb_client::{event, kinds, Kind, Signer};
use phb_domain::chain::SignedEvent;
use phb_engine::{Engine, EngineConfig, Outcome, Submission};
use phb_proto::v1 as pb;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEDGER: &str = "bench";

fn to_domain(s: pb::SignedEvent) -> SignedEvent {
    SignedEvent {
        event: s.event,
        signer_id: s.signer_id,
        signature: s.signature,
    }
}

struct Figures {
    name: String,
    events: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    /// A one-shot measurement: the count, the rate and the total time.
    fn print_total(&self) {
        println!(
            "{:<34} {:>8} {:>12.0} {:>10.1}",
            self.name,
            self.events,
            self.events as f64 / self.elapsed.as_secs_f64(),
            self.elapsed.as_secs_f64() * 1e3
        );
    }

    fn print(&mut self) {
        self.latencies.sort();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
            self.latencies[i].as_secs_f64() * 1e3
        };
        println!(
            "{:<34} {:>8} {:>12.0} {:>10.3} {:>10.3} {:>10.3}",
            self.name,
            self.events,
            self.events as f64 / self.elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
}

/// A care plan with one respite line, in force from 2026 to 2099 (spending
/// needs a plan in force with a line for its category).
fn bench_plan() -> Kind {
    let mut k = kinds::plan(
        "plan",
        &[("respite", "respite", "1000000.00", "respite")],
        "0.00",
    );
    if let Kind::CarePlanApproved(p) = &mut k {
        p.valid_to = "2099-12-31".into();
    }
    k
}

/// The agreement every benchmark payment is made under: 0.01 an item, no
/// weekly limit (a provider is paid only under one).
fn bench_agreement() -> Kind {
    let mut k = kinds::agreement("agr", "prov", "respite", "0.01", 0);
    if let Kind::ServiceAgreementApproved(a) = &mut k {
        a.payee_kind = pb::PayeeKind::Provider as i32;
        a.payee_sector = pb::Sector::Independent as i32;
        a.unit = pb::Unit::Item as i32;
        a.valid_to = "2099-12-31".into();
    }
    k
}

/// One 0.01 payment under the agreement, for an item given on 2026-04-01.
fn bench_payment() -> Kind {
    Kind::Payment(pb::Payment {
        amount: "0.01".into(),
        payee_kind: pb::PayeeKind::Provider as i32,
        payee_ref: "prov".into(),
        category: "respite".into(),
        agreement_id: "agr".into(),
        units: "1".into(),
        service_from: "2026-04-01".into(),
        service_to: "2026-04-01".into(),
        ..Default::default()
    })
}

async fn setup(dir: &std::path::Path) -> (Engine, Signer, Vec<pb::SignedEvent>, usize) {
    let root = bench_root();
    let icb = Signer::generate("icb");
    let tp = Signer::generate("tp");
    let (engine, _) = Engine::open(EngineConfig {
        data_dir: dir.to_path_buf(),
        ledger_id: LEDGER.into(),
        root_key: root.public_key(),
        allow_index_rebuild: false,
        ledger_key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        checkpoint_origin: "phb-ledger/bench".into(),
        checkpoint_every: 1000,
        snapshot_every: phb_engine::DEFAULT_SNAPSHOT_EVERY,
        verify_full: true,
    })
    .expect("open engine");
    let setup = vec![
        root.sign(&event(
            LEDGER,
            "r1",
            "",
            kinds::register(
                "icb",
                &[pb::Role::Commissioner],
                &icb.public_key().to_bytes(),
            ),
        )),
        root.sign(&event(
            LEDGER,
            "r2",
            "",
            kinds::register("tp", &[pb::Role::ThirdParty], &tp.public_key().to_bytes()),
        )),
        icb.sign(&event(
            LEDGER,
            "o",
            "b",
            kinds::open("h", "icb", pb::Management::ThirdParty, "tp", ""),
        )),
        icb.sign(&event(
            LEDGER,
            "a",
            "b",
            kinds::allocate("1000000.00", pb::AllocationBasis::OneOff),
        )),
        icb.sign(&event(LEDGER, "d", "b", kinds::disburse("1000000.00"))),
        icb.sign(&event(LEDGER, "p", "b", bench_plan())),
        icb.sign(&event(LEDGER, "g", "b", bench_agreement())),
    ];
    let subs = setup
        .into_iter()
        .map(|s| Submission {
            signed: to_domain(s),
            verified_key: None,
        })
        .collect();
    let out = engine.append(subs, true).await;
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Written { .. })),
        "setup failed: {out:?}"
    );
    let n: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let events = (0..n)
        .map(|i| tp.sign(&event(LEDGER, &format!("p{i}"), "b", bench_payment())))
        .collect();
    (engine, tp, events, n)
}

/// The root key of every run (fixed, so a run's log can be reopened).
fn bench_root() -> Signer {
    Signer::from_secret("root", [1; 32])
}

async fn run_engine(concurrency: usize) -> (Figures, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _tp, events, n) = setup(dir.path()).await;
    let queue = Arc::new(std::sync::Mutex::new(events));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let engine = engine.clone();
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let Some(ev) = queue.lock().expect("queue").pop() else {
                    break;
                };
                let t = Instant::now();
                let out = engine.submit(vec![to_domain(ev)], false).await;
                assert!(matches!(out[0], Outcome::Written { .. }), "{out:?}");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("task"));
    }
    let elapsed = start.elapsed();
    assert_eq!(
        engine.view().budget("b").expect("budget").spent.to_string(),
        format!("{}.{:02}", n / 100, n % 100)
    );
    (
        Figures {
            name: format!("phb-engine, C={concurrency}"),
            events: n,
            elapsed,
            latencies,
        },
        dir,
    )
}

/// `Engine::open` on a data directory a run wrote (and has let go of).
fn run_restart(dir: &std::path::Path, root: ed25519_dalek::VerifyingKey) -> Figures {
    let config = || EngineConfig {
        data_dir: dir.to_path_buf(),
        ledger_id: LEDGER.into(),
        root_key: root,
        allow_index_rebuild: false,
        ledger_key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        checkpoint_origin: "phb-ledger/bench".into(),
        checkpoint_every: 1000,
        snapshot_every: phb_engine::DEFAULT_SNAPSHOT_EVERY,
        verify_full: true,
    };
    // The writer thread of the run lets the directory's lock go when it
    // ends, a moment after its last handle is dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let start = Instant::now();
        match Engine::open(config()) {
            Ok((_engine, report)) => {
                let elapsed = start.elapsed();
                return Figures {
                    name: "restart: verify + replay".into(),
                    events: report.entries as usize,
                    elapsed,
                    latencies: vec![elapsed],
                };
            }
            Err(phb_engine::OpenError::Lock(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("reopening: {e}"),
        }
    }
}

/// The events' signatures checked one by one, and as one batch.
fn run_signature_peers(
    events: &[pb::SignedEvent],
    key: &ed25519_dalek::VerifyingKey,
) -> [Figures; 2] {
    let sigs: Vec<ed25519_dalek::Signature> = events
        .iter()
        .map(|e| ed25519_dalek::Signature::from_slice(&e.signature).expect("64 bytes"))
        .collect();
    let start = Instant::now();
    for (e, sig) in events.iter().zip(&sigs) {
        key.verify_strict(&e.event, sig).expect("valid");
    }
    let one = start.elapsed();
    let msgs: Vec<&[u8]> = events.iter().map(|e| e.event.as_slice()).collect();
    let keys = vec![*key; events.len()];
    let start = Instant::now();
    ed25519_dalek::verify_batch(&msgs, &sigs, &keys).expect("valid");
    let batch = start.elapsed();
    let f = |name: &str, elapsed| Figures {
        name: name.into(),
        events: events.len(),
        elapsed,
        latencies: vec![elapsed],
    };
    [
        f("peer: ed25519 verify, one by one", one),
        f("peer: ed25519 verify_batch", batch),
    ]
}

fn run_sled_peer(events: &[pb::SignedEvent]) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::open(dir.path()).expect("sled");
    let start = Instant::now();
    let mut latencies = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let t = Instant::now();
        db.insert((i as u64).to_be_bytes(), e.event.as_slice())
            .expect("insert");
        db.flush().expect("flush");
        latencies.push(t.elapsed());
    }
    Figures {
        name: "peer: sled insert+flush".into(),
        events: events.len(),
        elapsed: start.elapsed(),
        latencies,
    }
}

fn run_file_peer(events: &[pb::SignedEvent]) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = std::fs::File::create(dir.path().join("log")).expect("file");
    let start = Instant::now();
    let mut latencies = Vec::new();
    for e in events {
        let t = Instant::now();
        f.write_all(&(e.event.len() as u32).to_be_bytes())
            .expect("write");
        f.write_all(&e.event).expect("write");
        f.sync_data().expect("fdatasync");
        latencies.push(t.elapsed());
    }
    Figures {
        name: "peer: file write+fdatasync".into(),
        events: events.len(),
        elapsed: start.elapsed(),
        latencies,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{:<34} {:>8} {:>12} {:>10} {:>10} {:>10}",
        "write path", "events", "events/s", "p50 ms", "p99 ms", "max ms"
    );
    let (mut one, _) = rt.block_on(run_engine(1));
    one.print();
    let (mut many, written) = rt.block_on(run_engine(64));
    many.print();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_engine, tp, events, _) = rt.block_on(setup(dir.path()));
    run_sled_peer(&events).print();
    run_file_peer(&events).print();
    println!(
        "\n{:<34} {:>8} {:>12} {:>10}",
        "verification", "entries", "entries/s", "total ms"
    );
    run_restart(written.path(), bench_root().public_key()).print_total();
    for f in run_signature_peers(&events, &tp.public_key()) {
        f.print_total();
    }
    println!(
        "group commit speed-up over one fsync per event: {:.1}x",
        (many.events as f64 / many.elapsed.as_secs_f64())
            / (one.events as f64 / one.elapsed.as_secs_f64())
    );
}
