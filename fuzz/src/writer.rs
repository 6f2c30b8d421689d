//! `phb-engine`'s writer without the store: decode → duplicate? →
//! authenticate → event id already used? → decide → apply, with a head from
//! `LogEntry::next` and the recorded time forced non-decreasing.

use crate::cast::{signing_key, LEDGER_ID, ROOT};
use phb_domain::{Admission, Event, Hash, Ledger, LogEntry, Reject, SignedEvent, Stored, Undo};
use std::collections::HashMap;

/// What a written or duplicate submission returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written at this sequence.
    Written(u64),
    /// Already in the log at this sequence.
    Duplicate(u64),
}

/// The writer's state: the working ledger, the log it wrote, the event-id
/// index (id → sequence, digest) and the undo records of every entry.
#[derive(Clone)]
pub struct Writer {
    /// The working state.
    pub ledger: Ledger,
    /// Every entry written, in order.
    pub log: Vec<LogEntry>,
    /// The decoded event of every entry.
    pub events: Vec<Event>,
    /// Undo records, one per entry.
    pub undos: Vec<Undo>,
    /// The store's index: event id → (sequence, digest).
    pub ids: HashMap<String, (u64, Hash)>,
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

    /// One submission at server time `now`.
    pub fn try_one(&mut self, signed: &SignedEvent, now: i64) -> Result<Outcome, Reject> {
        let (ids, log) = (&self.ids, &self.log);
        let stored = |id: &str| {
            Ok(ids.get(id).map(|&(sequence, digest)| Stored {
                sequence,
                digest,
                entry_hash: log[sequence as usize - 1].hash,
            }))
        };
        let a = match self.ledger.admit(signed, now, None, stored)? {
            Admission::Duplicate(s) => return Ok(Outcome::Duplicate(s.sequence)),
            Admission::Written(a) => *a,
        };
        let sequence = a.entry.sequence;
        self.undos.push(a.undo);
        self.ids
            .insert(a.event.event_id.clone(), (sequence, a.digest));
        self.log.push(a.entry);
        self.events.push(a.event);
        Ok(Outcome::Written(sequence))
    }

    /// Rolls the ledger and log back to the first `len` entries, as the
    /// writer does for an atomic request with a refused event.
    pub fn rollback_to(&mut self, len: usize) {
        let undo = self.undos.split_off(len);
        self.ledger.rollback(undo);
        for e in self.events.drain(len..) {
            self.ids.remove(&e.event_id);
        }
        self.log.truncate(len);
    }

    /// A writer with every event of `setup` submitted at `now`; refusals are
    /// skipped.
    pub fn with(setup: &[SignedEvent], now: i64) -> Writer {
        let mut w = Writer::new();
        for s in setup {
            let _ = w.try_one(s, now);
        }
        w
    }
}
