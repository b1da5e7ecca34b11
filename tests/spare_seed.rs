//! Sparing a seed: a pow leecher asks a seed only for pieces that no peer lending to it (one
//! that unchokes it and is not a seed, or became one while connected) has, and of those only its share among the pow leechers
//! it knows (`picker::Share`), until those peers send less than half the seed's best rate
//! (`engine::SPARE_SEED_AT`). A swarm's leechers then take from each other what they can, and
//! the seed's upload goes to what the swarm lacks (issue #6's 8-leecher target for a plain
//! seed, `benches/swarm8.sh`); a slow lender does not hold back what the seed could send, nor
//! does the lender's share of `b.bin`, which it never fetches.
//!
//! The lender is a `pow download --only a.bin --seed` that found `a.bin` on disk: it has the
//! first half of the pieces, unchokes whoever asks, and is not a seed.

mod common;

use common::{free_port, peer_bytes, pow, pow_seed, same_tree, wait_listening, Killed, TempDir};
use std::path::PathBuf;
use std::process::Stdio;

const HALF_MIB: usize = 16;

struct Pair {
    dir: TempDir,
    /// The torrent's content directory (`pair/` holding `a.bin` and `b.bin`).
    content: PathBuf,
    torrent: PathBuf,
}

/// `pair/a.bin` and `pair/b.bin`, `HALF_MIB` MiB each, in 64 KiB pieces (none spans both).
fn pair(tag: &str) -> Pair {
    let dir = TempDir::new(tag);
    let content = dir.path().join("data/pair");
    std::fs::create_dir_all(&content).unwrap();
    for (name, seed) in [("a.bin", 0xA5A5), ("b.bin", 0x5A5A)] {
        let bytes = common::pseudo_random_bytes(HALF_MIB << 20, seed);
        std::fs::write(content.join(name), bytes).unwrap();
    }
    let torrent = dir.path().join("pair.torrent");
    common::create_torrent(&content, &torrent, 65536);
    Pair {
        dir,
        content,
        torrent,
    }
}

/// A `pow download --only a.bin --seed` that has `a.bin` on disk, on `port`, with `extra`.
fn lender(p: &Pair, port: u16, extra: &[&str]) -> Killed {
    let out = p.dir.path().join("lender");
    std::fs::create_dir_all(out.join("pair")).unwrap();
    std::fs::copy(p.content.join("a.bin"), out.join("pair/a.bin")).unwrap();
    let child = pow()
        .arg("download")
        .arg(&p.torrent)
        .arg("-o")
        .arg(&out)
        .args(["--only", "a.bin", "--seed", "--no-pex"])
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lender = Killed(child);
    wait_listening(port, "the lender");
    lender
}

/// A `pow seed`, a lender started with `lender_extra`, and a `pow download` from both, which must
/// end with the content's bytes. Returns its JSON report and the seed's and lender's ports.
fn seed_lender_leecher(p: &Pair, lender_extra: &[&str]) -> (serde_json::Value, u16, u16) {
    let (seed_port, lender_port) = (free_port(), free_port());
    let _seed = pow_seed(
        &p.torrent,
        &p.dir.path().join("data"),
        seed_port,
        &["--no-pex"],
        Stdio::null(),
    );
    let _lender = lender(p, lender_port, lender_extra);
    let out = p.dir.path().join("leecher");
    let seed = format!("127.0.0.1:{seed_port}");
    let lender = format!("127.0.0.1:{lender_port}");
    let report = common::pow_download_json(
        p.torrent.to_str().unwrap(),
        &out,
        &["--no-pex", "--peer", &seed, "--peer", &lender],
    );
    same_tree(&p.content, &out.join("pair")).unwrap();
    (report, seed_port, lender_port)
}

#[test]
fn a_leecher_takes_what_a_peer_lends_from_that_peer_and_only_the_rest_from_the_seed() {
    let (report, seed_port, lender_port) = seed_lender_leecher(&pair("spare-seed"), &[]);
    let from_seed = peer_bytes(&report, "received_by_peer", seed_port);
    let from_lender = peer_bytes(&report, "received_by_peer", lender_port);
    let half = (HALF_MIB as u64) << 20;
    println!(
        "{:.2} s: from the seed {from_seed} bytes, from the lender {from_lender} bytes (each file {half})",
        report["seconds"].as_f64().unwrap()
    );
    // Before the lender's unchoke arrives the seed may be asked for a first pipeline (2 MiB)
    // of anything; after it, only for b.bin. Without sparing the seed, as fast as the lender,
    // sent about half of a.bin too.
    let slack = 4 << 20;
    assert!(
        from_seed <= half + slack,
        "the seed sent {from_seed} bytes, more than b.bin and {slack} bytes of a.bin"
    );
    assert!(
        from_lender >= half - slack,
        "the lender sent only {from_lender} bytes"
    );
    // Both want nothing more (BEP 21), so the lender is not counted as a leecher with a share
    // of b.bin to fetch from the seed.
    assert_eq!(report["upload_only_received"], 2, "seed and lender");
}

#[test]
fn a_slow_lender_does_not_hold_back_what_the_seed_can_send() {
    // a.bin from the lender alone would take 16 MiB / 256 KiB/s = 64 s.
    let (report, _, lender_port) =
        seed_lender_leecher(&pair("slow-lender"), &["--max-upload-rate", "256K"]);
    let seconds = report["seconds"].as_f64().unwrap();
    let from_lender = peer_bytes(&report, "received_by_peer", lender_port);
    println!("{seconds:.1} s, {from_lender} bytes from the slow lender");
    // The first tick (1 s) measures the lender at about a thousandth of the seed's rate, and
    // from then on the seed is asked for everything.
    assert!(
        seconds < 20.0,
        "{seconds:.1} s: the leecher waited for the slow lender"
    );
}
