//! Flags: things a person must look at that the rules do not refuse (money
//! already spent, a payment probably but not certainly wrong). A flag is
//! derived data, never an edit: a pure function of the log up to the head
//! and an as-of date, so the live service, a restart and an auditor's
//! replay raise exactly the same flags with the same ids (docs/flags.md).
//!
//! Each rule lives in its own module behind `Rule`. Event-driven rules
//! raise flags as entries are folded (`Rule::apply`: the flags an entry
//! raises are answered with its `AppendResult`); time-based rules derive
//! theirs at a date (`Rule::as_of`, for `ListFlags`). A rule reads the
//! thresholds in force when the entry was written: `ControlsConfigured`
//! applies to its commissioner's budgets from its sequence on.
//!
//! `Flags` is a second-stage projection: it folds each committed entry
//! after `Balances` has, and reads the budget's figures from it.

mod after_death;
mod cash_without_receipt;
mod duplicate_payment;
mod during_admission;
mod external_match;
mod overbooked_worker;
mod repeated_refusals;
mod review_overdue;
mod spike;
mod surplus;

use super::snapshot::{Format, SnapshotError, SnapshotReader, SnapshotWriter};
use super::{Balances, Committed};
use crate::controls::Controls;
use crate::event::{Date, EventKind, FlagOutcome};
use crate::ledger::Budget;
use phb_proto::v1 as pb;
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// The rule that raised a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlagCode {
    /// More held than the plan needs.
    Surplus,
    /// Paid twice.
    DuplicatePayment,
    /// Money moved after the holder's death was recorded.
    AfterDeath,
    /// Care paid for days of a long hospital stay.
    DuringAdmission,
    /// One payee paid for more hours than a person can work.
    OverbookedWorker,
    /// A week's spending far above the budget's usual.
    Spike,
    /// Cash without a receipt.
    CashWithoutReceipt,
    /// A review or audit is overdue.
    ReviewOverdue,
    /// Several refused attempts in a short time.
    RepeatedRefusals,
    /// An external data match.
    ExternalMatch,
}

impl FlagCode {
    /// The code as flag ids and docs spell it (`crate::event::FLAG_CODES`).
    pub fn as_str(self) -> &'static str {
        match self {
            FlagCode::Surplus => "SURPLUS",
            FlagCode::DuplicatePayment => "DUPLICATE_PAYMENT",
            FlagCode::AfterDeath => "AFTER_DEATH",
            FlagCode::DuringAdmission => "DURING_ADMISSION",
            FlagCode::OverbookedWorker => "OVERBOOKED_WORKER",
            FlagCode::Spike => "SPIKE",
            FlagCode::CashWithoutReceipt => "CASH_WITHOUT_RECEIPT",
            FlagCode::ReviewOverdue => "REVIEW_OVERDUE",
            FlagCode::RepeatedRefusals => "REPEATED_REFUSALS",
            FlagCode::ExternalMatch => "EXTERNAL_MATCH",
        }
    }
}

/// How urgently a person should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// When reviewing the budget.
    Low,
    /// This week.
    Medium,
    /// Now.
    High,
}

/// A flag: what was seen, where, and against which thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// `{CODE}:{budget_id}:{key}`: stable across restarts and replays.
    pub id: String,
    /// The rule.
    pub code: FlagCode,
    /// How urgent.
    pub severity: Severity,
    /// The budget it is about.
    pub budget_id: String,
    /// The budget's commissioner.
    pub commissioner_id: String,
    /// The triggering entries, oldest first.
    pub sequences: Vec<u64>,
    /// Raised at: the last triggering entry, or for a time-based flag the
    /// head it was derived at.
    pub raised_at: u64,
    /// The thresholds used, by `ControlsConfigured` field name.
    pub thresholds: Vec<(&'static str, String)>,
    /// What was seen, with the figures.
    pub explanation: String,
}

impl Flag {
    /// A flag on `budget` with the id `{CODE}:{budget}:{key}`.
    pub fn new(code: FlagCode, severity: Severity, budget: &Budget, key: &str) -> Flag {
        Flag {
            id: format!("{}:{}:{key}", code.as_str(), budget.id),
            code,
            severity,
            budget_id: budget.id.clone(),
            commissioner_id: budget.commissioner_id.clone(),
            sequences: Vec::new(),
            raised_at: 0,
            thresholds: Vec::new(),
            explanation: String::new(),
        }
    }
}

/// A commissioner's review of a flag (`FlagReviewed`); the latest counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// What it found.
    pub outcome: FlagOutcome,
    /// Who reviewed it.
    pub by: String,
    /// The FlagReviewed entry.
    pub sequence: u64,
    /// The note.
    pub note: String,
}

/// What a rule sees of one committed entry besides the entry itself.
pub struct Context<'a> {
    /// The entry's budget after it was folded (None for organisation
    /// events and for refusals naming a budget that does not exist).
    pub budget: Option<&'a Budget>,
    /// Every budget, after this entry.
    pub balances: &'a Balances,
    /// The thresholds in force for the budget's commissioner.
    pub controls: &'a Controls,
}

/// What a time-based rule sees when flags are listed.
pub struct AsOf<'a> {
    /// Every budget, at the head.
    pub balances: &'a Balances,
    /// The date the rules read ("how late is it").
    pub on: Date,
    /// The head the flags are derived at.
    pub head: u64,
    flags: &'a Flags,
}

impl AsOf<'_> {
    /// The thresholds in force now for `commissioner`'s budgets.
    pub fn controls(&self, commissioner: &str) -> &Controls {
        self.flags.controls(commissioner)
    }
}

/// One flag rule.
pub(crate) trait Rule {
    /// Folds one committed entry (applied or a recorded refusal), after
    /// `Balances` has; pushes the flags it raises onto `out`.
    fn apply(&mut self, c: &Committed<'_>, cx: &Context<'_>, out: &mut Vec<Flag>);

    /// The flags that hold as of `at` (time-based rules only).
    fn as_of(&self, _at: &AsOf<'_>, _out: &mut Vec<Flag>) {}
}

/// Every flag raised so far, the rules' state, the reviews and each
/// commissioner's thresholds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    controls: BTreeMap<String, Controls>,
    raised: BTreeMap<String, Flag>,
    by_sequence: BTreeMap<u64, Vec<String>>,
    reviews: BTreeMap<String, Review>,
    default_controls: Controls,
    rules: Rules,
}

/// Every rule's state, apart from what `Flags` keeps for all of them, so a
/// fold can lend the rules out while it reads the thresholds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rules {
    external_match: external_match::ExternalMatch,
    after_death: after_death::AfterDeath,
    duplicate_payment: duplicate_payment::DuplicatePayment,
    during_admission: during_admission::DuringAdmission,
    overbooked_worker: overbooked_worker::OverbookedWorker,
    spike: spike::Spike,
    surplus: surplus::Surplus,
    review_overdue: review_overdue::ReviewOverdue,
    cash_without_receipt: cash_without_receipt::CashWithoutReceipt,
    repeated_refusals: repeated_refusals::RepeatedRefusals,
}

impl Rules {
    /// The rules, in the order they fold an entry (one line per rule).
    fn all_mut(&mut self) -> [&mut dyn Rule; 10] {
        [
            &mut self.external_match,
            &mut self.after_death,
            &mut self.duplicate_payment,
            &mut self.during_admission,
            &mut self.overbooked_worker,
            &mut self.spike,
            &mut self.surplus,
            &mut self.review_overdue,
            &mut self.cash_without_receipt,
            &mut self.repeated_refusals,
        ]
    }

    /// The rules, for listing (one line per rule, as in `all_mut`).
    fn all(&self) -> [&dyn Rule; 10] {
        [
            &self.external_match,
            &self.after_death,
            &self.duplicate_payment,
            &self.during_admission,
            &self.overbooked_worker,
            &self.spike,
            &self.surplus,
            &self.review_overdue,
            &self.cash_without_receipt,
            &self.repeated_refusals,
        ]
    }
}

impl Flags {
    /// The thresholds in force for `commissioner`'s budgets.
    pub fn controls(&self, commissioner: &str) -> &Controls {
        self.controls
            .get(commissioner)
            .unwrap_or(&self.default_controls)
    }

    /// Folds one committed entry, after `balances` has folded it.
    pub fn apply(&mut self, c: &Committed<'_>, balances: &Balances) {
        let sequence = c.head.sequence;
        if c.applied() {
            match &c.event.kind {
                EventKind::ControlsConfigured(controls) => {
                    self.controls
                        .insert(c.signer_id.to_string(), controls.clone());
                    return;
                }
                EventKind::FlagReviewed {
                    flag_id,
                    outcome,
                    note,
                } => {
                    let review = Review {
                        outcome: *outcome,
                        by: c.signer_id.to_string(),
                        sequence,
                        note: note.clone(),
                    };
                    self.reviews.insert(flag_id.clone(), review);
                    return;
                }
                _ => {}
            }
        }
        let budget = balances.budget(&c.event.budget_id);
        let controls = budget
            .and_then(|b| self.controls.get(&b.commissioner_id))
            .unwrap_or(&self.default_controls);
        let cx = Context {
            budget,
            balances,
            controls,
        };
        let mut out = Vec::new();
        for rule in self.rules.all_mut() {
            rule.apply(c, &cx, &mut out);
        }
        for mut f in out {
            f.raised_at = sequence;
            debug_assert!(f.sequences.last() == Some(&sequence));
            let id = f.id.clone();
            let fresh = self.raised.insert(id.clone(), f).is_none();
            assert!(fresh, "flag {id} raised twice");
            self.by_sequence.entry(sequence).or_default().push(id);
        }
    }

    /// The flags entry `sequence` raised, in the order raised.
    pub fn raised_by(&self, sequence: u64) -> impl Iterator<Item = &Flag> + '_ {
        self.by_sequence
            .get(&sequence)
            .into_iter()
            .flatten()
            .filter_map(|id| self.raised.get(id))
    }

    /// The latest review of flag `id`, if any.
    pub fn review(&self, id: &str) -> Option<&Review> {
        self.reviews.get(id)
    }

    /// Every flag as of `on` at `head`, by id: the event-driven flags raised
    /// so far and the time-based ones that hold on `on`.
    pub fn list(&self, balances: &Balances, on: Date, head: u64) -> Vec<Flag> {
        let at = AsOf {
            balances,
            on,
            head,
            flags: self,
        };
        let mut derived = Vec::new();
        for rule in self.rules.all() {
            rule.as_of(&at, &mut derived);
        }
        for f in &mut derived {
            f.raised_at = head;
        }
        let mut all: Vec<Flag> = self.raised.values().cloned().collect();
        all.extend(derived);
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.dedup_by(|a, b| a.id == b.id);
        all
    }

    /// How many event-driven flags were raised (for limits and tests).
    pub fn raised_count(&self) -> usize {
        self.raised.len()
    }
}

/// `Flags`' snapshot (`Flags::encode`): its header, then
///
/// 1. the thresholds set by each commissioner (a map by commissioner id),
///    then the default thresholds: each the twelve settings in `Controls`'
///    field order, `u32`s, but `spike_multiple` as its value in hundredths
///    (a `u32`: `3` and `3.00` are one setting);
/// 2. the reviews (a map by flag id: outcome, reviewer, sequence, note);
/// 3. the flags raised by entries, grouped by the entry that raised them
///    (a map by sequence to its flags in the order raised: id, code,
///    severity, budget id, commissioner id, sequences, thresholds as
///    (`ControlsConfigured` field name, value) strings, explanation; the
///    flag's `raised_at` is its entry's sequence, so it is not written);
/// 4. each rule's state, in `Rules`' field order (the layouts are beside
///    each rule's `write`; EXTERNAL_MATCH and SURPLUS keep none and write
///    nothing).
///
/// Decoding checks that the thresholds are ones `ControlsConfigured` sets
/// (each in its range), that each flag's id is `{CODE}:{budget_id}:{key}`
/// for its own code and budget, that no flag is raised twice or by an entry
/// that raised none, and that its last sequence is the entry that raised it
/// (as the fold raises it); each rule checks its own.
const FORMAT: Format = Format {
    tag: *b"FLGS",
    version: 1,
};

/// The thresholds' names a flag can carry: the `ControlsConfigured` field
/// names (a `&'static str` in `Flag`, so decoding names one of these).
const THRESHOLD_NAMES: [&str; 12] = [
    "surplus_weeks",
    "surplus_mute_weeks",
    "admission_days",
    "worker_hours_per_week",
    "worker_hours_per_day",
    "spike_multiple",
    "spike_weeks",
    "cash_receipt_days",
    "first_review_weeks",
    "review_interval_months",
    "refusals_count",
    "refusals_days",
];

impl Flags {
    /// Appends the flags' snapshot to `out`, as `Projection::encode` does
    /// for the others (`Flags` is not a `Projection`: its fold also reads
    /// the balances): canonical, equal flags give equal bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.write(&mut SnapshotWriter::new(out));
    }

    /// The flags whose snapshot is exactly `bytes`, as `Projection::decode`:
    /// corrupt or hostile bytes are an `Err`, never a panic; bytes that
    /// decode re-encode to themselves, and the flags decoded fold further
    /// entries as the original would.
    pub fn decode(bytes: &[u8]) -> Result<Flags, SnapshotError> {
        SnapshotReader::read_all(bytes, Flags::read)
    }

    /// The last entry that raised a flag, if any.
    pub(super) fn last_raised(&self) -> Option<u64> {
        self.by_sequence.keys().next_back().copied()
    }

    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        let Flags {
            controls,
            raised,
            by_sequence,
            reviews,
            default_controls,
            rules,
        } = self;
        w.header(FORMAT);
        w.seq(controls, |w, (commissioner, c)| {
            w.str(commissioner);
            write_controls(w, c);
        });
        write_controls(w, default_controls);
        w.seq(reviews, |w, (id, review)| {
            let Review {
                outcome,
                by,
                sequence,
                note,
            } = review;
            w.str(id);
            w.flag_outcome(*outcome);
            w.str(by);
            w.u64(*sequence);
            w.str(note);
        });
        w.seq(by_sequence, |w, (sequence, ids)| {
            w.u64(*sequence);
            // Every id listed was raised (`apply` inserts both).
            let flags: Vec<&Flag> = ids.iter().filter_map(|id| raised.get(id)).collect();
            w.seq(flags, |w, f| write_flag(w, f));
        });
        rules.write(w);
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<Flags, SnapshotError> {
        r.header(FORMAT)?;
        let controls = r.map(|r| Ok((r.string()?, read_controls(r)?)))?;
        let default_controls = read_controls(r)?;
        let reviews = r.map(|r| {
            let id = r.string()?;
            let review = Review {
                outcome: r.read_flag_outcome()?,
                by: r.string()?,
                sequence: r.u64()?,
                note: r.string()?,
            };
            Ok((id, review))
        })?;
        let mut raised = BTreeMap::new();
        let by_sequence = r.map(|r| {
            let sequence = r.u64()?;
            let at = r.position();
            let ids = r.seq(|r| {
                let at = r.position();
                let f = read_flag(r, sequence)?;
                let id = f.id.clone();
                if raised.insert(id.clone(), f).is_some() {
                    return Err(SnapshotReader::bad(at, "a flag raised twice"));
                }
                Ok(id)
            })?;
            if ids.is_empty() {
                return Err(SnapshotReader::bad(
                    at,
                    "an entry listed as raising no flag",
                ));
            }
            Ok((sequence, ids))
        })?;
        let rules = Rules::read(r)?;
        Ok(Flags {
            controls,
            raised,
            by_sequence,
            reviews,
            default_controls,
            rules,
        })
    }
}

impl Rules {
    fn write(&self, w: &mut SnapshotWriter<'_>) {
        // Every field named, so a rule given state does not compile until
        // it is written.
        let Rules {
            external_match: external_match::ExternalMatch,
            after_death,
            duplicate_payment,
            during_admission,
            overbooked_worker,
            spike,
            surplus: surplus::Surplus,
            review_overdue,
            cash_without_receipt,
            repeated_refusals,
        } = self;
        after_death.write(w);
        duplicate_payment.write(w);
        during_admission.write(w);
        overbooked_worker.write(w);
        spike.write(w);
        review_overdue.write(w);
        cash_without_receipt.write(w);
        repeated_refusals.write(w);
    }

    fn read(r: &mut SnapshotReader<'_>) -> Result<Rules, SnapshotError> {
        Ok(Rules {
            external_match: external_match::ExternalMatch,
            after_death: after_death::AfterDeath::read(r)?,
            duplicate_payment: duplicate_payment::DuplicatePayment::read(r)?,
            during_admission: during_admission::DuringAdmission::read(r)?,
            overbooked_worker: overbooked_worker::OverbookedWorker::read(r)?,
            spike: spike::Spike::read(r)?,
            surplus: surplus::Surplus,
            review_overdue: review_overdue::ReviewOverdue::read(r)?,
            cash_without_receipt: cash_without_receipt::CashWithoutReceipt::read(r)?,
            repeated_refusals: repeated_refusals::RepeatedRefusals::read(r)?,
        })
    }
}

fn write_controls(w: &mut SnapshotWriter<'_>, c: &Controls) {
    let Controls {
        surplus_weeks,
        surplus_mute_weeks,
        admission_days,
        worker_hours_per_week,
        worker_hours_per_day,
        spike_multiple,
        spike_weeks,
        cash_receipt_days,
        first_review_weeks,
        review_interval_months,
        refusals_count,
        refusals_days,
    } = c;
    w.u32(*surplus_weeks);
    w.u32(*surplus_mute_weeks);
    w.u32(*admission_days);
    w.u32(*worker_hours_per_week);
    w.u32(*worker_hours_per_day);
    // At most two places (`Controls::decode`), so exact in hundredths; a
    // value out of range writes 0, which decoding refuses, so the caller
    // folds the log instead.
    let mut hundredths = *spike_multiple;
    hundredths.rescale(2);
    w.u32(u32::try_from(hundredths.mantissa()).unwrap_or(0));
    w.u32(*spike_weeks);
    w.u32(*cash_receipt_days);
    w.u32(*first_review_weeks);
    w.u32(*review_interval_months);
    w.u32(*refusals_count);
    w.u32(*refusals_days);
}

fn read_controls(r: &mut SnapshotReader<'_>) -> Result<Controls, SnapshotError> {
    let at = r.position();
    let c = Controls {
        surplus_weeks: r.u32()?,
        surplus_mute_weeks: r.u32()?,
        admission_days: r.u32()?,
        worker_hours_per_week: r.u32()?,
        worker_hours_per_day: r.u32()?,
        spike_multiple: Decimal::new(i64::from(r.u32()?), 2).normalize(),
        spike_weeks: r.u32()?,
        cash_receipt_days: r.u32()?,
        first_review_weeks: r.u32()?,
        review_interval_months: r.u32()?,
        refusals_count: r.u32()?,
        refusals_days: r.u32()?,
    };
    // The rules divide by and count with these: accept exactly what a
    // `ControlsConfigured` can set, by its own check (a setting it would
    // refuse, or read as the default, comes back different).
    let configured = pb::ControlsConfigured {
        surplus_weeks: c.surplus_weeks,
        surplus_mute_weeks: c.surplus_mute_weeks,
        admission_days: c.admission_days,
        worker_hours_per_week: c.worker_hours_per_week,
        worker_hours_per_day: c.worker_hours_per_day,
        spike_multiple: c.spike_multiple.to_string(),
        spike_weeks: c.spike_weeks,
        cash_receipt_days: c.cash_receipt_days,
        first_review_weeks: c.first_review_weeks,
        review_interval_months: c.review_interval_months,
        refusals_count: c.refusals_count,
        refusals_days: c.refusals_days,
    };
    match Controls::decode(&configured) {
        Ok(checked) if checked == c => Ok(c),
        _ => Err(SnapshotReader::bad(
            at,
            "thresholds that ControlsConfigured cannot set",
        )),
    }
}

fn write_flag(w: &mut SnapshotWriter<'_>, f: &Flag) {
    let Flag {
        id,
        code,
        severity,
        budget_id,
        commissioner_id,
        sequences,
        raised_at: _,
        thresholds,
        explanation,
    } = f;
    w.str(id);
    w.flag_code(*code);
    w.severity(*severity);
    w.str(budget_id);
    w.str(commissioner_id);
    w.seq(sequences, |w, s| w.u64(*s));
    w.seq(thresholds, |w, (name, value)| {
        w.str(name);
        w.str(value);
    });
    w.str(explanation);
}

/// A flag that entry `raised_at` raised.
fn read_flag(r: &mut SnapshotReader<'_>, raised_at: u64) -> Result<Flag, SnapshotError> {
    let at = r.position();
    let f = Flag {
        id: r.string()?,
        code: r.read_flag_code()?,
        severity: r.read_severity()?,
        budget_id: r.string()?,
        commissioner_id: r.string()?,
        sequences: r.seq(SnapshotReader::u64)?,
        raised_at,
        thresholds: r.seq(|r| {
            let at = r.position();
            let name = r.str()?;
            let name = THRESHOLD_NAMES
                .iter()
                .find(|n| **n == name)
                .copied()
                .ok_or_else(|| SnapshotReader::bad(at, "a threshold no control is named"))?;
            Ok((name, r.string()?))
        })?,
        explanation: r.string()?,
    };
    let key =
        f.id.strip_prefix(f.code.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|rest| rest.strip_prefix(f.budget_id.as_str()))
            .and_then(|rest| rest.strip_prefix(':'));
    if key.is_none_or(str::is_empty) {
        return Err(SnapshotReader::bad(
            at,
            "a flag id that is not {CODE}:{budget_id}:{key} of its code and budget",
        ));
    }
    if f.sequences.last() != Some(&raised_at) {
        return Err(SnapshotReader::bad(
            at,
            "a flag whose last sequence is not the entry that raised it",
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::surplus::kit::*;
    use super::*;
    use crate::event::{Management, ReviewKind};
    use crate::money::Money;

    fn bytes(flags: &Flags) -> Vec<u8> {
        let mut out = Vec::new();
        flags.encode(&mut out);
        out
    }

    /// Decoding `flags`' snapshot is refused with a message containing
    /// `what`.
    fn refused(flags: &Flags, what: &str) {
        match Flags::decode(&bytes(flags)) {
            Err(SnapshotError::BadValue { what: why, .. }) => assert!(why.contains(what), "{why}"),
            other => panic!("decoded, or refused otherwise: {other:?}"),
        }
    }

    /// Thresholds, a review and a REPEATED_REFUSALS flag (and the rules'
    /// state behind it).
    fn kit() -> Kit {
        let mut k = Kit::default();
        k.open("b", Management::ThirdParty);
        k.plan("b", &[("therapy", money(5000, 0))], Money::ZERO);
        k.fund("b", date(2026, 4, 1), money(100, 0));
        let controls = Controls {
            spike_multiple: Decimal::new(250, 2),
            refusals_count: 2,
            ..Controls::default()
        };
        k.ok(
            "",
            date(2026, 4, 1),
            EventKind::ControlsConfigured(controls),
        );
        for _ in 0..2 {
            let kind = EventKind::Purchase {
                amount: money(999, 0),
                category: "therapy".into(),
                supplier_ref: "s".into(),
                description: "too much".into(),
                receipt_ref: String::new(),
                supplier_sector: None,
            };
            k.entry("fh", "b", date(2026, 5, 1), kind, Some(9));
        }
        let outcome = "fine".to_string();
        let on = date(2026, 5, 2);
        let kind = ReviewKind::CareReview;
        let review = EventKind::ReviewRecorded {
            date: on,
            kind,
            outcome,
        };
        k.ok("b", on, review);
        k.ok(
            "b",
            on,
            EventKind::FlagReviewed {
                flag_id: format!("REPEATED_REFUSALS:b:{}", k.head - 1),
                outcome: FlagOutcome::Dismissed,
                note: "a test".into(),
            },
        );
        assert_eq!(k.flags.raised_count(), 1);
        k
    }

    #[test]
    fn a_snapshot_restores_the_flags_exactly() {
        let k = kit();
        let b = bytes(&k.flags);
        let back = Flags::decode(&b).unwrap();
        assert_eq!(back, k.flags);
        assert_eq!(bytes(&back), b);
        assert_eq!(
            back.list(&k.balances, date(2027, 1, 1), k.head),
            k.list(date(2027, 1, 1))
        );
        assert_eq!(
            Flags::decode(&bytes(&Flags::default())),
            Ok(Flags::default())
        );
        // 2.50 and 2.5 are one setting, written once.
        let mut two_places = k.flags.clone();
        two_places.controls.get_mut(ICB).unwrap().spike_multiple = Decimal::new(25, 1);
        assert_eq!(bytes(&two_places), b);
    }

    #[test]
    fn decoding_refuses_what_no_fold_holds() {
        let k = kit();
        let id = k.flags.raised.keys().next().unwrap().clone();
        let sequence = k.flags.raised[&id].raised_at;
        let edit = |f: fn(&mut Flags, &str, u64)| {
            let mut flags = k.flags.clone();
            f(&mut flags, &id, sequence);
            flags
        };
        let cannot_set = "ControlsConfigured cannot set";
        let bad = edit(|f, _, _| f.controls.get_mut(ICB).unwrap().spike_weeks = 0);
        refused(&bad, cannot_set);
        let bad = edit(|f, _, _| f.default_controls.refusals_count = 1);
        refused(&bad, cannot_set);
        let bad = edit(|f, _, _| f.default_controls.spike_multiple = Decimal::ONE);
        refused(&bad, cannot_set);
        let bad = edit(|f, _, _| f.default_controls.admission_days = 367);
        refused(&bad, cannot_set);
        let bad = edit(|f, id, _| f.raised.get_mut(id).unwrap().budget_id = "c".into());
        refused(&bad, "of its code and budget");
        let bad = edit(|f, id, _| f.raised.get_mut(id).unwrap().code = FlagCode::Spike);
        refused(&bad, "of its code and budget");
        let bad = edit(|f, id, _| f.raised.get_mut(id).unwrap().sequences.push(999));
        refused(&bad, "last sequence");
        let bad = edit(|f, id, s| f.by_sequence.get_mut(&s).unwrap().push(id.to_string()));
        refused(&bad, "raised twice");
        let bad = edit(|f, _, s| {
            f.by_sequence.insert(s + 1, Vec::new());
        });
        refused(&bad, "raising no flag");
        let bad = edit(|f, id, _| {
            f.raised.get_mut(id).unwrap().thresholds[0].0 = "surplus";
        });
        refused(&bad, "no control is named");
    }
}
