//! The observable state of a ledger, and the invariants every budget's
//! figures satisfy whatever happened before.

use crate::amount::figure_pence;
use crate::cast::ORGS;
use phb_domain::event::Management;
use phb_domain::{Budget, Head, Ledger, Organisation};

/// Everything observable about a ledger's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The chain head.
    pub head: Head,
    /// Every budget, in id order.
    pub budgets: Vec<Budget>,
    /// Every cast member (`ORGS`, "root" included) as the ledger sees it.
    pub orgs: Vec<Option<Organisation>>,
    /// The key each cast member's signer id signs with now.
    pub keys: Vec<Option<[u8; 32]>>,
}

impl Snapshot {
    /// This state with `head` in place of its own: what a recorded refusal
    /// (which moves only the head) must leave of the state before it.
    pub fn with_head(&self, head: Head) -> Snapshot {
        Snapshot {
            head,
            ..self.clone()
        }
    }
}

/// The observable state of `l`.
pub fn snapshot(l: &Ledger) -> Snapshot {
    Snapshot {
        head: l.head(),
        budgets: l.budgets().cloned().collect(),
        orgs: ORGS.iter().map(|o| l.organisation(o).cloned()).collect(),
        keys: ORGS
            .iter()
            .map(|o| l.signer_key(o).map(|k| k.to_bytes()))
            .collect(),
    }
}

/// The figures of one budget, `[allocated, paid_in, spent]` in pence, after
/// checking the invariants: every figure (`held` and `available` included)
/// at scale 2, printed canonically and never negative; `available =
/// allocated − spent` and `spent ≤ allocated` always; a notional budget
/// never paid in and holding nothing; otherwise `paid_in ≤ allocated`,
/// `spent ≤ paid_in` and `held = paid_in − spent`.
pub fn check_budget(b: &Budget) -> [i64; 3] {
    let allocated = figure_pence(b.allocated, "allocated");
    let paid_in = figure_pence(b.paid_in, "paid_in");
    let spent = figure_pence(b.spent, "spent");
    let held = figure_pence(b.held(), "held");
    let available = figure_pence(b.available(), "available");
    let id = &b.id;
    for (name, v) in [
        ("allocated", allocated),
        ("paid_in", paid_in),
        ("spent", spent),
        ("held", held),
        ("available", available),
    ] {
        assert!(v >= 0, "budget {id}: {name} is negative: {v}");
    }
    assert!(
        spent <= allocated,
        "budget {id}: spent {spent} > allocated {allocated}"
    );
    assert_eq!(available, allocated - spent, "budget {id}: available");
    match b.management {
        Management::Notional => {
            assert_eq!(paid_in, 0, "notional budget {id} was paid in");
            assert_eq!(held, 0, "notional budget {id} holds money");
        }
        _ => {
            assert!(paid_in <= allocated, "budget {id}: paid_in > allocated");
            assert!(
                spent <= paid_in,
                "budget {id}: spent {spent} > paid_in {paid_in}"
            );
            assert_eq!(held, paid_in - spent, "budget {id}: held");
        }
    }
    [allocated, paid_in, spent]
}

/// Checks every budget of `l`, and that each was last changed by an entry
/// of its log.
pub fn check_ledger(l: &Ledger) {
    for b in l.budgets() {
        check_budget(b);
        assert!(
            b.last_sequence >= 1 && b.last_sequence <= l.head().sequence,
            "budget {} last_sequence {} outside 1..={}",
            b.id,
            b.last_sequence,
            l.head().sequence
        );
    }
}
