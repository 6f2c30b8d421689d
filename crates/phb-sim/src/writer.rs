//! `phb-engine`'s writer without the store: `Ledger::admit` (decode →
//! duplicate? → authenticate → (signer, event id) already used? → decide →
//! apply as the next entry, a refusal by the rules as a refusal entry), and
//! for an atomic request the same rollback and `Ledger::admit_failed_batch`
//! recording as `Writer::process` / `abort_batch`. The
//! id index is keyed by (signer, event id), as the store's is.
//!
//! What stands in for the store is one index of every entry, so a lookup
//! finds what the engine finds in its group or in the store; a failing store
//! (UNAVAILABLE) is not modelled.

use crate::cast::{signing_key, LEDGER_ID, ROOT};
use phb_domain::event::decode_event_id;
use phb_domain::{
    Admission, Admitted, Change, Event, Hash, Ledger, LogEntry, Refusal, Reject, SignedEvent,
    Stored, Undo,
};
use std::collections::HashMap;

/// What happened to one submitted event (`phb_engine::Outcome`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written at this sequence.
    Written(u64),
    /// Already applied at this sequence.
    Duplicate(u64),
    /// Refused by the rules and the refusal recorded at `sequence`: now, or
    /// (`duplicate`) by an earlier submission of the same signed event.
    Refused {
        /// Why (for a retry: the recorded refusal).
        reject: Reject,
        /// The entry that records the refusal.
        sequence: u64,
        /// True if an earlier submission recorded it.
        duplicate: bool,
    },
    /// Refused without deciding anything; nothing recorded.
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

/// An idempotency key: (signer id, event id).
pub type Key = (String, String);

/// The key of a submission, if its bytes carry an event id at all.
pub fn key_of(signed: &SignedEvent) -> Option<Key> {
    decode_event_id(&signed.event).map(|id| (signed.signer_id.clone(), id))
}

/// Where a key stands in the log: the store's index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// The entry's sequence.
    pub sequence: u64,
    /// `SignedEvent::digest` of what is stored there.
    pub digest: Hash,
    /// `Some` if the entry records a refusal.
    pub refusal: Option<Refusal>,
}

/// The answer to a resubmission of a stored event: the original outcome.
pub fn duplicate(s: Stored) -> Outcome {
    match &s.refusal {
        Some(r) => Outcome::Refused {
            reject: Reject::from_refusal(r),
            sequence: s.sequence,
            duplicate: true,
        },
        None => Outcome::Duplicate(s.sequence),
    }
}

/// The refusal of the other events of an atomic request that failed at
/// `failed_at` for `reason`.
pub fn aborted_by(failed_at: usize, reason: &str) -> Reject {
    Reject::aborted(format!(
        "not applied: the atomic batch failed at event {failed_at} ({reason})"
    ))
}

/// Sees every step `Writer::process` takes, to check it.
pub trait Observer {
    /// Before one event is admitted (alone) or recorded as refused, at
    /// server time `now`.
    fn before(&mut self, _w: &Writer, _signed: &SignedEvent, _now: i64) {}
    /// After it: `recording` is the refusal being recorded for a failed
    /// atomic request, `None` for an event admitted alone.
    fn after(
        &mut self,
        _w: &Writer,
        _signed: &SignedEvent,
        _outcome: &Outcome,
        _recording: Option<&Reject>,
    ) {
    }
    /// The log was cut back to `len` entries (an atomic request failed, or
    /// the caller rolled back).
    fn rolled_back(&mut self, _w: &Writer, _len: usize) {}
    /// An atomic request that failed by a decision at `failed_at` was
    /// recorded: its entries are those after the first `start`.
    fn batch_recorded(
        &mut self,
        _w: &Writer,
        _built: &[SignedEvent],
        _failed_at: usize,
        _outcomes: &[Outcome],
        _start: usize,
    ) {
    }
}

impl Observer for () {}

impl<T: Observer + ?Sized> Observer for &mut T {
    fn before(&mut self, w: &Writer, signed: &SignedEvent, now: i64) {
        (**self).before(w, signed, now)
    }
    fn after(&mut self, w: &Writer, signed: &SignedEvent, o: &Outcome, r: Option<&Reject>) {
        (**self).after(w, signed, o, r)
    }
    fn rolled_back(&mut self, w: &Writer, len: usize) {
        (**self).rolled_back(w, len)
    }
    fn batch_recorded(
        &mut self,
        w: &Writer,
        built: &[SignedEvent],
        failed_at: usize,
        outcomes: &[Outcome],
        start: usize,
    ) {
        (**self).batch_recorded(w, built, failed_at, outcomes, start)
    }
}

/// Both, the first one first at every step (a tracer that prints before
/// the checks can fail, say).
impl<A: Observer, B: Observer> Observer for (A, B) {
    fn before(&mut self, w: &Writer, signed: &SignedEvent, now: i64) {
        self.0.before(w, signed, now);
        self.1.before(w, signed, now);
    }
    fn after(&mut self, w: &Writer, signed: &SignedEvent, o: &Outcome, r: Option<&Reject>) {
        self.0.after(w, signed, o, r);
        self.1.after(w, signed, o, r);
    }
    fn rolled_back(&mut self, w: &Writer, len: usize) {
        self.0.rolled_back(w, len);
        self.1.rolled_back(w, len);
    }
    fn batch_recorded(
        &mut self,
        w: &Writer,
        built: &[SignedEvent],
        failed_at: usize,
        outcomes: &[Outcome],
        start: usize,
    ) {
        self.0.batch_recorded(w, built, failed_at, outcomes, start);
        self.1.batch_recorded(w, built, failed_at, outcomes, start);
    }
}

/// The writer's state: the working ledger, the log it wrote, the id index
/// ((signer, event id) → sequence, digest, refusal) and the undo records of
/// every entry.
#[derive(Debug, Clone)]
pub struct Writer {
    /// The working state.
    pub ledger: Ledger,
    /// Every entry written, in order (refusal entries included).
    pub log: Vec<LogEntry>,
    /// The decoded event of every entry.
    pub events: Vec<Event>,
    /// Undo records, one per entry.
    pub undos: Vec<Undo>,
    /// The store's index.
    pub ids: HashMap<Key, Indexed>,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// An empty ledger whose root key is the cast's root key 0.
    pub fn new() -> Writer {
        Writer {
            ledger: Ledger::new(LEDGER_ID, signing_key(ROOT, 0).verifying_key()),
            log: Vec::new(),
            events: Vec::new(),
            undos: Vec::new(),
            ids: HashMap::new(),
        }
    }

    /// The idempotency-key lookup `admit` gets (the store's and the
    /// group's in one: this index holds every staged entry).
    fn lookup<'a>(
        ids: &'a HashMap<Key, Indexed>,
        log: &'a [LogEntry],
    ) -> impl FnOnce(&str, &str) -> Result<Option<Stored>, Reject> + 'a {
        move |signer_id, event_id| {
            Ok(ids
                .get(&(signer_id.to_string(), event_id.to_string()))
                .map(|i| Stored {
                    sequence: i.sequence,
                    digest: i.digest,
                    entry_hash: log[i.sequence as usize - 1].hash,
                    refusal: i.refusal.clone(),
                }))
        }
    }

    /// Appends what `admit` or `admit_failed_batch` staged (`Group::stage`),
    /// checking what the engine takes for granted: the entry is the next
    /// sequence, and it changes nothing but the head exactly when it records
    /// a refusal.
    fn stage(&mut self, a: Admitted) {
        assert_eq!(
            a.entry.sequence as usize,
            self.log.len() + 1,
            "not the next sequence"
        );
        assert_eq!(
            a.change == Change::Refused,
            a.entry.refusal.is_some(),
            "a refusal entry must change nothing but the head, and only a refusal entry may"
        );
        let key = (a.entry.signed.signer_id.clone(), a.event.event_id.clone());
        let indexed = Indexed {
            sequence: a.entry.sequence,
            digest: a.digest,
            refusal: a.entry.refusal.clone(),
        };
        assert!(
            self.ids.insert(key, indexed).is_none(),
            "admit let a used (signer, event id) through"
        );
        self.undos.push(a.undo);
        self.events.push(a.event);
        self.log.push(a.entry);
    }

    /// One submission alone at server time `now` (`Writer::try_one`).
    pub fn try_one(&mut self, signed: &SignedEvent, now: i64) -> Outcome {
        let admitted = self
            .ledger
            .admit(signed, now, None, Self::lookup(&self.ids, &self.log));
        match admitted {
            Ok(Admission::Duplicate(s)) => duplicate(s),
            Ok(Admission::Written(a)) => {
                let sequence = a.entry.sequence;
                self.stage(*a);
                Outcome::Written(sequence)
            }
            Ok(Admission::Refused(a, reject)) => {
                let sequence = a.entry.sequence;
                self.stage(*a);
                Outcome::Refused {
                    reject,
                    sequence,
                    duplicate: false,
                }
            }
            Err(r) => Outcome::Rejected(r),
        }
    }

    /// Rolls the ledger and log back to the first `len` entries
    /// (`Group::roll_back_to`).
    pub fn rollback_to(&mut self, len: usize) {
        let undo = self.undos.split_off(len);
        self.ledger.rollback(undo);
        for (e, ev) in self.log.drain(len..).zip(self.events.drain(len..)) {
            self.ids.remove(&(e.signed.signer_id, ev.event_id));
        }
    }

    /// One request (`Writer::process`): each event in turn; an atomic
    /// request rolls its own entries back at the first refusal, then, if
    /// that refusal was a decision of the rules (recorded now or before),
    /// records every one of its events as refused where it can, in request
    /// order (the failing one with its refusal, the others ABORTED);
    /// otherwise the others are ABORTED and nothing is recorded.
    pub fn process(
        &mut self,
        built: &[SignedEvent],
        atomic: bool,
        now: i64,
        obs: &mut impl Observer,
    ) -> Vec<Outcome> {
        let start = self.log.len();
        let mut outcomes = Vec::with_capacity(built.len());
        for (i, signed) in built.iter().enumerate() {
            obs.before(self, signed, now);
            let o = self.try_one(signed, now);
            obs.after(self, signed, &o, None);
            let failed = o.is_refusal();
            outcomes.push(o);
            if failed && atomic {
                self.rollback_to(start);
                obs.rolled_back(self, start);
                let failure = outcomes.swap_remove(i);
                return self.abort_batch(built, i, failure, now, obs);
            }
        }
        outcomes
    }

    /// `Writer::abort_batch`: a batch that failed by a decision of the
    /// rules (new, or a retry of a recorded one) is recorded whole
    /// (`Ledger::admit_failed_batch`); any other failure leaves the others
    /// ABORTED, unrecorded.
    fn abort_batch(
        &mut self,
        built: &[SignedEvent],
        failed_at: usize,
        failure: Outcome,
        now: i64,
        obs: &mut impl Observer,
    ) -> Vec<Outcome> {
        let reason = match &failure {
            Outcome::Refused { reject, .. } | Outcome::Rejected(reject) => reject.message.clone(),
            o => unreachable!("an atomic request failed at {o:?}"),
        };
        let aborted = aborted_by(failed_at, &reason);
        let reject = match &failure {
            Outcome::Refused { reject, .. } => reject.clone(),
            _ => {
                return (0..built.len())
                    .map(|i| {
                        if i == failed_at {
                            failure.clone()
                        } else {
                            Outcome::Rejected(aborted.clone())
                        }
                    })
                    .collect();
            }
        };
        let start = self.log.len();
        let batch: Vec<_> = built.iter().map(|s| (s, None)).collect();
        let (ids, log) = (&self.ids, &self.log);
        let results = self.ledger.admit_failed_batch(
            &batch,
            failed_at,
            &reject,
            &aborted,
            now,
            |signer_id: &str, event_id: &str| Self::lookup(ids, log)(signer_id, event_id),
        );
        let outcomes: Vec<Outcome> = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let fallback = if i == failed_at {
                    reject.clone()
                } else {
                    aborted.clone()
                };
                match r {
                    Ok(Admission::Refused(a, reject)) => {
                        let sequence = a.entry.sequence;
                        self.stage(*a);
                        Outcome::Refused {
                            reject,
                            sequence,
                            duplicate: false,
                        }
                    }
                    Ok(Admission::Duplicate(s)) if s.refusal.is_some() => duplicate(s),
                    Ok(_) | Err(_) => Outcome::Rejected(fallback),
                }
            })
            .collect();
        obs.batch_recorded(self, built, failed_at, &outcomes, start);
        outcomes
    }

    /// A writer with every event of `setup` submitted alone at `now`,
    /// unchecked.
    pub fn with(setup: &[SignedEvent], now: i64) -> Writer {
        let mut w = Writer::new();
        for s in setup {
            w.try_one(s, now);
        }
        w
    }

    /// The entry at `sequence` (1-based).
    pub fn entry(&self, sequence: u64) -> &LogEntry {
        &self.log[sequence as usize - 1]
    }
}
