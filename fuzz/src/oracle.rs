//! The documented amount grammar (docs/api.md §6 "Amounts", ledger.proto),
//! written independently of `phb_domain::money`: a byte-at-a-time automaton
//! for `-?[0-9]{1,10}(\.[0-9]{1,2})?` with integer pence, and the
//! 1,000,000,000.00 bound on the absolute value. The simulation model's
//! reading of the same grammar (`phb_sim::amount::grammar_pence`) is checked
//! against this one by the `money` target.

pub use phb_sim::amount::MAX_PENCE;

/// Signed pence if `s` is an accepted amount, else `None`.
pub fn oracle_pence(s: &str) -> Option<i64> {
    #[derive(Clone, Copy, PartialEq)]
    enum St {
        Start,
        Sign,
        Int(u8),
        Point,
        Frac(u8),
    }
    let mut st = St::Start;
    let mut neg = false;
    let mut pounds: i64 = 0;
    let mut pence: i64 = 0;
    for &b in s.as_bytes() {
        st = match (st, b) {
            (St::Start, b'-') => {
                neg = true;
                St::Sign
            }
            (St::Start | St::Sign, b'0'..=b'9') => {
                pounds = i64::from(b - b'0');
                St::Int(1)
            }
            (St::Int(n), b'0'..=b'9') if n < 10 => {
                pounds = pounds * 10 + i64::from(b - b'0');
                St::Int(n + 1)
            }
            (St::Int(_), b'.') => St::Point,
            (St::Point, b'0'..=b'9') => {
                pence = i64::from(b - b'0') * 10;
                St::Frac(1)
            }
            (St::Frac(1), b'0'..=b'9') => {
                pence += i64::from(b - b'0');
                St::Frac(2)
            }
            _ => return None,
        };
    }
    if !matches!(st, St::Int(_) | St::Frac(_)) {
        return None;
    }
    let v = pounds * 100 + pence;
    if v > MAX_PENCE {
        return None;
    }
    Some(if neg { -v } else { v })
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
        ] {
            assert_eq!(oracle_pence(s), want, "{s:?}");
            assert_eq!(phb_sim::amount::grammar_pence(s), want, "{s:?}");
        }
    }
}
