//! A budget's spendings by sequence, cheap to clone.
//!
//! The write model decides an event on a budget by changing a clone of it
//! (the old value is the undo record). A budget keeps every spending for
//! refunds and plan charges, so a plain map made every decision cost
//! O(spendings on the budget) — quadratic over a budget's life. Here the
//! entries sit in shared chunks of at most `CHUNK`: a clone copies the list
//! of chunk pointers, and a change copies one chunk. Spendings arrive in
//! sequence order (the log's), so a new one goes on the last chunk.

use super::budgets::Spending;
use super::plans::PENDING;
use std::sync::Arc;

/// Entries per chunk.
const CHUNK: usize = 64;

/// A budget's spendings by sequence (the one decided but not yet applied
/// under `PENDING`).
#[derive(Debug, Clone, Default)]
pub struct Spendings {
    pending: Option<Box<Spending>>,
    chunks: Vec<Arc<Vec<(u64, Spending)>>>,
    len: usize,
}

impl PartialEq for Spendings {
    /// Equal entries, however they are chunked.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Spendings {}

impl Spendings {
    /// How many.
    pub fn len(&self) -> usize {
        self.len + usize::from(self.pending.is_some())
    }

    /// True if none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where `sequence` is or would go: (chunk, index in it, found).
    fn locate(&self, sequence: u64) -> Option<(usize, Result<usize, usize>)> {
        let c = self
            .chunks
            .partition_point(|chunk| chunk[0].0 <= sequence)
            .checked_sub(1)?;
        Some((
            c,
            self.chunks[c].binary_search_by_key(&sequence, |(k, _)| *k),
        ))
    }

    /// The spending at `sequence`.
    pub fn get(&self, sequence: &u64) -> Option<&Spending> {
        if *sequence == PENDING {
            return self.pending.as_deref();
        }
        let (c, i) = self.locate(*sequence)?;
        i.ok().map(|i| &self.chunks[c][i].1)
    }

    /// The spending at `sequence`, to change (copies its chunk if shared).
    pub fn get_mut(&mut self, sequence: &u64) -> Option<&mut Spending> {
        if *sequence == PENDING {
            return self.pending.as_deref_mut();
        }
        let (c, i) = self.locate(*sequence)?;
        let i = i.ok()?;
        Some(&mut Arc::make_mut(&mut self.chunks[c])[i].1)
    }

    /// Records `s` at `sequence` (replacing one there).
    pub fn insert(&mut self, sequence: u64, s: Spending) {
        if sequence == PENDING {
            self.pending = Some(Box::new(s));
            return;
        }
        let after_last = self
            .chunks
            .last()
            .and_then(|c| c.last())
            .is_none_or(|(last, _)| *last < sequence);
        if after_last {
            match self.chunks.last_mut() {
                Some(c) if c.len() < CHUNK => Arc::make_mut(c).push((sequence, s)),
                _ => self.chunks.push(Arc::new(vec![(sequence, s)])),
            }
            self.len += 1;
            return;
        }
        match self.locate(sequence) {
            Some((c, Ok(i))) => Arc::make_mut(&mut self.chunks[c])[i].1 = s,
            Some((c, Err(i))) => {
                Arc::make_mut(&mut self.chunks[c]).insert(i, (sequence, s));
                self.len += 1;
            }
            // Before the first chunk.
            None => {
                Arc::make_mut(&mut self.chunks[0]).insert(0, (sequence, s));
                self.len += 1;
            }
        }
    }

    /// Takes the spending at `sequence` out.
    pub fn remove(&mut self, sequence: &u64) -> Option<Spending> {
        if *sequence == PENDING {
            return self.pending.take().map(|b| *b);
        }
        let (c, i) = self.locate(*sequence)?;
        let i = i.ok()?;
        let (_, s) = Arc::make_mut(&mut self.chunks[c]).remove(i);
        if self.chunks[c].is_empty() {
            self.chunks.remove(c);
        }
        self.len -= 1;
        Some(s)
    }

    /// Every spending in sequence order (the pending one first: its key is 0).
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Spending)> + '_ {
        let pending = self.pending.as_deref().map(|s| (&PENDING, s));
        pending.into_iter().chain(
            self.chunks
                .iter()
                .flat_map(|c| c.iter().map(|(k, s)| (k, s))),
        )
    }

    /// Every spending in sequence order.
    pub fn values(&self) -> impl Iterator<Item = &Spending> + '_ {
        self.iter().map(|(_, s)| s)
    }
}

impl FromIterator<(u64, Spending)> for Spendings {
    fn from_iter<I: IntoIterator<Item = (u64, Spending)>>(items: I) -> Spendings {
        let mut out = Spendings::default();
        for (k, s) in items {
            out.insert(k, s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::plans::Charge;
    use crate::money::Money;
    use std::collections::BTreeMap;

    fn s(p: i64) -> Spending {
        Spending {
            signer_id: "x".into(),
            amount: Money::from_pence(p),
            refunded: Money::ZERO,
            charge: (
                1,
                Charge {
                    lines: vec![],
                    contingency: Money::ZERO,
                },
            ),
        }
    }

    /// The same answers as a BTreeMap under inserts in order, out of order,
    /// replacements, removals and the pending key; clones are independent.
    #[test]
    fn behaves_like_a_map() {
        let mut m = BTreeMap::new();
        let mut x = Spendings::default();
        let keys: Vec<u64> = (1..500).map(|i| i * 3).chain([2, 7, 301, 1, 0]).collect();
        for (n, k) in keys.iter().enumerate() {
            m.insert(*k, s(n as i64));
            x.insert(*k, s(n as i64));
            assert_eq!(x.len(), m.len());
        }
        let snapshot = x.clone();
        assert!(x.iter().map(|(k, v)| (*k, v.clone())).eq(m.clone()));
        for k in [0u64, 3, 301, 999, 1497, 1] {
            assert_eq!(x.remove(&k), m.remove(&k));
            assert_eq!(x.get(&k), None);
        }
        x.get_mut(&6).expect("present").refunded = Money::from_pence(1);
        m.get_mut(&6).expect("present").refunded = Money::from_pence(1);
        assert!(x.iter().map(|(k, v)| (*k, v.clone())).eq(m.clone()));
        // The clone taken earlier saw none of it.
        assert_eq!(snapshot.get(&6).map(|v| v.refunded), Some(Money::ZERO));
        assert_eq!(snapshot.len(), 504);
        let rebuilt: Spendings = m.clone().into_iter().collect();
        assert_eq!(rebuilt, x);
    }
}
