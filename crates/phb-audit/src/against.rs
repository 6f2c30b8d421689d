//! The recomputed figures compared with a live server's answers
//! (`audit verify --against`). The caller fetches the answers (every page
//! of `ListBalances` and of `ListFlags` with the same `as_of`); this module
//! only compares, so it needs no network and no runtime.
//!
//! When the server's head is the export's, everything must be equal: every
//! budget's balance, field by field, and the flag list, flag by flag. When
//! the server has moved on, what later entries may have changed is left
//! out: budgets whose `last_sequence` is past the export (or opened since),
//! time-based flags, and the review status of flags; everything else must
//! still be equal. A server whose head is behind the export has lost or
//! hidden entries: a failure.

use crate::verify::{time_based, Verified};
use crate::{Failure, Location};
use phb_domain::event::Date;
use phb_proto::v1 as pb;
use std::collections::BTreeMap;

/// What the live server answered.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Its head (`ListFlagsResponse.head_sequence`).
    pub head: u64,
    /// Every balance (`ListBalances`, all pages, as an auditor or root).
    pub balances: Vec<pb::Balance>,
    /// Every flag (`ListFlags`, all pages, with `as_of` the export's).
    pub flags: Vec<pb::Flag>,
}

/// What was compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compared {
    /// The server's head.
    pub server_head: u64,
    /// Budgets compared field by field.
    pub budgets: usize,
    /// Budgets changed (or opened) on the server after the export's head.
    pub changed_since: usize,
    /// Flags compared.
    pub flags: usize,
    /// True if the heads were equal (everything compared).
    pub exact: bool,
}

/// The `as_of` to ask `ListFlags` for, so the server derives the
/// time-based flags for the same date as the verification.
pub fn as_of_timestamp(d: Date) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: d.days() * 86_400,
        nanos: 0,
    }
}

pub use phb_domain::wire::{balance_pb, flag_pb};

fn balance_fields(b: &pb::Balance) -> Vec<(&'static str, String)> {
    vec![
        ("holder_ref", b.holder_ref.clone()),
        ("commissioner_id", b.commissioner_id.clone()),
        ("management", b.management.to_string()),
        ("funds_holder_id", b.funds_holder_id.clone()),
        ("payroll_provider_id", b.payroll_provider_id.clone()),
        ("plan_facilitator_id", b.plan_facilitator_id.clone()),
        ("allocated", b.allocated.clone()),
        ("paid_in", b.paid_in.clone()),
        ("spent", b.spent.clone()),
        ("held", b.held.clone()),
        ("available", b.available.clone()),
        ("stopped", b.stopped.to_string()),
        ("last_sequence", b.last_sequence.to_string()),
        ("period_start", b.period_start.clone()),
        ("period_end", b.period_end.clone()),
    ]
}

fn flag_fields(f: &pb::Flag, with_review: bool) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("code", f.code.to_string()),
        ("severity", f.severity.to_string()),
        ("budget_id", f.budget_id.clone()),
        ("commissioner_id", f.commissioner_id.clone()),
        ("sequences", format!("{:?}", f.sequences)),
        ("raised_at_sequence", f.raised_at_sequence.to_string()),
        (
            "thresholds",
            format!(
                "{:?}",
                f.thresholds
                    .iter()
                    .map(|t| (&t.name, &t.value))
                    .collect::<Vec<_>>()
            ),
        ),
        ("explanation", f.explanation.clone()),
    ];
    if with_review {
        v.extend([
            ("status", f.status.to_string()),
            ("reviewed_by", f.reviewed_by.clone()),
            ("review_sequence", f.review_sequence.to_string()),
            ("review_note", f.review_note.clone()),
        ]);
    }
    v
}

/// The first field that differs, as "name: export X, server Y".
fn differ(
    ours: Vec<(&'static str, String)>,
    theirs: Vec<(&'static str, String)>,
) -> Option<String> {
    ours.into_iter()
        .zip(theirs)
        .find(|(a, b)| a.1 != b.1)
        .map(|((name, a), (_, b))| {
            format!("{name}: the export gives {a:?}, the server answers {b:?}")
        })
}

/// Compares the export's recomputed balances and flags with `live`.
pub fn compare(v: &Verified, live: &Live) -> Result<Compared, Failure> {
    let n = v.summary.entries;
    let fail = |what: String| Err(Failure::new(Location::Server, what));
    if live.head < n {
        return fail(format!(
            "the server's head is {}, but the export holds {n} entries: the server has lost or hides entries it once had",
            live.head
        ));
    }
    let exact = live.head == n;

    let mut theirs: BTreeMap<&str, &pb::Balance> = BTreeMap::new();
    for b in &live.balances {
        if theirs.insert(b.budget_id.as_str(), b).is_some() {
            return fail(format!("the server lists budget {} twice", b.budget_id));
        }
    }
    let mut budgets = 0;
    let mut changed_since = 0;
    for b in v.read.balances().budgets() {
        let ours = balance_pb(b);
        let Some(t) = theirs.remove(b.id.as_str()) else {
            return fail(format!(
                "budget {} is in the export but the server does not list it",
                b.id
            ));
        };
        if t.last_sequence > n && !exact {
            changed_since += 1;
            continue;
        }
        if let Some(d) = differ(balance_fields(&ours), balance_fields(t)) {
            return fail(format!("budget {}: {d}", b.id));
        }
        budgets += 1;
    }
    for (id, t) in theirs {
        if t.last_sequence <= n || exact {
            return fail(format!(
                "the server lists budget {id} (last changed at sequence {}), which the export's {n} entries never opened",
                t.last_sequence
            ));
        }
        changed_since += 1;
    }

    // Flags: all of them when the heads are equal; otherwise those raised
    // by entries the export holds, without their review status.
    let counts = |f: &pb::Flag| {
        exact
            || (!pb::FlagCode::try_from(f.code).is_ok_and(|c| {
                matches!(
                    c,
                    pb::FlagCode::Surplus
                        | pb::FlagCode::ReviewOverdue
                        | pb::FlagCode::CashWithoutReceipt
                )
            }) && f.raised_at_sequence <= n)
    };
    let mut ours: BTreeMap<String, pb::Flag> = BTreeMap::new();
    for f in &v.flags {
        if exact || (!time_based(f.code) && f.raised_at <= n) {
            ours.insert(f.id.clone(), flag_pb(v.read.flags(), f));
        }
    }
    let mut flags = 0;
    let mut seen = std::collections::HashSet::new();
    for t in live.flags.iter().filter(|f| counts(f)) {
        if !seen.insert(t.flag_id.as_str()) {
            return fail(format!("the server lists flag {} twice", t.flag_id));
        }
        let Some(o) = ours.remove(&t.flag_id) else {
            return fail(format!(
                "the server lists flag {}, which the export's entries do not raise",
                t.flag_id
            ));
        };
        if let Some(d) = differ(flag_fields(&o, exact), flag_fields(t, exact)) {
            return fail(format!("flag {}: {d}", t.flag_id));
        }
        flags += 1;
    }
    if let Some(id) = ours.keys().next() {
        return fail(format!(
            "the export's entries raise flag {id}, but the server does not list it"
        ));
    }
    Ok(Compared {
        server_head: live.head,
        budgets,
        changed_since,
        flags,
        exact,
    })
}
