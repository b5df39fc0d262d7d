//! C2SP tlog-tiles (<https://c2sp.org/tlog-tiles>): the names of a log's hash tiles and which
//! stored hashes each one holds, so that any tlog-tiles client (Go's `sumdb/tlog`, Tessera's
//! client) can read the ledger without Custodian's own protocol.
//!
//! A tile at level `L`, index `N` holds up to 256 consecutive hashes of tree level `8·L`: the
//! hashes of the complete subtrees of 2^(8·L) leaves numbered `256·N` onwards. A full tile holds
//! 256 and never changes; the rightmost tile of a level is partial (`.p/W`, 1 ≤ W ≤ 255) until
//! it fills. Every hash a tile holds is a stored hash of [`crate::merkle`]'s layout (Go's
//! `tlog.StoredHashIndex`), so tiles are read straight from the ledger's stored tree.
//!
//! Paths are `tile/<L>/<N>[.p/<W>]`, with `N` written as three-digit groups, all but the last
//! prefixed with `x` (`1234067` is `x001/x234/067`). Parsing accepts the canonical form only, so
//! each tile has one URL and caches never hold two copies.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::merkle::{
    Hash, HashReader, ProofError, node_hash, split_stored_hash_index, stored_hash_index,
};

/// Tree levels per tile level (tiles of 2^8 = 256 hashes).
pub const TILE_HEIGHT: u32 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: u16 = 256;

/// Why a tile path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    /// The path is not `tile/<L>/<N>[.p/<W>]` in canonical form; the reason says which part.
    #[error("{path:?} is not a tile path (tile/<L>/<N>[.p/<W>], c2sp.org/tlog-tiles): {reason}")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// One hash tile: its level, its index within the level and its width (256 when full).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// The tile level; level 0 holds leaf hashes.
    pub level: u8,
    /// The tile's index within its level.
    pub index: u64,
    /// How many hashes it holds, 1 to 256.
    pub width: u16,
}

impl Tile {
    /// True when the tile holds all 256 hashes and so can never change.
    pub fn is_full(&self) -> bool {
        self.width == TILE_WIDTH
    }

    /// The tile's path, `tile/<L>/<N>[.p/<W>]`.
    pub fn path(&self) -> String {
        format!("tile/{}/{}", self.level, index_path(self.index, self.width))
    }

    /// Parses a canonical tile path (relative to the log's prefix).
    pub fn parse(path: &str) -> Result<Tile, TileError> {
        let bad = |reason| TileError::BadPath {
            path: path.to_string(),
            reason,
        };
        let rest = path
            .strip_prefix("tile/")
            .ok_or(bad("it must start with tile/"))?;
        let (level, rest) = rest.split_once('/').ok_or(bad("no tile index"))?;
        let level = parse_decimal(level)
            .filter(|&l| l <= 63)
            .ok_or(bad("the level must be a number from 0 to 63"))? as u8;
        let (index, width) = parse_index_path(rest).map_err(bad)?;
        Ok(Tile {
            level,
            index,
            width,
        })
    }

    /// The stored-hash indexes of the hashes the tile holds, in order (`None` when the tile lies
    /// beyond what 64-bit leaf numbers can reach).
    pub fn stored_hash_indexes(&self) -> Option<Vec<u64>> {
        let tree_level = u32::from(self.level) * TILE_HEIGHT;
        let tree_level = u8::try_from(tree_level).ok().filter(|&l| l < 64)?;
        let first = self.index.checked_mul(u64::from(TILE_WIDTH))?;
        // The last hash of the tile must cover leaves that exist in a 64-bit log.
        let last = first.checked_add(u64::from(self.width) - 1)?;
        if (u128::from(last) + 1) << tree_level > u128::from(u64::MAX) {
            return None;
        }
        Some(
            (first..=last)
                .map(|n| stored_hash_index(tree_level, n))
                .collect(),
        )
    }
}

/// How many hashes tile (`level`, `index`) holds in a tree of `size` leaves: 256 when it is
/// full, 0 when the tree does not reach it.
pub fn tile_width_at(size: u64, level: u8, index: u64) -> u16 {
    let shift = u32::from(level) * TILE_HEIGHT;
    let complete = if shift >= 64 { 0 } else { size >> shift };
    let first = index.saturating_mul(u64::from(TILE_WIDTH));
    complete.saturating_sub(first).min(u64::from(TILE_WIDTH)) as u16
}

/// Stored hashes read out of a log's hash tiles, as a tlog-tiles client reads them: the hash of
/// level `l`, node `n` is folded from the 2^(l mod 8) hashes of tile level `l div 8` beneath it.
/// Tiles are fetched at the widths a tree of `size` leaves has (through `fetch`, which the caller
/// backs with HTTP, a bucket or files) and kept for the reader's lifetime. Nothing read here is
/// trusted until a proof built from it verifies against a signed root.
pub struct TileHashes<F> {
    size: u64,
    fetch: F,
    tiles: RefCell<HashMap<(u8, u64), Vec<Hash>>>,
}

impl<F: Fn(&Tile) -> Result<Vec<u8>, String>> TileHashes<F> {
    /// A reader of the tiles of a tree of `size` leaves.
    pub fn new(size: u64, fetch: F) -> Self {
        TileHashes {
            size,
            fetch,
            tiles: RefCell::new(HashMap::new()),
        }
    }

    /// How many tiles were fetched so far.
    pub fn fetched(&self) -> usize {
        self.tiles.borrow().len()
    }

    fn hash(&self, index: u64) -> Result<Hash, ProofError> {
        let (level, n) = split_stored_hash_index(index);
        let missing = ProofError::MissingHash { level, index: n };
        let tile_level = level / TILE_HEIGHT as u8;
        let sublevel = u32::from(level) % TILE_HEIGHT;
        let first = n.checked_shl(sublevel).ok_or(missing.clone())?;
        let count = 1usize << sublevel;
        let tile_index = first / u64::from(TILE_WIDTH);
        let offset = (first % u64::from(TILE_WIDTH)) as usize;
        let width = tile_width_at(self.size, tile_level, tile_index);
        if offset + count > usize::from(width) {
            return Err(missing);
        }
        let key = (tile_level, tile_index);
        if !self.tiles.borrow().contains_key(&key) {
            let tile = Tile {
                level: tile_level,
                index: tile_index,
                width,
            };
            let bytes = (self.fetch)(&tile).map_err(ProofError::Read)?;
            if bytes.len() != usize::from(width) * 32 {
                return Err(ProofError::Read(format!(
                    "{} is {} bytes, not {}",
                    tile.path(),
                    bytes.len(),
                    usize::from(width) * 32
                )));
            }
            let hashes = bytes
                .chunks_exact(32)
                .map(Hash::from_slice)
                .collect::<Result<Vec<_>, _>>()?;
            self.tiles.borrow_mut().insert(key, hashes);
        }
        let tiles = self.tiles.borrow();
        let mut row: Vec<Hash> = tiles
            .get(&key)
            .map(|hashes| hashes[offset..offset + count].to_vec())
            .ok_or(missing)?;
        while row.len() > 1 {
            row = row
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
        }
        Ok(row[0])
    }
}

impl<F: Fn(&Tile) -> Result<Vec<u8>, String>> HashReader for TileHashes<F> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, ProofError> {
        indexes.iter().map(|&index| self.hash(index)).collect()
    }
}

/// `<N>[.p/<W>]` with `N` in three-digit groups, all but the last prefixed with `x`.
fn index_path(index: u64, width: u16) -> String {
    let mut n = index;
    let mut digits = format!("{:03}", n % 1000);
    while n >= 1000 {
        n /= 1000;
        digits = format!("x{:03}/{digits}", n % 1000);
    }
    if width == TILE_WIDTH {
        digits
    } else {
        format!("{digits}.p/{width}")
    }
}

/// Parses `<N>[.p/<W>]` in canonical form; the error says which rule it breaks.
fn parse_index_path(rest: &str) -> Result<(u64, u16), &'static str> {
    let (index, width) = match rest.split_once(".p/") {
        Some((index, width)) => {
            let width = parse_decimal(width)
                .filter(|w| (1..u64::from(TILE_WIDTH)).contains(w))
                .ok_or("a partial width must be a number from 1 to 255")?;
            (index, width as u16)
        }
        None => (rest, TILE_WIDTH),
    };
    let groups: Vec<&str> = index.split('/').collect();
    let mut n: u64 = 0;
    for (i, group) in groups.iter().enumerate() {
        let last = i + 1 == groups.len();
        let digits = if last {
            *group
        } else {
            group
                .strip_prefix('x')
                .ok_or("every index group but the last starts with x")?
        };
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("an index group is exactly three digits");
        }
        if i == 0 && !last && digits == "000" {
            return Err("the index has a leading zero group");
        }
        let value: u64 = digits.parse().map_err(|_| "bad index digits")?;
        n = n
            .checked_mul(1000)
            .and_then(|n| n.checked_add(value))
            .ok_or("the index is too large")?;
    }
    Ok((n, width))
}

/// The longest entry a bundle can hold: tlog-tiles prefixes each with a big-endian uint16.
pub const MAX_BUNDLE_ENTRY: usize = u16::MAX as usize;

/// An entry bundle (`tile/entries/<N>[.p/<W>]`): entries `256·N` to `256·N + W − 1`, each as a
/// big-endian uint16 length and the entry's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryBundle {
    /// The bundle's index.
    pub index: u64,
    /// How many entries it holds, 1 to 256.
    pub width: u16,
}

impl EntryBundle {
    /// The bundle's path, `tile/entries/<N>[.p/<W>]`.
    pub fn path(&self) -> String {
        format!("tile/entries/{}", index_path(self.index, self.width))
    }

    /// Parses a canonical bundle path (relative to the log's prefix).
    pub fn parse(path: &str) -> Result<EntryBundle, TileError> {
        let bad = |reason| TileError::BadPath {
            path: path.to_string(),
            reason,
        };
        let rest = path
            .strip_prefix("tile/entries/")
            .ok_or(bad("an entry bundle path starts with tile/entries/"))?;
        let (index, width) = parse_index_path(rest).map_err(bad)?;
        Ok(EntryBundle { index, width })
    }

    /// The index of its first entry (`None` beyond 64-bit entry numbers).
    pub fn first(&self) -> Option<u64> {
        self.index.checked_mul(u64::from(TILE_WIDTH))
    }

    /// The bundle of `width` entries starting at `256·index`, as bytes. An entry longer than
    /// [`MAX_BUNDLE_ENTRY`] cannot be written; its position in `entries` is returned.
    pub fn encode<E: AsRef<[u8]>>(entries: &[E]) -> Result<Vec<u8>, (usize, usize)> {
        let mut out = Vec::with_capacity(entries.iter().map(|e| e.as_ref().len() + 2).sum());
        for (at, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref();
            let len = u16::try_from(entry.len()).map_err(|_| (at, entry.len()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(entry);
        }
        Ok(out)
    }

    /// Splits bundle bytes into exactly `width` entries; anything else is an error.
    pub fn decode(bytes: &[u8], width: u16) -> Result<Vec<&[u8]>, String> {
        let mut out = Vec::with_capacity(usize::from(width));
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some((len, tail)) = rest.split_first_chunk::<2>() else {
                return Err(format!("entry {} has a cut-off length prefix", out.len()));
            };
            let len = usize::from(u16::from_be_bytes(*len));
            if tail.len() < len {
                return Err(format!(
                    "entry {} says {len} bytes, {} remain",
                    out.len(),
                    tail.len()
                ));
            }
            out.push(&tail[..len]);
            rest = &tail[len..];
        }
        if out.len() != usize::from(width) {
            return Err(format!(
                "the bundle holds {} entries, its width is {width}",
                out.len()
            ));
        }
        Ok(out)
    }
}

/// The entry bundles a log growing from `from` to `to` entries adds or widens, at their widths
/// at `to` (the bundles of level-0 tiles, one for one).
pub fn changed_bundles(from: u64, to: u64) -> Vec<EntryBundle> {
    changed_tiles(from, to)
        .into_iter()
        .filter(|t| t.level == 0)
        .map(|t| EntryBundle {
            index: t.index,
            width: t.width,
        })
        .collect()
}

/// The tiles a log growing from `from` to `to` entries adds or widens, at their widths at `to`.
pub fn changed_tiles(from: u64, to: u64) -> Vec<Tile> {
    let mut out = Vec::new();
    for level in 0u8..8 {
        let shift = u32::from(level) * 8;
        let hashes = to >> shift;
        if hashes == 0 {
            break;
        }
        let first = (from >> shift) / 256;
        let last = (hashes - 1) / 256;
        for index in first..=last {
            let width = tile_width_at(to, level, index);
            // A tile that was already full at `from` did not change.
            if width > 0 && tile_width_at(from, level, index) < width {
                out.push(Tile {
                    level,
                    index,
                    width,
                });
            }
        }
    }
    out
}

/// A number in canonical decimal: digits only, no leading zero (except `0` itself).
fn parse_decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(level: u8, index: u64, width: u16) -> Tile {
        Tile {
            level,
            index,
            width,
        }
    }

    /// The examples of c2sp.org/tlog-tiles and Go's `tlog.Tile.Path` (with the height dropped).
    #[test]
    fn paths_follow_the_spec() {
        assert_eq!(tile(0, 1_234_067, 256).path(), "tile/0/x001/x234/067");
        assert_eq!(tile(1, 0, 256).path(), "tile/1/000");
        assert_eq!(tile(0, 0, 15).path(), "tile/0/000.p/15");
        assert_eq!(tile(2, 1000, 1).path(), "tile/2/x001/000.p/1");
        for t in [
            tile(0, 1_234_067, 256),
            tile(3, 999, 255),
            tile(0, 1000, 7),
            tile(5, u64::MAX / 256, 256),
        ] {
            assert_eq!(Tile::parse(&t.path()), Ok(t), "{}", t.path());
        }
    }

    #[test]
    fn only_canonical_paths_parse() {
        for bad in [
            "tile/0/1",
            "tile/0/0001",
            "tile/0/x000/001",
            "tile/0/001/002",
            "tile/0/x001",
            "tile/00/001",
            "tile/64/000",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/0/000.p/015",
            "tile/0/000.p/",
            "tile/0/",
            "tile/0",
            "tiles/0/000",
            "tile/entries/000",
            "tile/0/x18446744073709551/615",
        ] {
            assert!(Tile::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn widths_follow_the_tree_size() {
        assert_eq!(tile_width_at(15, 0, 0), 15);
        assert_eq!(tile_width_at(256, 0, 0), 256);
        assert_eq!(tile_width_at(256, 0, 1), 0);
        assert_eq!(tile_width_at(256, 1, 0), 1);
        assert_eq!(tile_width_at(70_000, 0, 273), 112);
        assert_eq!(tile_width_at(70_000, 1, 0), 256);
        assert_eq!(tile_width_at(70_000, 1, 1), 17);
        assert_eq!(tile_width_at(70_000, 2, 0), 1);
        assert_eq!(tile_width_at(u64::MAX, 8, 0), 0);
    }

    #[test]
    fn a_level_zero_tile_holds_leaf_hashes_and_level_one_their_256_leaf_subtrees() {
        let leaves = tile(0, 1, 2).stored_hash_indexes().expect("indexes");
        assert_eq!(
            leaves,
            vec![stored_hash_index(0, 256), stored_hash_index(0, 257)]
        );
        let upper = tile(1, 0, 3).stored_hash_indexes().expect("indexes");
        assert_eq!(
            upper,
            (0..3).map(|n| stored_hash_index(8, n)).collect::<Vec<_>>()
        );
        assert_eq!(tile(8, 0, 256).stored_hash_indexes(), None);
        assert_eq!(tile(7, u64::MAX / 256, 256).stored_hash_indexes(), None);
        assert_eq!(tile(1, u64::MAX / 256, 256).stored_hash_indexes(), None);
    }

    /// A tree of 70,000 leaves read back through its tiles alone: the root, every stored hash
    /// a proof needs, and consistency from many older sizes, all equal to what the full stored
    /// tree gives; a tile of the wrong length is an error, not a wrong answer.
    #[test]
    fn the_tree_read_through_its_tiles_is_the_tree() {
        use crate::merkle::{Frontier, consistency_proof, leaf_hash, tree_hash};
        let mut frontier = Frontier::new();
        let mut stored: Vec<Hash> = Vec::new();
        for i in 0u64..70_000 {
            stored.extend(frontier.append(leaf_hash(&i.to_be_bytes())));
        }
        let size = 70_000;
        let serve = |tile: &Tile| -> Result<Vec<u8>, String> {
            let indexes = tile.stored_hash_indexes().ok_or("beyond 64 bits")?;
            Ok(indexes
                .into_iter()
                .flat_map(|i| stored[i as usize].0)
                .collect())
        };
        let tiles = TileHashes::new(size, serve);
        assert_eq!(tree_hash(size, &tiles), Ok(frontier.root()));
        for old in [1u64, 2, 255, 256, 257, 4096, 65_535, 65_536, 69_999] {
            assert_eq!(
                consistency_proof(old, size, &tiles),
                consistency_proof(old, size, &stored),
                "{old}"
            );
        }
        assert!(tiles.fetched() < 20, "{} tiles", tiles.fetched());
        let short = TileHashes::new(size, |_: &Tile| Ok(vec![0u8; 31]));
        assert!(matches!(tree_hash(size, &short), Err(ProofError::Read(_))));
    }

    #[test]
    fn growth_touches_the_right_edge_of_every_level_only() {
        let paths =
            |from, to| -> Vec<String> { changed_tiles(from, to).iter().map(Tile::path).collect() };
        assert_eq!(paths(0, 3), ["tile/0/000.p/3"]);
        assert_eq!(paths(3, 3), Vec::<String>::new());
        assert_eq!(paths(3, 256), ["tile/0/000", "tile/1/000.p/1"]);
        assert_eq!(
            paths(250, 520),
            [
                "tile/0/000",
                "tile/0/001",
                "tile/0/002.p/8",
                "tile/1/000.p/2"
            ]
        );
        assert_eq!(paths(520, 530), ["tile/0/002.p/18"]);
        assert_eq!(
            paths(65_535, 65_536),
            ["tile/0/255", "tile/1/000", "tile/2/000.p/1"]
        );
    }
}
