//! `phb-ledger audit prove`, `audit consistency` and `audit witness`: a
//! partner's checks of the verifiable log against a running server
//! (docs/audit.md, "Witnessing and proving").
//!
//! Nothing the server sends is trusted as it comes: every checkpoint is
//! verified with the ledger key the partner got out of band, every proof by
//! phb-chain's verifiers (which check the exact length and every node), and
//! the roots proofs are checked against are those of the signed
//! checkpoints, never the roots the server sends alongside them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use phb_chain::merkle::{hash_from_slice, hashes_from_slices};
use phb_chain::note::{self, Checkpoint, NoteError};
use phb_chain::{leaf_hash, verify_consistency, verify_inclusion, Hash, ProofError};
use phb_client::{methods, Signer};
use phb_proto::v1 as pb;

type Client = pb::ledger_service_client::LedgerServiceClient<tonic::transport::Channel>;

/// Every checkpoint origin of this software: `phb-ledger/{ledger id}`.
const ORIGIN_PREFIX: &str = "phb-ledger/";
/// The largest answer read from the server: a checkpoint note is at most
/// 8 KiB and a proof at most 64 hashes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The witness's state file in its state directory: the last checkpoint it
/// accepted, exactly as signed.
pub const STATE_FILE: &str = "checkpoint";
/// The witness's lock file in its state directory (one witness per directory).
const LOCK_FILE: &str = "lock";

/// The server and the registered organisation that signs the read calls.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The reading organisation id (any registered organisation, an auditor or "root").
    #[arg(long)]
    signer: String,
    /// File holding the reader's secret key (hex).
    #[arg(long)]
    key: PathBuf,
}

/// The ledger key the checkpoints must be signed with.
#[derive(clap::Args)]
pub struct LedgerKeyArgs {
    /// The ledger key, from the operator out of band: a C2SP verifier key
    /// (`phb-ledger/ID+KEYHASH+BASE64`) or the 64-hex Ed25519 public key.
    #[arg(long)]
    ledger_key: String,
    /// The ledger id: checkpoints must come from origin `phb-ledger/ID`.
    /// Default: the verifier key's name, else the checkpoint's origin line.
    #[arg(long)]
    ledger_id: Option<String>,
}

/// `audit prove`.
#[derive(clap::Args)]
pub struct ProveArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    ledger: LedgerKeyArgs,
    /// The entry's log sequence (a receipt's `sequence`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    sequence: u64,
    /// A checkpoint you already trust (its signed note, as kept by `audit
    /// witness` or saved with `--save`); default: the latest.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The entry hash you kept (the receipt's `entry_hash`, 64 hex): the
    /// proved entry must be this one.
    #[arg(long)]
    entry_hash: Option<String>,
    /// After the proof, write the checkpoint it was proved in to FILE.
    #[arg(long)]
    save: Option<PathBuf>,
}

/// `audit consistency`.
#[derive(clap::Args)]
pub struct ConsistencyArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    ledger: LedgerKeyArgs,
    /// The earlier checkpoint you kept (its signed note).
    #[arg(long)]
    from: PathBuf,
    /// After the proof, write the latest checkpoint to FILE.
    #[arg(long)]
    save: Option<PathBuf>,
}

/// `audit witness`.
#[derive(clap::Args)]
pub struct WitnessArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    ledger: LedgerKeyArgs,
    /// The witness's directory: `checkpoint` (the last one it accepted) and
    /// the checkpoints it refused, kept as evidence. Created if missing.
    #[arg(long)]
    state: PathBuf,
    /// One round, then exit.
    #[arg(long, conflicts_with = "interval")]
    once: bool,
    /// Seconds between rounds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    interval: u64,
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// `--ledger-key` is not a key.
    #[error("--ledger-key is neither a C2SP verifier key (NAME+KEYHASH+BASE64) nor an Ed25519 public key in 64 hex characters: {0}")]
    BadLedgerKey(String),
    /// `--entry-hash` is not 32 bytes in hex.
    #[error("--entry-hash must be 64 hex characters (the receipt's entry_hash)")]
    BadEntryHash,
    /// The verifier key's name is not the origin expected.
    #[error("the verifier key is for {named:?}, but the checkpoints are expected from {origin:?}")]
    KeyNameMismatch {
        /// The verifier key's name.
        named: String,
        /// The origin expected.
        origin: String,
    },
    /// No `--ledger-id`, no verifier key name, and a note whose origin is not
    /// one of ours.
    #[error(
        "the checkpoint's origin {0:?} is not of the form phb-ledger/LEDGER_ID; give --ledger-id"
    )]
    NotOurOrigin(String),
    /// A checkpoint file could not be read.
    #[error("reading {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A checkpoint that is not one of this ledger signed by the ledger key.
    #[error("{what} is not a checkpoint of this ledger signed by the ledger key: {reason}")]
    Unverified {
        /// Which checkpoint.
        what: String,
        /// Why.
        reason: NoteError,
    },
    /// The server could not be reached, or was unavailable.
    #[error("{0}")]
    Unreachable(String),
    /// The server refused a call.
    #[error("{0}")]
    Refused(String),
    /// An answer that contradicts itself or the question.
    #[error("the server's answer to {call} is inconsistent: {reason}")]
    BadAnswer {
        /// The call.
        call: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The entry is later than the checkpoint.
    #[error("entry {sequence} is not in {checkpoint}, which holds {size} entries; prove it in a later checkpoint")]
    SequenceBeyond {
        /// The entry.
        sequence: u64,
        /// The checkpoint.
        checkpoint: String,
        /// Its size.
        size: u64,
    },
    /// The inclusion proof does not lead to the checkpoint's root.
    #[error("the inclusion proof of entry {sequence} does not verify against {checkpoint}: {reason}. The log the server holds now is not the one that checkpoint was signed for (or it sent a bad proof): report it")]
    NotIncluded {
        /// The entry.
        sequence: u64,
        /// The checkpoint.
        checkpoint: String,
        /// Why.
        reason: ProofError,
    },
    /// The proved entry is not the one the partner kept.
    #[error("entry {sequence} in {checkpoint} has entry hash {served}, not {kept} as your receipt says: the entry you were given a receipt for is no longer in the ledger at that sequence (removed or rewritten): report it")]
    ReceiptMismatch {
        /// The entry.
        sequence: u64,
        /// The checkpoint it was proved in.
        checkpoint: String,
        /// The hash the ledger holds now (hex).
        served: String,
        /// The hash the partner kept (hex).
        kept: String,
    },
    /// A later checkpoint with fewer entries than an earlier one.
    #[error("ROLLBACK: the ledger's latest checkpoint, {latest}, has fewer entries than {kept}, which it signed earlier: entries it signed for are gone. Both are signed by the ledger key: keep them as evidence and report it")]
    Rollback {
        /// The earlier checkpoint.
        kept: String,
        /// The latest.
        latest: String,
    },
    /// A later checkpoint that does not extend an earlier one.
    #[error("FORK: the ledger's latest checkpoint, {latest}, does not extend {kept}, which it signed earlier: {reason}. The log was rewritten, or the server shows different logs to different partners. Both are signed by the ledger key: keep them as evidence and report it")]
    Fork {
        /// The earlier checkpoint.
        kept: String,
        /// The latest.
        latest: String,
        /// Why.
        reason: String,
    },
    /// The witness refused the latest checkpoint and kept its state.
    #[error("{refusal}\nThe witness's state was not replaced: {state} still holds {kept}. The refused checkpoint {evidence}.")]
    WitnessRefused {
        /// The rollback or fork.
        refusal: Box<AuditError>,
        /// The state file.
        state: PathBuf,
        /// The checkpoint kept there.
        kept: String,
        /// Where the refused checkpoint was saved (or why it was not).
        evidence: String,
    },
}

impl AuditError {
    /// True for failures a witness should ride out by trying again at the
    /// next round (the server is down or unreachable), as opposed to
    /// evidence, bad answers and refusals.
    fn is_transient(&self) -> bool {
        matches!(self, AuditError::Unreachable(_))
    }
}

/// The ledger key, and the origin it was published under (if given as a
/// verifier key).
pub struct LedgerKey {
    key: VerifyingKey,
    name: Option<String>,
}

/// Reads `--ledger-key`: a C2SP verifier key, or 64 hex characters.
pub fn parse_ledger_key(text: &str) -> Result<LedgerKey, AuditError> {
    let text = text.trim();
    if text.contains('+') {
        let (name, key) =
            note::parse_vkey(text).map_err(|e| AuditError::BadLedgerKey(e.to_string()))?;
        return Ok(LedgerKey {
            key,
            name: Some(name),
        });
    }
    let bytes: [u8; 32] = hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AuditError::BadLedgerKey("not 64 hex characters".into()))?;
    let key = phb_chain::parse_public_key(&bytes).ok_or_else(|| {
        AuditError::BadLedgerKey(
            "not a valid Ed25519 public key (weak, mixed-order or non-canonical)".into(),
        )
    })?;
    Ok(LedgerKey { key, name: None })
}

/// What checkpoints are verified against: the ledger key and the origin.
struct Trust {
    key: LedgerKey,
    ledger_id: Option<String>,
}

impl Trust {
    fn new(args: &LedgerKeyArgs) -> Result<Trust, AuditError> {
        Ok(Trust {
            key: parse_ledger_key(&args.ledger_key)?,
            ledger_id: args.ledger_id.clone(),
        })
    }

    /// The origin `text` must come from: `--ledger-id`'s, else the
    /// verifier key's name, else the note's own origin line (which the
    /// signature then binds: the key ID covers the key name).
    fn origin_for(&self, text: &str) -> Result<String, AuditError> {
        let origin = match (&self.ledger_id, &self.key.name) {
            (Some(id), _) => format!("{ORIGIN_PREFIX}{id}"),
            (None, Some(name)) => name.clone(),
            (None, None) => {
                let first = text.split('\n').next().unwrap_or_default();
                if !first.starts_with(ORIGIN_PREFIX) || first.len() > note::MAX_NAME_BYTES {
                    let shown: String = first.chars().take(80).collect();
                    return Err(AuditError::NotOurOrigin(shown));
                }
                first.to_string()
            }
        };
        match &self.key.name {
            Some(named) if *named != origin => Err(AuditError::KeyNameMismatch {
                named: named.clone(),
                origin,
            }),
            _ => Ok(origin),
        }
    }

    /// Verifies a checkpoint note: signed by the ledger key, from the origin
    /// `origin` (or the one [`Trust::origin_for`] finds).
    fn verify(
        &self,
        text: &str,
        what: &str,
        origin: Option<&str>,
    ) -> Result<Checkpoint, AuditError> {
        let origin = match origin {
            Some(o) => o.to_string(),
            None => self.origin_for(text)?,
        };
        let unverified = |reason| AuditError::Unverified {
            what: what.to_string(),
            reason,
        };
        // Another origin first: under another key name the signature check
        // would only say "not signed by key ...".
        let got = text.split('\n').next().unwrap_or_default();
        if got != origin {
            return Err(unverified(NoteError::WrongOrigin {
                expected: origin,
                got: got.chars().take(80).collect(),
            }));
        }
        note::parse_and_verify(text, &origin, &self.key.key, &origin).map_err(unverified)
    }
}

/// A checkpoint as messages name it.
fn describe(c: &Checkpoint) -> String {
    format!(
        "checkpoint {} of {} (root {})",
        c.size,
        c.origin,
        STANDARD.encode(c.root)
    )
}

/// Reads a kept checkpoint note, at most [`note::MAX_NOTE_BYTES`]; `None`
/// if the file does not exist.
fn read_note(path: &Path) -> Result<Option<String>, AuditError> {
    use std::io::Read;
    let file_error = |reason: String| AuditError::File {
        path: path.to_path_buf(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(e.to_string())),
    };
    let mut bytes = Vec::new();
    file.take(note::MAX_NOTE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(e.to_string()))?;
    if bytes.len() > note::MAX_NOTE_BYTES {
        return Err(file_error(format!(
            "larger than a checkpoint can be ({} bytes)",
            note::MAX_NOTE_BYTES
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| file_error("not UTF-8 text".into()))
}

/// Reads a checkpoint file that must exist.
fn read_required_note(path: &Path) -> Result<String, AuditError> {
    read_note(path)?.ok_or_else(|| AuditError::File {
        path: path.to_path_buf(),
        reason: "no such file".into(),
    })
}

async fn connect(server: &str) -> Result<Client, AuditError> {
    crate::connect::connect(server, Some(CALL_TIMEOUT), MAX_ANSWER_BYTES)
        .await
        .map_err(|e| AuditError::Unreachable(e.to_string()))
}

/// A failed call: unreachable (try again later) or refused.
fn call_error(call: &'static str) -> impl Fn(tonic::Status) -> AuditError {
    move |s| {
        let text = format!(
            "{call}: {}: {}",
            crate::json_event::code_name(s.code() as i32),
            s.message()
        );
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                AuditError::Unreachable(text)
            }
            _ => AuditError::Refused(text),
        }
    }
}

/// A server, and the reader that signs the calls to it.
struct Ledger {
    client: Client,
    signer: Signer,
}

impl Ledger {
    async fn open(args: &ServerArgs) -> Result<Ledger> {
        let signer = crate::load_signer(&args.signer, &args.key)?;
        Ok(Ledger {
            client: connect(&args.server).await?,
            signer,
        })
    }

    /// The checkpoint at `tree_size` (0: the latest), verified; and its note.
    async fn checkpoint(
        &mut self,
        trust: &Trust,
        tree_size: u64,
        origin: Option<&str>,
    ) -> Result<(Checkpoint, String), AuditError> {
        const CALL: &str = "GetCheckpoint";
        let req = self.signer.request(
            methods::GET_CHECKPOINT,
            pb::GetCheckpointRequest { tree_size },
        );
        let resp = self
            .client
            .get_checkpoint(req)
            .await
            .map_err(call_error(CALL))?
            .into_inner();
        let what = match tree_size {
            0 => "the server's latest checkpoint".to_string(),
            n => format!("the server's checkpoint {n}"),
        };
        let c = trust.verify(&resp.checkpoint, &what, origin)?;
        let bad = |reason: String| AuditError::BadAnswer { call: CALL, reason };
        if tree_size != 0 && c.size != tree_size {
            return Err(bad(format!(
                "asked for size {tree_size}, sent a checkpoint of size {}",
                c.size
            )));
        }
        if resp.tree_size != c.size || resp.root_hash != c.root {
            return Err(bad(format!(
                "tree_size {} and root_hash {} differ from what the signed checkpoint states",
                resp.tree_size,
                hex::encode(&resp.root_hash)
            )));
        }
        Ok((c, resp.checkpoint))
    }

    /// Proves entry `sequence` is in `c`: returns its entry hash and the
    /// proof's length.
    async fn inclusion(
        &mut self,
        c: &Checkpoint,
        sequence: u64,
    ) -> Result<(Hash, usize), AuditError> {
        const CALL: &str = "GetInclusionProof";
        if sequence == 0 || sequence > c.size {
            return Err(AuditError::SequenceBeyond {
                sequence,
                checkpoint: describe(c),
                size: c.size,
            });
        }
        let req = self.signer.request(
            methods::GET_INCLUSION_PROOF,
            pb::GetInclusionProofRequest {
                sequence,
                tree_size: c.size,
            },
        );
        let resp = self
            .client
            .get_inclusion_proof(req)
            .await
            .map_err(call_error(CALL))?
            .into_inner();
        let bad = |reason: String| AuditError::BadAnswer { call: CALL, reason };
        if resp.tree_size != c.size || resp.leaf_index != sequence - 1 {
            return Err(bad(format!(
                "asked for leaf {} in size {}, sent leaf {} in size {}",
                sequence - 1,
                c.size,
                resp.leaf_index,
                resp.tree_size
            )));
        }
        let entry =
            hash_from_slice(&resp.entry_hash, 0).map_err(|e| bad(format!("entry_hash: {e}")))?;
        let not_included = |reason| AuditError::NotIncluded {
            sequence,
            checkpoint: describe(c),
            reason,
        };
        let proof = hashes_from_slices(&resp.hashes).map_err(not_included)?;
        verify_inclusion(&leaf_hash(&entry), sequence - 1, c.size, &proof, &c.root)
            .map_err(not_included)?;
        Ok((entry, proof.len()))
    }

    /// Proves `new` extends `old`: returns the proof's length. A smaller
    /// `new` is a rollback; a proof that fails, or another root at the same
    /// size, a fork.
    async fn consistency(
        &mut self,
        old: &Checkpoint,
        new: &Checkpoint,
    ) -> Result<usize, AuditError> {
        const CALL: &str = "GetConsistencyProof";
        let fork = |reason: String| AuditError::Fork {
            kept: describe(old),
            latest: describe(new),
            reason,
        };
        if new.size < old.size {
            return Err(AuditError::Rollback {
                kept: describe(old),
                latest: describe(new),
            });
        }
        if new.size == old.size {
            return if new.root == old.root {
                Ok(0)
            } else {
                Err(fork("another root for the same number of entries".into()))
            };
        }
        if old.size == 0 {
            return Ok(0); // Every tree extends the empty one.
        }
        let req = self.signer.request(
            methods::GET_CONSISTENCY_PROOF,
            pb::GetConsistencyProofRequest {
                from_size: old.size,
                to_size: new.size,
            },
        );
        let resp = self
            .client
            .get_consistency_proof(req)
            .await
            .map_err(call_error(CALL))?
            .into_inner();
        if resp.from_size != old.size || resp.to_size != new.size {
            return Err(AuditError::BadAnswer {
                call: CALL,
                reason: format!(
                    "asked for sizes {} to {}, sent {} to {}",
                    old.size, new.size, resp.from_size, resp.to_size
                ),
            });
        }
        let proof = hashes_from_slices(&resp.hashes)
            .map_err(|e| fork(format!("the consistency proof is malformed ({e})")))?;
        verify_consistency(old.size, new.size, &old.root, &new.root, &proof).map_err(|e| {
            fork(format!(
                "the consistency proof between them does not verify ({e})"
            ))
        })?;
        Ok(proof.len())
    }
}

/// Reads `--entry-hash`.
fn parse_entry_hash(text: &str) -> Result<Hash, AuditError> {
    hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(AuditError::BadEntryHash)
}

/// Writes a checkpoint note so that a crash leaves the old file or the new
/// one, never a mix (temporary file, fsync, rename, fsync the directory).
fn save_note(path: &Path, text: &str) -> Result<()> {
    crate::write_durably(path, text)
}

/// `audit prove`.
pub async fn prove(args: ProveArgs) -> Result<()> {
    let trust = Trust::new(&args.ledger)?;
    let kept_hash = args
        .entry_hash
        .as_deref()
        .map(parse_entry_hash)
        .transpose()?;
    let trusted = match &args.checkpoint {
        Some(path) => {
            let text = read_required_note(path)?;
            let what = format!("the checkpoint in {}", path.display());
            Some((trust.verify(&text, &what, None)?, text))
        }
        None => None,
    };
    let mut ledger = Ledger::open(&args.server).await?;
    let (c, text) = match trusted {
        Some(t) => t,
        None => ledger.checkpoint(&trust, 0, None).await?,
    };
    let (entry, nodes) = ledger.inclusion(&c, args.sequence).await?;
    if let Some(kept) = kept_hash {
        if kept != entry {
            return Err(AuditError::ReceiptMismatch {
                sequence: args.sequence,
                checkpoint: describe(&c),
                served: hex::encode(entry),
                kept: hex::encode(kept),
            }
            .into());
        }
    }
    println!(
        "proved: entry {} (entry hash {}) is in {}: signed by the ledger key; inclusion proof of {nodes} nodes verified",
        args.sequence,
        hex::encode(entry),
        describe(&c)
    );
    if kept_hash.is_some() {
        println!("receipt: the entry hash is the one you kept");
    }
    if let Some(path) = &args.save {
        save_note(path, &text)?;
        println!("saved {} in {}", describe(&c), path.display());
    }
    Ok(())
}

/// `audit consistency`.
pub async fn consistency(args: ConsistencyArgs) -> Result<()> {
    let trust = Trust::new(&args.ledger)?;
    let text = read_required_note(&args.from)?;
    let what = format!("the checkpoint in {}", args.from.display());
    let old = trust.verify(&text, &what, None)?;
    let mut ledger = Ledger::open(&args.server).await?;
    let (new, new_text) = ledger.checkpoint(&trust, 0, Some(&old.origin)).await?;
    let nodes = ledger.consistency(&old, &new).await?;
    if new.size == old.size {
        println!(
            "proved: the latest checkpoint is {} itself (same size, same root)",
            describe(&old)
        );
    } else {
        println!(
            "proved: {} extends {}: both signed by the ledger key; consistency proof of {nodes} nodes verified",
            describe(&new),
            describe(&old)
        );
    }
    if let Some(path) = &args.save {
        save_note(path, &new_text)?;
        println!("saved {} in {}", describe(&new), path.display());
    }
    Ok(())
}

/// `audit witness`.
pub async fn witness(args: WitnessArgs) -> Result<()> {
    let trust = Trust::new(&args.ledger)?;
    let signer = crate::load_signer(&args.server.signer, &args.server.key)?;
    create_private_dir(&args.state)?;
    let _lock = lock_state(&args.state)?;
    let interval = Duration::from_secs(args.interval);
    loop {
        match witness_round(&args, &signer, &trust).await {
            Ok(line) => println!("{line}"),
            Err(e) if !args.once && e.is_transient() => {
                eprintln!("warning: {e}; trying again in {}s", args.interval)
            }
            Err(e) => return Err(e.into()),
        }
        if args.once {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

/// One round: fetch and verify the latest checkpoint, prove it extends the
/// kept one, keep it. Returns the line to print.
async fn witness_round(
    args: &WitnessArgs,
    signer: &Signer,
    trust: &Trust,
) -> Result<String, AuditError> {
    let state = args.state.join(STATE_FILE);
    let kept = match read_note(&state)? {
        Some(text) => {
            let what = format!("the witness's kept checkpoint in {}", state.display());
            Some((trust.verify(&text, &what, None)?, text))
        }
        None => None,
    };
    let mut ledger = Ledger {
        client: connect(&args.server.server).await?,
        signer: signer.clone(),
    };
    let origin = kept.as_ref().map(|(c, _)| c.origin.as_str());
    let (latest, text) = ledger.checkpoint(trust, 0, origin).await?;
    let keep = |text: &str| {
        save_note(&state, text).map_err(|e| AuditError::File {
            path: state.clone(),
            reason: format!("{e:#}"),
        })
    };
    let Some((old, _)) = kept else {
        keep(&text)?;
        return Ok(format!(
            "kept {}: the first checkpoint this witness has seen (trusted on first use)",
            describe(&latest)
        ));
    };
    match ledger.consistency(&old, &latest).await {
        Ok(_) if latest.size == old.size => {
            Ok(format!("unchanged: {} is still the latest", describe(&old)))
        }
        Ok(nodes) => {
            keep(&text)?;
            Ok(format!(
                "kept {}: it extends {} (consistency proof of {nodes} nodes verified)",
                describe(&latest),
                describe(&old)
            ))
        }
        Err(e @ (AuditError::Rollback { .. } | AuditError::Fork { .. })) => {
            let name = format!(
                "refused-{}-{}.checkpoint",
                latest.size,
                hex::encode(&latest.root[..8])
            );
            let path = args.state.join(name);
            let evidence = match save_note(&path, &text) {
                Ok(()) => format!("is saved as evidence in {}", path.display()),
                Err(err) => format!("could not be saved ({err:#}); it was:\n{text}"),
            };
            Err(AuditError::WitnessRefused {
                refusal: Box::new(e),
                state,
                kept: describe(&old),
                evidence,
            })
        }
        Err(e) => Err(e),
    }
}

/// Creates the state directory (0700) if it is missing.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating state directory {}", dir.display())),
    }
}

/// One witness per state directory: an exclusive `flock` on `DIR/lock`,
/// held while the returned file is open.
fn lock_state(dir: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        anyhow::bail!(
            "state directory {} is in use by another witness ({} is locked); run one witness per state directory",
            dir.display(),
            path.display()
        );
    }
    Ok(file)
}
