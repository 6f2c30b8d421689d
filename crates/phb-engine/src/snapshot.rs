//! Snapshots of the projections, so a start loads the state at a recent
//! sequence and replays only the log after it (docs/operations.md,
//! "Restart and snapshots").
//!
//! A snapshot is the `ReadModel`'s canonical encoding (phb-domain
//! `projections/snapshot.rs`), taken at a group boundary under the view's
//! read lock and kept by the store beside the index, with the sequence and
//! entry hash of the last entry it includes. It is derived data: at load it
//! must decode, name this ledger and root key, and end at the entry the
//! log holds at its sequence (the store checks the hash there); the entries
//! after it are then read, checked and replayed exactly as in a full
//! replay, and the write model is rebuilt from it (`Ledger::restore`), so
//! the two halves still meet `check_projections`. A snapshot that fails any
//! check is skipped; `--verify-full` ignores them all.

use crate::EngineConfig;
use phb_domain::{Projection, ReadModel};
use phb_store::{Resume, Snapshots, StoreError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Entries between background snapshots, by default: at about 50 µs per
/// entry replayed, a start after a crash replays at most about 5 s of log.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100_000;

/// The latest kept snapshot that fits this ledger, decoded, with its
/// resume point; `None` (and a warning) if there is none that fits.
pub(crate) fn load(
    snapshots: &Snapshots,
    config: &EngineConfig,
    derived_through: u64,
) -> Option<(ReadModel, Resume)> {
    let sequences = match snapshots.sequences() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the snapshots; replaying the whole log");
            return None;
        }
    };
    for sequence in sequences.into_iter().rev() {
        let stored = match snapshots.get(sequence) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(sequence, error = %e, "cannot read a snapshot");
                continue;
            }
        };
        let started = std::time::Instant::now();
        let read = match ReadModel::decode(&stored.bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(sequence, error = %e, "a snapshot does not decode; skipping it");
                continue;
            }
        };
        let head = read.head();
        let fits = head.sequence == sequence
            && head.hash == stored.entry_hash
            && read.ledger_id() == config.ledger_id
            && read.directory().signer_key(phb_domain::event::ROOT_SIGNER)
                == Some(&config.root_key);
        if !fits {
            tracing::warn!(
                sequence,
                "a snapshot is not of this ledger at its sequence; skipping it"
            );
            continue;
        }
        // Its forgotten statement rows must be in the store (`rows.rs`).
        let forgotten = read.statements().forgotten_max();
        if forgotten > derived_through {
            tracing::warn!(
                sequence,
                forgotten,
                derived_through,
                "a snapshot relies on statement rows the index lacks; skipping it"
            );
            continue;
        }
        tracing::info!(
            sequence,
            bytes = stored.bytes.len(),
            decode_ms = started.elapsed().as_millis() as u64,
            "loaded a snapshot"
        );
        return Some((
            read,
            Resume {
                sequence,
                entry_hash: stored.entry_hash,
            },
        ));
    }
    None
}

/// Takes snapshots: in the background after the group that takes the log
/// `every` entries past the latest, and on demand.
pub(crate) struct Taker {
    store: Snapshots,
    view: Arc<RwLock<ReadModel>>,
    every: u64,
    /// The sequence of the latest snapshot kept (or loaded).
    latest: AtomicU64,
    /// A background snapshot is being taken.
    busy: Arc<AtomicBool>,
}

impl Taker {
    pub(crate) fn new(
        store: Snapshots,
        view: Arc<RwLock<ReadModel>>,
        every: u64,
        latest: u64,
    ) -> Taker {
        Taker {
            store,
            view,
            every: every.max(1),
            latest: AtomicU64::new(latest),
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Called by the writer after each committed group: starts a snapshot
    /// in the background if one is due and none is running.
    pub(crate) fn after_commit(self: &Arc<Self>, head: u64) {
        if head
            < self
                .latest
                .load(Ordering::Relaxed)
                .saturating_add(self.every)
        {
            return;
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let taker = self.clone();
        let spawned = std::thread::Builder::new()
            .name("phb-snapshot".into())
            .spawn(move || {
                if let Err(e) = taker.take_now() {
                    tracing::warn!(error = %e, "taking a snapshot failed; the next start replays more of the log");
                }
                taker.busy.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the snapshot thread");
            self.busy.store(false, Ordering::Release);
        }
    }

    /// Encodes the committed view now and keeps it, unless the latest kept
    /// snapshot is already at its head. Returns the sequence kept.
    pub(crate) fn take_now(&self) -> Result<Option<u64>, StoreError> {
        let started = std::time::Instant::now();
        // Encoded under the read lock: the writer waits to apply its next
        // group meanwhile (a few hundred ms for a large ledger), and the
        // snapshot is exactly the state at a group boundary.
        let (head, bytes) = {
            let view = self.view.read().unwrap_or_else(|p| p.into_inner());
            let head = view.head();
            if head.sequence == 0 || head.sequence <= self.latest.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let mut bytes = Vec::new();
            view.encode(&mut bytes);
            (head, bytes)
        };
        let encoded = started.elapsed();
        self.store
            .put(head.sequence, &head.hash, &bytes)
            .map_err(|e| StoreError::Io("keeping a snapshot".into(), e))?;
        self.latest.fetch_max(head.sequence, Ordering::Relaxed);
        phb_metrics::global().snapshots.inc();
        tracing::info!(
            sequence = head.sequence,
            bytes = bytes.len(),
            encode_ms = encoded.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "snapshot kept"
        );
        Ok(Some(head.sequence))
    }
}
