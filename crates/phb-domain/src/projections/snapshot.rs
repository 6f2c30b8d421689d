//! Snapshots of projections: a small, hand-rolled, deterministic binary
//! codec, so a later restart can load the read model instead of replaying
//! the whole log. Pure: bytes in, bytes out, no IO.
//!
//! # Format
//!
//! A snapshot of a projection is its header — a 4-byte ASCII tag naming the
//! projection (`BALS`, `DIRS`, `HOLD`, `STMT`, `FLGS` for the flags, `RPTS`
//! for the reports, `RDMD` for the `ReadModel`) and its format version as a
//! `u32` — then its fields, in a fixed order, made of:
//!
//! * `u8`, `u16`, `u32`, `u64`, `i64`: fixed width, little-endian;
//! * `bool`: one byte, 0 or 1;
//! * a string: its byte length as a `u32`, then that many bytes of UTF-8;
//! * `Money`: its value in pence (it is always held at scale 2) as an
//!   `i128`, little-endian, at most `2^96 − 1` in magnitude (what a
//!   `Decimal` can hold);
//! * a `Date`: year `u16`, month `u8`, day `u8`, a real day of 2000–2199;
//! * an `Option`: 0, or 1 followed by the value;
//! * a list: its length as a `u32`, then the items in order; a map: the same,
//!   in strictly ascending key order (a map whose values carry their own key,
//!   such as budgets by id, writes only the values); a set: a map of keys
//!   alone;
//! * an enum: a one-byte tag (the tables below, or beside the code for an
//!   enum private to one module; append only);
//! * a key or hash: its 32 bytes.
//!
//! Each projection's layout is in a doc comment beside its `FORMAT`. The
//! `ReadModel` nests the snapshots of its parts, each with its own header.
//! Decoding checks the tag and version first and that nothing is left over
//! at the end.
//!
//! **Canonical**: the encoding is a function of the value (maps are ordered,
//! money is written in pence, a shared signer id is written once), so equal
//! projections give equal bytes; decoding refuses every other spelling (a
//! `bool` of 2, keys out of order, an out-of-range amount, a non-date), so
//! bytes that decode re-encode to themselves.
//!
//! **Bounded**: every length and count is checked against the bytes left
//! before anything is taken or allocated (an item takes at least one byte,
//! and no list reserves more memory than there are bytes left), and nothing
//! on the decoding path can panic: a corrupt or hostile snapshot is an
//! `Err`, never an abort. Decoding also checks what later folds index by
//! or divide by (a plan's figures match its lines, a spending's charge
//! names lines of its plan, a flag rule's thresholds are ones
//! `ControlsConfigured` can set, its weeks start on a Monday and its
//! service periods do not end before they start), so a decoded projection
//! folds like the original.
//!
//! **Versioned**: change a projection's layout (or an enum table other than
//! by appending) and bump its version; an old snapshot is then refused with
//! `SnapshotError::BadVersion` and the caller rebuilds from the log.

use super::flags::{FlagCode, Severity};
use crate::chain::parse_public_key;
use crate::event::{
    parse_date, AgreementSpec, Date, FlagOutcome, Management, PayeeKind, PlanLineSpec, PlanSpec,
    Role, Sector, Unit,
};
use crate::ledger::{Budget, CarePlan, Charge, Head, Spending};
use crate::money::Money;
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeMap;

/// What a snapshot starts with: the projection's tag and format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Four ASCII bytes naming the projection.
    pub tag: [u8; 4],
    /// The layout's version.
    pub version: u32,
}

/// Why bytes are not a snapshot this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The input ends (or a length or count points) past its end.
    #[error("snapshot truncated: {needed} bytes needed at byte {at}, {remaining} left")]
    Truncated {
        /// Where the value starts.
        at: usize,
        /// How many bytes it needs (at least).
        needed: usize,
        /// How many are left.
        remaining: usize,
    },
    /// Not a snapshot of this projection.
    #[error("snapshot tag {} is not {}", show_tag(.found), show_tag(.expected))]
    BadTag {
        /// The tag expected.
        expected: [u8; 4],
        /// The tag found.
        found: [u8; 4],
    },
    /// A snapshot of this projection in a layout this build does not read.
    #[error("snapshot {} has version {found}; this build reads version {expected}", show_tag(.tag))]
    BadVersion {
        /// The projection's tag.
        tag: [u8; 4],
        /// The version this build reads.
        expected: u32,
        /// The version found.
        found: u32,
    },
    /// A string that is not UTF-8.
    #[error("snapshot string at byte {at} is not UTF-8")]
    BadUtf8 {
        /// Where the string's bytes start.
        at: usize,
    },
    /// A value that no projection holds (or a non-canonical spelling of one).
    #[error("snapshot value at byte {at} is invalid: {what}")]
    BadValue {
        /// Where the value starts.
        at: usize,
        /// What is wrong with it.
        what: &'static str,
    },
    /// Bytes after the end of the snapshot.
    #[error("{count} trailing bytes after the snapshot ends at byte {at}")]
    TrailingBytes {
        /// Where the snapshot ends.
        at: usize,
        /// How many bytes follow.
        count: usize,
    },
}

fn show_tag(tag: &[u8; 4]) -> String {
    tag.escape_ascii().to_string()
}

/// The largest magnitude a `Decimal` mantissa (so a `Money`, in pence) holds.
const MAX_PENCE_MAGNITUDE: u128 = (1 << 96) - 1;

/// A `Money`'s exact value in pence.
fn pence(m: Money) -> i128 {
    let mut d = m.as_decimal();
    // Money is always at scale 2; rescaling only guards the invariant.
    d.rescale(2);
    d.mantissa()
}

/// The `Money` of `pence` pence, if a `Money` can hold it.
fn money_of_pence(pence_value: i128) -> Option<Money> {
    if let Ok(p) = i64::try_from(pence_value) {
        return Some(Money::from_pence(p));
    }
    let magnitude = pence_value.unsigned_abs();
    if magnitude > MAX_PENCE_MAGNITUDE {
        return None;
    }
    // Money has no constructor wider than i64 pence: build the magnitude
    // as high × 2^48 + low by exact doublings (every partial sum is at most
    // the magnitude, so nothing rounds), then negate.
    let high = i64::try_from(magnitude >> 48).ok()?;
    let low = i64::try_from(magnitude & ((1 << 48) - 1)).ok()?;
    let mut m = Money::from_pence(high);
    for _ in 0..48 {
        m = m.checked_add(m)?;
    }
    m = m.checked_add(Money::from_pence(low))?;
    if pence_value < 0 {
        m = Money::ZERO.checked_sub(m)?;
    }
    (pence(m) == pence_value).then_some(m)
}

/// Appends a snapshot to a byte vector.
#[derive(Debug)]
pub struct SnapshotWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> SnapshotWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> SnapshotWriter<'a> {
        SnapshotWriter { out }
    }

    /// The tag and version.
    pub fn header(&mut self, format: Format) {
        self.out.extend_from_slice(&format.tag);
        self.u32(format.version);
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// Eight bytes, little-endian, two's complement.
    pub fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// 0 or 1.
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// 32 raw bytes (a key or a hash).
    pub fn bytes32(&mut self, v: &[u8; 32]) {
        self.out.extend_from_slice(v);
    }

    /// A length or count. Nothing a projection holds comes near 2^32 items
    /// or bytes (ids are at most 128 bytes; a statement row is one entry).
    pub fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("snapshot lengths fit in a u32"));
    }

    /// Byte length, then UTF-8.
    pub fn str(&mut self, s: &str) {
        self.len(s.len());
        self.out.extend_from_slice(s.as_bytes());
    }

    /// Pence as an `i128`, little-endian.
    pub fn money(&mut self, m: Money) {
        self.out.extend_from_slice(&pence(m).to_le_bytes());
    }

    /// Year, month, day.
    pub fn date(&mut self, d: Date) {
        self.u16(d.year);
        self.u8(d.month);
        self.u8(d.day);
    }

    /// 0, or 1 then the value.
    pub fn option<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.bool(false),
            Some(v) => {
                self.bool(true);
                f(self, v);
            }
        }
    }

    /// The count, then each item (a map's in key order).
    pub fn seq<I>(&mut self, items: I, mut f: impl FnMut(&mut Self, I::Item))
    where
        I: IntoIterator,
        I::IntoIter: ExactSizeIterator,
    {
        let items = items.into_iter();
        self.len(items.len());
        for item in items {
            f(self, item);
        }
    }
}

/// Reads a snapshot from a byte slice; every read checks the bytes left
/// first, so none can panic or allocate beyond the input.
#[derive(Debug)]
pub struct SnapshotReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type Read<T> = Result<T, SnapshotError>;

impl<'a> SnapshotReader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> SnapshotReader<'a> {
        SnapshotReader { bytes, pos: 0 }
    }

    /// Decodes the whole of `bytes` with `f`: trailing bytes are an error.
    pub fn read_all<T>(bytes: &'a [u8], f: impl FnOnce(&mut Self) -> Read<T>) -> Read<T> {
        let mut r = SnapshotReader::new(bytes);
        let v = f(&mut r)?;
        r.finish()?;
        Ok(v)
    }

    /// Where the next read starts.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Ok if every byte was read.
    pub fn finish(self) -> Read<()> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(SnapshotError::TrailingBytes {
                at: self.pos,
                count,
            }),
        }
    }

    /// The error for a bad value starting at `at`.
    pub fn bad(at: usize, what: &'static str) -> SnapshotError {
        SnapshotError::BadValue { at, what }
    }

    fn truncated(&self, needed: usize) -> SnapshotError {
        SnapshotError::Truncated {
            at: self.pos,
            needed,
            remaining: self.remaining(),
        }
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Read<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.truncated(n));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Read<[u8; N]> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Checks the tag and version.
    pub fn header(&mut self, format: Format) -> Read<()> {
        let found = self.array::<4>()?;
        if found != format.tag {
            return Err(SnapshotError::BadTag {
                expected: format.tag,
                found,
            });
        }
        let version = self.u32()?;
        if version != format.version {
            return Err(SnapshotError::BadVersion {
                tag: format.tag,
                expected: format.version,
                found: version,
            });
        }
        Ok(())
    }

    /// One byte.
    pub fn u8(&mut self) -> Read<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self) -> Read<u16> {
        self.array().map(u16::from_le_bytes)
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> Read<u32> {
        self.array().map(u32::from_le_bytes)
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self) -> Read<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// Eight bytes, little-endian, two's complement.
    pub fn i64(&mut self) -> Read<i64> {
        self.array().map(i64::from_le_bytes)
    }

    /// 0 or 1; anything else is refused.
    pub fn bool(&mut self) -> Read<bool> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Self::bad(at, "a bool is 0 or 1")),
        }
    }

    /// 32 raw bytes.
    pub fn bytes32(&mut self) -> Read<[u8; 32]> {
        self.array()
    }

    /// A count of items that take at least one byte each: at most the
    /// bytes left.
    pub fn count(&mut self) -> Read<usize> {
        let n = self.u32()? as usize;
        if n > self.remaining() {
            return Err(self.truncated(n));
        }
        Ok(n)
    }

    /// A string, borrowed from the input.
    pub fn str(&mut self) -> Read<&'a str> {
        let n = self.u32()? as usize;
        let at = self.pos;
        std::str::from_utf8(self.take(n)?).map_err(|_| SnapshotError::BadUtf8 { at })
    }

    /// A string.
    pub fn string(&mut self) -> Read<String> {
        self.str().map(str::to_string)
    }

    /// An amount: pence within what a `Money` holds.
    pub fn money(&mut self) -> Read<Money> {
        let at = self.pos;
        let p = i128::from_le_bytes(self.array()?);
        money_of_pence(p).ok_or_else(|| Self::bad(at, "an amount beyond what Money holds"))
    }

    /// A real calendar date of 2000–2199.
    pub fn date(&mut self) -> Read<Date> {
        let at = self.pos;
        let d = Date {
            year: self.u16()?,
            month: self.u8()?,
            day: self.u8()?,
        };
        // The same rule as every date in an event.
        match parse_date("date", &d.to_string()) {
            Ok(parsed) if parsed == d => Ok(d),
            _ => Err(Self::bad(
                at,
                "not a date between 2000-01-01 and 2199-12-31",
            )),
        }
    }

    /// 0, or 1 then a value.
    pub fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> Read<T>) -> Read<Option<T>> {
        if self.bool()? {
            f(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A count, then that many items (each at least one byte).
    pub fn seq<T>(&mut self, mut f: impl FnMut(&mut Self) -> Read<T>) -> Read<Vec<T>> {
        let n = self.count()?;
        // Reserve no more memory than there are bytes left.
        let size = std::mem::size_of::<T>().max(1);
        let mut v = Vec::with_capacity(n.min(self.remaining() / size));
        for _ in 0..n {
            v.push(f(self)?);
        }
        Ok(v)
    }

    /// A count, then that many entries in strictly ascending key order.
    pub fn map<K: Ord, V>(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Read<(K, V)>,
    ) -> Read<BTreeMap<K, V>> {
        let n = self.count()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let at = self.pos;
            let (k, v) = f(self)?;
            if m.last_key_value().is_some_and(|(last, _)| *last >= k) {
                return Err(Self::bad(at, "map keys out of order or repeated"));
            }
            m.insert(k, v);
        }
        Ok(m)
    }
}

/// One-byte tags of an enum, both ways, from one table: the encoding match
/// is exhaustive, so a new variant does not compile until it has a tag.
macro_rules! tags {
    ($ty:ty, $write:ident, $read:ident, $what:literal { $($variant:ident = $tag:literal),+ $(,)? }) => {
        impl SnapshotWriter<'_> {
            pub(super) fn $write(&mut self, v: $ty) {
                self.u8(match v { $(<$ty>::$variant => $tag),+ })
            }
        }
        impl SnapshotReader<'_> {
            pub(super) fn $read(&mut self) -> Read<$ty> {
                let at = self.pos;
                match self.u8()? {
                    $($tag => Ok(<$ty>::$variant),)+
                    _ => Err(Self::bad(at, $what)),
                }
            }
        }
    };
}

tags!(Management, management, read_management, "unknown management" {
    DirectPayment = 0,
    ThirdParty = 1,
    Notional = 2,
});

tags!(Role, role, read_role, "unknown role" {
    Commissioner = 0,
    PayrollProvider = 1,
    ThirdParty = 2,
    AccountProvider = 3,
    Auditor = 4,
    PlanFacilitator = 5,
});

tags!(PayeeKind, payee_kind, read_payee_kind, "unknown payee kind" {
    PersonalAssistant = 0,
    Provider = 1,
    TaxAuthority = 2,
    PensionScheme = 3,
});

tags!(Sector, sector, read_sector, "unknown sector" {
    Nhs = 0,
    LocalAuthority = 1,
    Independent = 2,
    Voluntary = 3,
    Individual = 4,
});

tags!(Unit, unit, read_unit, "unknown unit" {
    Hour = 0,
    Day = 1,
    Week = 2,
    Item = 3,
});

tags!(FlagCode, flag_code, read_flag_code, "unknown flag code" {
    Surplus = 0,
    DuplicatePayment = 1,
    AfterDeath = 2,
    DuringAdmission = 3,
    OverbookedWorker = 4,
    Spike = 5,
    CashWithoutReceipt = 6,
    ReviewOverdue = 7,
    RepeatedRefusals = 8,
    ExternalMatch = 9,
});

tags!(Severity, severity, read_severity, "unknown severity" {
    Low = 0,
    Medium = 1,
    High = 2,
});

tags!(FlagOutcome, flag_outcome, read_flag_outcome, "unknown flag outcome" {
    Confirmed = 0,
    Dismissed = 1,
});

/// The domain types projections hold.
impl SnapshotWriter<'_> {
    /// Sequence, hash, recorded at.
    pub(super) fn head(&mut self, h: &Head) {
        self.u64(h.sequence);
        self.bytes32(&h.hash);
        self.i64(h.recorded_at_micros);
    }

    /// Its 32 bytes.
    pub(super) fn key(&mut self, k: &VerifyingKey) {
        self.bytes32(k.as_bytes());
    }

    /// Every field, in declaration order; maps by key, agreements without
    /// their key (it is the agreement's id).
    pub(super) fn budget(&mut self, b: &Budget) {
        self.str(&b.id);
        self.str(&b.holder_ref);
        self.str(&b.commissioner_id);
        self.date(b.period_start);
        self.date(b.period_end);
        self.management(b.management);
        self.option(b.funds_holder_id.as_deref(), Self::str);
        self.option(b.payroll_provider_id.as_deref(), Self::str);
        self.option(b.plan_facilitator_id.as_deref(), Self::str);
        self.option(b.plan.as_ref(), Self::care_plan);
        self.bool(b.suspended);
        self.option(b.died_on, Self::date);
        self.seq(
            b.spendings.iter().collect::<Vec<_>>(),
            |w, (sequence, s)| {
                w.u64(*sequence);
                w.spending(s);
            },
        );
        self.seq(b.agreements.values(), Self::agreement);
        self.option(b.in_hospital_since, Self::date);
        self.option(b.last_review, Self::date);
        self.money(b.allocated);
        self.money(b.paid_in);
        self.money(b.spent);
        self.bool(b.stopped);
        self.u64(b.last_sequence);
    }

    fn care_plan(&mut self, p: &CarePlan) {
        self.plan_spec(&p.spec);
        self.u64(p.approved_at);
        self.str(&p.approved_by);
        self.seq(&p.line_spent, |w, m| w.money(*m));
        self.money(p.contingency_used);
    }

    fn plan_spec(&mut self, s: &PlanSpec) {
        self.str(&s.plan_id);
        self.seq(&s.lines, |w, l| {
            w.str(&l.line_id);
            w.str(&l.category);
            w.money(l.annual);
            w.str(&l.description);
        });
        self.money(s.contingency);
        self.date(s.valid_from);
        self.date(s.valid_to);
        self.date(s.review_due);
    }

    fn spending(&mut self, s: &Spending) {
        self.str(&s.signer_id);
        self.money(s.amount);
        self.money(s.refunded);
        let (charged_to, charge) = &s.charge;
        self.u64(*charged_to);
        self.charge(charge);
    }

    fn charge(&mut self, c: &Charge) {
        self.seq(&c.lines, |w, (line, m)| {
            w.len(*line);
            w.money(*m);
        });
        self.money(c.contingency);
    }

    fn agreement(&mut self, a: &AgreementSpec) {
        self.str(&a.agreement_id);
        self.str(&a.payee_ref);
        self.payee_kind(a.payee_kind);
        self.sector(a.payee_sector);
        self.str(&a.category);
        self.unit(a.unit);
        self.money(a.rate);
        self.u32(a.max_units_per_week);
        self.date(a.valid_from);
        self.date(a.valid_to);
        self.bool(a.connected_person);
    }
}

impl SnapshotReader<'_> {
    /// What `SnapshotWriter::head` wrote.
    pub(super) fn head(&mut self) -> Read<Head> {
        Ok(Head {
            sequence: self.u64()?,
            hash: self.bytes32()?,
            recorded_at_micros: self.i64()?,
        })
    }

    /// Any ed25519 point (the root key is configured, not registered).
    pub(super) fn any_key(&mut self) -> Read<VerifyingKey> {
        let at = self.pos;
        VerifyingKey::from_bytes(&self.bytes32()?)
            .map_err(|_| Self::bad(at, "not an ed25519 public key"))
    }

    /// A key as registration accepts it (`chain::parse_public_key`).
    pub(super) fn strong_key(&mut self) -> Read<VerifyingKey> {
        let at = self.pos;
        parse_public_key(&self.bytes32()?)
            .ok_or_else(|| Self::bad(at, "not a valid, strong ed25519 public key"))
    }

    /// What `SnapshotWriter::budget` wrote.
    pub(super) fn budget(&mut self) -> Read<Budget> {
        let at = self.pos;
        let b = Budget {
            id: self.string()?,
            holder_ref: self.string()?,
            commissioner_id: self.string()?,
            period_start: self.date()?,
            period_end: self.date()?,
            management: self.read_management()?,
            funds_holder_id: self.option(Self::string)?,
            payroll_provider_id: self.option(Self::string)?,
            plan_facilitator_id: self.option(Self::string)?,
            plan: self.option(Self::care_plan)?,
            suspended: self.bool()?,
            died_on: self.option(Self::date)?,
            spendings: self
                .map(|r| Ok((r.u64()?, r.spending()?)))?
                .into_iter()
                .collect(),
            agreements: self.map(|r| {
                let a = r.agreement()?;
                Ok((a.agreement_id.clone(), a))
            })?,
            in_hospital_since: self.option(Self::date)?,
            last_review: self.option(Self::date)?,
            allocated: self.money()?,
            paid_in: self.money()?,
            spent: self.money()?,
            stopped: self.bool()?,
            last_sequence: self.u64()?,
        };
        // A refund gives back to the lines its spending's charge names, on
        // the plan in force if the charge was made on it.
        if let Some(plan) = &b.plan {
            let lines = plan.line_spent.len();
            let fits = b
                .spendings
                .values()
                .filter(|s| s.charge.0 == plan.approved_at)
                .all(|s| s.charge.1.lines.iter().all(|(i, _)| *i < lines));
            if !fits {
                return Err(Self::bad(
                    at,
                    "a spending's charge names a line its plan does not have",
                ));
            }
        }
        Ok(b)
    }

    fn care_plan(&mut self) -> Read<CarePlan> {
        let at = self.pos;
        let p = CarePlan {
            spec: self.plan_spec()?,
            approved_at: self.u64()?,
            approved_by: self.string()?,
            line_spent: self.seq(Self::money)?,
            contingency_used: self.money()?,
        };
        if p.line_spent.len() != p.spec.lines.len() {
            return Err(Self::bad(at, "a plan's figures do not match its lines"));
        }
        Ok(p)
    }

    fn plan_spec(&mut self) -> Read<PlanSpec> {
        Ok(PlanSpec {
            plan_id: self.string()?,
            lines: self.seq(|r| {
                Ok(PlanLineSpec {
                    line_id: r.string()?,
                    category: r.string()?,
                    annual: r.money()?,
                    description: r.string()?,
                })
            })?,
            contingency: self.money()?,
            valid_from: self.date()?,
            valid_to: self.date()?,
            review_due: self.date()?,
        })
    }

    fn spending(&mut self) -> Read<Spending> {
        Ok(Spending {
            signer_id: self.string()?,
            amount: self.money()?,
            refunded: self.money()?,
            charge: (self.u64()?, self.charge()?),
        })
    }

    fn charge(&mut self) -> Read<Charge> {
        Ok(Charge {
            lines: self.seq(|r| Ok((r.u32()? as usize, r.money()?)))?,
            contingency: self.money()?,
        })
    }

    fn agreement(&mut self) -> Read<AgreementSpec> {
        Ok(AgreementSpec {
            agreement_id: self.string()?,
            payee_ref: self.string()?,
            payee_kind: self.read_payee_kind()?,
            payee_sector: self.read_sector()?,
            category: self.string()?,
            unit: self.read_unit()?,
            rate: self.money()?,
            max_units_per_week: self.u32()?,
            valid_from: self.date()?,
            valid_to: self.date()?,
            connected_person: self.bool()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(f: impl FnOnce(&mut SnapshotWriter<'_>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut SnapshotWriter::new(&mut out));
        out
    }

    #[test]
    fn money_round_trips_exactly_at_every_size() {
        let max = MAX_PENCE_MAGNITUDE as i128;
        for p in [
            0,
            1,
            -1,
            480_000,
            -58_720,
            i64::MAX as i128,
            i64::MIN as i128,
            i64::MAX as i128 + 1,
            i64::MIN as i128 - 1,
            (1 << 80) + 12_345,
            -(1 << 80) - 99,
            max,
            -max,
        ] {
            let m = money_of_pence(p).unwrap_or_else(|| panic!("{p} refused"));
            assert_eq!(pence(m), p);
            assert_eq!(m.as_decimal().scale(), 2);
            let b = bytes(|w| w.money(m));
            assert_eq!(b, p.to_le_bytes());
            assert_eq!(SnapshotReader::read_all(&b, SnapshotReader::money), Ok(m));
        }
        // -0.00 is 0.00: one spelling.
        let negative_zero = Money::ZERO.checked_sub(Money::ZERO).unwrap();
        assert_eq!(bytes(|w| w.money(negative_zero)), [0; 16]);
        for p in [max + 1, -max - 1, i128::MAX, i128::MIN] {
            let b = p.to_le_bytes();
            assert!(matches!(
                SnapshotReader::read_all(&b, SnapshotReader::money),
                Err(SnapshotError::BadValue { at: 0, .. })
            ));
        }
    }

    #[test]
    fn primitives_refuse_what_they_did_not_write() {
        let read =
            |b: &[u8], f: fn(&mut SnapshotReader<'_>) -> Read<()>| SnapshotReader::read_all(b, f);
        assert!(matches!(
            read(&[2], |r| r.bool().map(drop)),
            Err(SnapshotError::BadValue { at: 0, .. })
        ));
        assert!(matches!(
            read(&[1, 0, 0], |r| r.u16().map(drop)),
            Err(SnapshotError::TrailingBytes { at: 2, count: 1 })
        ));
        assert!(matches!(
            read(&[2, 0, 0, 0, 0xff, 0xfe], |r| r.str().map(drop)),
            Err(SnapshotError::BadUtf8 { at: 4 })
        ));
        // A huge length or count fails before anything is taken or reserved.
        assert!(matches!(
            read(&[0xff, 0xff, 0xff, 0xff, b'a'], |r| r.str().map(drop)),
            Err(SnapshotError::Truncated {
                at: 4,
                needed: 0xffff_ffff,
                remaining: 1
            })
        ));
        assert!(matches!(
            read(&[0xff, 0xff, 0xff, 0xff, 0], |r| r
                .seq(SnapshotReader::bool)
                .map(drop)),
            Err(SnapshotError::Truncated { .. })
        ));
        // Map keys strictly ascending.
        let map = |b: &[u8]| {
            SnapshotReader::read_all(b, |r| r.map(|r| Ok((r.u8()?, ()))))
                .map(|m| m.into_keys().collect::<Vec<_>>())
        };
        assert_eq!(map(&[2, 0, 0, 0, 1, 2]), Ok(vec![1, 2]));
        assert!(matches!(
            map(&[2, 0, 0, 0, 2, 1]),
            Err(SnapshotError::BadValue { at: 5, .. })
        ));
        assert!(map(&[2, 0, 0, 0, 1, 1]).is_err());
        // Dates are real days.
        let date = |y: u16, m: u8, d: u8| {
            let b = bytes(|w| {
                w.date(Date {
                    year: y,
                    month: m,
                    day: d,
                })
            });
            SnapshotReader::read_all(&b, SnapshotReader::date)
        };
        assert!(date(2024, 2, 29).is_ok());
        for (y, m, d) in [
            (2023, 2, 29),
            (1999, 12, 31),
            (2200, 1, 1),
            (2024, 13, 1),
            (2024, 1, 0),
        ] {
            assert!(date(y, m, d).is_err(), "{y}-{m}-{d}");
        }
        // Tags and versions.
        let f = Format {
            tag: *b"TEST",
            version: 3,
        };
        let ok = bytes(|w| w.header(f));
        assert_eq!(SnapshotReader::read_all(&ok, |r| r.header(f)), Ok(()));
        let other = Format { version: 4, ..f };
        assert!(matches!(
            SnapshotReader::read_all(&ok, |r| r.header(other)),
            Err(SnapshotError::BadVersion {
                expected: 4,
                found: 3,
                ..
            })
        ));
        let e = SnapshotReader::read_all(b"BALS\x03\0\0\0", |r| r.header(f)).unwrap_err();
        assert_eq!(e.to_string(), "snapshot tag BALS is not TEST");
    }

    #[test]
    fn enum_tags_round_trip() {
        for t in 0..=u8::MAX {
            let b = [t];
            if let Ok(v) = SnapshotReader::read_all(&b, SnapshotReader::read_role) {
                assert_eq!(bytes(|w| w.role(v)), b);
            }
            if let Ok(v) = SnapshotReader::read_all(&b, SnapshotReader::read_management) {
                assert_eq!(bytes(|w| w.management(v)), b);
            }
            if let Ok(v) = SnapshotReader::read_all(&b, SnapshotReader::read_payee_kind) {
                assert_eq!(bytes(|w| w.payee_kind(v)), b);
            }
            if let Ok(v) = SnapshotReader::read_all(&b, SnapshotReader::read_sector) {
                assert_eq!(bytes(|w| w.sector(v)), b);
            }
            if let Ok(v) = SnapshotReader::read_all(&b, SnapshotReader::read_unit) {
                assert_eq!(bytes(|w| w.unit(v)), b);
            }
            if let Ok(v) = SnapshotReader::read_all(&b, SnapshotReader::read_flag_code) {
                assert_eq!(bytes(|w| w.flag_code(v)), b);
            }
            if let Ok(v) = SnapshotReader::read_all(&b, SnapshotReader::read_severity) {
                assert_eq!(bytes(|w| w.severity(v)), b);
            }
            if let Ok(v) = SnapshotReader::read_all(&b, SnapshotReader::read_flag_outcome) {
                assert_eq!(bytes(|w| w.flag_outcome(v)), b);
            }
        }
    }
}
