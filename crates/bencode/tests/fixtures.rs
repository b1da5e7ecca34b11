//! Acceptance (foundation 1): every bencode sample gets the strict BEP 3 verdict the manifest
//! gives (the folder it is in, which bencode2's strict decoder also gives), and every valid one
//! round-trips byte for byte.

/// The workspace's copy of the shared fixtures.
fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

use pow_bencode::{decode, ErrorKind};
use serde_json::Value as Json;

/// Samples that are valid BEP 3 but that pow refuses on purpose, and why.
const OUR_LIMITS: &[(&str, &str)] = &[(
    "valid/int_i64_overflow.bencode",
    "BEP 3 integers are unbounded, but every field BitTorrent uses fits in i64; a larger one \
     is refused with a clear error rather than silently wrapped (libtorrent's binding returns 0)",
)];

#[test]
fn every_sample_gets_the_strict_verdict_and_valid_ones_round_trip() {
    let dir = fixtures().join("bencode");
    let bytes = std::fs::read(dir.join("manifest.json")).unwrap();
    // The manifest spells out 100-deep sample values: lift serde_json's 128-level limit.
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    de.disable_recursion_limit();
    let manifest = <Json as serde::Deserialize>::deserialize(&mut de).unwrap();
    let samples = manifest["samples"].as_array().unwrap();
    assert!(
        samples.len() >= 55,
        "manifest lists {} samples",
        samples.len()
    );
    let (mut valid, mut invalid, mut limited) = (0, 0, 0);
    for sample in samples {
        let file = sample["file"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let verdict = sample["strict_bep3"].as_str().unwrap();
        let result = decode(&bytes);
        if let Some((_, why)) = OUR_LIMITS.iter().find(|(f, _)| *f == file) {
            let err = result.expect_err(file);
            assert_eq!(err.kind, ErrorKind::IntegerOverflow, "{file}: {why}");
            limited += 1;
            continue;
        }
        match verdict {
            "valid" => {
                let node = result.unwrap_or_else(|e| panic!("{file}: rejected: {e}"));
                assert_eq!(node.to_value().encode(), bytes, "{file}: round trip");
                assert_eq!(node.raw, &bytes[..], "{file}: span");
                valid += 1;
            }
            "invalid" => {
                let err = result.expect_err(file);
                let text = err.to_string();
                assert!(text.contains(" at byte "), "{file}: {text}");
                assert!(err.offset <= bytes.len(), "{file}: offset {}", err.offset);
                invalid += 1;
            }
            other => panic!("{file}: unknown verdict {other}"),
        }
    }
    println!(
        "bencode fixtures: {valid} valid round-tripped, {invalid} invalid rejected, \
         {limited} valid but past our documented limits, rejected"
    );
    assert_eq!(valid + invalid + limited, samples.len());
}

#[test]
fn errors_name_the_problem() {
    let dir = fixtures().join("bencode/invalid");
    let kind = |name: &str| {
        decode(&std::fs::read(dir.join(name)).unwrap())
            .unwrap_err()
            .kind
    };
    assert_eq!(kind("int_leading_zero.bencode"), ErrorKind::LeadingZero);
    assert_eq!(kind("int_negative_zero.bencode"), ErrorKind::NegativeZero);
    assert_eq!(kind("dict_unsorted_keys.bencode"), ErrorKind::UnsortedKey);
    assert_eq!(kind("dict_duplicate_keys.bencode"), ErrorKind::DuplicateKey);
    assert_eq!(kind("trailing_data.bencode"), ErrorKind::TrailingData);
    assert_eq!(kind("trailing_newline_de.bencode"), ErrorKind::TrailingData);
    assert!(matches!(
        kind("nested_lists_100000.bencode"),
        ErrorKind::TooDeep { .. }
    ));
    assert!(matches!(
        kind("nested_dicts_50000.bencode"),
        ErrorKind::TooDeep { .. }
    ));
    assert!(matches!(
        kind("string_huge_len_prefix.bencode"),
        ErrorKind::StringTooLong { .. } | ErrorKind::IntegerOverflow
    ));
}
