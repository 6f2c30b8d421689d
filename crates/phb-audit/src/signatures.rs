//! Every signature of an export, verified strictly (the server's predicate,
//! `phb_chain::verify_signature`: docs/log-format.md §7), under the key each
//! signer held at that point of the log, with the keys tracked from the log
//! itself as docs/log-format.md §6 (steps 7 and 8) describes —
//! independently of `phb_domain`'s registry, which the replay uses, and
//! checked against it entry by entry.
//!
//! Runs on its own thread behind the replay (which re-decides every event
//! without the signature's curve arithmetic, `replay_deferring_signature`),
//! so the two halves of the work run on two cores. Batched verification
//! (`verify_batch`) is not used: it accepts signatures the strict check
//! refuses (a small-order component in R), see BENCHMARKS.md.

use crate::export::Location;
use crate::Failure;
use ed25519_dalek::{Signature, VerifyingKey};
use phb_chain::LogEntry;
use phb_domain::event::ROOT_SIGNER;
use phb_proto::v1 as pb;
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;

/// The ABORTED code: in a failed atomic batch, an event the rules may have
/// accepted (docs/log-format.md §6, step 8).
const ABORTED: u32 = 10;

/// The signer keys at a point in the log.
pub(crate) struct Keys {
    current: HashMap<String, VerifyingKey>,
    /// Keys an organisation no longer signs with, and the sequence of the
    /// rotation that retired each: for the failure message only.
    retired: HashMap<String, Vec<(VerifyingKey, u64)>>,
    /// The tentative changes of an open failed-batch run: (org, the key
    /// it had before) to restore when the run ends.
    run: Option<Vec<(String, Option<VerifyingKey>)>>,
}

impl Keys {
    pub(crate) fn new(root: VerifyingKey) -> Keys {
        let mut current = HashMap::new();
        current.insert(ROOT_SIGNER.to_string(), root);
        Keys {
            current,
            retired: HashMap::new(),
            run: None,
        }
    }

    fn end_run(&mut self) {
        for (org, before) in self.run.take().unwrap_or_default().into_iter().rev() {
            match before {
                Some(k) => self.current.insert(org, k),
                None => self.current.remove(&org),
            };
        }
    }

    /// Folds an entry in, after its signature was checked: registrations
    /// and rotations the root key signed, applied ones for good, those of
    /// a failed atomic batch (recorded ABORTED) for the rest of the run.
    fn advance(&mut self, e: &LogEntry) {
        let continues = e
            .refusal
            .as_ref()
            .is_some_and(|r| r.in_atomic_batch && !r.first_in_batch);
        if !continues {
            self.end_run();
        }
        if e.refusal.as_ref().is_some_and(|r| r.first_in_batch) {
            self.run = Some(Vec::new());
        }
        if e.signed.signer_id != ROOT_SIGNER {
            return;
        }
        let tentative = match &e.refusal {
            None => false,
            Some(r) if r.in_atomic_batch && r.code == ABORTED && self.run.is_some() => true,
            Some(_) => return,
        };
        let Ok(ev) = pb::Event::decode(e.signed.event.as_slice()) else {
            return;
        };
        let key = |bytes: &[u8]| {
            <[u8; 32]>::try_from(bytes)
                .ok()
                .and_then(|b| phb_chain::parse_public_key(&b))
        };
        let (org, new) = match &ev.kind {
            Some(pb::event::Kind::OrganisationRegistered(o)) => {
                let known = self.current.contains_key(&o.organisation_id);
                match key(&o.public_key) {
                    Some(k) if !known && o.organisation_id != ROOT_SIGNER => {
                        (o.organisation_id.clone(), k)
                    }
                    _ => return,
                }
            }
            Some(pb::event::Kind::KeyRotated(o)) => {
                match (self.current.get(&o.organisation_id), key(&o.new_public_key)) {
                    (Some(old), Some(k)) if *old != k && o.organisation_id != ROOT_SIGNER => {
                        (o.organisation_id.clone(), k)
                    }
                    _ => return,
                }
            }
            _ => return,
        };
        let before = self.current.insert(org.clone(), new);
        if tentative {
            if let Some(run) = &mut self.run {
                run.push((org, before));
            }
        } else if let Some(old) = before {
            self.retired.entry(org).or_default().push((old, e.sequence));
        }
    }

    /// Why `e`'s signature does not verify, in words.
    fn explain(&self, e: &LogEntry, key: &VerifyingKey) -> String {
        let id = &e.signed.signer_id;
        // Keys retired before this entry (later rotations do not count).
        let retired = self.retired.get(id).into_iter().flatten();
        for (old, rotated_at) in retired.filter(|(_, at)| *at < e.sequence) {
            if phb_chain::verify_signature(old, &e.signed.event, &e.signed.signature) {
                return format!(
                    "the signature is by {id:?}'s key of before the rotation at sequence {rotated_at}, not by the key {id:?} held at this point ({})",
                    hex(key.as_bytes())
                );
            }
        }
        format!(
            "the signature does not verify under {id:?}'s key at this point in the log ({})",
            hex(key.as_bytes())
        )
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An entry the replay accepted, with the key its signature must verify
/// under by the replay's registry at that point.
pub(crate) struct Signed {
    pub(crate) entry: LogEntry,
    pub(crate) key: VerifyingKey,
}

/// Checks the signatures of the chunks `rx` delivers, in order, strictly
/// (`phb_chain::verify_signature`, the server's predicate), each under the
/// key tracked here from the log, which must also be the key the replay's
/// registry names. Returns the first failure, and records its sequence in
/// `first_bad` so the replay can stop early; also counts the signatures
/// verified.
pub(crate) fn check(
    rx: Receiver<Vec<Signed>>,
    root: VerifyingKey,
    first_bad: &AtomicU64,
    verified: &AtomicU64,
) -> Option<Failure> {
    let mut keys = Keys::new(root);
    for chunk in rx {
        let mut bad = None;
        for Signed {
            entry: e,
            key: replayed,
        } in &chunk
        {
            let at = Location::Entry(e.sequence);
            let Some(key) = keys.current.get(&e.signed.signer_id).copied() else {
                bad = Some(Failure::new(
                    at,
                    format!(
                        "signed by {:?}, which is not the root and not a registered organisation at this point in the log",
                        e.signed.signer_id
                    ),
                ));
                break;
            };
            if key != *replayed {
                // Two independent readings of the log's registrations and
                // rotations disagree: a bug in one of them, reported rather
                // than trusted either way.
                bad = Some(Failure::new(
                    at,
                    format!(
                        "the key of {:?} tracked from the log ({}) is not the one the replay's registry holds ({})",
                        e.signed.signer_id,
                        hex(key.as_bytes()),
                        hex(replayed.as_bytes())
                    ),
                ));
                break;
            }
            if Signature::from_slice(&e.signed.signature).is_err() {
                bad = Some(Failure::new(
                    at,
                    format!(
                        "the signature is {} bytes; an Ed25519 signature is 64",
                        e.signed.signature.len()
                    ),
                ));
                break;
            }
            if !phb_chain::verify_signature(&key, &e.signed.event, &e.signed.signature) {
                bad = Some(Failure::new(at, keys.explain(e, &key)));
                break;
            }
            verified.fetch_add(1, Ordering::Relaxed);
            keys.advance(e);
        }
        if let Some(f) = bad {
            if let Some(s) = f.location.sequence() {
                first_bad.fetch_min(s, Ordering::Relaxed);
            }
            return Some(f);
        }
    }
    None
}
