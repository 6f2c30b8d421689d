//! Domain events, and the one place wire bytes become them.
//!
//! `decode_event` takes the exact bytes a client signed and returns a fully
//! validated `Event` or a `Reject` naming the field to fix. Everything after
//! it (authorisation, budget rules, projection) works on these types only.

use crate::controls::Controls;
use crate::error::{quote, Reject};
use crate::money::{self, Money};
use crate::text;
use phb_proto::v1 as pb;
use prost::Message;

/// The largest serialized `Event` accepted (64 KiB).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Longest event, budget and organisation id, in bytes (ids are ASCII, so
/// also in characters).
pub const MAX_ID_LEN: usize = 128;
/// Longest pseudonymous reference (holder, payee, supplier) and category, in
/// bytes (ASCII, so also in characters).
pub const MAX_REF_LEN: usize = 64;
/// Longest free-text field (reason, description), in characters (Unicode
/// scalar values), not bytes: up to 1 KiB of UTF-8.
pub const MAX_TEXT_LEN: usize = 256;
/// The longest flag id: a code, a budget id and a key.
pub const MAX_FLAG_ID_LEN: usize = 200;
/// The longest review note.
pub const MAX_NOTE_LEN: usize = 1024;
/// Longest free-text reference (payment reference, receipt reference), in
/// characters. Free text, unlike ids: a partner's own numbering may use any
/// script, so it is checked as text (`text::check`), not as an id.
pub const MAX_REFERENCE_TEXT_LEN: usize = 128;
/// Earliest `occurred_at` accepted: 2000-01-01T00:00:00Z, in microseconds.
pub const MIN_OCCURRED_AT_MICROS: i64 = 946_684_800 * 1_000_000;
/// How far into the future `occurred_at` may be (24 hours), in microseconds.
pub const MAX_FUTURE_MICROS: i64 = 24 * 3600 * 1_000_000;
/// The reserved signer id of the ledger's root key.
pub const ROOT_SIGNER: &str = "root";

/// What an organisation may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Opens, funds, reviews and stops its own budgets.
    Commissioner,
    /// Pays personal assistants on budgets that name it.
    PayrollProvider,
    /// Holds and spends funds on budgets that name it.
    ThirdParty,
    /// Holds a direct-payment account on budgets that name it.
    AccountProvider,
    /// Reads everything.
    Auditor,
    /// May approve the care plans of budgets that name it.
    PlanFacilitator,
}

/// How a budget's money is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Management {
    /// Held in the holder's own account.
    DirectPayment,
    /// Held by a third-party organisation.
    ThirdParty,
    /// Kept by the commissioner.
    Notional,
}

/// Why an allocation was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllocationBasis {
    /// From a care cluster's cost.
    ClusterCost,
    /// From an assessment of need.
    NeedsBased,
    /// From the cost of existing services.
    ExistingServices,
    /// A one-off sum.
    OneOff,
}

/// Who a payment goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayeeKind {
    /// A personal assistant (wages).
    PersonalAssistant,
    /// A provider (invoice).
    Provider,
    /// HMRC (PAYE and National Insurance).
    TaxAuthority,
    /// A pension scheme.
    PensionScheme,
}

/// What kind of organisation (or person) a payee or supplier is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sector {
    /// An NHS body.
    Nhs,
    /// A local authority.
    LocalAuthority,
    /// An independent provider.
    Independent,
    /// A voluntary or community organisation.
    Voluntary,
    /// An individual.
    Individual,
}

/// The unit of an agreement's rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Per hour.
    Hour,
    /// Per day.
    Day,
    /// Per week.
    Week,
    /// Per item.
    Item,
}

/// A service agreement as approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgreementSpec {
    /// Its id, unique on the budget.
    pub agreement_id: String,
    /// The payee.
    pub payee_ref: String,
    /// Personal assistant or provider.
    pub payee_kind: PayeeKind,
    /// What kind of payee.
    pub payee_sector: Sector,
    /// The category paid under it.
    pub category: String,
    /// The rate's unit.
    pub unit: Unit,
    /// Pounds per unit.
    pub rate: Money,
    /// Most units a week (0: no limit).
    pub max_units_per_week: u32,
    /// First day in force.
    pub valid_from: Date,
    /// Last day in force.
    pub valid_to: Date,
    /// A connected person (SI 2017/219).
    pub connected_person: bool,
}

/// What a payment under an agreement claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceClaim {
    /// The agreement.
    pub agreement_id: String,
    /// Units paid for.
    pub units: Money,
    /// First day of the service.
    pub from: Date,
    /// Last day of the service.
    pub to: Date,
}

/// A calendar date, validated, kept as (year, month, day) so it orders correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Year (2000-2199).
    pub year: u16,
    /// Month 1-12.
    pub month: u8,
    /// Day 1-31, valid for the month.
    pub day: u8,
}

impl Date {
    /// The UTC calendar date of a time in microseconds since the Unix epoch
    /// (Howard Hinnant's civil_from_days). Times before 2000 or after 2199
    /// are outside what the ledger records; they clamp to those years.
    pub fn from_unix_micros(micros: i64) -> Date {
        let days = micros.div_euclid(86_400_000_000);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date {
            year: year.clamp(2000, 2199) as u16,
            month,
            day,
        }
    }
}

impl Date {
    /// Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    pub fn days(&self) -> i64 {
        let (y, m, d) = (
            i64::from(self.year) - i64::from(self.month <= 2),
            i64::from(self.month),
            i64::from(self.day),
        );
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }
}

impl Date {
    /// The date `days` after 1970-01-01 (clamped like `from_unix_micros`).
    pub fn from_days(days: i64) -> Date {
        Date::from_unix_micros(days.saturating_mul(86_400_000_000))
    }

    /// The Monday of this date's ISO week, as days since 1970-01-01 (a
    /// Thursday).
    pub fn week_start_days(&self) -> i64 {
        let d = self.days();
        d - (d + 3).rem_euclid(7)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A new organisation and its key.
    OrganisationRegistered {
        /// The organisation's id.
        organisation_id: String,
        /// Its roles (sorted, no duplicates).
        roles: Vec<Role>,
        /// Its ed25519 public key.
        public_key: [u8; 32],
    },
    /// A new key for an organisation.
    KeyRotated {
        /// The organisation.
        organisation_id: String,
        /// The new ed25519 public key.
        new_public_key: [u8; 32],
    },
    /// A new budget.
    BudgetOpened {
        /// Pseudonymous holder reference.
        holder_ref: String,
        /// The commissioner.
        commissioner_id: String,
        /// First day.
        period_start: Date,
        /// Last day.
        period_end: Date,
        /// How the money is held.
        management: Management,
        /// Who holds the funds, if anyone.
        funds_holder_id: Option<String>,
        /// The payroll provider, if any.
        payroll_provider_id: Option<String>,
        /// The plan facilitator, if any.
        plan_facilitator_id: Option<String>,
        /// Why the person has a budget, for reports.
        cohort: Cohort,
        /// Adult or child, for reports.
        age_band: AgeBand,
    },
    /// Entitlement up.
    Allocation {
        /// Positive amount.
        amount: Money,
        /// Why.
        basis: AllocationBasis,
    },
    /// Money paid to where the budget is held.
    Disbursement {
        /// Positive amount.
        amount: Money,
    },
    /// Money paid out: wages or invoices.
    Payment {
        /// Positive amount.
        amount: Money,
        /// Who is paid.
        payee_kind: PayeeKind,
        /// Pseudonymous payee.
        payee_ref: String,
        /// Spending category.
        category: String,
        /// Payer's reference.
        reference: String,
        /// The agreement and service period, if made under one.
        service: Option<ServiceClaim>,
    },
    /// Goods or services bought.
    Purchase {
        /// Positive amount.
        amount: Money,
        /// Spending category.
        category: String,
        /// Pseudonymous supplier.
        supplier_ref: String,
        /// What was bought.
        description: String,
        /// Receipt reference.
        receipt_ref: String,
        /// What kind of supplier, if given.
        supplier_sector: Option<Sector>,
    },
    /// Entitlement up or down after a review.
    ReviewAdjustment {
        /// Non-zero signed amount.
        delta: Money,
        /// Why.
        reason: String,
    },
    /// The budget is stopped.
    BudgetStopped {
        /// Why.
        reason: String,
    },
    /// A care plan approved (supersedes the budget's earlier one).
    CarePlanApproved(PlanSpec),
    /// The organisation that may approve the budget's plans.
    FacilitatorAppointed {
        /// A PLAN_FACILITATOR organisation.
        organisation_id: String,
    },
    /// The budget is suspended until resumed.
    BudgetSuspended {
        /// Why.
        reason: String,
    },
    /// A suspension ends.
    BudgetResumed,
    /// The holder died on `date`.
    HolderDied {
        /// The date of death.
        date: Date,
    },
    /// Money returned to the commissioner.
    Reclaim {
        /// Positive amount.
        amount: Money,
        /// Why (reg. 15).
        ground: ReclaimGround,
    },
    /// Money given back for an earlier spending.
    Refund {
        /// The original Payment or Purchase.
        original_sequence: u64,
        /// Positive amount.
        amount: Money,
    },
    /// A service agreement approved.
    ServiceAgreementApproved(AgreementSpec),
    /// A prepaid-card payment at authorisation time.
    CardTransaction {
        /// Pseudonymous card.
        card_ref: String,
        /// Pseudonymous merchant.
        merchant_ref: String,
        /// ISO 18245 merchant category code.
        mcc: u32,
        /// Positive amount.
        amount: Money,
        /// How the card was used.
        channel: CardChannel,
    },
    /// Admitted to hospital.
    HospitalAdmission {
        /// The date.
        date: Date,
    },
    /// Left hospital.
    HospitalDischarge {
        /// The date.
        date: Date,
    },
    /// A review took place.
    ReviewRecorded {
        /// The date.
        date: Date,
        /// What kind.
        kind: ReviewKind,
        /// The outcome.
        outcome: String,
    },
    /// A data match from outside the ledger.
    ExternalMatchRecorded {
        /// Who made it.
        source: String,
        /// What was matched.
        kind: MatchKind,
        /// The source's reference.
        reference: String,
    },
    /// A commissioner's flag thresholds, from this entry on.
    ControlsConfigured(Controls),
    /// A commissioner's review of a flag.
    FlagReviewed {
        /// The flag's id.
        flag_id: String,
        /// What the review found.
        outcome: FlagOutcome,
        /// The note.
        note: String,
    },
}

/// Why a person has a budget (the national collection's groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cohort {
    /// Not recorded.
    NotRecorded,
    /// NHS Continuing Healthcare.
    ContinuingHealthcare,
    /// Fast-track CHC.
    FastTrackChc,
    /// Personal wheelchair budget.
    Wheelchair,
    /// Section 117 aftercare.
    MentalHealthS117,
    /// Learning disability, autism or both.
    LearningDisabilityAutism,
    /// End of life.
    EndOfLife,
    /// Maternity.
    Maternity,
    /// Children with an EHC plan.
    ChildrenEhc,
    /// Anyone else.
    Other,
}

/// Adult or child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgeBand {
    /// Not recorded.
    NotRecorded,
    /// 18 or over.
    Adult,
    /// Under 18.
    Child,
}

/// What an external data match found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchKind {
    /// The holder appears in a record of deaths.
    Deceased,
    /// A payee appears on another payroll.
    Payroll,
    /// Anything else.
    Other,
}

/// What a flag review found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlagOutcome {
    /// The concern is real.
    Confirmed,
    /// Explained.
    Dismissed,
}

/// The flag codes, as `Flag.flag_id` spells them (the proto names without
/// `FLAG_CODE_`).
pub const FLAG_CODES: [&str; 10] = [
    "SURPLUS",
    "DUPLICATE_PAYMENT",
    "AFTER_DEATH",
    "DURING_ADMISSION",
    "OVERBOOKED_WORKER",
    "SPIKE",
    "CASH_WITHOUT_RECEIPT",
    "REVIEW_OVERDUE",
    "REPEATED_REFUSALS",
    "EXTERNAL_MATCH",
];

/// Splits a flag id `{CODE}:{budget_id}:{key}` into its parts, if it has
/// that shape with a known code and a non-empty key of `[A-Za-z0-9._-]`.
pub fn split_flag_id(id: &str) -> Option<(&str, &str, &str)> {
    let (code, rest) = id.split_once(':')?;
    let (budget, key) = rest.rsplit_once(':')?;
    let key_ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    (FLAG_CODES.contains(&code) && !budget.is_empty() && key_ok).then_some((code, budget, key))
}

/// How a card was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardChannel {
    /// At a point of sale.
    Pos,
    /// Online or by phone.
    Online,
    /// A cash withdrawal.
    Atm,
    /// A direct debit.
    DirectDebit,
}

/// What kind of review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReviewKind {
    /// A care-plan review.
    CareReview,
    /// A financial audit.
    FinancialAudit,
}

/// Why money is reclaimed (NHS (Direct Payments) Regulations 2013, reg. 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReclaimGround {
    /// More has built up than the plan needs.
    Surplus,
    /// Not used as agreed.
    NotUsedAsAgreed,
    /// Circumstances changed.
    ChangeOfCircumstances,
    /// Theft or fraud.
    Fraud,
    /// The holder died.
    Death,
}

/// A care plan as approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSpec {
    /// The plan's id.
    pub plan_id: String,
    /// Its lines (1 to `MAX_PLAN_LINES`, ids unique).
    pub lines: Vec<PlanLineSpec>,
    /// The contingency fund (zero or more).
    pub contingency: Money,
    /// First day in force.
    pub valid_from: Date,
    /// Last day in force.
    pub valid_to: Date,
    /// Review due.
    pub review_due: Date,
}

impl PlanSpec {
    /// Lines plus contingency; `None` on overflow (which the rules refuse).
    pub fn total(&self) -> Option<Money> {
        self.lines
            .iter()
            .try_fold(self.contingency, |t, l| t.checked_add(l.annual))
    }
}

/// One line of a care plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanLineSpec {
    /// Unique within the plan.
    pub line_id: String,
    /// A category code (`crate::categories`).
    pub category: String,
    /// Its annual amount (positive).
    pub annual: Money,
    /// What it pays for.
    pub description: String,
}

/// The most lines a care plan may have.
pub const MAX_PLAN_LINES: usize = 100;

impl EventKind {
    /// True for events that are about organisations rather than a budget.
    /// (`ControlsConfigured` is about its commissioner): they name no budget.
    pub fn is_organisation_event(&self) -> bool {
        matches!(
            self,
            EventKind::OrganisationRegistered { .. }
                | EventKind::KeyRotated { .. }
                | EventKind::ControlsConfigured(_)
        )
    }

    /// The proto's `Event.kind` field name of this kind (`KIND_FIELDS`).
    pub fn field_name(&self) -> &'static str {
        match self {
            EventKind::OrganisationRegistered { .. } => "organisation_registered",
            EventKind::KeyRotated { .. } => "key_rotated",
            EventKind::BudgetOpened { .. } => "budget_opened",
            EventKind::Allocation { .. } => "allocation",
            EventKind::Disbursement { .. } => "disbursement",
            EventKind::Payment { .. } => "payment",
            EventKind::Purchase { .. } => "purchase",
            EventKind::ReviewAdjustment { .. } => "review_adjustment",
            EventKind::BudgetStopped { .. } => "budget_stopped",
            EventKind::CarePlanApproved(_) => "care_plan_approved",
            EventKind::FacilitatorAppointed { .. } => "facilitator_appointed",
            EventKind::BudgetSuspended { .. } => "budget_suspended",
            EventKind::BudgetResumed => "budget_resumed",
            EventKind::HolderDied { .. } => "holder_died",
            EventKind::Reclaim { .. } => "reclaim",
            EventKind::Refund { .. } => "refund",
            EventKind::ServiceAgreementApproved(_) => "service_agreement_approved",
            EventKind::CardTransaction { .. } => "card_transaction",
            EventKind::HospitalAdmission { .. } => "hospital_admission",
            EventKind::HospitalDischarge { .. } => "hospital_discharge",
            EventKind::ReviewRecorded { .. } => "review_recorded",
            EventKind::ExternalMatchRecorded { .. } => "external_match_recorded",
            EventKind::ControlsConfigured(_) => "controls_configured",
            EventKind::FlagReviewed { .. } => "flag_reviewed",
        }
    }

    /// A short name for logs and messages.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::OrganisationRegistered { .. } => "OrganisationRegistered",
            EventKind::KeyRotated { .. } => "KeyRotated",
            EventKind::BudgetOpened { .. } => "BudgetOpened",
            EventKind::Allocation { .. } => "Allocation",
            EventKind::Disbursement { .. } => "Disbursement",
            EventKind::Payment { .. } => "Payment",
            EventKind::Purchase { .. } => "Purchase",
            EventKind::ReviewAdjustment { .. } => "ReviewAdjustment",
            EventKind::BudgetStopped { .. } => "BudgetStopped",
            EventKind::CarePlanApproved(_) => "CarePlanApproved",
            EventKind::FacilitatorAppointed { .. } => "FacilitatorAppointed",
            EventKind::BudgetSuspended { .. } => "BudgetSuspended",
            EventKind::BudgetResumed => "BudgetResumed",
            EventKind::HolderDied { .. } => "HolderDied",
            EventKind::Reclaim { .. } => "Reclaim",
            EventKind::Refund { .. } => "Refund",
            EventKind::ServiceAgreementApproved(_) => "ServiceAgreementApproved",
            EventKind::CardTransaction { .. } => "CardTransaction",
            EventKind::HospitalAdmission { .. } => "HospitalAdmission",
            EventKind::HospitalDischarge { .. } => "HospitalDischarge",
            EventKind::ReviewRecorded { .. } => "ReviewRecorded",
            EventKind::ExternalMatchRecorded { .. } => "ExternalMatchRecorded",
            EventKind::ControlsConfigured(_) => "ControlsConfigured",
            EventKind::FlagReviewed { .. } => "FlagReviewed",
        }
    }
}

/// The proto's `Event.kind` field names (`EventKind::field_name`), in the
/// proto's field order: the JSON form of events uses them as kind names, and
/// a statement snapshot writes a row's kind as its index here, so new kinds
/// go at the end (anything else needs a new snapshot version).
pub const KIND_FIELDS: [&str; 24] = [
    "organisation_registered",
    "key_rotated",
    "budget_opened",
    "allocation",
    "disbursement",
    "payment",
    "purchase",
    "review_adjustment",
    "budget_stopped",
    "care_plan_approved",
    "facilitator_appointed",
    "budget_suspended",
    "budget_resumed",
    "holder_died",
    "reclaim",
    "refund",
    "service_agreement_approved",
    "card_transaction",
    "hospital_admission",
    "hospital_discharge",
    "review_recorded",
    "external_match_recorded",
    "controls_configured",
    "flag_reviewed",
];

/// An event by what it is about: the write model dispatches on this, so
/// each part (registry, budgets) sees only the kinds it owns and needs no
/// "unexpected kind" branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// About an organisation: signed by root only.
    Organisation(OrganisationChange<'a>),
    /// Opens a new budget.
    Opening(BudgetOpening<'a>),
    /// About an existing budget.
    Budget(BudgetChange<'a>),
    /// A commissioner's flag thresholds: signed by a commissioner.
    Controls(&'a Controls),
}

/// An organisation event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrganisationChange<'a> {
    /// A new organisation and its key.
    Registered {
        /// The organisation's id.
        organisation_id: &'a str,
        /// Its roles.
        roles: &'a [Role],
        /// Its public key.
        public_key: &'a [u8; 32],
    },
    /// A new key for an organisation.
    KeyRotated {
        /// The organisation.
        organisation_id: &'a str,
        /// The new public key.
        new_public_key: &'a [u8; 32],
    },
}

/// A budget being opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetOpening<'a> {
    /// Pseudonymous holder reference.
    pub holder_ref: &'a str,
    /// The commissioner.
    pub commissioner_id: &'a str,
    /// First day.
    pub period_start: Date,
    /// Last day.
    pub period_end: Date,
    /// How the money is held.
    pub management: Management,
    /// Who holds the funds, if anyone.
    pub funds_holder_id: Option<&'a str>,
    /// The payroll provider, if any.
    pub payroll_provider_id: Option<&'a str>,
    /// The plan facilitator, if any.
    pub plan_facilitator_id: Option<&'a str>,
}

/// An event on an existing budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetChange<'a> {
    /// Entitlement up.
    Allocation {
        /// Positive amount.
        amount: Money,
    },
    /// Money paid to where the budget is held.
    Disbursement {
        /// Positive amount.
        amount: Money,
    },
    /// Money paid out.
    Payment {
        /// Positive amount.
        amount: Money,
        /// Who is paid.
        payee_kind: PayeeKind,
        /// The payee.
        payee_ref: &'a str,
        /// The spending category (a code of `crate::categories`).
        category: &'a str,
        /// The agreement claim, if any.
        service: Option<&'a ServiceClaim>,
    },
    /// Goods or services bought.
    Purchase {
        /// Positive amount.
        amount: Money,
        /// The spending category (a code of `crate::categories`).
        category: &'a str,
    },
    /// Entitlement up or down after a review.
    ReviewAdjustment {
        /// Non-zero signed amount.
        delta: Money,
    },
    /// The budget is stopped.
    Stop {
        /// Why.
        reason: &'a str,
    },
    /// A care plan approved.
    PlanApproved(&'a PlanSpec),
    /// A plan facilitator appointed.
    FacilitatorAppointed {
        /// The organisation.
        organisation_id: &'a str,
    },
    /// Suspended until resumed.
    Suspend,
    /// A suspension ends.
    Resume,
    /// The holder died.
    HolderDied {
        /// The date of death.
        date: Date,
    },
    /// Money returned to the commissioner.
    Reclaim {
        /// Positive amount.
        amount: Money,
    },
    /// Money given back for an earlier spending.
    Refund {
        /// The original Payment or Purchase.
        original_sequence: u64,
        /// Positive amount.
        amount: Money,
    },
    /// A service agreement approved.
    AgreementApproved(&'a AgreementSpec),
    /// A card payment at authorisation.
    Card {
        /// Positive amount.
        amount: Money,
        /// Merchant category code.
        mcc: u32,
        /// How the card was used.
        channel: CardChannel,
    },
    /// Admitted to hospital.
    Admitted {
        /// The date.
        date: Date,
    },
    /// Left hospital.
    Discharged {
        /// The date.
        date: Date,
    },
    /// An external data match recorded.
    ExternalMatch,
    /// A flag reviewed.
    FlagReviewed,
    /// A review took place.
    Reviewed {
        /// The date.
        date: Date,
    },
}

impl BudgetChange<'_> {
    /// Money leaving the budget, if this spends.
    pub fn spending(&self) -> Option<Money> {
        match *self {
            BudgetChange::Payment { amount, .. } | BudgetChange::Purchase { amount, .. } => {
                Some(amount)
            }
            _ => None,
        }
    }
}

impl EventKind {
    /// What the event is about (see `Subject`).
    pub fn subject(&self) -> Subject<'_> {
        match self {
            EventKind::OrganisationRegistered {
                organisation_id,
                roles,
                public_key,
            } => Subject::Organisation(OrganisationChange::Registered {
                organisation_id,
                roles,
                public_key,
            }),
            EventKind::KeyRotated {
                organisation_id,
                new_public_key,
            } => Subject::Organisation(OrganisationChange::KeyRotated {
                organisation_id,
                new_public_key,
            }),
            EventKind::BudgetOpened {
                holder_ref,
                commissioner_id,
                period_start,
                period_end,
                management,
                funds_holder_id,
                payroll_provider_id,
                plan_facilitator_id,
                ..
            } => Subject::Opening(BudgetOpening {
                holder_ref,
                commissioner_id,
                period_start: *period_start,
                period_end: *period_end,
                management: *management,
                funds_holder_id: funds_holder_id.as_deref(),
                payroll_provider_id: payroll_provider_id.as_deref(),
                plan_facilitator_id: plan_facilitator_id.as_deref(),
            }),
            EventKind::Allocation { amount, .. } => {
                Subject::Budget(BudgetChange::Allocation { amount: *amount })
            }
            EventKind::Disbursement { amount } => {
                Subject::Budget(BudgetChange::Disbursement { amount: *amount })
            }
            EventKind::Payment {
                amount,
                payee_kind,
                payee_ref,
                category,
                service,
                ..
            } => Subject::Budget(BudgetChange::Payment {
                amount: *amount,
                payee_kind: *payee_kind,
                payee_ref,
                category,
                service: service.as_ref(),
            }),
            EventKind::ServiceAgreementApproved(a) => {
                Subject::Budget(BudgetChange::AgreementApproved(a))
            }
            EventKind::CardTransaction {
                amount,
                mcc,
                channel,
                ..
            } => Subject::Budget(BudgetChange::Card {
                amount: *amount,
                mcc: *mcc,
                channel: *channel,
            }),
            EventKind::HospitalAdmission { date } => {
                Subject::Budget(BudgetChange::Admitted { date: *date })
            }
            EventKind::HospitalDischarge { date } => {
                Subject::Budget(BudgetChange::Discharged { date: *date })
            }
            EventKind::ReviewRecorded { date, .. } => {
                Subject::Budget(BudgetChange::Reviewed { date: *date })
            }
            EventKind::Purchase {
                amount, category, ..
            } => Subject::Budget(BudgetChange::Purchase {
                amount: *amount,
                category,
            }),
            EventKind::ReviewAdjustment { delta, .. } => {
                Subject::Budget(BudgetChange::ReviewAdjustment { delta: *delta })
            }
            EventKind::BudgetStopped { reason } => Subject::Budget(BudgetChange::Stop { reason }),
            EventKind::CarePlanApproved(plan) => Subject::Budget(BudgetChange::PlanApproved(plan)),
            EventKind::FacilitatorAppointed { organisation_id } => {
                Subject::Budget(BudgetChange::FacilitatorAppointed { organisation_id })
            }
            EventKind::BudgetSuspended { .. } => Subject::Budget(BudgetChange::Suspend),
            EventKind::BudgetResumed => Subject::Budget(BudgetChange::Resume),
            EventKind::HolderDied { date } => {
                Subject::Budget(BudgetChange::HolderDied { date: *date })
            }
            EventKind::Reclaim { amount, .. } => {
                Subject::Budget(BudgetChange::Reclaim { amount: *amount })
            }
            EventKind::Refund {
                original_sequence,
                amount,
            } => Subject::Budget(BudgetChange::Refund {
                original_sequence: *original_sequence,
                amount: *amount,
            }),
            EventKind::ExternalMatchRecorded { .. } => Subject::Budget(BudgetChange::ExternalMatch),
            EventKind::FlagReviewed { .. } => Subject::Budget(BudgetChange::FlagReviewed),
            EventKind::ControlsConfigured(c) => Subject::Controls(c),
        }
    }
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Idempotency key.
    pub event_id: String,
    /// The budget (empty for organisation events).
    pub budget_id: String,
    /// When it happened, microseconds since the Unix epoch.
    pub occurred_at_micros: i64,
    /// What happened.
    pub kind: EventKind,
}

/// What the decoder checks against: this ledger's id and the clock.
#[derive(Debug, Clone, Copy)]
pub struct DecodeContext<'a> {
    /// The server's configured ledger id.
    pub ledger_id: &'a str,
    /// The time the event is being recorded, microseconds since the epoch.
    pub now_micros: i64,
}

/// Checks an id: 1..=max bytes from `[A-Za-z0-9._:-]` (ASCII, so bytes and
/// characters are the same for every id accepted).
pub fn check_id(field: &str, value: &str, max: usize) -> Result<(), Reject> {
    if value.is_empty() {
        return Err(Reject::invalid(field, format!("{field} is required")));
    }
    if value.len() > max {
        return Err(Reject::invalid(
            field,
            format!(
                "{field} is {} bytes long; the limit is {max} bytes (ASCII characters)",
                value.len()
            ),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(Reject::invalid(
            field,
            format!(
                "{field} contains {c:?} (U+{:04X}); use only A-Z, a-z, 0-9 and . _ : -",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// A category must be a code of the vocabulary (`crate::categories`):
/// allowed or excluded. Whether an excluded one may be spent on is a
/// decision of the rules (`ledger::budgets`), not a matter of syntax.
fn check_category(field: &str, value: &str) -> Result<(), Reject> {
    if crate::categories::classify(value).is_some() {
        return Ok(());
    }
    Err(Reject::invalid(
        field,
        format!(
            "{field} {} is not a spending category; use one of: {} (docs/api.md, \"Spending categories\")",
            quote(value),
            crate::categories::allowed_list()
        ),
    ))
}

fn amount(field: &str, s: &str) -> Result<Money, Reject> {
    money::parse_positive(s).map_err(|e| Reject::invalid(field, e.to_string()))
}

fn key32(field: &str, bytes: &[u8]) -> Result<[u8; 32], Reject> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        Reject::invalid(
            field,
            format!(
                "{field} must be a raw 32-byte ed25519 public key; got {} bytes",
                bytes.len()
            ),
        )
    })
}

/// Two dates `(name, text)` of message `f` that bound a period: both must
/// parse, and the end may not come before the start (a one-day period has
/// the same date twice).
fn parse_date_range(
    f: &str,
    (start_name, start): (&str, &str),
    (end_name, end): (&str, &str),
) -> Result<(Date, Date), Reject> {
    let from = parse_date(&format!("{f}.{start_name}"), start)?;
    let to = parse_date(&format!("{f}.{end_name}"), end)?;
    if to < from {
        return Err(Reject::invalid(
            format!("{f}.{end_name}"),
            format!("{end_name} {to} is before {start_name} {from}"),
        ));
    }
    Ok((from, to))
}

/// Parses "YYYY-MM-DD" strictly.
pub fn parse_date(field: &str, s: &str) -> Result<Date, Reject> {
    let bad = || {
        Reject::invalid(
            field,
            format!(
                "{field} {} is not a date of the form YYYY-MM-DD between 2000 and 2199",
                quote(s)
            ),
        )
    };
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u16, Reject> {
        let part = &s[r];
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<u16>().map_err(|_| bad())
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(2000..=2199).contains(&year) || !(1..=12).contains(&month) {
        return Err(bad());
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day == 0 || day > days {
        return Err(bad());
    }
    Ok(Date {
        year,
        month: month as u8,
        day: day as u8,
    })
}

fn role(r: i32) -> Result<Role, Reject> {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Commissioner) => Ok(Role::Commissioner),
        Ok(pb::Role::PayrollProvider) => Ok(Role::PayrollProvider),
        Ok(pb::Role::ThirdParty) => Ok(Role::ThirdParty),
        Ok(pb::Role::AccountProvider) => Ok(Role::AccountProvider),
        Ok(pb::Role::Auditor) => Ok(Role::Auditor),
        Ok(pb::Role::PlanFacilitator) => Ok(Role::PlanFacilitator),
        _ => Err(Reject::invalid(
            "kind.organisation_registered.roles",
            format!("role {r} is not a known role; use ROLE_COMMISSIONER, ROLE_PAYROLL_PROVIDER, ROLE_THIRD_PARTY, ROLE_ACCOUNT_PROVIDER, ROLE_AUDITOR or ROLE_PLAN_FACILITATOR"),
        )),
    }
}

fn optional_org(field: &str, s: &str) -> Result<Option<String>, Reject> {
    if s.is_empty() {
        Ok(None)
    } else {
        check_id(field, s, MAX_ID_LEN)?;
        Ok(Some(s.to_string()))
    }
}

/// The `event_id` of stored event bytes, without validating the rest
/// (used to re-index the log). phb-store reads it the same way
/// (`stored_event_id`, without depending on this crate): change both.
pub fn decode_event_id(bytes: &[u8]) -> Option<String> {
    pb::Event::decode(bytes).ok().map(|e| e.event_id)
}

/// Decodes and validates the exact bytes a client signed.
///
/// Checks everything that needs no ledger state: shape, ids, amounts,
/// dates, the ledger id and the clock window.
pub fn decode_event(bytes: &[u8], ctx: DecodeContext<'_>) -> Result<Event, Reject> {
    if bytes.is_empty() {
        return Err(Reject::invalid(
            "event",
            "event is empty; send the serialized Event message",
        ));
    }
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(Reject::invalid(
            "event",
            format!(
                "event is {} bytes; the limit is {MAX_EVENT_BYTES}",
                bytes.len()
            ),
        ));
    }
    let ev = pb::Event::decode(bytes).map_err(|e| {
        Reject::invalid(
            "event",
            format!("event bytes are not a valid phb.ledger.v1.Event protobuf message: {e}"),
        )
    })?;
    // prost drops fields it does not know, keeps only the last of a repeated
    // field, and takes fields in any order and varints with redundant bytes.
    // Refuse all of that: the log keeps the client's exact bytes forever, so
    // nothing unvalidated (personal data in an unknown field, say) may ride
    // along inside a signed event, and an event has exactly one byte form.
    // Comparing lengths alone is not enough: fields in another order, or an
    // unpacked role plus a padded varint, are non-canonical at equal length.
    if ev.encoded_len() != bytes.len() || ev.encode_to_vec() != bytes {
        return Err(Reject::invalid(
            "event",
            "event contains fields this ledger does not know, or a non-canonical encoding; send only the fields of phb.ledger.v1.Event, serialized by a standard protobuf library",
        ));
    }
    check_id("event_id", &ev.event_id, MAX_ID_LEN)?;
    if ev.ledger_id != ctx.ledger_id {
        return Err(Reject::invalid(
            "ledger_id",
            format!(
                "ledger_id {} is not this ledger ({:?}); events cannot be replayed across ledgers",
                quote(&ev.ledger_id),
                ctx.ledger_id
            ),
        ));
    }
    let occurred = ev.occurred_at.as_ref().ok_or_else(|| {
        Reject::invalid(
            "occurred_at",
            "occurred_at is required: when the event happened",
        )
    })?;
    if !(0..1_000_000_000).contains(&occurred.nanos) {
        return Err(Reject::invalid(
            "occurred_at",
            "occurred_at.nanos must be between 0 and 999999999",
        ));
    }
    let occurred_at_micros = occurred
        .seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(occurred.nanos / 1000)))
        .filter(|m| {
            *m >= MIN_OCCURRED_AT_MICROS && *m <= ctx.now_micros.saturating_add(MAX_FUTURE_MICROS)
        })
        .ok_or_else(|| {
            Reject::invalid(
                "occurred_at",
                "occurred_at must be after 2000-01-01 and no more than 24 hours in the future",
            )
        })?;
    let kind = ev.kind.ok_or_else(|| {
        Reject::invalid(
            "kind",
            "exactly one event kind (payment, purchase, ...) must be set",
        )
    })?;
    let kind = decode_kind(kind)?;
    if kind.is_organisation_event() {
        if !ev.budget_id.is_empty() {
            return Err(Reject::invalid(
                "budget_id",
                format!("budget_id must be empty for {}", kind.name()),
            ));
        }
    } else {
        check_id("budget_id", &ev.budget_id, MAX_ID_LEN)?;
    }
    if let EventKind::FlagReviewed { flag_id, .. } = &kind {
        if split_flag_id(flag_id).map(|(_, b, _)| b) != Some(ev.budget_id.as_str()) {
            return Err(Reject::invalid(
                "kind.flag_reviewed.flag_id",
                "the flag must be about the event's budget_id: a review is recorded on the flag's budget",
            ));
        }
    }
    Ok(Event {
        event_id: ev.event_id,
        budget_id: ev.budget_id,
        occurred_at_micros,
        kind,
    })
}

fn payee_kind(field: &str, k: i32) -> Result<PayeeKind, Reject> {
    match pb::PayeeKind::try_from(k) {
        Ok(pb::PayeeKind::PersonalAssistant) => Ok(PayeeKind::PersonalAssistant),
        Ok(pb::PayeeKind::Provider) => Ok(PayeeKind::Provider),
        Ok(pb::PayeeKind::TaxAuthority) => Ok(PayeeKind::TaxAuthority),
        Ok(pb::PayeeKind::PensionScheme) => Ok(PayeeKind::PensionScheme),
        _ => Err(Reject::invalid(
            field,
            "payee_kind must be PAYEE_KIND_PERSONAL_ASSISTANT, _PROVIDER, _TAX_AUTHORITY or _PENSION_SCHEME",
        )),
    }
}

fn sector(field: &str, s: i32) -> Result<Sector, Reject> {
    match pb::Sector::try_from(s) {
        Ok(pb::Sector::Nhs) => Ok(Sector::Nhs),
        Ok(pb::Sector::LocalAuthority) => Ok(Sector::LocalAuthority),
        Ok(pb::Sector::Independent) => Ok(Sector::Independent),
        Ok(pb::Sector::Voluntary) => Ok(Sector::Voluntary),
        Ok(pb::Sector::Individual) => Ok(Sector::Individual),
        _ => Err(Reject::invalid(
            field,
            "must be SECTOR_NHS, _LOCAL_AUTHORITY, _INDEPENDENT, _VOLUNTARY or _INDIVIDUAL",
        )),
    }
}

/// A payment's agreement claim: all of agreement_id, units and the service
/// period, or none of them; only for personal assistants and providers.
fn decode_claim(f: &str, p: &pb::Payment, kind: PayeeKind) -> Result<Option<ServiceClaim>, Reject> {
    if p.agreement_id.is_empty() {
        for (name, v) in [
            ("units", &p.units),
            ("service_from", &p.service_from),
            ("service_to", &p.service_to),
        ] {
            if !v.is_empty() {
                return Err(Reject::invalid(
                    format!("{f}.{name}"),
                    format!("{name} is only given with agreement_id"),
                ));
            }
        }
        return Ok(None);
    }
    if !matches!(kind, PayeeKind::PersonalAssistant | PayeeKind::Provider) {
        return Err(Reject::invalid(
            format!("{f}.agreement_id"),
            "service agreements are for personal assistants and providers",
        ));
    }
    check_id(&format!("{f}.agreement_id"), &p.agreement_id, MAX_ID_LEN)?;
    let units = money::parse_positive(&p.units)
        .map_err(|e| Reject::invalid(format!("{f}.units"), e.to_string()))?;
    let (from, to) = parse_date_range(
        f,
        ("service_from", &p.service_from),
        ("service_to", &p.service_to),
    )?;
    Ok(Some(ServiceClaim {
        agreement_id: p.agreement_id.clone(),
        units,
        from,
        to,
    }))
}

fn decode_agreement(a: pb::ServiceAgreementApproved) -> Result<AgreementSpec, Reject> {
    let f = "kind.service_agreement_approved";
    check_id(&format!("{f}.agreement_id"), &a.agreement_id, MAX_ID_LEN)?;
    check_id(&format!("{f}.payee_ref"), &a.payee_ref, MAX_REF_LEN)?;
    let payee_kind = payee_kind(&format!("{f}.payee_kind"), a.payee_kind)?;
    if !matches!(
        payee_kind,
        PayeeKind::PersonalAssistant | PayeeKind::Provider
    ) {
        return Err(Reject::invalid(
            format!("{f}.payee_kind"),
            "agreements are with personal assistants or providers",
        ));
    }
    let payee_sector = sector(&format!("{f}.payee_sector"), a.payee_sector)?;
    check_category(&format!("{f}.category"), &a.category)?;
    let unit = match pb::Unit::try_from(a.unit) {
        Ok(pb::Unit::Hour) => Unit::Hour,
        Ok(pb::Unit::Day) => Unit::Day,
        Ok(pb::Unit::Week) => Unit::Week,
        Ok(pb::Unit::Item) => Unit::Item,
        _ => {
            return Err(Reject::invalid(
                format!("{f}.unit"),
                "unit must be UNIT_HOUR, UNIT_DAY, UNIT_WEEK or UNIT_ITEM",
            ))
        }
    };
    let rate = money::parse_positive(&a.rate)
        .map_err(|e| Reject::invalid(format!("{f}.rate"), e.to_string()))?;
    let (valid_from, valid_to) =
        parse_date_range(f, ("valid_from", &a.valid_from), ("valid_to", &a.valid_to))?;
    Ok(AgreementSpec {
        agreement_id: a.agreement_id,
        payee_ref: a.payee_ref,
        payee_kind,
        payee_sector,
        category: a.category,
        unit,
        rate,
        max_units_per_week: a.max_units_per_week,
        valid_from,
        valid_to,
        connected_person: a.connected_person,
    })
}

fn decode_plan(p: pb::CarePlanApproved) -> Result<PlanSpec, Reject> {
    let f = "kind.care_plan_approved";
    check_id(&format!("{f}.plan_id"), &p.plan_id, MAX_ID_LEN)?;
    if p.lines.is_empty() || p.lines.len() > MAX_PLAN_LINES {
        return Err(Reject::invalid(
            format!("{f}.lines"),
            format!(
                "a plan has 1 to {MAX_PLAN_LINES} lines; this one has {}",
                p.lines.len()
            ),
        ));
    }
    let mut lines = Vec::with_capacity(p.lines.len());
    for (i, l) in p.lines.into_iter().enumerate() {
        let lf = format!("{f}.lines[{i}]");
        check_id(&format!("{lf}.line_id"), &l.line_id, MAX_ID_LEN)?;
        if lines.iter().any(|x: &PlanLineSpec| x.line_id == l.line_id) {
            return Err(Reject::invalid(
                format!("{lf}.line_id"),
                format!("line_id {:?} is used twice in the plan", l.line_id),
            ));
        }
        check_category(&format!("{lf}.category"), &l.category)?;
        let annual = money::parse_positive(&l.annual_amount)
            .map_err(|e| Reject::invalid(format!("{lf}.annual_amount"), e.to_string()))?;
        text::check(
            &format!("{lf}.description"),
            &l.description,
            MAX_TEXT_LEN,
            false,
        )?;
        lines.push(PlanLineSpec {
            line_id: l.line_id,
            category: l.category,
            annual,
            description: l.description,
        });
    }
    let contingency = money::parse_non_negative(&p.contingency_amount)
        .map_err(|e| Reject::invalid(format!("{f}.contingency_amount"), e.to_string()))?;
    let (valid_from, valid_to) =
        parse_date_range(f, ("valid_from", &p.valid_from), ("valid_to", &p.valid_to))?;
    let review_due = parse_date(&format!("{f}.review_due"), &p.review_due)?;
    if review_due < valid_from {
        return Err(Reject::invalid(
            format!("{f}.review_due"),
            format!("review_due {review_due} is before valid_from {valid_from}"),
        ));
    }
    let plan = PlanSpec {
        plan_id: p.plan_id,
        lines,
        contingency,
        valid_from,
        valid_to,
        review_due,
    };
    if plan.total().is_none() {
        return Err(Reject::invalid(
            format!("{f}.lines"),
            "the plan's total overflows",
        ));
    }
    Ok(plan)
}

fn decode_kind(kind: pb::event::Kind) -> Result<EventKind, Reject> {
    use pb::event::Kind as K;
    Ok(match kind {
        K::OrganisationRegistered(o) => {
            let f = "kind.organisation_registered";
            check_id(&format!("{f}.organisation_id"), &o.organisation_id, MAX_ID_LEN)?;
            if o.organisation_id == ROOT_SIGNER {
                return Err(Reject::invalid(
                    format!("{f}.organisation_id"),
                    "\"root\" is reserved for the ledger's root key",
                ));
            }
            if o.roles.is_empty() {
                return Err(Reject::invalid(format!("{f}.roles"), "at least one role is required"));
            }
            let mut roles = o.roles.iter().map(|r| role(*r)).collect::<Result<Vec<_>, _>>()?;
            roles.sort();
            let n = roles.len();
            roles.dedup();
            if roles.len() != n {
                return Err(Reject::invalid(format!("{f}.roles"), "roles must not repeat"));
            }
            EventKind::OrganisationRegistered {
                organisation_id: o.organisation_id,
                roles,
                public_key: key32(&format!("{f}.public_key"), &o.public_key)?,
            }
        }
        K::KeyRotated(k) => {
            let f = "kind.key_rotated";
            check_id(&format!("{f}.organisation_id"), &k.organisation_id, MAX_ID_LEN)?;
            EventKind::KeyRotated {
                organisation_id: k.organisation_id,
                new_public_key: key32(&format!("{f}.new_public_key"), &k.new_public_key)?,
            }
        }
        K::BudgetOpened(b) => {
            let f = "kind.budget_opened";
            check_id(&format!("{f}.holder_ref"), &b.holder_ref, MAX_REF_LEN)?;
            check_id(&format!("{f}.commissioner_id"), &b.commissioner_id, MAX_ID_LEN)?;
            let (period_start, period_end) = parse_date_range(
                f,
                ("period_start", &b.period_start),
                ("period_end", &b.period_end),
            )?;
            let management = match pb::Management::try_from(b.management) {
                Ok(pb::Management::DirectPayment) => Management::DirectPayment,
                Ok(pb::Management::ThirdParty) => Management::ThirdParty,
                Ok(pb::Management::Notional) => Management::Notional,
                _ => {
                    return Err(Reject::invalid(
                        format!("{f}.management"),
                        "management must be MANAGEMENT_DIRECT_PAYMENT, MANAGEMENT_THIRD_PARTY or MANAGEMENT_NOTIONAL",
                    ))
                }
            };
            let funds_holder_id = optional_org(&format!("{f}.funds_holder_id"), &b.funds_holder_id)?;
            let payroll_provider_id =
                optional_org(&format!("{f}.payroll_provider_id"), &b.payroll_provider_id)?;
            let plan_facilitator_id =
                optional_org(&format!("{f}.plan_facilitator_id"), &b.plan_facilitator_id)?;
            match management {
                Management::ThirdParty if funds_holder_id.is_none() => {
                    return Err(Reject::invalid(
                        format!("{f}.funds_holder_id"),
                        "a third-party budget needs funds_holder_id: the organisation that holds the money",
                    ))
                }
                Management::Notional if funds_holder_id.is_some() || payroll_provider_id.is_some() => {
                    return Err(Reject::invalid(
                        format!("{f}.funds_holder_id"),
                        "a notional budget is held by the commissioner: leave funds_holder_id and payroll_provider_id empty",
                    ))
                }
                _ => {}
            }
            EventKind::BudgetOpened {
                holder_ref: b.holder_ref,
                commissioner_id: b.commissioner_id,
                period_start,
                period_end,
                management,
                funds_holder_id,
                payroll_provider_id,
                plan_facilitator_id,
                cohort: match pb::Cohort::try_from(b.cohort) {
                    Ok(pb::Cohort::Unspecified) => Cohort::NotRecorded,
                    Ok(pb::Cohort::ContinuingHealthcare) => Cohort::ContinuingHealthcare,
                    Ok(pb::Cohort::FastTrackChc) => Cohort::FastTrackChc,
                    Ok(pb::Cohort::Wheelchair) => Cohort::Wheelchair,
                    Ok(pb::Cohort::MentalHealthS117) => Cohort::MentalHealthS117,
                    Ok(pb::Cohort::LearningDisabilityAutism) => Cohort::LearningDisabilityAutism,
                    Ok(pb::Cohort::EndOfLife) => Cohort::EndOfLife,
                    Ok(pb::Cohort::Maternity) => Cohort::Maternity,
                    Ok(pb::Cohort::ChildrenEhc) => Cohort::ChildrenEhc,
                    Ok(pb::Cohort::Other) => Cohort::Other,
                    Err(_) => {
                        return Err(Reject::invalid(
                            format!("{f}.cohort"),
                            format!("cohort {} is not a Cohort value (0 to 9)", b.cohort),
                        ))
                    }
                },
                age_band: match pb::AgeBand::try_from(b.age_band) {
                    Ok(pb::AgeBand::Unspecified) => AgeBand::NotRecorded,
                    Ok(pb::AgeBand::Adult) => AgeBand::Adult,
                    Ok(pb::AgeBand::Child) => AgeBand::Child,
                    Err(_) => {
                        return Err(Reject::invalid(
                            format!("{f}.age_band"),
                            format!(
                                "age_band {} is not an AgeBand value (0, 1 AGE_BAND_ADULT or 2 AGE_BAND_CHILD)",
                                b.age_band
                            ),
                        ))
                    }
                },
            }
        }
        K::Allocation(a) => EventKind::Allocation {
            amount: amount("kind.allocation.amount", &a.amount)?,
            basis: match pb::AllocationBasis::try_from(a.basis) {
                Ok(pb::AllocationBasis::ClusterCost) => AllocationBasis::ClusterCost,
                Ok(pb::AllocationBasis::NeedsBased) => AllocationBasis::NeedsBased,
                Ok(pb::AllocationBasis::ExistingServices) => AllocationBasis::ExistingServices,
                Ok(pb::AllocationBasis::OneOff) => AllocationBasis::OneOff,
                _ => {
                    return Err(Reject::invalid(
                        "kind.allocation.basis",
                        "basis must be one of ALLOCATION_BASIS_CLUSTER_COST, _NEEDS_BASED, _EXISTING_SERVICES, _ONE_OFF",
                    ))
                }
            },
        },
        K::Disbursement(d) => EventKind::Disbursement {
            amount: amount("kind.disbursement.amount", &d.amount)?,
        },
        K::Payment(p) => {
            let f = "kind.payment";
            let payee_kind = payee_kind(&format!("{f}.payee_kind"), p.payee_kind)?;
            check_id(&format!("{f}.payee_ref"), &p.payee_ref, MAX_REF_LEN)?;
            check_category(&format!("{f}.category"), &p.category)?;
            text::check(&format!("{f}.reference"), &p.reference, MAX_REFERENCE_TEXT_LEN, false)?;
            let service = decode_claim(f, &p, payee_kind)?;
            EventKind::Payment {
                amount: amount(&format!("{f}.amount"), &p.amount)?,
                payee_kind,
                payee_ref: p.payee_ref,
                category: p.category,
                reference: p.reference,
                service,
            }
        }
        K::Purchase(p) => {
            let f = "kind.purchase";
            check_category(&format!("{f}.category"), &p.category)?;
            check_id(&format!("{f}.supplier_ref"), &p.supplier_ref, MAX_REF_LEN)?;
            text::check(&format!("{f}.description"), &p.description, MAX_TEXT_LEN, false)?;
            text::check(&format!("{f}.receipt_ref"), &p.receipt_ref, MAX_REFERENCE_TEXT_LEN, false)?;
            let supplier_sector = match p.supplier_sector {
                0 => None,
                s => Some(sector(&format!("{f}.supplier_sector"), s)?),
            };
            EventKind::Purchase {
                amount: amount(&format!("{f}.amount"), &p.amount)?,
                category: p.category,
                supplier_ref: p.supplier_ref,
                description: p.description,
                receipt_ref: p.receipt_ref,
                supplier_sector,
            }
        }
        K::ReviewAdjustment(r) => {
            let f = "kind.review_adjustment";
            text::check(&format!("{f}.reason"), &r.reason, MAX_TEXT_LEN, true)?;
            EventKind::ReviewAdjustment {
                delta: money::parse_nonzero_delta(&r.delta)
                    .map_err(|e| Reject::invalid(format!("{f}.delta"), e.to_string()))?,
                reason: r.reason,
            }
        }
        K::BudgetStopped(s) => {
            text::check("kind.budget_stopped.reason", &s.reason, MAX_TEXT_LEN, true)?;
            EventKind::BudgetStopped { reason: s.reason }
        }
        K::CarePlanApproved(p) => EventKind::CarePlanApproved(decode_plan(p)?),
        K::BudgetSuspended(s) => {
            text::check("kind.budget_suspended.reason", &s.reason, MAX_TEXT_LEN, true)?;
            EventKind::BudgetSuspended { reason: s.reason }
        }
        K::BudgetResumed(_) => EventKind::BudgetResumed,
        K::HolderDied(d) => EventKind::HolderDied {
            date: parse_date("kind.holder_died.date", &d.date)?,
        },
        K::Reclaim(r) => EventKind::Reclaim {
            amount: amount("kind.reclaim.amount", &r.amount)?,
            ground: match pb::ReclaimGround::try_from(r.ground) {
                Ok(pb::ReclaimGround::Surplus) => ReclaimGround::Surplus,
                Ok(pb::ReclaimGround::NotUsedAsAgreed) => ReclaimGround::NotUsedAsAgreed,
                Ok(pb::ReclaimGround::ChangeOfCircumstances) => ReclaimGround::ChangeOfCircumstances,
                Ok(pb::ReclaimGround::Fraud) => ReclaimGround::Fraud,
                Ok(pb::ReclaimGround::Death) => ReclaimGround::Death,
                _ => {
                    return Err(Reject::invalid(
                        "kind.reclaim.ground",
                        "ground must be one of RECLAIM_GROUND_SURPLUS, _NOT_USED_AS_AGREED, _CHANGE_OF_CIRCUMSTANCES, _FRAUD, _DEATH",
                    ))
                }
            },
        },
        K::Refund(r) => {
            if r.original_sequence == 0 {
                return Err(Reject::invalid(
                    "kind.refund.original_sequence",
                    "original_sequence is required: the log sequence of the Payment or Purchase refunded",
                ));
            }
            EventKind::Refund {
                original_sequence: r.original_sequence,
                amount: amount("kind.refund.amount", &r.amount)?,
            }
        }
        K::ServiceAgreementApproved(a) => EventKind::ServiceAgreementApproved(decode_agreement(a)?),
        K::CardTransaction(t) => {
            let f = "kind.card_transaction";
            check_id(&format!("{f}.card_ref"), &t.card_ref, MAX_REF_LEN)?;
            check_id(&format!("{f}.merchant_ref"), &t.merchant_ref, MAX_REF_LEN)?;
            if t.mcc == 0 || t.mcc > 9999 {
                return Err(Reject::invalid(
                    format!("{f}.mcc"),
                    format!("mcc {} is not a 4-digit merchant category code", t.mcc),
                ));
            }
            let channel = match pb::CardChannel::try_from(t.channel) {
                Ok(pb::CardChannel::Pos) => CardChannel::Pos,
                Ok(pb::CardChannel::Online) => CardChannel::Online,
                Ok(pb::CardChannel::Atm) => CardChannel::Atm,
                Ok(pb::CardChannel::DirectDebit) => CardChannel::DirectDebit,
                _ => {
                    return Err(Reject::invalid(
                        format!("{f}.channel"),
                        "channel must be CARD_CHANNEL_POS, _ONLINE, _ATM or _DIRECT_DEBIT",
                    ))
                }
            };
            EventKind::CardTransaction {
                amount: amount(&format!("{f}.amount"), &t.amount)?,
                card_ref: t.card_ref,
                merchant_ref: t.merchant_ref,
                mcc: t.mcc,
                channel,
            }
        }
        K::HospitalAdmission(h) => EventKind::HospitalAdmission {
            date: parse_date("kind.hospital_admission.date", &h.date)?,
        },
        K::HospitalDischarge(h) => EventKind::HospitalDischarge {
            date: parse_date("kind.hospital_discharge.date", &h.date)?,
        },
        K::ReviewRecorded(r) => {
            let f = "kind.review_recorded";
            text::check(&format!("{f}.outcome"), &r.outcome, MAX_TEXT_LEN, true)?;
            EventKind::ReviewRecorded {
                date: parse_date(&format!("{f}.date"), &r.date)?,
                kind: match pb::ReviewKind::try_from(r.kind) {
                    Ok(pb::ReviewKind::CareReview) => ReviewKind::CareReview,
                    Ok(pb::ReviewKind::FinancialAudit) => ReviewKind::FinancialAudit,
                    _ => {
                        return Err(Reject::invalid(
                            format!("{f}.kind"),
                            "kind must be REVIEW_KIND_CARE_REVIEW or REVIEW_KIND_FINANCIAL_AUDIT",
                        ))
                    }
                },
                outcome: r.outcome,
            }
        }
        K::ExternalMatchRecorded(m) => {
            let f = "kind.external_match_recorded";
            check_id(&format!("{f}.source"), &m.source, MAX_REF_LEN)?;
            check_id(&format!("{f}.reference"), &m.reference, MAX_REF_LEN)?;
            EventKind::ExternalMatchRecorded {
                source: m.source,
                kind: match pb::MatchKind::try_from(m.kind) {
                    Ok(pb::MatchKind::Deceased) => MatchKind::Deceased,
                    Ok(pb::MatchKind::Payroll) => MatchKind::Payroll,
                    Ok(pb::MatchKind::Other) => MatchKind::Other,
                    _ => {
                        return Err(Reject::invalid(
                            format!("{f}.kind"),
                            "kind must be MATCH_KIND_DECEASED, MATCH_KIND_PAYROLL or MATCH_KIND_OTHER",
                        ))
                    }
                },
                reference: m.reference,
            }
        }
        K::ControlsConfigured(c) => EventKind::ControlsConfigured(Controls::decode(&c)?),
        K::FlagReviewed(r) => {
            let f = "kind.flag_reviewed";
            check_id(&format!("{f}.flag_id"), &r.flag_id, MAX_FLAG_ID_LEN)?;
            if split_flag_id(&r.flag_id).is_none() {
                return Err(Reject::invalid(
                    format!("{f}.flag_id"),
                    "flag_id must be a Flag.flag_id as ListFlags gives it: \"{CODE}:{budget_id}:{key}\"",
                ));
            }
            text::check(&format!("{f}.note"), &r.note, MAX_NOTE_LEN, true)?;
            EventKind::FlagReviewed {
                flag_id: r.flag_id,
                outcome: match pb::FlagOutcome::try_from(r.outcome) {
                    Ok(pb::FlagOutcome::Confirmed) => FlagOutcome::Confirmed,
                    Ok(pb::FlagOutcome::Dismissed) => FlagOutcome::Dismissed,
                    _ => {
                        return Err(Reject::invalid(
                            format!("{f}.outcome"),
                            "outcome must be FLAG_OUTCOME_CONFIRMED or FLAG_OUTCOME_DISMISSED",
                        ))
                    }
                },
                note: r.note,
            }
        }
        K::FacilitatorAppointed(a) => {
            let f = "kind.facilitator_appointed.organisation_id";
            check_id(f, &a.organisation_id, MAX_ID_LEN)?;
            EventKind::FacilitatorAppointed {
                organisation_id: a.organisation_id,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `decode_event` fuzz target: the length check let through
    /// encodings of equal length that are not canonical (fields reordered).
    #[test]
    fn only_the_canonical_encoding_is_accepted() {
        let ev = pb::Event {
            event_id: "e-1".into(),
            ledger_id: "l".into(),
            budget_id: "b-1".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_704_067_200,
                nanos: 0,
            }),
            kind: Some(pb::event::Kind::BudgetStopped(pb::BudgetStopped {
                reason: "moved".into(),
            })),
        };
        let ctx = DecodeContext {
            ledger_id: "l",
            now_micros: 1_704_067_200_000_000,
        };
        let canonical = ev.encode_to_vec();
        assert!(decode_event(&canonical, ctx).is_ok());
        // event_id (0a 03 "e-1") and ledger_id (12 01 "l") swapped.
        let mut swapped = canonical[5..8].to_vec();
        swapped.extend_from_slice(&canonical[..5]);
        swapped.extend_from_slice(&canonical[8..]);
        assert_eq!(pb::Event::decode(&swapped[..]).unwrap(), ev);
        let r = decode_event(&swapped, ctx).expect_err("reordered fields accepted");
        assert_eq!(r.field.as_deref(), Some("event"));
    }

    /// Every free-text field of every kind, with each kind of hostile text:
    /// the same rule applies in all of them, through `decode_event`.
    #[test]
    fn every_text_field_applies_the_same_rule() {
        use pb::event::Kind as K;
        let ctx = DecodeContext {
            ledger_id: "l",
            now_micros: 1_704_067_200_000_000,
        };
        type Setter = fn(&str) -> (K, bool);
        let fields: [(&str, Setter); 5] = [
            ("kind.review_adjustment.reason", |t| {
                let r = pb::ReviewAdjustment {
                    delta: "1.00".into(),
                    reason: t.into(),
                };
                (K::ReviewAdjustment(r), true)
            }),
            ("kind.budget_stopped.reason", |t| {
                (
                    K::BudgetStopped(pb::BudgetStopped { reason: t.into() }),
                    true,
                )
            }),
            ("kind.purchase.description", |t| {
                let p = pb::Purchase {
                    amount: "1.00".into(),
                    category: "equipment".into(),
                    supplier_ref: "shop-1".into(),
                    description: t.into(),
                    receipt_ref: String::new(),
                    ..Default::default()
                };
                (K::Purchase(p), false)
            }),
            ("kind.purchase.receipt_ref", |t| {
                let p = pb::Purchase {
                    amount: "1.00".into(),
                    category: "equipment".into(),
                    supplier_ref: "shop-1".into(),
                    description: String::new(),
                    receipt_ref: t.into(),
                    ..Default::default()
                };
                (K::Purchase(p), false)
            }),
            ("kind.payment.reference", |t| {
                let p = pb::Payment {
                    amount: "1.00".into(),
                    payee_kind: pb::PayeeKind::Provider as i32,
                    payee_ref: "agency-1".into(),
                    category: "therapy".into(),
                    reference: t.into(),
                    ..Default::default()
                };
                (K::Payment(p), false)
            }),
        ];
        // (text, accepted, a substring the refusal must contain)
        let cases: &[(&str, bool, &str)] = &[
            ("annual review", true, ""),
            ("Zo\u{eb} \u{1F469}\u{200D}\u{1F4BB}", true, ""),
            ("\u{FEFF}chair", true, ""),
            ("\u{200B}", false, "no visible character"),
            ("\u{3164}", false, "no visible character"),
            ("\u{2060}", false, "no visible character"),
            ("\u{FEFF}", false, "no visible character"),
            (" \u{115F}\u{A0}", false, "no visible character"),
            ("chair\u{E0041}", false, "U+E0041"),
            ("\u{E0020}", false, "U+E0020"),
            ("chair \u{202E}00.1", false, "U+202E"),
            ("a\tb", false, "U+0009"),
            ("a\u{2029}b", false, "U+2029"),
            ("a\u{FE01}\u{FE02}\u{FE03}", false, "in a row"),
        ];
        for (field, set) in fields {
            let (_, required) = set("");
            for &(t, ok, says) in cases.iter().chain([("", !required, "required")].iter()) {
                let ev = pb::Event {
                    event_id: "e-1".into(),
                    ledger_id: "l".into(),
                    budget_id: "b-1".into(),
                    occurred_at: Some(prost_types::Timestamp {
                        seconds: 1_704_067_200,
                        nanos: 0,
                    }),
                    kind: Some(set(t).0),
                };
                match decode_event(&ev.encode_to_vec(), ctx) {
                    Ok(_) => assert!(ok, "{field} = {t:?} accepted"),
                    Err(r) => {
                        assert!(!ok, "{field} = {t:?} refused: {r}");
                        assert_eq!(r.code, crate::RejectCode::InvalidArgument);
                        assert_eq!(r.field.as_deref(), Some(field), "{t:?}");
                        assert!(r.message.starts_with(field), "{}", r.message);
                        assert!(r.message.contains(says), "{t:?}: {}", r.message);
                    }
                }
            }
        }
    }
}
