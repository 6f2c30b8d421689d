//! Statements: every entry on a budget, in log order, with the running
//! figures after it — what an auditor or a funds holder reads.
//!
//! Applied events change the running figures exactly as `Balances` does.
//! Recorded refusals of events on an existing budget (the counter-fraud
//! record: an attempted overspend, a payment by the wrong organisation, a
//! second opening of the same id) are rows too, flagged with their code;
//! they change no figure. Refusals naming a budget that does not exist (yet)
//! belong to no statement.
//!
//! Rows are compact — no event bytes, no free text; the signer id is shared
//! between rows — about 150 bytes each, one per entry on the budget. A
//! refusal's message stays in the log: readers fetch it by sequence.
//!
//! Rows are **resident** (in memory) until the owner *forgets* them:
//! the server stores every row on disk (`row_key`, `encode_row`: derived
//! data, rebuilt by a replay) and then forgets it here, keeping only each
//! budget's running figures and `forgotten_through`, so memory is bounded
//! by the number of budgets, not of entries. Rows up to a budget's
//! `forgotten_through` are read back from that store; rows after it are
//! here. A fold that nobody asks to forget (the auditor's, the tests')
//! keeps every row. Forgetting changes no figure and no later fold.

use super::snapshot::{Format, SnapshotError, SnapshotReader, SnapshotWriter};
use super::{plus, Committed, Projection};
use crate::event::{EventKind, Management, KIND_FIELDS};
use crate::money::Money;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One entry on a budget's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    /// The entry's log sequence.
    pub sequence: u64,
    /// When the server recorded it, microseconds since the epoch.
    pub recorded_at_micros: i64,
    /// When the event says it happened, microseconds since the epoch.
    pub occurred_at_micros: i64,
    /// The event kind: the name of its `Event.kind` field in the proto
    /// (e.g. "payment").
    pub kind: &'static str,
    /// Who signed the event.
    pub signer_id: Arc<str>,
    /// The event's amount, signed by its effect on the budget: positive for
    /// allocations and disbursements, negative for payments and purchases,
    /// the delta for review adjustments; `None` for openings and stops. For
    /// a refused row, the amount that was attempted.
    pub amount: Option<Money>,
    /// Allocated after this entry.
    pub allocated: Money,
    /// Paid in after this entry.
    pub paid_in: Money,
    /// Spent after this entry.
    pub spent: Money,
    /// Held after this entry (`paid_in − spent`; zero on notional budgets).
    pub held: Money,
    /// `Some(code)` (google.rpc.Code) if the entry records a refusal.
    pub refusal_code: Option<u32>,
}

/// One budget's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    notional: bool,
    allocated: Money,
    paid_in: Money,
    spent: Money,
    /// The last sequence of the rows forgotten (0: none): rows up to it
    /// are kept elsewhere, rows after it are `rows`.
    forgotten_through: u64,
    /// The resident rows, in sequence order.
    rows: Vec<StatementRow>,
}

impl Statement {
    fn held(&self) -> Money {
        if self.notional {
            Money::ZERO
        } else {
            self.paid_in.checked_sub(self.spent).unwrap_or(Money::ZERO)
        }
    }
}

/// Every budget's statement, by budget id.
#[derive(Debug, Clone, Default)]
pub struct Statements {
    budgets: BTreeMap<String, Statement>,
    /// Signer ids, shared by the rows that name them (an interning cache,
    /// not state: bounded by the organisations, and not compared).
    signers: BTreeSet<Arc<str>>,
    /// Resident rows in all statements (kept, not recounted).
    resident: usize,
}

impl PartialEq for Statements {
    fn eq(&self, other: &Self) -> bool {
        self.budgets == other.budgets
    }
}

impl Eq for Statements {}

/// Forgets `s`'s rows up to `through`; how many it forgot.
fn forget_rows(s: &mut Statement, through: u64) -> usize {
    let n = s.rows.partition_point(|r| r.sequence <= through);
    if n == 0 {
        return 0;
    }
    s.forgotten_through = s.forgotten_through.max(s.rows[n - 1].sequence);
    s.rows.drain(..n);
    // A budget with a long history must not keep its high-water capacity.
    if s.rows.capacity() > 16 && s.rows.len() < s.rows.capacity() / 4 {
        s.rows.shrink_to_fit();
    }
    n
}

/// The key a stored row is kept under: the budget id, a zero byte (ids
/// never hold one), then the sequence as eight big-endian bytes — so one
/// budget's rows are contiguous and in sequence order.
pub fn row_key(budget_id: &str, sequence: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(budget_id.len() + 9);
    k.extend_from_slice(budget_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&sequence.to_be_bytes());
    k
}

/// A stored row's encoding: `ROW1`, then its fields as in the snapshot,
/// with the signer id written out.
const ROW_FORMAT: Format = Format {
    tag: *b"ROW1",
    version: 1,
};

/// Appends `row`'s stored encoding to `out`.
pub fn encode_row(row: &StatementRow, out: &mut Vec<u8>) {
    let mut w = SnapshotWriter::new(out);
    w.header(ROW_FORMAT);
    w.str(&row.signer_id);
    write_row(&mut w, row, 0);
}

/// The row stored as `bytes` (as `encode_row` wrote it).
pub fn decode_row(bytes: &[u8]) -> Result<StatementRow, SnapshotError> {
    SnapshotReader::read_all(bytes, |r| {
        r.header(ROW_FORMAT)?;
        let signer: [Arc<str>; 1] = [Arc::from(r.str()?)];
        read_row(r, &signer)
    })
}

fn write_row(w: &mut SnapshotWriter<'_>, row: &StatementRow, signer: usize) {
    let kind = KIND_FIELDS
        .iter()
        .position(|k| *k == row.kind)
        .expect("a row's kind is one of KIND_FIELDS");
    w.u64(row.sequence);
    w.i64(row.recorded_at_micros);
    w.i64(row.occurred_at_micros);
    w.u8(u8::try_from(kind).expect("fewer than 256 kinds"));
    w.len(signer);
    w.option(row.amount, SnapshotWriter::money);
    w.money(row.allocated);
    w.money(row.paid_in);
    w.money(row.spent);
    w.money(row.held);
    w.option(row.refusal_code, SnapshotWriter::u32);
}

fn read_row(
    r: &mut SnapshotReader<'_>,
    signers: &[Arc<str>],
) -> Result<StatementRow, SnapshotError> {
    let sequence = r.u64()?;
    let recorded_at_micros = r.i64()?;
    let occurred_at_micros = r.i64()?;
    let kind_at = r.position();
    let kind = KIND_FIELDS
        .get(usize::from(r.u8()?))
        .ok_or_else(|| SnapshotReader::bad(kind_at, "unknown event kind"))?;
    let signer_at = r.position();
    let signer_id = usize::try_from(r.u32()?)
        .ok()
        .and_then(|i| signers.get(i))
        .ok_or_else(|| SnapshotReader::bad(signer_at, "no such signer id"))?
        .clone();
    Ok(StatementRow {
        sequence,
        recorded_at_micros,
        occurred_at_micros,
        kind,
        signer_id,
        amount: r.option(SnapshotReader::money)?,
        allocated: r.money()?,
        paid_in: r.money()?,
        spent: r.money()?,
        held: r.money()?,
        refusal_code: r.option(SnapshotReader::u32)?,
    })
}

fn negative(a: Money) -> Money {
    Money::ZERO
        .checked_sub(a)
        .expect("an amount's negation fits")
}

impl Statements {
    /// The resident rows of `budget_id` with sequence > `after`, in
    /// sequence order; `None` if the budget was never opened. Rows up to
    /// `forgotten_through(budget_id)` are not among them.
    pub fn rows_after(&self, budget_id: &str, after: u64) -> Option<&[StatementRow]> {
        let s = self.budgets.get(budget_id)?;
        let start = s.rows.partition_point(|r| r.sequence <= after);
        Some(&s.rows[start..])
    }

    /// The resident rows of `budget_id` (every row, if none was forgotten).
    pub fn rows(&self, budget_id: &str) -> Option<&[StatementRow]> {
        self.rows_after(budget_id, 0)
    }

    /// The resident row of `budget_id` at `sequence`, if there is one.
    pub fn row(&self, budget_id: &str, sequence: u64) -> Option<&StatementRow> {
        let s = self.budgets.get(budget_id)?;
        let i = s
            .rows
            .binary_search_by_key(&sequence, |r| r.sequence)
            .ok()?;
        s.rows.get(i)
    }

    /// The last sequence of `budget_id`'s forgotten rows (0 if none);
    /// `None` if the budget was never opened.
    pub fn forgotten_through(&self, budget_id: &str) -> Option<u64> {
        self.budgets.get(budget_id).map(|s| s.forgotten_through)
    }

    /// The last sequence of any forgotten row (0 if none): a store of
    /// rows must hold every row up to it for this state to be complete.
    pub fn forgotten_max(&self) -> u64 {
        self.budgets
            .values()
            .map(|s| s.forgotten_through)
            .max()
            .unwrap_or(0)
    }

    /// The running figures (allocated, paid in, spent, held) after the
    /// budget's last entry: its last row's, whether or not it is resident.
    pub fn figures(&self, budget_id: &str) -> Option<(Money, Money, Money, Money)> {
        let s = self.budgets.get(budget_id)?;
        Some((s.allocated, s.paid_in, s.spent, s.held()))
    }

    /// Forgets `budget_id`'s resident rows up to `through` (the caller
    /// keeps them elsewhere). Rows are forgotten in sequence order, so
    /// `forgotten_through` only grows.
    pub fn forget(&mut self, budget_id: &str, through: u64) {
        if let Some(s) = self.budgets.get_mut(budget_id) {
            self.resident -= forget_rows(s, through);
        }
    }

    /// Forgets every budget's resident rows up to `through`.
    pub fn forget_all_through(&mut self, through: u64) {
        for s in self.budgets.values_mut() {
            self.resident -= forget_rows(s, through);
        }
    }

    /// How many rows all statements hold in memory (for memory accounting).
    pub fn total_rows(&self) -> usize {
        debug_assert_eq!(
            self.resident,
            self.budgets.values().map(|s| s.rows.len()).sum::<usize>()
        );
        self.resident
    }

    /// Every resident row after `after`, by budget id (for a caller that
    /// stores them all, e.g. after a replay).
    pub fn resident_after(&self, after: u64) -> impl Iterator<Item = (&str, &StatementRow)> + '_ {
        self.budgets.iter().flat_map(move |(id, s)| {
            let start = s.rows.partition_point(|r| r.sequence <= after);
            s.rows[start..].iter().map(move |r| (id.as_str(), r))
        })
    }

    fn signer(&mut self, id: &str) -> Arc<str> {
        if let Some(s) = self.signers.get(id) {
            return s.clone();
        }
        let s: Arc<str> = Arc::from(id);
        self.signers.insert(s.clone());
        s
    }
}

/// The `Statements`' snapshot: its header; the signer ids, sorted, each
/// once; then every budget's statement in id order: id, notional, running
/// figures, `forgotten_through`, and its resident rows, each naming its
/// signer by index (`u32`) in that list and its kind by index (`u8`) in
/// `KIND_FIELDS`. Version 2 added `forgotten_through` (version 1 held
/// every row).
const FORMAT: Format = Format {
    tag: *b"STMT",
    version: 2,
};

impl Statements {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        w.header(FORMAT);
        // Only the signers resident rows name: forgotten rows carry their
        // own, so the list does not grow with the log.
        let named: BTreeSet<&str> = self
            .budgets
            .values()
            .flat_map(|s| s.rows.iter().map(|r| &*r.signer_id))
            .collect();
        let signers: Vec<&str> = named.into_iter().collect();
        w.seq(&signers, |w, s| w.str(s));
        w.seq(&self.budgets, |w, (id, s)| {
            w.str(id);
            w.bool(s.notional);
            w.money(s.allocated);
            w.money(s.paid_in);
            w.money(s.spent);
            w.u64(s.forgotten_through);
            w.seq(&s.rows, |w, row| {
                let signer = signers
                    .binary_search(&&*row.signer_id)
                    .expect("a row's signer is in `signers`");
                write_row(w, row, signer);
            });
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<Statements, SnapshotError> {
        r.header(FORMAT)?;
        let at = r.position();
        let signers: Vec<Arc<str>> = r.seq(|r| r.str().map(Arc::from))?;
        if !signers.windows(2).all(|w| w[0] < w[1]) {
            return Err(SnapshotReader::bad(at, "signer ids not sorted or repeated"));
        }
        let budgets = r.map(|r| {
            let id = r.string()?;
            let notional = r.bool()?;
            let (allocated, paid_in, spent) = (r.money()?, r.money()?, r.money()?);
            let forgotten_through = r.u64()?;
            let at = r.position();
            let rows = r.seq(|r| read_row(r, &signers))?;
            let ordered = rows.windows(2).all(|w| w[0].sequence < w[1].sequence)
                && rows.first().map_or(forgotten_through > 0, |first| {
                    first.sequence > forgotten_through
                });
            if !ordered {
                return Err(SnapshotReader::bad(
                    at,
                    "rows missing or out of sequence order",
                ));
            }
            let s = Statement {
                notional,
                allocated,
                paid_in,
                spent,
                forgotten_through,
                rows,
            };
            Ok((id, s))
        })?;
        // Canonical: the list holds exactly the signers the rows name.
        let named: BTreeSet<&str> = budgets
            .values()
            .flat_map(|s: &Statement| s.rows.iter().map(|r| &*r.signer_id))
            .collect();
        if named.len() != signers.len() {
            return Err(SnapshotReader::bad(at, "a signer id no row names"));
        }
        Ok(Statements {
            resident: budgets.values().map(|s: &Statement| s.rows.len()).sum(),
            budgets,
            signers: signers.into_iter().collect(),
        })
    }
}

impl Projection for Statements {
    fn apply(&mut self, c: &Committed<'_>) {
        let kind = &c.event.kind;
        if kind.is_organisation_event() {
            return;
        }
        let id = &c.event.budget_id;
        let opened_here = c.applied() && matches!(kind, EventKind::BudgetOpened { .. });
        if opened_here {
            let notional = matches!(
                kind,
                EventKind::BudgetOpened {
                    management: Management::Notional,
                    ..
                }
            );
            let previous = self.budgets.insert(
                id.clone(),
                Statement {
                    notional,
                    allocated: Money::ZERO,
                    paid_in: Money::ZERO,
                    spent: Money::ZERO,
                    forgotten_through: 0,
                    rows: Vec::new(),
                },
            );
            assert!(previous.is_none(), "budget {id} opened twice in the log");
        } else if !self.budgets.contains_key(id) {
            // A refusal naming a budget that does not exist.
            assert!(!c.applied(), "event on unopened budget {id}");
            return;
        }
        let signer_id = self.signer(c.signer_id);
        let s = self
            .budgets
            .get_mut(id)
            .expect("the budget exists: checked or inserted above");
        let amount = match kind {
            EventKind::Allocation { amount, .. } | EventKind::Disbursement { amount } => {
                Some(*amount)
            }
            EventKind::Payment { amount, .. }
            | EventKind::Purchase { amount, .. }
            | EventKind::CardTransaction { amount, .. } => Some(negative(*amount)),
            EventKind::HospitalAdmission { .. }
            | EventKind::HospitalDischarge { .. }
            | EventKind::ReviewRecorded { .. } => None,
            EventKind::ReviewAdjustment { delta, .. } => Some(*delta),
            EventKind::Reclaim { amount, .. } => Some(negative(*amount)),
            EventKind::Refund { amount, .. } => Some(*amount),
            EventKind::BudgetSuspended { .. }
            | EventKind::ServiceAgreementApproved(_)
            | EventKind::BudgetResumed
            | EventKind::HolderDied { .. } => None,
            EventKind::BudgetOpened { .. }
            | EventKind::BudgetStopped { .. }
            | EventKind::CarePlanApproved(_)
            | EventKind::FacilitatorAppointed { .. }
            | EventKind::ExternalMatchRecorded { .. }
            | EventKind::FlagReviewed { .. }
            | EventKind::ControlsConfigured(_)
            | EventKind::OrganisationRegistered { .. }
            | EventKind::KeyRotated { .. } => None,
        };
        if c.applied() {
            match kind {
                EventKind::Allocation { amount, .. } => s.allocated = plus(s.allocated, *amount),
                EventKind::Disbursement { amount } => s.paid_in = plus(s.paid_in, *amount),
                EventKind::Payment { amount, .. }
                | EventKind::Purchase { amount, .. }
                | EventKind::CardTransaction { amount, .. } => s.spent = plus(s.spent, *amount),
                EventKind::ReviewAdjustment { delta, .. } => {
                    s.allocated = plus(s.allocated, *delta)
                }
                EventKind::Reclaim { amount, .. } => {
                    s.paid_in = plus(s.paid_in, negative(*amount));
                    s.allocated = plus(s.allocated, negative(*amount));
                }
                EventKind::Refund { amount, .. } => s.spent = plus(s.spent, negative(*amount)),
                _ => {}
            }
        }
        let held = s.held();
        debug_assert!(
            KIND_FIELDS.contains(&kind.field_name()),
            "add the kind to KIND_FIELDS"
        );
        self.resident += 1;
        s.rows.push(StatementRow {
            sequence: c.head.sequence,
            recorded_at_micros: c.head.recorded_at_micros,
            occurred_at_micros: c.event.occurred_at_micros,
            kind: kind.field_name(),
            signer_id,
            amount,
            allocated: s.allocated,
            paid_in: s.paid_in,
            spent: s.spent,
            held,
            refusal_code: c.refusal.map(|r| r.code),
        });
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.write(&mut SnapshotWriter::new(out));
    }

    fn decode(bytes: &[u8]) -> Result<Statements, SnapshotError> {
        SnapshotReader::read_all(bytes, Statements::read)
    }
}
