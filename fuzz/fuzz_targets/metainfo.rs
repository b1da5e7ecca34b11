#![no_main]
//! Any bytes as a .torrent: no panic; whatever parses has consistent geometry and paths that
//! stay inside the download directory.

use libfuzzer_sys::fuzz_target;
use pow_metainfo::Metainfo;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metainfo::from_bytes(data) {
        let g = &m.geometry;
        assert_eq!(g.piece_count() as usize, m.piece_hashes.len());
        let mut covered = 0u64;
        for piece in g.pieces() {
            covered += g.piece_spans(piece).iter().map(|s| s.length).sum::<u64>();
        }
        assert_eq!(covered, m.total_length());
        for f in &m.files {
            let rel = f.path.to_path_buf();
            assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
            assert!(Path::new("/dl").join(&rel).starts_with("/dl"));
        }
    }
});
