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

use crate::merkle::stored_hash_index;

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
        let mut n = self.index;
        let mut digits = format!("{:03}", n % 1000);
        while n >= 1000 {
            n /= 1000;
            digits = format!("x{:03}/{digits}", n % 1000);
        }
        let partial = if self.is_full() {
            String::new()
        } else {
            format!(".p/{}", self.width)
        };
        format!("tile/{}/{digits}{partial}", self.level)
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
        let (index, width) = match rest.split_once(".p/") {
            Some((index, width)) => {
                let width = parse_decimal(width)
                    .filter(|w| (1..u64::from(TILE_WIDTH)).contains(w))
                    .ok_or(bad("a partial width must be a number from 1 to 255"))?;
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
                    .ok_or(bad("every index group but the last starts with x"))?
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("an index group is exactly three digits"));
            }
            if i == 0 && !last && digits == "000" {
                return Err(bad("the index has a leading zero group"));
            }
            let value: u64 = digits.parse().map_err(|_| bad("bad index digits"))?;
            n = n
                .checked_mul(1000)
                .and_then(|n| n.checked_add(value))
                .ok_or(bad("the index is too large"))?;
        }
        Ok(Tile {
            level,
            index: n,
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
}
