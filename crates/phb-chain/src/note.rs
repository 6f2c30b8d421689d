//! Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes
//! with Ed25519 signatures (c2sp.org/tlog-checkpoint, c2sp.org/signed-note;
//! the same format as Go's golang.org/x/mod/sumdb/note, Sigstore and
//! Tessera), and the signed-note verifier key ("vkey") text for publishing
//! the ledger key.
//!
//! A checkpoint note is exactly:
//!
//! ```text
//! <origin>\n
//! <tree size, decimal, no leading zeros>\n
//! <root hash, standard padded base64 (44 characters)>\n
//! \n
//! — <key name> <base64(key ID, 4 bytes big-endian ‖ Ed25519 signature, 64 bytes)>\n
//! ```
//!
//! The signature is over the first three lines (the note text, including its
//! final newline). The key ID is the first four bytes of
//! `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key)`.
//!
//! Reading is strict: the note must be at most [`MAX_NOTE_BYTES`] with at
//! most [`MAX_SIGNATURES`] signature lines, every line well formed (no other
//! control characters than newline, canonical base64, valid key names), the
//! body exactly the three lines above (extension lines, which the spec
//! allows but this ledger never writes, are refused), the origin the one
//! expected, the size canonical. Signature lines by other keys (another
//! name or key ID — witnesses' cosignatures, a rotated key) are ignored as
//! the spec requires; every line by the expected key must verify, and at
//! least one must be present.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::entry::{parse_public_key, verify_signature, Hash};
use crate::merkle::{EMPTY_ROOT, MAX_TREE_SIZE};

/// The largest note read or written, in bytes: room for the body and 16
/// Ed25519-sized signature lines with long key names.
pub const MAX_NOTE_BYTES: usize = 8 * 1024;

/// The most signature lines a note may carry (the spec asks verifiers to
/// accept at least 16).
pub const MAX_SIGNATURES: usize = 32;

/// The longest key name or origin, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// The signed-note signature type of Ed25519.
pub const ED25519_SIGNATURE_TYPE: u8 = 0x01;

/// The prefix of a signature line: an em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a note or checkpoint was refused (or could not be written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Larger than [`MAX_NOTE_BYTES`].
    #[error("note is {0} bytes; the limit is 8192")]
    TooLarge(usize),
    /// A control character other than newline.
    #[error("note contains a control character other than newline")]
    ControlCharacter,
    /// No blank line followed by signature lines ending in a newline.
    #[error(
        "note has no signature block (a blank line, then signature lines ending in a newline)"
    )]
    NoSignatureBlock,
    /// A signature line that is not `— <name> <base64>`.
    #[error("signature line {0} is malformed")]
    MalformedSignature(usize),
    /// More than [`MAX_SIGNATURES`] signature lines.
    #[error("note has more than 32 signature lines")]
    TooManySignatures,
    /// A key name that is empty, too long, or contains a space, a `+` or a
    /// control character.
    #[error("key name {0:?} is not valid (non-empty, at most 255 bytes, no spaces, '+' or control characters)")]
    BadKeyName(String),
    /// An origin that is empty, too long, or contains a space, a `+` or a
    /// control character.
    #[error("origin {0:?} is not valid (non-empty, at most 255 bytes, no spaces, '+' or control characters)")]
    BadOrigin(String),
    /// A note text that does not end in a newline (or is empty).
    #[error("note text must be non-empty and end in a newline")]
    BadText,
    /// No signature line by the expected key (name and key ID).
    #[error("note is not signed by key {name}+{key_id:08x}")]
    NotSigned {
        /// The key name expected.
        name: String,
        /// Its key ID.
        key_id: u32,
    },
    /// A signature line by the expected key that does not verify.
    #[error("signature by key {name}+{key_id:08x} does not verify")]
    BadSignature {
        /// The key name.
        name: String,
        /// Its key ID.
        key_id: u32,
    },
    /// A checkpoint body that is not exactly origin, size and root lines.
    #[error("checkpoint body has {0} lines; it must have exactly 3 (origin, size, root hash)")]
    WrongLineCount(usize),
    /// Another origin than the one expected.
    #[error("checkpoint origin is {got:?}, expected {expected:?}")]
    WrongOrigin {
        /// The origin expected.
        expected: String,
        /// The origin in the note.
        got: String,
    },
    /// A tree size that is not canonical decimal, or above the limit.
    #[error("tree size {0:?} is not a decimal number without leading zeros, at most 2^63")]
    BadSize(String),
    /// A root hash line that is not 32 bytes in canonical padded base64.
    #[error("root hash {0:?} is not 32 bytes in standard padded base64")]
    BadRoot(String),
    /// Size 0 with another root than the empty tree's.
    #[error("a checkpoint of size 0 must carry the empty tree's root hash")]
    EmptyTreeRoot,
    /// A verifier key string that is not `name+hex8(key ID)+base64(0x01 ‖ key)`.
    #[error("verifier key is malformed: {0}")]
    BadVerifierKey(&'static str),
}

/// True if `name` may be a signed-note key name (and our origin): non-empty,
/// at most [`MAX_NAME_BYTES`], no Unicode space, no `+`, no control
/// character.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || is_forbidden_control(c))
}

/// The characters no note may contain: ASCII controls other than newline.
fn is_forbidden_control(c: char) -> bool {
    c < ' ' && c != '\n'
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(NoteError::BadKeyName(name.to_string()))
    }
}

/// The signed-note key ID of an Ed25519 key: the first four bytes,
/// big-endian, of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`.
pub fn key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519_SIGNATURE_TYPE]);
    h.update(key.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The verifier key text that publishes `key` under `name`:
/// `name+hex8(key ID)+base64(0x01 ‖ public key)`.
pub fn vkey(name: &str, key: &VerifyingKey) -> Result<String, NoteError> {
    check_name(name)?;
    let mut material = Vec::with_capacity(33);
    material.push(ED25519_SIGNATURE_TYPE);
    material.extend_from_slice(key.as_bytes());
    Ok(format!(
        "{name}+{:08x}+{}",
        key_id(name, key),
        STANDARD.encode(material)
    ))
}

/// Reads a verifier key text: its name and Ed25519 key. Refused: another
/// shape, a key ID that is not 8 lowercase hex digits or does not match,
/// another signature type, non-canonical base64, and keys the ledger would
/// not accept ([`parse_public_key`]).
pub fn parse_vkey(text: &str) -> Result<(String, VerifyingKey), NoteError> {
    let bad = NoteError::BadVerifierKey;
    if text.len() > MAX_NAME_BYTES + 64 {
        return Err(bad("too long"));
    }
    // Three parts: the name and key ID cannot contain '+', but the base64
    // key often does (Go's note.NewVerifier splits the same way).
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id_hex), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("not three parts separated by '+'"));
    };
    check_name(name)?;
    if id_hex.len() != 8
        || !id_hex
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(bad("key ID is not 8 lowercase hex digits"));
    }
    let id = u32::from_str_radix(id_hex, 16).map_err(|_| bad("key ID is not hex"))?;
    let material = decode_base64(b64).ok_or(bad("key is not canonical base64"))?;
    let Some((&ED25519_SIGNATURE_TYPE, key)) = material.split_first() else {
        return Err(bad("not an Ed25519 key (type 0x01)"));
    };
    let key: &[u8; 32] = key.try_into().map_err(|_| bad("key is not 32 bytes"))?;
    let key = parse_public_key(key).ok_or(bad("key is not a valid Ed25519 public key"))?;
    if key_id(name, &key) != id {
        return Err(bad("key ID does not match the name and key"));
    }
    Ok((name.to_string(), key))
}

/// Standard padded base64, canonical only (re-encoding gives the same text).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let bytes = STANDARD.decode(text).ok()?;
    (STANDARD.encode(&bytes) == text).then_some(bytes)
}

/// Signs a note text (non-empty, ending in a newline, no control characters
/// but newlines) with `key` under `name`: the text, a blank line and one
/// signature line.
pub fn sign_note(key: &SigningKey, name: &str, text: &str) -> Result<String, NoteError> {
    check_name(name)?;
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::BadText);
    }
    if text.chars().any(is_forbidden_control) {
        return Err(NoteError::ControlCharacter);
    }
    let signature = key.sign(text.as_bytes());
    let mut sig = Vec::with_capacity(68);
    sig.extend_from_slice(&key_id(name, &key.verifying_key()).to_be_bytes());
    sig.extend_from_slice(&signature.to_bytes());
    let note = format!("{text}\n{SIG_PREFIX}{name} {}\n", STANDARD.encode(sig));
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge(note.len()));
    }
    Ok(note)
}

/// Opens a signed note: checks its format and that `key`, named `name`,
/// signed it; returns the note text (with its final newline). Signature
/// lines of other keys are checked for form only and otherwise ignored.
pub fn open_note<'a>(note: &'a str, name: &str, key: &VerifyingKey) -> Result<&'a str, NoteError> {
    check_name(name)?;
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge(note.len()));
    }
    if note.chars().any(is_forbidden_control) {
        return Err(NoteError::ControlCharacter);
    }
    // The text ends at the last blank line; the signatures follow it.
    let split = note.rfind("\n\n").ok_or(NoteError::NoSignatureBlock)?;
    let (text, sigs) = (&note[..=split], &note[split + 2..]);
    let Some(sigs) = sigs.strip_suffix('\n') else {
        return Err(NoteError::NoSignatureBlock);
    };
    let id = key_id(name, key);
    let mut verified = 0;
    for (i, line) in sigs.split('\n').enumerate() {
        if i >= MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures);
        }
        let malformed = || NoteError::MalformedSignature(i + 1);
        let rest = line.strip_prefix(SIG_PREFIX).ok_or_else(malformed)?;
        let (line_name, b64) = rest.split_once(' ').ok_or_else(malformed)?;
        if !is_valid_name(line_name) {
            return Err(malformed());
        }
        let sig = decode_base64(b64).ok_or_else(malformed)?;
        if sig.len() < 5 {
            return Err(malformed());
        }
        let line_id = u32::from_be_bytes([sig[0], sig[1], sig[2], sig[3]]);
        if line_name != name || line_id != id {
            continue; // Another key's signature: ignored, as the spec requires.
        }
        if !verify_signature(key, text.as_bytes(), &sig[4..]) {
            return Err(NoteError::BadSignature {
                name: name.to_string(),
                key_id: id,
            });
        }
        verified += 1;
    }
    if verified == 0 {
        return Err(NoteError::NotSigned {
            name: name.to_string(),
            key_id: id,
        });
    }
    Ok(text)
}

/// A tree head: the log `origin` had `size` entries and this Merkle `root`
/// (RFC 9162 MTH over the entry hashes, see [`crate::merkle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `nhs.example/phb-ledger/<ledger id>`.
    pub origin: String,
    /// The number of entries.
    pub size: u64,
    /// The Merkle root of the first `size` entries.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size and root lines, each ending in a newline.
    pub fn body(&self) -> Result<String, NoteError> {
        if !is_valid_name(&self.origin) {
            return Err(NoteError::BadOrigin(self.origin.clone()));
        }
        if self.size > MAX_TREE_SIZE {
            return Err(NoteError::BadSize(self.size.to_string()));
        }
        if self.size == 0 && self.root != EMPTY_ROOT {
            return Err(NoteError::EmptyTreeRoot);
        }
        Ok(format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        ))
    }

    /// Reads a note text as a checkpoint of `expected_origin`, strictly:
    /// exactly three lines, each ending in a newline.
    pub fn parse_body(text: &str, expected_origin: &str) -> Result<Checkpoint, NoteError> {
        let Some(text) = text.strip_suffix('\n') else {
            return Err(NoteError::BadText);
        };
        let lines: Vec<&str> = text.split('\n').collect();
        let [origin, size, root] = lines[..] else {
            return Err(NoteError::WrongLineCount(lines.len()));
        };
        if origin != expected_origin {
            return Err(NoteError::WrongOrigin {
                expected: expected_origin.to_string(),
                got: origin.to_string(),
            });
        }
        let size = parse_size(size).ok_or_else(|| NoteError::BadSize(size.to_string()))?;
        let root: Hash = decode_base64(root)
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| NoteError::BadRoot(root.to_string()))?;
        if size == 0 && root != EMPTY_ROOT {
            return Err(NoteError::EmptyTreeRoot);
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

/// A canonical decimal tree size: digits only, no leading zero (but "0"),
/// at most `MAX_TREE_SIZE`.
fn parse_size(s: &str) -> Option<u64> {
    let canonical = !s.is_empty()
        && s.len() <= 20
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    let size: u64 = s.parse().ok().filter(|_| canonical)?;
    (size <= MAX_TREE_SIZE).then_some(size)
}

/// The signed checkpoint note of `checkpoint`, signed by `key` under
/// `key_name` (which should be the origin).
pub fn sign_checkpoint(
    key: &SigningKey,
    key_name: &str,
    checkpoint: &Checkpoint,
) -> Result<String, NoteError> {
    sign_note(key, key_name, &checkpoint.body()?)
}

/// Reads a signed checkpoint note: the note opened with `key` under
/// `key_name` ([`open_note`]), then its body read as a checkpoint of
/// `expected_origin` ([`Checkpoint::parse_body`]).
pub fn parse_and_verify(
    note: &str,
    key_name: &str,
    key: &VerifyingKey,
    expected_origin: &str,
) -> Result<Checkpoint, NoteError> {
    let text = open_note(note, key_name, key)?;
    Checkpoint::parse_body(text, expected_origin)
}
