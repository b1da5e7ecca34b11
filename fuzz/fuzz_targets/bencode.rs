#![no_main]
//! Any bytes: the strict and the torrent-file decoder never panic, and whatever the strict one
//! accepts re-encodes to exactly the same bytes; the lenient one's value is a prefix of the input.

use libfuzzer_sys::fuzz_target;
use pow_bencode::{decode, decode_with, Options};

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = decode(data) {
        assert_eq!(node.to_value().encode(), data);
    }
    if let Ok(node) = decode_with(data, Options::torrent_file()) {
        assert!(data.starts_with(node.raw));
    }
});
