//! One instance among several sharing a log (`phb_store::SharedLog`, on
//! PostgreSQL: `phb-pglog`; docs/high-availability.md).
//!
//! The writer thread has two modes. As **writer** it works as alone, except
//! that a group is committed to the shared log before the local one (so the
//! local log stays a prefix of the shared log), and when idle it confirms
//! its last group and checks, once a second, that its session is alive. As
//! **reader** it copies what the shared log confirmed into the local store
//! — every entry re-verified and re-decided by `Ledger::replay`, as at a
//! start — folds it into the read model like a committed group, answers
//! appends UNAVAILABLE naming the writer, and takes the writer role when no
//! instance holds it (after copying everything up to the head it then
//! owns). A failed commit gives the role up: the group's outcome is unknown,
//! so it is answered UNAVAILABLE (a retry of the same signed event is
//! answered as a duplicate if it was stored) and the instance, as a reader,
//! learns what the log holds by reading it.
//!
//! An instance whose local copy cannot follow the shared log (an entry the
//! rules refuse, a local log that is not a prefix of it, local storage
//! failing) stops there: it refuses writes, reports NOT_SERVING, and needs
//! an operator, like a local log that fails to replay.

use super::{Outcome, Request, Writer};
use phb_domain::Reject;
use phb_store::{Append, SharedLog, SharedLogError, MAX_GROUP_ENTRIES};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often a reader looks for newly confirmed entries.
const POLL: Duration = Duration::from_millis(20);
/// How often an idle writer checks its session (a writer whose database
/// failed over learns it without waiting for a write).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// At most one warning about an unreachable shared log per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// This instance's part in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Alone on its own log (the embedded default).
    Standalone,
    /// The writer of a shared log.
    Writer,
    /// A reader of a shared log: serves reads, refuses appends.
    Reader {
        /// The address the writer advertises, if an instance holds the role.
        writer: Option<String>,
    },
}

impl Role {
    /// The refusal of an append sent to this instance, if it refuses them.
    pub fn refuses_writes(&self) -> Option<Reject> {
        match self {
            Role::Standalone | Role::Writer => None,
            Role::Reader { writer: Some(w) } => Some(Reject::unavailable(format!(
                "this instance reads a shared log and does not write; send appends to the writer at {w} (also in the x-phb-writer response metadata)"
            ))),
            Role::Reader { writer: None } => Some(Reject::unavailable(
                "this instance reads a shared log and does not write, and no instance holds the writer role right now (a failover is under way); retry shortly with the same signed events",
            )),
        }
    }
}

/// The shared log and this instance's state in it.
pub(crate) struct Shared {
    log: Box<dyn SharedLog>,
    advertise: String,
    leading: bool,
    /// The local log was checked to be a prefix of the shared one.
    prefix_checked: bool,
    /// Why this instance stopped following, if it did.
    broken: Option<String>,
    last_warning: Option<Instant>,
}

impl Shared {
    pub(crate) fn new(log: Box<dyn SharedLog>, advertise: String) -> Shared {
        Shared {
            log,
            advertise,
            leading: false,
            prefix_checked: false,
            broken: None,
            last_warning: None,
        }
    }

    /// Commits a group as writer; on failure gives the role up.
    pub(crate) fn commit(&mut self, group: &[Append<'_>]) -> Result<(), String> {
        if !self.leading {
            return Err("this instance no longer holds the writer role".into());
        }
        self.log.commit(group).map_err(|e| {
            tracing::error!(error = %e, "the shared log did not confirm a group; giving up the writer role");
            self.leading = false;
            self.log.resign();
            format!("{e}; the outcome is unknown until the log is read")
        })
    }

    fn warn(&mut self, what: &str, e: &SharedLogError) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            self.last_warning = Some(now);
            tracing::warn!(error = %e, "{what}");
        }
    }
}

/// Why copying from the shared log stopped.
enum CopyError {
    /// Try again later (the database is unreachable).
    Retry(SharedLogError),
    /// This instance cannot follow the log any more.
    Broken(String),
}

impl From<SharedLogError> for CopyError {
    /// What the shared log holds wrongly stops this instance; anything
    /// else (the database unreachable) is tried again.
    fn from(e: SharedLogError) -> CopyError {
        match e {
            SharedLogError::Corrupt(why) => CopyError::Broken(why),
            e => CopyError::Retry(e),
        }
    }
}

impl Writer {
    fn shared(&mut self) -> &mut Shared {
        self.shared
            .as_mut()
            .expect("run_shared runs only with a shared log")
    }

    pub(crate) fn run_shared(mut self, mut rx: mpsc::Receiver<Request>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "the writer thread could not start its timer");
                return;
            }
        };
        loop {
            let shared = self.shared();
            let wait = if shared.broken.is_some() {
                HEARTBEAT
            } else if shared.leading {
                // Readers copy only what is confirmed: when no request waits,
                // confirm the last group (under load the next group's
                // commit confirms it).
                if rx.is_empty() {
                    if let Err(e) = shared.log.confirm() {
                        self.step_down(&e.to_string());
                        continue;
                    }
                }
                match rt.block_on(async { tokio::time::timeout(HEARTBEAT, rx.recv()).await }) {
                    Ok(Some(first)) => {
                        self.serve_group(first, &mut rx);
                        if !self.store.accepts_writes() {
                            self.break_off("local storage failed after the shared log committed a group; restart this instance (it copies the group back from the shared log)");
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        // Idle: is the session holding the role alive?
                        if let Err(e) = self.shared().log.confirmed() {
                            self.step_down(&e.to_string());
                        }
                    }
                }
                continue;
            } else {
                self.follow();
                if self.shared().leading {
                    continue;
                }
                POLL
            };
            // A reader (or a broken instance) answers what was queued
            // before its role reached the callers, until the next poll.
            let until = tokio::time::Instant::now() + wait;
            loop {
                match rt.block_on(async { tokio::time::timeout_at(until, rx.recv()).await }) {
                    Ok(Some(Request::Write(req))) => {
                        let refusal = self.refusal();
                        let _ = req
                            .reply
                            .send(vec![Outcome::Rejected(refusal); req.events.len()]);
                    }
                    Ok(Some(Request::FlushIndex(reply))) => self.flush_index(reply),
                    Ok(None) => {
                        tracing::info!("writer stopped: all engine handles dropped");
                        return;
                    }
                    Err(_) => break,
                }
            }
        }
        tracing::info!("writer stopped: all engine handles dropped");
    }

    fn refusal(&self) -> Reject {
        let broken = self.shared.as_ref().and_then(|s| s.broken.clone());
        match broken {
            Some(why) => Reject::unavailable(format!(
                "this instance stopped following the shared log ({why}); it refuses writes until an operator restarts it"
            )),
            None => self.role.borrow().refuses_writes().unwrap_or_else(|| {
                Reject::unavailable("the writer role changed; retry with the same signed events")
            }),
        }
    }

    /// Gives the writer role up after a failure of the shared log.
    fn step_down(&mut self, why: &str) {
        let shared = self.shared();
        if shared.leading {
            tracing::warn!(problem = %why, "giving up the writer role");
        }
        shared.leading = false;
        shared.log.resign();
        self.role.send_replace(super::Role::Reader { writer: None });
        phb_metrics::global().writer_role.set(0);
    }

    /// Stops following: writes are refused and health reports NOT_SERVING
    /// until an operator restarts the instance.
    fn break_off(&mut self, why: &str) {
        tracing::error!(problem = %why, "this instance stops following the shared log");
        let shared = self.shared();
        shared.broken = Some(why.to_string());
        shared.leading = false;
        shared.log.resign();
        self.role.send_replace(super::Role::Reader { writer: None });
        phb_metrics::global().writer_role.set(0);
        self.writable.send_replace(false);
        phb_metrics::global().writable.set(0);
    }

    /// One reader step: check the local log against the shared one (once),
    /// copy what is confirmed, and take the writer role if it is free.
    fn follow(&mut self) {
        if !self.shared().prefix_checked {
            match self.check_prefix() {
                Ok(()) => self.shared().prefix_checked = true,
                Err(CopyError::Retry(e)) => {
                    return self.shared().warn(
                        "the shared log is unreachable; serving reads from the local copy",
                        &e,
                    )
                }
                Err(CopyError::Broken(why)) => return self.break_off(&why),
            }
        }
        let confirmed = match self.shared().log.confirmed() {
            Ok(c) => c,
            Err(SharedLogError::Corrupt(why)) => return self.break_off(&why),
            Err(e) => {
                return self.shared().warn(
                    "the shared log is unreachable; serving reads from the local copy",
                    &e,
                )
            }
        };
        phb_metrics::global()
            .shared_confirmed
            .set(i64::try_from(confirmed.sequence).unwrap_or(i64::MAX));
        let role = super::Role::Reader {
            writer: confirmed.writer.clone(),
        };
        self.role.send_if_modified(|r| {
            let changed = *r != role;
            *r = role;
            changed
        });
        if let Err(e) = self.copy_through(confirmed.sequence) {
            return self.copy_failed(e);
        }
        if confirmed.writer.is_none() {
            self.try_lead();
        }
    }

    fn copy_failed(&mut self, e: CopyError) {
        match e {
            CopyError::Retry(e) => self.shared().warn("copying from the shared log failed", &e),
            CopyError::Broken(why) => self.break_off(&why),
        }
    }

    fn try_lead(&mut self) {
        let shared = self.shared();
        let advertise = shared.advertise.clone();
        let lead = match shared.log.try_lead(&advertise) {
            Ok(Some(lead)) => lead,
            Ok(None) => return,
            Err(SharedLogError::Corrupt(why)) => return self.break_off(&why),
            Err(e) => return self.shared().warn("taking the writer role failed", &e),
        };
        // Everything up to the head is ours now, and durable: copy it first.
        if let Err(e) = self.copy_through(lead.sequence) {
            self.step_down("copying the log up to its head failed");
            return self.copy_failed(e);
        }
        let head = self.ledger.head();
        if head.sequence != lead.sequence || head.hash != lead.hash {
            return self.break_off(&format!(
                "after copying, this instance's head is sequence {} but the shared log's is {}, with another hash",
                head.sequence, lead.sequence
            ));
        }
        self.shared().leading = true;
        self.role.send_replace(super::Role::Writer);
        phb_metrics::global().writer_role.set(1);
        tracing::info!(
            epoch = lead.epoch,
            head = head.sequence,
            "took the writer role of the shared log"
        );
    }

    /// The local log must be a prefix of the shared one: its last entry
    /// must be in the shared log with the same hash.
    fn check_prefix(&mut self) -> Result<(), CopyError> {
        let head = self.ledger.head();
        if head.sequence == 0 {
            return Ok(());
        }
        let found = self
            .shared()
            .log
            .read(head.sequence - 1, head.sequence, 1)
            .map_err(CopyError::from)?;
        match found.first() {
            Some(e) if e.hash == head.hash => Ok(()),
            Some(_) => Err(CopyError::Broken(format!(
                "the shared log's entry {} differs from this data directory's: it belongs to another ledger, or one of the two was rewritten",
                head.sequence
            ))),
            None => Err(CopyError::Broken(format!(
                "this data directory holds entries up to {} but the shared log holds fewer: it is not this ledger's database, or committed entries were lost from it",
                head.sequence
            ))),
        }
    }

    /// Copies the shared log's entries after the local head, through
    /// `through` (a group boundary: a confirmed point or the head), into
    /// the local store and the read model.
    fn copy_through(&mut self, through: u64) -> Result<(), CopyError> {
        let mut copied = false;
        while self.store.head_sequence() < through {
            let after = self.store.head_sequence();
            let entries = self
                .shared()
                .log
                .read(after, through, MAX_GROUP_ENTRIES)
                .map_err(CopyError::from)?;
            if entries.is_empty() {
                return Err(CopyError::Broken(format!(
                    "the shared log confirms entries through {through} but holds none after {after}"
                )));
            }
            let mut events = Vec::with_capacity(entries.len());
            for e in &entries {
                let event = self.ledger.replay(e).map_err(|err| {
                    CopyError::Broken(format!(
                        "the shared log's entry {} does not replay: {err}",
                        e.sequence
                    ))
                })?;
                events.push(event);
            }
            let appends: Vec<Append<'_>> = entries
                .iter()
                .zip(&events)
                .map(|(entry, event)| Append {
                    entry,
                    event_id: &event.event_id,
                })
                .collect();
            self.store.append(&appends).map_err(|e| {
                CopyError::Broken(format!("writing the copied entries locally failed: {e}"))
            })?;
            drop(appends);
            self.publish(entries.iter().zip(events.iter()));
            copied = true;
        }
        if copied {
            // `through` ends a group, so a failed atomic batch's run of
            // refusals ends here too.
            self.ledger.finish_replay();
        }
        Ok(())
    }
}
