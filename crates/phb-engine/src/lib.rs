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
use phb_domain::{
    Admission, Admitted, Committed, Event, Ledger, Projection, ReadModel, Reject, Stored, Undo,
};
use phb_store::{
    Append, DataDirLock, LockError, LogReader, OpenReport, Replay, Resume, SharedLog, Snapshots,
    Store, StoreError, MAX_GROUP_ENTRIES,
};
mod rows;
mod shared;
mod snapshot;
mod verifiable;
mod verifiers;

pub use shared::Role;

pub use snapshot::DEFAULT_SNAPSHOT_EVERY;
pub use verifiable::{CheckpointError, TreeError, Verifiable, CHECKPOINTS_FILE};

use std::cell::Cell;
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

/// Requests with more events than this are prechecked on the blocking
/// pool, smaller ones on the verifier threads.
const PRECHECK_INLINE_EVENTS: usize = 16;

// The writer takes whole requests into a group only while one more fits.
const _: () = assert!(MAX_EVENTS_PER_REQUEST <= MAX_GROUP_ENTRIES);

/// How to open the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// This ledger's id (events must name it).
    pub ledger_id: String,
    /// The root public key.
    pub root_key: ed25519_dalek::VerifyingKey,
    /// Rebuild an index that records more entries than the log holds
    /// instead of refusing to start (`phb_store::OpenOptions`).
    pub allow_index_rebuild: bool,
    /// The ledger key: signs checkpoints (never events; not the root key).
    pub ledger_key: ed25519_dalek::SigningKey,
    /// The checkpoints' origin line and key name.
    pub checkpoint_origin: String,
    /// A checkpoint is issued after the group commit that takes the log
    /// this many entries past the latest one.
    pub checkpoint_every: u64,
    /// A snapshot of the projections is taken in the background after the
    /// group that takes the log this many entries past the latest one (and
    /// on a clean stop, `Engine::snapshot`): a start replays at most about
    /// this many entries after a crash.
    pub snapshot_every: u64,
    /// Ignore the snapshots: read, verify and replay the whole log (every
    /// record's checksum, the chain, every signature and rule, every
    /// Merkle node and index record checked against the log).
    pub verify_full: bool,
}

/// Why the engine could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Storage failed or is corrupt.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The read model folded from the log disagrees with the write model:
    /// a bug in a projection, never a property of the data.
    #[error("the projections disagree with the write model after replay: {0}")]
    Projection(String),
    /// The writer thread could not start.
    #[error("starting the writer thread: {0}")]
    Thread(#[source] std::io::Error),
    /// Another process has the data directory, or it could not be locked.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The kept checkpoints do not fit the log: entries were removed or
    /// rewritten after the ledger signed for them.
    #[error(transparent)]
    Checkpoints(#[from] CheckpointError),
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
        /// When the ledger recorded it (microseconds since the epoch).
        recorded_at_micros: i64,
        /// The entry hash before it.
        prev_hash: Hash,
    },
    /// The same signed event was already written.
    Duplicate {
        /// The original sequence.
        sequence: u64,
        /// The original entry hash.
        entry_hash: Hash,
    },
    /// Refused by the ledger's rules, and the refusal recorded in the log:
    /// the same signed event can never be applied later.
    Refused {
        /// Why (for a retry: the original refusal).
        reject: Reject,
        /// The entry that records the refusal.
        sequence: u64,
        /// Its entry hash.
        entry_hash: Hash,
        /// True if the refusal was recorded by an earlier submission.
        duplicate: bool,
    },
    /// Refused without deciding anything (malformed, unauthenticated, the
    /// event id already used, storage unavailable); nothing written. The
    /// event may be corrected, or retried, under the same event id.
    Rejected(Reject),
}

impl Outcome {
    /// True unless the event is (or already was) applied.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Outcome::Refused { .. } | Outcome::Rejected(_))
    }

    /// The refusal, if any.
    pub fn reject(&self) -> Option<&Reject> {
        match self {
            Outcome::Refused { reject, .. } | Outcome::Rejected(reject) => Some(reject),
            _ => None,
        }
    }
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
    view: Arc<RwLock<ReadModel>>,
    committed: watch::Receiver<u64>,
    writable: watch::Receiver<bool>,
    role: watch::Receiver<Role>,
    reader: Arc<LogReader>,
    verifiable: Arc<RwLock<Verifiable>>,
    snapshots: Arc<snapshot::Taker>,
    /// Where appended events' signatures are checked (`verifiers.rs`).
    verifiers: Arc<verifiers::Verifiers>,
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
        Engine::open_with(config, lock, None)
    }

    /// As `open_locked`, as one of several instances sharing `log`
    /// (docs/high-availability.md): the local store becomes a verified copy
    /// of the shared log. The instance starts as a reader, copying what the
    /// shared log confirmed, and takes the writer role when no other
    /// instance holds it, advertising `advertise` to the readers.
    pub fn open_shared(
        config: EngineConfig,
        lock: DataDirLock,
        log: Box<dyn SharedLog>,
        advertise: String,
    ) -> Result<(Engine, OpenReport), OpenError> {
        Engine::open_with(config, lock, Some(shared::Shared::new(log, advertise)))
    }

    fn open_with(
        config: EngineConfig,
        lock: DataDirLock,
        shared: Option<shared::Shared>,
    ) -> Result<(Engine, OpenReport), OpenError> {
        if !lock.covers(&config.data_dir) {
            return Err(OpenError::WrongLock {
                held: lock.lock_file().to_path_buf(),
                dir: config.data_dir,
            });
        }
        let lock = Arc::new(lock);
        let options = phb_store::OpenOptions {
            allow_index_rebuild: config.allow_index_rebuild,
        };
        let (store, report, ledger, mut read) = open_store(&config, options)?;
        let rows = rows::RowKeeper::open(&store, &mut read);
        phb_metrics::global()
            .statement_rows_resident
            .set(read.statements().total_rows() as i64);
        let reader = Arc::new(store.reader()?);
        let verifiable = Arc::new(RwLock::new(Verifiable::open(
            &config.data_dir,
            store.frontier().clone(),
            reader.clone(),
            config.checkpoint_origin.clone(),
            config.ledger_key.clone(),
            config.checkpoint_every,
        )?));
        let view = Arc::new(RwLock::new(read));
        let snapshots = Arc::new(snapshot::Taker::new(
            store.snapshots(),
            view.clone(),
            config.snapshot_every,
            report.resumed_at.unwrap_or(0),
        ));
        let (committed_tx, committed) = watch::channel(ledger.head().sequence);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (writable_tx, writable) = watch::channel(true);
        let (role_tx, role) = watch::channel(if shared.is_some() {
            Role::Reader { writer: None }
        } else {
            Role::Standalone
        });
        let writer = Writer {
            shared,
            role: role_tx,
            rows,
            store,
            ledger,
            view: view.clone(),
            verifiable: verifiable.clone(),
            snapshots: snapshots.clone(),
            committed: committed_tx,
            writable: writable_tx,
            _lock: lock.clone(),
        };
        std::thread::Builder::new()
            .name("phb-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(OpenError::Thread)?;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let verifiers = Arc::new(verifiers::Verifiers::start(threads).map_err(OpenError::Thread)?);
        Ok((
            Engine {
                tx,
                view,
                committed,
                writable,
                role,
                reader,
                verifiable,
                snapshots,
                verifiers,
                _lock: lock,
            },
            report,
        ))
    }

    /// Takes a snapshot of the projections at the committed head now and
    /// keeps it (beside the index), unless one is kept there already. Call
    /// on a clean stop, so the next start loads it instead of replaying.
    pub fn snapshot(&self) -> Result<Option<u64>, StoreError> {
        self.snapshots.take_now()
    }

    /// The committed state. Hold the guard briefly: the writer waits for it
    /// after every group.
    pub fn view(&self) -> RwLockReadGuard<'_, ReadModel> {
        // A poisoned lock means a panic while applying a committed group; the
        // data is still the last fully applied state, so keep serving reads.
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The Merkle tree and the checkpoints. Hold the guard briefly: the
    /// writer appends to it after every group.
    pub fn verifiable(&self) -> RwLockReadGuard<'_, Verifiable> {
        self.verifiable.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest checkpoint, issued at the current head if the latest is
    /// older; None for an empty log.
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, CheckpointError> {
        self.verifiable
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .latest()
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

    /// This instance's part: alone on its own log, or, sharing one, the
    /// writer or a reader (which refuses appends, naming the writer).
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Up to `max` of `budget_id`'s statement rows with sequence in
    /// `after + 1 ..= through` that the view has forgotten
    /// (`Statements::forgotten_through`): they are read from the store.
    pub fn stored_statement_rows(
        &self,
        budget_id: &str,
        after: u64,
        through: u64,
        max: usize,
    ) -> Result<Vec<phb_domain::projections::StatementRow>, StoreError> {
        rows::read(&self.reader, budget_id, after, through, max)
    }

    /// Reads committed entries `from..` up to `max`.
    pub fn read_log(&self, from: u64, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        let through = *self.committed.borrow();
        self.reader.read(from.max(1), through, max)
    }

    /// Checks a request's events outside the writer, in the caller's task:
    /// decoding and signature verification, the costly checks that need no
    /// ledger state beyond the signers' current keys. An event that fails
    /// here never reaches the writer, so forged or malformed events cannot
    /// slow it down. An event whose signer is not registered is refused here
    /// too, unless the request also carries a root-signed event that checked
    /// out (it may register that signer in the same request).
    pub fn precheck(&self, events: Vec<SignedEvent>) -> Vec<Result<Submission, Reject>> {
        let now = now_micros();
        let (ledger_id, keys) = {
            let view = self.view();
            let keys: Vec<_> = events
                .iter()
                .map(|e| view.signer_key(&e.signer_id).copied())
                .collect();
            (view.ledger_id().to_string(), keys)
        };
        let ctx = phb_domain::event::DecodeContext {
            ledger_id: &ledger_id,
            now_micros: now,
        };
        let mut checked: Vec<Result<Option<ed25519_dalek::VerifyingKey>, Reject>> = events
            .iter()
            .zip(&keys)
            .map(|(e, key)| {
                let event = phb_domain::event::decode_event(&e.event, ctx)?;
                match key {
                    Some(key) => Ledger::verify_under(key, e)
                        .map(|()| Some(*key))
                        .or_else(|r| {
                            // A resubmission of a stored event is answered as
                            // such even if its signer's key has since rotated:
                            // the writer recognises it before authenticating.
                            match self.reader.find_event(&e.signer_id, &event.event_id) {
                                Some(hit) if hit.digest == e.digest() => Ok(None),
                                _ => Err(r),
                            }
                        }),
                    None => Ok(None),
                }
            })
            .collect();
        let root_signed = events.iter().zip(&checked).any(|(e, c)| {
            e.signer_id == phb_domain::event::ROOT_SIGNER && matches!(c, Ok(Some(_)))
        });
        for ((e, c), key) in events.iter().zip(checked.iter_mut()).zip(&keys) {
            // (`Ok(None)` with a known key is a stored duplicate: the writer answers it.)
            let unknown = matches!(c, Ok(None)) && key.is_none();
            let bad_signature =
                matches!(c, Err(r) if r.code == phb_domain::RejectCode::Unauthenticated);
            if root_signed && (unknown || (bad_signature && key.is_some())) {
                // A request the root key signed into may register this
                // signer or rotate its key before this event: only the
                // writer, at this event's place, knows the key to check.
                *c = Ok(None);
            } else if unknown {
                *c = Err(Ledger::unknown_signer(&e.signer_id));
            }
        }
        events
            .into_iter()
            .zip(checked)
            .map(|(signed, c)| {
                c.map(|verified_key| Submission {
                    signed,
                    verified_key,
                })
            })
            .collect()
    }

    /// Prechecks and submits a request's events (`precheck`, then `append`
    /// with what passed). In an atomic request one failed precheck refuses
    /// the whole request before it reaches the writer.
    pub async fn submit(&self, events: Vec<SignedEvent>, atomic: bool) -> Vec<Outcome> {
        // Off the async workers, so reads are not queued behind signature
        // checks (`verifiers.rs`). A large request's signatures take
        // milliseconds: those go to the blocking pool instead, so a flood
        // of big requests cannot hold the verifiers small requests need.
        let engine = self.clone();
        let checked = if events.len() > PRECHECK_INLINE_EVENTS {
            tokio::task::spawn_blocking(move || engine.precheck(events))
                .await
                .ok()
        } else {
            self.verifiers.run(move || engine.precheck(events)).await
        };
        let Some(checked) = checked else {
            return vec![Outcome::Rejected(Reject::unavailable(
                "checking the request's signatures failed; retry",
            ))];
        };
        if atomic {
            if let Some(failed_at) = checked.iter().position(Result::is_err) {
                let reason = checked[failed_at]
                    .as_ref()
                    .err()
                    .map(|r| r.message.clone())
                    .unwrap_or_default();
                let aborted = aborted_by(failed_at, &reason);
                return checked
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| match c {
                        Err(r) if i == failed_at => Outcome::Rejected(r),
                        _ => Outcome::Rejected(aborted.clone()),
                    })
                    .collect();
            }
        }
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(checked.len());
        let mut passed = Vec::new();
        for c in checked {
            match c {
                Ok(sub) => {
                    outcomes.push(None);
                    passed.push(sub);
                }
                Err(r) => outcomes.push(Some(Outcome::Rejected(r))),
            }
        }
        let mut answers = self.append(passed, atomic).await.into_iter();
        outcomes
            .into_iter()
            .map(|o| {
                o.or_else(|| answers.next()).unwrap_or_else(|| {
                    Outcome::Rejected(Reject::unavailable(
                        "the writer answered fewer events than it was sent; retry",
                    ))
                })
            })
            .collect()
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
        if let Some(refusal) = self.role.borrow().refuses_writes() {
            return vec![Outcome::Rejected(refusal); n];
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
    /// The shared log and this instance's part in it, if it shares one.
    shared: Option<shared::Shared>,
    role: watch::Sender<Role>,
    /// Statement rows handed to the store and not yet forgotten (`rows.rs`).
    rows: rows::RowKeeper,
    store: Store,
    ledger: Ledger,
    view: Arc<RwLock<ReadModel>>,
    verifiable: Arc<RwLock<Verifiable>>,
    snapshots: Arc<snapshot::Taker>,
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
        phb_metrics::global().writable.set(0);
    }
}

/// One entry admitted into the group under construction.
struct Staged {
    entry: LogEntry,
    event: Event,
    digest: Hash,
    undo: Undo,
}

/// One group under construction: the entries admitted so far (each with
/// everything needed to write, apply or undo it) and their keys.
#[derive(Default)]
struct Group {
    staged: Vec<Staged>,
    /// (signer, event id) -> index in `staged`.
    keys: HashMap<(String, String), usize>,
}

impl Group {
    fn len(&self) -> usize {
        self.staged.len()
    }

    /// Stages the entry that records `reject`, answered as a refusal
    /// recorded by this submission.
    fn stage_refusal(&mut self, a: Admitted, reject: Reject) -> Outcome {
        let out = Outcome::Refused {
            reject,
            sequence: a.entry.sequence,
            entry_hash: a.entry.hash,
            duplicate: false,
        };
        self.stage(a);
        out
    }

    fn stage(&mut self, a: Admitted) {
        let key = (a.entry.signed.signer_id.clone(), a.event.event_id.clone());
        let previous = self.keys.insert(key, self.staged.len());
        debug_assert!(previous.is_none(), "admit let a used key through");
        self.staged.push(Staged {
            entry: a.entry,
            event: a.event,
            digest: a.digest,
            undo: a.undo,
        });
    }

    fn find(&self, signer_id: &str, event_id: &str) -> Option<Stored> {
        let i = *self
            .keys
            .get(&(signer_id.to_string(), event_id.to_string()))?;
        let s = &self.staged[i];
        Some(Stored {
            sequence: s.entry.sequence,
            digest: s.digest,
            entry_hash: s.entry.hash,
            refusal: s.entry.refusal.clone(),
        })
    }

    /// Drops the entries after the first `len` and undoes them on `ledger`.
    fn roll_back_to(&mut self, len: usize, ledger: &mut Ledger) {
        let dropped = self.staged.split_off(len);
        for s in &dropped {
            self.keys
                .remove(&(s.entry.signed.signer_id.clone(), s.event.event_id.clone()));
        }
        ledger.rollback(dropped.into_iter().map(|s| s.undo).collect::<Vec<_>>());
        debug_assert_eq!(self.keys.len(), self.staged.len());
    }
}

/// One event's answer, and whether it depends on the group being stored
/// (a refusal that named an entry of this group, e.g. ALREADY_EXISTS).
struct Answer {
    outcome: Outcome,
    names_group: bool,
}

impl From<Outcome> for Answer {
    fn from(outcome: Outcome) -> Self {
        Answer {
            outcome,
            names_group: false,
        }
    }
}

struct Pending {
    reply: oneshot::Sender<Vec<Outcome>>,
    answers: Vec<Answer>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let m = phb_metrics::global();
        m.writable.set(1);
        m.log_entries.set(self.store.head_sequence() as i64);
        m.log_bytes.set(self.store.log_bytes() as i64);
        if self.shared.is_some() {
            m.writer_role.set(0);
            return self.run_shared(rx);
        }
        m.writer_role.set(1);
        while let Some(first) = rx.blocking_recv() {
            self.serve_group(first, &mut rx);
        }
        tracing::info!("writer stopped: all engine handles dropped");
    }

    /// Takes `first` and what waits behind it as one group: decides, commits
    /// and answers it.
    fn serve_group(&mut self, first: Request, rx: &mut mpsc::Receiver<Request>) {
        let m = phb_metrics::global();
        m.writer_queue_depth.set(rx.len() as i64);
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
            let answers = self.process(&mut group, &req, now);
            pending.push(Pending {
                reply: req.reply,
                answers,
            });
            // Take more only while the group has room for a whole request
            // (an atomic request that fails may record every event).
            if group.len() + MAX_EVENTS_PER_REQUEST <= MAX_GROUP_ENTRIES {
                next = rx.try_recv().ok();
            }
        }
        self.commit(group, &mut pending);
        // Say so before answering: a caller told "restart needed" must
        // find health NOT_SERVING already.
        if !self.store.accepts_writes() && *self.writable.borrow() {
            tracing::error!("storage no longer accepts writes; restart the server to recover");
            self.writable.send_replace(false);
            phb_metrics::global().writable.set(0);
        }
        for p in pending {
            // A caller that went away will retry; its events are durable.
            let _ = p
                .reply
                .send(p.answers.into_iter().map(|a| a.outcome).collect());
        }
        for reply in flushes {
            self.flush_index(reply);
        }
    }

    fn flush_index(&self, reply: oneshot::Sender<()>) {
        if let Err(e) = self.store.flush_index() {
            tracing::warn!(error = %e, "writing the index out failed; it is re-indexed from the log at the next start");
        }
        let _ = reply.send(());
    }

    fn process(&mut self, group: &mut Group, req: &WriteRequest, now: i64) -> Vec<Answer> {
        assert!(req.events.len() <= MAX_EVENTS_PER_REQUEST);
        let start = group.len();
        let mut answers = Vec::with_capacity(req.events.len());
        for (i, sub) in req.events.iter().enumerate() {
            let answer = self.try_one(group, sub, now);
            let failed = answer.outcome.is_refusal();
            answers.push(answer);
            if failed && req.atomic {
                group.roll_back_to(start, &mut self.ledger);
                return self.abort_batch(group, req, i, answers, now);
            }
        }
        answers
    }

    /// The idempotency-key lookup for `admit`: this group first, then the
    /// store. Sets `names_group` when the key is in this group.
    fn lookup<'a>(
        store: &'a Store,
        group: &'a Group,
        names_group: &'a Cell<bool>,
    ) -> impl FnOnce(&str, &str) -> Result<Option<Stored>, Reject> + 'a {
        move |signer_id, event_id| {
            if let Some(s) = group.find(signer_id, event_id) {
                names_group.set(true);
                return Ok(Some(s));
            }
            store
                .find_event(signer_id, event_id)
                .map(|x| {
                    x.map(|x| Stored {
                        sequence: x.sequence,
                        digest: x.digest,
                        entry_hash: x.entry_hash,
                        refusal: x.refusal,
                    })
                })
                .map_err(|e| {
                    Reject::unavailable(format!(
                        "the event-id index failed ({e}), so duplicates cannot be detected; nothing was written. The server refuses writes until it is restarted; retry then with the same signed event"
                    ))
                })
        }
    }

    fn try_one(&mut self, group: &mut Group, sub: &Submission, now: i64) -> Answer {
        let names_group = Cell::new(false);
        let admitted = self.ledger.admit(
            &sub.signed,
            now,
            sub.verified_key.as_ref(),
            Self::lookup(&self.store, group, &names_group),
        );
        let outcome = match admitted {
            Ok(Admission::Duplicate(s)) => duplicate(s),
            Ok(Admission::Written(a)) => {
                let out = Outcome::Written {
                    sequence: a.entry.sequence,
                    entry_hash: a.entry.hash,
                    recorded_at_micros: a.entry.recorded_at_micros,
                    prev_hash: a.entry.prev_hash,
                };
                group.stage(*a);
                out
            }
            Ok(Admission::Refused(a, reject)) => group.stage_refusal(*a, reject),
            Err(r) => Outcome::Rejected(r),
        };
        Answer {
            outcome,
            names_group: names_group.get(),
        }
    }

    /// An atomic request failed at `failed_at` (its entries are already
    /// rolled back). If the failure was a decision of the rules, the whole
    /// request is recorded as refused (`Ledger::admit_failed_batch`: the
    /// failing event with its refusal, the others ABORTED), so that none of
    /// its events can be applied later; otherwise the others are answered
    /// ABORTED and may be sent again.
    fn abort_batch(
        &mut self,
        group: &mut Group,
        req: &WriteRequest,
        failed_at: usize,
        mut answers: Vec<Answer>,
        now: i64,
    ) -> Vec<Answer> {
        let failure = answers.swap_remove(failed_at);
        let reason = failure
            .outcome
            .reject()
            .map(|r| r.message.clone())
            .unwrap_or_default();
        let aborted = aborted_by(failed_at, &reason);
        // A new decision, or a retry of a recorded one: either way the
        // batch failed by the rules, and is recorded.
        let reject = match &failure.outcome {
            Outcome::Refused { reject, .. } => reject.clone(),
            _ => {
                return (0..req.events.len())
                    .map(|i| {
                        if i == failed_at {
                            Answer {
                                outcome: failure.outcome.clone(),
                                names_group: failure.names_group,
                            }
                        } else {
                            Outcome::Rejected(aborted.clone()).into()
                        }
                    })
                    .collect();
            }
        };
        let names_group = Cell::new(false);
        let batch: Vec<_> = req
            .events
            .iter()
            .map(|s| (&s.signed, s.verified_key.as_ref()))
            .collect();
        let results = {
            let lookup =
                |signer: &str, id: &str| Self::lookup(&self.store, group, &names_group)(signer, id);
            self.ledger
                .admit_failed_batch(&batch, failed_at, &reject, &aborted, now, lookup)
        };
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let fallback = if i == failed_at {
                    reject.clone()
                } else {
                    aborted.clone()
                };
                let outcome = match r {
                    Ok(Admission::Refused(a, reject)) => group.stage_refusal(*a, reject),
                    Ok(Admission::Duplicate(s)) if s.refusal.is_some() => duplicate(s),
                    // Already applied earlier, or not recordable: answered,
                    // not recorded.
                    Ok(_) | Err(_) => Outcome::Rejected(fallback),
                };
                Answer {
                    outcome,
                    names_group: names_group.get(),
                }
            })
            .collect()
    }

    /// Makes durable entries visible: folds them into the read model and
    /// the Merkle tree (issuing a checkpoint when one is due), may take a
    /// snapshot, and publishes the new head. For the writer's groups and
    /// for the entries a reader copied from the shared log alike.
    fn publish<'e>(&mut self, committed: impl Iterator<Item = (&'e LogEntry, &'e Event)>) {
        let m = phb_metrics::global();
        m.log_entries.set(self.store.head_sequence() as i64);
        m.log_bytes.set(self.store.log_bytes() as i64);
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        let mut folded = Vec::new();
        for (entry, event) in committed {
            view.apply(&Committed::of(entry, event));
            folded.push((entry.sequence, event));
        }
        let entries = folded.len();
        debug_assert_eq!(view.head(), self.ledger.head());
        let head = view.head().sequence;
        assert_eq!(
            head,
            self.store.head_sequence(),
            "the view covers exactly the log"
        );
        let rows = self
            .rows
            .after_fold(&mut view, &folded, self.store.derived_through());
        m.statement_rows_resident
            .set(view.statements().total_rows() as i64);
        drop(view);
        // Behind the group's index records, on the index thread.
        self.store.put_derived(rows, Some(head));
        let mut v = self.verifiable.write().unwrap_or_else(|p| p.into_inner());
        v.advance(self.store.frontier());
        assert_eq!(v.size(), head, "the tree covers exactly the log");
        if v.due() {
            // The entries are durable whether or not this works: a
            // checkpoint is issued on demand and at the next due group too.
            if let Err(e) = v.issue() {
                tracing::error!(error = %e, head, "could not keep a checkpoint");
            }
        }
        drop(v);
        self.snapshots.after_commit(head);
        self.committed.send_replace(head);
        tracing::debug!(entries, head, "group committed");
    }

    fn commit(&mut self, group: Group, pending: &mut [Pending]) {
        if group.staged.is_empty() {
            return;
        }
        let appends: Vec<Append<'_>> = group
            .staged
            .iter()
            .map(|s| Append {
                entry: &s.entry,
                event_id: &s.event.event_id,
            })
            .collect();
        let started = std::time::Instant::now();
        // Sharing a log, the shared log decides what is committed: the local
        // copy follows only what it confirmed (`shared.rs`).
        let appended = match self.shared.as_mut().map(|s| s.commit(&appends)) {
            Some(Err(e)) => Err(e),
            Some(Ok(())) | None => self.store.append(&appends).map_err(|e| e.to_string()),
        };
        let m = phb_metrics::global();
        m.log_sync_seconds.observe(started.elapsed().as_secs_f64());
        match appended {
            Ok(()) => {
                m.group_commit_entries.observe(appends.len() as f64);
                drop(appends);
                self.publish(group.staged.iter().map(|s| (&s.entry, &s.event)));
            }
            Err(e) => {
                tracing::error!(error = %e, entries = appends.len(), "group not stored; refusing it");
                drop(appends);
                let first_of_group = group.staged[0].entry.sequence;
                let mut group = group;
                group.roll_back_to(0, &mut self.ledger);
                let msg = format!("the ledger could not make this event durable ({e}) and did not acknowledge it; retry later with the same signed event (if it was stored after all, the retry is answered as a duplicate)");
                // Everything this group would have written is refused, and so
                // is every answer that names an entry of this group: a
                // duplicate of an event earlier in the same group (the same
                // event twice, or sent by two callers at once), a refusal
                // recorded in it, an ALREADY_EXISTS naming its sequence.
                // Those entries were never stored, so answering as if they
                // were would be a false acknowledgement.
                for p in pending.iter_mut() {
                    for a in p.answers.iter_mut() {
                        let unstored = a.names_group
                            || match &a.outcome {
                                Outcome::Written { .. } => true,
                                Outcome::Duplicate { sequence, .. }
                                | Outcome::Refused { sequence, .. } => *sequence >= first_of_group,
                                Outcome::Rejected(_) => false,
                            };
                        if unstored {
                            a.outcome = Outcome::Rejected(Reject::unavailable(msg.clone()));
                        }
                    }
                }
            }
        }
    }
}

/// The state a start rebuilds, as the store reads the log to it: from a
/// snapshot of the projections if one fits, else from the first entry.
struct Opening<'a> {
    config: &'a EngineConfig,
    ledger: Ledger,
    read: ReadModel,
    /// Idempotency keys (signer, event id) are unique in a valid log; the
    /// writer guarantees it, and replay checks it (over the entries it
    /// replays) so a doctored log cannot pass.
    ids: std::collections::HashSet<(String, String)>,
}

impl<'a> Opening<'a> {
    fn new(config: &'a EngineConfig) -> Opening<'a> {
        Opening {
            config,
            ledger: Ledger::new(config.ledger_id.clone(), config.root_key),
            read: ReadModel::new(config.ledger_id.clone(), config.root_key),
            ids: Default::default(),
        }
    }
}

impl Replay for Opening<'_> {
    fn resume(&mut self, snapshots: &Snapshots, derived_through: u64) -> Option<Resume> {
        if self.config.verify_full {
            return None;
        }
        let (read, resume) = snapshot::load(snapshots, self.config, derived_through)?;
        self.ledger = Ledger::restore(&read, self.config.root_key);
        self.read = read;
        Some(resume)
    }

    fn resume_refused(&mut self, _why: &str) {
        let config = self.config;
        *self = Opening::new(config);
    }

    fn visit(&mut self, entry: &LogEntry) -> Result<(), String> {
        let event = self.ledger.replay(entry).map_err(|e| e.to_string())?;
        // The read model is folded from the same entries as they are
        // replayed: it is, by construction, what a rebuild gives.
        self.read.apply(&Committed::of(entry, &event));
        if !self
            .ids
            .insert((entry.signed.signer_id.clone(), event.event_id))
        {
            return Err("the signer already used this event_id earlier in the log".into());
        }
        Ok(())
    }
}

/// Opens the store and rebuilds the state: from the latest snapshot that
/// fits plus the log after it, or (`verify_full`, no snapshot, or one
/// that does not fit) by replaying the whole log.
fn open_store(
    config: &EngineConfig,
    options: phb_store::OpenOptions,
) -> Result<(Store, OpenReport, Ledger, ReadModel), OpenError> {
    let mut opening = Opening::new(config);
    let opened = match Store::open_resuming(&config.data_dir, options, &mut opening) {
        Err(StoreError::Resume(why)) => {
            tracing::warn!(problem = %why, "the snapshot cannot be used; replaying the whole log");
            opening = Opening::new(config);
            // sled's background threads may hold the index's lock for a
            // moment after it was closed.
            let mut tries = 0;
            loop {
                match Store::open(&config.data_dir, options, &mut |e| opening.visit(e)) {
                    Err(StoreError::Index(e)) if phb_store::is_lock_conflict(&e) && tries < 100 => {
                        tries += 1;
                        opening = Opening::new(config);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    other => break other,
                }
            }
        }
        other => other,
    };
    let (store, report) = opened?;
    let Opening {
        mut ledger, read, ..
    } = opening;
    ledger.finish_replay();
    check_projections(&ledger, &read)?;
    Ok((store, report, ledger, read))
}

/// The read model folded during replay must agree with the write model's
/// own state: two independent computations of every figure and key, checked
/// once per start (an assertion on the projections, not on input).
fn check_projections(ledger: &Ledger, read: &ReadModel) -> Result<(), OpenError> {
    let disagree = |what: String| Err(OpenError::Projection(what));
    if read.head() != ledger.head() {
        return disagree(format!("head {:?} vs {:?}", read.head(), ledger.head()));
    }
    if !ledger.budgets().eq(read.balances().budgets()) {
        return disagree("the balances differ from the write model's budgets".into());
    }
    if !ledger.organisations().eq(read.directory().organisations()) {
        return disagree("the directory differs from the write model's registry".into());
    }
    Ok(())
}

/// The answer to a resubmission of a stored event: the original outcome.
fn duplicate(s: Stored) -> Outcome {
    match &s.refusal {
        Some(r) => Outcome::Refused {
            reject: Reject::from_refusal(r),
            sequence: s.sequence,
            entry_hash: s.entry_hash,
            duplicate: true,
        },
        None => Outcome::Duplicate {
            sequence: s.sequence,
            entry_hash: s.entry_hash,
        },
    }
}

/// The refusal of the other events of an atomic request that failed at
/// `failed_at` for `reason`.
fn aborted_by(failed_at: usize, reason: &str) -> Reject {
    Reject::aborted(format!(
        "not applied: the atomic batch failed at event {failed_at} ({reason})"
    ))
}
