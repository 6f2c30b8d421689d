//! The JSON-lines form of an export, for people and spreadsheets: one JSON
//! object per log entry (docs/audit.md, "Export files").
//!
//! The event is decoded from its signed bytes with the proto's own
//! descriptors (`phb_proto::FILE_DESCRIPTOR_SET`), so every kind and every
//! field the proto has appears, under its proto name, without a hand-kept
//! list: strings as strings (amounts included: money is never a JSON
//! number), bytes as lowercase hex, enums by their proto names, timestamps
//! as RFC 3339 UTC, absent fields at their defaults. An event that does not
//! decode is shown as hex with the reason.

use phb_proto::v1 as pb;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The fully-qualified name of the event message.
const EVENT: &str = ".phb.ledger.v1.Event";
/// The well-known timestamp, shown as RFC 3339.
const TIMESTAMP: &str = ".google.protobuf.Timestamp";
/// How deep messages may nest (the proto nests three levels at most).
const MAX_DEPTH: usize = 16;

struct Schema {
    messages: HashMap<String, DescriptorProto>,
    enums: HashMap<String, HashMap<i32, String>>,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let set = FileDescriptorSet::decode(phb_proto::FILE_DESCRIPTOR_SET)
            .expect("phb-proto's descriptor set decodes");
        let mut s = Schema {
            messages: HashMap::new(),
            enums: HashMap::new(),
        };
        for f in &set.file {
            let prefix = match f.package() {
                "" => String::new(),
                p => format!(".{p}"),
            };
            for e in &f.enum_type {
                add_enum(&mut s, &prefix, e);
            }
            for m in &f.message_type {
                add_message(&mut s, &prefix, m);
            }
        }
        s
    })
}

fn add_enum(s: &mut Schema, prefix: &str, e: &prost_types::EnumDescriptorProto) {
    let values = e
        .value
        .iter()
        .map(|v| (v.number(), v.name().to_string()))
        .collect();
    s.enums.insert(format!("{prefix}.{}", e.name()), values);
}

fn add_message(s: &mut Schema, prefix: &str, m: &DescriptorProto) {
    let name = format!("{prefix}.{}", m.name());
    for e in &m.enum_type {
        add_enum(s, &name, e);
    }
    for n in &m.nested_type {
        add_message(s, &name, n);
    }
    s.messages.insert(name, m.clone());
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first().ok_or("a varint is cut short")?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a varint is longer than 10 bytes".into())
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err("a field runs past the end of its message".into());
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// RFC 3339 UTC with microseconds (or nanoseconds if they are not whole).
pub fn rfc3339(seconds: i64, nanos: i32) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days (no clamping, unlike `Date`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let frac = if nanos % 1000 == 0 {
        format!("{:06}", nanos / 1000)
    } else {
        format!("{nanos:09}")
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn scalar(
    s: &Schema,
    f: &prost_types::FieldDescriptorProto,
    wire: u64,
    buf: &mut &[u8],
    depth: usize,
) -> Result<Vec<Value>, String> {
    let ty = f.r#type();
    let from_varint = |v: u64| -> Value {
        match ty {
            Type::Bool => Value::Bool(v != 0),
            Type::Int32 | Type::Int64 => Value::from(v as i64),
            Type::Sint32 | Type::Sint64 => Value::from(((v >> 1) as i64) ^ -((v & 1) as i64)),
            Type::Enum => {
                let n = v as i32;
                match s.enums.get(f.type_name()).and_then(|e| e.get(&n)) {
                    Some(name) => Value::from(name.clone()),
                    None => Value::from(n),
                }
            }
            _ => Value::from(v),
        }
    };
    match (wire, ty) {
        (0, Type::Bool | Type::Int32 | Type::Int64 | Type::Uint32 | Type::Uint64)
        | (0, Type::Sint32 | Type::Sint64 | Type::Enum) => Ok(vec![from_varint(varint(buf)?)]),
        (1, Type::Fixed64 | Type::Sfixed64) => {
            let b: [u8; 8] = take(buf, 8)?.try_into().expect("8 bytes");
            Ok(vec![if ty == Type::Sfixed64 {
                Value::from(i64::from_le_bytes(b))
            } else {
                Value::from(u64::from_le_bytes(b))
            }])
        }
        (5, Type::Fixed32 | Type::Sfixed32) => {
            let b: [u8; 4] = take(buf, 4)?.try_into().expect("4 bytes");
            Ok(vec![if ty == Type::Sfixed32 {
                Value::from(i32::from_le_bytes(b))
            } else {
                Value::from(u32::from_le_bytes(b))
            }])
        }
        (2, _) => {
            let len = usize::try_from(varint(buf)?).map_err(|_| "a length is too large")?;
            let body = take(buf, len)?;
            match ty {
                Type::String => Ok(vec![Value::from(
                    std::str::from_utf8(body).map_err(|_| format!("{} is not UTF-8", f.name()))?,
                )]),
                Type::Bytes => Ok(vec![Value::from(hex(body))]),
                Type::Message => Ok(vec![message(s, f.type_name(), body, depth + 1)?]),
                // Packed repeated scalars.
                Type::Bool
                | Type::Int32
                | Type::Int64
                | Type::Uint32
                | Type::Uint64
                | Type::Sint32
                | Type::Sint64
                | Type::Enum => {
                    let mut inner = body;
                    let mut out = Vec::new();
                    while !inner.is_empty() {
                        out.push(from_varint(varint(&mut inner)?));
                    }
                    Ok(out)
                }
                _ => Err(format!("{} has an unexpected packed type", f.name())),
            }
        }
        _ => Err(format!("{} has wire type {wire}", f.name())),
    }
}

fn default_of(s: &Schema, f: &prost_types::FieldDescriptorProto) -> Value {
    if f.label() == Label::Repeated {
        return Value::Array(Vec::new());
    }
    match f.r#type() {
        Type::String | Type::Bytes => Value::from(""),
        Type::Bool => Value::Bool(false),
        Type::Message => Value::Null,
        Type::Enum => s
            .enums
            .get(f.type_name())
            .and_then(|e| e.get(&0))
            .map_or(Value::from(0), |n| Value::from(n.clone())),
        _ => Value::from(0),
    }
}

/// Decodes `bytes` as message `type_name` into a JSON object (a timestamp
/// into a string).
fn message(s: &Schema, type_name: &str, bytes: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("messages nest too deeply".into());
    }
    if type_name == TIMESTAMP {
        let t = prost_types::Timestamp::decode(bytes).map_err(|e| e.to_string())?;
        return Ok(Value::from(rfc3339(t.seconds, t.nanos)));
    }
    let desc = s
        .messages
        .get(type_name)
        .ok_or_else(|| format!("no message {type_name} in the proto"))?;
    let mut out = Map::new();
    let mut buf = bytes;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (number, wire) = (key >> 3, key & 7);
        let f = desc
            .field
            .iter()
            .find(|f| u64::try_from(f.number()).ok() == Some(number))
            .ok_or_else(|| format!("field {number} is not in {type_name}"))?;
        let values = scalar(s, f, wire, &mut buf, depth)?;
        if f.label() == Label::Repeated {
            let slot = out
                .entry(f.name().to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = slot {
                a.extend(values);
            }
        } else if let Some(v) = values.into_iter().last() {
            out.insert(f.name().to_string(), v);
        }
    }
    for f in &desc.field {
        // Members of a oneof (and proto3 optionals) are absent, not default.
        if f.oneof_index.is_none() && !out.contains_key(f.name()) {
            out.insert(f.name().to_string(), default_of(s, f));
        }
    }
    Ok(Value::Object(out))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The event's kind (the name of its `kind` field, e.g. `"payment"`) and
/// the top-level fields, decoded from the signed bytes.
pub fn event_json(event: &[u8]) -> Result<(String, Map<String, Value>), String> {
    let s = schema();
    let Value::Object(mut top) = message(s, EVENT, event, 0)? else {
        return Err("the event is not a message".into());
    };
    let desc = s.messages.get(EVENT).expect("Event is in the proto");
    let kinds: Vec<&str> = desc
        .field
        .iter()
        .filter(|f| f.oneof_index.is_some())
        .map(|f| f.name())
        .filter(|n| top.contains_key(*n))
        .collect();
    match kinds[..] {
        [kind] => {
            let kind = kind.to_string();
            let fields = top.remove(&kind).unwrap_or(Value::Null);
            let mut out = top;
            out.insert("fields".into(), fields);
            Ok((kind, out))
        }
        [] => Err("the event sets no kind".into()),
        _ => Err("the event sets more than one kind".into()),
    }
}

/// The name of a google.rpc.Code (`UNKNOWN_CODE` outside the enum).
pub fn code_name(code: u32) -> &'static str {
    phb_proto::code_name(i64::from(code)).unwrap_or("UNKNOWN_CODE")
}

/// One entry as a line of JSON (without the newline). Keys, in this
/// order: `sequence`, `recorded_at`, `signer`, `event_id`, `ledger_id`,
/// `budget_id`, `occurred_at`, `kind`, `fields`, `refusal` (null, or
/// `code`, `code_name`, `in_atomic_batch`, `first_in_batch`, `message`),
/// `hash`, `prev_hash`; for an event that does not decode, `kind` and
/// `fields` are null and `event_error` and `event_hex` follow.
pub fn entry_line(e: &pb::LogEntry) -> String {
    let mut parts: Vec<(&str, Value)> = Vec::with_capacity(14);
    parts.push(("sequence", Value::from(e.sequence)));
    parts.push((
        "recorded_at",
        e.recorded_at
            .as_ref()
            .map_or(Value::Null, |t| Value::from(rfc3339(t.seconds, t.nanos))),
    ));
    let se = e.signed_event.clone().unwrap_or_default();
    parts.push(("signer", Value::from(se.signer_id.clone())));
    let decoded = event_json(&se.event);
    match &decoded {
        Ok((kind, top)) => {
            for name in ["event_id", "ledger_id", "budget_id", "occurred_at"] {
                parts.push((name, top.get(name).cloned().unwrap_or(Value::Null)));
            }
            parts.push(("kind", Value::from(kind.clone())));
            parts.push(("fields", top.get("fields").cloned().unwrap_or(Value::Null)));
        }
        Err(_) => {
            for name in [
                "event_id",
                "ledger_id",
                "budget_id",
                "occurred_at",
                "kind",
                "fields",
            ] {
                parts.push((name, Value::Null));
            }
        }
    }
    parts.push((
        "refusal",
        match &e.refusal {
            None => Value::Null,
            Some(r) => serde_json::json!({
                "code": r.code,
                "code_name": code_name(r.code),
                "in_atomic_batch": r.in_atomic_batch,
                "first_in_batch": r.first_in_batch,
                "message": r.message,
            }),
        },
    ));
    parts.push(("hash", Value::from(hex(&e.hash))));
    parts.push(("prev_hash", Value::from(hex(&e.prev_hash))));
    if let Err(reason) = decoded {
        parts.push(("event_error", Value::from(reason)));
        parts.push(("event_hex", Value::from(hex(&se.event))));
    }
    let mut line = String::from("{");
    for (i, (k, v)) in parts.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&Value::from(*k).to_string());
        line.push(':');
        line.push_str(&v.to_string());
    }
    line.push('}');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::event::Kind;

    #[test]
    fn times() {
        assert_eq!(rfc3339(1_764_000_000, 0), "2025-11-24T16:00:00.000000Z");
        assert_eq!(rfc3339(0, 1_000), "1970-01-01T00:00:00.000001Z");
        assert_eq!(rfc3339(-1, 999_999_000), "1969-12-31T23:59:59.999999Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
    }

    #[test]
    fn every_field_of_the_kind_with_amounts_as_strings() {
        let ev = pb::Event {
            event_id: "ev-1".into(),
            ledger_id: "phb-test".into(),
            budget_id: "b-1".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_764_000_000,
                nanos: 0,
            }),
            kind: Some(Kind::Payment(pb::Payment {
                amount: "12.50".into(),
                payee_kind: pb::PayeeKind::PersonalAssistant as i32,
                payee_ref: "pa-1".into(),
                category: "personal_care".into(),
                ..Default::default()
            })),
        };
        let entry = pb::LogEntry {
            sequence: 7,
            recorded_at: Some(prost_types::Timestamp {
                seconds: 1_764_000_001,
                nanos: 250_000,
            }),
            prev_hash: vec![1; 32],
            hash: vec![0xab; 32],
            signed_event: Some(pb::SignedEvent {
                event: ev.encode_to_vec(),
                signer_id: "payroll-co".into(),
                signature: vec![0; 64],
            }),
            refusal: Some(pb::Refusal {
                code: 9,
                in_atomic_batch: false,
                message: "not enough money".into(),
                first_in_batch: false,
            }),
        };
        let line = entry_line(&entry);
        assert!(
            line.starts_with("{\"sequence\":7,\"recorded_at\":\"2025-11-24T16:00:01.000250Z\",\"signer\":\"payroll-co\",\"event_id\":\"ev-1\""),
            "{line}"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "payment");
        assert_eq!(v["fields"]["amount"], "12.50");
        assert_eq!(v["fields"]["payee_kind"], "PAYEE_KIND_PERSONAL_ASSISTANT");
        // Absent fields appear at their defaults.
        assert_eq!(v["fields"]["reference"], "");
        assert_eq!(v["occurred_at"], "2025-11-24T16:00:00.000000Z");
        assert_eq!(v["refusal"]["code_name"], "FAILED_PRECONDITION");
        assert_eq!(v["hash"], "ab".repeat(32));
        assert!(v.get("event_error").is_none());

        let mut bad = entry.clone();
        bad.signed_event.as_mut().unwrap().event = vec![0xff];
        let v: Value = serde_json::from_str(&entry_line(&bad)).unwrap();
        assert_eq!(v["kind"], Value::Null);
        assert_eq!(v["event_hex"], "ff");
    }

    #[test]
    fn registrations_show_roles_and_keys() {
        let ev = pb::Event {
            event_id: "r".into(),
            ledger_id: "l".into(),
            budget_id: String::new(),
            occurred_at: None,
            kind: Some(Kind::OrganisationRegistered(pb::OrganisationRegistered {
                organisation_id: "icb".into(),
                roles: vec![pb::Role::Commissioner as i32, pb::Role::Auditor as i32],
                public_key: vec![0xcd; 32],
            })),
        };
        let (kind, top) = event_json(&ev.encode_to_vec()).unwrap();
        assert_eq!(kind, "organisation_registered");
        assert_eq!(
            top["fields"]["roles"],
            serde_json::json!(["ROLE_COMMISSIONER", "ROLE_AUDITOR"])
        );
        assert_eq!(top["fields"]["public_key"], "cd".repeat(32));
        assert_eq!(top["occurred_at"], Value::Null);
    }
}
