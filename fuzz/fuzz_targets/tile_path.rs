//! Tile paths from the network: parsing never panics, and a path that parses is the canonical
//! name of its tile (one URL per tile, so caches never hold two copies).
#![no_main]
use custodian_core::tiles::Tile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tile) = Tile::parse(text) {
        assert_eq!(tile.path(), text);
        let _ = tile.stored_hash_indexes();
    }
});
