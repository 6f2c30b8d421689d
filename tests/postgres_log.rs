//! The PostgreSQL log backend (docs/high-availability.md), short form: one
//! real PostgreSQL server (Debian's, started in a temporary directory), two
//! real `phb-ledger serve` instances sharing it, real gRPC. The long form —
//! a Patroni cluster with synchronous replication and faults injected into
//! PostgreSQL itself — is deploy/ha/fault-test.sh.
//!
//! Needs PostgreSQL's server programs (`/usr/lib/postgresql/*/bin`); as root
//! the test installs Debian's `postgresql` package when they are missing,
//! as `.ci/run` does.

mod common;
#[path = "../src/bench/pgcluster.rs"]
mod pgcluster;

use common::*;
use phb_proto::v1 as pb;
use std::time::{Duration, Instant};
use tonic::Code;

const WRITER_SERVICE: &str = "phb.ledger.v1.LedgerService/Append";

fn postgres() -> pgcluster::Cluster {
    let tools = pgcluster::find_or_install("tests/postgres_log.rs")
        .unwrap_or_else(|e| panic!("PostgreSQL is needed for this test: {e:#}"));
    pgcluster::Cluster::start(tools).unwrap_or_else(|e| panic!("starting PostgreSQL: {e:#}"))
}

/// An instance on the shared log at `url`, advertising `name`. `first`
/// gives the ledger key (every instance signs the same checkpoints) and the
/// root key of the instance started first.
fn instance(url: &str, name: &str, first: Option<&Server>) -> Server {
    let mut s = Server::prepare(ServerOptions {
        root: first.map(|f| f.root.clone()),
        env: vec![
            ("PHB_LEDGER_LOG_BACKEND".into(), "postgres".into()),
            ("PHB_LEDGER_LOG_POSTGRES_URL".into(), url.into()),
            ("PHB_LEDGER_LOG_ADVERTISE".into(), name.into()),
        ],
        ..ServerOptions::default()
    });
    if let Some(f) = first {
        let data = s.data_dir();
        std::fs::create_dir_all(&data).unwrap();
        std::fs::copy(f.data_dir().join("ledger.key"), data.join("ledger.key")).unwrap();
    }
    if let Err(f) = s.try_start_again() {
        panic!("instance {name} did not start: {}\n{}", f.reason, f.stderr);
    }
    s
}

/// The health of the writer service on `server`: SERVING (1) only while it
/// holds the writer role.
async fn writes(server: &Server) -> bool {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: WRITER_SERVICE.into(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == 1)
}

/// Waits until `server` holds the writer role (`writer`) or does not;
/// answers how long that took.
async fn wait_for_role(server: &Server, writer: bool, within: Duration) -> Duration {
    let started = Instant::now();
    while writes(server).await != writer {
        assert!(
            started.elapsed() < within,
            "{} within {within:?}; stderr:\n{}",
            if writer {
                "no writer role"
            } else {
                "it still claims the writer role"
            },
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn wait_until_writer(server: &Server, within: Duration) -> Duration {
    wait_for_role(server, true, within).await
}

/// The first instance on an empty shared log, once it holds the writer role.
async fn first_writer(url: &str, name: &str) -> Server {
    let s = instance(url, name, None);
    wait_until_writer(&s, Duration::from_secs(30)).await;
    s
}

/// Waits until `reader`'s log reaches `len` entries.
async fn wait_for_len(reader: &World, len: u64) {
    let started = Instant::now();
    loop {
        // As root: the reader may not have copied the auditor's
        // registration yet.
        let have = read_log(&reader.client, &reader.server.root, 1)
            .await
            .last()
            .map_or(0, |e| e.sequence);
        if have >= len {
            assert_eq!(have, len, "the reader copied more than the writer wrote");
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the reader has {have} of {len} entries after 30 s; stderr:\n{}",
            reader.server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Both instances answer exactly the same log and balances.
async fn assert_same(a: &World, b: &World) {
    let (la, lb) = (a.log().await, b.log().await);
    assert_eq!(la.len(), lb.len());
    assert_eq!(la, lb, "the two instances' logs differ");
    assert_eq!(a.all_balances().await, b.all_balances().await);
    audit_log(&la, &a.server.root.public_key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_log_and_fail_over_without_losing_an_acknowledged_event() {
    let pg = postgres();
    let url = pg.url();
    let wa = World::with_server(first_writer(&url, "ledger-a.test:50051").await).await;
    wa.open_direct("b-1").await;
    wa.fund("b-1", "1000.00", Some("900.00")).await;
    let paid = wa
        .pay(
            &wa.payroll,
            "b-1",
            "12.34",
            pb::PayeeKind::PersonalAssistant,
            "pa-1",
            "personal_assistant",
        )
        .await;

    // A second instance copies the log and serves the same answers.
    let b = instance(&url, "ledger-b.test:50051", Some(&wa.server));
    let wb = World::attach(b, &wa).await;
    wait_for_len(&wb, wa.log_len().await).await;
    assert_same(&wa, &wb).await;
    assert!(!writes(&wb.server).await, "only one instance writes");

    // An append sent to the reader is refused, naming the writer.
    let e = wb.sign(&wb.commissioner, "b-1", phb_client::kinds::disburse("1.00"));
    let refused = wb
        .client
        .clone()
        .append(pb::AppendRequest {
            events: vec![e],
            atomic: false,
        })
        .await
        .expect_err("a reader refuses appends");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused
            .metadata()
            .get("x-phb-writer")
            .and_then(|v| v.to_str().ok()),
        Some("ledger-a.test:50051"),
        "{refused:?}"
    );
    assert!(
        refused.message().contains("ledger-a.test:50051"),
        "{refused:?}"
    );

    // An event acknowledged by the writer, then the writer killed: the
    // reader takes the role, and a retry of the same signed event is
    // answered as the duplicate it is, at its acknowledged sequence.
    let last = wa.sign(&wa.commissioner, "b-1", phb_client::kinds::disburse("2.00"));
    let acked = assert_written(&wa.append_signed(last.clone()).await);
    wa.server.kill();
    let outage = wait_until_writer(&wb.server, Duration::from_secs(30)).await;
    eprintln!("writer role taken over {outage:?} after the writer was killed");
    let again = wb.append_signed(last).await;
    assert_eq!(result_code(&again), 0, "{again:?}");
    assert!(again.duplicate, "the retry is a duplicate: {again:?}");
    assert_eq!(again.sequence, acked);
    assert_eq!(wb.log_len().await, acked, "nothing acknowledged was lost");
    let after = wb
        .pay(
            &wb.payroll,
            "b-1",
            "1.00",
            pb::PayeeKind::PersonalAssistant,
            "pa-1",
            "personal_assistant",
        )
        .await;
    assert_eq!(after, acked + 1);
    assert!(paid < acked);

    // The old writer comes back as a reader and copies what it missed.
    let mut a = wa;
    a.server.start_again();
    a.reconnect().await;
    wait_for_len(&a, after).await;
    assert!(
        !writes(&a.server).await,
        "the old writer came back as a reader"
    );
    assert_same(&a, &wb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_refuses_a_database_that_holds_another_ledger() {
    let pg = postgres();
    let url = pg.url();
    let a = first_writer(&url, "a.test:1").await;
    // The database now says it holds another ledger's log: an instance of
    // this ledger must neither copy nor write anything, and must say why.
    pg.psql("UPDATE phb_head SET ledger_id = 'another-ledger'")
        .expect("psql");
    let b = instance(&url, "b.test:1", Some(&a));
    let started = Instant::now();
    loop {
        let said = b.stderr();
        if said.contains("holds the log of ledger \"another-ledger\"") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no complaint about the other ledger's database:\n{said}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!writes(&b).await);
    assert_eq!(
        b.health().await.expect("health answers"),
        2,
        "NOT_SERVING: it stopped following"
    );
}

/// A writer that stops answering without dying (SIGSTOP: its kernel still
/// answers TCP keepalives, so its session looks alive) loses the role once
/// the server ends its idle session; a reader takes over, and the old
/// writer, resumed, finds it is a reader now and copies what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_writer_loses_the_role_to_a_reader() {
    let pg = postgres();
    let url = pg.url();
    let wa = World::with_server(first_writer(&url, "ledger-a.test:1").await).await;
    wa.open_direct("b-1").await;
    let b = instance(&url, "ledger-b.test:1", Some(&wa.server));
    let wb = World::attach(b, &wa).await;
    wait_for_len(&wb, wa.log_len().await).await;
    let pid = wa.server.pid().expect("the writer runs") as i32;
    let signal = |sig| {
        // SAFETY: kill(2) on our own child's pid; no memory involved.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    };
    signal(libc::SIGSTOP);
    let outage = wait_until_writer(&wb.server, Duration::from_secs(60)).await;
    eprintln!("a reader took the role {outage:?} after the writer froze");
    let seq = wb
        .ok(
            &wb.commissioner,
            "b-1",
            phb_client::kinds::allocate("5.00", pb::AllocationBasis::NeedsBased),
        )
        .await;
    signal(libc::SIGCONT);
    wait_for_role(&wa.server, false, Duration::from_secs(30)).await;
    wait_for_len(&wa, seq).await;
    assert_same(&wa, &wb).await;
}
