//! A seed whose data is not in the page cache (a large dataset on a cold disk) reads it in on
//! the blocking pool, not on a peer task, where each read would hold up the runtime worker and
//! every other peer on it, and serves the same bytes.

mod common;

use common::*;
use std::path::Path;

/// Drops the file's pages from the page cache, as memory pressure would.
fn evict(path: &Path) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: a plain system call on a file descriptor we hold.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

#[test]
fn a_seed_reads_cold_blocks_in_on_the_blocking_pool_and_serves_them() {
    let dir = TempDir::new("cold-seed");
    let (data, torrent) = mib_payload(dir.path(), "cold.bin", 32, None);
    let port = free_port();
    let log_path = dir.path().join("seed.log");
    let seed = Killed(
        pow()
            .env("POW_LOG", "debug")
            .arg("seed")
            .arg(&torrent)
            .arg("--data")
            .arg(data.parent().unwrap())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    // It listens once it has checked the data, which put it in the page cache.
    wait_listening(port, "pow seed");
    evict(&data);
    let out = dir.path().join("out");
    let report = pow_download_json(
        torrent.to_str().unwrap(),
        &out,
        &["--peer", &format!("127.0.0.1:{port}")],
    );
    assert_eq!(
        report["pieces_verified"], report["pieces_total"],
        "{report}"
    );
    same_bytes(&data, &out.join("cold.bin")).unwrap();
    drop(seed);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let warm_ups = log
        .lines()
        .filter(|l| l.contains("reading blocks in from disk"))
        .count();
    println!("the seed read blocks in from disk {warm_ups} times");
    assert!(
        warm_ups > 0,
        "every block came from the page cache: was it evicted? seed log:\n{log}"
    );
}
