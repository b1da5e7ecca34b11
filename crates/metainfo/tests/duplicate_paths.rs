//! Files of a torrent that would land on one path (the same path twice, or a file where
//! another file needs a directory) are renamed as libtorrent 2.0.8 renames them. Each expected
//! list below is what libtorrent's `torrent_info(...).files().file_path(i)` printed for the same
//! file list (python3-libtorrent 2.0.8, name `n`, piece length 16 KiB).

use pow_metainfo::Metainfo;

/// A multi-file torrent named `n` of `files` (path components, length), zero piece hashes.
fn torrent(files: &[(&[&str], u64)]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(format!("{}:", s.len()).as_bytes());
        out.extend_from_slice(s);
    }
    let total: u64 = files.iter().map(|(_, length)| length).sum();
    let pieces = total.div_ceil(16384).max(1) as usize;
    let mut out = b"d4:infod5:filesl".to_vec();
    for (path, length) in files {
        out.extend_from_slice(format!("d6:lengthi{length}e4:pathl").as_bytes());
        for component in *path {
            string(&mut out, component.as_bytes());
        }
        out.extend_from_slice(b"ee");
    }
    out.extend_from_slice(b"e4:name1:n12:piece lengthi16384e6:pieces");
    string(&mut out, &vec![0u8; 20 * pieces]);
    out.extend_from_slice(b"ee");
    out
}

fn paths(files: &[(&[&str], u64)]) -> Vec<String> {
    Metainfo::from_bytes(&torrent(files))
        .unwrap()
        .files
        .iter()
        .map(|f| f.path.to_string())
        .collect()
}

#[test]
fn a_file_where_another_needs_a_directory_is_renamed() {
    assert_eq!(paths(&[(&["a"], 5), (&["a", "b"], 5)]), ["n/a.1", "n/a/b"]);
    assert_eq!(paths(&[(&["a", "b"], 5), (&["a"], 5)]), ["n/a/b", "n/a.1"]);
    assert_eq!(
        paths(&[(&["a"], 5), (&["a.1", "b"], 5), (&["a"], 5)]),
        ["n/a", "n/a.1/b", "n/a.2"]
    );
    assert_eq!(
        paths(&[(&["d.x", "f"], 5), (&["d.x"], 5)]),
        ["n/d.x/f", "n/d.1.x"]
    );
}

#[test]
fn the_suffix_goes_before_the_extension() {
    assert_eq!(
        paths(&[(&["a"], 5), (&["a"], 5), (&["a"], 5), (&["a.1"], 5)]),
        ["n/a", "n/a.1", "n/a.2", "n/a.1.1"]
    );
    assert_eq!(
        paths(&[(&["x.txt"], 5), (&["x.txt"], 5), (&["x.1.txt"], 5)]),
        ["n/x.txt", "n/x.1.txt", "n/x.1.1.txt"]
    );
    assert_eq!(
        paths(&[
            (&["x.tar.gz"], 5),
            (&["x.tar.gz"], 5),
            (&[".bashrc"], 5),
            (&[".bashrc"], 5),
            (&["a."], 1),
            (&["a."], 1),
        ]),
        [
            "n/x.tar.gz",
            "n/x.tar.1.gz",
            "n/.bashrc",
            "n/.1.bashrc",
            "n/a.",
            "n/a.1."
        ]
    );
}

/// Not libtorrent's figure (it cuts names at 240 bytes, we at 255): a renamed name stays a
/// name the file system takes.
#[test]
fn a_renamed_long_name_stays_within_255_bytes() {
    let long = "y".repeat(255);
    let long_ext = format!("{}.csv", "é".repeat(125));
    let renamed = paths(&[
        (&[&long], 5),
        (&[&long], 5),
        (&[&long_ext], 5),
        (&[&long_ext], 5),
    ]);
    let last = |p: &str| p.rsplit('/').next().unwrap().to_string();
    assert_eq!(last(&renamed[1]), format!("{}.1", "y".repeat(253)));
    assert_eq!(last(&renamed[3]), format!("{}.1.csv", "é".repeat(124)));
    assert!(renamed.iter().all(|p| last(p).len() <= 255), "{renamed:?}");
}

/// Each path's next suffix is remembered: 40,000 files of one path parse in well under a
/// second (trying `.1`, `.2`, ... from the start for each took minutes).
#[test]
fn many_files_of_one_path_are_renamed_in_linear_time() {
    let mut files: Vec<(&[&str], u64)> = vec![(&["a"], 0); 40_000];
    files[0].1 = 1;
    let started = std::time::Instant::now();
    let renamed = paths(&files);
    assert_eq!(renamed[1], "n/a.1");
    assert_eq!(renamed[39_999], "n/a.39999");
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
}

/// A renamed file, and one whose path was cleaned, still give the path stored in the torrent
/// (what a web seed's URL is made of); a clean path gives its own components.
#[test]
fn the_stored_path_survives_renaming_and_cleaning() {
    let metainfo = Metainfo::from_bytes(&torrent(&[
        (&["d", "a"], 5),
        (&["d", "a"], 5),
        (&["..", "x"], 5),
    ]))
    .unwrap();
    let stored: Vec<(String, Vec<&[u8]>)> = metainfo
        .files
        .iter()
        .map(|f| (f.path.to_string(), f.raw_components().collect()))
        .collect();
    assert_eq!(
        stored,
        [
            ("n/d/a".to_string(), vec![&b"d"[..], b"a"]),
            ("n/d/a.1".to_string(), vec![&b"d"[..], b"a"]),
            ("n/x".to_string(), vec![&b".."[..], b"x"]),
        ]
    );
}
