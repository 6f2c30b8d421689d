//! The input layout of the `decode_event` target, so the seeder can write
//! real signed events in it:
//!
//! ```text
//! [0] signer: < ORGS.len() → ORGS[i]; 0xFF → custom (see below); else ORGS[i % len]
//! [1] clock:  0 → i64::MAX, 1 → i64::MIN, 2 → 0, else T0 + (i - 128) hours
//! [2] sig:    0 → sign the event bytes with the signer's setup key;
//!             n > 0 → the next n - 1 bytes are the signature
//! [custom signer: one length byte, then that many bytes, read as lossy UTF-8]
//! [signature bytes]
//! [event bytes: the rest]
//! ```

use phb_domain::SignedEvent;
use phb_sim::cast::{org_index, sign_bytes, HOUR, ORGS, T0};

/// A decoded `decode_event` input.
pub struct DecodeInput {
    /// The submission.
    pub signed: SignedEvent,
    /// The server clock.
    pub now: i64,
}

/// The clock for selector `sel`.
pub fn clock(sel: u8) -> i64 {
    match sel {
        0 => i64::MAX,
        1 => i64::MIN,
        2 => 0,
        n => T0 + (i64::from(n) - 128) * HOUR,
    }
}

/// Parses an input; `None` if it is too short for the header.
pub fn parse(data: &[u8]) -> Option<DecodeInput> {
    let (&[who, when, sig], mut rest) = data.split_first_chunk::<3>()?;
    let signer_id = if who == 0xFF {
        let (&n, r) = rest.split_first()?;
        let (id, r) = r.split_at_checked(usize::from(n))?;
        rest = r;
        String::from_utf8_lossy(id).into_owned()
    } else {
        ORGS[usize::from(who) % ORGS.len()].to_string()
    };
    let signature = if sig == 0 {
        None
    } else {
        let (s, r) = rest.split_at_checked(usize::from(sig) - 1)?;
        rest = r;
        Some(s.to_vec())
    };
    let event = rest.to_vec();
    let signed = match (signature, org_index(&signer_id)) {
        (Some(signature), _) => SignedEvent {
            event,
            signer_id,
            signature,
        },
        (None, Some(org)) => sign_bytes(org, 0, event),
        (None, None) => SignedEvent {
            event,
            signer_id,
            signature: vec![0; 64],
        },
    };
    Some(DecodeInput {
        signed,
        now: clock(when),
    })
}

/// The input for `signed` at clock selector `when` (inverse of `parse`).
pub fn encode(signed: &SignedEvent, when: u8) -> Vec<u8> {
    let mut out = Vec::new();
    match org_index(&signed.signer_id) {
        Some(i) => out.push(i as u8),
        None => out.push(0xFF),
    }
    out.push(when);
    assert!(signed.signature.len() < 255);
    out.push(signed.signature.len() as u8 + 1);
    if org_index(&signed.signer_id).is_none() {
        assert!(signed.signer_id.len() < 256);
        out.push(signed.signer_id.len() as u8);
        out.extend_from_slice(signed.signer_id.as_bytes());
    }
    out.extend_from_slice(&signed.signature);
    out.extend_from_slice(&signed.event);
    out
}
