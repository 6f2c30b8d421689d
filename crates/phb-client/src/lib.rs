//! Client helpers for phb-ledger: keys, signed events and signed read calls.
//!
//! Used by the `phb-ledger` CLI, the demo and the integration tests; partner
//! organisations in other languages follow docs/api.md instead.
#![deny(missing_docs)]

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use phb_proto::v1 as pb;
use prost::Message;
use std::time::{SystemTime, UNIX_EPOCH};

pub use phb_proto::v1::event::Kind;

/// Metadata key: the calling organisation.
pub const ORG_HEADER: &str = "x-phb-org";
/// Metadata key: unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-phb-timestamp";
/// Metadata key: base64 ed25519 signature.
pub const SIGNATURE_HEADER: &str = "x-phb-signature";
/// Read-call metadata: a fresh random value that makes the signature
/// single-use (docs/api.md, "Authentication metadata").
pub const NONCE_HEADER: &str = "x-phb-nonce";

/// Full method paths, as signed in read calls.
pub mod methods {
    /// Append.
    pub const APPEND: &str = "/phb.ledger.v1.LedgerService/Append";
    /// GetBalance.
    pub const GET_BALANCE: &str = "/phb.ledger.v1.LedgerService/GetBalance";
    /// ListBalances.
    pub const LIST_BALANCES: &str = "/phb.ledger.v1.LedgerService/ListBalances";
    /// ReadLog.
    pub const READ_LOG: &str = "/phb.ledger.v1.LedgerService/ReadLog";
    /// GetHoldings.
    pub const GET_HOLDINGS: &str = "/phb.ledger.v1.LedgerService/GetHoldings";
    /// GetBudgetStatement.
    pub const GET_BUDGET_STATEMENT: &str = "/phb.ledger.v1.LedgerService/GetBudgetStatement";
    /// GetCarePlan.
    pub const GET_CARE_PLAN: &str = "/phb.ledger.v1.LedgerService/GetCarePlan";
    /// ListFlags.
    pub const LIST_FLAGS: &str = "/phb.ledger.v1.LedgerService/ListFlags";
    /// GetCheckpoint.
    pub const GET_CHECKPOINT: &str = "/phb.ledger.v1.LedgerService/GetCheckpoint";
    /// GetInclusionProof.
    pub const GET_INCLUSION_PROOF: &str = "/phb.ledger.v1.LedgerService/GetInclusionProof";
    /// GetConsistencyProof.
    pub const GET_CONSISTENCY_PROOF: &str = "/phb.ledger.v1.LedgerService/GetConsistencyProof";
    /// GetSpendingSummary.
    pub const GET_SPENDING_SUMMARY: &str = "/phb.ledger.v1.LedgerService/GetSpendingSummary";
    /// GetQuarterlyReturn.
    pub const GET_QUARTERLY_RETURN: &str = "/phb.ledger.v1.LedgerService/GetQuarterlyReturn";
}

/// Key-file errors.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 64 hex characters.
    #[error("a key must be 64 hex characters (32 bytes): {0}")]
    Hex(String),
    /// Not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    BadPublicKey,
}

/// An organisation (or the root) with its signing key.
#[derive(Clone)]
pub struct Signer {
    /// The signer id: an organisation id, or "root".
    pub id: String,
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// 32 bytes from 64 hex characters.
pub fn parse_hex32(s: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(s.trim()).map_err(|e| KeyError::Hex(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| KeyError::Hex(format!("got {} bytes", b.len())))
}

/// A public key from 64 hex characters.
pub fn parse_public_key_hex(s: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&parse_hex32(s)?).map_err(|_| KeyError::BadPublicKey)
}

impl Signer {
    /// A fresh random key.
    pub fn generate(id: impl Into<String>) -> Signer {
        Signer {
            id: id.into(),
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// From a 32-byte secret seed.
    pub fn from_secret(id: impl Into<String>, secret: [u8; 32]) -> Signer {
        Signer {
            id: id.into(),
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// From 64 hex characters of secret seed (the key-file format).
    pub fn from_secret_hex(id: impl Into<String>, hex: &str) -> Result<Signer, KeyError> {
        Ok(Signer::from_secret(id, parse_hex32(hex)?))
    }

    /// The secret seed as hex (the key-file format).
    pub fn secret_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    /// The public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Serializes and signs an event.
    pub fn sign(&self, event: &pb::Event) -> pb::SignedEvent {
        self.sign_bytes(event.encode_to_vec())
    }

    /// The `x-phb-signature` value for a read call's signed message
    /// (`read_signing_message…`): base64 of the ed25519 signature.
    pub fn sign_read(&self, message: &str) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(self.key.sign(message.as_bytes()).to_bytes())
    }

    /// Signs already-serialized event bytes.
    pub fn sign_bytes(&self, event: Vec<u8>) -> pb::SignedEvent {
        let signature = self.key.sign(&event).to_bytes().to_vec();
        pb::SignedEvent {
            event,
            signer_id: self.id.clone(),
            signature,
        }
    }

    /// Adds the read-call metadata for `method` (a full path such as
    /// `methods::GET_BALANCE`) signed at `unix_seconds`, with a fresh
    /// random nonce, so the signed call cannot be replayed.
    pub fn authorize_at<T>(
        &self,
        request: &mut tonic::Request<T>,
        method: &str,
        unix_seconds: i64,
    ) {
        let mut random = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
        let nonce = hex::encode(random);
        let message = read_signing_message_with_nonce(method, unix_seconds, &nonce);
        if let Ok(v) = nonce.parse() {
            request.metadata_mut().insert(NONCE_HEADER, v);
        }
        let sig = self.sign_read(&message);
        let md = request.metadata_mut();
        // These values are ASCII by construction (id chars, digits, base64).
        if let Ok(v) = self.id.parse() {
            md.insert(ORG_HEADER, v);
        }
        if let Ok(v) = unix_seconds.to_string().parse() {
            md.insert(TIMESTAMP_HEADER, v);
        }
        if let Ok(v) = sig.parse() {
            md.insert(SIGNATURE_HEADER, v);
        }
    }

    /// A signed read request for `method`, timestamped now.
    pub fn request<T>(&self, method: &str, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        self.authorize_at(&mut r, method, unix_now());
        r
    }
}

/// The bytes a read call without a nonce signs: `"{method}\n{unix_seconds}"`.
pub fn read_signing_message(method: &str, unix_seconds: i64) -> String {
    format!("{method}\n{unix_seconds}")
}

/// The bytes a read call with a nonce signs:
/// `"{method}\n{unix_seconds}\n{nonce}"`.
pub fn read_signing_message_with_nonce(method: &str, unix_seconds: i64, nonce: &str) -> String {
    format!("{method}\n{unix_seconds}\n{nonce}")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A timestamp for now.
pub fn now_timestamp() -> prost_types::Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// An event of `kind` on `budget_id`, occurring now.
pub fn event(ledger_id: &str, event_id: &str, budget_id: &str, kind: Kind) -> pb::Event {
    pb::Event {
        event_id: event_id.to_string(),
        ledger_id: ledger_id.to_string(),
        budget_id: budget_id.to_string(),
        occurred_at: Some(now_timestamp()),
        kind: Some(kind),
    }
}

/// Kind builders, so callers need not spell out every field.
pub mod kinds {
    use super::{pb, Kind};

    /// OrganisationRegistered.
    pub fn register(org: &str, roles: &[pb::Role], public_key: &[u8; 32]) -> Kind {
        Kind::OrganisationRegistered(pb::OrganisationRegistered {
            organisation_id: org.into(),
            roles: roles.iter().map(|r| *r as i32).collect(),
            public_key: public_key.to_vec(),
        })
    }
    /// KeyRotated.
    pub fn rotate(org: &str, new_public_key: &[u8; 32]) -> Kind {
        Kind::KeyRotated(pb::KeyRotated {
            organisation_id: org.into(),
            new_public_key: new_public_key.to_vec(),
        })
    }
    /// BudgetOpened for 2026-04-01..2027-03-31.
    pub fn open(
        holder_ref: &str,
        commissioner: &str,
        management: pb::Management,
        funds_holder: &str,
        payroll: &str,
    ) -> Kind {
        Kind::BudgetOpened(pb::BudgetOpened {
            holder_ref: holder_ref.into(),
            commissioner_id: commissioner.into(),
            period_start: "2026-04-01".into(),
            period_end: "2027-03-31".into(),
            management: management as i32,
            funds_holder_id: funds_holder.into(),
            payroll_provider_id: payroll.into(),
            plan_facilitator_id: String::new(),
            cohort: pb::Cohort::Unspecified as i32,
            age_band: pb::AgeBand::Unspecified as i32,
        })
    }
    /// CarePlanApproved with `lines` of (line id, category, annual amount,
    /// description), in force 2026-04-01..2027-03-31, review due 2026-10-01.
    pub fn plan(plan_id: &str, lines: &[(&str, &str, &str, &str)], contingency: &str) -> Kind {
        Kind::CarePlanApproved(pb::CarePlanApproved {
            plan_id: plan_id.into(),
            lines: lines
                .iter()
                .map(|(id, category, amount, description)| pb::PlanLine {
                    line_id: (*id).into(),
                    category: (*category).into(),
                    annual_amount: (*amount).into(),
                    description: (*description).into(),
                })
                .collect(),
            contingency_amount: contingency.into(),
            valid_from: "2026-04-01".into(),
            valid_to: "2027-03-31".into(),
            review_due: "2026-10-01".into(),
        })
    }
    /// BudgetSuspended.
    pub fn suspend(reason: &str) -> Kind {
        Kind::BudgetSuspended(pb::BudgetSuspended {
            reason: reason.into(),
        })
    }
    /// BudgetResumed.
    pub fn resume() -> Kind {
        Kind::BudgetResumed(pb::BudgetResumed {})
    }
    /// HolderDied.
    pub fn died(date: &str) -> Kind {
        Kind::HolderDied(pb::HolderDied { date: date.into() })
    }
    /// Reclaim.
    pub fn reclaim(amount: &str, ground: pb::ReclaimGround) -> Kind {
        Kind::Reclaim(pb::Reclaim {
            amount: amount.into(),
            ground: ground as i32,
        })
    }
    /// CardTransaction.
    pub fn card(amount: &str, mcc: u32, channel: pb::CardChannel) -> Kind {
        Kind::CardTransaction(pb::CardTransaction {
            card_ref: "card-1".into(),
            merchant_ref: format!("merchant-{mcc}"),
            mcc,
            amount: amount.into(),
            channel: channel as i32,
        })
    }
    /// HospitalAdmission.
    pub fn admitted(date: &str) -> Kind {
        Kind::HospitalAdmission(pb::HospitalAdmission { date: date.into() })
    }
    /// HospitalDischarge.
    pub fn discharged(date: &str) -> Kind {
        Kind::HospitalDischarge(pb::HospitalDischarge { date: date.into() })
    }
    /// ReviewRecorded.
    pub fn reviewed(date: &str, kind: pb::ReviewKind, outcome: &str) -> Kind {
        Kind::ReviewRecorded(pb::ReviewRecorded {
            date: date.into(),
            kind: kind as i32,
            outcome: outcome.into(),
        })
    }
    /// Refund of the spending at `original_sequence`.
    pub fn refund(original_sequence: u64, amount: &str) -> Kind {
        Kind::Refund(pb::Refund {
            original_sequence,
            amount: amount.into(),
        })
    }
    /// ServiceAgreementApproved for `payee_ref` (a personal assistant) at
    /// `rate` per hour, at most `max_per_week` hours a week, in force
    /// 2026-04-01..2027-03-31.
    pub fn agreement(
        id: &str,
        payee_ref: &str,
        category: &str,
        rate: &str,
        max_per_week: u32,
    ) -> Kind {
        Kind::ServiceAgreementApproved(pb::ServiceAgreementApproved {
            agreement_id: id.into(),
            payee_ref: payee_ref.into(),
            payee_kind: pb::PayeeKind::PersonalAssistant as i32,
            payee_sector: pb::Sector::Individual as i32,
            category: category.into(),
            unit: pb::Unit::Hour as i32,
            rate: rate.into(),
            max_units_per_week: max_per_week,
            valid_from: "2026-04-01".into(),
            valid_to: "2027-03-31".into(),
            connected_person: false,
        })
    }
    /// A personal-assistant Payment under agreement `agreement_id`.
    pub fn pay_under(
        amount: &str,
        payee_ref: &str,
        category: &str,
        agreement_id: &str,
        units: &str,
        from: &str,
        to: &str,
    ) -> Kind {
        Kind::Payment(pb::Payment {
            amount: amount.into(),
            payee_kind: pb::PayeeKind::PersonalAssistant as i32,
            payee_ref: payee_ref.into(),
            category: category.into(),
            agreement_id: agreement_id.into(),
            units: units.into(),
            service_from: from.into(),
            service_to: to.into(),
            ..Default::default()
        })
    }
    /// FacilitatorAppointed.
    pub fn appoint_facilitator(org: &str) -> Kind {
        Kind::FacilitatorAppointed(pb::FacilitatorAppointed {
            organisation_id: org.into(),
        })
    }
    /// Allocation.
    pub fn allocate(amount: &str, basis: pb::AllocationBasis) -> Kind {
        Kind::Allocation(pb::Allocation {
            amount: amount.into(),
            basis: basis as i32,
        })
    }
    /// Disbursement.
    pub fn disburse(amount: &str) -> Kind {
        Kind::Disbursement(pb::Disbursement {
            amount: amount.into(),
        })
    }
    /// Payment.
    pub fn pay(amount: &str, payee_kind: pb::PayeeKind, payee_ref: &str, category: &str) -> Kind {
        Kind::Payment(pb::Payment {
            amount: amount.into(),
            payee_kind: payee_kind as i32,
            payee_ref: payee_ref.into(),
            category: category.into(),
            reference: String::new(),
            ..Default::default()
        })
    }
    /// Purchase.
    pub fn buy(amount: &str, category: &str, supplier_ref: &str, description: &str) -> Kind {
        Kind::Purchase(pb::Purchase {
            amount: amount.into(),
            category: category.into(),
            supplier_ref: supplier_ref.into(),
            description: description.into(),
            receipt_ref: String::new(),
            ..Default::default()
        })
    }
    /// ReviewAdjustment.
    pub fn review(delta: &str, reason: &str) -> Kind {
        Kind::ReviewAdjustment(pb::ReviewAdjustment {
            delta: delta.into(),
            reason: reason.into(),
        })
    }
    /// ExternalMatchRecorded.
    pub fn external_match(source: &str, kind: pb::MatchKind, reference: &str) -> Kind {
        Kind::ExternalMatchRecorded(pb::ExternalMatchRecorded {
            source: source.into(),
            kind: kind as i32,
            reference: reference.into(),
        })
    }
    /// FlagReviewed (on the flag's budget).
    pub fn flag_reviewed(flag_id: &str, outcome: pb::FlagOutcome, note: &str) -> Kind {
        Kind::FlagReviewed(pb::FlagReviewed {
            flag_id: flag_id.into(),
            outcome: outcome as i32,
            note: note.into(),
        })
    }
    /// ControlsConfigured (budget_id empty, signed by a commissioner).
    pub fn controls(c: pb::ControlsConfigured) -> Kind {
        Kind::ControlsConfigured(c)
    }
    /// BudgetStopped.
    pub fn stop(reason: &str) -> Kind {
        Kind::BudgetStopped(pb::BudgetStopped {
            reason: reason.into(),
        })
    }
}
