//! Projections: read models that are pure folds over committed log entries.
//!
//! The write model (`crate::ledger`) decides; projections only fold what was
//! decided and written, in log order, so they need no undo records and can
//! be rebuilt from the log at any time with the same result. Each one lives
//! in its own module behind `Projection`. `ReadModel` is the set the server
//! answers reads from. Each also has a snapshot encoding (`snapshot.rs`), so
//! its state can be stored and loaded instead of folded again.

mod balances;
mod directory;
pub mod flags;
mod holdings;
pub mod reports;
mod snapshot;
mod statements;

pub use balances::Balances;
pub use directory::Directory;
pub use flags::Flags;
pub use holdings::{Holding, HoldingTotals, Holdings};
pub use reports::Reports;
pub use snapshot::{Format, SnapshotError, SnapshotReader, SnapshotWriter};
pub use statements::{
    decode_row as decode_statement_row, encode_row as encode_statement_row,
    row_key as statement_row_key, StatementRow, Statements,
};

use crate::chain::{LogEntry, Refusal};
use crate::event::Event;
use crate::ledger::{Budget, Head, Reader};
use crate::money::Money;
use ed25519_dalek::VerifyingKey;

/// `a + b` over committed figures. The write model refused anything whose
/// sums would overflow, so an overflow here means an entry was folded that
/// was never decided: a bug, not input.
fn plus(a: Money, b: Money) -> Money {
    a.checked_add(b)
        .expect("committed amounts were checked for overflow by the write model")
}

/// A committed entry as projections see it: where it stands in the log, who
/// signed it, its decoded event, and whether it records a refusal (then it
/// applied nothing).
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    /// Its place in the log, head included.
    pub head: Head,
    /// Who signed the event.
    pub signer_id: &'a str,
    /// The decoded event.
    pub event: &'a Event,
    /// `Some` if the entry records a refusal.
    pub refusal: Option<&'a Refusal>,
}

impl<'a> Committed<'a> {
    /// The committed view of `entry`, whose event decoded to `event`.
    pub fn of(entry: &'a LogEntry, event: &'a Event) -> Committed<'a> {
        Committed {
            head: Head::of(entry),
            signer_id: &entry.signed.signer_id,
            event,
            refusal: entry.refusal.as_ref(),
        }
    }

    /// True if the entry applied its event.
    pub fn applied(&self) -> bool {
        self.refusal.is_none()
    }
}

/// A read model folded from committed entries, in log order.
pub trait Projection {
    /// Folds one committed entry in. Entries come exactly once each, in
    /// sequence order, and were accepted by the write model: a projection
    /// never refuses and never needs to undo.
    fn apply(&mut self, entry: &Committed<'_>);

    /// Appends this projection's snapshot to `out` (the format is in
    /// `snapshot.rs`): tagged and versioned, and canonical — equal
    /// projections give equal bytes.
    fn encode(&self, out: &mut Vec<u8>);

    /// The projection whose snapshot is exactly `bytes`. Corrupt, truncated
    /// or hostile bytes are an `Err`, never a panic or an allocation out of
    /// proportion to the input; bytes that decode re-encode to themselves,
    /// and the projection decoded folds further entries as the original
    /// would.
    fn decode(bytes: &[u8]) -> Result<Self, SnapshotError>
    where
        Self: Sized;
}

/// Everything the server answers reads from: the chain head, the directory
/// of signers, the balances, the funds holders' holdings and the budgets'
/// statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadModel {
    ledger_id: String,
    head: Head,
    directory: Directory,
    balances: Balances,
    holdings: Holdings,
    statements: Statements,
    flags: Flags,
    reports: Reports,
}

impl ReadModel {
    /// The read model of an empty ledger.
    pub fn new(ledger_id: impl Into<String>, root_key: VerifyingKey) -> ReadModel {
        ReadModel {
            ledger_id: ledger_id.into(),
            head: Head::GENESIS,
            directory: Directory::new(root_key),
            balances: Balances::default(),
            holdings: Holdings::default(),
            statements: Statements::default(),
            flags: Flags::default(),
            reports: Reports::default(),
        }
    }

    /// The configured ledger id.
    pub fn ledger_id(&self) -> &str {
        &self.ledger_id
    }

    /// The last committed entry.
    pub fn head(&self) -> Head {
        self.head
    }

    /// The signers.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The balances.
    pub fn balances(&self) -> &Balances {
        &self.balances
    }

    /// What each funds holder holds, budget by budget.
    pub fn holdings(&self) -> &Holdings {
        &self.holdings
    }

    /// Every budget's statement.
    pub fn statements(&self) -> &Statements {
        &self.statements
    }

    /// Forgets `budget_id`'s statement rows up to `through`, which the
    /// caller has stored (`Statements::forget`).
    pub fn forget_statement_rows(&mut self, budget_id: &str, through: u64) {
        self.statements.forget(budget_id, through);
    }

    /// Forgets every statement row up to `through`, which the caller has
    /// stored (`Statements::forget_all_through`).
    pub fn forget_all_statement_rows(&mut self, through: u64) {
        self.statements.forget_all_through(through);
    }

    /// The flags raised so far, their reviews and the thresholds.
    pub fn flags(&self) -> &Flags {
        &self.flags
    }

    /// What the commissioners' reports are computed from.
    pub fn reports(&self) -> &Reports {
        &self.reports
    }

    /// The key `signer_id` signs with now.
    pub fn signer_key(&self, signer_id: &str) -> Option<&VerifyingKey> {
        self.directory.signer_key(signer_id)
    }

    /// Who `org_id` is as a reader, if anyone.
    pub fn reader(&self, org_id: &str) -> Option<Reader<'_>> {
        self.directory.reader(org_id)
    }

    /// A budget's balance.
    pub fn budget(&self, id: &str) -> Option<&Budget> {
        self.balances.budget(id)
    }

    /// Budgets with id > `after`, in id order.
    pub fn budgets_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Budget> + 'a {
        self.balances.budgets_after(after)
    }
}

impl Projection for ReadModel {
    fn apply(&mut self, entry: &Committed<'_>) {
        assert_eq!(
            entry.head.sequence,
            self.head.sequence + 1,
            "committed entries are folded in sequence order"
        );
        self.head = entry.head;
        self.directory.apply(entry);
        self.balances.apply(entry);
        self.holdings.apply(entry);
        self.statements.apply(entry);
        // Second stage: the flag rules read the budget as just folded.
        self.flags.apply(entry, &self.balances);
        self.reports.apply(entry, &self.balances);
        #[cfg(debug_assertions)]
        self.check_budget(&entry.event.budget_id);
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.write(&mut SnapshotWriter::new(out));
    }

    fn decode(bytes: &[u8]) -> Result<ReadModel, SnapshotError> {
        SnapshotReader::read_all(bytes, ReadModel::read)
    }
}

/// The `ReadModel`'s snapshot: its header, the ledger id and the head, then
/// the snapshot of each part (with its own header) in field order:
/// directory, balances, holdings, statements, flags, reports. Version 3
/// writes the flags whole (`FLGS`) where version 2 wrote one byte saying
/// whether they were empty. Decoding also checks that no flag was raised
/// after the head.
const FORMAT: Format = Format {
    tag: *b"RDMD",
    version: 3,
};

impl ReadModel {
    fn write(&self, w: &mut SnapshotWriter<'_>) {
        w.header(FORMAT);
        w.str(&self.ledger_id);
        w.head(&self.head);
        self.directory.write(w);
        self.balances.write(w);
        self.holdings.write(w);
        self.statements.write(w);
        self.flags.write(w);
        self.reports.write(w);
    }

    fn read(r: &mut SnapshotReader<'_>) -> Result<ReadModel, SnapshotError> {
        r.header(FORMAT)?;
        let ledger_id = r.string()?;
        let head = r.head()?;
        let directory = Directory::read(r)?;
        let balances = Balances::read(r)?;
        let holdings = Holdings::read(r)?;
        let statements = Statements::read(r)?;
        let at = r.position();
        let flags = Flags::read(r)?;
        // Read to the end first, so a cut snapshot is `Truncated` whatever
        // the flags say.
        let reports = Reports::read(r)?;
        if flags.last_raised().is_some_and(|s| s > head.sequence) {
            return Err(SnapshotReader::bad(
                at,
                "a flag raised by an entry after the snapshot's head",
            ));
        }
        Ok(ReadModel {
            ledger_id,
            head,
            directory,
            balances,
            holdings,
            statements,
            flags,
            reports,
        })
    }
}

impl ReadModel {
    /// Debug builds: the projections of one budget agree with its balance
    /// after every entry (the statement's last row, the holding's figures).
    #[cfg(debug_assertions)]
    fn check_budget(&self, id: &str) {
        let Some(b) = self.balances.budget(id) else {
            return;
        };
        let figures = self
            .statements
            .figures(id)
            .expect("an opened budget has a statement");
        assert_eq!(
            figures,
            (b.allocated, b.paid_in, b.spent, b.held()),
            "statement of {id} disagrees with its balance"
        );
        if let Some(last) = self.statements.rows(id).and_then(|r| r.last()) {
            assert_eq!(
                (last.allocated, last.paid_in, last.spent, last.held),
                figures,
                "statement of {id}: its last row disagrees with its figures"
            );
        }
        match (&b.funds_holder_id, self.holdings.budget(id)) {
            (Some(_), Some(h)) => {
                assert_eq!(
                    (h.paid_in, h.spent, h.held(), h.stopped),
                    (b.paid_in, b.spent, b.held(), b.stopped),
                    "holding of {id} disagrees with its balance"
                );
            }
            (None, None) => {}
            _ => panic!("holdings of {id} disagree with its funds holder"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Refusal;
    use crate::event::{parse_date, EventKind, Management, PayeeKind};
    use crate::money::Money;

    fn ev(budget: &str, kind: EventKind) -> Event {
        Event {
            event_id: "e".into(),
            budget_id: budget.into(),
            occurred_at_micros: 1_000_000,
            kind,
        }
    }

    fn head(sequence: u64) -> Head {
        Head {
            sequence,
            hash: [0; 32],
            recorded_at_micros: sequence as i64 * 10,
        }
    }

    fn opened(holder: Option<&str>, management: Management) -> EventKind {
        EventKind::BudgetOpened {
            holder_ref: "h".into(),
            commissioner_id: "icb".into(),
            period_start: parse_date("d", "2026-04-01").unwrap(),
            period_end: parse_date("d", "2027-03-31").unwrap(),
            management,
            funds_holder_id: holder.map(String::from),
            payroll_provider_id: None,
            plan_facilitator_id: None,
            cohort: crate::event::Cohort::NotRecorded,
            age_band: crate::event::AgeBand::NotRecorded,
        }
    }

    fn m(p: i64) -> Money {
        Money::from_pence(p)
    }

    /// A plan with one line for category "c", in force over every date an
    /// entry may carry.
    fn plan() -> EventKind {
        EventKind::CarePlanApproved(crate::event::PlanSpec {
            plan_id: "plan".into(),
            lines: vec![crate::event::PlanLineSpec {
                line_id: "l".into(),
                category: "c".into(),
                annual: m(1_000_000),
                description: "d".into(),
            }],
            contingency: Money::ZERO,
            valid_from: parse_date("d", "2000-01-01").unwrap(),
            valid_to: parse_date("d", "2199-12-31").unwrap(),
            review_due: parse_date("d", "2100-01-01").unwrap(),
        })
    }

    /// Folds entries into a statement and holdings and checks them against
    /// the balances after every entry.
    #[test]
    fn statements_and_holdings_follow_balances() {
        let mut bal = Balances::default();
        let mut hold = Holdings::default();
        let mut st = Statements::default();
        let refused = Refusal::new(9, false, "overspend");
        let pay = |p| EventKind::Payment {
            amount: m(p),
            payee_kind: PayeeKind::Provider,
            payee_ref: "p".into(),
            category: "c".into(),
            reference: String::new(),
            service: None,
        };
        let entries: Vec<(&str, &str, EventKind, Option<&Refusal>)> = vec![
            (
                "icb",
                "b1",
                opened(Some("tp"), Management::ThirdParty),
                None,
            ),
            (
                "icb",
                "b2",
                opened(Some("tp"), Management::ThirdParty),
                None,
            ),
            ("icb", "b3", opened(None, Management::Notional), None),
            ("icb", "b1", plan(), None),
            ("icb", "b2", plan(), None),
            (
                "icb",
                "b1",
                EventKind::Allocation {
                    amount: m(10_000),
                    basis: crate::event::AllocationBasis::OneOff,
                },
                None,
            ),
            (
                "icb",
                "b1",
                EventKind::Disbursement { amount: m(6_001) },
                None,
            ),
            (
                "icb",
                "b2",
                EventKind::Allocation {
                    amount: m(300),
                    basis: crate::event::AllocationBasis::OneOff,
                },
                None,
            ),
            (
                "icb",
                "b2",
                EventKind::Disbursement { amount: m(299) },
                None,
            ),
            ("tp", "b1", pay(2_000), None),
            ("tp", "b1", pay(9_999), Some(&refused)),
            ("tp", "b2", pay(1), None),
            (
                "icb",
                "b1",
                EventKind::ReviewAdjustment {
                    delta: m(-1_000),
                    reason: "r".into(),
                },
                None,
            ),
            ("tp", "nowhere", pay(1), Some(&refused)),
        ];
        for (i, (signer, budget, kind, refusal)) in entries.into_iter().enumerate() {
            let event = ev(budget, kind);
            let c = Committed {
                head: head(i as u64 + 1),
                signer_id: signer,
                event: &event,
                refusal,
            };
            bal.apply(&c);
            hold.apply(&c);
            st.apply(&c);
        }
        for b in bal.budgets() {
            let last = st.rows(&b.id).unwrap().last().unwrap();
            assert_eq!(
                (last.allocated, last.paid_in, last.spent, last.held),
                (b.allocated, b.paid_in, b.spent, b.held())
            );
        }
        let b1 = st.rows("b1").unwrap();
        assert_eq!(
            b1.iter().map(|r| r.sequence).collect::<Vec<_>>(),
            [1, 4, 6, 7, 10, 11, 13]
        );
        assert_eq!(b1[1].kind, "care_plan_approved");
        assert_eq!(b1[1].amount, None);
        assert_eq!(b1[4].amount, Some(m(-2_000)));
        assert_eq!(b1[4].kind, "payment");
        assert_eq!(&*b1[4].signer_id, "tp");
        assert_eq!(b1[5].refusal_code, Some(9));
        assert_eq!(b1[5].amount, Some(m(-9_999)));
        assert_eq!(b1[5].held, b1[4].held);
        assert_eq!(b1[6].amount, Some(m(-1_000)));
        assert_eq!(st.rows_after("b1", 7).unwrap().len(), 3);
        assert!(st.rows("nowhere").is_none());
        assert_eq!(st.total_rows(), 7 + 5 + 1);

        let rows: Vec<_> = hold.of("tp").collect();
        assert_eq!(rows.len(), 2);
        let t = HoldingTotals::of(rows.iter().copied());
        assert_eq!((t.paid_in, t.spent, t.held), (m(6_300), m(2_001), m(4_299)));
        assert_eq!(hold.budget("b1").unwrap().last_movement_sequence, 10);
        assert_eq!(
            hold.budget("b1").unwrap().last_movement_recorded_at_micros,
            100
        );
        assert!(hold.budget("b3").is_none());
        assert_eq!(hold.of("icb").count(), 0);
    }

    /// A read model's snapshot holds its flags; one whose flags were raised
    /// after its head is refused.
    #[test]
    fn a_read_model_snapshot_holds_flags_raised_up_to_its_head() {
        let root = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let mut read = ReadModel::new("l", root);
        let matched = EventKind::ExternalMatchRecorded {
            source: "nfi".into(),
            kind: crate::event::MatchKind::Payroll,
            reference: "r".into(),
        };
        for (i, kind) in [opened(None, Management::ThirdParty), matched]
            .into_iter()
            .enumerate()
        {
            let event = ev("b", kind);
            read.apply(&Committed {
                head: head(i as u64 + 1),
                signer_id: "icb",
                event: &event,
                refusal: None,
            });
        }
        assert_eq!(read.flags().raised_count(), 1);
        let mut bytes = Vec::new();
        read.encode(&mut bytes);
        assert_eq!(ReadModel::decode(&bytes), Ok(read.clone()));
        read.head = head(1);
        let mut bytes = Vec::new();
        read.encode(&mut bytes);
        assert!(matches!(
            ReadModel::decode(&bytes),
            Err(SnapshotError::BadValue { what, .. }) if what.contains("after the snapshot's head")
        ));
    }
}
