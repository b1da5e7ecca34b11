//! Super-seeding (`pow seed --super-seed`, BEP 16 style): the seed's first copy of the data is
//! spread by the leechers among themselves.
//!
//! - Issue #6's swarm target, run as its bench runs it (`benches/swarm8.sh`): 1 pow seed and 8
//!   pow leechers on 256 MiB through a `pow tracker`; every leecher ends with the payload's
//!   bytes and the seed uploads at most 1.5x the payload (a plain seed uploads about 2x here).
//! - Real leechers (aria2, libtorrent, Transmission) at once from a super-seeding pow seed: they
//!   are told of pieces a few at a time by `have`, and still all finish with the right bytes.

mod common;

use common::{pow_bin, root, Lab};
use std::process::Command;

#[test]
fn eight_pow_leechers_spread_a_super_seed_at_most_one_and_a_half_times() {
    // swarm8.sh uses fixed peer ports (52100-52108): one lab test at a time.
    let _lock = common::lab_lock();
    let out = Command::new("bash")
        .arg(root().join("benches/swarm8.sh"))
        .args(["256M", "8"])
        .env("SUPER_SEED", "1")
        .env("POW_BIN", pow_bin())
        .current_dir(root())
        .output()
        .expect("run benches/swarm8.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "swarm8.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("finished with identical bytes: 8/8 (failed: 0)"));
    let ratio: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("seed uploaded "))
        .and_then(|l| l.split(" = ").nth(1))
        .and_then(|l| l.split('x').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no seed ratio in:\n{stdout}"));
    assert!(ratio <= 1.5, "the seed uploaded {ratio}x the payload");
}

#[test]
fn real_leechers_at_once_from_a_super_seed() {
    let seed_cmd = format!(
        "{} seed {{torrent}} --data {{dir}} --port {{port}} --bind 127.0.0.1 --super-seed",
        pow_bin().display()
    );
    Lab::new("superseed").three_real_leechers_at_once(&seed_cmd, "pow super-seed");
}
