//! Holdings: what each funds holder (a third party or an account provider)
//! holds on others' behalf, budget by budget, folded from committed entries.
//!
//! A budget is held by the organisation its `BudgetOpened` names as
//! `funds_holder_id` (never changed afterwards); notional budgets and
//! direct payments without an account provider are held by nobody and do not
//! appear. The figures are the same sums as `Balances`' (`paid_in`, `spent`,
//! `held = paid_in − spent`), so totals reconcile to the balances exactly.

use super::snapshot::{Format, SnapshotError, SnapshotReader, SnapshotWriter};
use super::{plus, Committed, Projection};
use crate::event::{EventKind, Management};
use crate::money::Money;
use std::collections::BTreeMap;

/// One budget a funds holder holds money for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The budget's id.
    pub budget_id: String,
    /// Pseudonymous holder reference.
    pub holder_ref: String,
    /// The budget's commissioner.
    pub commissioner_id: String,
    /// How the money is held (direct payment or third party).
    pub management: Management,
    /// Disbursements into the holder's hands.
    pub paid_in: Money,
    /// Payments plus purchases out of them.
    pub spent: Money,
    /// True once the budget is stopped.
    pub stopped: bool,
    /// The sequence of the last movement of money (disbursement, payment or
    /// purchase); 0 if none yet.
    pub last_movement_sequence: u64,
    /// When that entry was recorded, microseconds since the epoch; 0 if none.
    pub last_movement_recorded_at_micros: i64,
}

impl Holding {
    /// `paid_in − spent`: never negative (the write model refuses overspend).
    pub fn held(&self) -> Money {
        self.paid_in.checked_sub(self.spent).unwrap_or(Money::ZERO)
    }
}

/// Sums over a set of holdings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldingTotals {
    /// Sum of `paid_in`.
    pub paid_in: Money,
    /// Sum of `spent`.
    pub spent: Money,
    /// Sum of `held`.
    pub held: Money,
}

impl HoldingTotals {
    /// The totals of `rows`. Each figure is at most £1,000,000,000.00 per
    /// event, so sums stay far inside `Decimal`'s range.
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a Holding>) -> HoldingTotals {
        let mut t = HoldingTotals {
            paid_in: Money::ZERO,
            spent: Money::ZERO,
            held: Money::ZERO,
        };
        for h in rows {
            t.paid_in = plus(t.paid_in, h.paid_in);
            t.spent = plus(t.spent, h.spent);
            t.held = plus(t.held, h.held());
        }
        t
    }
}

/// Every funds holder's holdings: holder id → budget id → holding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    by_holder: BTreeMap<String, BTreeMap<String, Holding>>,
    /// Budget id → its funds holder, for the budgets that have one.
    holder_of: BTreeMap<String, String>,
}

impl Holdings {
    /// The budgets `org_id` holds funds for, in budget id order (none if it
    /// holds none).
    pub fn of(&self, org_id: &str) -> impl Iterator<Item = &Holding> {
        self.by_holder
            .get(org_id)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// One budget's holding, if it has a funds holder.
    pub fn budget(&self, budget_id: &str) -> Option<&Holding> {
        let holder = self.holder_of.get(budget_id)?;
        self.by_holder.get(holder)?.get(budget_id)
    }
}

/// `Holdings`' snapshot: its header, then every funds holder in id order
/// with its holdings in budget id order (each carries its budget id). The
/// index from budget to holder is rebuilt from them, not written.
const FORMAT: Format = Format {
    tag: *b"HOLD",
    version: 1,
};

impl Holdings {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        w.header(FORMAT);
        w.seq(&self.by_holder, |w, (holder, rows)| {
            w.str(holder);
            w.seq(rows.values(), |w, h| {
                w.str(&h.budget_id);
                w.str(&h.holder_ref);
                w.str(&h.commissioner_id);
                w.management(h.management);
                w.money(h.paid_in);
                w.money(h.spent);
                w.bool(h.stopped);
                w.u64(h.last_movement_sequence);
                w.i64(h.last_movement_recorded_at_micros);
            });
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<Holdings, SnapshotError> {
        r.header(FORMAT)?;
        let mut holder_of = BTreeMap::new();
        let by_holder = r.map(|r| {
            let holder = r.string()?;
            let at = r.position();
            let rows = r.map(|r| {
                let h = Holding {
                    budget_id: r.string()?,
                    holder_ref: r.string()?,
                    commissioner_id: r.string()?,
                    management: r.read_management()?,
                    paid_in: r.money()?,
                    spent: r.money()?,
                    stopped: r.bool()?,
                    last_movement_sequence: r.u64()?,
                    last_movement_recorded_at_micros: r.i64()?,
                };
                Ok((h.budget_id.clone(), h))
            })?;
            if rows.is_empty() {
                return Err(SnapshotReader::bad(at, "a funds holder with no holdings"));
            }
            for id in rows.keys() {
                if holder_of.insert(id.clone(), holder.clone()).is_some() {
                    return Err(SnapshotReader::bad(
                        at,
                        "a budget held by two funds holders",
                    ));
                }
            }
            Ok((holder, rows))
        })?;
        Ok(Holdings {
            by_holder,
            holder_of,
        })
    }
}

/// `a - b` (the write model keeps figures from going negative).
fn minus(a: Money, b: Money) -> Money {
    a.checked_sub(b)
        .expect("committed amounts were checked by the write model")
}

impl Projection for Holdings {
    fn apply(&mut self, c: &Committed<'_>) {
        if !c.applied() {
            return;
        }
        let id = &c.event.budget_id;
        if let EventKind::BudgetOpened {
            holder_ref,
            commissioner_id,
            management,
            funds_holder_id: Some(holder),
            ..
        } = &c.event.kind
        {
            if *management == Management::Notional {
                return; // the write model never lets this happen
            }
            let row = Holding {
                budget_id: id.clone(),
                holder_ref: holder_ref.clone(),
                commissioner_id: commissioner_id.clone(),
                management: *management,
                paid_in: Money::ZERO,
                spent: Money::ZERO,
                stopped: false,
                last_movement_sequence: 0,
                last_movement_recorded_at_micros: 0,
            };
            self.holder_of.insert(id.clone(), holder.clone());
            self.by_holder
                .entry(holder.clone())
                .or_default()
                .insert(id.clone(), row);
            return;
        }
        let Some(holder) = self.holder_of.get(id) else {
            return; // organisation events, budgets held by nobody
        };
        let Some(h) = self.by_holder.get_mut(holder).and_then(|m| m.get_mut(id)) else {
            return;
        };
        match &c.event.kind {
            EventKind::Disbursement { amount } => h.paid_in = plus(h.paid_in, *amount),
            EventKind::Payment { amount, .. }
            | EventKind::Purchase { amount, .. }
            | EventKind::CardTransaction { amount, .. } => h.spent = plus(h.spent, *amount),
            EventKind::Reclaim { amount, .. } => h.paid_in = minus(h.paid_in, *amount),
            EventKind::Refund { amount, .. } => h.spent = minus(h.spent, *amount),
            EventKind::BudgetStopped { .. } => {
                h.stopped = true;
                return;
            }
            _ => return,
        }
        h.last_movement_sequence = c.head.sequence;
        h.last_movement_recorded_at_micros = c.head.recorded_at_micros;
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.write(&mut SnapshotWriter::new(out));
    }

    fn decode(bytes: &[u8]) -> Result<Holdings, SnapshotError> {
        SnapshotReader::read_all(bytes, Holdings::read)
    }
}
