//! Arbitrary bytes as a SignedEvent's event bytes, with an arbitrary signer
//! and signature (layout: `phb_fuzz::wire`), through everything a
//! submission meets before `apply`: the digest, `decode_event_id`,
//! `Ledger::decode`, `authenticate` and `decide` against a populated ledger.
//!
//! Asserts: nothing panics; a refusal by `decode` is INVALID_ARGUMENT and
//! names a field; an accepted event satisfies every documented field rule
//! (re-checked independently in `check::check_event`), its amount matches the
//! grammar oracle, its bytes hold only known fields, each singular field
//! once (an independent wire-format walk, `phb_fuzz::schema`: nothing
//! unvalidated rides along in the log), and they are exactly the canonical
//! encoding of what they decode to, so the same event with its fields in
//! another order (`schema::reorderings`) is refused; `authenticate`
//! succeeds only for a registered signer whose current key strictly verifies
//! the signature; `decide` (for every signer of the cast) allows organisation
//! events only from root and budget events never from root, and a change it
//! allows applies within the figure invariants and rolls back exactly.

#![no_main]

use ed25519_dalek::Signature;
use libfuzzer_sys::fuzz_target;
use phb_domain::event::{decode_event, decode_event_id, DecodeContext};
use phb_domain::{Change, Head, Ledger, RejectCode};
use phb_fuzz::check;
use phb_fuzz::schema;
use phb_fuzz::wire;
use phb_proto::v1 as pb;
use phb_sim::cast::{self, LEDGER_ID, ORGS};
use phb_sim::state::{check_ledger, snapshot};
use phb_sim::writer::Writer;
use prost::Message;
use std::sync::OnceLock;

fn ledger() -> &'static Ledger {
    static L: OnceLock<Ledger> = OnceLock::new();
    L.get_or_init(|| {
        let w = Writer::with(&cast::setup_events(0), cast::T0);
        assert_eq!(w.log.len(), cast::setup_events(0).len(), "setup refused");
        assert!(
            w.log.iter().all(|e| e.refusal.is_none()),
            "setup refused by the rules"
        );
        w.ledger
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = wire::parse(data) else {
        return;
    };
    let l = ledger();
    let signed = &input.signed;
    let now = input.now;
    let _ = signed.digest();
    let id = decode_event_id(&signed.event);

    match l.authenticate(signed) {
        Ok(()) => {
            let key = l
                .signer_key(&signed.signer_id)
                .expect("authenticated an unknown signer");
            let sig = Signature::from_slice(&signed.signature)
                .expect("authenticated a signature of the wrong length");
            assert!(
                key.verify_strict(&signed.event, &sig).is_ok(),
                "authenticated a signature that does not verify strictly"
            );
        }
        Err(r) => assert_eq!(r.code, RejectCode::Unauthenticated, "{r}"),
    }

    let ev = match l.decode(signed, now) {
        Ok(ev) => ev,
        Err(r) => {
            assert_eq!(r.code, RejectCode::InvalidArgument, "{r}");
            assert!(r.field.is_some(), "refusal names no field: {r}");
            return;
        }
    };
    let raw = pb::Event::decode(&*signed.event).expect("accepted bytes prost refuses");
    assert_eq!(id.as_deref(), Some(ev.event_id.as_str()));
    check::check_event(&ev, &raw, now);
    if let Err(e) = schema::only_known_fields(&signed.event) {
        panic!("accepted event bytes that carry unvalidated data: {e}");
    }
    // docs/api.md §6: only known fields, "encoded canonically". There is one
    // canonical encoding of an event, so a signed event has one byte form.
    let canon = raw.encode_to_vec();
    assert_eq!(
        canon, signed.event,
        "accepted bytes that are not the canonical encoding of what they decode to"
    );
    let ctx = DecodeContext {
        ledger_id: LEDGER_ID,
        now_micros: now,
    };
    assert_eq!(decode_event(&canon, ctx).as_ref(), Ok(&ev));
    for other in schema::reorderings(&signed.event) {
        if other != signed.event {
            assert!(
                decode_event(&other, ctx).is_err(),
                "accepted a reordered, non-canonical encoding of the same event"
            );
        }
    }

    let before = snapshot(l);
    let signers = ORGS.iter().copied().chain([signed.signer_id.as_str()]);
    for signer in signers {
        let change = match l.decide(signer, &ev) {
            Ok(change) => change,
            // A refusal the writer records (a decision of the rules), or one
            // it answers without recording: a malformed key in an
            // organisation event, or a signer that is not registered.
            Err(r) => {
                assert!(
                    r.code.is_decision()
                        || matches!(
                            r.code,
                            RejectCode::InvalidArgument | RejectCode::Unauthenticated
                        ),
                    "decide refused {signer} with {r}"
                );
                assert!(!r.message.starts_with("internal"), "{r}");
                continue;
            }
        };
        assert_ne!(change, Change::Refused, "decide allowed a refusal");
        assert_eq!(
            signer == "root",
            ev.kind.is_organisation_event(),
            "{signer} allowed to record {}",
            ev.kind.name()
        );
        let mut l2 = l.clone();
        let h = l2.head();
        let undo = l2.apply(
            change,
            Head {
                sequence: h.sequence + 1,
                hash: [7; 32],
                recorded_at_micros: h.recorded_at_micros,
            },
        );
        check_ledger(&l2);
        if !ev.kind.is_organisation_event() {
            assert!(l2.budget(&ev.budget_id).is_some());
        }
        l2.rollback([undo]);
        assert_eq!(snapshot(&l2), before, "rollback did not restore");
    }
});
