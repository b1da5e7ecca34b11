//! `pow verify` on data as researchers keep it: on a read-only mount, with a file longer than
//! the torrent says, with a large file linked in from elsewhere. (The storage's own tests cover
//! writes through links, and that a long file keeps its tail.)

mod common;

use common::{create_torrent, pow, pseudo_random_bytes, text, TempDir, Tmpfs};
use std::path::{Path, PathBuf};
use std::process::Output;

/// `data/set/{a,b}` (300,000 and 200,000 bytes) and their torrent of 64 KiB pieces (8 pieces).
fn dataset(work: &Path, data: &Path) -> PathBuf {
    let set = data.join("set");
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(set.join("a"), pseudo_random_bytes(300_000, 1)).unwrap();
    std::fs::write(set.join("b"), pseudo_random_bytes(200_000, 2)).unwrap();
    let torrent = work.join("set.torrent");
    create_torrent(&set, &torrent, 65536);
    torrent
}

fn verify(torrent: &Path, data: &Path) -> Output {
    pow()
        .arg("verify")
        .arg(torrent)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap()
}

fn assert_all_good(out: &Output, what: &str) {
    assert!(
        out.status.success() && text(&out.stdout).contains("set: 8/8 pieces good"),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn verify_finds_every_piece_of_read_only_data_good() {
    let work = TempDir::new("storage-read-only");
    let data = work.path().join("data");
    let disk = match Tmpfs::mount(&data, "4m") {
        Ok(disk) => disk,
        Err(e) => {
            println!("SKIPPED: cannot mount a tmpfs here ({e}); a read-only mount needs root");
            return;
        }
    };
    let torrent = dataset(work.path(), &data);
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(remounted.success(), "remount read-only");
    assert_all_good(&verify(&torrent, &data), "read-only mount");
    drop(disk);
}

#[test]
fn verify_passes_a_file_longer_than_the_torrent_says_and_a_file_linked_in() {
    let work = TempDir::new("storage-long-linked");
    let data = work.path().join("data");
    let torrent = dataset(work.path(), &data);
    let b = data.join("set/b");
    let mut longer = std::fs::read(&b).unwrap();
    longer.extend_from_slice(b"not the torrent's");
    std::fs::write(&b, &longer).unwrap();
    assert_all_good(&verify(&torrent, &data), "b longer");
    assert_eq!(std::fs::read(&b).unwrap(), longer, "verify changes nothing");
    let elsewhere = work.path().join("elsewhere-a");
    std::fs::rename(data.join("set/a"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, data.join("set/a")).unwrap();
    assert_all_good(&verify(&torrent, &data), "a linked in");
}
