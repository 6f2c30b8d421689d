//! The JSON form of events for `phb-ledger submit` (docs/cli.md).
//!
//! Field names are the proto field names; the event kind is the name of the
//! oneof field; enums take their proto names with or without the prefix
//! (`"ROLE_COMMISSIONER"` or `"COMMISSIONER"`); keys are hex; `occurred_at`
//! is unix seconds (default: now). Amounts stay strings: they are never
//! parsed as JSON numbers, so no float ever touches money.

use anyhow::{anyhow, bail, Context, Result};
use pb::event::Kind;
use phb_proto::v1 as pb;
use serde_json::{json, Map, Value};

fn str_field(obj: &Map<String, Value>, name: &str) -> Result<String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => {
            bail!("{name} must be a JSON string (amounts too, e.g. \"202.04\"); got {other}")
        }
    }
}

fn enum_field(
    obj: &Map<String, Value>,
    name: &str,
    prefix: &str,
    parse: fn(&str) -> Option<i32>,
) -> Result<i32> {
    let s = str_field(obj, name)?;
    if s.is_empty() {
        return Ok(0);
    }
    let full = if s.starts_with(prefix) {
        s.clone()
    } else {
        format!("{prefix}{s}")
    };
    parse(&full).ok_or_else(|| anyhow!("{name}: {s:?} is not a known value"))
}

fn sector_field(obj: &Map<String, Value>, name: &str) -> Result<i32> {
    enum_field(obj, name, "SECTOR_", |s| {
        pb::Sector::from_str_name(s).map(|v| v as i32)
    })
}

fn u32_field(obj: &Map<String, Value>, name: &str) -> Result<u32> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| anyhow!("{name} must be a whole number from 0 to 4294967295")),
        Some(other) => bail!("{name} must be a JSON number; got {other}"),
    }
}

fn bool_field(obj: &Map<String, Value>, name: &str) -> Result<bool> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => bail!("{name} must be true or false; got {other}"),
    }
}

fn hex_field(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>> {
    hex::decode(str_field(obj, name)?).with_context(|| format!("{name} must be hex"))
}

fn kind(name: &str, o: &Map<String, Value>) -> Result<Kind> {
    Ok(match name {
        "organisation_registered" => {
            let roles = match o.get("roles") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|r| {
                        let s = r.as_str().ok_or_else(|| anyhow!("roles must be strings"))?;
                        let full = if s.starts_with("ROLE_") {
                            s.to_string()
                        } else {
                            format!("ROLE_{s}")
                        };
                        pb::Role::from_str_name(&full)
                            .map(|r| r as i32)
                            .ok_or_else(|| anyhow!("unknown role {s:?}"))
                    })
                    .collect::<Result<Vec<_>>>()?,
                _ => Vec::new(),
            };
            Kind::OrganisationRegistered(pb::OrganisationRegistered {
                organisation_id: str_field(o, "organisation_id")?,
                roles,
                public_key: hex_field(o, "public_key")?,
            })
        }
        "key_rotated" => Kind::KeyRotated(pb::KeyRotated {
            organisation_id: str_field(o, "organisation_id")?,
            new_public_key: hex_field(o, "new_public_key")?,
        }),
        "budget_opened" => Kind::BudgetOpened(pb::BudgetOpened {
            holder_ref: str_field(o, "holder_ref")?,
            commissioner_id: str_field(o, "commissioner_id")?,
            period_start: str_field(o, "period_start")?,
            period_end: str_field(o, "period_end")?,
            management: enum_field(o, "management", "MANAGEMENT_", |s| {
                pb::Management::from_str_name(s).map(|v| v as i32)
            })?,
            funds_holder_id: str_field(o, "funds_holder_id")?,
            payroll_provider_id: str_field(o, "payroll_provider_id")?,
            plan_facilitator_id: str_field(o, "plan_facilitator_id")?,
            cohort: enum_field(o, "cohort", "COHORT_", |s| {
                pb::Cohort::from_str_name(s).map(|v| v as i32)
            })?,
            age_band: enum_field(o, "age_band", "AGE_BAND_", |s| {
                pb::AgeBand::from_str_name(s).map(|v| v as i32)
            })?,
        }),
        "allocation" => Kind::Allocation(pb::Allocation {
            amount: str_field(o, "amount")?,
            basis: enum_field(o, "basis", "ALLOCATION_BASIS_", |s| {
                pb::AllocationBasis::from_str_name(s).map(|v| v as i32)
            })?,
        }),
        "disbursement" => Kind::Disbursement(pb::Disbursement {
            amount: str_field(o, "amount")?,
        }),
        "payment" => Kind::Payment(pb::Payment {
            amount: str_field(o, "amount")?,
            payee_kind: enum_field(o, "payee_kind", "PAYEE_KIND_", |s| {
                pb::PayeeKind::from_str_name(s).map(|v| v as i32)
            })?,
            payee_ref: str_field(o, "payee_ref")?,
            category: str_field(o, "category")?,
            reference: str_field(o, "reference")?,
            agreement_id: str_field(o, "agreement_id")?,
            units: str_field(o, "units")?,
            service_from: str_field(o, "service_from")?,
            service_to: str_field(o, "service_to")?,
        }),
        "purchase" => Kind::Purchase(pb::Purchase {
            amount: str_field(o, "amount")?,
            category: str_field(o, "category")?,
            supplier_ref: str_field(o, "supplier_ref")?,
            description: str_field(o, "description")?,
            receipt_ref: str_field(o, "receipt_ref")?,
            supplier_sector: sector_field(o, "supplier_sector")?,
        }),
        "service_agreement_approved" => {
            Kind::ServiceAgreementApproved(pb::ServiceAgreementApproved {
                agreement_id: str_field(o, "agreement_id")?,
                payee_ref: str_field(o, "payee_ref")?,
                payee_kind: enum_field(o, "payee_kind", "PAYEE_KIND_", |s| {
                    pb::PayeeKind::from_str_name(s).map(|v| v as i32)
                })?,
                payee_sector: sector_field(o, "payee_sector")?,
                category: str_field(o, "category")?,
                unit: enum_field(o, "unit", "UNIT_", |s| {
                    pb::Unit::from_str_name(s).map(|v| v as i32)
                })?,
                rate: str_field(o, "rate")?,
                max_units_per_week: u32_field(o, "max_units_per_week")?,
                valid_from: str_field(o, "valid_from")?,
                valid_to: str_field(o, "valid_to")?,
                connected_person: bool_field(o, "connected_person")?,
            })
        }
        "card_transaction" => Kind::CardTransaction(pb::CardTransaction {
            card_ref: str_field(o, "card_ref")?,
            merchant_ref: str_field(o, "merchant_ref")?,
            mcc: u32_field(o, "mcc")?,
            amount: str_field(o, "amount")?,
            channel: enum_field(o, "channel", "CARD_CHANNEL_", |s| {
                pb::CardChannel::from_str_name(s).map(|v| v as i32)
            })?,
        }),
        "hospital_admission" => Kind::HospitalAdmission(pb::HospitalAdmission {
            date: str_field(o, "date")?,
        }),
        "hospital_discharge" => Kind::HospitalDischarge(pb::HospitalDischarge {
            date: str_field(o, "date")?,
        }),
        "external_match_recorded" => Kind::ExternalMatchRecorded(pb::ExternalMatchRecorded {
            source: str_field(o, "source")?,
            kind: enum_field(o, "kind", "MATCH_KIND_", |s| {
                pb::MatchKind::from_str_name(s).map(|v| v as i32)
            })?,
            reference: str_field(o, "reference")?,
        }),
        "controls_configured" => Kind::ControlsConfigured(pb::ControlsConfigured {
            surplus_weeks: u32_field(o, "surplus_weeks")?,
            surplus_mute_weeks: u32_field(o, "surplus_mute_weeks")?,
            admission_days: u32_field(o, "admission_days")?,
            worker_hours_per_week: u32_field(o, "worker_hours_per_week")?,
            worker_hours_per_day: u32_field(o, "worker_hours_per_day")?,
            spike_multiple: str_field(o, "spike_multiple")?,
            spike_weeks: u32_field(o, "spike_weeks")?,
            cash_receipt_days: u32_field(o, "cash_receipt_days")?,
            first_review_weeks: u32_field(o, "first_review_weeks")?,
            review_interval_months: u32_field(o, "review_interval_months")?,
            refusals_count: u32_field(o, "refusals_count")?,
            refusals_days: u32_field(o, "refusals_days")?,
        }),
        "flag_reviewed" => Kind::FlagReviewed(pb::FlagReviewed {
            flag_id: str_field(o, "flag_id")?,
            outcome: enum_field(o, "outcome", "FLAG_OUTCOME_", |s| {
                pb::FlagOutcome::from_str_name(s).map(|v| v as i32)
            })?,
            note: str_field(o, "note")?,
        }),
        "review_recorded" => Kind::ReviewRecorded(pb::ReviewRecorded {
            date: str_field(o, "date")?,
            kind: enum_field(o, "kind", "REVIEW_KIND_", |s| {
                pb::ReviewKind::from_str_name(s).map(|v| v as i32)
            })?,
            outcome: str_field(o, "outcome")?,
        }),
        "review_adjustment" => Kind::ReviewAdjustment(pb::ReviewAdjustment {
            delta: str_field(o, "delta")?,
            reason: str_field(o, "reason")?,
        }),
        "budget_stopped" => Kind::BudgetStopped(pb::BudgetStopped {
            reason: str_field(o, "reason")?,
        }),
        "care_plan_approved" => Kind::CarePlanApproved(pb::CarePlanApproved {
            plan_id: str_field(o, "plan_id")?,
            lines: match o.get("lines") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|l| {
                        let l = l
                            .as_object()
                            .ok_or_else(|| anyhow!("each of lines must be an object"))?;
                        Ok(pb::PlanLine {
                            line_id: str_field(l, "line_id")?,
                            category: str_field(l, "category")?,
                            annual_amount: str_field(l, "annual_amount")?,
                            description: str_field(l, "description")?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
                Some(_) => bail!("lines must be an array of objects"),
            },
            contingency_amount: str_field(o, "contingency_amount")?,
            valid_from: str_field(o, "valid_from")?,
            valid_to: str_field(o, "valid_to")?,
            review_due: str_field(o, "review_due")?,
        }),
        "facilitator_appointed" => Kind::FacilitatorAppointed(pb::FacilitatorAppointed {
            organisation_id: str_field(o, "organisation_id")?,
        }),
        "budget_suspended" => Kind::BudgetSuspended(pb::BudgetSuspended {
            reason: str_field(o, "reason")?,
        }),
        "budget_resumed" => Kind::BudgetResumed(pb::BudgetResumed {}),
        "holder_died" => Kind::HolderDied(pb::HolderDied {
            date: str_field(o, "date")?,
        }),
        "reclaim" => Kind::Reclaim(pb::Reclaim {
            amount: str_field(o, "amount")?,
            ground: enum_field(o, "ground", "RECLAIM_GROUND_", |s| {
                pb::ReclaimGround::from_str_name(s).map(|v| v as i32)
            })?,
        }),
        "refund" => Kind::Refund(pb::Refund {
            original_sequence: match o.get("original_sequence") {
                None | Some(Value::Null) => 0,
                Some(Value::Number(n)) => n
                    .as_u64()
                    .ok_or_else(|| anyhow!("original_sequence must be a whole number"))?,
                Some(_) => bail!("original_sequence must be a number (a log sequence)"),
            },
            amount: str_field(o, "amount")?,
        }),
        other => bail!("unknown event kind {other:?}"),
    })
}

/// The proto messages, by full name (`.phb.ledger.v1.Event`), from the
/// descriptor set compiled into phb-proto: the one source of the field
/// names a JSON event may use.
fn messages() -> &'static std::collections::HashMap<String, prost_types::DescriptorProto> {
    static MESSAGES: std::sync::OnceLock<
        std::collections::HashMap<String, prost_types::DescriptorProto>,
    > = std::sync::OnceLock::new();
    MESSAGES.get_or_init(|| {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(phb_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        let mut out = std::collections::HashMap::new();
        fn walk(
            prefix: &str,
            m: &prost_types::DescriptorProto,
            out: &mut std::collections::HashMap<String, prost_types::DescriptorProto>,
        ) {
            let name = format!("{prefix}.{}", m.name());
            for nested in &m.nested_type {
                walk(&name, nested, out);
            }
            out.insert(name, m.clone());
        }
        for f in &set.file {
            for m in &f.message_type {
                walk(&format!(".{}", f.package()), m, &mut out);
            }
        }
        out
    })
}

/// The edit distance between two short names (for "did you mean").
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Refuses any key of `obj` that is not a field of the proto message
/// `message` (recursively, into message-typed fields), naming the key, where
/// it is, and the nearest valid name: a misspelt key must never be dropped
/// silently (a misspelt `occurred_at` would stamp the event "now", and the
/// identical retry would then be refused as a reused event id).
fn check_keys(obj: &Map<String, Value>, message: &str, path: &str) -> Result<()> {
    let Some(m) = messages().get(message) else {
        return Ok(());
    };
    for (key, value) in obj {
        let Some(field) = m.field.iter().find(|f| f.name() == key) else {
            let nearest = m
                .field
                .iter()
                .map(|f| f.name())
                .min_by_key(|n| distance(key, n));
            let at = if path.is_empty() {
                "an event".to_string()
            } else {
                format!("{path:?}")
            };
            let hint = match nearest {
                Some(n) if distance(key, n) <= 3.max(key.len() / 3) => {
                    format!("; did you mean {n:?}?")
                }
                _ => String::new(),
            };
            let valid: Vec<&str> = m.field.iter().map(|f| f.name()).collect();
            bail!(
                "unknown key {key:?} in {at}{hint} (valid keys: {}; docs/cli.md)",
                valid.join(", ")
            );
        };
        if field.r#type() == prost_types::field_descriptor_proto::Type::Message {
            let child = |v: &Value, p: String| match v {
                Value::Object(o) => check_keys(o, field.type_name(), &p),
                _ => Ok(()),
            };
            let here = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match value {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        child(item, format!("{here}[{i}]"))?;
                    }
                }
                v => child(v, here)?,
            }
        }
    }
    Ok(())
}

/// One JSON object to an `Event`.
pub fn parse_event(v: &Value, default_ledger_id: &str) -> Result<pb::Event> {
    let o = v
        .as_object()
        .ok_or_else(|| anyhow!("each event must be a JSON object"))?;
    check_keys(o, ".phb.ledger.v1.Event", "")?;
    let present: Vec<&str> = phb_domain::event::KIND_FIELDS
        .iter()
        .copied()
        .filter(|k| o.contains_key(*k))
        .collect();
    let [name] = present.as_slice() else {
        bail!(
            "exactly one of {} must be present; found {}",
            phb_domain::event::KIND_FIELDS.join(", "),
            present.len()
        );
    };
    let body = o[*name]
        .as_object()
        .ok_or_else(|| anyhow!("{name} must be an object"))?;
    let ledger_id = match str_field(o, "ledger_id")? {
        s if s.is_empty() => default_ledger_id.to_string(),
        s => s,
    };
    let occurred_at = match o.get("occurred_at") {
        None | Some(Value::Null) => phb_client::now_timestamp(),
        Some(Value::Number(n)) => prost_types::Timestamp {
            seconds: n
                .as_i64()
                .ok_or_else(|| anyhow!("occurred_at must be whole unix seconds"))?,
            nanos: 0,
        },
        Some(_) => bail!("occurred_at must be unix seconds"),
    };
    Ok(pb::Event {
        event_id: str_field(o, "event_id")?,
        ledger_id,
        budget_id: str_field(o, "budget_id")?,
        occurred_at: Some(occurred_at),
        kind: Some(kind(name, body)?),
    })
}

/// A JSON object or array of objects to events.
pub fn parse_events(text: &str, default_ledger_id: &str) -> Result<Vec<pb::Event>> {
    let v: Value = serde_json::from_str(text).context("the event is not valid JSON")?;
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| parse_event(i, default_ledger_id))
            .collect(),
        one => Ok(vec![parse_event(&one, default_ledger_id)?]),
    }
}

pub use phb_grpc::status::code_name;

/// An `AppendResult` as one line of JSON.
pub fn result_json(r: &pb::AppendResult) -> String {
    let e = r.error.clone().unwrap_or_default();
    json!({
        "event_id": r.event_id,
        "sequence": r.sequence,
        "duplicate": r.duplicate,
        "code": code_name(e.code),
        "message": e.message,
        "field": e.field,
        "entry_hash": hex::encode(&r.entry_hash),
        "refusal_sequence": r.refusal_sequence,
        "tree_size": r.tree_size,
        "flags": r
            .flags
            .iter()
            .map(|f| json!({
                "flag_id": f.flag_id,
                "explanation": f.explanation,
            }))
            .collect::<Vec<_>>(),
    })
    .to_string()
}

/// A `GetCarePlanResponse` as one line of JSON (`phb-ledger plan`).
pub fn care_plan_json(p: &pb::GetCarePlanResponse) -> String {
    let lines: Vec<Value> = p
        .lines
        .iter()
        .map(|l| {
            json!({
                "line_id": l.line_id,
                "category": l.category,
                "description": l.description,
                "annual_amount": l.annual_amount,
                "spent": l.spent,
                "remaining": l.remaining,
            })
        })
        .collect();
    json!({
        "budget_id": p.budget_id,
        "plan_id": p.plan_id,
        "approved_at_sequence": p.approved_at_sequence,
        "approved_by": p.approved_by,
        "valid_from": p.valid_from,
        "valid_to": p.valid_to,
        "review_due": p.review_due,
        "total": p.total,
        "contingency_amount": p.contingency_amount,
        "contingency_used": p.contingency_used,
        "lines": lines,
    })
    .to_string()
}

/// A `Balance` as one line of JSON.
pub fn balance_json(b: &pb::Balance) -> String {
    json!({
        "budget_id": b.budget_id,
        "holder_ref": b.holder_ref,
        "commissioner_id": b.commissioner_id,
        "management": pb::Management::try_from(b.management).map(|m| m.as_str_name()).unwrap_or("?"),
        "funds_holder_id": b.funds_holder_id,
        "payroll_provider_id": b.payroll_provider_id,
        "plan_facilitator_id": b.plan_facilitator_id,
        "period_start": b.period_start,
        "period_end": b.period_end,
        "allocated": b.allocated,
        "paid_in": b.paid_in,
        "spent": b.spent,
        "held": b.held,
        "available": b.available,
        "stopped": b.stopped,
        "last_sequence": b.last_sequence,
    })
    .to_string()
}

/// The totals line of `phb-ledger holdings`.
pub fn holdings_total_json(h: &pb::GetHoldingsResponse) -> String {
    json!({
        "organisation_id": h.organisation_id,
        "budgets": h.holdings.len(),
        "total_paid_in": h.total_paid_in,
        "total_spent": h.total_spent,
        "total_held": h.total_held,
        "restricted": h.restricted,
        "as_of_sequence": h.as_of_sequence,
    })
    .to_string()
}

/// One budget line of `phb-ledger holdings`.
pub fn holding_json(h: &pb::Holding) -> String {
    json!({
        "budget_id": h.budget_id,
        "holder_ref": h.holder_ref,
        "commissioner_id": h.commissioner_id,
        "management": pb::Management::try_from(h.management).map(|m| m.as_str_name()).unwrap_or("?"),
        "paid_in": h.paid_in,
        "spent": h.spent,
        "held": h.held,
        "stopped": h.stopped,
        "last_movement_sequence": h.last_movement_sequence,
        "last_movement_at": h.last_movement_at.as_ref().map(|t| t.seconds),
    })
    .to_string()
}

/// One line of `phb-ledger statement`.
pub fn statement_row_json(r: &pb::StatementRow) -> String {
    let mut v = json!({
        "sequence": r.sequence,
        "recorded_at": r.recorded_at.as_ref().map(|t| t.seconds),
        "occurred_at": r.occurred_at.as_ref().map(|t| t.seconds),
        "kind": r.kind,
        "signer_id": r.signer_id,
        "amount": r.amount,
        "allocated": r.allocated,
        "paid_in": r.paid_in,
        "spent": r.spent,
        "held": r.held,
        "refused": r.refused,
    });
    if r.refused {
        v["refusal_code"] = json!(r.refusal_code);
        v["refusal_message"] = json!(r.refusal_message);
    }
    v.to_string()
}

/// One line of `phb-ledger flags`: the flag as `ListFlags` gave it, with
/// the head it was derived at.
pub fn flag_json(f: &pb::Flag, head_sequence: u64) -> String {
    let name = |s: Option<&str>, prefix: &str| {
        s.map(|s| s.trim_start_matches(prefix).to_string())
            .unwrap_or_else(|| "?".into())
    };
    json!({
        "flag_id": f.flag_id,
        "code": name(pb::FlagCode::try_from(f.code).ok().map(|c| c.as_str_name()), "FLAG_CODE_"),
        "severity": name(pb::FlagSeverity::try_from(f.severity).ok().map(|c| c.as_str_name()), "FLAG_SEVERITY_"),
        "budget_id": f.budget_id,
        "commissioner_id": f.commissioner_id,
        "sequences": f.sequences,
        "raised_at_sequence": f.raised_at_sequence,
        "thresholds": f.thresholds.iter().map(|t| json!({"name": t.name, "value": t.value})).collect::<Vec<_>>(),
        "explanation": f.explanation,
        "status": name(pb::FlagStatus::try_from(f.status).ok().map(|c| c.as_str_name()), "FLAG_STATUS_"),
        "reviewed_by": f.reviewed_by,
        "review_sequence": f.review_sequence,
        "review_note": f.review_note,
        "head_sequence": head_sequence,
    })
    .to_string()
}
