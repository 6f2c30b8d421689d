//! The checks: after every admission ([`Checker`], an [`Observer`] of the
//! writer), after every request and at the end of a run ([`Sim`]).
//!
//! After every admission: every budget's figures satisfy the invariants
//! ([`check_budget`](crate::state::check_budget)) and equal the pence model
//! of the applied events; the head is the last entry; each budget was last
//! changed by an applied event about it. By outcome:
//!
//! * written: the next sequence, an unused (signer, event id), an
//!   organisation event exactly when root signed it, allowed by the
//!   authorisation rules as restated here ([`check_authorised`]) on the
//!   state before, its amount the grammar's reading of the signed string,
//!   and no stopped budget changed;
//! * a refusal recorded now: a decision of the rules (as `decide` gives it
//!   again) or the failed batch's, the next sequence, and nothing but the
//!   head changed;
//! * a duplicate, a retry of a recorded refusal (answered with it) or an
//!   unrecorded refusal: nothing changed; ALREADY_EXISTS for an event id
//!   only ever answers its own signer's other bytes;
//! * an amount the grammar refuses is never written or recorded.

use crate::amount::{self, amount_of, figure_pence, grammar_pence, signed_amount};
use crate::cast::{org_index, signing_key, LEDGER_ID, ROOT};
use crate::model::PenceModel;
use crate::state::{check_ledger, snapshot, Snapshot};
use crate::writer::{key_of, Indexed, Key, Observer, Outcome, Writer};
use phb_domain::event::{EventKind, Management, PayeeKind, Role};
use phb_domain::{Event, Ledger, LogEntry, Refusal, Reject, RejectCode, SignedEvent, GENESIS_HASH};
use std::collections::HashSet;

/// What [`Checker::before`](Observer::before) saw of the event being
/// admitted.
#[derive(Debug, Clone)]
struct Before {
    state: Snapshot,
    key: Option<Key>,
    indexed: Option<Indexed>,
    /// The stored entry under the same key holds exactly these bytes.
    same_bytes: bool,
    decodes: bool,
    authentic: bool,
    /// The amount string the bytes carry, and whether it is a delta.
    raw: Option<(String, bool)>,
}

/// What the checks keep beside the writer: the state and the pence model
/// after every entry.
#[derive(Debug, Clone)]
pub struct Checker {
    /// `snapshots[n]`: the state after `n` entries.
    pub snapshots: Vec<Snapshot>,
    /// `models[n]`: the pence model after `n` entries.
    pub models: Vec<PenceModel>,
    /// How many events were written under an event id another signer had
    /// already used (the generators must reach this).
    pub shared_ids: usize,
    pending: Option<Before>,
}

impl Checker {
    /// The checks of a writer that has written nothing yet.
    pub fn new(w: &Writer) -> Checker {
        assert!(w.log.is_empty(), "checks start from an empty log");
        Checker {
            snapshots: vec![snapshot(&w.ledger)],
            models: vec![PenceModel::default()],
            shared_ids: 0,
            pending: None,
        }
    }

    /// The pence model now.
    pub fn model(&self) -> &PenceModel {
        self.models
            .last()
            .expect("a model per entry and one before")
    }

    /// The checks that hold whatever happened last.
    fn invariants(&self, w: &Writer) {
        let l = &w.ledger;
        let head = l.head();
        assert_eq!(head.sequence as usize, w.log.len(), "head is not the log's");
        assert_eq!(head.hash, w.log.last().map_or(GENESIS_HASH, |e| e.hash));
        assert_eq!(self.snapshots.len(), w.log.len() + 1);
        assert_eq!(self.models.len(), w.log.len() + 1);
        assert_eq!(w.events.len(), w.log.len());
        assert_eq!(w.undos.len(), w.log.len());
        assert_eq!(snapshot(l), self.snapshots[w.log.len()]);
        check_ledger(l);
        for b in l.budgets() {
            // Its last change was an applied event about it, never a refusal.
            let last = w.entry(b.last_sequence);
            assert!(
                last.refusal.is_none(),
                "{}: changed by a refusal entry",
                b.id
            );
            assert_eq!(w.events[b.last_sequence as usize - 1].budget_id, b.id);
        }
        self.model().check(l);
    }
}

impl Observer for Checker {
    fn before(&mut self, w: &Writer, signed: &SignedEvent, now: i64) {
        let key = key_of(signed);
        let indexed = key.as_ref().and_then(|k| w.ids.get(k).cloned());
        let same_bytes = indexed
            .as_ref()
            .is_some_and(|i| i.digest == signed.digest());
        self.pending = Some(Before {
            state: snapshot(&w.ledger),
            key,
            indexed,
            same_bytes,
            decodes: w.ledger.decode(signed, now).is_ok(),
            authentic: w.ledger.authenticate(signed).is_ok(),
            raw: signed_amount(signed),
        });
    }

    fn after(
        &mut self,
        w: &Writer,
        signed: &SignedEvent,
        outcome: &Outcome,
        recording: Option<&Reject>,
    ) {
        let b = self.pending.take().expect("after without before");
        let after = snapshot(&w.ledger);
        match outcome {
            Outcome::Written(seq) => {
                assert!(recording.is_none(), "a recorded batch applied an event");
                assert_eq!(*seq, b.state.head.sequence + 1);
                assert_eq!(w.log.len() as u64, *seq);
                assert!(b.indexed.is_none(), "(signer, event id) written twice");
                assert_eq!(w.entry(*seq).refusal, None);
                let ev = w.events.last().expect("written");
                assert_eq!(
                    signed.signer_id == "root",
                    ev.kind.is_organisation_event(),
                    "{} written by {}",
                    ev.kind.name(),
                    signed.signer_id
                );
                let (signer, id) = b.key.as_ref().expect("written without an event id");
                if w.ids.keys().any(|(s, i)| i == id && s != signer) {
                    self.shared_ids += 1;
                }
                if let Some((raw, _)) = &b.raw {
                    let pence =
                        grammar_pence(raw).unwrap_or_else(|| panic!("amount {raw:?} was accepted"));
                    let m = amount_of(&ev.kind)
                        .unwrap_or_else(|| panic!("{} carried an amount", ev.kind.name()));
                    assert_eq!(figure_pence(m, raw), pence, "{raw:?}");
                }
                check_authorised(&b.state, &signed.signer_id, ev);
                // A stopped budget never changes again.
                for x in b.state.budgets.iter().filter(|x| x.stopped) {
                    assert_eq!(Some(x), w.ledger.budget(&x.id), "stopped budget changed");
                }
                let mut model = self.model().clone();
                model.apply(ev, signed);
                self.models.push(model);
                self.snapshots.push(after);
            }
            Outcome::Duplicate(seq) => {
                assert!(recording.is_none());
                assert_eq!(b.state, after, "a duplicate changed the state");
                let i = b.indexed.as_ref().expect("a duplicate of nothing");
                assert_eq!((i.sequence, b.same_bytes), (*seq, true));
                assert_eq!(i.refusal, None, "a recorded refusal answered as applied");
                assert_eq!(&w.entry(*seq).signed, signed);
            }
            Outcome::Refused {
                reject,
                sequence,
                duplicate: false,
            } => {
                // Recorded: the head moves by one entry, nothing else changes.
                assert_eq!(*sequence, b.state.head.sequence + 1);
                assert_eq!(after.head.sequence, *sequence);
                assert_eq!(
                    after.with_head(b.state.head),
                    b.state,
                    "a refusal changed the state"
                );
                assert!(b.indexed.is_none(), "(signer, event id) recorded twice");
                assert!(
                    b.decodes && b.authentic,
                    "recorded an unauthenticated event"
                );
                let entry = w.entry(*sequence);
                assert_eq!(&entry.signed, signed);
                let code = reject.code.grpc_code() as u32;
                assert_eq!(
                    entry.refusal,
                    Some(Refusal::new(code, recording.is_some(), &reject.message))
                );
                match recording {
                    None => {
                        assert!(reject.code.is_decision(), "recorded {reject}");
                        // The rules refuse it, on the state before, the same way.
                        let ev = w.events.last().expect("recorded");
                        let decided = w.ledger.decide(&signed.signer_id, ev);
                        assert_eq!(decided.map_err(|r| r.code), Err(reject.code));
                    }
                    Some(r) => assert_eq!(reject, r),
                }
                let model = self.model().clone();
                self.models.push(model);
                self.snapshots.push(after);
            }
            Outcome::Refused {
                reject,
                sequence,
                duplicate: true,
            } => {
                assert_eq!(b.state, after, "a retry of a refusal changed the state");
                let i = b.indexed.as_ref().expect("a retry of nothing");
                assert_eq!((i.sequence, b.same_bytes), (*sequence, true));
                let r = i
                    .refusal
                    .as_ref()
                    .expect("an applied event answered refused");
                assert_eq!(*reject, Reject::from_refusal(r), "not the original refusal");
            }
            Outcome::Rejected(r) => {
                assert_eq!(b.state, after, "an unrecorded refusal changed the state");
                match recording {
                    None => {
                        assert!(
                            matches!(
                                r.code,
                                RejectCode::InvalidArgument
                                    | RejectCode::Unauthenticated
                                    | RejectCode::AlreadyExists
                            ),
                            "a refusal by the rules was not recorded: {r}"
                        );
                        if r.code == RejectCode::AlreadyExists {
                            // Only the signer's own key, used for other bytes.
                            assert!(b.indexed.is_some() && !b.same_bytes, "{r}");
                        }
                    }
                    Some(rec) => {
                        assert_eq!(r, rec);
                        // Not recordable: malformed, unauthenticated, its key
                        // used by other bytes, or the event already applied.
                        let applied = b.indexed.as_ref().is_some_and(|i| i.refusal.is_none());
                        assert!(
                            !b.decodes
                                || !b.authentic
                                || (b.indexed.is_some() && !b.same_bytes)
                                || applied,
                            "a recordable event of a failed batch was not recorded"
                        );
                    }
                }
            }
        }
        // A recorded refusal is final: the same signed bytes get it again.
        if b.same_bytes && b.decodes && b.indexed.as_ref().is_some_and(|i| i.refusal.is_some()) {
            assert!(
                matches!(
                    outcome,
                    Outcome::Refused {
                        duplicate: true,
                        ..
                    }
                ),
                "a retry of a recorded refusal got {outcome:?}"
            );
        }
        // An amount the grammar refuses is refused as malformed, unrecorded.
        if let Some((raw, delta)) = &b.raw {
            if !amount::is_valid(raw, *delta) {
                match (outcome, recording) {
                    (Outcome::Rejected(r), None) => {
                        assert_eq!(r.code, RejectCode::InvalidArgument, "{raw:?}: {r}")
                    }
                    (Outcome::Rejected(_), Some(_)) => {}
                    (o, _) => panic!("invalid amount {raw:?}: {o:?}"),
                }
            }
        }
        self.invariants(w);
    }

    fn batch_recorded(
        &mut self,
        w: &Writer,
        built: &[SignedEvent],
        failed_at: usize,
        outcomes: &[Outcome],
        start: usize,
    ) {
        assert_eq!(
            self.snapshots.len(),
            start + 1,
            "batch recorded after a rollback"
        );
        let before = self.snapshots[start].clone();
        let mut first = true;
        let mut next = start as u64 + 1;
        for (i, (signed, o)) in built.iter().zip(outcomes).enumerate() {
            match o {
                Outcome::Refused {
                    reject,
                    sequence,
                    duplicate: false,
                } => {
                    assert_eq!(
                        *sequence, next,
                        "a failed batch is recorded in request order"
                    );
                    next += 1;
                    let entry = w.entry(*sequence);
                    assert_eq!(&entry.signed, signed);
                    let r = entry.refusal.as_ref().expect("recorded as a refusal");
                    assert!(r.in_atomic_batch, "not marked as a batch");
                    assert_eq!(r.first_in_batch, first, "the run's first entry is marked");
                    first = false;
                    assert_eq!(r.code, reject.code.grpc_code() as u32);
                    if i == failed_at {
                        assert!(
                            reject.code.is_decision() || reject.code == RejectCode::Aborted,
                            "{reject}"
                        );
                    } else {
                        assert_eq!(reject.code, RejectCode::Aborted, "{reject}");
                    }
                    let model = self.model().clone();
                    self.models.push(model);
                    self.snapshots
                        .push(before.with_head(phb_domain::Head::of(entry)));
                }
                Outcome::Refused {
                    duplicate: true, ..
                }
                | Outcome::Rejected(_) => {}
                o => panic!("an event of a failed batch was applied: {o:?}"),
            }
        }
        assert_eq!(w.log.len() as u64, next - 1);
        assert_eq!(
            snapshot(&w.ledger),
            before.with_head(w.ledger.head()),
            "a failed batch changed the state"
        );
        self.invariants(w);
    }

    fn rolled_back(&mut self, w: &Writer, len: usize) {
        self.snapshots.truncate(len + 1);
        self.models.truncate(len + 1);
        assert_eq!(w.log.len(), len);
        assert_eq!(snapshot(&w.ledger), self.snapshots[len], "rollback");
        self.invariants(w);
    }
}

/// The rules of who may record what (docs/domain.md, ledger.proto), written
/// out independently of `Ledger::authorise`, for an event accepted from
/// `signer` on the state `before`.
pub fn check_authorised(before: &Snapshot, signer: &str, event: &Event) {
    let kind = event.kind.name();
    if event.kind.is_organisation_event() {
        assert_eq!(signer, "root", "{kind} accepted from {signer}");
        return;
    }
    let org = org_index(signer)
        .and_then(|i| before.orgs[i].as_ref())
        .unwrap_or_else(|| panic!("{kind} accepted from unregistered {signer}"));
    assert_eq!(org.id, signer);
    let budget = before.budgets.iter().find(|b| b.id == event.budget_id);
    if let EventKind::BudgetOpened {
        commissioner_id,
        management,
        funds_holder_id,
        payroll_provider_id,
        ..
    } = &event.kind
    {
        assert!(budget.is_none(), "budget {} opened twice", event.budget_id);
        assert_eq!(commissioner_id, signer, "opened by someone else");
        assert!(org.roles.contains(&Role::Commissioner));
        let has = |id: &Option<String>, role: Role| {
            id.as_ref().is_none_or(|id| {
                before
                    .orgs
                    .iter()
                    .flatten()
                    .any(|o| &o.id == id && o.roles.contains(&role))
            })
        };
        let holder_role = match management {
            Management::ThirdParty => Role::ThirdParty,
            _ => Role::AccountProvider,
        };
        assert!(
            has(funds_holder_id, holder_role),
            "funds holder without the role"
        );
        assert!(
            has(payroll_provider_id, Role::PayrollProvider),
            "payroll without the role"
        );
        match management {
            Management::ThirdParty => assert!(funds_holder_id.is_some()),
            Management::Notional => {
                assert!(funds_holder_id.is_none() && payroll_provider_id.is_none())
            }
            Management::DirectPayment => {}
        }
        return;
    }
    let b = budget.unwrap_or_else(|| panic!("{kind} accepted on unopened {}", event.budget_id));
    assert!(!b.stopped, "{kind} accepted on stopped budget {}", b.id);
    let commissioner = b.commissioner_id == signer && org.roles.contains(&Role::Commissioner);
    let holder = b.funds_holder_id.as_deref() == Some(signer)
        && (org.roles.contains(&Role::ThirdParty) || org.roles.contains(&Role::AccountProvider));
    let payroll = b.payroll_provider_id.as_deref() == Some(signer)
        && org.roles.contains(&Role::PayrollProvider);
    let notional = b.management == Management::Notional;
    let ok = match &event.kind {
        EventKind::Allocation { .. }
        | EventKind::ReviewAdjustment { .. }
        | EventKind::BudgetStopped { .. } => commissioner,
        // The simulation has no plan facilitators.
        EventKind::CarePlanApproved(_) | EventKind::ServiceAgreementApproved(_) => commissioner,
        EventKind::Disbursement { .. } => commissioner && !notional,
        EventKind::Payment { payee_kind, .. } => {
            if notional {
                commissioner
            } else {
                holder || (payroll && *payee_kind == PayeeKind::PersonalAssistant)
            }
        }
        EventKind::Purchase { .. } => {
            if notional {
                commissioner
            } else {
                holder
            }
        }
        _ => unreachable!("the simulation sends no other kinds"),
    };
    assert!(ok, "{kind} on {} accepted from {signer}", b.id);
    // docs/api.md, "Spending categories": never spent on, whatever the plan.
    const EXCLUDED: [&str; 8] = [
        "gp_primary_care",
        "emergency_care",
        "inpatient_care",
        "pharmaceuticals",
        "alcohol",
        "tobacco",
        "gambling",
        "debt_repayment",
    ];
    if let EventKind::Payment { category, .. } | EventKind::Purchase { category, .. } = &event.kind
    {
        assert!(
            !EXCLUDED.contains(&category.as_str()),
            "{kind} in excluded category {category} accepted"
        );
    }
}

/// Replays `entries` (refusal entries included) into a fresh ledger of the
/// cast, as `Engine::open` does: every entry must replay, and no (signer,
/// event id) may appear twice. Returns the ledger and the decoded events.
pub fn replay(entries: &[LogEntry]) -> (Ledger, Vec<Event>) {
    let mut fresh = Ledger::new(LEDGER_ID, signing_key(ROOT, 0).verifying_key());
    let mut keys = HashSet::new();
    let events = entries
        .iter()
        .map(|e| {
            let ev = fresh.replay(e).unwrap_or_else(|err| {
                panic!("written entry {} does not replay: {err}", e.sequence)
            });
            // What `Engine::open` checks on top of `Ledger::replay`.
            assert!(
                keys.insert((e.signed.signer_id.clone(), ev.event_id.clone())),
                "(signer, event id) twice in the log"
            );
            ev
        })
        .collect();
    fresh.finish_replay();
    (fresh, events)
}

/// The writer and its checks, driven request by request.
#[derive(Debug, Clone)]
pub struct Sim {
    /// The writer.
    pub w: Writer,
    /// The checks beside it.
    pub checks: Checker,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    /// An empty ledger of the cast.
    pub fn new() -> Sim {
        let w = Writer::new();
        let checks = Checker::new(&w);
        Sim { w, checks }
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.w.ledger
    }

    /// One request ([`Writer::process`]) with every check; see
    /// [`Sim::request_with`].
    pub fn request(&mut self, built: &[SignedEvent], atomic: bool, now: i64) -> Vec<Outcome> {
        self.request_with(built, atomic, now, &mut ())
    }

    /// One request at server time `now`, with every per-admission check,
    /// `extra` seeing each step before the checks do. Then: the log grew by
    /// one entry per event written or refusal recorded; an atomic request
    /// with a refusal is refused whole, left budgets, organisations and keys
    /// as they were, and grew the log and the index by its recorded
    /// refusals alone, each marked as the batch's; and every event written
    /// or recorded now, sent again alone, is answered the same way again
    /// and changes nothing.
    pub fn request_with(
        &mut self,
        built: &[SignedEvent],
        atomic: bool,
        now: i64,
        extra: &mut impl Observer,
    ) -> Vec<Outcome> {
        let start = self.w.log.len();
        let before = snapshot(&self.w.ledger);
        let ids_before = self.w.ids.clone();
        let outcomes = self
            .w
            .process(built, atomic, now, &mut (&mut *extra, &mut self.checks));
        assert_eq!(outcomes.len(), built.len());
        let entries = outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Outcome::Written(_)
                        | Outcome::Refused {
                            duplicate: false,
                            ..
                        }
                )
            })
            .count();
        assert_eq!(self.w.log.len(), start + entries);
        if atomic && outcomes.iter().any(Outcome::is_refusal) {
            for o in &outcomes {
                assert!(o.is_refusal(), "failed atomic batch answered {o:?}");
            }
            let after = snapshot(&self.w.ledger);
            assert_eq!(
                after.with_head(before.head),
                before,
                "a failed atomic batch left changes"
            );
            let mut ids = ids_before;
            for (e, ev) in self.w.log[start..].iter().zip(&self.w.events[start..]) {
                let r = e.refusal.as_ref().expect("a failed atomic batch applied");
                assert!(r.in_atomic_batch, "batch refusal not marked atomic");
                let key = (e.signed.signer_id.clone(), ev.event_id.clone());
                let indexed = self.w.ids.get(&key).expect("recorded, not indexed").clone();
                assert_eq!(indexed.sequence, e.sequence);
                assert!(ids.insert(key, indexed).is_none(), "a used key recorded");
            }
            assert_eq!(ids, self.w.ids, "index after a failed atomic batch");
        }
        // Idempotent re-submission.
        for (signed, o) in built.iter().zip(&outcomes) {
            let expected = match o {
                Outcome::Written(seq) => Outcome::Duplicate(*seq),
                Outcome::Refused {
                    reject,
                    sequence,
                    duplicate: false,
                } => {
                    let r = self
                        .w
                        .entry(*sequence)
                        .refusal
                        .as_ref()
                        .expect("refused, but the entry records none");
                    assert_eq!(r.code, reject.code.grpc_code() as u32);
                    Outcome::Refused {
                        reject: Reject::from_refusal(r),
                        sequence: *sequence,
                        duplicate: true,
                    }
                }
                _ => continue,
            };
            let state = snapshot(&self.w.ledger);
            let again = self.w.process(
                std::slice::from_ref(signed),
                false,
                now,
                &mut (&mut *extra, &mut self.checks),
            );
            assert_eq!(again, [expected], "re-submission");
            assert_eq!(
                snapshot(&self.w.ledger),
                state,
                "re-submission changed state"
            );
        }
        outcomes
    }

    /// Each event of `setup` alone, checked, at `now`.
    pub fn setup(&mut self, setup: &[SignedEvent], now: i64) -> Vec<Outcome> {
        setup
            .iter()
            .flat_map(|s| self.request(std::slice::from_ref(s), false, now))
            .collect()
    }

    /// Rolls back to the first `len` entries, checking the state is the one
    /// after them.
    pub fn rollback_to(&mut self, len: usize) {
        self.w.rollback_to(len);
        self.checks.rolled_back(&self.w, len);
    }

    /// The checks at the end of a run:
    ///
    /// * replaying the whole log (refusal entries included) into a fresh
    ///   ledger gives the same events and the same state after every prefix,
    ///   with no (signer, event id) twice, a chain of hashes and
    ///   `recorded_at` never going back; the pence model folded from the
    ///   log afresh is the one kept entry by entry;
    /// * every recorded refusal, its signed bytes sent again alone at `now`,
    ///   gets that refusal again and changes nothing;
    /// * rolling back to the first `keep % (n + 1)` entries restores the
    ///   state after them, and rolling everything back the empty ledger.
    pub fn finish(&self, now: i64, keep: usize) {
        self.replay_check();
        self.refusals_are_final(now);
        let n = self.w.log.len();
        let mut rolled = self.clone();
        rolled.rollback_to(keep % (n + 1));
        rolled.rollback_to(0);
    }

    fn replay_check(&self) {
        let mut fresh = Ledger::new(LEDGER_ID, signing_key(ROOT, 0).verifying_key());
        assert_eq!(snapshot(&fresh), self.checks.snapshots[0]);
        let mut keys = HashSet::new();
        for (i, entry) in self.w.log.iter().enumerate() {
            let ev = fresh
                .replay(entry)
                .unwrap_or_else(|e| panic!("written log does not replay: {e}"));
            assert_eq!(ev, self.w.events[i], "replay decoded a different event");
            assert!(
                keys.insert((entry.signed.signer_id.clone(), ev.event_id)),
                "(signer, event id) twice in the log"
            );
            // Inside a failed atomic batch's run, replay holds the batch's
            // tentative changes until the run ends: compare between runs.
            let run_continues = self.w.log.get(i + 1).is_some_and(|next| {
                next.refusal
                    .as_ref()
                    .is_some_and(|r| r.in_atomic_batch && !r.first_in_batch)
            });
            if !run_continues {
                let mut settled = fresh.clone();
                settled.finish_replay();
                assert_eq!(
                    snapshot(&settled),
                    self.checks.snapshots[i + 1],
                    "replay differs after entry {}",
                    i + 1
                );
            }
        }
        fresh.finish_replay();
        assert_eq!(snapshot(&fresh), snapshot(&self.w.ledger));
        for w in self.w.log.windows(2) {
            assert!(w[0].recorded_at_micros <= w[1].recorded_at_micros);
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
        assert_eq!(
            &PenceModel::fold(&self.w.log, &self.w.events),
            self.checks.model(),
            "the pence model folded afresh differs"
        );
    }

    fn refusals_are_final(&self, now: i64) {
        let mut later = self.clone();
        let state = snapshot(&later.w.ledger);
        for e in self.w.log.iter().filter(|e| e.refusal.is_some()) {
            let again = later.request(std::slice::from_ref(&e.signed), false, now);
            match &again[..] {
                [Outcome::Refused {
                    sequence,
                    duplicate: true,
                    reject,
                }] => {
                    assert_eq!(*sequence, e.sequence);
                    assert_eq!(
                        Some(reject.code.grpc_code() as u32),
                        e.refusal.as_ref().map(|r| r.code)
                    );
                }
                [Outcome::Rejected(r)] if later.w.ledger.decode(&e.signed, now).is_err() => {
                    assert_eq!(r.code, RejectCode::InvalidArgument)
                }
                o => panic!("refused entry {} sent again: {o:?}", e.sequence),
            }
        }
        assert_eq!(
            snapshot(&later.w.ledger),
            state,
            "a recorded refusal sent again changed the state"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cast::{self, event, sign, BUDGETS, HOUR, T0};
    use phb_proto::v1 as pb;

    fn pay(id: &str, amount: &str) -> SignedEvent {
        let kind = pb::event::Kind::Payment(cast::payment(
            amount,
            pb::PayeeKind::Provider as i32,
            "pa-001",
            "respite",
            "",
        ));
        // b-dp-1's funds holder is acct.
        sign(5, 0, &event(id, BUDGETS[0].id, T0, kind))
    }

    #[test]
    fn the_setup_is_written_and_checked() {
        let mut sim = Sim::new();
        let out = sim.setup(&cast::setup_events(0), T0 - HOUR);
        assert!(
            out.iter().all(|o| matches!(o, Outcome::Written(_))),
            "{out:?}"
        );
        assert_eq!(sim.checks.model().budgets.len(), BUDGETS.len() - 1);
        sim.finish(T0, 3);
    }

    #[test]
    fn an_atomic_batch_refused_by_the_rules_is_recorded_whole() {
        let mut sim = Sim::new();
        sim.setup(&cast::setup_events(0), T0 - HOUR);
        let head = sim.ledger().head().sequence;
        let out = sim.request(&[pay("p-1", "10.00"), pay("p-2", "5000.00")], true, T0);
        match &out[..] {
            [Outcome::Refused { reject: a, .. }, Outcome::Refused { reject: b, .. }] => {
                assert_eq!(a.code, RejectCode::Aborted, "{a}");
                assert_eq!(b.code, RejectCode::FailedPrecondition, "{b}");
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(sim.ledger().head().sequence, head + 2);
        // The small payment can never be written later.
        let again = sim.request(&[pay("p-1", "10.00")], false, T0);
        assert!(matches!(
            again[..],
            [Outcome::Refused {
                duplicate: true,
                ..
            }]
        ));
        sim.finish(T0, 0);
    }

    #[test]
    #[should_panic(expected = "differs from the pence model")]
    fn the_model_catches_a_figure_it_did_not_see() {
        let mut sim = Sim::new();
        sim.setup(&cast::setup_events(0), T0 - HOUR);
        sim.checks
            .models
            .last_mut()
            .unwrap()
            .budgets
            .get_mut("b-dp-1")
            .unwrap()
            .spent += 1;
        sim.request(&[pay("p-1", "10.00")], false, T0);
    }
}
