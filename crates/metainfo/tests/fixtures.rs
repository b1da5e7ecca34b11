//! Acceptance (foundation 2-4): real `.torrent` files from other projects' test suites, checked
//! against the values libtorrent computed for them (fixtures/torrents/manifest.json).

/// The workspace's copy of the shared fixtures.
fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

use pow_metainfo::{Metainfo, MetainfoError};
use serde_json::Value as Json;
use std::path::{Component, Path};

fn manifest() -> Vec<Json> {
    let path = fixtures().join("torrents/manifest.json");
    let manifest: Json = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    manifest["torrents"].as_array().unwrap().clone()
}

fn load(file: &str) -> Result<Metainfo, MetainfoError> {
    let bytes = std::fs::read(fixtures().join("torrents").join(file)).unwrap();
    Metainfo::from_bytes(&bytes)
}

/// Names where our documented cleaning rule (pow_metainfo::path) and libtorrent's differ on
/// purpose, with what we give instead.
const NAME_DIFFERENCES: &[(&str, &str)] = &[
    // libtorrent shortens long names its own way; we cut at 255 bytes keeping the extension.
    ("valid/long_name.torrent", "255-byte cut"),
];

#[test]
fn valid_v1_torrents_match_libtorrent() {
    let mut checked = 0;
    let mut with_v1 = 0;
    for record in manifest() {
        let file = record["file"].as_str().unwrap();
        if record["category"] != "valid" {
            continue;
        }
        let expected = &record["expected"];
        let Some(hash) = expected["info_hash_v1"].as_str() else {
            continue;
        };
        with_v1 += 1;
        let m = load(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(m.info_hash.to_hex(), hash, "{file}: info-hash");
        // The manifest's own scanner leaves total_length out where a symlink has no length;
        // libtorrent's figure is there.
        let total = expected["total_length"]
            .as_u64()
            .or_else(|| record["libtorrent"]["total_size"].as_u64())
            .unwrap();
        assert_eq!(m.total_length(), total, "{file}: total length");
        assert_eq!(
            u64::from(m.geometry.piece_length()),
            expected["piece_length"].as_u64().unwrap(),
            "{file}: piece length"
        );
        assert_eq!(
            u64::from(m.geometry.piece_count()),
            expected["num_pieces"].as_u64().unwrap(),
            "{file}: piece count"
        );
        assert_eq!(
            m.files.len() as u64,
            expected["num_files"].as_u64().unwrap(),
            "{file}: file count"
        );
        assert_eq!(m.private, expected["private"] == true, "{file}: private");
        if let Some(&(_, why)) = NAME_DIFFERENCES.iter().find(|(f, _)| *f == file) {
            assert!(m.name.len() <= 255, "{file}: {why}");
        } else {
            assert_eq!(m.name, expected["name"].as_str().unwrap(), "{file}: name");
        }
        for (ours, theirs) in m.files.iter().zip(expected["files"].as_array().unwrap()) {
            assert_eq!(
                ours.length,
                theirs["length"].as_u64().unwrap_or(0),
                "{file}"
            );
        }
        if let Some(announce) = expected["announce"].as_str() {
            if !announce.is_empty() {
                assert_eq!(m.announce.as_deref(), Some(announce), "{file}: announce");
            }
        }
        checked += 1;
    }
    println!("valid torrents with a libtorrent v1 info-hash: {checked} of {with_v1} match");
    assert_eq!(checked, with_v1);
    assert!(with_v1 >= 110, "only {with_v1} v1 fixtures found");
}

#[test]
fn v2_only_torrents_are_refused_with_a_clear_error() {
    let mut refused = 0;
    for record in manifest() {
        let file = record["file"].as_str().unwrap();
        if record["category"] == "valid" && record["expected"]["layout"] == "v2-only" {
            let err = load(file).expect_err(file);
            assert!(matches!(err, MetainfoError::V2Only), "{file}: {err}");
            assert!(err.to_string().contains("BitTorrent v2 only"));
            refused += 1;
        }
    }
    assert!(refused >= 9, "{refused}");
}

/// Invalid fixtures a tolerant reader accepts, and why we do too. Everything else in
/// `torrents/invalid/` must be rejected.
const ACCEPTED_INVALID: &[(&str, &str)] = &[
    (
        "invalid/dup-files.torrent",
        "two files with the same path: like libtorrent 2.0.8 we keep both, the second renamed \
         with a .1 suffix, so no data is lost or overwritten",
    ),
    (
        "invalid/duplicate_files2.torrent",
        "many duplicate file names: renamed with .N suffixes as above (libtorrent 2.0.8 accepts \
         it too; newer libtorrent caps the number of renames)",
    ),
];

#[test]
fn invalid_torrents_are_rejected_naming_the_problem() {
    let mut rejected = 0;
    for record in manifest() {
        let file = record["file"].as_str().unwrap();
        if record["category"] != "invalid" {
            continue;
        }
        let result = load(file);
        if let Some((_, why)) = ACCEPTED_INVALID.iter().find(|(f, _)| *f == file) {
            let m = result.unwrap_or_else(|e| panic!("{file}: expected to accept ({why}): {e}"));
            let mut paths: Vec<_> = m.files.iter().map(|f| f.path.clone()).collect();
            paths.sort();
            paths.dedup();
            assert_eq!(paths.len(), m.files.len(), "{file}: paths must be unique");
            continue;
        }
        let err = result.expect_err(file);
        let text = err.to_string();
        assert!(!text.is_empty());
        println!("{file}: {text}");
        rejected += 1;
    }
    println!("invalid torrents rejected: {rejected}");
}

#[test]
fn no_fixture_panics_and_truncations_are_errors() {
    for dir in ["valid", "invalid"] {
        for entry in std::fs::read_dir(fixtures().join("torrents").join(dir)).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let _ = Metainfo::from_bytes(&bytes);
            // Every strict prefix of the root dictionary is malformed bencode.
            let Ok((_, root_end)) =
                pow_bencode::decode_prefix(&bytes, pow_bencode::Options::torrent_file())
            else {
                continue;
            };
            for cut in [1, root_end / 3, root_end / 2, root_end - 1] {
                assert!(Metainfo::from_bytes(&bytes[..cut]).is_err());
            }
        }
    }
}

fn assert_inside(file: &str, target: &Path, rel: &Path) {
    assert!(
        rel.components().all(|c| matches!(c, Component::Normal(_))),
        "{file}: {} has a non-normal component",
        rel.display()
    );
    let full = target.join(rel);
    assert!(full.starts_with(target), "{file}: {}", full.display());
}

#[test]
fn escaping_names_and_paths_stay_inside_the_target_dir() {
    let target = Path::new("/srv/downloads/target");
    let hostile = [
        "valid/parent_path.torrent",
        "valid/slash_path.torrent",
        "valid/slash_path2.torrent",
        "valid/slash_path3.torrent",
        "valid/absolute_filename.torrent",
        "valid/invalid_filename.torrent",
        "valid/invalid_filename2.torrent",
        "valid/invalid_name2.torrent",
        "valid/hidden_parent_path.torrent",
        "valid/backslash_path.torrent",
        "valid/invalid_directory_name.torrent",
        "valid/empty_path.torrent",
        "valid/symlink_filtered_path.torrent",
    ];
    for file in hostile {
        let m = load(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_inside(file, target, Path::new(&m.name));
        for f in &m.files {
            assert_inside(file, target, &f.path.to_path_buf());
            if let Some(link) = &f.symlink_target {
                assert_inside(file, target, &link.to_path_buf());
            }
        }
    }
    // What the rule makes of them, next to what libtorrent makes (the manifest's libtorrent paths).
    let paths = |file: &str| -> Vec<String> {
        load(file)
            .unwrap()
            .files
            .iter()
            .map(|f| f.path.to_string())
            .collect()
    };
    assert_eq!(paths("valid/parent_path.torrent"), ["temp/bar"]);
    assert_eq!(paths("valid/slash_path.torrent"), ["temp/bar"]);
    assert_eq!(paths("valid/slash_path2.torrent"), ["temp/abc....def/bar"]);
    assert_eq!(paths("valid/slash_path3.torrent"), ["temp....abc"]);
    assert_eq!(
        paths("valid/absolute_filename.torrent"),
        ["temp/abcde", "temp/foobar"]
    );
    assert_eq!(paths("valid/backslash_path.torrent"), ["temp/bar"]);
    assert_eq!(
        paths("valid/hidden_parent_path.torrent"),
        ["temp/foo......bar/bar"]
    );
    assert_eq!(
        paths("valid/invalid_filename2.torrent"),
        ["est2/f", "est2/_", "est2/_.1"]
    );
    assert_eq!(
        paths("valid/invalid_name2.torrent"),
        [
            "b61560c2918f463768cd122b6d2fdd47b77bdb35/foo/bar.txt",
            "b61560c2918f463768cd122b6d2fdd47b77bdb35/foo/var.txt"
        ]
    );
}

#[test]
fn optional_fields_are_read() {
    let m = load("valid/sample.torrent").unwrap();
    assert!(!m.tracker_tiers().is_empty());
    let m = load("valid/private.torrent").unwrap();
    assert!(m.private);
    let m = load("valid/url_seed_multi.torrent").unwrap();
    assert!(!m.url_list.is_empty());
    let m = load("valid/creation_date.torrent").unwrap();
    assert!(m.creation_date.is_some());
    let m = load("valid/test1_pad_files.torrent").unwrap();
    assert!(m.files.iter().any(|f| f.attr.pad));
    let m = load("valid/v2_hybrid.torrent").unwrap();
    assert!(m.hybrid);
    // libtorrent's test torrent with BEP 5 `nodes`.
    let m = load("valid/dht_nodes.torrent").unwrap();
    assert_eq!(m.dht_nodes, ["127.0.0.1:6881", "192.168.1.1:6881"]);
}

/// Peak resident memory of this process so far, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A hybrid torrent whose v2 file tree differs from its v1 files is refused; and a small one
/// (about 1 MB) whose tree nests 50 directories of 6,400-byte names over 3,000 files is
/// refused without copying that 320 KB path for each file (about 1 GB, once).
#[test]
fn hybrid_file_lists_must_agree_and_a_deep_tree_costs_no_memory() {
    use pow_bencode::{dict, Value};
    let info = |tree: Value| {
        dict([
            ("file tree", tree),
            ("length", Value::Int(1)),
            ("meta version", Value::Int(2)),
            ("name", Value::str("x")),
            ("piece length", Value::Int(16384)),
            ("pieces", Value::Bytes(vec![7; 20])),
        ])
    };
    let torrent = |tree: Value| dict([("info", info(tree))]).encode();
    let leaf = |length: i64| dict([("", dict([("length", Value::Int(length))]))]);
    assert!(Metainfo::from_bytes(&torrent(dict([("x", leaf(1))]))).is_ok());
    for other in [
        dict([("x", leaf(2))]),
        dict([("y", leaf(1))]),
        dict([("x", leaf(1)), ("y", leaf(1))]),
    ] {
        assert!(matches!(
            Metainfo::from_bytes(&torrent(other)),
            Err(MetainfoError::HybridMismatch)
        ));
    }

    let files = dict((0..3000).map(|i| (format!("f{i:04}"), leaf(1))));
    let deep = (0..50u8).fold(files, |tree, level| {
        dict([(vec![b'a' + level % 26; 6400], tree)])
    });
    let bytes = torrent(deep);
    let before = peak_rss_kib();
    let parsed = Metainfo::from_bytes(&bytes);
    let grew_mib = (peak_rss_kib() - before) / 1024;
    println!(
        "{} KB torrent: {parsed:?}, peak RSS grew {grew_mib} MiB",
        bytes.len() / 1000
    );
    assert!(matches!(parsed, Err(MetainfoError::HybridMismatch)));
    assert!(grew_mib < 100, "peak RSS grew {grew_mib} MiB");
}
