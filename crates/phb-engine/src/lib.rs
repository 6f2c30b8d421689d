//! The write path of phb-ledger, and the committed view readers see.
//!
//! One writer thread owns the store and a working copy of the ledger state.
//! Callers send `AppendRequest`s over a bounded queue; the writer drains what
//! is waiting (a group), decides every event against its working state,
//! writes the whole group with one write and one fdatasync, and only then
//! applies the same changes to the shared read view and answers the callers.
//! If the write fails, the working state is rolled back and every caller in
//! the group is told UNAVAILABLE: nothing unacknowledged is ever visible.
//!
//! No gRPC here: requests and answers are domain types.
#![deny(missing_docs)]

use phb_domain::chain::{Hash, LogEntry, SignedEvent};
use phb_domain::{Admission, Change, Head, Ledger, Reject, Stored, Undo};
use phb_store::{
    Append, DataDirLock, LockError, LogReader, OpenReport, Store, StoreError, MAX_GROUP_ENTRIES,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

/// The most events one request may carry.
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;
/// How many requests may wait for the writer; further callers wait for room
/// (gRPC deadlines bound how long).
pub const QUEUE_DEPTH: usize = 1024;

/// How to open the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// This ledger's id (events must name it).
    pub ledger_id: String,
    /// The root public key.
    pub root_key: ed25519_dalek::VerifyingKey,
}

/// Why the engine could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Storage failed or is corrupt.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer thread could not start.
    #[error("starting the writer thread: {0}")]
    Thread(#[source] std::io::Error),
    /// Another process has the data directory, or it could not be locked.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// `open_locked` was given a lock on another directory.
    #[error("the lock held ({}) is not the lock of data directory {}", held.display(), dir.display())]
    WrongLock {
        /// The lock file passed in.
        held: PathBuf,
        /// The data directory to open.
        dir: PathBuf,
    },
}

/// What happened to one submitted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written now.
    Written {
        /// Its sequence.
        sequence: u64,
        /// Its entry hash.
        entry_hash: Hash,
    },
    /// The same signed event was already written.
    Duplicate {
        /// The original sequence.
        sequence: u64,
        /// The original entry hash.
        entry_hash: Hash,
    },
    /// Refused; nothing written.
    Rejected(Reject),
}

/// One submitted event with what the caller already checked.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The exact signed event.
    pub signed: SignedEvent,
    /// The key the signature was verified under before queueing, if it was
    /// (verification is parallel in callers; the writer re-verifies only if
    /// the signer's key changed in between).
    pub verified_key: Option<ed25519_dalek::VerifyingKey>,
}

struct WriteRequest {
    events: Vec<Submission>,
    atomic: bool,
    reply: oneshot::Sender<Vec<Outcome>>,
}

/// What the writer thread is asked to do.
enum Request {
    Write(WriteRequest),
    /// Write the index out (after everything queued before it); answered
    /// when done. Used on a clean shutdown.
    FlushIndex(oneshot::Sender<()>),
}

/// The handle the gRPC shell holds.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Request>,
    view: Arc<RwLock<Ledger>>,
    committed: watch::Receiver<u64>,
    writable: watch::Receiver<bool>,
    reader: Arc<LogReader>,
    // Shared with the writer thread: the directory stays locked until the
    // last handle and the writer (which owns the store) are gone. Last, so
    // it is released after the reader's files are closed.
    _lock: Arc<DataDirLock>,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Engine {
    /// Locks the data directory (`DataDirLock`), opens the store, replays
    /// and verifies the whole log, and starts the writer.
    pub fn open(config: EngineConfig) -> Result<(Engine, OpenReport), OpenError> {
        let lock = DataDirLock::acquire(&config.data_dir)?;
        Engine::open_locked(config, lock)
    }

    /// As `open`, with the data directory already locked by the caller.
    ///
    /// For a caller that must read or write files in the directory before
    /// the engine opens (the binary's ledger-id and root.pub): it takes the
    /// lock first and hands it over here. A flock belongs to its open file
    /// description, so a second `acquire` in the same process would conflict
    /// with the first; handing the one lock over avoids taking it twice.
    /// The engine keeps it until the last handle and the writer are gone.
    pub fn open_locked(
        config: EngineConfig,
        lock: DataDirLock,
    ) -> Result<(Engine, OpenReport), OpenError> {
        if !lock.covers(&config.data_dir) {
            return Err(OpenError::WrongLock {
                held: lock.lock_file().to_path_buf(),
                dir: config.data_dir,
            });
        }
        let lock = Arc::new(lock);
        let mut ledger = Ledger::new(config.ledger_id.clone(), config.root_key);
        // Event ids are unique in a valid log; the writer guarantees it, and
        // replay checks it so a doctored log cannot pass.
        let mut ids = std::collections::HashSet::new();
        let (store, report) = Store::open(&config.data_dir, &mut |entry| {
            let event = ledger.replay(entry).map_err(|e| e.to_string())?;
            if !ids.insert(event.event_id) {
                return Err("event_id already used earlier in the log".into());
            }
            Ok(())
        })?;
        drop(ids);
        let reader = Arc::new(store.reader()?);
        let view = Arc::new(RwLock::new(ledger.clone()));
        let (committed_tx, committed) = watch::channel(ledger.head().sequence);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (writable_tx, writable) = watch::channel(true);
        let writer = Writer {
            store,
            ledger,
            view: view.clone(),
            committed: committed_tx,
            writable: writable_tx,
            _lock: lock.clone(),
        };
        std::thread::Builder::new()
            .name("phb-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(OpenError::Thread)?;
        Ok((
            Engine {
                tx,
                view,
                committed,
                writable,
                reader,
                _lock: lock,
            },
            report,
        ))
    }

    /// The committed state. Hold the guard briefly: the writer waits for it
    /// after every group.
    pub fn view(&self) -> RwLockReadGuard<'_, Ledger> {
        // A poisoned lock means a panic while applying a committed group; the
        // data is still the last fully applied state, so keep serving reads.
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The highest committed sequence, updated after every group.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// False once storage failed in a way only a restart can recover from
    /// (a failed fsync, a failed cut-back of a failed write, a failed index
    /// write or lookup) or the writer stopped; reads keep working, writes are
    /// refused UNAVAILABLE.
    pub fn writable(&self) -> watch::Receiver<bool> {
        self.writable.clone()
    }

    /// Reads committed entries `from..` up to `max`.
    pub fn read_log(&self, from: u64, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        let through = *self.committed.borrow();
        self.reader.read(from.max(1), through, max)
    }

    /// Verifies a signature against the committed view, outside the writer.
    /// Returns the key it verified under, or `None` if it did not verify (the
    /// writer then produces the precise refusal).
    pub fn preverify(&self, signed: &SignedEvent) -> Option<ed25519_dalek::VerifyingKey> {
        let view = self.view();
        let key = *view.signer_key(&signed.signer_id)?;
        drop(view);
        phb_domain::chain::verify_signature(&key, &signed.event, &signed.signature).then_some(key)
    }

    /// Writes the index out to its files after every write queued so far
    /// (sled otherwise does so every 500 ms). Call on a clean shutdown, so
    /// that the index vouches for every committed entry at the next start.
    pub async fn flush_index(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Request::FlushIndex(reply)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Submits events and waits until they are durable (or refused).
    pub async fn append(&self, events: Vec<Submission>, atomic: bool) -> Vec<Outcome> {
        let n = events.len();
        let unavailable = |msg: &str| vec![Outcome::Rejected(Reject::unavailable(msg)); n];
        if n == 0 {
            return Vec::new();
        }
        let (reply, answer) = oneshot::channel();
        let req = WriteRequest {
            events,
            atomic,
            reply,
        };
        if self.tx.send(Request::Write(req)).await.is_err() {
            return unavailable("the writer has stopped; restart the server");
        }
        answer
            .await
            .unwrap_or_else(|_| unavailable("the writer stopped before answering; retry"))
    }
}

struct Writer {
    store: Store,
    ledger: Ledger,
    view: Arc<RwLock<Ledger>>,
    committed: watch::Sender<u64>,
    writable: watch::Sender<bool>,
    // Dropped after the store (fields drop in order): the directory stays
    // locked until the log and the index are closed.
    _lock: Arc<DataDirLock>,
}

impl Drop for Writer {
    /// However the writer thread ends (a panic included), nothing will be
    /// written any more: say so, so health goes NOT_SERVING.
    fn drop(&mut self) {
        self.writable.send_replace(false);
    }
}

/// One group under construction.
#[derive(Default)]
struct Group {
    entries: Vec<LogEntry>,
    event_ids: Vec<String>,
    changes: Vec<(Change, Head)>,
    undo: Vec<Undo>,
    /// event id -> (index in entries, digest)
    ids: HashMap<String, (usize, Hash)>,
}

impl Group {
    fn truncate(&mut self, len: usize) {
        for id in self.event_ids.drain(len..) {
            self.ids.remove(&id);
        }
        self.entries.truncate(len);
        self.changes.truncate(len);
    }
}

struct Pending {
    reply: oneshot::Sender<Vec<Outcome>>,
    outcomes: Vec<Outcome>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = Group::default();
            let mut pending = Vec::new();
            let mut flushes = Vec::new();
            let now = now_micros();
            let mut next = Some(first);
            while let Some(req) = next.take() {
                let req = match req {
                    Request::Write(req) => req,
                    Request::FlushIndex(reply) => {
                        // After the group gathered so far is committed.
                        flushes.push(reply);
                        break;
                    }
                };
                let outcomes = self.process(&mut group, &req, now);
                pending.push(Pending {
                    reply: req.reply,
                    outcomes,
                });
                // Take more only while the group has room for a whole request.
                if group.entries.len() + MAX_EVENTS_PER_REQUEST <= MAX_GROUP_ENTRIES {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(group, &mut pending);
            // Say so before answering: a caller told "restart needed" must
            // find health NOT_SERVING already.
            if !self.store.accepts_writes() && *self.writable.borrow() {
                tracing::error!("storage no longer accepts writes; restart the server to recover");
                self.writable.send_replace(false);
            }
            for p in pending {
                // A caller that went away will retry; its events are durable.
                let _ = p.reply.send(p.outcomes);
            }
            for reply in flushes {
                if let Err(e) = self.store.flush_index() {
                    tracing::warn!(error = %e, "writing the index out failed; it is re-indexed from the log at the next start");
                }
                let _ = reply.send(());
            }
        }
        tracing::info!("writer stopped: all engine handles dropped");
    }

    fn process(&mut self, group: &mut Group, req: &WriteRequest, now: i64) -> Vec<Outcome> {
        let start_len = group.entries.len();
        let start_undo = group.undo.len();
        let mut outcomes = Vec::with_capacity(req.events.len());
        for sub in &req.events {
            let outcome = self.process_one(group, sub, now);
            let failed = matches!(outcome, Outcome::Rejected(_));
            outcomes.push(outcome);
            if failed && req.atomic {
                let undo = group.undo.split_off(start_undo);
                self.ledger.rollback(undo);
                group.truncate(start_len);
                let failed_at = outcomes.len() - 1;
                return abort_others(outcomes, failed_at, req.events.len());
            }
        }
        outcomes
    }

    fn process_one(&mut self, group: &mut Group, sub: &Submission, now: i64) -> Outcome {
        match self.try_one(group, sub, now) {
            Ok(o) => o,
            Err(r) => Outcome::Rejected(r),
        }
    }

    fn try_one(
        &mut self,
        group: &mut Group,
        sub: &Submission,
        now: i64,
    ) -> Result<Outcome, Reject> {
        let (store, ledger) = (&self.store, &mut self.ledger);
        let stored = |id: &str| {
            match group.ids.get(id) {
            Some((i, digest)) => Ok(Some(Stored {
                sequence: group.entries[*i].sequence,
                digest: *digest,
                entry_hash: group.entries[*i].hash,
            })),
            None => store
                .find_event(id)
                .map(|x| {
                    x.map(|x| Stored {
                        sequence: x.sequence,
                        digest: x.digest,
                        entry_hash: x.entry_hash,
                    })
                })
                .map_err(|e| {
                    Reject::unavailable(format!(
                        "the event-id index failed ({e}), so duplicates cannot be detected; nothing was written. The server refuses writes until it is restarted; retry then with the same signed event"
                    ))
                }),
        }
        };
        let a = match ledger.admit(&sub.signed, now, sub.verified_key.as_ref(), stored)? {
            Admission::Duplicate(s) => {
                return Ok(Outcome::Duplicate {
                    sequence: s.sequence,
                    entry_hash: s.entry_hash,
                })
            }
            Admission::Written(a) => *a,
        };
        group.undo.push(a.undo);
        group
            .ids
            .insert(a.event.event_id.clone(), (group.entries.len(), a.digest));
        group.event_ids.push(a.event.event_id);
        group.changes.push((a.change, Head::of(&a.entry)));
        let out = Outcome::Written {
            sequence: a.entry.sequence,
            entry_hash: a.entry.hash,
        };
        group.entries.push(a.entry);
        Ok(out)
    }

    fn commit(&mut self, group: Group, pending: &mut [Pending]) {
        if group.entries.is_empty() {
            return;
        }
        let appends: Vec<Append<'_>> = group
            .entries
            .iter()
            .zip(&group.event_ids)
            .map(|(entry, id)| Append {
                entry,
                event_id: id,
            })
            .collect();
        match self.store.append(&appends) {
            Ok(()) => {
                let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
                for (change, head) in group.changes {
                    view.apply(change, head);
                }
                debug_assert_eq!(view.head(), self.ledger.head());
                let head = view.head().sequence;
                drop(view);
                self.committed.send_replace(head);
                tracing::debug!(entries = appends.len(), head, "group committed");
            }
            Err(e) => {
                tracing::error!(error = %e, entries = appends.len(), "group not stored; refusing it");
                self.ledger.rollback(group.undo);
                let msg = format!("the ledger could not make this event durable ({e}) and did not acknowledge it; retry later with the same signed event (if it was stored after all, the retry is answered as a duplicate)");
                // Everything this group would have written is refused, and so
                // is a duplicate of an event earlier in the same group (the
                // same event twice, or sent by two callers at once): its
                // "original" was never stored, so answering OK would be a
                // false acknowledgement.
                let first_of_group = group.entries[0].sequence;
                for p in pending.iter_mut() {
                    for o in p.outcomes.iter_mut() {
                        let unstored = match o {
                            Outcome::Written { .. } => true,
                            Outcome::Duplicate { sequence, .. } => *sequence >= first_of_group,
                            Outcome::Rejected(_) => false,
                        };
                        if unstored {
                            *o = Outcome::Rejected(Reject::unavailable(msg.clone()));
                        }
                    }
                }
            }
        }
    }
}

fn abort_others(mut outcomes: Vec<Outcome>, failed_at: usize, total: usize) -> Vec<Outcome> {
    let reason = match &outcomes[failed_at] {
        Outcome::Rejected(r) => r.message.clone(),
        _ => String::new(),
    };
    let aborted = Reject::aborted(format!(
        "not applied: the atomic batch failed at event {failed_at} ({reason})"
    ));
    for (i, o) in outcomes.iter_mut().enumerate() {
        if i != failed_at {
            *o = Outcome::Rejected(aborted.clone());
        }
    }
    outcomes.resize(total, Outcome::Rejected(aborted));
    outcomes
}
