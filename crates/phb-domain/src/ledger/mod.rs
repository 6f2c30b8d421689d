//! The ledger's state as a pure function of its log: organisations, budgets
//! and the chain head. `decide` says whether an event may be written and what
//! it changes; `apply` installs the change. Both writer and replay use the
//! same two functions, so the live service and a rebuild cannot disagree.

use crate::chain::{Hash, LogEntry, Refusal, SignedEvent, GENESIS_HASH};
use crate::error::{Reject, RejectCode};

mod access;
mod agreements;
mod budgets;
mod plans;
mod registry;
mod spendings;

pub use access::{HoldingsScope, Reader};
pub use budgets::{Budget, Spending};
pub use plans::{CarePlan, Charge, Uncovered};
pub use registry::Organisation;
pub use spendings::Spendings;

use crate::event::{decode_event, DecodeContext, Event, Subject, ROOT_SIGNER};
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeMap;

/// What a permitted event changes.
// Built once per decision and moved straight into `apply`: boxing the
// budget would add an allocation to every event for no saving.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or replace an organisation.
    Organisation(Organisation),
    /// Insert or replace a budget (its `last_sequence` is set by `apply`).
    Budget(Budget),
    /// Nothing but the head: the entry records a refusal.
    Refused,
    /// Nothing but the head: a commissioner's flag thresholds, which only
    /// the flags projection reads.
    Controls,
}

/// Enough to undo one `apply`.
#[derive(Debug, Clone)]
pub struct Undo {
    change: UndoChange,
    head: Head,
}

#[allow(clippy::large_enum_variant)] // as `Change`: one per applied event
#[derive(Debug, Clone)]
enum UndoChange {
    Organisation(String, Option<Organisation>),
    Budget(String, Option<Budget>),
    Nothing,
}

/// Where an event id already stands in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its sequence.
    pub sequence: u64,
    /// The digest (`SignedEvent::digest`) of the signed event stored there.
    pub digest: Hash,
    /// Its entry hash.
    pub entry_hash: Hash,
    /// `Some` if the entry there records a refusal (code, message).
    pub refusal: Option<Refusal>,
}

/// What `Ledger::admit` made of a submitted event.
#[derive(Debug)]
pub enum Admission {
    /// The same signed event is already stored: nothing changed. If the
    /// stored entry records a refusal, that refusal is the answer again.
    Duplicate(Stored),
    /// Accepted and applied to the state as the next entry; the caller
    /// writes `entry` (or rolls `undo` back if it cannot).
    Written(Box<Admitted>),
    /// Refused by the ledger's rules: `entry` records the refusal (it
    /// changes nothing but the head) and must be written before the refusal
    /// is answered, so that the same signed event can never be applied later.
    Refused(Box<Admitted>, Reject),
}

/// An event `Ledger::admit` accepted and applied.
#[derive(Debug)]
pub struct Admitted {
    /// The decoded event.
    pub event: Event,
    /// `SignedEvent::digest` of the submission.
    pub digest: Hash,
    /// The log entry to write.
    pub entry: LogEntry,
    /// What it changed (to apply to other copies of the state).
    pub change: Change,
    /// How to undo it on this state.
    pub undo: Undo,
}

/// What the checks before a decision found.
enum Identified {
    New(Event, Hash),
    Duplicate(Stored),
}

/// The tip of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The last sequence written (0 for an empty log).
    pub sequence: u64,
    /// The last entry's hash (`GENESIS_HASH` for an empty log).
    pub hash: Hash,
    /// The last entry's recorded_at (0 for an empty log).
    pub recorded_at_micros: i64,
}

impl Head {
    /// The head of an empty log.
    pub const GENESIS: Head = Head {
        sequence: 0,
        hash: GENESIS_HASH,
        recorded_at_micros: 0,
    };

    /// The head once `entry` is the last entry.
    pub fn of(entry: &LogEntry) -> Head {
        Head {
            sequence: entry.sequence,
            hash: entry.hash,
            recorded_at_micros: entry.recorded_at_micros,
        }
    }
}

/// Why replaying a stored entry failed: the log is not a valid ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The entry's sequence is not the next one.
    #[error("entry at sequence {found} where {expected} was expected")]
    Gap {
        /// What should have come next.
        expected: u64,
        /// What came.
        found: u64,
    },
    /// prev_hash does not match the previous entry's hash, or hash does not match the entry.
    #[error("hash chain broken at sequence {0}")]
    BrokenChain(u64),
    /// recorded_at went backwards.
    #[error("recorded_at goes backwards at sequence {0}")]
    ClockBackwards(u64),
    /// The event would not have been accepted.
    #[error("entry at sequence {sequence} is not a valid event: {reject}")]
    Invalid {
        /// Where.
        sequence: u64,
        /// Why.
        reject: Reject,
    },
    /// An entry records a refusal the ledger's rules do not give.
    #[error("entry at sequence {sequence} records a refusal with code {recorded}, but the rules {found}")]
    RefusalDisagrees {
        /// Where.
        sequence: u64,
        /// The recorded google.rpc.Code.
        recorded: u32,
        /// What replaying the rules gave instead.
        found: String,
    },
}

/// The whole ledger state.
#[derive(Debug, Clone)]
pub struct Ledger {
    ledger_id: String,
    root_key: VerifyingKey,
    orgs: BTreeMap<String, Organisation>,
    budgets: BTreeMap<String, Budget>,
    head: Head,
    /// During replay only: the speculative changes of the failed atomic
    /// batch whose run of refusal entries is being replayed.
    batch_run: Option<Vec<UndoChange>>,
}

impl Ledger {
    /// An empty ledger with this id and root key.
    pub fn new(ledger_id: impl Into<String>, root_key: VerifyingKey) -> Ledger {
        Ledger {
            ledger_id: ledger_id.into(),
            root_key,
            orgs: BTreeMap::new(),
            budgets: BTreeMap::new(),
            head: Head {
                sequence: 0,
                hash: GENESIS_HASH,
                recorded_at_micros: 0,
            },
            batch_run: None,
        }
    }

    /// The write model a read model implies: its organisations, budgets and
    /// head, which the two halves share by construction (the engine checks
    /// at every full replay that they agree). This is how a start from a
    /// projection snapshot gets the writer's state without replaying the
    /// log up to the snapshot.
    pub fn restore(read: &crate::ReadModel, root_key: VerifyingKey) -> Ledger {
        Ledger {
            ledger_id: read.ledger_id().to_string(),
            root_key,
            orgs: read
                .directory()
                .organisations()
                .map(|o| (o.id.clone(), o.clone()))
                .collect(),
            budgets: read
                .balances()
                .budgets()
                .map(|b| (b.id.clone(), b.clone()))
                .collect(),
            head: read.head(),
            batch_run: None,
        }
    }

    /// The configured ledger id.
    pub fn ledger_id(&self) -> &str {
        &self.ledger_id
    }

    /// The chain head.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Decodes the event for this ledger at `now_micros`.
    pub fn decode(&self, signed: &SignedEvent, now_micros: i64) -> Result<Event, Reject> {
        decode_event(
            &signed.event,
            DecodeContext {
                ledger_id: &self.ledger_id,
                now_micros,
            },
        )
    }

    /// Installs a decided change as entry `head`; returns how to undo it.
    pub fn apply(&mut self, change: Change, head: Head) -> Undo {
        assert_eq!(
            head.sequence,
            self.head.sequence + 1,
            "entries must be applied in sequence order"
        );
        assert!(head.recorded_at_micros >= self.head.recorded_at_micros);
        let prev_head = self.head;
        self.head = head;
        let change = self.apply_state(change, head.sequence);
        Undo {
            change,
            head: prev_head,
        }
    }

    /// Installs a change in the state (not the head); returns its undo.
    fn apply_state(&mut self, change: Change, sequence: u64) -> UndoChange {
        match change {
            Change::Organisation(o) => {
                let id = o.id.clone();
                let prev = self.orgs.insert(id.clone(), o);
                UndoChange::Organisation(id, prev)
            }
            Change::Budget(mut b) => {
                b.last_sequence = sequence;
                // A plan approved by this entry learns its sequence here,
                // as `last_sequence` does.
                if let Some(plan) = &mut b.plan {
                    if plan.approved_at == plans::PENDING {
                        plan.approved_at = sequence;
                    }
                }
                // Likewise a spending recorded by this entry.
                if let Some(s) = b.spendings.remove(&plans::PENDING) {
                    b.spendings.insert(sequence, s);
                }
                debug_assert!(!b.available().is_negative() && !b.held().is_negative());
                let id = b.id.clone();
                let prev = self.budgets.insert(id.clone(), b);
                UndoChange::Budget(id, prev)
            }
            Change::Refused | Change::Controls => UndoChange::Nothing,
        }
    }

    /// Reverts `apply_state`.
    fn undo_state(&mut self, u: UndoChange) {
        match u {
            UndoChange::Organisation(id, Some(o)) => {
                self.orgs.insert(id, o);
            }
            UndoChange::Organisation(id, None) => {
                self.orgs.remove(&id);
            }
            UndoChange::Budget(id, Some(b)) => {
                self.budgets.insert(id, b);
            }
            UndoChange::Budget(id, None) => {
                self.budgets.remove(&id);
            }
            UndoChange::Nothing => {}
        }
    }

    /// Reverts `apply`s, newest first.
    pub fn rollback(
        &mut self,
        undo: impl IntoIterator<Item = Undo, IntoIter: DoubleEndedIterator>,
    ) {
        for u in undo.into_iter().rev() {
            self.head = u.head;
            self.undo_state(u.change);
        }
    }

    /// The writer's whole decision on one submitted event, and its
    /// application to this state, in the one order every writer follows:
    /// decode → a byte-identical resubmission is a duplicate → authenticate
    /// → a reused (signer, event id) is ALREADY_EXISTS → decide → apply as
    /// the next entry, recorded at `now_micros` (never before the head's
    /// time). A refusal by the rules (`RejectCode::is_decision`) is also an
    /// entry: `Admission::Refused`.
    ///
    /// `stored(signer_id, event_id)` says where an idempotency key already
    /// stands (the caller's index: the log, plus whatever it has admitted
    /// but not yet written). Keys are scoped to the signer, so one
    /// organisation can neither take nor probe another's event ids.
    /// `verified_key` is the key the caller already checked the signature
    /// under, if any; the signature is checked again unless that is still
    /// the signer's key. Authentication comes before ALREADY_EXISTS so an
    /// unauthenticated caller cannot probe which event ids exist.
    pub fn admit(
        &mut self,
        signed: &SignedEvent,
        now_micros: i64,
        verified_key: Option<&VerifyingKey>,
        stored: impl FnOnce(&str, &str) -> Result<Option<Stored>, Reject>,
    ) -> Result<Admission, Reject> {
        let (event, digest) = match self.identify(signed, now_micros, verified_key, stored)? {
            Identified::New(event, digest) => (event, digest),
            Identified::Duplicate(s) => return Ok(Admission::Duplicate(s)),
        };
        match self.decide(&signed.signer_id, &event) {
            Ok(change) => Ok(Admission::Written(Box::new(
                self.append(event, digest, signed, now_micros, change, None),
            ))),
            Err(reject) if reject.code.is_decision() => {
                let refusal = Refusal::new(reject.code.grpc_code() as u32, false, &reject.message);
                let a = self.append(
                    event,
                    digest,
                    signed,
                    now_micros,
                    Change::Refused,
                    Some(refusal),
                );
                Ok(Admission::Refused(Box::new(a), reject))
            }
            Err(reject) => Err(reject),
        }
    }

    /// Records an atomic batch that failed by a decision of the rules, so
    /// that none of its events can be applied later, together or alone.
    /// Call it with the batch's own events rolled back. `failed_at` is the
    /// event whose refusal (`reject`) failed the batch; every other event is
    /// recorded refused with `aborted`.
    ///
    /// The events are re-run in order against the state the batch saw: each
    /// is authenticated there, and one the rules accept is applied
    /// *speculatively*, so that a later event signed by an organisation the
    /// batch registers or re-keys still authenticates. The speculative
    /// changes are undone before returning; what is kept is one refusal
    /// entry per recordable event (the first marked `first_in_batch`).
    /// `replay` re-runs such a run of entries the same way, so an auditor
    /// can check every signature and the failing event's code.
    ///
    /// One result per event: `Admission::Refused` (recorded),
    /// `Admission::Duplicate` (already stored: the caller answers it), or
    /// `Err` if it cannot be recorded (malformed, unauthenticated, its key
    /// used) — the caller answers its refusal unrecorded.
    pub fn admit_failed_batch(
        &mut self,
        batch: &[(&SignedEvent, Option<&VerifyingKey>)],
        failed_at: usize,
        reject: &Reject,
        aborted: &Reject,
        now_micros: i64,
        mut stored: impl FnMut(&str, &str) -> Result<Option<Stored>, Reject>,
    ) -> Vec<Result<Admission, Reject>> {
        // `reject` is a decision, or (a retry of an event recorded with an
        // earlier batch) that batch's ABORTED.
        debug_assert!(
            (reject.code.is_decision() || reject.code == RejectCode::Aborted)
                && aborted.code == RejectCode::Aborted
        );
        let mut speculative = Vec::new();
        let mut recorded: BTreeMap<(String, String), Stored> = BTreeMap::new();
        let mut first = true;
        let mut results = Vec::with_capacity(batch.len());
        for (i, (signed, verified_key)) in batch.iter().enumerate() {
            let lookup = |signer: &str, id: &str| match recorded
                .get(&(signer.to_string(), id.to_string()))
            {
                Some(s) => Ok(Some(s.clone())),
                None => stored(signer, id),
            };
            let (event, digest) = match self.identify(signed, now_micros, *verified_key, lookup) {
                Ok(Identified::New(event, digest)) => (event, digest),
                Ok(Identified::Duplicate(s)) => {
                    results.push(Ok(Admission::Duplicate(s)));
                    continue;
                }
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let this = if i == failed_at { reject } else { aborted };
            if let Ok(change) = self.decide(&signed.signer_id, &event) {
                speculative.push(self.apply_state(change, self.head.sequence));
            }
            let mut refusal = Refusal::new(this.code.grpc_code() as u32, true, &this.message);
            refusal.first_in_batch = std::mem::take(&mut first);
            let a = self.append(
                event,
                digest,
                signed,
                now_micros,
                Change::Refused,
                Some(refusal),
            );
            recorded.insert(
                (signed.signer_id.clone(), a.event.event_id.clone()),
                Stored {
                    sequence: a.entry.sequence,
                    digest: a.digest,
                    entry_hash: a.entry.hash,
                    refusal: a.entry.refusal.clone(),
                },
            );
            results.push(Ok(Admission::Refused(Box::new(a), this.clone())));
        }
        for u in speculative.into_iter().rev() {
            self.undo_state(u);
        }
        results
    }

    /// The checks before any decision: decode, duplicate, authenticate,
    /// idempotency key unused.
    fn identify(
        &self,
        signed: &SignedEvent,
        now_micros: i64,
        verified_key: Option<&VerifyingKey>,
        stored: impl FnOnce(&str, &str) -> Result<Option<Stored>, Reject>,
    ) -> Result<Identified, Reject> {
        let event = self.decode(signed, now_micros)?;
        let digest = signed.digest();
        let existing = stored(&signed.signer_id, &event.event_id)?;
        // A byte-identical resubmission of a stored event is a duplicate even
        // if the signer's key has since rotated: it was verified when stored.
        let existing = match existing {
            Some(s) if s.digest == digest => return Ok(Identified::Duplicate(s)),
            other => other,
        };
        let current = self.signer_key(&signed.signer_id);
        if current.is_none() || current != verified_key {
            self.authenticate(signed)?;
        }
        if let Some(s) = existing {
            // The key is the signer's own (authenticated above), so naming
            // the sequence tells the signer only about its own events.
            return Err(Reject::exists(format!(
                "event_id {:?} was already used by {:?} at sequence {} for a different event; use a new event_id for a new event",
                event.event_id, signed.signer_id, s.sequence
            )));
        }
        Ok(Identified::New(event, digest))
    }

    /// Applies `change` as the next entry, recorded at `now_micros` (never
    /// before the head's time).
    fn append(
        &mut self,
        event: Event,
        digest: Hash,
        signed: &SignedEvent,
        now_micros: i64,
        change: Change,
        refusal: Option<Refusal>,
    ) -> Admitted {
        debug_assert_eq!(refusal.is_some(), change == Change::Refused);
        let head = self.head;
        let entry = LogEntry::sealed(
            head.hash,
            head.sequence + 1,
            now_micros.max(head.recorded_at_micros),
            signed.clone(),
            refusal,
        );
        let undo = self.apply(change.clone(), Head::of(&entry));
        Admitted {
            event,
            digest,
            entry,
            change,
            undo,
        }
    }

    /// Replays one stored entry: checks its place in the chain, its hash, its
    /// signature and every rule, exactly as the writer did, then applies it.
    pub fn replay(&mut self, entry: &LogEntry) -> Result<Event, ReplayError> {
        self.replay_checking(entry, true).map(|(event, _)| event)
    }

    /// As `replay`, but the signature's own check is left to the caller:
    /// returns the key it must verify under, strictly
    /// (`chain::verify_signature`), at this point of the log. For an
    /// auditor that verifies signatures on another thread while the rules
    /// are replayed (phb-audit); until the caller has done so, nothing is
    /// verified. Everything else calls `replay`.
    pub fn replay_deferring_signature(
        &mut self,
        entry: &LogEntry,
    ) -> Result<(Event, VerifyingKey), ReplayError> {
        self.replay_checking(entry, false)
    }

    fn replay_checking(
        &mut self,
        entry: &LogEntry,
        check_signature: bool,
    ) -> Result<(Event, VerifyingKey), ReplayError> {
        // An entry that does not continue a failed batch's run ends it.
        let continues_run =
            matches!(&entry.refusal, Some(r) if r.in_atomic_batch && !r.first_in_batch);
        if !continues_run {
            self.end_batch_run();
        } else if self.batch_run.is_none() {
            return Err(ReplayError::Invalid {
                sequence: entry.sequence,
                reject: Reject::invalid(
                    "refusal",
                    "continues a failed atomic batch, but no batch starts before it",
                ),
            });
        }
        let expected = self.head.sequence + 1;
        if entry.sequence != expected {
            return Err(ReplayError::Gap {
                expected,
                found: entry.sequence,
            });
        }
        if entry.prev_hash != self.head.hash || !entry.hash_is_valid() {
            return Err(ReplayError::BrokenChain(entry.sequence));
        }
        if entry.recorded_at_micros < self.head.recorded_at_micros {
            return Err(ReplayError::ClockBackwards(entry.sequence));
        }
        let invalid = |reject| ReplayError::Invalid {
            sequence: entry.sequence,
            reject,
        };
        let event = self
            .decode(&entry.signed, entry.recorded_at_micros)
            .map_err(invalid)?;
        let key = *self
            .signer_key(&entry.signed.signer_id)
            .ok_or_else(|| invalid(Self::unknown_signer(&entry.signed.signer_id)))?;
        if check_signature {
            Self::verify_under(&key, &entry.signed).map_err(invalid)?;
        }
        let decided = self.decide(&entry.signed.signer_id, &event);
        let change = match (&entry.refusal, decided) {
            (None, decided) => decided.map_err(invalid)?,
            (Some(r), decided) if r.in_atomic_batch => {
                if r.first_in_batch {
                    self.batch_run = Some(Vec::new());
                }
                let (refused, accepted) = match decided {
                    Ok(change) => (None, Some(change)),
                    Err(e) => (Some(e), None),
                };
                self.check_refusal(entry.sequence, r, refused)?;
                // As the writer did: what the rules accept is applied for
                // the rest of the run, and undone when the run ends.
                if let Some(change) = accepted {
                    let u = self.apply_state(change, self.head.sequence);
                    if let Some(run) = &mut self.batch_run {
                        run.push(u);
                    }
                }
                Change::Refused
            }
            (Some(r), decided) => {
                self.check_refusal(entry.sequence, r, decided.err())?;
                Change::Refused
            }
        };
        self.apply(change, Head::of(entry));
        Ok((event, key))
    }

    /// Ends replay: undoes the speculative changes of a failed atomic
    /// batch that ends the log. Call after the last `replay`.
    pub fn finish_replay(&mut self) {
        self.end_batch_run();
    }

    fn end_batch_run(&mut self) {
        if let Some(run) = self.batch_run.take() {
            for u in run.into_iter().rev() {
                self.undo_state(u);
            }
        }
    }

    /// A recorded refusal must be one the writer makes: a decision of the
    /// rules that replaying them gives again, or, inside a failed atomic
    /// batch (whose other events the log does not apply), any decision or
    /// ABORTED.
    fn check_refusal(
        &self,
        sequence: u64,
        r: &Refusal,
        decided: Option<Reject>,
    ) -> Result<(), ReplayError> {
        let disagrees = |found: String| ReplayError::RefusalDisagrees {
            sequence,
            recorded: r.code,
            found,
        };
        let code = RejectCode::from_grpc(r.code)
            .filter(|c| c.is_decision() || (r.in_atomic_batch && *c == RejectCode::Aborted))
            .ok_or_else(|| disagrees("never record that code".into()))?;
        if code == RejectCode::Aborted {
            // Refused with the batch, whatever the rules say of it alone.
            return Ok(());
        }
        match decided {
            None => Err(disagrees("accept the event".into())),
            Some(d) if d.code != code => Err(disagrees(format!(
                "give code {}: {}",
                d.code.grpc_code(),
                d.message
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Decides whether `signer_id` may write `event` now, and what it changes.
    /// The signature must already be verified (`authenticate`). Dispatches
    /// by subject: the registry decides organisation events, the budgets
    /// part decides openings and budget events.
    pub fn decide(&self, signer_id: &str, event: &Event) -> Result<Change, Reject> {
        match event.kind.subject() {
            Subject::Organisation(change) => {
                if signer_id != ROOT_SIGNER {
                    return Err(Reject::denied(format!(
                        "{} must be signed by the ledger's root key (signer_id \"root\")",
                        event.kind.name()
                    )));
                }
                self.decide_organisation(change)
            }
            Subject::Opening(opening) => {
                let signer = self.budget_signer(signer_id)?;
                self.decide_open(signer, &event.budget_id, opening)
            }
            Subject::Budget(change) => {
                let signer = self.budget_signer(signer_id)?;
                let on = crate::event::Date::from_unix_micros(event.occurred_at_micros);
                self.decide_budget(signer, &event.budget_id, event.kind.name(), change, on)
            }
            Subject::Controls(_) => {
                let signer = self.budget_signer(signer_id)?;
                if !signer.has(crate::event::Role::Commissioner) {
                    return Err(Reject::denied(format!(
                        "{:?} may not record ControlsConfigured: only a commissioner sets the flag thresholds of its budgets",
                        signer.id
                    )));
                }
                Ok(Change::Controls)
            }
        }
    }
}
