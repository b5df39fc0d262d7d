//! RFC 6962 / RFC 9162 Merkle tree math: hashing, the stored-hash layout, proof generation from
//! stored hashes, and proof verification.
//!
//! Hashing is SHA-256 with the RFC 6962 domain separation: a leaf hash is `SHA-256(0x00 || data)`
//! and an interior node is `SHA-256(0x01 || left || right)`. The root of the empty tree is
//! `SHA-256("")`.
//!
//! **Stored hashes.** A log keeps the hash of every *complete* subtree: level 0 holds the leaf
//! hashes, level `l` index `n` holds the root of leaves `[n·2^l, (n+1)·2^l)`. They are numbered in
//! the order an appending log creates them, exactly as Go's `golang.org/x/mod/sumdb/tlog`
//! (`StoredHashIndex`): appending leaf `n` writes the stored hashes
//! `stored_hash_count(n) .. stored_hash_count(n + 1)`. Any proof then reads `O(log n)` stored
//! hashes and recomputes nothing but the few incomplete subtrees on the right edge of the tree.
//!
//! **Verification** follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by step;
//! every failure is a typed [`ProofError`] saying what did not match.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// The size in bytes of every hash in the tree.
pub const HASH_LEN: usize = 32;

/// A SHA-256 hash in the tree: a leaf hash, an interior node or a root.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; HASH_LEN]);

impl Hash {
    /// The hash of 32 zero bytes' worth of nothing: 32 zero bytes, used as `prev` of the first
    /// ledger entry.
    pub const ZERO: Hash = Hash([0; HASH_LEN]);

    /// Takes a hash from a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Hash, ProofError> {
        <[u8; HASH_LEN]>::try_from(bytes)
            .map(Hash)
            .map_err(|_| ProofError::WrongHashLength { got: bytes.len() })
    }

    /// The hash in lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The RFC 6962 leaf hash: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    Hash(hasher.finalize().into())
}

/// The RFC 6962 interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left.0);
    hasher.update(right.0);
    Hash(hasher.finalize().into())
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// Why a proof could not be produced or did not verify. Each variant says what did not match.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// A hash had a length other than 32 bytes.
    #[error("a hash must be 32 bytes long, got {got}")]
    WrongHashLength {
        /// The length found.
        got: usize,
    },
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The tree sizes of a consistency proof are in the wrong order.
    #[error("consistency needs old size <= new size, got old {old} and new {new}")]
    SizesOutOfOrder {
        /// The older (smaller) tree size.
        old: u64,
        /// The newer (larger) tree size.
        new: u64,
    },
    /// The proof has the wrong number of hashes for these sizes.
    #[error("proof has {got} hashes; a proof for these tree sizes has exactly {want}")]
    WrongProofLength {
        /// The number of hashes in the proof.
        got: usize,
        /// The number the tree shape dictates.
        want: usize,
    },
    /// The root recomputed from the proof is not the expected root.
    #[error("{which} root recomputed from the proof is {computed}, expected {expected}")]
    RootMismatch {
        /// Which root: "tree", "old tree" or "new tree".
        which: &'static str,
        /// What the proof leads to.
        computed: Hash,
        /// What the caller trusts.
        expected: Hash,
    },
    /// A stored hash the proof needs is missing from storage.
    #[error("stored hash at level {level}, index {index} is missing")]
    MissingHash {
        /// The tree level (0 = leaves).
        level: u8,
        /// The index within the level.
        index: u64,
    },
    /// Reading a stored hash failed.
    #[error("reading stored hashes failed: {0}")]
    Read(String),
}

/// The index of the stored hash at `level`, `n` in the append order (Go's `tlog.StoredHashIndex`).
pub fn stored_hash_index(level: u8, n: u64) -> u64 {
    // Level L's n'th hash is written right after level L+1's 2n+1'th hash, so walk down to the
    // level-0 hash written just before it, then count.
    let mut n = n;
    for _ in 0..level {
        n = 2 * n + 1;
    }
    let mut index = 0u64;
    while n > 0 {
        index += n;
        n >>= 1;
    }
    index + u64::from(level)
}

/// The level and index of the stored hash with append-order index `index` (the inverse of
/// [`stored_hash_index`]).
pub fn split_stored_hash_index(index: u64) -> (u8, u64) {
    // Leaf n's hash is at fewer than 2n, so the leaf written at or just before `index` is in
    // [index/2, index/2 + log2(index)]; walk forward from index/2 (as Go's tlog does).
    let mut n = index / 2;
    let mut at = stored_hash_index(0, n);
    loop {
        // Appending leaf n+1 first writes the hashes leaf n completes, one per trailing one bit.
        let next = at + 1 + u64::from((n + 1).trailing_zeros());
        if next > index {
            break;
        }
        n += 1;
        at = next;
    }
    // The hash was written with leaf n: it is (0, n), (1, n/2), (2, n/4), …
    let level = (index - at) as u8;
    (level, n >> level)
}

/// How many hashes a log of `size` leaves stores (Go's `tlog.StoredHashCount`).
pub fn stored_hash_count(size: u64) -> u64 {
    if size == 0 {
        return 0;
    }
    let mut count = stored_hash_index(0, size - 1) + 1;
    let mut i = size - 1;
    while i & 1 != 0 {
        count += 1;
        i >>= 1;
    }
    count
}

/// Read access to stored hashes. Implemented by every ledger storage backend.
pub trait HashReader {
    /// Returns the stored hashes at the given append-order indexes, in the same order. A hash that
    /// is not stored is an error ([`ProofError::MissingHash`]).
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, ProofError>;
}

impl HashReader for [Hash] {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, ProofError> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.get(i))
                    .copied()
                    .ok_or_else(|| {
                        let (level, index) = split_stored_hash_index(i);
                        ProofError::MissingHash { level, index }
                    })
            })
            .collect()
    }
}

impl HashReader for Vec<Hash> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, ProofError> {
        self.as_slice().read_hashes(indexes)
    }
}

/// The stored hashes of complete subtrees that make up `[lo, hi)`, left to right: the largest
/// aligned power-of-two blocks. `[lo, hi)` must start at a multiple of its largest block, which
/// holds for every range a proof asks for.
fn subtree_parts(lo: u64, hi: u64, out: &mut Vec<u64>) {
    let mut lo = lo;
    while lo < hi {
        // The largest power of two that both divides lo and fits in the remaining width.
        let width = hi - lo;
        let mut level = 63 - width.leading_zeros();
        if lo != 0 {
            level = level.min(lo.trailing_zeros());
        }
        out.push(stored_hash_index(level as u8, lo >> level));
        lo += 1u64 << level;
    }
}

/// A plan of stored hashes to read: each output hash is the right fold of a run of parts.
struct Plan {
    indexes: Vec<u64>,
    /// For each output hash, how many consecutive entries of `indexes` it folds.
    runs: Vec<usize>,
}

impl Plan {
    fn new() -> Self {
        Plan {
            indexes: Vec::new(),
            runs: Vec::new(),
        }
    }

    fn subtree(&mut self, lo: u64, hi: u64) {
        let before = self.indexes.len();
        subtree_parts(lo, hi, &mut self.indexes);
        self.runs.push(self.indexes.len() - before);
    }

    fn execute<R: HashReader + ?Sized>(&self, reader: &R) -> Result<Vec<Hash>, ProofError> {
        let hashes = reader.read_hashes(&self.indexes)?;
        if hashes.len() != self.indexes.len() {
            return Err(ProofError::Read(format!(
                "asked for {} stored hashes, got {}",
                self.indexes.len(),
                hashes.len()
            )));
        }
        let mut out = Vec::with_capacity(self.runs.len());
        let mut at = 0;
        for &run in &self.runs {
            out.push(fold_right(&hashes[at..at + run]));
            at += run;
        }
        Ok(out)
    }
}

/// Folds complete-subtree hashes, largest (leftmost) first, into the root of their union:
/// `node(h0, node(h1, … node(h_{k-2}, h_{k-1})))`, which is RFC 6962's MTH for a right edge.
fn fold_right(parts: &[Hash]) -> Hash {
    let mut iter = parts.iter().rev();
    let Some(last) = iter.next() else {
        return empty_root();
    };
    iter.fold(*last, |right, left| node_hash(left, &right))
}

/// The largest power of two strictly less than `n` (for `n >= 2`).
fn split_point(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The RFC 6962 Merkle Tree Hash (section 2.1) of these leaf hashes, computed from the leaves
/// alone: `n - 1` node hashes for `n` leaves. For a complete subtree (a power of two of leaves
/// starting at a multiple of their count) it equals the one hash the log stores for that subtree,
/// so a reader holding the leaves can check all of them against that single stored hash.
pub fn subtree_root(leaves: &[Hash]) -> Hash {
    // Level by level from the leaves, pairing neighbours and carrying a last odd node up as it is:
    // the same tree as the RFC's split at the largest power of two below `n` (the tests compare
    // the two), without recursion.
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        let pairs = level.len() / 2;
        for i in 0..pairs {
            level[i] = node_hash(&level[2 * i], &level[2 * i + 1]);
        }
        let odd = level.len() % 2 == 1;
        if odd {
            level[pairs] = level[level.len() - 1];
        }
        level.truncate(pairs + usize::from(odd));
    }
    level.first().copied().unwrap_or_else(empty_root)
}

/// The root of the tree of the first `size` leaves, from stored hashes.
pub fn tree_hash<R: HashReader + ?Sized>(size: u64, reader: &R) -> Result<Hash, ProofError> {
    if size == 0 {
        return Ok(empty_root());
    }
    let mut plan = Plan::new();
    plan.subtree(0, size);
    Ok(plan.execute(reader)?.remove(0))
}

/// The RFC 6962 inclusion proof (audit path) of leaf `index` in the tree of `size` leaves,
/// read from stored hashes.
pub fn inclusion_proof<R: HashReader + ?Sized>(
    index: u64,
    size: u64,
    reader: &R,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    // PATH(m, D[lo:hi]) from RFC 6962 §2.1.1, unrolled: the siblings are collected root-down
    // and the proof lists them leaf-up.
    let mut plan = Plan::new();
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            plan.subtree(lo + k, hi);
            hi = lo + k;
        } else {
            plan.subtree(lo, lo + k);
            lo += k;
        }
    }
    let mut proof = plan.execute(reader)?;
    proof.reverse();
    Ok(proof)
}

/// The RFC 6962 consistency proof between the trees of `old` and `new` leaves, read from stored
/// hashes. Empty when `old` is 0 or equal to `new`.
pub fn consistency_proof<R: HashReader + ?Sized>(
    old: u64,
    new: u64,
    reader: &R,
) -> Result<Vec<Hash>, ProofError> {
    if old > new {
        return Err(ProofError::SizesOutOfOrder { old, new });
    }
    if old == 0 || old == new {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[lo:hi], b) from RFC 6962 §2.1.2, unrolled like the inclusion proof.
    let mut plan = Plan::new();
    let (mut lo, mut hi, mut m) = (0u64, new, old);
    let mut complete = true;
    loop {
        if m == hi - lo {
            if !complete {
                plan.subtree(lo, hi);
            }
            break;
        }
        let k = split_point(hi - lo);
        if m <= k {
            plan.subtree(lo + k, hi);
            hi = lo + k;
        } else {
            plan.subtree(lo, lo + k);
            lo += k;
            m -= k;
            complete = false;
        }
    }
    let mut proof = plan.execute(reader)?;
    proof.reverse();
    Ok(proof)
}

/// Checks an inclusion proof by RFC 9162 §2.1.3.2: that `leaf` is leaf `index` of the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion(index, size, leaf, proof)?;
    if computed != *root {
        return Err(ProofError::RootMismatch {
            which: "tree",
            computed,
            expected: *root,
        });
    }
    Ok(())
}

/// The root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1–3), with the length check.
pub fn root_from_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let want = inclusion_proof_len(index, size);
    if proof.len() != want {
        return Err(ProofError::WrongProofLength {
            got: proof.len(),
            want,
        });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        // Step 3a cannot fire: the length check above guarantees sn > 0 here.
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    debug_assert_eq!(sn, 0);
    Ok(r)
}

/// The number of hashes in the inclusion proof of leaf `index` in a tree of `size` leaves.
pub fn inclusion_proof_len(index: u64, size: u64) -> usize {
    // The path has one hash per level below the point where index and the last leaf's paths
    // diverge, plus one per level above it where the right edge has a left sibling.
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = (index >> inner).count_ones();
    (inner + border) as usize
}

/// Checks a consistency proof by RFC 9162 §2.1.4.2: that the tree of `old` leaves with root
/// `old_root` is a prefix of the tree of `new` leaves with root `new_root`.
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizesOutOfOrder { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongProofLength {
                got: proof.len(),
                want: 0,
            });
        }
        if old_root != new_root {
            return Err(ProofError::RootMismatch {
                which: "new tree",
                computed: *old_root,
                expected: *new_root,
            });
        }
        return Ok(());
    }
    if old == 0 {
        // Every tree extends the empty tree; there is nothing to prove.
        if !proof.is_empty() {
            return Err(ProofError::WrongProofLength {
                got: proof.len(),
                want: 0,
            });
        }
        return Ok(());
    }
    let want = consistency_proof_len(old, new);
    if proof.len() != want {
        return Err(ProofError::WrongProofLength {
            got: proof.len(),
            want,
        });
    }
    // Step 2: if the old size is a power of two, its root is the first node of the path.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    // Steps 3–4.
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5.
    let mut fr = path[0];
    let mut sr = path[0];
    // Step 6.
    for c in &path[1..] {
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 7.
    debug_assert_eq!(sn, 0);
    if fr != *old_root {
        return Err(ProofError::RootMismatch {
            which: "old tree",
            computed: fr,
            expected: *old_root,
        });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            which: "new tree",
            computed: sr,
            expected: *new_root,
        });
    }
    Ok(())
}

/// The number of hashes in the consistency proof from `old` to `new` leaves (`0 < old < new`).
pub fn consistency_proof_len(old: u64, new: u64) -> usize {
    // The levels where old-1 and new-1 differ contribute one hash each, plus one per set bit
    // above them, minus the old root itself when old is a power of two (it is implied).
    let inner = 64 - ((old - 1) ^ (new - 1)).leading_zeros();
    let shift = (old - 1).trailing_ones().min(inner);
    let border = ((old - 1) >> inner).count_ones();
    let base = (inner - shift + border) as usize;
    if old.is_power_of_two() {
        base
    } else {
        base + 1
    }
}

/// The right edge of a growing tree: the roots of its complete subtrees, largest first. It is
/// all an appender or an auditor needs to compute new stored hashes and the root, without reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)` of each complete subtree in the binary decomposition of `size`.
    nodes: Vec<(u8, Hash)>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Loads the frontier of a tree of `size` leaves from stored hashes (`O(log size)` reads).
    pub fn load<R: HashReader + ?Sized>(size: u64, reader: &R) -> Result<Self, ProofError> {
        let mut indexes = Vec::new();
        let mut levels = Vec::new();
        let mut lo = 0u64;
        for level in (0..64u8).rev() {
            if size & (1u64 << level) != 0 {
                indexes.push(stored_hash_index(level, lo >> level));
                levels.push(level);
                lo += 1u64 << level;
            }
        }
        let hashes = reader.read_hashes(&indexes)?;
        Ok(Frontier {
            size,
            nodes: levels.into_iter().zip(hashes).collect(),
        })
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash and returns the stored hashes it creates, in append order (the leaf
    /// hash first, then each subtree it completes, bottom-up). Their indexes start at
    /// `stored_hash_count(size before the append)`.
    pub fn append(&mut self, leaf: Hash) -> Vec<Hash> {
        let mut created = vec![leaf];
        let mut hash = leaf;
        let mut level = 0u8;
        while let Some(&(top_level, left)) = self.nodes.last() {
            if top_level != level {
                break;
            }
            self.nodes.pop();
            hash = node_hash(&left, &hash);
            level += 1;
            created.push(hash);
        }
        self.nodes.push((level, hash));
        self.size += 1;
        created
    }

    /// Each complete subtree of the frontier as `(stored hash index, hash)`, largest first: the
    /// hashes an inclusion proof of any recent leaf reads above the level where it and the
    /// tree's size part ways.
    pub fn stored_nodes(&self) -> Vec<(u64, Hash)> {
        let mut lo = 0u64;
        self.nodes
            .iter()
            .map(|&(level, hash)| {
                let index = stored_hash_index(level, lo >> level);
                lo += 1u64 << level;
                (index, hash)
            })
            .collect()
    }

    /// The root of the tree.
    pub fn root(&self) -> Hash {
        let parts: Vec<Hash> = self.nodes.iter().map(|(_, h)| *h).collect();
        fold_right(&parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962 MTH straight from the definition, as a reference for the stored-hash code.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    /// RFC 6962 PATH straight from the definition.
    fn reference_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split_point(n as u64) as usize;
        if m < k {
            let mut p = reference_path(m, &leaves[..k]);
            p.push(reference_root(&leaves[k..]));
            p
        } else {
            let mut p = reference_path(m - k, &leaves[k..]);
            p.push(reference_root(&leaves[..k]));
            p
        }
    }

    /// RFC 6962 SUBPROOF straight from the definition.
    fn reference_subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if complete {
                Vec::new()
            } else {
                vec![reference_root(leaves)]
            };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut p = reference_subproof(m, &leaves[..k], complete);
            p.push(reference_root(&leaves[k..]));
            p
        } else {
            let mut p = reference_subproof(m - k, &leaves[k..], false);
            p.push(reference_root(&leaves[..k]));
            p
        }
    }

    fn build(n: u64) -> (Vec<Hash>, Vec<Hash>, Vec<Hash>) {
        let mut frontier = Frontier::new();
        let mut stored = Vec::new();
        let mut leaves = Vec::new();
        let mut roots = vec![empty_root()];
        for i in 0..n {
            let leaf = leaf_hash(&i.to_be_bytes());
            assert_eq!(stored.len() as u64, stored_hash_count(i));
            stored.extend(frontier.append(leaf));
            assert_eq!(stored.len() as u64, stored_hash_count(i + 1));
            leaves.push(leaf);
            roots.push(frontier.root());
        }
        (leaves, stored, roots)
    }

    #[test]
    fn stored_hash_index_matches_go_tlog() {
        // Values from Go's tlog: level 0 indexes 0,1,3,4,7,…; level 1 index 0 is 2, etc.
        assert_eq!(stored_hash_index(0, 0), 0);
        assert_eq!(stored_hash_index(0, 1), 1);
        assert_eq!(stored_hash_index(1, 0), 2);
        assert_eq!(stored_hash_index(0, 2), 3);
        assert_eq!(stored_hash_index(0, 3), 4);
        assert_eq!(stored_hash_index(1, 1), 5);
        assert_eq!(stored_hash_index(2, 0), 6);
        assert_eq!(stored_hash_index(0, 4), 7);
        for index in 0..5000u64 {
            let (level, n) = split_stored_hash_index(index);
            assert_eq!(stored_hash_index(level, n), index, "index {index}");
        }
    }

    #[test]
    fn stored_hashes_roots_and_proofs_match_the_rfc_definitions() {
        let (leaves, stored, roots) = build(70);
        for n in 0..=70usize {
            assert_eq!(roots[n], reference_root(&leaves[..n]), "root of {n}");
            assert_eq!(subtree_root(&leaves[..n]), roots[n], "subtree_root of {n}");
            assert_eq!(tree_hash(n as u64, &stored).expect("root"), roots[n]);
            let loaded = Frontier::load(n as u64, &stored).expect("frontier");
            assert_eq!(loaded.root(), roots[n]);
            for m in 0..n {
                let proof = inclusion_proof(m as u64, n as u64, &stored).expect("proof");
                assert_eq!(proof, reference_path(m, &leaves[..n]), "PATH({m}, {n})");
                assert_eq!(proof.len(), inclusion_proof_len(m as u64, n as u64));
                verify_inclusion(m as u64, n as u64, &leaves[m], &proof, &roots[n])
                    .expect("verifies");
            }
            for m in 1..n {
                let proof = consistency_proof(m as u64, n as u64, &stored).expect("proof");
                assert_eq!(
                    proof,
                    reference_subproof(m, &leaves[..n], true),
                    "PROOF({m}, {n})"
                );
                assert_eq!(proof.len(), consistency_proof_len(m as u64, n as u64));
                verify_consistency(m as u64, n as u64, &proof, &roots[m], &roots[n])
                    .expect("verifies");
            }
        }
    }

    #[test]
    fn frontier_nodes_name_their_stored_hashes() {
        let (_, stored, _) = build(70);
        let mut frontier = Frontier::new();
        for n in 1..=70u64 {
            frontier.append(stored[stored_hash_index(0, n - 1) as usize]);
            let nodes = frontier.stored_nodes();
            assert_eq!(nodes.len() as u32, n.count_ones(), "size {n}");
            for (index, hash) in nodes {
                assert_eq!(
                    stored[index as usize], hash,
                    "size {n}, stored hash {index}"
                );
            }
        }
    }

    #[test]
    fn typed_errors_say_what_did_not_match() {
        let (leaves, stored, roots) = build(9);
        let proof = inclusion_proof(3, 9, &stored).expect("proof");
        assert_eq!(
            verify_inclusion(9, 9, &leaves[3], &proof, &roots[9]),
            Err(ProofError::IndexOutOfRange { index: 9, size: 9 })
        );
        assert_eq!(
            verify_inclusion(3, 9, &leaves[3], &proof[1..], &roots[9]),
            Err(ProofError::WrongProofLength {
                got: proof.len() - 1,
                want: proof.len()
            })
        );
        assert!(matches!(
            verify_inclusion(3, 9, &leaves[4], &proof, &roots[9]),
            Err(ProofError::RootMismatch { which: "tree", .. })
        ));
        let proof = consistency_proof(3, 9, &stored).expect("proof");
        assert!(matches!(
            verify_consistency(3, 9, &proof, &roots[4], &roots[9]),
            Err(ProofError::RootMismatch {
                which: "old tree",
                ..
            })
        ));
        assert!(matches!(
            verify_consistency(3, 9, &proof, &roots[3], &roots[8]),
            Err(ProofError::RootMismatch {
                which: "new tree",
                ..
            })
        ));
        assert_eq!(
            verify_consistency(9, 3, &proof, &roots[3], &roots[9]),
            Err(ProofError::SizesOutOfOrder { old: 9, new: 3 })
        );
        assert_eq!(
            inclusion_proof(3, 9, &stored[..5]),
            Err(ProofError::MissingHash { level: 0, index: 8 })
        );
    }

    #[test]
    fn known_answers_from_transparency_dev_merkle() {
        // testonly/constants.go of transparency-dev/merkle at 417fb0c3: the eight leaves and the
        // root of all eight, which starts 5dc9da79.
        let leaves = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ];
        let mut frontier = Frontier::new();
        for leaf in leaves {
            frontier.append(leaf_hash(&hex::decode(leaf).expect("hex")));
        }
        assert!(frontier.root().to_hex().starts_with("5dc9da79"));
        assert_eq!(
            empty_root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
