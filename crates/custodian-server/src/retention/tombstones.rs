//! Deleted blobs' digest prefixes, each with the place of the deletion that recorded it last,
//! in as little memory as a daemon can keep for every deletion of its life.
//!
//! A hash map spends a slot of spare room for every few entries and, while it grows, holds its
//! old table beside the new: two million prefixes took a map of four million 13-byte slots
//! (52 MB, 78 MB while growing). Here they are sorted runs of 12-byte slots, merged like a
//! binary counter (a run is merged into the one before it once it is at least half that
//! one's length), so the whole takes 12 bytes a prefix and an insert costs O(log n) moves,
//! amortized. A run is merged into the older one's own buffer, grown in place and filled from
//! its end, so no copy of both is held at once (two million inserts: 0.29 s in all, against
//! 1.1 s when each merge sorted the joined runs). A lookup is a binary search in each of the
//! O(log n) runs and a scan of the newest few thousand, about a microsecond: cheap beside what
//! it serves (an answer about a blob that is not in custody).

/// Newly deleted prefixes wait here, unsorted, before they become a run.
const PENDING: usize = 4096;

/// One prefix and the place of its latest deletion entry: 12 bytes, no padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    key: [u8; 8],
    place: u32,
}

/// Digest prefixes of deleted blobs, each with the place (the ordinal of its `BlobsDeleted`
/// entry) of the latest deletion filed under it. Places only grow, so the latest is the
/// largest.
#[derive(Clone, Debug, Default)]
pub struct Tombstones {
    /// Sorted by key, one slot per key each, oldest and longest first.
    runs: Vec<Vec<Slot>>,
    /// The newest insertions, in arrival order.
    pending: Vec<Slot>,
}

impl Tombstones {
    /// Files `place` under `key`; a later place under the same key supersedes an earlier one.
    pub fn insert(&mut self, key: [u8; 8], place: u32) {
        self.pending.push(Slot { key, place });
        if self.pending.len() >= PENDING {
            let mut run = std::mem::take(&mut self.pending);
            sort_latest_first(&mut run);
            self.runs.push(run);
            self.merge();
        }
    }

    /// The latest place filed under `key`.
    pub fn get(&self, key: &[u8; 8]) -> Option<u32> {
        let pending = self
            .pending
            .iter()
            .filter(|s| s.key == *key)
            .map(|s| s.place);
        let runs = self.runs.iter().filter_map(|run| {
            run.binary_search_by(|s| s.key.cmp(key))
                .ok()
                .map(|i| run[i].place)
        });
        pending.chain(runs).max()
    }

    /// How many keys are held (a key in several runs counts once per run).
    #[cfg(test)]
    pub fn slots(&self) -> usize {
        self.pending.len() + self.runs.iter().map(Vec::len).sum::<usize>()
    }

    /// Merges the newest run into the one before it while it is at least half that one's
    /// length, so run lengths at least halve from oldest to newest.
    fn merge(&mut self) {
        while let [.., older, newer] = self.runs.as_slice()
            && newer.len() * 2 >= older.len()
        {
            let newer = self.runs.pop().expect("two runs");
            let older = self.runs.last_mut().expect("two runs");
            merge_into(older, &newer);
        }
    }
}

/// The order of a run: by key, and of one key the latest place first.
fn order(a: &Slot, b: &Slot) -> std::cmp::Ordering {
    a.key.cmp(&b.key).then(b.place.cmp(&a.place))
}

/// Sorts slots by key and keeps, of each key, only the slot with the latest place.
fn sort_latest_first(slots: &mut Vec<Slot>) {
    slots.sort_unstable_by(order);
    slots.dedup_by_key(|s| s.key);
    slots.shrink_to_fit();
}

/// Merges the run `newer` into the run `older`, both in [`order`], keeping of each key the
/// latest place. `older` grows in place (a run past glibc's mapping threshold grows by
/// remapping) and is filled from its end, so the merge is one pass and holds no third copy.
fn merge_into(older: &mut Vec<Slot>, newer: &[Slot]) {
    let (mut i, mut j) = (older.len(), newer.len());
    older.reserve_exact(j);
    older.resize(
        i + j,
        Slot {
            key: [0; 8],
            place: 0,
        },
    );
    let mut k = i + j;
    while j > 0 {
        k -= 1;
        if i > 0 && order(&older[i - 1], &newer[j - 1]).is_gt() {
            i -= 1;
            older[k] = older[i];
        } else {
            j -= 1;
            older[k] = newer[j];
        }
    }
    older.dedup_by_key(|s| s.key);
    older.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Against a plain map as the model: every key answers its latest place, through pending
    /// slots, many runs and their merges, with keys repeated within and across runs.
    #[test]
    fn every_key_answers_its_latest_place_as_a_map_would() {
        let mut tombstones = Tombstones::default();
        let mut model: HashMap<[u8; 8], u32> = HashMap::new();
        // A small key space (15 bits) so that keys repeat often; a deterministic generator so a
        // failure repeats.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut key = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 32_768).to_be_bytes()
        };
        for place in 0..100_000u32 {
            // Several keys share a place, as the blobs of one entry do.
            for _ in 0..(place % 3) {
                let k = key();
                tombstones.insert(k, place);
                model.insert(k, place);
            }
            if place % 9_973 == 0 {
                for (k, p) in &model {
                    assert_eq!(tombstones.get(k), Some(*p), "key {k:?} at place {place}");
                }
            }
        }
        for (k, p) in &model {
            assert_eq!(tombstones.get(k), Some(*p));
        }
        for absent in [32_768u64, 40_000, u64::MAX] {
            assert_eq!(tombstones.get(&absent.to_be_bytes()), None);
        }
        assert!(
            tombstones
                .runs
                .windows(2)
                .all(|w| w[1].len() * 2 < w[0].len()),
            "run lengths at least halve: {:?}",
            tombstones.runs.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    /// A key filed again and again, as a blob deleted and put back many times is, holds one
    /// slot once its runs are merged, and answers its latest place.
    #[test]
    fn a_key_filed_again_keeps_one_slot() {
        let mut tombstones = Tombstones::default();
        for place in 0..(3 * PENDING as u32) {
            tombstones.insert(*b"deleted!", place);
        }
        assert_eq!(tombstones.slots(), 1);
        assert_eq!(tombstones.get(b"deleted!"), Some(3 * PENDING as u32 - 1));
    }
}
