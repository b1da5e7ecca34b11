//! Seeding: real clients download from `pow seed` (swarm-lab `ext` seeder) and get the payload's
//! bytes; `pow verify` names a corrupted piece and its file.

mod common;

use common::{pow_bin, same_bytes, Lab};

fn seed_cmd() -> String {
    format!(
        "{} seed {{torrent}} --data {{dir}} --port {{port}} --bind 127.0.0.1",
        pow_bin().display()
    )
}

#[test]
fn real_leechers_download_from_pow_seed() {
    let lab = Lab::new("seed");
    let (single, single_t) = lab.payload("32M", &[]);
    let (multi, multi_t) = lab.payload("12M", &["--multi", "--piece-kib", "64"]);
    let cmd = seed_cmd();
    for (data, torrent, tag) in [(&single, &single_t, "32M"), (&multi, &multi_t, "multi-64K")] {
        let t = torrent.to_str().unwrap();
        let dir = data.parent().unwrap().to_str().unwrap();
        for leecher in common::real_clients() {
            // A fresh seed per run, as interop.sh does: counters and choke state start clean.
            let (ok, _, err) = lab.script_env("seed.sh", &["ext", t, dir], &[("SEED_CMD", &cmd)]);
            assert!(ok, "pow seed: {err}");
            let out = lab.work.path().join(format!("out-{leecher}-{tag}"));
            let (ok, stdout, err) = lab.script(
                "leech.sh",
                &[leecher, t, out.to_str().unwrap(), "--timeout", "180"],
            );
            lab.script("seed.sh", &["stop", "ext"]);
            assert!(ok, "{leecher} from pow seed ({tag}): {stdout}\n{err}");
            let bytes = same_bytes(data, &out.join(data.file_name().unwrap()))
                .unwrap_or_else(|e| panic!("{leecher} {tag}: {e}"));
            let result = common::result_line(&stdout);
            println!("pow -> {leecher:<12} {tag:<10} {bytes:>10} bytes verified  {result}");
        }
    }
}

/// `--max-upload-rate 4M`: aria2 gets the 16 MiB payload, whole, and no faster than the limit
/// allows (16 MiB less the 128 KiB first burst at 4 MiB/s: 3.97 s at least). Unlimited, pow
/// seeds aria2 at well over 100 MiB/s here.
#[test]
fn upload_rate_limit_holds_for_a_real_leecher() {
    let lab = Lab::new("seed-limit");
    let (data, torrent) = lab.payload("16M", &[]);
    let t = torrent.to_str().unwrap();
    let dir = data.parent().unwrap().to_str().unwrap();
    let cmd = format!("{} --max-upload-rate 4M", seed_cmd());
    let (ok, _, err) = lab.script_env("seed.sh", &["ext", t, dir], &[("SEED_CMD", &cmd)]);
    assert!(ok, "pow seed: {err}");
    let out = lab.work.path().join("out");
    let started = std::time::Instant::now();
    let (ok, stdout, err) = lab.script(
        "leech.sh",
        &["aria2", t, out.to_str().unwrap(), "--timeout", "60"],
    );
    let took = started.elapsed().as_secs_f64();
    lab.script("seed.sh", &["stop", "ext"]);
    assert!(ok, "aria2 from a limited pow seed: {stdout}\n{err}");
    same_bytes(&data, &out.join(data.file_name().unwrap())).unwrap();
    let result = common::result_line(&stdout);
    println!("aria2 from pow seed --max-upload-rate 4M: 16 MiB in {took:.2} s (leech.sh, start to stop); {result}");
    assert!(
        took >= 3.96,
        "16 MiB in {took:.2} s: faster than 4 MiB/s allows"
    );
}

/// One pow seed, three real leechers at the same time: all complete with the right bytes; the
/// seed's own per-peer upload counters are printed.
#[test]
fn three_leechers_at_once_from_one_pow_seed() {
    Lab::new("seed3").three_real_leechers_at_once(&seed_cmd(), "pow seed");
}

/// A seed whose data has one corrupted byte never serves that piece: a pow leecher gets every
/// other piece, no hash failure, and the seed's upload counter is the payload minus that piece.
#[test]
fn seed_does_not_serve_a_corrupted_piece() {
    let lab = Lab::new("badseed");
    let (data, torrent) = lab.payload("8M", &["--piece-kib", "256", "--name", "corrupt8m"]);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[5 * 262_144 + 1000] ^= 0x55; // piece 5
    std::fs::write(&data, &bytes).unwrap();
    let t = torrent.to_str().unwrap();
    let dir = data.parent().unwrap().to_str().unwrap();
    let (ok, _, err) = lab.script_env("seed.sh", &["ext", t, dir], &[("SEED_CMD", &seed_cmd())]);
    assert!(ok, "pow seed: {err}");
    let out = lab.work.path().join("out-bad");
    let leech = format!(
        "{} download {{torrent}} -o {{dir}} --port {{port}} --bind 127.0.0.1 --json",
        pow_bin().display()
    );
    let (ok, _, _) = lab.script_env(
        "leech.sh",
        &["ext", t, out.to_str().unwrap(), "--timeout", "15"],
        &[("LEECH_CMD", &leech)],
    );
    assert!(!ok, "the download cannot complete without piece 5");
    lab.script("seed.sh", &["stop", "ext"]);
    let leech_log =
        std::fs::read_to_string(lab.state.path().join("leech-ext/client.log")).unwrap_or_default();
    let summary: serde_json::Value = leech_log
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("pow download prints its summary when stopped");
    assert_eq!(summary["pieces_verified"], 31, "{summary}");
    assert_eq!(summary["hash_failures"], 0, "{summary}");
    let seed_log =
        std::fs::read_to_string(lab.state.path().join("seed-ext/client.log")).unwrap_or_default();
    let uploaded = format!("stopped: {} bytes uploaded", 31 * 262_144);
    assert!(seed_log.contains(&uploaded), "{seed_log}");
    assert!(
        seed_log.contains("1 of 32 pieces are bad or missing"),
        "{seed_log}"
    );
}

#[test]
fn verify_names_the_bad_piece_and_its_file() {
    let work = common::TempDir::new("verify");
    let data = work.path().join("data/set");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.bin"), vec![1u8; 40_000]).unwrap();
    std::fs::write(data.join("b.bin"), vec![2u8; 70_000]).unwrap();
    let torrent = work.path().join("set.torrent");
    common::create_torrent(&data, &torrent, 16384);
    let verify = || {
        common::pow()
            .args(["verify", "--json"])
            .arg(&torrent)
            .arg("--data")
            .arg(work.path().join("data"))
            .output()
            .unwrap()
    };
    assert!(verify().status.success());
    // One byte at offset 50,000 of the content: b.bin byte 10,000, piece 3 (49,152..65,536).
    let mut b = std::fs::read(data.join("b.bin")).unwrap();
    b[10_000] ^= 0xff;
    std::fs::write(data.join("b.bin"), b).unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad = report["bad_pieces"].as_array().unwrap();
    assert_eq!(bad.len(), 1, "{report}");
    assert_eq!(bad[0]["piece"], 3);
    let files = bad[0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert!(files[0].as_str().unwrap().ends_with("set/b.bin"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 of 7 pieces are bad or missing"),
        "{stderr}"
    );
}
