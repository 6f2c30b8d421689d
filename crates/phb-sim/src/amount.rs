//! Amounts in integer pence: the documented grammar (docs/api.md §6
//! "Amounts", ledger.proto) read without `phb_domain::money`, how a figure
//! must print, and where an event carries its amount.
//!
//! The fuzz crate keeps a second, deliberately different reading of the
//! grammar (a byte-at-a-time automaton, `fuzz/src/oracle.rs`) and checks
//! this one against it, so neither can drift unnoticed.

use phb_domain::event::EventKind;
use phb_domain::{Money, SignedEvent};
use phb_proto::v1 as pb;
use prost::Message;

/// The largest accepted absolute value, in pence (£1,000,000,000.00).
pub const MAX_PENCE: i64 = 100_000_000_000;

/// Signed pence if `s` is an amount the documented grammar accepts
/// (`-?[0-9]{1,10}(\.[0-9]{1,2})?`, at most 1,000,000,000.00 in size),
/// else `None`. Written from the document, not from `money.rs`.
pub fn grammar_pence(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f) || f.len() > 2) {
        return None;
    }
    // At most 10 integer digits, leading zeros included (docs/api.md).
    if int.len() > 10 {
        return None;
    }
    let int = int.trim_start_matches('0');
    let pounds: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let pence: i64 = match frac {
        None => 0,
        Some(f) if f.len() == 1 => f.parse::<i64>().ok()? * 10,
        Some(f) => f.parse().ok()?,
    };
    let v = pounds * 100 + pence;
    if v > MAX_PENCE {
        return None;
    }
    Some(if neg { -v } else { v })
}

/// True if `s` is an amount an event may carry: by the grammar, and
/// positive (`delta` false) or non-zero (a review's `delta`).
pub fn is_valid(s: &str, delta: bool) -> bool {
    grammar_pence(s).is_some_and(|p| if delta { p != 0 } else { p > 0 })
}

/// How a figure of `pence` must print: optional '-', digits without
/// leading zeros (a lone "0" for under a pound), '.', exactly two digits.
/// Zero prints as "0.00", never "-0.00".
pub fn canonical(pence: i64) -> String {
    let sign = if pence < 0 { "-" } else { "" };
    let a = pence.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// A figure's pence, asserting it is at scale 2, prints canonically and
/// parses back to itself. `what` names it in the panic.
pub fn figure_pence(m: Money, what: &str) -> i64 {
    let s = m.to_string();
    assert_eq!(m.as_decimal().scale(), 2, "{what} {s:?} is not at scale 2");
    let p = parse_printed(&s).unwrap_or_else(|| panic!("{what} prints as {s:?}"));
    assert_eq!(s, canonical(p), "{what} does not print canonically");
    assert_eq!(m, Money::from_pence(p), "{what} {s:?}");
    p
}

/// Reads "-?digits.dd" (any size) back to pence.
fn parse_printed(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.')?;
    if int.is_empty()
        || frac.len() != 2
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let v = int.parse::<i64>().ok()?.checked_mul(100)? + frac.parse::<i64>().ok()?;
    Some(if neg { -v } else { v })
}

/// The amount string of a protobuf kind, if it carries one.
pub fn raw_amount(kind: &pb::event::Kind) -> Option<&str> {
    use pb::event::Kind as K;
    match kind {
        K::Allocation(a) => Some(&a.amount),
        K::Disbursement(d) => Some(&d.amount),
        K::Payment(p) => Some(&p.amount),
        K::Purchase(p) => Some(&p.amount),
        K::ReviewAdjustment(r) => Some(&r.delta),
        _ => None,
    }
}

/// The amount string a submission carries, read straight from the signed
/// bytes, and whether it is a (signed) review delta; `None` if the bytes do
/// not decode or the kind carries no amount.
pub fn signed_amount(signed: &SignedEvent) -> Option<(String, bool)> {
    let kind = pb::Event::decode(signed.event.as_slice()).ok()?.kind?;
    let delta = matches!(kind, pb::event::Kind::ReviewAdjustment(_));
    raw_amount(&kind).map(|s| (s.to_string(), delta))
}

/// The amount (or delta) a validated event carries.
pub fn amount_of(kind: &EventKind) -> Option<Money> {
    match kind {
        EventKind::Allocation { amount, .. }
        | EventKind::Disbursement { amount }
        | EventKind::Payment { amount, .. }
        | EventKind::Purchase { amount, .. } => Some(*amount),
        EventKind::ReviewAdjustment { delta, .. } => Some(*delta),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        for (s, want) in [
            ("0", Some(0)),
            ("-0", Some(0)),
            ("5", Some(500)),
            ("4.8", Some(480)),
            ("202.04", Some(20204)),
            ("-587.20", Some(-58720)),
            ("0000000001.01", Some(101)),
            ("1000000000.00", Some(MAX_PENCE)),
            ("-1000000000", Some(-MAX_PENCE)),
            ("1000000000.01", None),
            ("9999999999", None),
            ("00000000001", None),
            ("", None),
            ("-", None),
            ("1.", None),
            (".5", None),
            ("1.234", None),
            ("+1", None),
            ("--1", None),
            ("1e3", None),
            (" 1", None),
            ("١٢", None),
        ] {
            assert_eq!(grammar_pence(s), want, "{s:?}");
        }
        assert!(is_valid("0.01", false) && !is_valid("0.00", false));
        assert!(is_valid("-0.01", true) && !is_valid("-0.00", true));
        assert_eq!(canonical(0), "0.00");
        assert_eq!(canonical(-1), "-0.01");
        assert_eq!(canonical(123456), "1234.56");
    }

    #[test]
    fn figures_read_back() {
        for p in [0, 1, -1, 99, 100, -12345, MAX_PENCE, 10 * MAX_PENCE] {
            assert_eq!(figure_pence(Money::from_pence(p), "figure"), p);
        }
    }
}
