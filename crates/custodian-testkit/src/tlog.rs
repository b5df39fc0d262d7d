//! A log held in memory, signed with a known key: checkpoints, consistency proofs and
//! tlog-witness requests for witness tests, and forks of it under the same key for split views.

use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::{self, Frontier, Hash};
use custodian_core::note::SignerKey;
use custodian_core::witness::AddCheckpoint;

/// A log of synthetic leaves signed by `signer`.
#[derive(Clone)]
pub struct TestLog {
    /// The log's key; its name is the origin.
    pub signer: SignerKey,
    /// The leaf hashes, in order.
    pub leaves: Vec<Hash>,
}

impl TestLog {
    /// An empty log named `origin` with the key from `seed`.
    pub fn new(origin: &str, seed: u8) -> Self {
        TestLog {
            signer: SignerKey::from_seed(origin, [seed; 32]).expect("log key"),
            leaves: Vec::new(),
        }
    }

    /// Appends `n` leaves; `tag` makes different histories differ.
    pub fn grow(&mut self, n: usize, tag: u8) {
        for _ in 0..n {
            let i = self.leaves.len() as u64;
            let mut data = vec![tag];
            data.extend_from_slice(&i.to_be_bytes());
            self.leaves.push(merkle::leaf_hash(&data));
        }
    }

    /// The same key and the first `at` leaves, then `n` different ones: a split view.
    pub fn fork(&self, at: usize, n: usize) -> TestLog {
        let mut fork = TestLog {
            signer: self.signer.clone(),
            leaves: self.leaves[..at].to_vec(),
        };
        fork.grow(n, 0xf0);
        fork
    }

    fn stored(&self, size: u64) -> (Frontier, Vec<Hash>) {
        let mut frontier = Frontier::new();
        let mut hashes = Vec::new();
        for leaf in &self.leaves[..size as usize] {
            hashes.extend(frontier.append(*leaf));
        }
        (frontier, hashes)
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Hash {
        self.stored(size).0.root()
    }

    /// The signed checkpoint of the first `size` leaves.
    pub fn checkpoint(&self, size: u64) -> String {
        Checkpoint::new(self.signer.name(), size, self.root(size))
            .sign(&self.signer)
            .expect("sign")
    }

    /// The consistency proof from `old` to `new` (empty when `old` is 0 or equals `new`).
    pub fn proof(&self, old: u64, new: u64) -> Vec<Hash> {
        if old == 0 || old == new {
            return Vec::new();
        }
        merkle::consistency_proof(old, new, &self.stored(new).1).expect("proof")
    }

    /// The tlog-witness add-checkpoint body for growing from `old` to `new`.
    pub fn request(&self, old: u64, new: u64) -> Vec<u8> {
        AddCheckpoint {
            old_size: old,
            proof: self.proof(old, new),
            checkpoint: self.checkpoint(new).into_bytes(),
        }
        .to_body()
    }
}

/// The signature lines of a signed note (everything after its blank line), each with its newline:
/// what a test appends to another note to give it more signatures.
pub fn signature_lines(signed_note: &str) -> &str {
    signed_note
        .rsplit_once("\n\n")
        .expect("a signed note has a blank line before its signatures")
        .1
}
