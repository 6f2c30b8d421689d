//! An independent reading of the protobuf wire format of `phb.ledger.v1.Event`
//! (ledger.proto), to check what docs/api.md §6 promises of accepted event
//! bytes: they contain **only fields this ledger knows**, each singular
//! field at most once and at most one `kind`, so no byte of a signed event
//! escapes validation (a second occurrence of a field would be silently
//! dropped by the decoder, yet kept in the log).

/// How a field is encoded.
#[derive(Clone, Copy)]
enum Ty {
    /// A varint (int32, int64, enum).
    Varint,
    /// A length-delimited string or bytes.
    Bytes,
    /// A repeated enum: varints or packed.
    Repeated,
    /// A sub-message.
    Msg(&'static [(u32, Ty)]),
    /// A repeated sub-message.
    Msgs(&'static [(u32, Ty)]),
}

const TIMESTAMP: &[(u32, Ty)] = &[(1, Ty::Varint), (2, Ty::Varint)];
const ORG_REGISTERED: &[(u32, Ty)] = &[(1, Ty::Bytes), (2, Ty::Repeated), (3, Ty::Bytes)];
const KEY_ROTATED: &[(u32, Ty)] = &[(1, Ty::Bytes), (2, Ty::Bytes)];
const BUDGET_OPENED: &[(u32, Ty)] = &[
    (1, Ty::Bytes),
    (2, Ty::Bytes),
    (3, Ty::Bytes),
    (4, Ty::Bytes),
    (5, Ty::Varint),
    (6, Ty::Bytes),
    (7, Ty::Bytes),
    (8, Ty::Bytes),
];
const PLAN_LINE: &[(u32, Ty)] = &[
    (1, Ty::Bytes),
    (2, Ty::Bytes),
    (3, Ty::Bytes),
    (4, Ty::Bytes),
];
const CARE_PLAN: &[(u32, Ty)] = &[
    (1, Ty::Bytes),
    (2, Ty::Msgs(PLAN_LINE)),
    (3, Ty::Bytes),
    (4, Ty::Bytes),
    (5, Ty::Bytes),
    (6, Ty::Bytes),
];
const ALLOCATION: &[(u32, Ty)] = &[(1, Ty::Bytes), (2, Ty::Varint)];
const ONE_STRING: &[(u32, Ty)] = &[(1, Ty::Bytes)];
const PAYMENT: &[(u32, Ty)] = &[
    (1, Ty::Bytes),
    (2, Ty::Varint),
    (3, Ty::Bytes),
    (4, Ty::Bytes),
    (5, Ty::Bytes),
    (6, Ty::Bytes),
    (7, Ty::Bytes),
    (8, Ty::Bytes),
    (9, Ty::Bytes),
];
const PURCHASE: &[(u32, Ty)] = &[
    (1, Ty::Bytes),
    (2, Ty::Bytes),
    (3, Ty::Bytes),
    (4, Ty::Bytes),
    (5, Ty::Bytes),
    (6, Ty::Varint),
];
const REVIEW: &[(u32, Ty)] = &[(1, Ty::Bytes), (2, Ty::Bytes)];
const EVENT: &[(u32, Ty)] = &[
    (1, Ty::Bytes),
    (2, Ty::Bytes),
    (3, Ty::Bytes),
    (4, Ty::Msg(TIMESTAMP)),
    (10, Ty::Msg(ORG_REGISTERED)),
    (11, Ty::Msg(KEY_ROTATED)),
    (12, Ty::Msg(BUDGET_OPENED)),
    (13, Ty::Msg(ALLOCATION)),
    (14, Ty::Msg(ONE_STRING)),
    (15, Ty::Msg(PAYMENT)),
    (16, Ty::Msg(PURCHASE)),
    (17, Ty::Msg(REVIEW)),
    (18, Ty::Msg(ONE_STRING)),
    (19, Ty::Msg(CARE_PLAN)),
    (20, Ty::Msg(ONE_STRING)),
    (21, Ty::Msg(ONE_STRING)),
    (22, Ty::Msg(&[])),
    (23, Ty::Msg(ONE_STRING)),
    (24, Ty::Msg(ALLOCATION)),
    (25, Ty::Msg(REFUND)),
    (26, Ty::Msg(AGREEMENT)),
    (27, Ty::Msg(CARD)),
    (28, Ty::Msg(ONE_STRING)),
    (29, Ty::Msg(ONE_STRING)),
    (30, Ty::Msg(REVIEW_RECORDED)),
];
const CARD: &[(u32, Ty)] = &[
    (1, Ty::Bytes),
    (2, Ty::Bytes),
    (3, Ty::Varint),
    (4, Ty::Bytes),
    (5, Ty::Varint),
];
const REVIEW_RECORDED: &[(u32, Ty)] = &[(1, Ty::Bytes), (2, Ty::Varint), (3, Ty::Bytes)];
const AGREEMENT: &[(u32, Ty)] = &[
    (1, Ty::Bytes),
    (2, Ty::Bytes),
    (3, Ty::Varint),
    (4, Ty::Varint),
    (5, Ty::Bytes),
    (6, Ty::Varint),
    (7, Ty::Bytes),
    (8, Ty::Varint),
    (9, Ty::Bytes),
    (10, Ty::Bytes),
    (11, Ty::Varint),
];
const REFUND: &[(u32, Ty)] = &[(1, Ty::Varint), (2, Ty::Bytes)];

fn varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.get(*at).ok_or("truncated varint")?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn walk(b: &[u8], schema: &[(u32, Ty)], is_event: bool) -> Result<(), String> {
    let mut at = 0;
    let mut seen: Vec<u32> = Vec::new();
    let mut kinds = 0;
    while at < b.len() {
        let key = varint(b, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        let field = u32::try_from(field).map_err(|_| format!("field number {field}"))?;
        let ty = schema
            .iter()
            .find(|(n, _)| *n == field)
            .map(|(_, t)| *t)
            .ok_or_else(|| format!("unknown field {field}"))?;
        let repeated = matches!(ty, Ty::Repeated | Ty::Msgs(_));
        if !repeated {
            if seen.contains(&field) {
                return Err(format!("field {field} occurs twice"));
            }
            seen.push(field);
        }
        if is_event && field >= 10 {
            kinds += 1;
            if kinds > 1 {
                return Err("more than one kind".into());
            }
        }
        match (ty, wire) {
            (Ty::Varint | Ty::Repeated, 0) => {
                varint(b, &mut at)?;
            }
            (Ty::Bytes | Ty::Repeated | Ty::Msg(_) | Ty::Msgs(_), 2) => {
                let n = usize::try_from(varint(b, &mut at)?).map_err(|e| e.to_string())?;
                let end = at
                    .checked_add(n)
                    .filter(|e| *e <= b.len())
                    .ok_or("truncated")?;
                let body = &b[at..end];
                match ty {
                    Ty::Msg(sub) | Ty::Msgs(sub) => walk(body, sub, false)?,
                    Ty::Repeated => {
                        let mut i = 0;
                        while i < body.len() {
                            varint(body, &mut i)?;
                        }
                    }
                    _ => {}
                }
                at = end;
            }
            _ => return Err(format!("field {field} has wire type {wire}")),
        }
    }
    Ok(())
}

/// `Ok` if `bytes` hold only known fields of `Event`, each singular field
/// at most once and at most one `kind`; else what is wrong.
pub fn only_known_fields(bytes: &[u8]) -> Result<(), String> {
    walk(bytes, EVENT, true)
}

/// The raw fields (key, length and value bytes) of a message, in order.
fn raw_fields(b: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let start = at;
        let key = varint(b, &mut at).ok()?;
        match key & 7 {
            0 => {
                varint(b, &mut at).ok()?;
            }
            2 => {
                let n = usize::try_from(varint(b, &mut at).ok()?).ok()?;
                at = at.checked_add(n).filter(|e| *e <= b.len())?;
            }
            _ => return None,
        }
        out.push((key >> 3, &b[start..at]));
    }
    Some(out)
}

/// Other encodings of the same event as `bytes`, of the same length: the
/// top-level fields in reverse order, and the `kind` message's fields in
/// reverse order. Protobuf decoders accept any field order, so each decodes
/// to the same message; none is the canonical encoding unless it equals it.
pub fn reorderings(bytes: &[u8]) -> Vec<Vec<u8>> {
    let Some(fields) = raw_fields(bytes) else {
        return Vec::new();
    };
    let mut out = vec![fields
        .iter()
        .rev()
        .flat_map(|(_, f)| f.iter().copied())
        .collect()];
    for (i, (number, field)) in fields.iter().enumerate() {
        if *number < 10 {
            continue;
        }
        // key, length, body: the body starts after two varints.
        let mut at = 0;
        let (Ok(_), Ok(_)) = (varint(field, &mut at), varint(field, &mut at)) else {
            continue;
        };
        let Some(inner) = raw_fields(&field[at..]) else {
            continue;
        };
        let mut kind = field[..at].to_vec();
        kind.extend(inner.iter().rev().flat_map(|(_, f)| f.iter().copied()));
        let mut v = Vec::with_capacity(bytes.len());
        for (j, (_, f)) in fields.iter().enumerate() {
            v.extend_from_slice(if i == j { &kind } else { f });
        }
        out.push(v);
    }
    out
}
