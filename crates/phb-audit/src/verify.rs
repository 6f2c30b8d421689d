//! Verifying an export from scratch (docs/audit.md, "Verifying an export").
//!
//! In one pass over the file, in log order, for every entry: its sequence
//! is the next one; its `prev_hash` is the previous entry's hash; its hash
//! is recomputed (`phb_chain`); `recorded_at` never goes back; then
//! `phb_domain::Ledger::replay_deferring_signature` re-decides it as the
//! writer did (the event decoded and validated, the signer's key at that
//! point, the signer's authority and every rule, a recorded refusal's code
//! re-derived); the (signer, event id) pair is new; and the entry is folded
//! into a fresh `ReadModel` and the Merkle tree. Behind it, on a second
//! thread, every signature is verified strictly under the key tracked from
//! the log, which must be the key the replay named (`crate::signatures`). Then every checkpoint
//! is verified with the ledger key and its root compared with the root of
//! the first n entries; the projections are checked against each other and
//! the write model; the receipts, if any, are looked up.
//!
//! The first failure is reported: the lowest sequence found wrong by either
//! thread, else the first checkpoint, projection or receipt problem.

use crate::export::{ExportReader, Item};
use crate::receipts::{self, Receipt};
use crate::{signatures, Failure, LedgerKey, Location, ORIGIN_PREFIX};
use ed25519_dalek::VerifyingKey;
use phb_chain::merkle::MemoryTree;
use phb_chain::{Hash, LogEntry, GENESIS_HASH};
use phb_domain::event::Date;
use phb_domain::projections::flags::{Flag, FlagCode};
use phb_domain::projections::HoldingTotals;
use phb_domain::{Committed, Ledger, Money, Projection, ReadModel};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::{Duration, Instant};

/// Entries handed to the signature thread at a time.
const CHUNK: usize = 1024;
/// Chunks that may wait for it (bounds the memory held).
const CHUNKS_IN_FLIGHT: usize = 4;

/// What to verify an export against: everything here comes from the
/// auditor, out of band, never from the file.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The ledger's root public key.
    pub root_key: VerifyingKey,
    /// The ledger key, which signs the checkpoints.
    pub ledger_key: LedgerKey,
    /// The ledger id. Default: the ledger key's name (`phb-ledger/ID`) if it
    /// came as a verifier key, else the export header's.
    pub ledger_id: Option<String>,
    /// The date the time-based flag rules read (default: the UTC date of
    /// the last entry's `recorded_at`, so a file's summary never changes).
    pub as_of: Option<Date>,
    /// Receipts a partner kept, to find in the export.
    pub receipts: Vec<Receipt>,
}

impl VerifyOptions {
    /// Options with these keys and nothing else.
    pub fn new(root_key: VerifyingKey, ledger_key: LedgerKey) -> VerifyOptions {
        VerifyOptions {
            root_key,
            ledger_key,
            ledger_id: None,
            as_of: None,
            receipts: Vec::new(),
        }
    }
}

/// The figures of a verified export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The ledger id.
    pub ledger_id: String,
    /// Log entries.
    pub entries: u64,
    /// Of which record a refusal.
    pub refusals: u64,
    /// Registered organisations at the head.
    pub organisations: usize,
    /// Budgets opened.
    pub budgets: usize,
    /// Totals over every budget.
    pub allocated: Money,
    /// Total paid in.
    pub paid_in: Money,
    /// Total spent.
    pub spent: Money,
    /// Total held by funds holders.
    pub held: Money,
    /// Flags as of `as_of`, by code.
    pub flags_by_code: BTreeMap<String, usize>,
    /// Checkpoints verified.
    pub checkpoints: usize,
    /// The largest tree size a verified checkpoint states.
    pub latest_checkpoint: Option<u64>,
    /// Signatures verified by the batch check.
    pub signatures: u64,
    /// Receipts found in the export.
    pub receipts: usize,
    /// The last entry's hash.
    pub head_hash: Hash,
    /// The Merkle root of all the entries.
    pub root: Hash,
    /// The date the time-based flags were derived for.
    pub as_of: Date,
    /// How long the verification took.
    pub elapsed: Duration,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Summary {
    /// Entries verified per second.
    pub fn entries_per_second(&self) -> u64 {
        let micros = self.elapsed.as_micros().max(1);
        u64::try_from(u128::from(self.entries) * 1_000_000 / micros).unwrap_or(u64::MAX)
    }

    /// Flags in total.
    pub fn flags(&self) -> usize {
        self.flags_by_code.values().sum()
    }

    /// The summary as one JSON object (amounts as strings).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": true,
            "ledger_id": self.ledger_id,
            "entries": self.entries,
            "refusals": self.refusals,
            "organisations": self.organisations,
            "budgets": self.budgets,
            "allocated": self.allocated.to_string(),
            "paid_in": self.paid_in.to_string(),
            "spent": self.spent.to_string(),
            "held": self.held.to_string(),
            "flags": self.flags(),
            "flags_by_code": self.flags_by_code,
            "as_of": self.as_of.to_string(),
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "signatures": self.signatures,
            "receipts": self.receipts,
            "head_hash": hex(&self.head_hash),
            "root": hex(&self.root),
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "entries_per_second": self.entries_per_second(),
        })
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "ledger         {}", self.ledger_id)?;
        writeln!(
            f,
            "entries        {} ({} recording refusals), every one verified",
            self.entries, self.refusals
        )?;
        writeln!(f, "organisations  {}", self.organisations)?;
        writeln!(f, "budgets        {}", self.budgets)?;
        writeln!(f, "allocated      {}", self.allocated)?;
        writeln!(f, "paid in        {}", self.paid_in)?;
        writeln!(f, "spent          {}", self.spent)?;
        writeln!(f, "held           {}", self.held)?;
        let codes: Vec<String> = self
            .flags_by_code
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        writeln!(
            f,
            "flags          {} as of {}{}",
            self.flags(),
            self.as_of,
            if codes.is_empty() {
                String::new()
            } else {
                format!(": {}", codes.join(", "))
            }
        )?;
        match self.latest_checkpoint {
            Some(size) => writeln!(
                f,
                "checkpoints    {} verified, the latest for {} entries",
                self.checkpoints, size
            )?,
            None => writeln!(f, "checkpoints    none in the export")?,
        }
        writeln!(f, "signatures     {} verified in batches", self.signatures)?;
        if self.receipts > 0 {
            writeln!(f, "receipts       {} found in the export", self.receipts)?;
        }
        writeln!(f, "head           {}", hex(&self.head_hash))?;
        writeln!(f, "merkle root    {}", hex(&self.root))?;
        write!(
            f,
            "elapsed        {:.3} s ({} entries/s)",
            self.elapsed.as_secs_f64(),
            self.entries_per_second()
        )
    }
}

/// A verified export: its summary, and what was recomputed from it.
#[derive(Debug)]
pub struct Verified {
    /// The figures.
    pub summary: Summary,
    /// Every projection, recomputed from the entries.
    pub read: ReadModel,
    /// The flags as of `summary.as_of`, by id.
    pub flags: Vec<Flag>,
    /// The entry hashes (index = sequence − 1).
    pub hashes: Vec<Hash>,
    /// Things worth knowing that are not failures (no checkpoint, entries
    /// after the latest checkpoint).
    pub warnings: Vec<String>,
}

/// The replay's state: the write model, the read model, the tree.
struct Replay {
    ledger: Ledger,
    read: ReadModel,
    tree: MemoryTree,
    hashes: Vec<Hash>,
    ids: HashSet<(String, String)>,
    prev_hash: Hash,
    prev_micros: i64,
    refusals: u64,
}

impl Replay {
    fn new(ledger_id: &str, root: VerifyingKey) -> Replay {
        Replay {
            ledger: Ledger::new(ledger_id, root),
            read: ReadModel::new(ledger_id, root),
            tree: MemoryTree::new(),
            hashes: Vec::new(),
            ids: HashSet::new(),
            prev_hash: GENESIS_HASH,
            prev_micros: i64::MIN,
            refusals: 0,
        }
    }

    /// Verifies and folds in the entry at `position` (from 1); answers the
    /// key its signature must verify under (the signature thread checks).
    fn entry(&mut self, position: u64, e: &LogEntry) -> Result<VerifyingKey, Failure> {
        let fail = |reason: String| Failure::new(Location::Entry(position), reason);
        if e.sequence != position {
            return Err(fail(format!(
                "the entry in this place states sequence {}: sequences run 1, 2, 3, … without gaps (an entry was removed, repeated or moved)",
                e.sequence
            )));
        }
        if e.prev_hash != self.prev_hash {
            return Err(fail(format!(
                "prev_hash {} is not the hash of the entry before it ({})",
                hex(&e.prev_hash),
                hex(&self.prev_hash)
            )));
        }
        let actual = phb_chain::entry_hash_with(
            &e.prev_hash,
            e.sequence,
            e.recorded_at_micros,
            &e.signed,
            e.refusal.as_ref(),
        );
        if actual != e.hash {
            return Err(fail(format!(
                "the entry hash does not match the entry: it states {}, its bytes give {}",
                hex(&e.hash),
                hex(&actual)
            )));
        }
        if e.recorded_at_micros < self.prev_micros {
            return Err(fail(
                "recorded_at is earlier than the entry before it".into(),
            ));
        }
        let (event, key) = self
            .ledger
            .replay_deferring_signature(e)
            .map_err(|err| fail(format!("the replay refuses it: {err}")))?;
        if !self
            .ids
            .insert((e.signed.signer_id.clone(), event.event_id.clone()))
        {
            return Err(fail(format!(
                "{:?} already used event_id {:?} earlier in the log (an event can be recorded once)",
                e.signed.signer_id, event.event_id
            )));
        }
        self.read.apply(&Committed::of(e, &event));
        self.tree
            .append(&e.hash)
            .map_err(|err| fail(err.to_string()))?;
        self.hashes.push(e.hash);
        self.prev_hash = e.hash;
        self.prev_micros = e.recorded_at_micros;
        self.refusals += u64::from(e.refusal.is_some());
        Ok(key)
    }
}

/// Reads the entries, replaying them and handing them to the signature
/// thread chunk by chunk; answers the first record after the entries (a
/// checkpoint, or `None` at the end record). Stops early, with `Ok(None)`,
/// once the signature thread found an earlier failure.
fn entries<R: Read>(
    reader: &mut ExportReader<R>,
    replay: &mut Replay,
    tx: SyncSender<Vec<signatures::Signed>>,
    first_bad: &AtomicU64,
) -> Result<Option<Item>, Failure> {
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut ended = None;
        while chunk.len() < CHUNK {
            match reader.next_item() {
                Ok(Some(Item::Entry(_, e))) => chunk.push(e),
                other => {
                    ended = Some(other);
                    break;
                }
            }
        }
        let mut signed = Vec::with_capacity(chunk.len());
        let mut failed = None;
        for e in chunk {
            let position = replay.hashes.len() as u64 + 1;
            if position > first_bad.load(Ordering::Relaxed) {
                break;
            }
            match replay.entry(position, &e) {
                Ok(key) => signed.push(signatures::Signed { entry: e, key }),
                Err(f) => {
                    failed = Some(f);
                    break;
                }
            }
        }
        // The signatures of what was replayed are checked whatever
        // happened after (an earlier bad signature is the failure to name).
        // A closed channel means the signature check stopped at a failure.
        let _ = tx.send(signed);
        if let Some(f) = failed {
            return Err(f);
        }
        if replay.hashes.len() as u64 >= first_bad.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match ended {
            None => continue,
            Some(Ok(item)) => return Ok(item),
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// The lower of two failures by sequence; for the same entry, both reasons.
fn first_of(main: Failure, sig: Failure) -> Failure {
    match (main.sequence(), sig.sequence()) {
        (Some(m), Some(s)) if s < m => sig,
        (Some(m), Some(s)) if s == m => Failure::new(
            main.location,
            format!("{}; and {}", main.reason, sig.reason),
        ),
        // A checkpoint or the end record comes after every entry.
        (None, Some(_)) => sig,
        _ => main,
    }
}

/// The ledger id and checkpoint origin to verify against.
fn resolve_ledger(opts: &VerifyOptions, header: &str) -> Result<(String, String), Failure> {
    let from_name = match &opts.ledger_key.name {
        Some(name) => Some(
            name.strip_prefix(ORIGIN_PREFIX)
                .ok_or_else(|| {
                    Failure::new(
                        Location::Options,
                        format!("the ledger key's name {name:?} is not phb-ledger/ID"),
                    )
                })?
                .to_string(),
        ),
        None => None,
    };
    let id = match (&opts.ledger_id, from_name) {
        (Some(given), Some(named)) if *given != named => {
            return Err(Failure::new(
                Location::Options,
                format!("--ledger-id is {given:?} but the ledger key is named for {named:?}"),
            ))
        }
        (Some(given), _) => given.clone(),
        (None, Some(named)) => named,
        (None, None) => header.to_string(),
    };
    if header != id {
        return Err(Failure::new(
            Location::Header,
            format!("the export is of ledger {header:?}, not {id:?}"),
        ));
    }
    let origin = format!("{ORIGIN_PREFIX}{id}");
    Ok((id, origin))
}

/// Verifies an export (see the module documentation); the first failure,
/// or the summary and every recomputed projection.
pub fn verify<R: Read>(input: R, opts: &VerifyOptions) -> Result<Verified, Failure> {
    let started = Instant::now();
    let mut reader = ExportReader::new(input)?;
    let (ledger_id, origin) = resolve_ledger(opts, reader.ledger_id())?;
    let mut replay = Replay::new(&ledger_id, opts.root_key);
    let first_bad = AtomicU64::new(u64::MAX);
    let signatures = AtomicU64::new(0);
    let (main, sig) = std::thread::scope(|s| {
        let (tx, rx) = sync_channel(CHUNKS_IN_FLIGHT);
        let root = opts.root_key;
        let (first_bad, counted) = (&first_bad, &signatures);
        let checker = s.spawn(move || signatures::check(rx, root, first_bad, counted));
        let main = entries(&mut reader, &mut replay, tx, first_bad);
        let sig = checker.join().unwrap_or_else(|_| {
            Some(Failure::new(
                Location::Entry(0),
                "the signature check stopped unexpectedly",
            ))
        });
        (main, sig)
    });
    let mut next = match (main, sig) {
        (Err(m), Some(s)) => return Err(first_of(m, s)),
        (Err(m), None) => return Err(m),
        (Ok(_), Some(s)) => return Err(s),
        (Ok(next), None) => next,
    };
    let Replay {
        mut ledger,
        read,
        tree,
        hashes,
        refusals,
        ..
    } = replay;
    let n = hashes.len() as u64;

    // Every checkpoint: signed by the ledger key, for entries the export
    // holds, with their root.
    let mut checkpoints = 0usize;
    let mut latest: Option<u64> = None;
    while let Some(item) = next {
        let Item::Checkpoint(index, note) = item else {
            // The reader refuses entries after checkpoints.
            return Err(Failure::new(
                Location::End,
                "an entry after the checkpoints",
            ));
        };
        let size = checkpoint(&note, index, &origin, &opts.ledger_key.key, &tree)?;
        checkpoints += 1;
        latest = latest.max(Some(size));
        next = reader.next_item()?;
    }

    ledger.finish_replay();
    check_projections(&ledger, &read)?;

    let found = receipts::check(&opts.receipts, &hashes)?;

    let mut warnings = Vec::new();
    match latest {
        None if n > 0 => warnings.push(
            "the export holds no checkpoint: nothing the ledger key signed ties these entries to what the ledger issued; export from the server, or keep checkpoints".to_string(),
        ),
        Some(size) if size < n => warnings.push(format!(
            "entries {}..{n} come after the latest checkpoint ({size}): no signed checkpoint covers them",
            size + 1
        )),
        _ => {}
    }

    let head = read.head();
    let as_of = opts
        .as_of
        .unwrap_or_else(|| Date::from_unix_micros(head.recorded_at_micros));
    let flags = read.flags().list(read.balances(), as_of, head.sequence);
    let mut flags_by_code: BTreeMap<String, usize> = BTreeMap::new();
    for f in &flags {
        *flags_by_code
            .entry(f.code.as_str().to_string())
            .or_default() += 1;
    }
    let total = |pick: fn(&phb_domain::Budget) -> Money| -> Result<Money, Failure> {
        read.balances().budgets().try_fold(Money::ZERO, |sum, b| {
            sum.checked_add(pick(b))
                .ok_or_else(|| Failure::new(Location::Projections, "the totals overflow"))
        })
    };
    let summary = Summary {
        ledger_id,
        entries: n,
        refusals,
        organisations: read.directory().organisations().count(),
        budgets: read.balances().budgets().count(),
        allocated: total(|b| b.allocated)?,
        paid_in: total(|b| b.paid_in)?,
        spent: total(|b| b.spent)?,
        held: total(|b| b.held())?,
        flags_by_code,
        checkpoints,
        latest_checkpoint: latest,
        signatures: signatures.load(Ordering::Relaxed),
        receipts: found,
        head_hash: head.hash,
        root: tree.root(),
        as_of,
        elapsed: started.elapsed(),
    };
    Ok(Verified {
        summary,
        read,
        flags,
        hashes,
        warnings,
    })
}

/// Verifies checkpoint `index`; answers the tree size it states.
fn checkpoint(
    note: &str,
    index: usize,
    origin: &str,
    key: &VerifyingKey,
    tree: &MemoryTree,
) -> Result<u64, Failure> {
    let stated = note.split('\n').nth(1).and_then(|s| s.parse::<u64>().ok());
    let at = |size| Location::Checkpoint { index, size };
    let c = phb_chain::parse_and_verify(note, origin, key, origin).map_err(|e| {
        Failure::new(
            at(stated),
            format!("not a checkpoint of {origin} signed by the ledger key: {e}"),
        )
    })?;
    let held = tree.size();
    if c.size > held {
        return Err(Failure::new(
            at(Some(c.size)),
            format!(
                "the ledger signed for {} entries, but the export holds only {held}: entries it signed for are missing (removed or cut off)",
                c.size
            ),
        ));
    }
    let actual = tree
        .root_at(c.size)
        .map_err(|e| Failure::new(at(Some(c.size)), e.to_string()))?;
    if actual != c.root {
        return Err(Failure::new(
            at(Some(c.size)),
            format!(
                "it states root {} for the first {} entries, but those entries give {}: they were rewritten after the ledger signed for them",
                hex(&c.root),
                c.size,
                hex(&actual)
            ),
        ));
    }
    Ok(c.size)
}

/// The projections agree with the write model and with each other: the
/// head, every budget and organisation; each budget's last statement row
/// and its holding carry its balance's figures; each funds holder's totals
/// are the sums of its budgets.
fn check_projections(ledger: &Ledger, read: &ReadModel) -> Result<(), Failure> {
    let fail = |what: String| Err(Failure::new(Location::Projections, what));
    if read.head() != ledger.head() {
        return fail(format!(
            "the read model's head {} differs from the replay's {}",
            read.head().sequence,
            ledger.head().sequence
        ));
    }
    let mut written = ledger.budgets();
    for b in read.balances().budgets() {
        match written.next() {
            Some(w) if w == b => {}
            _ => {
                return fail(format!(
                    "the balance of {} differs from the replay's budget",
                    b.id
                ))
            }
        }
        let last = read.statements().rows(&b.id).and_then(|r| r.last());
        match last {
            Some(r)
                if (r.allocated, r.paid_in, r.spent, r.held)
                    == (b.allocated, b.paid_in, b.spent, b.held()) => {}
            _ => {
                return fail(format!(
                    "the statement of {} ends on other figures than its balance",
                    b.id
                ))
            }
        }
        match (&b.funds_holder_id, read.holdings().budget(&b.id)) {
            (Some(_), Some(h))
                if (h.paid_in, h.spent, h.held(), h.stopped)
                    == (b.paid_in, b.spent, b.held(), b.stopped) => {}
            (None, None) => {}
            _ => return fail(format!("the holding of {} differs from its balance", b.id)),
        }
    }
    if written.next().is_some() {
        return fail("the replay has a budget the balances do not".into());
    }
    if !ledger.organisations().eq(read.directory().organisations()) {
        return fail("the directory of organisations differs from the replay's registry".into());
    }
    let mut holders: BTreeMap<&str, (Money, Money)> = BTreeMap::new();
    for b in read.balances().budgets() {
        if let Some(h) = &b.funds_holder_id {
            let t = holders
                .entry(h.as_str())
                .or_insert((Money::ZERO, Money::ZERO));
            t.0 = t.0.checked_add(b.paid_in).unwrap_or(t.0);
            t.1 = t.1.checked_add(b.spent).unwrap_or(t.1);
        }
    }
    for (holder, (paid_in, spent)) in holders {
        let t = HoldingTotals::of(read.holdings().of(holder));
        if (t.paid_in, t.spent) != (paid_in, spent) {
            return fail(format!(
                "the holdings totals of {holder} are not the sums of its budgets"
            ));
        }
    }
    Ok(())
}

/// True for the flag rules that depend on the date asked for (derived when
/// listed, not raised by an entry).
pub fn time_based(code: FlagCode) -> bool {
    matches!(
        code,
        FlagCode::Surplus | FlagCode::ReviewOverdue | FlagCode::CashWithoutReceipt
    )
}
