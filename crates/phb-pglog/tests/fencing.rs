//! The shared log's guarantees against a real PostgreSQL server: one
//! writer, a fenced writer writes nothing, readers see only what is
//! confirmed, entries come back byte for byte.

#[path = "../../../src/bench/pgcluster.rs"]
mod pgcluster;

use phb_chain::{LogEntry, SignedEvent, GENESIS_HASH};
use phb_pglog::PgLog;
use phb_store::{Append, SharedLog, SharedLogError};

fn postgres() -> pgcluster::Cluster {
    let tools = pgcluster::find_or_install("phb-pglog tests")
        .unwrap_or_else(|e| panic!("PostgreSQL is needed for this test: {e:#}"));
    pgcluster::Cluster::start(tools).unwrap_or_else(|e| panic!("starting PostgreSQL: {e:#}"))
}

/// `n` chained entries after (`after`, `prev`), with event ids `id-<seq>`.
fn entries(after: u64, prev: [u8; 32], n: u64) -> Vec<(LogEntry, String)> {
    let mut prev = prev;
    (after + 1..=after + n)
        .map(|sequence| {
            let e = LogEntry::next(
                prev,
                sequence,
                1_700_000_000_000_000 + sequence as i64,
                SignedEvent {
                    event: format!("event {sequence}").into_bytes(),
                    signer_id: "payroll-co".into(),
                    signature: vec![7; 64],
                },
            );
            prev = e.hash;
            (e, format!("id-{sequence}"))
        })
        .collect()
}

fn appends(group: &[(LogEntry, String)]) -> Vec<Append<'_>> {
    group
        .iter()
        .map(|(entry, id)| Append {
            entry,
            event_id: id,
        })
        .collect()
}

fn rows(pg: &pgcluster::Cluster) -> u64 {
    pg.psql("SELECT count(*) FROM phb_log")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn one_writer_at_a_time_and_a_fenced_writer_writes_nothing() {
    let pg = postgres();
    let url = pg.url();
    let mut a = PgLog::new(&url, "ledger-x").unwrap();
    let mut b = PgLog::new(&url, "ledger-x").unwrap();

    let lead = a.try_lead("a:1").unwrap().expect("the role is free");
    assert_eq!((lead.sequence, lead.hash, lead.epoch), (0, GENESIS_HASH, 1));
    assert!(b.try_lead("b:1").unwrap().is_none(), "a holds the role");
    assert_eq!(b.confirmed().unwrap().writer.as_deref(), Some("a:1"));

    let first = entries(0, GENESIS_HASH, 3);
    a.commit(&appends(&first)).unwrap();
    // Committed, but a reader may copy it only once it is confirmed.
    assert_eq!(b.confirmed().unwrap().sequence, 0);
    a.confirm().unwrap();
    assert_eq!(b.confirmed().unwrap().sequence, 3);
    let read: Vec<LogEntry> = b.read(0, 3, 10).unwrap();
    assert_eq!(
        read,
        first.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>()
    );
    assert_eq!(b.read(1, 3, 1).unwrap(), vec![first[1].0.clone()]);

    // The next group's commit confirms the one before it.
    let second = entries(3, first[2].0.hash, 2);
    a.commit(&appends(&second)).unwrap();
    assert_eq!(b.confirmed().unwrap().sequence, 3);

    // Another writer took over (as after a failover, where the old
    // writer's lock was on the old primary): the epoch moved, and the
    // old writer's next group is refused whole.
    pg.psql("UPDATE phb_head SET epoch = epoch + 1").unwrap();
    let before = rows(&pg);
    let third = entries(5, second[1].0.hash, 2);
    match a.commit(&appends(&third)) {
        Err(SharedLogError::Fenced { epoch: 1, .. }) => {}
        other => panic!("a fenced writer's commit must be refused: {other:?}"),
    }
    assert_eq!(rows(&pg), before, "a fenced writer inserted nothing");

    // Its session is gone with the failure, so the role is free again:
    // taking it confirms everything committed.
    let lead = b.try_lead("b:1").unwrap().expect("the role is free");
    assert_eq!(
        (lead.sequence, lead.hash, lead.epoch),
        (5, second[1].0.hash, 3)
    );
    assert_eq!(a.confirmed().unwrap().sequence, 5);
    assert_eq!(a.confirmed().unwrap().writer.as_deref(), Some("b:1"));
    assert!(a.try_lead("a:1").unwrap().is_none());

    // A group that does not continue the head (a writer whose view is
    // stale) is refused too.
    let stale = entries(3, first[2].0.hash, 1);
    let mut stale_writer = PgLog::new(&url, "ledger-x").unwrap();
    assert!(matches!(
        stale_writer.commit(&appends(&stale)),
        Err(SharedLogError::Fenced { .. })
    ));
    b.commit(&appends(&third)).unwrap();
    assert_eq!(rows(&pg), 7);
}

#[test]
fn a_database_of_another_ledger_is_refused() {
    let pg = postgres();
    let url = pg.url();
    let mut a = PgLog::new(&url, "ledger-x").unwrap();
    a.confirmed().unwrap();
    let mut other = PgLog::new(&url, "ledger-y").unwrap();
    match other.confirmed() {
        Err(SharedLogError::Corrupt(why)) => assert!(why.contains("ledger-x"), "{why}"),
        other => panic!("expected a refusal: {other:?}"),
    }
}
