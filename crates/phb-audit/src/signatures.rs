//! Every signature of an export, verified in batches (ed25519-dalek's
//! `verify_batch`), under the key each signer held at that point of the
//! log, with the keys tracked from the log itself as docs/log-format.md §6
//! (steps 7 and 8) describes — independently of `phb_domain`'s registry,
//! which the replay uses. When a batch fails, its signatures are checked
//! one by one (strictly, as the server does) to name the first bad one.
//!
//! Runs on its own thread beside the replay; the replay verifies each
//! signature again, strictly, as part of re-deciding every event.

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
use std::sync::Arc;

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

/// One signature to check.
struct Pending<'a> {
    entry: &'a LogEntry,
    key: VerifyingKey,
    signature: Signature,
}

/// Checks the signatures of the chunks `rx` delivers, in order. Returns the
/// first failure, and records its sequence in `first_bad` so the replay
/// can stop early; also counts the signatures verified.
pub(crate) fn check(
    rx: Receiver<Arc<Vec<LogEntry>>>,
    root: VerifyingKey,
    first_bad: &AtomicU64,
    verified: &AtomicU64,
) -> Option<Failure> {
    let mut keys = Keys::new(root);
    for chunk in rx {
        let mut pending: Vec<Pending<'_>> = Vec::with_capacity(chunk.len());
        let mut stop: Option<Failure> = None;
        for e in chunk.iter() {
            let at = Location::Entry(e.sequence);
            let Some(key) = keys.current.get(&e.signed.signer_id).copied() else {
                stop = Some(Failure::new(
                    at,
                    format!(
                        "signed by {:?}, which is not the root and not a registered organisation at this point in the log",
                        e.signed.signer_id
                    ),
                ));
                break;
            };
            let Ok(signature) = Signature::from_slice(&e.signed.signature) else {
                stop = Some(Failure::new(
                    at,
                    format!(
                        "the signature is {} bytes; an Ed25519 signature is 64",
                        e.signed.signature.len()
                    ),
                ));
                break;
            };
            pending.push(Pending {
                entry: e,
                key,
                signature,
            });
            keys.advance(e);
        }
        let messages: Vec<&[u8]> = pending
            .iter()
            .map(|p| p.entry.signed.event.as_slice())
            .collect();
        let signatures: Vec<Signature> = pending.iter().map(|p| p.signature).collect();
        let vkeys: Vec<VerifyingKey> = pending.iter().map(|p| p.key).collect();
        let batch_ok = pending.is_empty()
            || ed25519_dalek::verify_batch(&messages, &signatures, &vkeys).is_ok();
        let mut bad = None;
        for p in &pending {
            // A batch that verifies may still hold a signature the strict
            // check refuses (a small-order component in R); the replay
            // checks every one strictly. One that fails is named here.
            if !batch_ok
                && !phb_chain::verify_signature(
                    &p.key,
                    &p.entry.signed.event,
                    &p.entry.signed.signature,
                )
            {
                let why = keys.explain(p.entry, &p.key);
                bad = Some(Failure::new(Location::Entry(p.entry.sequence), why));
                break;
            }
            verified.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(f) = bad.or(stop) {
            if let Some(s) = f.location.sequence() {
                first_bad.fetch_min(s, Ordering::Relaxed);
            }
            return Some(f);
        }
    }
    None
}
