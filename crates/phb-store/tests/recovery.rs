//! Recovery of the log file against real files on disk: torn tails are cut,
//! damage in the middle refuses to open with the sequence named, and the
//! sled index is rebuilt from the log whenever it is missing or wrong.

use phb_chain::{LogEntry, SignedEvent, GENESIS_HASH};
use phb_proto::v1 as pb;
use phb_store::{Append, OpenReport, Store, StoreError};
use prost::Message;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

fn entries(n: u64) -> Vec<LogEntry> {
    let mut prev = GENESIS_HASH;
    (1..=n)
        .map(|seq| {
            let event = pb::Event {
                event_id: format!("e-{seq}"),
                ledger_id: "t".into(),
                ..Default::default()
            }
            .encode_to_vec();
            let e = LogEntry::next(
                prev,
                seq,
                1_764_000_000_000_000 + seq as i64,
                SignedEvent {
                    event,
                    signer_id: "root".into(),
                    signature: vec![seq as u8; 64],
                },
            );
            prev = e.hash;
            e
        })
        .collect()
}

fn write(dir: &Path, all: &[LogEntry], group: usize) {
    let (mut store, _) = Store::open(dir, Default::default(), &mut |_| Ok(())).unwrap();
    let ids: Vec<String> = all.iter().map(|e| format!("e-{}", e.sequence)).collect();
    for (chunk, ids) in all.chunks(group).zip(ids.chunks(group)) {
        let appends: Vec<Append<'_>> = chunk
            .iter()
            .zip(ids)
            .map(|(entry, id)| Append {
                entry,
                event_id: id,
            })
            .collect();
        store.append(&appends).unwrap();
    }
    // As the server does on a clean stop: the index then vouches for every
    // entry (sled writes it out only every 500 ms otherwise, so tests that
    // rely on what the index knows must not race that).
    store.flush_index().unwrap();
}

fn reopen(dir: &Path) -> Result<(Store, Vec<LogEntry>, OpenReport), StoreError> {
    let mut seen = Vec::new();
    let (store, report) = Store::open(dir, Default::default(), &mut |e| {
        seen.push(e.clone());
        Ok(())
    })?;
    Ok((store, seen, report))
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("log").join("ledger.log")
}

#[test]
fn reopens_every_entry_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(50);
    write(dir.path(), &all, 7);
    let (store, seen, report) = reopen(dir.path()).unwrap();
    assert_eq!(seen, all);
    assert_eq!(store.head_sequence(), 50);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.reindexed, 0, "index was complete");
    let reader = store.reader().unwrap();
    assert_eq!(reader.read(20, 50, 5).unwrap(), all[19..24].to_vec());
    assert_eq!(reader.read(48, 49, 100).unwrap(), all[47..49].to_vec());
    let hit = store.find_event("root", "e-33").unwrap().unwrap();
    assert_eq!(hit.sequence, 33);
    assert_eq!(hit.entry_hash, all[32].hash);
    assert_eq!(hit.digest, all[32].signed.digest());
    assert!(store.find_event("root", "e-51").unwrap().is_none());
}

fn record_bytes(e: &LogEntry) -> Vec<u8> {
    let mut v = Vec::new();
    phb_store::logfile::encode_record(e, &mut v);
    v
}

fn append_raw(dir: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(log_path(dir)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn torn_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(12);
    write(dir.path(), &all[..9], 9);
    // A crash mid-write of an unacknowledged group: record 10 whole, 11 cut short.
    let mut torn = record_bytes(&all[9]);
    let eleven = record_bytes(&all[10]);
    torn.extend_from_slice(&eleven[..eleven.len() - 20]);
    append_raw(dir.path(), &torn);
    let (mut store, seen, report) = reopen(dir.path()).unwrap();
    // Record 10 was whole: it is kept (it was simply never acknowledged).
    assert_eq!(seen, all[..10].to_vec());
    assert_eq!(report.truncated_bytes, (eleven.len() - 20) as u64);
    assert_eq!(report.reindexed, 1);
    assert_eq!(store.head_sequence(), 10);
    let eleven = all[10].clone();
    store
        .append(&[Append {
            entry: &eleven,
            event_id: "e-11",
        }])
        .unwrap();
    drop(store);
    let (_, seen, _) = reopen(dir.path()).unwrap();
    assert_eq!(seen, all[..11].to_vec());
}

#[test]
fn torn_record_with_garbage_length_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(3);
    write(dir.path(), &all[..2], 2);
    let mut torn = record_bytes(&all[2]);
    torn[0] = 0x7f; // a length far past the end of the file
    torn.truncate(30);
    append_raw(dir.path(), &torn);
    let (_, seen, report) = reopen(dir.path()).unwrap();
    assert_eq!(seen, all[..2].to_vec());
    assert_eq!(report.truncated_bytes, 30);
}

#[test]
fn flipped_length_bit_in_committed_record_is_not_taken_for_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(23);
    write(dir.path(), &all, 23);
    // Lose the index so only the log itself can tell: the damaged length now
    // claims the record runs past the end of the file.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let mut bytes = std::fs::read(log_path(dir.path())).unwrap();
    bytes[16] ^= 0x40;
    std::fs::write(log_path(dir.path()), &bytes).unwrap();
    match reopen(dir.path()) {
        Err(StoreError::Corrupt { sequence, .. }) => assert_eq!(sequence, Some(1)),
        Err(other) => panic!("wrong error: {other}"),
        Ok((_, seen, _)) => panic!("opened, keeping {} of 23 entries", seen.len()),
    }
    assert_eq!(
        std::fs::read(log_path(dir.path())).unwrap(),
        bytes,
        "nothing cut"
    );
}

#[test]
fn damaged_last_record_known_to_the_index_is_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(5);
    write(dir.path(), &all, 5);
    let mut bytes = std::fs::read(log_path(dir.path())).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    std::fs::write(log_path(dir.path()), &bytes).unwrap();
    assert!(matches!(
        reopen(dir.path()),
        Err(StoreError::Corrupt {
            sequence: Some(5),
            ..
        })
    ));
}

#[test]
fn log_shorter_than_its_index_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(6);
    write(dir.path(), &all, 6);
    // Whole committed records vanish (e.g. an old copy of the log restored).
    let keep = 16
        + all[..4]
            .iter()
            .map(|e| record_bytes(e).len())
            .sum::<usize>();
    let f = OpenOptions::new()
        .write(true)
        .open(log_path(dir.path()))
        .unwrap();
    f.set_len(keep as u64).unwrap();
    drop(f);
    match reopen(dir.path()) {
        Err(StoreError::Corrupt {
            sequence, detail, ..
        }) => {
            assert_eq!(sequence, Some(5));
            assert!(detail.contains("through 6"), "{detail}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("opened a log missing committed entries"),
    }
}

#[test]
fn zero_filled_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(3);
    write(dir.path(), &all, 3);
    let mut f = OpenOptions::new()
        .append(true)
        .open(log_path(dir.path()))
        .unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);
    let (_, seen, report) = reopen(dir.path()).unwrap();
    assert_eq!(seen, all);
    assert_eq!(report.truncated_bytes, 4096);
}

#[test]
fn damage_in_the_middle_refuses_to_open_naming_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(10);
    write(dir.path(), &all, 10);
    let bytes = std::fs::read(log_path(dir.path())).unwrap();
    // Walk to record 4 and flip a byte inside its payload.
    let mut offset = 16usize;
    for _ in 0..3 {
        let len = u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 8 + len;
    }
    let mut damaged = bytes.clone();
    damaged[offset + 30] ^= 0xff;
    std::fs::write(log_path(dir.path()), &damaged).unwrap();
    match reopen(dir.path()) {
        Err(StoreError::Corrupt {
            sequence,
            offset: at,
            ..
        }) => {
            assert_eq!(sequence, Some(4));
            assert_eq!(at, offset as u64);
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("opened a log with a damaged middle record"),
    }
    // A refused open changes nothing on disk.
    assert_eq!(std::fs::read(log_path(dir.path())).unwrap(), damaged);
}

#[test]
fn lost_index_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(20);
    write(dir.path(), &all, 4);
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let (store, seen, report) = reopen(dir.path()).unwrap();
    assert_eq!(seen, all);
    assert_eq!(report.reindexed, 20);
    assert_eq!(
        store.find_event("root", "e-7").unwrap().unwrap().sequence,
        7
    );
    assert_eq!(store.reader().unwrap().read(1, 20, 100).unwrap(), all);
}

#[test]
fn garbage_index_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(5);
    write(dir.path(), &all, 5);
    let index = dir.path().join("index");
    std::fs::remove_dir_all(&index).unwrap();
    std::fs::create_dir_all(&index).unwrap();
    std::fs::write(index.join("conf"), b"not a sled config").unwrap();
    std::fs::write(index.join("db"), vec![0xAB; 8192]).unwrap();
    let (store, seen, report) = reopen(dir.path()).unwrap();
    assert_eq!(seen, all);
    assert!(report.index_rebuilt);
    assert_eq!(
        store.find_event("root", "e-5").unwrap().unwrap().sequence,
        5
    );
}

#[test]
fn not_a_log_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("log")).unwrap();
    std::fs::write(log_path(dir.path()), b"hello, this is not a ledger").unwrap();
    assert!(matches!(
        reopen(dir.path()),
        Err(StoreError::Corrupt { .. })
    ));
}

/// Opens the index the way the store does, to tamper with it.
fn tamper_index(dir: &Path, f: impl FnOnce(&sled::Tree)) {
    let db = sled::Config::new().path(dir.join("index")).open().unwrap();
    let tree = db.open_tree("v2").unwrap();
    f(&tree);
    tree.flush().unwrap();
}

#[test]
fn index_that_disagrees_with_the_log_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(8);
    write(dir.path(), &all, 3);
    // The index opens fine but points e-3 at the wrong entry.
    tamper_index(dir.path(), |t| {
        let mut v = t.get(b"eroot\0e-3").unwrap().unwrap().to_vec();
        v[..8].copy_from_slice(&7u64.to_be_bytes());
        t.insert(b"eroot\0e-3", v).unwrap();
    });
    let (store, seen, report) = reopen(dir.path()).unwrap();
    assert_eq!(seen, all);
    assert!(report.index_rebuilt, "{report:?}");
    assert_eq!(
        store.find_event("root", "e-3").unwrap().unwrap().sequence,
        3
    );
    assert_eq!(store.reader().unwrap().read(1, 8, 100).unwrap(), all);
}

#[test]
fn index_with_entries_the_log_lacks_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(4);
    write(dir.path(), &all, 4);
    // An event id the log never had: it would refuse a new event with that
    // id as "already used".
    tamper_index(dir.path(), |t| {
        t.insert(b"eroot\0e-ghost", vec![0u8; 72]).unwrap();
    });
    let (store, seen, report) = reopen(dir.path()).unwrap();
    assert_eq!(seen, all);
    assert!(report.index_rebuilt, "{report:?}");
    assert!(store.find_event("root", "e-ghost").unwrap().is_none());
    assert_eq!(
        store.find_event("root", "e-4").unwrap().unwrap().sequence,
        4
    );
}

#[test]
fn wrong_offsets_in_the_index_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(6);
    write(dir.path(), &all, 6);
    tamper_index(dir.path(), |t| {
        let mut k = vec![b's'];
        k.extend_from_slice(&5u64.to_be_bytes());
        t.insert(k, &16u64.to_be_bytes()).unwrap();
    });
    let (store, _, report) = reopen(dir.path()).unwrap();
    assert!(report.index_rebuilt, "{report:?}");
    assert_eq!(store.reader().unwrap().read(5, 6, 10).unwrap(), all[4..6]);
}

/// Issue 6, defect 2: the last committed record removed and the chain
/// recomputed over what is left (here: the last entry replaced by another
/// one, properly hashed), so the index no longer agrees with the log. An
/// index that vouched for more entries than the log holds is evidence of
/// loss or tampering: the store refuses to open, naming both heads, and
/// changes nothing, whether or not the remaining entries agree with it.
#[test]
fn rewritten_log_shorter_than_its_index_refuses_even_when_they_disagree() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(9);
    write(dir.path(), &all, 3);
    // Rewrite: keep 1..=7, replace 8 with a different entry, drop 9.
    let mut rewritten = all[..7].to_vec();
    let forged = LogEntry::next(
        all[6].hash,
        8,
        all[7].recorded_at_micros,
        SignedEvent {
            event: pb::Event {
                event_id: "e-8".into(),
                ledger_id: "forged".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            signer_id: "root".into(),
            signature: vec![0xee; 64],
        },
    );
    rewritten.push(forged);
    let mut bytes = std::fs::read(log_path(dir.path())).unwrap();
    bytes.truncate(16);
    for e in &rewritten {
        bytes.extend_from_slice(&record_bytes(e));
    }
    std::fs::write(log_path(dir.path()), &bytes).unwrap();

    match reopen(dir.path()) {
        Err(StoreError::Corrupt { detail, .. }) => {
            assert!(
                detail.contains("ends at sequence 8") && detail.contains("through 9"),
                "{detail}"
            );
            assert!(detail.contains("--allow-index-rebuild"), "{detail}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok((_, seen, report)) => panic!(
            "opened a log missing committed entries ({} entries, {report:?})",
            seen.len()
        ),
    }
    assert_eq!(std::fs::read(log_path(dir.path())).unwrap(), bytes);
    // The evidence is kept: opening again refuses the same way.
    match reopen(dir.path()) {
        Err(StoreError::Corrupt { detail, .. }) => {
            assert!(detail.contains("through 9"), "{detail}")
        }
        other => panic!("second open: {:?}", other.map(|(_, s, r)| (s.len(), r))),
    }
    // After investigation the operator may allow the rebuild.
    let mut seen = Vec::new();
    let (store, report) = Store::open(
        dir.path(),
        phb_store::OpenOptions {
            allow_index_rebuild: true,
        },
        &mut |e| {
            seen.push(e.clone());
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(seen, rewritten);
    assert!(report.index_rebuilt, "{report:?}");
    assert_eq!(store.find_event("root", "e-9").unwrap(), None);
    assert_eq!(
        store.find_event("root", "e-8").unwrap().unwrap().sequence,
        8
    );
    drop(store);
    // And the next plain start is clean.
    let (_, seen, report) = reopen(dir.path()).unwrap();
    assert_eq!(seen.len(), 8);
    assert!(!report.index_rebuilt, "{report:?}");
}

/// Issue 6, defects 6 and 7: idempotency keys are (signer, event id), and
/// an entry that records a refusal round-trips through the file and the
/// index (a retry is answered from the index with the original refusal).
#[test]
fn keys_are_per_signer_and_refusals_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let signed = |signer: &str, fill: u8| SignedEvent {
        event: pb::Event {
            event_id: "same-id".into(),
            ledger_id: "t".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        signer_id: signer.into(),
        signature: vec![fill; 64],
    };
    let a = LogEntry::next(GENESIS_HASH, 1, 1_764_000_000_000_000, signed("org-a", 1));
    let refusal = phb_chain::Refusal::new(
        9,
        false,
        "spending 550.00 would overspend: only 400.00 is held",
    );
    let b = LogEntry::sealed(
        a.hash,
        2,
        1_764_000_000_000_001,
        signed("org-b", 2),
        Some(refusal.clone()),
    );
    assert!(b.hash_is_valid());
    {
        let (mut store, _) = Store::open(dir.path(), Default::default(), &mut |_| Ok(())).unwrap();
        store
            .append(&[
                Append {
                    entry: &a,
                    event_id: "same-id",
                },
                Append {
                    entry: &b,
                    event_id: "same-id",
                },
            ])
            .unwrap();
        let hit = store.find_event("org-b", "same-id").unwrap().unwrap();
        assert_eq!((hit.sequence, hit.refusal.as_ref()), (2, Some(&refusal)));
    }
    // Re-indexed from the file alone, the same answers.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let (store, seen, _) = reopen(dir.path()).unwrap();
    assert_eq!(seen, vec![a.clone(), b.clone()]);
    let hit_a = store.find_event("org-a", "same-id").unwrap().unwrap();
    assert_eq!((hit_a.sequence, hit_a.refusal), (1, None));
    let hit_b = store.find_event("org-b", "same-id").unwrap().unwrap();
    assert_eq!(
        (hit_b.sequence, hit_b.entry_hash, hit_b.refusal),
        (2, b.hash, Some(refusal))
    );
    assert_eq!(store.find_event("org-c", "same-id").unwrap(), None);
}

/// Derived records (the engine's statement rows) are written on the index
/// thread behind their group, with a watermark; they survive a reopen,
/// are read back by key range, and a rebuilt index starts without them
/// (watermark 0), so a caller that relied on them replays instead.
#[test]
fn derived_records_follow_the_index_and_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(6);
    write(dir.path(), &all, 3);
    {
        let (store, _, _) = reopen(dir.path()).unwrap();
        assert_eq!(store.derived_through(), 0);
        store.put_derived(
            vec![
                (
                    b"b\x00\x00\x00\x00\x00\x00\x00\x00\x02".to_vec(),
                    b"two".to_vec(),
                ),
                (
                    b"a\x00\x00\x00\x00\x00\x00\x00\x00\x01".to_vec(),
                    b"one".to_vec(),
                ),
            ],
            None,
        );
        store.put_derived(
            vec![(
                b"a\x00\x00\x00\x00\x00\x00\x00\x00\x05".to_vec(),
                b"five".to_vec(),
            )],
            Some(5),
        );
        store.flush_index().unwrap();
        assert_eq!(store.derived_through(), 5);
        let reader = store.reader().unwrap();
        let a: Vec<_> = reader
            .derived(b"a\x00", b"a\x00\xff\xff\xff\xff\xff\xff\xff\xff", 10)
            .unwrap()
            .into_iter()
            .map(|(_, v)| v.to_vec())
            .collect();
        assert_eq!(a, [b"one".to_vec(), b"five".to_vec()]);
        assert_eq!(reader.derived(b"a\x00", b"a\xff", 1).unwrap().len(), 1);
    }
    // Reopened: the watermark and the records are there, and the caller's
    // resume is told the watermark.
    struct Seen(Option<u64>);
    impl phb_store::Replay for Seen {
        fn resume(
            &mut self,
            _: &phb_store::Snapshots,
            derived_through: u64,
        ) -> Option<phb_store::Resume> {
            self.0 = Some(derived_through);
            None
        }
        fn resume_refused(&mut self, _: &str) {}
        fn visit(&mut self, _: &LogEntry) -> Result<(), String> {
            Ok(())
        }
    }
    let mut seen = Seen(None);
    let (store, _) = Store::open_resuming(dir.path(), Default::default(), &mut seen).unwrap();
    assert_eq!(seen.0, Some(5));
    assert_eq!(store.derived_through(), 5);
    assert_eq!(
        store.reader().unwrap().derived(b"b", b"c", 10).unwrap()[0]
            .1
            .to_vec(),
        b"two".to_vec()
    );
    drop(store);
    // A lost index is rebuilt from the log; the derived records are gone.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let (store, _, report) = reopen(dir.path()).unwrap();
    assert_eq!(report.reindexed, 6);
    assert_eq!(store.derived_through(), 0);
    assert!(store
        .reader()
        .unwrap()
        .derived(b"a", b"c", 10)
        .unwrap()
        .is_empty());
}
