//! The Merkle tree over the log, exactly as RFC 9162 §2.1 defines it
//! (the same tree as RFC 6962, C2SP tlog-checkpoint and Go's sumdb/tlog).
//!
//! - **Leaves.** Leaf `i` (from 0) is log entry `sequence = i + 1`, and its
//!   leaf data is that entry's 32-byte **entry hash** (docs/log-format.md §2),
//!   so `leaf_hash = SHA-256(0x00 ‖ entry_hash)`. The entry hash already
//!   commits to every byte of the entry and, through `prev_hash`, to the chain
//!   before it; an auditor needs only the entry hashes (which `ReadLog` and
//!   every `AppendResult` carry) to rebuild the tree, never a second
//!   serialisation of the entry.
//! - **Nodes.** `node_hash = SHA-256(0x01 ‖ left ‖ right)`; the empty tree's
//!   root is `SHA-256("")`. The tree of `n` leaves splits at the largest power
//!   of two below `n` (MTH, RFC 9162 §2.1.1).
//!
//! What is stored is the hash of every **complete** subtree, `NodeId { level,
//! index }` covering leaves `[index·2^level, (index+1)·2^level)`: about two
//! per leaf, written once and never changed, derived data that can always be
//! rebuilt from the log. Every node of any proof for any tree size is either
//! one of them or the fold of a few of them ([`ProofPlan`]), so proofs for
//! any `(index, size)` and `(m, n)` need nothing else. [`Frontier`] is the
//! right edge of the tree (one complete subtree per set bit of the size):
//! appending is O(log n), gives the nodes that became complete (to persist),
//! and the current root is a fold of at most 64 hashes.
//!
//! The verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 step by step and
//! also check the proof's exact length first: every node of a proof changes
//! the computed root, so a proof with any node wrong, missing or extra fails
//! (the lesson of immudb's 2022 bug, where intermediate nodes went unchecked).

use sha2::{Digest, Sha256};

use crate::entry::Hash;

/// The largest tree size handled: 2^63 leaves. It keeps every proof within
/// [`MAX_PROOF_NODES`] and every shift in range.
pub const MAX_TREE_SIZE: u64 = 1 << 63;

/// The most nodes any inclusion or consistency proof has for a tree of at
/// most [`MAX_TREE_SIZE`] leaves.
pub const MAX_PROOF_NODES: usize = 64;

/// The root of the empty tree: `SHA-256("")`.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Why a tree operation or a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// A tree size above [`MAX_TREE_SIZE`].
    #[error("tree size {0} is above the limit of 2^63")]
    TreeTooLarge(u64),
    /// An inclusion proof for a leaf the tree does not have.
    #[error("leaf index {index} is not below the tree size {size}")]
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof from a larger tree to a smaller one.
    #[error("consistency from size {old} to the smaller size {new}")]
    SizesReversed {
        /// The earlier size.
        old: u64,
        /// The later size.
        new: u64,
    },
    /// A consistency proof from the empty tree: RFC 9162 defines none (every
    /// tree extends the empty tree; there is nothing to prove).
    #[error("consistency from the empty tree is not defined; every tree extends it")]
    EmptyOldTree,
    /// A proof with more nodes than any proof can have.
    #[error("proof has {0} nodes; no proof has more than 64")]
    TooLong(usize),
    /// A proof with another number of nodes than `(index, size)` or
    /// `(m, n)` needs.
    #[error("proof has {got} nodes; this proof needs exactly {expected}")]
    WrongLength {
        /// The number of nodes such a proof has.
        expected: usize,
        /// The number given.
        got: usize,
    },
    /// A proof node (or a hash given with it) that is not 32 bytes.
    #[error("hash {position} is {len} bytes, not 32")]
    BadHashLength {
        /// Its position in the list (0 for a single hash).
        position: usize,
        /// Its length.
        len: usize,
    },
    /// The proof does not lead to the root(s) given.
    #[error("the proof does not match the root hash")]
    RootMismatch,
    /// A tree with no room for another leaf.
    #[error("the tree is full (2^63 leaves)")]
    TreeFull,
    /// A frontier restored with the wrong number of nodes for its size.
    #[error("a tree of size {size} has {expected} frontier nodes, not {got}")]
    BadFrontier {
        /// The tree size.
        size: u64,
        /// Nodes it needs (the number of set bits in `size`).
        expected: usize,
        /// Nodes given.
        got: usize,
    },
}

/// The RFC 9162 leaf hash of a log entry: `SHA-256(0x00 ‖ entry_hash)`.
pub fn leaf_hash(entry_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(entry_hash);
    h.finalize().into()
}

/// The RFC 9162 interior node hash: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// A complete subtree: the `2^level` leaves from `index · 2^level`. Level 0
/// nodes are leaf hashes. What a store keeps, once each, keyed by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves (0 to 63).
    pub level: u8,
    /// Position within the level, from 0.
    pub index: u64,
}

impl NodeId {
    /// The node at `level`, `index`.
    pub fn new(level: u8, index: u64) -> NodeId {
        NodeId { level, index }
    }

    /// The first leaf it covers.
    pub fn first_leaf(&self) -> u64 {
        self.index << self.level
    }

    /// One past the last leaf it covers: it is complete in every tree of at
    /// least this size.
    pub fn end(&self) -> u64 {
        (self.index + 1) << self.level
    }
}

/// The complete subtrees that make up the leaves `[start, end)`, largest
/// first. For a range of the RFC tree's shape (`start` a multiple of a power
/// of two at least `end - start`), the range's MTH is their right fold.
fn range_nodes(mut start: u64, end: u64, out: &mut Vec<NodeId>) {
    while start < end {
        let fits = 63 - (end - start).leading_zeros();
        let aligned = start.trailing_zeros();
        let level = fits.min(aligned);
        out.push(NodeId::new(level as u8, start >> level));
        start += 1 << level;
    }
}

/// The right fold of the hashes of a range's complete subtrees (largest
/// first): `H(a, H(b, … H(y, z)))`. `EMPTY_ROOT` for none.
pub fn fold_right(hashes: &[Hash]) -> Hash {
    let Some((last, rest)) = hashes.split_last() else {
        return EMPTY_ROOT;
    };
    rest.iter().rev().fold(*last, |acc, h| node_hash(h, &acc))
}

/// The complete subtrees whose hashes fold ([`fold_right`]) to the root of
/// the tree of `size` leaves: the frontier of that size, largest first.
pub fn root_nodes(size: u64) -> Result<Vec<NodeId>, ProofError> {
    check_size(size)?;
    let mut out = Vec::with_capacity(size.count_ones() as usize);
    range_nodes(0, size, &mut out);
    Ok(out)
}

fn check_size(size: u64) -> Result<(), ProofError> {
    if size > MAX_TREE_SIZE {
        return Err(ProofError::TreeTooLarge(size));
    }
    Ok(())
}

/// The right edge of the tree: the hash of one complete subtree per set bit
/// of the size, largest first. Appending is O(log n) and the root is their
/// fold. A store keeps the size and rebuilds this from its stored nodes
/// ([`root_nodes`], [`Frontier::from_nodes`]) or from the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// The frontier of a tree of `size` leaves, from the hashes of the nodes
    /// [`root_nodes`]`(size)` names, in that order.
    pub fn from_nodes(size: u64, nodes: Vec<Hash>) -> Result<Frontier, ProofError> {
        check_size(size)?;
        let expected = size.count_ones() as usize;
        if nodes.len() != expected {
            return Err(ProofError::BadFrontier {
                size,
                expected,
                got: nodes.len(),
            });
        }
        Ok(Frontier { size, nodes })
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontier's hashes, largest subtree first (the nodes
    /// [`root_nodes`]`(self.size())` names).
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// The root of the tree of the current size (RFC 9162 MTH).
    pub fn root(&self) -> Hash {
        fold_right(&self.nodes)
    }

    /// Appends the leaf whose data is `entry_hash` (the next log entry's
    /// hash). Returns the complete subtrees this made, lowest first: the new
    /// leaf and each node it completed — exactly what a store persists.
    pub fn append(&mut self, entry_hash: &Hash) -> Result<Vec<(NodeId, Hash)>, ProofError> {
        self.append_leaf_hash(leaf_hash(entry_hash))
    }

    /// Appends a leaf given by its RFC 9162 leaf hash (`SHA-256(0x00 ‖
    /// leaf data)`), for leaf data other than an entry hash (test vectors).
    pub fn append_leaf_hash(&mut self, leaf: Hash) -> Result<Vec<(NodeId, Hash)>, ProofError> {
        if self.size >= MAX_TREE_SIZE {
            return Err(ProofError::TreeFull);
        }
        let index = self.size;
        let mut hash = leaf;
        let mut made = Vec::with_capacity(1 + index.trailing_ones() as usize);
        made.push((NodeId::new(0, index), hash));
        let mut level = 0u8;
        while (index >> level) & 1 == 1 {
            let left = self
                .nodes
                .pop()
                .expect("a set bit of the size has its frontier node");
            hash = node_hash(&left, &hash);
            level += 1;
            made.push((NodeId::new(level, index >> level), hash));
        }
        self.nodes.push(hash);
        self.size += 1;
        Ok(made)
    }
}

/// How to build a proof from stored complete subtrees: one part per proof
/// node, each the right fold of one or more stored nodes (most proof nodes
/// are stored nodes; the one on the tree's right edge, if any, is a fold).
/// A store reads [`ProofPlan::node_ids`] (in one batch if it likes) and
/// calls [`ProofPlan::resolve`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProofPlan {
    parts: Vec<Vec<NodeId>>,
}

impl ProofPlan {
    /// The number of proof nodes it makes.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// True for the empty proof.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Every stored node the proof needs, in proof order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.parts.iter().flatten().copied()
    }

    /// The proof, reading each stored node with `get`.
    pub fn resolve<E>(
        &self,
        mut get: impl FnMut(NodeId) -> Result<Hash, E>,
    ) -> Result<Vec<Hash>, E> {
        let mut proof = Vec::with_capacity(self.parts.len());
        let mut buf = Vec::new();
        for part in &self.parts {
            buf.clear();
            for id in part {
                buf.push(get(*id)?);
            }
            proof.push(fold_right(&buf));
        }
        Ok(proof)
    }

    fn push_range(&mut self, start: u64, end: u64) {
        let mut part = Vec::new();
        range_nodes(start, end, &mut part);
        self.parts.push(part);
    }
}

/// The largest power of two below `n` (n ≥ 2): where MTH splits.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The plan of the RFC 9162 §2.1.3.1 inclusion proof `PATH(index, D[size])`.
pub fn inclusion_plan(index: u64, size: u64) -> Result<ProofPlan, ProofError> {
    check_size(size)?;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut plan = ProofPlan::default();
    path(index, 0, size, &mut plan);
    Ok(plan)
}

/// `PATH(m, D[start:start+n])`, nodes from the leaf upwards.
fn path(m: u64, start: u64, n: u64, plan: &mut ProofPlan) {
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, start, k, plan);
        plan.push_range(start + k, start + n);
    } else {
        path(m - k, start + k, n - k, plan);
        plan.push_range(start, start + k);
    }
}

/// The plan of the RFC 9162 §2.1.4.1 consistency proof `PROOF(m, D[n])`,
/// for `0 < m ≤ n` (empty when `m == n`).
pub fn consistency_plan(m: u64, n: u64) -> Result<ProofPlan, ProofError> {
    check_consistency_sizes(m, n)?;
    let mut plan = ProofPlan::default();
    if m < n {
        subproof(m, 0, n, true, &mut plan);
    }
    Ok(plan)
}

/// `SUBPROOF(m, D[start:start+n], b)`.
fn subproof(m: u64, start: u64, n: u64, b: bool, plan: &mut ProofPlan) {
    if m == n {
        if !b {
            plan.push_range(start, start + n);
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, k, b, plan);
        plan.push_range(start + k, start + n);
    } else {
        subproof(m - k, start + k, n - k, false, plan);
        plan.push_range(start, start + k);
    }
}

fn check_consistency_sizes(m: u64, n: u64) -> Result<(), ProofError> {
    check_size(n)?;
    if m > n {
        return Err(ProofError::SizesReversed { old: m, new: n });
    }
    if m == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    Ok(())
}

/// The number of nodes of the inclusion proof of `index` in a tree of
/// `size` leaves (`index < size ≤ MAX_TREE_SIZE`): the levels below where
/// the paths to `index` and `size - 1` part, plus one left sibling for each
/// set bit above.
fn inclusion_len(index: u64, size: u64) -> usize {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = (index.checked_shr(inner).unwrap_or(0)).count_ones();
    (inner + border) as usize
}

/// The number of nodes of the consistency proof from `m` to `n`
/// (`0 < m < n ≤ MAX_TREE_SIZE`): the inclusion proof of leaf `m - 1` in
/// `n` from the level of the largest complete subtree ending at `m`, plus
/// that subtree itself unless it is the whole old tree (`m` a power of two).
fn consistency_len(m: u64, n: u64) -> usize {
    let shift = m.trailing_zeros();
    let first = usize::from(!m.is_power_of_two());
    inclusion_len((m - 1) >> shift, ((n - 1) >> shift) + 1) + first
}

/// Turns proof nodes received as bytes into hashes, refusing any that is
/// not 32 bytes and any list longer than a proof can be.
pub fn hashes_from_slices<T: AsRef<[u8]>>(nodes: &[T]) -> Result<Vec<Hash>, ProofError> {
    if nodes.len() > MAX_PROOF_NODES {
        return Err(ProofError::TooLong(nodes.len()));
    }
    nodes
        .iter()
        .enumerate()
        .map(|(position, n)| hash_from_slice(n.as_ref(), position))
        .collect()
}

/// One 32-byte hash from bytes; `position` names it in the error.
pub fn hash_from_slice(bytes: &[u8], position: usize) -> Result<Hash, ProofError> {
    bytes.try_into().map_err(|_| ProofError::BadHashLength {
        position,
        len: bytes.len(),
    })
}

fn check_length(proof: &[Hash], expected: usize) -> Result<(), ProofError> {
    if proof.len() > MAX_PROOF_NODES {
        return Err(ProofError::TooLong(proof.len()));
    }
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    Ok(())
}

/// Verifies that the leaf whose RFC 9162 leaf hash is `leaf_hash` (for a
/// log entry: [`leaf_hash`]`(entry_hash)`) is leaf `index` of the tree of
/// `size` leaves whose root is `root` (RFC 9162 §2.1.3.2).
///
/// As in the RFC, the proof binds the leaf, its index and the root; the
/// pairing of `root` with `size` is what a signed checkpoint vouches for
/// (a proof for size 5 can also fit size 6 when leaf `index`'s path is the
/// same in both, against the size-5 root). Take both from one checkpoint.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    check_size(size)?;
    // Step 1.
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    check_length(proof, inclusion_len(index, size))?;
    // Steps 2 and 3.
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf_hash;
    // Step 4.
    for p in proof {
        if snode == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    if snode == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Verifies that the tree of `n` leaves with root `new_root` extends the
/// tree of `m` leaves with root `old_root` (RFC 9162 §2.1.4.2), for
/// `0 < m ≤ n`. When `m == n` the proof must be empty and the roots equal
/// (the RFC's algorithm covers `m < n` only). `m == 0` is refused
/// ([`ProofError::EmptyOldTree`]): there is nothing to verify.
pub fn verify_consistency(
    m: u64,
    n: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    check_consistency_sizes(m, n)?;
    if m == n {
        check_length(proof, 0)?;
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    // Step 1 (an empty proof) is covered: every proof for m < n has a node.
    check_length(proof, consistency_len(m, n))?;
    // Step 2: if m is a power of two, old_root is the first node.
    let (first, rest) = if m.is_power_of_two() {
        (old_root, proof)
    } else {
        (&proof[0], &proof[1..])
    };
    // Step 3.
    let (mut fnode, mut snode) = (m - 1, n - 1);
    // Step 4.
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    let (mut fr, mut sr) = (*first, *first);
    // Step 6.
    for c in rest {
        if snode == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 7.
    if fr == *old_root && sr == *new_root && snode == 0 {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// A whole tree in memory: every complete subtree's hash by level, the
/// structure a store persists (level `l`, index `i` at `levels[l][i]`).
/// For tests, tools and auditors that hold the log; the server keeps the
/// same nodes in its store.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    frontier: Frontier,
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// The empty tree.
    pub fn new() -> MemoryTree {
        MemoryTree::default()
    }

    /// The tree of the given entry hashes, in log order.
    pub fn from_entry_hashes<'a>(
        entry_hashes: impl IntoIterator<Item = &'a Hash>,
    ) -> Result<MemoryTree, ProofError> {
        let mut t = MemoryTree::new();
        for h in entry_hashes {
            t.append(h)?;
        }
        Ok(t)
    }

    /// Appends the next log entry's hash.
    pub fn append(&mut self, entry_hash: &Hash) -> Result<(), ProofError> {
        self.append_leaf_hash(leaf_hash(entry_hash))
    }

    /// Appends a leaf given by its RFC 9162 leaf hash (see
    /// [`Frontier::append_leaf_hash`]).
    pub fn append_leaf_hash(&mut self, leaf: Hash) -> Result<(), ProofError> {
        for (id, hash) in self.frontier.append_leaf_hash(leaf)? {
            let level = usize::from(id.level);
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            debug_assert_eq!(self.levels[level].len() as u64, id.index);
            self.levels[level].push(hash);
        }
        Ok(())
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The current right edge.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// The root of the current tree.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// A stored node, if this tree has it.
    pub fn node(&self, id: NodeId) -> Option<Hash> {
        let level = self.levels.get(usize::from(id.level))?;
        level.get(usize::try_from(id.index).ok()?).copied()
    }

    fn get(&self, id: NodeId) -> Result<Hash, ProofError> {
        self.node(id).ok_or(ProofError::IndexOutOfRange {
            index: id.end() - 1,
            size: self.size(),
        })
    }

    fn check_held(&self, size: u64) -> Result<(), ProofError> {
        if size > self.size() {
            return Err(ProofError::IndexOutOfRange {
                index: size - 1,
                size: self.size(),
            });
        }
        Ok(())
    }

    /// The root of the tree of the first `size` leaves (`size ≤ self.size()`).
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_held(size)?;
        let hashes = root_nodes(size)?
            .into_iter()
            .map(|id| self.get(id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(fold_right(&hashes))
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        let plan = inclusion_plan(index, size)?;
        self.check_held(size)?;
        plan.resolve(|id| self.get(id))
    }

    /// The consistency proof from the tree of `m` leaves to that of `n`.
    pub fn consistency_proof(&self, m: u64, n: u64) -> Result<Vec<Hash>, ProofError> {
        let plan = consistency_plan(m, n)?;
        self.check_held(n)?;
        plan.resolve(|id| self.get(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest(b"")));
    }

    #[test]
    fn lengths_match_plans() {
        for n in 1..=200u64 {
            for i in 0..n {
                assert_eq!(inclusion_plan(i, n).unwrap().len(), inclusion_len(i, n));
            }
            for m in 1..n {
                assert_eq!(
                    consistency_plan(m, n).unwrap().len(),
                    consistency_len(m, n),
                    "{m} {n}"
                );
            }
        }
        // The largest trees stay within the limit.
        let n = MAX_TREE_SIZE;
        assert!(inclusion_len(0, n) <= MAX_PROOF_NODES);
        assert!(inclusion_len(n - 1, n) <= MAX_PROOF_NODES);
        for m in [1, 3, n / 2 + 1, n - 1, (1 << 62) + 1] {
            assert!(consistency_len(m, n) <= MAX_PROOF_NODES, "{m}");
            assert_eq!(consistency_plan(m, n).unwrap().len(), consistency_len(m, n));
        }
        assert_eq!(inclusion_plan(5, n).unwrap().len(), inclusion_len(5, n));
    }
}
