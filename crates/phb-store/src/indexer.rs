//! The index written behind the acknowledgement.
//!
//! The index is derived data: the log is durable (fdatasync'd) before any
//! entry is acknowledged, and the index only speeds lookups up. So the
//! writer does not wait for sled: after each durable append it puts the
//! group's index records in `Recent` (memory, looked up first) and hands
//! the sled batch to this thread, which applies it — index records, Merkle
//! nodes and the `indexed_through` watermark in one batch — and then drops
//! those records from `Recent`. A lookup therefore sees every committed
//! entry: in `Recent` until sled has it, in sled after.
//!
//! Bounds: at most `QUEUE_GROUPS` groups wait (the writer blocks on a full
//! queue), so `Recent` holds at most that many groups' records. If sled
//! fails, `failed` is set, nothing more is applied, `Recent` keeps what it
//! has (duplicates are still detected) and the store refuses writes until a
//! restart re-indexes from the log — as when indexing was synchronous. The
//! index never runs ahead of the log: a batch is only queued after its
//! entries are durable.

use crate::IndexedEvent;
use phb_chain::merkle::NodeId;
use phb_chain::Hash;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

/// Groups that may wait for the index thread.
pub const QUEUE_GROUPS: usize = 64;

/// Index records of committed entries sled does not have yet.
#[derive(Default)]
pub(crate) struct Recent {
    /// Event key (`event_key`) → its index value.
    pub events: HashMap<Vec<u8>, IndexedEvent>,
    /// Sequence → record offset.
    pub offsets: HashMap<u64, u64>,
    /// Merkle nodes.
    pub nodes: HashMap<NodeId, Hash>,
}

/// What the writer and the readers share with the index thread.
#[derive(Default)]
pub(crate) struct Shared {
    recent: Mutex<Recent>,
    /// sled failed: the index lacks entries the log has.
    failed: AtomicBool,
    /// The derived records' watermark as applied to sled.
    derived_through: AtomicU64,
}

impl Shared {
    pub(crate) fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub(crate) fn derived_through(&self) -> u64 {
        self.derived_through.load(Ordering::Acquire)
    }
}

/// One committed group's index work.
pub(crate) struct Group {
    pub batch: sled::Batch,
    pub events: Vec<Vec<u8>>,
    pub sequences: std::ops::RangeInclusive<u64>,
    pub nodes: Vec<NodeId>,
}

enum Job {
    Group(Group),
    /// Derived records (`Store::put_derived`), and the watermark they move
    /// to once applied.
    Derived(sled::Batch, Option<u64>),
    /// Answered once every group queued before it is applied and sled has
    /// written its files out.
    Flush(std::sync::mpsc::Sender<Result<(), String>>),
}

/// The writer's handle on the index thread.
pub(crate) struct Indexer {
    tx: Option<SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub shared: Arc<Shared>,
}

impl Indexer {
    pub(crate) fn start(
        tree: sled::Tree,
        derived: sled::Tree,
        derived_through: u64,
    ) -> std::io::Result<Indexer> {
        let shared = Arc::new(Shared {
            derived_through: AtomicU64::new(derived_through),
            ..Shared::default()
        });
        let (tx, rx) = sync_channel(QUEUE_GROUPS);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("phb-indexer".into())
            .spawn(move || run(tree, derived, rx, &s))?;
        Ok(Indexer {
            tx: Some(tx),
            thread: Some(thread),
            shared,
        })
    }

    /// Queues a committed group (its records already in `Recent`); blocks
    /// while `QUEUE_GROUPS` groups wait.
    pub(crate) fn submit(&self, group: Group) {
        let sent = self.tx.as_ref().map(|tx| tx.send(Job::Group(group)));
        if !matches!(sent, Some(Ok(()))) {
            // The thread is gone (it only ends when the sender is dropped,
            // or by a panic in sled): the index is behind the log.
            self.shared.failed.store(true, Ordering::Release);
        }
    }

    /// Queues derived records; blocks while `QUEUE_GROUPS` jobs wait.
    pub(crate) fn submit_derived(&self, batch: sled::Batch, through: Option<u64>) {
        let sent = self
            .tx
            .as_ref()
            .map(|tx| tx.send(Job::Derived(batch, through)));
        if !matches!(sent, Some(Ok(()))) {
            self.shared.failed.store(true, Ordering::Release);
        }
    }

    /// Waits until everything queued so far is in sled and written out.
    pub(crate) fn flush(&self) -> Result<(), String> {
        let (reply, done) = std::sync::mpsc::channel();
        let tx = self.tx.as_ref().ok_or("the index thread has stopped")?;
        tx.send(Job::Flush(reply))
            .map_err(|_| "the index thread has stopped".to_string())?;
        done.recv()
            .map_err(|_| "the index thread stopped".to_string())?
    }
}

impl Drop for Indexer {
    /// Lets the thread apply every queued group, then waits for it: the
    /// index is complete when the store is closed.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(tree: sled::Tree, derived: sled::Tree, rx: Receiver<Job>, shared: &Shared) {
    for job in rx {
        match job {
            Job::Derived(batch, through) => {
                if shared.failed() {
                    continue;
                }
                if let Err(e) = derived.apply_batch(batch) {
                    tracing::error!(error = %e, "storing derived records failed; refusing writes until restart");
                    shared.failed.store(true, Ordering::Release);
                    continue;
                }
                if let Some(t) = through {
                    debug_assert!(t >= shared.derived_through());
                    shared.derived_through.store(t, Ordering::Release);
                }
            }
            Job::Group(g) => {
                if shared.failed() {
                    continue;
                }
                if let Err(e) = tree.apply_batch(g.batch) {
                    tracing::error!(error = %e, "indexing failed after a durable append; refusing writes until restart");
                    shared.failed.store(true, Ordering::Release);
                    continue;
                }
                let mut recent = shared.recent();
                for k in &g.events {
                    recent.events.remove(k);
                }
                for s in g.sequences {
                    recent.offsets.remove(&s);
                }
                for n in &g.nodes {
                    recent.nodes.remove(n);
                }
            }
            Job::Flush(reply) => {
                let r = if shared.failed() {
                    Err("the index failed earlier".to_string())
                } else {
                    tree.flush().map(|_| ()).map_err(|e| e.to_string())
                };
                let _ = reply.send(r);
            }
        }
    }
}
