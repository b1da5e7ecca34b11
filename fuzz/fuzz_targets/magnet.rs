#![no_main]
//! Any text as a magnet link: no panic, and whatever parses survives `to_uri` and back with the
//! same info-hashes (and, in fact, every field but the warnings).

use libfuzzer_sys::fuzz_target;
use pow_metainfo::magnet::{Magnet, MAX_URI_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Magnet::parse(text) {
        assert!(
            m.info_hash.is_some() || m.info_hash_v2.is_some() || !m.unusable_info_hashes.is_empty()
        );
        let uri = m.to_uri();
        // Escaping can make the link longer than the input; past the cap it is refused.
        if uri.len() > MAX_URI_LEN {
            return;
        }
        let mut back = Magnet::parse(&uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert_eq!(back.info_hash, m.info_hash);
        assert_eq!(back.info_hash_v2, m.info_hash_v2);
        back.warnings = m.warnings.clone();
        assert_eq!(back, m, "{uri}");
    }
});
