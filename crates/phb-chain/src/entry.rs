//! Log entries, the hash chain and signatures: the bytes an auditor
//! re-computes. Moved here from `phb_domain::chain`, which re-exports it.
//! docs/log-format.md specifies the same layout for other languages.

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of sequence 1.
pub const GENESIS_HASH: Hash = [0u8; 32];

/// A signed event as submitted and as stored: the exact client bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEvent {
    /// The serialized `Event` message, verbatim.
    pub event: Vec<u8>,
    /// The signer's id ("root" or an organisation id).
    pub signer_id: String,
    /// ed25519 signature over `event`.
    pub signature: Vec<u8>,
}

impl SignedEvent {
    /// The idempotency digest: SHA-256 over the length-prefixed signer id,
    /// signature and event bytes. Two submissions are "the same signed event"
    /// exactly when this matches.
    pub fn digest(&self) -> Hash {
        let mut h = Sha256::new();
        put(&mut h, self.signer_id.as_bytes());
        put(&mut h, &self.signature);
        put(&mut h, &self.event);
        h.finalize().into()
    }
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    // Bounded well below u32::MAX by MAX_EVENT_BYTES and the gRPC message limit.
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

/// The longest refusal message a log entry keeps, in bytes (longer ones
/// are cut at a character boundary before they are hashed).
pub const MAX_REFUSAL_MESSAGE_BYTES: usize = 1024;

/// The marker byte that starts the refusal part of a hash input or record
/// (ASCII `R`). Entries that record an applied event have no refusal part.
pub const REFUSAL_TAG: u8 = b'R';

/// The ledger's final decision not to apply a signed event, recorded in the
/// log so that the same signed event can never be applied later (a retry is
/// answered with this refusal) and so that attempts are on the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The google.rpc.Code number of the refusal (e.g. 9 FAILED_PRECONDITION).
    pub code: u32,
    /// True if the event was refused as part of an atomic batch that failed
    /// by a decision of the rules. The batch's recorded events are
    /// contiguous in the log; a replay re-runs them against the state the
    /// batch saw (docs/log-format.md §6) and checks every signature and code.
    pub in_atomic_batch: bool,
    /// True for the first recorded event of such a batch (where its run of
    /// entries starts). Implies `in_atomic_batch`.
    pub first_in_batch: bool,
    /// The refusal message as the client was told it (at most
    /// `MAX_REFUSAL_MESSAGE_BYTES`).
    pub message: String,
}

impl Refusal {
    /// A refusal with `message` cut to `MAX_REFUSAL_MESSAGE_BYTES`.
    pub fn new(code: u32, in_atomic_batch: bool, message: &str) -> Refusal {
        let mut cut = message.len().min(MAX_REFUSAL_MESSAGE_BYTES);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        Refusal {
            code,
            in_atomic_batch,
            first_in_batch: false,
            message: message[..cut].to_string(),
        }
    }

    /// The flags byte: bit 0 is `in_atomic_batch`, bit 1 `first_in_batch`;
    /// the others are zero.
    pub fn flags(&self) -> u8 {
        u8::from(self.in_atomic_batch) | (u8::from(self.first_in_batch) << 1)
    }

    /// The fields for a flags byte, if it is a valid one (0, 1 or 3).
    pub fn from_flags(flags: u8) -> Option<(bool, bool)> {
        match flags {
            0 => Some((false, false)),
            1 => Some((true, false)),
            3 => Some((true, true)),
            _ => None,
        }
    }
}

/// One entry of the log, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// From 1, no gaps.
    pub sequence: u64,
    /// Microseconds since the Unix epoch, never decreasing along the log.
    pub recorded_at_micros: i64,
    /// The previous entry's hash.
    pub prev_hash: Hash,
    /// This entry's hash (`entry_hash` of the fields above).
    pub hash: Hash,
    /// What was submitted.
    pub signed: SignedEvent,
    /// `Some` if this entry records a refusal instead of an applied event.
    pub refusal: Option<Refusal>,
}

/// The entry hash of an applied event:
/// `SHA-256(prev_hash ‖ u64be(sequence) ‖ i64be(recorded_at_micros) ‖
///  u32be(len) ‖ signer_id ‖ u32be(len) ‖ signature ‖ u32be(len) ‖ event)`.
pub fn entry_hash(
    prev_hash: &Hash,
    sequence: u64,
    recorded_at_micros: i64,
    signed: &SignedEvent,
) -> Hash {
    entry_hash_with(prev_hash, sequence, recorded_at_micros, signed, None)
}

/// The entry hash of any entry. A refusal appends
/// `'R' ‖ u32be(code) ‖ u8(flags) ‖ u32be(len) ‖ message` to the input of
/// `entry_hash`; since every earlier part is length-prefixed, no refusal
/// entry shares a hash input with an applied one.
pub fn entry_hash_with(
    prev_hash: &Hash,
    sequence: u64,
    recorded_at_micros: i64,
    signed: &SignedEvent,
    refusal: Option<&Refusal>,
) -> Hash {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(sequence.to_be_bytes());
    h.update(recorded_at_micros.to_be_bytes());
    put(&mut h, signed.signer_id.as_bytes());
    put(&mut h, &signed.signature);
    put(&mut h, &signed.event);
    if let Some(r) = refusal {
        h.update([REFUSAL_TAG]);
        h.update(r.code.to_be_bytes());
        h.update([r.flags()]);
        put(&mut h, r.message.as_bytes());
    }
    h.finalize().into()
}

impl LogEntry {
    /// Builds the entry that follows `prev`, computing its hash.
    pub fn next(
        prev_hash: Hash,
        sequence: u64,
        recorded_at_micros: i64,
        signed: SignedEvent,
    ) -> LogEntry {
        Self::sealed(prev_hash, sequence, recorded_at_micros, signed, None)
    }

    /// Builds an entry (an applied event, or a refusal if `refusal` is
    /// `Some`) that follows `prev`, computing its hash.
    pub fn sealed(
        prev_hash: Hash,
        sequence: u64,
        recorded_at_micros: i64,
        signed: SignedEvent,
        refusal: Option<Refusal>,
    ) -> LogEntry {
        let hash = entry_hash_with(
            &prev_hash,
            sequence,
            recorded_at_micros,
            &signed,
            refusal.as_ref(),
        );
        LogEntry {
            sequence,
            recorded_at_micros,
            prev_hash,
            hash,
            signed,
            refusal,
        }
    }

    /// True if `hash` matches the other fields.
    pub fn hash_is_valid(&self) -> bool {
        entry_hash_with(
            &self.prev_hash,
            self.sequence,
            self.recorded_at_micros,
            &self.signed,
            self.refusal.as_ref(),
        ) == self.hash
    }
}

/// Parses a raw 32-byte public key. Accepts only keys an honest key
/// generator produces: a canonical encoding of a point in the prime-order
/// subgroup. Refused: malformed points; weak (small-order) keys, under which
/// a batch verifier could accept forgeries; non-canonical encodings (y >= p),
/// which other ed25519 libraries (libsodium) reject, so partners' auditors
/// would disagree with us; and mixed-order keys (a torsion component), for
/// which cofactored and cofactorless verifiers can disagree on a signature.
pub fn parse_public_key(bytes: &[u8; 32]) -> Option<VerifyingKey> {
    let key = VerifyingKey::from_bytes(bytes).ok()?;
    if key.is_weak() {
        return None;
    }
    let point = key.to_edwards();
    if point.compress().to_bytes() != *bytes || !point.is_torsion_free() {
        return None;
    }
    Some(key)
}

/// Strict ed25519 verification of `signature` over `message`.
pub fn verify_signature(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_dalek::SigningKey;

    /// The entry hash is exactly the bytes docs/log-format.md §2 lists,
    /// built here by hand from that page.
    #[test]
    fn entry_hash_is_the_documented_bytes() {
        let signed = SignedEvent {
            event: vec![0x0a, 0x03, b'a', b'b', b'c'],
            signer_id: "org-1".into(),
            signature: vec![7u8; 64],
        };
        let prev = [0x11u8; 32];
        let mut input = Vec::new();
        input.extend_from_slice(&prev);
        input.extend_from_slice(&42u64.to_be_bytes());
        input.extend_from_slice(&(-5i64).to_be_bytes());
        for part in [&b"org-1"[..], &[7u8; 64][..], &signed.event[..]] {
            input.extend_from_slice(&(part.len() as u32).to_be_bytes());
            input.extend_from_slice(part);
        }
        assert_eq!(input.len(), 60 + 5 + 64 + 5);
        let applied: Hash = Sha256::digest(&input).into();
        assert_eq!(entry_hash(&prev, 42, -5, &signed), applied);

        let mut refusal = Refusal::new(9, true, "no");
        refusal.first_in_batch = true;
        input.push(b'R');
        input.extend_from_slice(&9u32.to_be_bytes());
        input.push(3);
        input.extend_from_slice(&2u32.to_be_bytes());
        input.extend_from_slice(b"no");
        let refused: Hash = Sha256::digest(&input).into();
        assert_eq!(
            entry_hash_with(&prev, 42, -5, &signed, Some(&refusal)),
            refused
        );
        let entry = LogEntry::sealed(prev, 42, -5, signed, Some(refusal));
        assert!(entry.hash_is_valid());
        assert_eq!(entry.hash, refused);
    }

    #[test]
    fn only_canonical_prime_order_keys_are_accepted() {
        for seed in 0..64u8 {
            let honest = SigningKey::from_bytes(&[seed; 32]).verifying_key();
            assert!(parse_public_key(honest.as_bytes()).is_some(), "seed {seed}");
            // The same point plus a small-order point: mixed order.
            for t in &EIGHT_TORSION[1..] {
                let mixed = (honest.to_edwards() + t).compress().to_bytes();
                assert!(
                    parse_public_key(&mixed).is_none(),
                    "mixed-order key accepted"
                );
            }
        }
        // Small order: the identity and the other torsion points.
        for t in &EIGHT_TORSION {
            assert!(parse_public_key(&t.compress().to_bytes()).is_none());
        }
        // Non-canonical encodings: y + p for small y, wherever that decodes
        // to a prime-order point (it would then equal the canonical key).
        let p_le: [u8; 32] = {
            let mut b = [0xffu8; 32];
            b[0] = 0xed;
            b[31] = 0x7f;
            b
        };
        let mut refused = 0;
        for y in 0u8..19 {
            for sign in [0u8, 0x80] {
                let mut b = p_le;
                b[0] = 0xed + y; // p + y, y < 19 so no carry
                b[31] |= sign;
                if VerifyingKey::from_bytes(&b).is_ok() {
                    assert!(parse_public_key(&b).is_none(), "non-canonical {b:?}");
                    refused += 1;
                }
            }
        }
        assert!(
            refused > 0,
            "no non-canonical encoding decoded; the check is vacuous"
        );
    }
}
