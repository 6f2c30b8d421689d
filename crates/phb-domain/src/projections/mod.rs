//! Projections: read models that are pure folds over committed log entries.
//!
//! The write model (`crate::ledger`) decides; projections only fold what was
//! decided and written, in log order, so they need no undo records and can
//! be rebuilt from the log at any time with the same result. Each one lives
//! in its own module behind `Projection`. `ReadModel` is the set the server
//! answers reads from.

mod balances;
mod directory;
mod holdings;
mod statements;

pub use balances::Balances;
pub use directory::Directory;
pub use holdings::{Holding, HoldingTotals, Holdings};
pub use statements::{StatementRow, Statements};

use crate::chain::{LogEntry, Refusal};
use crate::event::Event;
use crate::ledger::{Budget, Head, Reader};
use ed25519_dalek::VerifyingKey;

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
}

/// Everything the server answers reads from: the chain head, the directory
/// of signers, the balances, the funds holders' holdings and the budgets'
/// statements.
#[derive(Debug, Clone)]
pub struct ReadModel {
    ledger_id: String,
    head: Head,
    directory: Directory,
    balances: Balances,
    holdings: Holdings,
    statements: Statements,
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
        #[cfg(debug_assertions)]
        self.check_budget(&entry.event.budget_id);
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
        let last = self
            .statements
            .rows(id)
            .and_then(|r| r.last())
            .expect("an opened budget has a statement row");
        assert_eq!(
            (last.allocated, last.paid_in, last.spent, last.held),
            (b.allocated, b.paid_in, b.spent, b.held()),
            "statement of {id} disagrees with its balance"
        );
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
