//! Money: exact pounds and pence on `rust_decimal`, never floating point.
//!
//! The wire form is a plain ASCII decimal string. We accept exactly
//! `-?[0-9]{1,10}(\.[0-9]{1,2})?` and nothing else: no exponents ("1e9"), no
//! "NaN", no non-ASCII digits ("١٢"), no whitespace, no "+", no third decimal
//! place (we never round a figure someone signed).

use crate::error::quote;
use rust_decimal::Decimal;
use std::fmt;
use std::str::FromStr;

/// The largest single amount accepted: £1,000,000,000.00. Budgets top out
/// around £150,000 a year; this bound keeps every sum far from overflow.
pub const MAX_AMOUNT_POUNDS: i64 = 1_000_000_000;

/// An exact sum of money in pounds, always held at scale 2 (pence).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(Decimal);

impl Money {
    /// £0.00.
    pub const ZERO: Money = Money(Decimal::from_parts(0, 0, 0, false, 2));

    /// From whole pence.
    pub fn from_pence(pence: i64) -> Money {
        Money(Decimal::new(pence, 2))
    }

    /// The exact value.
    pub fn as_decimal(&self) -> Decimal {
        self.0
    }

    /// True if below zero.
    pub fn is_negative(&self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }

    /// Exact addition; `None` only on overflow (unreachable within the input bounds).
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money::at_scale)
    }

    /// Exact subtraction; `None` only on overflow.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money::at_scale)
    }

    fn at_scale(mut d: Decimal) -> Money {
        // Inputs have at most 2 decimal places, so sums do too: rescale only
        // pads, it never rounds.
        debug_assert!(d.scale() <= 2);
        d.rescale(2);
        Money(d)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Scale is always 2, so this prints e.g. "25.80", "0.00", "-3.10".
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "£{}", self.0)
    }
}

/// Why an amount string was refused. Each variant carries the input as the
/// message quotes it (`error::quote`: escaped, at most 64 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Empty string.
    #[error("amount is empty; give pounds as a decimal string such as \"202.04\"")]
    Empty,
    /// Not of the accepted shape.
    #[error("amount {0} is not a plain decimal number of pounds; use ASCII digits with at most 2 decimal places, e.g. \"202.04\" (no exponent, sign '+', spaces or separators)")]
    Malformed(String),
    /// More than two decimal places.
    #[error("amount {0} has more than 2 decimal places; amounts are exact pounds and pence")]
    TooPrecise(String),
    /// Above the bound, or more than 10 integer digits.
    #[error("amount {0} is larger than the largest accepted amount (1000000000.00, at most 10 digits before the point)")]
    TooLarge(String),
    /// Zero or negative where a positive amount is required.
    #[error("amount {0} must be greater than zero")]
    NotPositive(String),
    /// Zero where a non-zero delta is required.
    #[error("delta {0} must not be zero")]
    Zero(String),
}

/// Parses a signed amount of the accepted shape.
fn parse_signed(s: &str) -> Result<Money, AmountError> {
    if s.is_empty() {
        return Err(AmountError::Empty);
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_ascii_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !all_ascii_digits(int) || frac.is_some_and(|f| !all_ascii_digits(f)) {
        return Err(AmountError::Malformed(quote(s)));
    }
    if frac.is_some_and(|f| f.len() > 2) {
        return Err(AmountError::TooPrecise(quote(s)));
    }
    // At most 10 integer digits (leading zeros count), so the accepted shape
    // is exactly -?[0-9]{1,10}(\.[0-9]{1,2})? and auditors can re-check it.
    if int.len() > 10 {
        return Err(AmountError::TooLarge(quote(s)));
    }
    let d = Decimal::from_str_exact(s).map_err(|_| AmountError::Malformed(quote(s)))?;
    if d.abs() > Decimal::from(MAX_AMOUNT_POUNDS) {
        return Err(AmountError::TooLarge(quote(s)));
    }
    Ok(Money::at_scale(d))
}

/// Parses an amount that must be greater than zero.
pub fn parse_positive(s: &str) -> Result<Money, AmountError> {
    let m = parse_signed(s)?;
    if m.is_negative() || m.0.is_zero() {
        return Err(AmountError::NotPositive(quote(s)));
    }
    Ok(m)
}

/// Parses an amount that must be zero or more (a contingency fund).
pub fn parse_non_negative(s: &str) -> Result<Money, AmountError> {
    let m = parse_signed(s)?;
    if m.is_negative() {
        return Err(AmountError::NotPositive(quote(s)));
    }
    Ok(m)
}

/// Parses a signed, non-zero amount (a review delta).
pub fn parse_nonzero_delta(s: &str) -> Result<Money, AmountError> {
    let m = parse_signed(s)?;
    if m.0.is_zero() {
        return Err(AmountError::Zero(quote(s)));
    }
    Ok(m)
}

impl FromStr for Money {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_signed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_pounds_and_pence() {
        assert_eq!(parse_positive("202.04").unwrap().to_string(), "202.04");
        assert_eq!(parse_positive("5").unwrap().to_string(), "5.00");
        assert_eq!(parse_positive("4.8").unwrap().to_string(), "4.80");
        assert_eq!(parse_positive("0.01").unwrap(), Money::from_pence(1));
        assert_eq!(
            parse_nonzero_delta("-587.20").unwrap(),
            Money::from_pence(-58720)
        );
        assert_eq!(
            parse_positive("1000000000.00").unwrap().to_string(),
            "1000000000.00"
        );
    }

    #[test]
    fn refuses_what_is_not_exact_pounds() {
        for bad in [
            "", "1e9", "NaN", "inf", "١٢", "+5", " 5", "5 ", "1,000", "0.001", "1.", ".5", "--1",
            "0x10", "1_000",
        ] {
            assert!(parse_positive(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            parse_positive("0.001"),
            Err(AmountError::TooPrecise(_))
        ));
        assert!(matches!(
            parse_positive("-5"),
            Err(AmountError::NotPositive(_))
        ));
        assert!(matches!(
            parse_positive("0.00"),
            Err(AmountError::NotPositive(_))
        ));
        assert!(matches!(
            parse_positive("1000000000.01"),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            parse_positive("99999999999999999999999999999999"),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            parse_nonzero_delta("-0.00"),
            Err(AmountError::Zero(_))
        ));
    }

    #[test]
    fn sums_are_exact() {
        let mut total = Money::ZERO;
        for _ in 0..4 {
            total = total
                .checked_add(parse_positive("202.04").unwrap())
                .unwrap();
        }
        assert_eq!(total.to_string(), "808.16");
        let left = parse_positive("4800.00")
            .unwrap()
            .checked_sub(parse_positive("4774.20").unwrap())
            .unwrap();
        assert_eq!(left.to_string(), "25.80");
    }
}
