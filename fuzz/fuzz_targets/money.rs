//! Arbitrary strings through the amount parsers, against an independent
//! oracle of the documented grammar `-?[0-9]{1,10}(\.[0-9]{1,2})?` with
//! |amount| <= 1,000,000,000.00 (`phb_fuzz::oracle`), and pence arithmetic.
//!
//! Asserts, for the input as a string (if UTF-8): the simulation model's
//! reading of the grammar (`phb_sim::amount::grammar_pence`, used by the
//! property tests and the pence model) agrees with the oracle;
//! `Money::from_str` accepts exactly what the oracle accepts, with the same
//! value; `parse_positive`
//! accepts exactly the oracle's values > 0 and `parse_nonzero_delta` its
//! values != 0, each refusing with the documented error class; an accepted
//! amount prints canonically (two decimals, no "-0.00") and the printed form
//! parses back to the same value. For the first 16 bytes as two pence
//! values: `from_pence`, `checked_add`, `checked_sub`, ordering and
//! `is_negative` agree with integer arithmetic, and every result prints and
//! re-parses exactly.

#![no_main]

use libfuzzer_sys::fuzz_target;
use phb_domain::money::{parse_nonzero_delta, parse_positive, AmountError};
use phb_domain::Money;
use phb_fuzz::oracle::{oracle_pence, MAX_PENCE};
use phb_sim::amount::{canonical, figure_pence, grammar_pence};

fn check_string(s: &str) {
    let want = oracle_pence(s);
    // The simulation model's reading of the grammar (what the property
    // tests and the pence model use) is this automaton's.
    assert_eq!(
        grammar_pence(s),
        want,
        "{s:?}: the two grammar oracles differ"
    );
    match s.parse::<Money>() {
        Ok(m) => {
            let p = want.unwrap_or_else(|| panic!("{s:?} accepted; the grammar refuses it"));
            assert_eq!(m, Money::from_pence(p), "{s:?}");
            assert_eq!(figure_pence(m, s), p);
            let printed = m.to_string();
            assert_eq!(printed, canonical(p), "{s:?}");
            assert_eq!(
                printed.parse::<Money>(),
                Ok(m),
                "{printed:?} does not re-parse"
            );
        }
        Err(e) => {
            assert_eq!(want, None, "{s:?} refused ({e}); the grammar accepts it");
            assert_eq!(
                matches!(e, AmountError::Empty),
                s.is_empty(),
                "{s:?}: {e:?}"
            );
            assert!(
                !matches!(e, AmountError::NotPositive(_) | AmountError::Zero(_)),
                "{s:?}: from_str refused with {e:?}"
            );
        }
    }
    match parse_positive(s) {
        Ok(m) => {
            let p = want.expect("parse_positive accepted what from_str refuses");
            assert!(p > 0, "{s:?} accepted as positive");
            assert_eq!(m, Money::from_pence(p));
            assert_eq!(m.to_string(), canonical(p));
            assert_eq!(parse_positive(&m.to_string()), Ok(m));
        }
        Err(e) => {
            if let Some(p) = want {
                assert!(p <= 0, "{s:?} refused as positive: {e}");
                assert!(matches!(e, AmountError::NotPositive(_)), "{s:?}: {e:?}");
            }
        }
    }
    match parse_nonzero_delta(s) {
        Ok(m) => {
            let p = want.expect("parse_nonzero_delta accepted what from_str refuses");
            assert_ne!(p, 0, "{s:?} accepted as a non-zero delta");
            assert_eq!(m, Money::from_pence(p));
            assert_eq!(m.is_negative(), p < 0);
            assert_eq!(m.to_string(), canonical(p));
            assert_eq!(parse_nonzero_delta(&m.to_string()), Ok(m));
        }
        Err(e) => {
            if let Some(p) = want {
                assert_eq!(p, 0, "{s:?} refused as a delta: {e}");
                assert!(matches!(e, AmountError::Zero(_)), "{s:?}: {e:?}");
            }
        }
    }
}

fn check_money(m: Money, p: i64) {
    assert_eq!(m, Money::from_pence(p));
    assert_eq!(figure_pence(m, "sum"), p);
    assert_eq!(m.is_negative(), p < 0);
    let s = m.to_string();
    assert_eq!(s, canonical(p));
    if p.abs() <= MAX_PENCE {
        assert_eq!(s.parse::<Money>(), Ok(m), "{s:?}");
    } else {
        assert!(s.parse::<Money>().is_err(), "{s:?} is over the bound");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check_string(s);
    }
    if let Some((a, rest)) = data.split_first_chunk::<8>() {
        // Within 100 times the largest amount: far beyond any real sum.
        let bound = 100 * MAX_PENCE;
        let a = i64::from_le_bytes(*a) % bound;
        let b = rest
            .first_chunk::<8>()
            .map_or(1, |b| i64::from_le_bytes(*b) % bound);
        let (ma, mb) = (Money::from_pence(a), Money::from_pence(b));
        check_money(ma, a);
        check_money(mb, b);
        check_money(ma.checked_add(mb).expect("add overflowed"), a + b);
        check_money(ma.checked_sub(mb).expect("sub overflowed"), a - b);
        assert_eq!(ma.cmp(&mb), a.cmp(&b));
        assert_eq!(ma == mb, a == b);
    }
});
