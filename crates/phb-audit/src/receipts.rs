//! Receipts a partner kept: one JSON object a line,
//! `{"sequence": N, "entry_hash": "64 hex", "tree_size": M}` — what every
//! `AppendResult` that names an entry carries (docs/audit.md, "Receipts").
//! Other keys on a line are ignored, blank lines too.

use crate::{Failure, Location};
use phb_chain::Hash;

/// The longest receipts line read.
pub const MAX_LINE_BYTES: usize = 4096;

/// One receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Its line in the file, from 1.
    pub line: usize,
    /// The entry's sequence.
    pub sequence: u64,
    /// The entry hash the partner was given.
    pub entry_hash: Hash,
    /// The tree size that includes it.
    pub tree_size: u64,
}

/// Reads a receipts file.
pub fn parse(text: &str) -> Result<Vec<Receipt>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(format!("line {n} is longer than {MAX_LINE_BYTES} bytes"));
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {n} is not JSON: {e}"))?;
        let num = |key: &str| {
            v.get(key)
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| format!("line {n}: {key} must be a whole number"))
        };
        let sequence = num("sequence")?;
        let tree_size = num("tree_size")?;
        let text = v
            .get("entry_hash")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("line {n}: entry_hash must be a string of 64 hex characters"))?;
        let entry_hash = hash_hex(text)
            .ok_or_else(|| format!("line {n}: entry_hash must be 64 hex characters"))?;
        if sequence == 0 {
            return Err(format!("line {n}: sequence starts at 1"));
        }
        out.push(Receipt {
            line: n,
            sequence,
            entry_hash,
            tree_size,
        });
    }
    Ok(out)
}

fn hash_hex(t: &str) -> Option<Hash> {
    if t.len() != 64 || !t.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks every receipt against the entry hashes of a verified export
/// (index = sequence − 1); answers how many were found.
pub fn check(receipts: &[Receipt], hashes: &[Hash]) -> Result<usize, Failure> {
    let n = hashes.len() as u64;
    for r in receipts {
        let at = Location::Receipt {
            line: r.line,
            sequence: r.sequence,
        };
        if r.tree_size < r.sequence {
            return Err(Failure::new(
                at,
                format!(
                    "its tree size {} does not include its sequence: not a receipt the ledger gives",
                    r.tree_size
                ),
            ));
        }
        let Some(hash) = usize::try_from(r.sequence - 1)
            .ok()
            .and_then(|i| hashes.get(i))
        else {
            return Err(Failure::new(
                at,
                format!(
                    "the ledger acknowledged entry {} (tree size {}), but the export holds only {n} entries: it was removed",
                    r.sequence, r.tree_size
                ),
            ));
        };
        if *hash != r.entry_hash {
            return Err(Failure::new(
                at,
                format!(
                    "the ledger acknowledged entry hash {}, but the export's entry {} has {}: the entry was removed or replaced",
                    hex(&r.entry_hash),
                    r.sequence,
                    hex(hash)
                ),
            ));
        }
    }
    Ok(receipts.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        let h = [7u8; 32];
        let text = format!(
            "{{\"sequence\":1,\"entry_hash\":\"{}\",\"tree_size\":1,\"note\":\"x\"}}\n\n",
            hex(&h)
        );
        let r = parse(&text).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(check(&r, &[h]).unwrap(), 1);
        assert!(check(&r, &[[8u8; 32]]).is_err());
        let f = check(&r, &[]).unwrap_err();
        assert_eq!(f.sequence(), Some(1));
        assert!(parse("{\"sequence\":1}").is_err());
        assert!(parse("{\"sequence\":\"1\",\"entry_hash\":\"00\",\"tree_size\":1}").is_err());
    }
}
