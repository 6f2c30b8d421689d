//! The ledger's state as a pure function of its log: organisations, budgets
//! and the chain head. `decide` says whether an event may be written and what
//! it changes; `apply` installs the change. Both writer and replay use the
//! same two functions, so the live service and a rebuild cannot disagree.

use crate::chain::{self, Hash, LogEntry, Refusal, SignedEvent, GENESIS_HASH};
use crate::error::{quote, Reject, RejectCode};
use crate::event::{
    decode_event, Date, DecodeContext, Event, EventKind, Management, PayeeKind, Role, ROOT_SIGNER,
};
use crate::money::Money;
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeMap;

/// A registered organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organisation {
    /// Its id.
    pub id: String,
    /// Its roles, sorted.
    pub roles: Vec<Role>,
    /// Its current signing key.
    pub key: VerifyingKey,
}

impl Organisation {
    /// True if the organisation holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A budget and its running figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Its id.
    pub id: String,
    /// Pseudonymous holder reference.
    pub holder_ref: String,
    /// The commissioner.
    pub commissioner_id: String,
    /// First day.
    pub period_start: Date,
    /// Last day.
    pub period_end: Date,
    /// How the money is held.
    pub management: Management,
    /// Who holds the funds.
    pub funds_holder_id: Option<String>,
    /// Payroll provider.
    pub payroll_provider_id: Option<String>,
    /// Allocations plus review deltas.
    pub allocated: Money,
    /// Disbursements.
    pub paid_in: Money,
    /// Payments plus purchases.
    pub spent: Money,
    /// Stopped?
    pub stopped: bool,
    /// Last sequence that changed this budget.
    pub last_sequence: u64,
}

impl Budget {
    /// paid_in - spent, or zero for notional budgets.
    pub fn held(&self) -> Money {
        match self.management {
            Management::Notional => Money::ZERO,
            _ => self.paid_in.checked_sub(self.spent).unwrap_or(Money::ZERO),
        }
    }

    /// allocated - spent.
    pub fn available(&self) -> Money {
        self.allocated
            .checked_sub(self.spent)
            .unwrap_or(Money::ZERO)
    }

    /// How much may be spent now: `held`, or `available` for notional budgets.
    fn spendable(&self) -> Money {
        match self.management {
            Management::Notional => self.available(),
            _ => self.held(),
        }
    }

    /// True if `org` is named on the budget in any capacity.
    pub fn names(&self, org: &str) -> bool {
        self.commissioner_id == org
            || self.funds_holder_id.as_deref() == Some(org)
            || self.payroll_provider_id.as_deref() == Some(org)
    }
}

/// What a permitted event changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or replace an organisation.
    Organisation(Organisation),
    /// Insert or replace a budget (its `last_sequence` is set by `apply`).
    Budget(Budget),
    /// Nothing but the head: the entry records a refusal.
    Refused,
}

/// Enough to undo one `apply`.
#[derive(Debug, Clone)]
pub struct Undo {
    change: UndoChange,
    head: Head,
}

#[derive(Debug, Clone)]
enum UndoChange {
    Organisation(String, Option<Organisation>),
    Budget(String, Option<Budget>),
    Nothing,
}

/// Where an event id already stands in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its sequence.
    pub sequence: u64,
    /// The digest (`SignedEvent::digest`) of the signed event stored there.
    pub digest: Hash,
    /// Its entry hash.
    pub entry_hash: Hash,
    /// `Some` if the entry there records a refusal (code, message).
    pub refusal: Option<Refusal>,
}

/// What `Ledger::admit` made of a submitted event.
#[derive(Debug)]
pub enum Admission {
    /// The same signed event is already stored: nothing changed. If the
    /// stored entry records a refusal, that refusal is the answer again.
    Duplicate(Stored),
    /// Accepted and applied to the state as the next entry; the caller
    /// writes `entry` (or rolls `undo` back if it cannot).
    Written(Box<Admitted>),
    /// Refused by the ledger's rules: `entry` records the refusal (it
    /// changes nothing but the head) and must be written before the refusal
    /// is answered, so that the same signed event can never be applied later.
    Refused(Box<Admitted>, Reject),
}

/// An event `Ledger::admit` accepted and applied.
#[derive(Debug)]
pub struct Admitted {
    /// The decoded event.
    pub event: Event,
    /// `SignedEvent::digest` of the submission.
    pub digest: Hash,
    /// The log entry to write.
    pub entry: LogEntry,
    /// What it changed (to apply to other copies of the state).
    pub change: Change,
    /// How to undo it on this state.
    pub undo: Undo,
}

/// What the checks before a decision found.
enum Identified {
    New(Event, Hash),
    Duplicate(Stored),
}

/// The tip of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The last sequence written (0 for an empty log).
    pub sequence: u64,
    /// The last entry's hash (`GENESIS_HASH` for an empty log).
    pub hash: Hash,
    /// The last entry's recorded_at (0 for an empty log).
    pub recorded_at_micros: i64,
}

impl Head {
    /// The head once `entry` is the last entry.
    pub fn of(entry: &LogEntry) -> Head {
        Head {
            sequence: entry.sequence,
            hash: entry.hash,
            recorded_at_micros: entry.recorded_at_micros,
        }
    }
}

/// Who is reading.
#[derive(Debug, Clone, Copy)]
pub enum Reader<'a> {
    /// The ledger's root key.
    Root,
    /// A registered organisation.
    Organisation(&'a Organisation),
}

/// Why replaying a stored entry failed: the log is not a valid ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The entry's sequence is not the next one.
    #[error("entry at sequence {found} where {expected} was expected")]
    Gap {
        /// What should have come next.
        expected: u64,
        /// What came.
        found: u64,
    },
    /// prev_hash does not match the previous entry's hash, or hash does not match the entry.
    #[error("hash chain broken at sequence {0}")]
    BrokenChain(u64),
    /// recorded_at went backwards.
    #[error("recorded_at goes backwards at sequence {0}")]
    ClockBackwards(u64),
    /// The event would not have been accepted.
    #[error("entry at sequence {sequence} is not a valid event: {reject}")]
    Invalid {
        /// Where.
        sequence: u64,
        /// Why.
        reject: Reject,
    },
    /// An entry records a refusal the ledger's rules do not give.
    #[error("entry at sequence {sequence} records a refusal with code {recorded}, but the rules {found}")]
    RefusalDisagrees {
        /// Where.
        sequence: u64,
        /// The recorded google.rpc.Code.
        recorded: u32,
        /// What replaying the rules gave instead.
        found: String,
    },
}

/// The whole ledger state.
#[derive(Debug, Clone)]
pub struct Ledger {
    ledger_id: String,
    root_key: VerifyingKey,
    orgs: BTreeMap<String, Organisation>,
    budgets: BTreeMap<String, Budget>,
    head: Head,
}

impl Ledger {
    /// An empty ledger with this id and root key.
    pub fn new(ledger_id: impl Into<String>, root_key: VerifyingKey) -> Ledger {
        Ledger {
            ledger_id: ledger_id.into(),
            root_key,
            orgs: BTreeMap::new(),
            budgets: BTreeMap::new(),
            head: Head {
                sequence: 0,
                hash: GENESIS_HASH,
                recorded_at_micros: 0,
            },
        }
    }

    /// The configured ledger id.
    pub fn ledger_id(&self) -> &str {
        &self.ledger_id
    }

    /// The chain head.
    pub fn head(&self) -> Head {
        self.head
    }

    /// A budget by id.
    pub fn budget(&self, id: &str) -> Option<&Budget> {
        self.budgets.get(id)
    }

    /// Budgets with id > `after`, in id order.
    pub fn budgets_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Budget> + 'a {
        use std::ops::Bound;
        self.budgets
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
            .map(|(_, b)| b)
    }

    /// All budgets in id order.
    pub fn budgets(&self) -> impl Iterator<Item = &Budget> {
        self.budgets.values()
    }

    /// An organisation by id.
    pub fn organisation(&self, id: &str) -> Option<&Organisation> {
        self.orgs.get(id)
    }

    /// The key `signer_id` signs with now.
    pub fn signer_key(&self, signer_id: &str) -> Option<&VerifyingKey> {
        if signer_id == ROOT_SIGNER {
            Some(&self.root_key)
        } else {
            self.orgs.get(signer_id).map(|o| &o.key)
        }
    }

    /// Decodes the event for this ledger at `now_micros`.
    pub fn decode(&self, signed: &SignedEvent, now_micros: i64) -> Result<Event, Reject> {
        decode_event(
            &signed.event,
            DecodeContext {
                ledger_id: &self.ledger_id,
                now_micros,
            },
        )
    }

    /// Verifies the signature under the signer's current key.
    pub fn authenticate(&self, signed: &SignedEvent) -> Result<(), Reject> {
        let key = self
            .signer_key(&signed.signer_id)
            .ok_or_else(|| Self::unknown_signer(&signed.signer_id))?;
        Self::verify_under(key, signed)
    }

    /// The refusal for a signer_id that is neither root nor registered.
    pub fn unknown_signer(signer_id: &str) -> Reject {
        Reject::unauthenticated(format!(
            "signer_id {} is not a registered organisation; ask the ledger operator to register it",
            quote(signer_id)
        ))
    }

    /// Verifies the signature of `signed` under `key` (the signer's key).
    pub fn verify_under(key: &VerifyingKey, signed: &SignedEvent) -> Result<(), Reject> {
        if signed.signature.len() != 64 {
            return Err(Reject::unauthenticated(format!(
                "signature must be 64 bytes of ed25519; got {}",
                signed.signature.len()
            )));
        }
        if !chain::verify_signature(key, &signed.event, &signed.signature) {
            return Err(Reject::unauthenticated(format!(
                "signature does not verify under the current key of {}; sign exactly the serialized event bytes with that key",
                quote(&signed.signer_id)
            )));
        }
        Ok(())
    }

    /// Who `org_id` is as a reader, if anyone.
    pub fn reader(&self, org_id: &str) -> Option<Reader<'_>> {
        if org_id == ROOT_SIGNER {
            Some(Reader::Root)
        } else {
            self.orgs.get(org_id).map(Reader::Organisation)
        }
    }

    /// Whether the reader may see `budget`: auditors and root everything,
    /// commissioners their budgets, providers the budgets that name them.
    pub fn may_read(reader: Reader<'_>, budget: &Budget) -> bool {
        match reader {
            Reader::Root => true,
            Reader::Organisation(o) => o.has(Role::Auditor) || budget.names(&o.id),
        }
    }

    /// Whether the reader may stream the whole log.
    pub fn may_read_log(reader: Reader<'_>) -> bool {
        match reader {
            Reader::Root => true,
            Reader::Organisation(o) => o.has(Role::Auditor),
        }
    }

    /// Decides whether `signer_id` may write `event` now, and what it changes.
    /// The signature must already be verified (`authenticate`).
    pub fn decide(&self, signer_id: &str, event: &Event) -> Result<Change, Reject> {
        if event.kind.is_organisation_event() {
            if signer_id != ROOT_SIGNER {
                return Err(Reject::denied(format!(
                    "{} must be signed by the ledger's root key (signer_id \"root\")",
                    event.kind.name()
                )));
            }
            return self.decide_organisation(&event.kind);
        }
        if signer_id == ROOT_SIGNER {
            return Err(Reject::denied(
                "the root key only registers organisations and rotates keys; budget events are signed by the organisation concerned",
            ));
        }
        let signer = self.orgs.get(signer_id).ok_or_else(|| {
            Reject::unauthenticated(format!("signer_id {} is not registered", quote(signer_id)))
        })?;
        if let EventKind::BudgetOpened { .. } = event.kind {
            return self.decide_open(signer, event);
        }
        let budget = self.budgets.get(&event.budget_id).ok_or_else(|| {
            Reject::not_found(format!(
                "budget {:?} does not exist; open it with BudgetOpened first",
                event.budget_id
            ))
        })?;
        self.authorise(signer, budget, &event.kind)?;
        if budget.stopped {
            return Err(Reject::precondition(format!(
                "budget {:?} is stopped; nothing more may be recorded against it",
                budget.id
            )));
        }
        let mut b = budget.clone();
        let overflow = || Reject::precondition("amount would overflow the budget's totals");
        match &event.kind {
            EventKind::Allocation { amount, .. } => {
                b.allocated = b.allocated.checked_add(*amount).ok_or_else(overflow)?;
            }
            EventKind::Disbursement { amount } => {
                if b.management == Management::Notional {
                    return Err(Reject::precondition(format!(
                        "budget {:?} is notional: the commissioner keeps the money, so nothing is disbursed",
                        b.id
                    )));
                }
                let undisbursed = b.allocated.checked_sub(b.paid_in).ok_or_else(overflow)?;
                if *amount > undisbursed {
                    return Err(Reject::precondition(format!(
                        "disbursing {amount} would exceed the allocation: allocated {}, already paid in {}, at most {undisbursed} more may be disbursed",
                        b.allocated, b.paid_in
                    )));
                }
                b.paid_in = b.paid_in.checked_add(*amount).ok_or_else(overflow)?;
            }
            EventKind::Payment { amount, .. } | EventKind::Purchase { amount, .. } => {
                let spendable = b.spendable();
                if *amount > spendable {
                    let what = match b.management {
                        Management::Notional => "available",
                        _ => "held",
                    };
                    return Err(Reject::precondition(format!(
                        "spending {amount} would overspend budget {:?}: only {spendable} is {what}",
                        b.id
                    )));
                }
                b.spent = b.spent.checked_add(*amount).ok_or_else(overflow)?;
            }
            EventKind::ReviewAdjustment { delta, .. } => {
                let allocated = b.allocated.checked_add(*delta).ok_or_else(overflow)?;
                let (floor, what) = match b.management {
                    Management::Notional => (b.spent, "spent"),
                    _ => (b.paid_in, "paid in"),
                };
                if allocated < floor {
                    return Err(Reject::precondition(format!(
                        "a delta of {delta} would take allocated to {allocated}, below the {floor} already {what}"
                    )));
                }
                b.allocated = allocated;
            }
            EventKind::BudgetStopped { .. } => b.stopped = true,
            EventKind::BudgetOpened { .. }
            | EventKind::OrganisationRegistered { .. }
            | EventKind::KeyRotated { .. } => {
                // Handled above; reaching here would be a bug in this function.
                return Err(Reject::precondition("internal: unexpected event kind"));
            }
        }
        Ok(Change::Budget(b))
    }

    fn decide_organisation(&self, kind: &EventKind) -> Result<Change, Reject> {
        match kind {
            EventKind::OrganisationRegistered {
                organisation_id,
                roles,
                public_key,
            } => {
                if self.orgs.contains_key(organisation_id) {
                    return Err(Reject::exists(format!(
                        "organisation {organisation_id:?} is already registered; rotate its key with KeyRotated instead"
                    )));
                }
                let key = chain::parse_public_key(public_key).ok_or_else(|| {
                    Reject::invalid(
                        "kind.organisation_registered.public_key",
                        "public_key is not a valid, strong ed25519 public key",
                    )
                })?;
                Ok(Change::Organisation(Organisation {
                    id: organisation_id.clone(),
                    roles: roles.clone(),
                    key,
                }))
            }
            EventKind::KeyRotated {
                organisation_id,
                new_public_key,
            } => {
                let org = self.orgs.get(organisation_id).ok_or_else(|| {
                    Reject::not_found(format!(
                        "organisation {organisation_id:?} is not registered"
                    ))
                })?;
                let key = chain::parse_public_key(new_public_key).ok_or_else(|| {
                    Reject::invalid(
                        "kind.key_rotated.new_public_key",
                        "new_public_key is not a valid, strong ed25519 public key",
                    )
                })?;
                if key == org.key {
                    return Err(Reject::precondition(
                        "new_public_key is the organisation's current key",
                    ));
                }
                let mut org = org.clone();
                org.key = key;
                Ok(Change::Organisation(org))
            }
            _ => Err(Reject::precondition("internal: not an organisation event")),
        }
    }

    fn decide_open(&self, signer: &Organisation, event: &Event) -> Result<Change, Reject> {
        let EventKind::BudgetOpened {
            holder_ref,
            commissioner_id,
            period_start,
            period_end,
            management,
            funds_holder_id,
            payroll_provider_id,
        } = &event.kind
        else {
            return Err(Reject::precondition("internal: not BudgetOpened"));
        };
        if !signer.has(Role::Commissioner) || *commissioner_id != signer.id {
            return Err(Reject::denied(format!(
                "{:?} may not open a budget for commissioner {commissioner_id:?}: budgets are opened by their own commissioner",
                signer.id
            )));
        }
        if self.budgets.contains_key(&event.budget_id) {
            return Err(Reject::exists(format!(
                "budget {:?} already exists; choose a new budget_id",
                event.budget_id
            )));
        }
        let must_have = |id: &Option<String>, role: Role, field: &str| -> Result<(), Reject> {
            let Some(id) = id else { return Ok(()) };
            match self.orgs.get(id) {
                Some(o) if o.has(role) => Ok(()),
                Some(_) => Err(Reject::precondition(format!(
                    "{field} {id:?} does not hold the role {role:?}"
                ))),
                None => Err(Reject::precondition(format!(
                    "{field} {id:?} is not a registered organisation; register it first"
                ))),
            }
        };
        let holder_role = match management {
            Management::ThirdParty => Role::ThirdParty,
            _ => Role::AccountProvider,
        };
        must_have(funds_holder_id, holder_role, "funds_holder_id")?;
        must_have(
            payroll_provider_id,
            Role::PayrollProvider,
            "payroll_provider_id",
        )?;
        Ok(Change::Budget(Budget {
            id: event.budget_id.clone(),
            holder_ref: holder_ref.clone(),
            commissioner_id: commissioner_id.clone(),
            period_start: *period_start,
            period_end: *period_end,
            management: *management,
            funds_holder_id: funds_holder_id.clone(),
            payroll_provider_id: payroll_provider_id.clone(),
            allocated: Money::ZERO,
            paid_in: Money::ZERO,
            spent: Money::ZERO,
            stopped: false,
            last_sequence: 0,
        }))
    }

    /// Who may do what on an existing budget.
    fn authorise(
        &self,
        signer: &Organisation,
        budget: &Budget,
        kind: &EventKind,
    ) -> Result<(), Reject> {
        let is_commissioner = signer.has(Role::Commissioner) && budget.commissioner_id == signer.id;
        let is_funds_holder = budget.funds_holder_id.as_deref() == Some(signer.id.as_str())
            && (signer.has(Role::ThirdParty) || signer.has(Role::AccountProvider));
        let is_payroll = budget.payroll_provider_id.as_deref() == Some(signer.id.as_str())
            && signer.has(Role::PayrollProvider);
        let notional = budget.management == Management::Notional;
        let allowed = match kind {
            EventKind::Allocation { .. }
            | EventKind::Disbursement { .. }
            | EventKind::ReviewAdjustment { .. }
            | EventKind::BudgetStopped { .. } => is_commissioner,
            EventKind::Payment { payee_kind, .. } => {
                (notional && is_commissioner)
                    || (!notional && is_funds_holder)
                    || (!notional && is_payroll && *payee_kind == PayeeKind::PersonalAssistant)
            }
            EventKind::Purchase { .. } => {
                (notional && is_commissioner) || (!notional && is_funds_holder)
            }
            _ => false,
        };
        if allowed {
            return Ok(());
        }
        let why = match kind {
            EventKind::Payment { .. } | EventKind::Purchase { .. } if notional => {
                "on a notional budget only its commissioner pays and buys".to_string()
            }
            EventKind::Payment { payee_kind: PayeeKind::Provider, .. } if is_payroll => {
                "a payroll provider pays personal assistants only (payee_kind PAYEE_KIND_PERSONAL_ASSISTANT)".to_string()
            }
            EventKind::Payment { .. } | EventKind::Purchase { .. } => {
                "spending is recorded by the budget's funds holder, or its payroll provider for personal assistants' wages".to_string()
            }
            _ => format!(
                "only the budget's commissioner ({:?}) records {}",
                budget.commissioner_id,
                kind.name()
            ),
        };
        Err(Reject::denied(format!(
            "{:?} may not record {} on budget {:?}: {why}",
            signer.id,
            kind.name(),
            budget.id
        )))
    }

    /// Installs a decided change as entry `head`; returns how to undo it.
    pub fn apply(&mut self, change: Change, head: Head) -> Undo {
        assert_eq!(
            head.sequence,
            self.head.sequence + 1,
            "entries must be applied in sequence order"
        );
        assert!(head.recorded_at_micros >= self.head.recorded_at_micros);
        let prev_head = self.head;
        self.head = head;
        let change = match change {
            Change::Organisation(o) => {
                let id = o.id.clone();
                let prev = self.orgs.insert(id.clone(), o);
                UndoChange::Organisation(id, prev)
            }
            Change::Budget(mut b) => {
                b.last_sequence = head.sequence;
                debug_assert!(!b.available().is_negative() && !b.held().is_negative());
                let id = b.id.clone();
                let prev = self.budgets.insert(id.clone(), b);
                UndoChange::Budget(id, prev)
            }
            Change::Refused => UndoChange::Nothing,
        };
        Undo {
            change,
            head: prev_head,
        }
    }

    /// Reverts `apply`s, newest first.
    pub fn rollback(
        &mut self,
        undo: impl IntoIterator<Item = Undo, IntoIter: DoubleEndedIterator>,
    ) {
        for u in undo.into_iter().rev() {
            self.head = u.head;
            match u.change {
                UndoChange::Organisation(id, Some(o)) => {
                    self.orgs.insert(id, o);
                }
                UndoChange::Organisation(id, None) => {
                    self.orgs.remove(&id);
                }
                UndoChange::Budget(id, Some(b)) => {
                    self.budgets.insert(id, b);
                }
                UndoChange::Budget(id, None) => {
                    self.budgets.remove(&id);
                }
                UndoChange::Nothing => {}
            }
        }
    }

    /// The writer's whole decision on one submitted event, and its
    /// application to this state, in the one order every writer follows:
    /// decode → a byte-identical resubmission is a duplicate → authenticate
    /// → a reused (signer, event id) is ALREADY_EXISTS → decide → apply as
    /// the next entry, recorded at `now_micros` (never before the head's
    /// time). A refusal by the rules (`RejectCode::is_decision`) is also an
    /// entry: `Admission::Refused`.
    ///
    /// `stored(signer_id, event_id)` says where an idempotency key already
    /// stands (the caller's index: the log, plus whatever it has admitted
    /// but not yet written). Keys are scoped to the signer, so one
    /// organisation can neither take nor probe another's event ids.
    /// `verified_key` is the key the caller already checked the signature
    /// under, if any; the signature is checked again unless that is still
    /// the signer's key. Authentication comes before ALREADY_EXISTS so an
    /// unauthenticated caller cannot probe which event ids exist.
    pub fn admit(
        &mut self,
        signed: &SignedEvent,
        now_micros: i64,
        verified_key: Option<&VerifyingKey>,
        stored: impl FnOnce(&str, &str) -> Result<Option<Stored>, Reject>,
    ) -> Result<Admission, Reject> {
        let (event, digest) = match self.identify(signed, now_micros, verified_key, stored)? {
            Identified::New(event, digest) => (event, digest),
            Identified::Duplicate(s) => return Ok(Admission::Duplicate(s)),
        };
        match self.decide(&signed.signer_id, &event) {
            Ok(change) => Ok(Admission::Written(Box::new(
                self.append(event, digest, signed, now_micros, change, None),
            ))),
            Err(reject) if reject.code.is_decision() => {
                let refusal = Refusal::new(reject.code.grpc_code() as u32, false, &reject.message);
                let a = self.append(
                    event,
                    digest,
                    signed,
                    now_micros,
                    Change::Refused,
                    Some(refusal),
                );
                Ok(Admission::Refused(Box::new(a), reject))
            }
            Err(reject) => Err(reject),
        }
    }

    /// Records `reject` for an event of an atomic batch that failed by a
    /// decision of the rules (the failing event itself, or another event of
    /// the batch refused ABORTED with it), so that no event of the batch can
    /// be applied later on its own: `Admission::Refused`. A resubmission of
    /// a stored event is `Admission::Duplicate` (the caller answers it);
    /// only a well-formed, authenticated event whose key is unused can be
    /// recorded, otherwise this returns why not and the caller answers
    /// `reject` unrecorded.
    pub fn admit_refused(
        &mut self,
        signed: &SignedEvent,
        now_micros: i64,
        verified_key: Option<&VerifyingKey>,
        stored: impl FnOnce(&str, &str) -> Result<Option<Stored>, Reject>,
        reject: &Reject,
    ) -> Result<Admission, Reject> {
        debug_assert!(reject.code.is_decision() || reject.code == RejectCode::Aborted);
        let (event, digest) = match self.identify(signed, now_micros, verified_key, stored)? {
            Identified::New(event, digest) => (event, digest),
            Identified::Duplicate(s) => return Ok(Admission::Duplicate(s)),
        };
        let refusal = Refusal::new(reject.code.grpc_code() as u32, true, &reject.message);
        let a = self.append(
            event,
            digest,
            signed,
            now_micros,
            Change::Refused,
            Some(refusal),
        );
        Ok(Admission::Refused(Box::new(a), reject.clone()))
    }

    /// The checks before any decision: decode, duplicate, authenticate,
    /// idempotency key unused.
    fn identify(
        &self,
        signed: &SignedEvent,
        now_micros: i64,
        verified_key: Option<&VerifyingKey>,
        stored: impl FnOnce(&str, &str) -> Result<Option<Stored>, Reject>,
    ) -> Result<Identified, Reject> {
        let event = self.decode(signed, now_micros)?;
        let digest = signed.digest();
        let existing = stored(&signed.signer_id, &event.event_id)?;
        // A byte-identical resubmission of a stored event is a duplicate even
        // if the signer's key has since rotated: it was verified when stored.
        let existing = match existing {
            Some(s) if s.digest == digest => return Ok(Identified::Duplicate(s)),
            other => other,
        };
        let current = self.signer_key(&signed.signer_id);
        if current.is_none() || current != verified_key {
            self.authenticate(signed)?;
        }
        if let Some(s) = existing {
            // The key is the signer's own (authenticated above), so naming
            // the sequence tells the signer only about its own events.
            return Err(Reject::exists(format!(
                "event_id {:?} was already used by {:?} at sequence {} for a different event; use a new event_id for a new event",
                event.event_id, signed.signer_id, s.sequence
            )));
        }
        Ok(Identified::New(event, digest))
    }

    /// Applies `change` as the next entry, recorded at `now_micros` (never
    /// before the head's time).
    fn append(
        &mut self,
        event: Event,
        digest: Hash,
        signed: &SignedEvent,
        now_micros: i64,
        change: Change,
        refusal: Option<Refusal>,
    ) -> Admitted {
        debug_assert_eq!(refusal.is_some(), change == Change::Refused);
        let head = self.head;
        let entry = LogEntry::sealed(
            head.hash,
            head.sequence + 1,
            now_micros.max(head.recorded_at_micros),
            signed.clone(),
            refusal,
        );
        let undo = self.apply(change.clone(), Head::of(&entry));
        Admitted {
            event,
            digest,
            entry,
            change,
            undo,
        }
    }

    /// Replays one stored entry: checks its place in the chain, its hash, its
    /// signature and every rule, exactly as the writer did, then applies it.
    pub fn replay(&mut self, entry: &LogEntry) -> Result<Event, ReplayError> {
        let expected = self.head.sequence + 1;
        if entry.sequence != expected {
            return Err(ReplayError::Gap {
                expected,
                found: entry.sequence,
            });
        }
        if entry.prev_hash != self.head.hash || !entry.hash_is_valid() {
            return Err(ReplayError::BrokenChain(entry.sequence));
        }
        if entry.recorded_at_micros < self.head.recorded_at_micros {
            return Err(ReplayError::ClockBackwards(entry.sequence));
        }
        let invalid = |reject| ReplayError::Invalid {
            sequence: entry.sequence,
            reject,
        };
        let event = self
            .decode(&entry.signed, entry.recorded_at_micros)
            .map_err(invalid)?;
        self.authenticate(&entry.signed).map_err(invalid)?;
        let decided = self.decide(&entry.signed.signer_id, &event);
        let change = match (&entry.refusal, decided) {
            (None, decided) => decided.map_err(invalid)?,
            (Some(r), decided) => {
                self.check_refusal(entry.sequence, r, decided.err())?;
                Change::Refused
            }
        };
        self.apply(change, Head::of(entry));
        Ok(event)
    }

    /// A recorded refusal must be one the writer makes: a decision of the
    /// rules that replaying them gives again, or, inside a failed atomic
    /// batch (whose other events the log does not apply), any decision or
    /// ABORTED.
    fn check_refusal(
        &self,
        sequence: u64,
        r: &Refusal,
        decided: Option<Reject>,
    ) -> Result<(), ReplayError> {
        let disagrees = |found: String| ReplayError::RefusalDisagrees {
            sequence,
            recorded: r.code,
            found,
        };
        let code = RejectCode::from_grpc(r.code)
            .filter(|c| c.is_decision() || (r.in_atomic_batch && *c == RejectCode::Aborted))
            .ok_or_else(|| disagrees("never record that code".into()))?;
        if r.in_atomic_batch {
            return Ok(());
        }
        match decided {
            None => Err(disagrees("accept the event".into())),
            Some(d) if d.code != code => Err(disagrees(format!(
                "give code {}: {}",
                d.code.grpc_code(),
                d.message
            ))),
            Some(_) => Ok(()),
        }
    }
}
