//! The real 15-entry log of `transparency-dev/tessera` (commit 1811ae1a, `testdata/log/`, copied to
//! `testdata/tessera-log/`): every checkpoint opens with the published verifier key, every root
//! equals the one recomputed from the leaves, every pair of sizes is consistent by our proofs, and
//! the level-0 tiles equal our leaf hashes. Signing the same bodies with the published test signing
//! key reproduces the published signatures byte for byte (Ed25519 is deterministic).

use std::path::{Path, PathBuf};

use custodian_core::checkpoint::Checkpoint;
use custodian_core::merkle::{
    Frontier, Hash, consistency_proof, empty_root, inclusion_proof, leaf_hash, verify_consistency,
    verify_inclusion,
};
use custodian_core::note::{Note, SignerKey, VerifierKey};

const VKEY: &str = "example.com/log/testdata+33d7b496+AeHTu4Q3hEIMHNqc6fASMsq3rKNx280NI+oO5xCFkkSx";
const SKEY: &str =
    "PRIVATE+KEY+example.com/log/testdata+33d7b496+AeymY/SZAX0jZcJ8enZ5FY1Dz+wTML2yWSkK+9DSF3eg";
const LEAVES: [&str; 15] = [
    "one", "two", "three", "four", "five", "six", "seven", "eit", "nain", "ten", "ileven", "twelf",
    "threeten", "fourten", "fivten",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tessera-log")
}

#[test]
fn every_checkpoint_opens_and_matches_the_leaves() {
    let verifier = VerifierKey::parse(VKEY).expect("verifier key");
    let signer = SignerKey::parse(SKEY).expect("signer key");
    assert_eq!(signer.verifier(), verifier);
    let mut frontier = Frontier::new();
    let mut stored: Vec<Hash> = Vec::new();
    let mut roots = vec![empty_root()];
    for leaf in LEAVES {
        stored.extend(frontier.append(leaf_hash(leaf.as_bytes())));
        roots.push(frontier.root());
    }
    for size in 0..=15u64 {
        let signed = std::fs::read(dir().join(format!("checkpoint.{size}"))).expect("read");
        let checkpoint = Checkpoint::open(&signed, &verifier).expect("open checkpoint");
        assert_eq!(checkpoint.origin, "example.com/log/testdata");
        assert_eq!(checkpoint.size, size);
        assert_eq!(checkpoint.root, roots[size as usize], "root at size {size}");
        // Our signer reproduces the published note exactly.
        assert_eq!(
            checkpoint.sign(&signer).expect("sign").as_bytes(),
            signed.as_slice(),
            "signature at size {size}"
        );
        let note = Note::parse(&signed).expect("parse");
        assert_eq!(note.signatures.len(), 1);
        for index in 0..size {
            let proof = inclusion_proof(index, size, &stored).expect("proof");
            verify_inclusion(
                index,
                size,
                &leaf_hash(LEAVES[index as usize].as_bytes()),
                &proof,
                &checkpoint.root,
            )
            .expect("inclusion");
        }
        for old in 0..=size {
            let proof = consistency_proof(old, size, &stored).expect("proof");
            verify_consistency(old, size, &proof, &roots[old as usize], &checkpoint.root)
                .expect("consistency");
        }
    }
    // The size-15 root the test data's README quotes.
    assert_eq!(
        base64_of(&roots[15]),
        "rKbDipCvhuX1GZ7g5BBe8sA6BbJ7ja/1nk427v383cs="
    );
    // Level-0 tiles are the concatenated leaf hashes.
    let tile = std::fs::read(dir().join("tile/0/000.p/15")).expect("tile");
    let ours: Vec<u8> = LEAVES
        .iter()
        .flat_map(|l| leaf_hash(l.as_bytes()).0)
        .collect();
    assert_eq!(tile, ours);
}

fn base64_of(hash: &Hash) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(hash.0)
}

/// Every partial level-0 tile Tessera wrote, found at the path `tiles::Tile::path` names and equal
/// to the stored hashes `Tile::stored_hash_indexes` picks: our tile server reads exactly these.
#[test]
fn our_tile_paths_and_hash_selection_reproduce_tesseras_tiles() {
    use custodian_core::tiles::{Tile, tile_width_at};
    let mut frontier = Frontier::new();
    let mut stored: Vec<Hash> = Vec::new();
    for (i, leaf) in LEAVES.iter().enumerate() {
        stored.extend(frontier.append(leaf_hash(leaf.as_bytes())));
        let size = i as u64 + 1;
        let tile = Tile {
            level: 0,
            index: 0,
            width: tile_width_at(size, 0, 0),
        };
        assert_eq!(tile.path(), format!("tile/0/000.p/{size}"));
        let published = std::fs::read(dir().join(tile.path())).expect("tile");
        let ours: Vec<u8> = tile
            .stored_hash_indexes()
            .expect("indexes")
            .into_iter()
            .flat_map(|index| stored[index as usize].0)
            .collect();
        assert_eq!(published, ours, "{}", tile.path());
    }
}

/// Tessera's entry bundles, `tile/entries/000.p/<W>` for every width 1 to 15 it wrote: our path
/// names each, our encoding of the first `W` leaves reproduces it byte for byte, and our decoding
/// gives the leaves back (and refuses a wrong width or a cut-off bundle).
#[test]
fn our_entry_bundles_reproduce_tesseras_bundles() {
    use custodian_core::tiles::EntryBundle;
    for width in 1..=15u16 {
        let bundle = EntryBundle { index: 0, width };
        let path = bundle.path();
        assert_eq!(path, format!("tile/entries/000.p/{width}"));
        assert_eq!(EntryBundle::parse(&path).expect("parse"), bundle);
        let published = match std::fs::read(dir().join(&path)) {
            Ok(bytes) => bytes,
            // Tessera wrote bundles only at the sizes it published checkpoints for.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{path}: {e}"),
        };
        let leaves: Vec<&[u8]> = LEAVES[..usize::from(width)]
            .iter()
            .map(|l| l.as_bytes())
            .collect();
        assert_eq!(
            EntryBundle::encode(&leaves).expect("encode"),
            published,
            "{path}"
        );
        assert_eq!(
            EntryBundle::decode(&published, width).expect("decode"),
            leaves
        );
        assert!(EntryBundle::decode(&published, width + 1).is_err());
        assert!(EntryBundle::decode(&published[..published.len() - 1], width).is_err());
    }
    assert_eq!(
        EntryBundle {
            index: 1_234_067,
            width: 256
        }
        .path(),
        "tile/entries/x001/x234/067"
    );
    assert!(EntryBundle::parse("tile/entries/1").is_err());
    assert!(EntryBundle::parse("tile/0/000").is_err());
    assert!(EntryBundle::parse("tile/entries/000.p/256").is_err());
    let long = vec![0u8; 70_000];
    assert_eq!(
        EntryBundle::encode(&[&b"a"[..], &long[..]]),
        Err((1, 70_000))
    );
}
