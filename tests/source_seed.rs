//! `pow source seed`: a researcher who loaded data sources passes them on. Two data sources are
//! loaded from pow seeds, the seeds go away, one loaded file is damaged; `pow source seed --all`
//! seeds the intact one (aria2, a real client, downloads it through the tracker from it alone)
//! and refuses the damaged one, and a data source never loaded here is refused by name.

mod common;

use common::{free_port, make_zip, md5_hex, pow, text, Killed, PowTracker, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PIECE: &str = "65536";

/// A zip of `mib` MiB in `dir`, its `<md5>.torrent` in `store` (announcing to `tracker`), and a
/// `pow seed` of it; returns (zip, md5, seed).
fn published(
    dir: &Path,
    store: &Path,
    name: &str,
    seed: u64,
    tracker: &str,
) -> (PathBuf, String, Killed, u16) {
    std::fs::create_dir_all(dir).unwrap();
    let zip = dir.join(name);
    make_zip(&zip, 3, seed);
    let md5 = md5_hex(&zip);
    let torrent = store.join(format!("{md5}.torrent"));
    let o = pow()
        .args(["torrent", "create"])
        .arg(&zip)
        .arg("-o")
        .arg(&torrent)
        .args(["--piece-length", PIECE, "--tracker", tracker])
        .output()
        .unwrap();
    assert!(o.status.success(), "torrent create: {}", text(&o.stderr));
    let port = free_port();
    let mut child = pow()
        .arg("seed")
        .arg(&torrent)
        .arg("--data")
        .arg(dir)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::first_stdout_line(&mut child);
    (zip, md5, Killed(child), port)
}

fn source(pow_dir: &Path, args: &[&str]) -> std::process::Output {
    pow()
        .arg("--pow-dir")
        .arg(pow_dir)
        .arg("source")
        .args(args)
        .output()
        .unwrap()
}

/// aria2 fetches `torrent` from whatever the tracker names; true if it got the whole file.
fn aria2_fetch(torrent: &Path, out: &Path) -> bool {
    let mut aria2 = Command::new("aria2c")
        .args(["--seed-time=0", "--enable-dht=false", "--enable-dht6=false"])
        .args(["--bt-enable-lpd=false", "--enable-peer-exchange=false"])
        .args(["--bt-stop-timeout=60", "--console-log-level=warn"])
        .args(["--summary-interval=0", "--file-allocation=none"])
        .arg(format!("--listen-port={}", free_port()))
        .arg(format!("--log={}", out.with_extension("log").display()))
        .arg("--log-level=info")
        .arg("-d")
        .arg(out)
        .arg(torrent)
        .stdout(Stdio::null())
        .spawn()
        .expect("aria2c (scripts/install-deps --tests)");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = aria2.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = aria2.kill();
            let _ = aria2.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn loaded_sources_are_seeded_again_and_damaged_or_unloaded_ones_refused() {
    let tmp = TempDir::new("source-seed");
    let work = tmp.path();
    let tracker = PowTracker::start();
    let store = work.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let (zip_a, md5_a, seed_a, port_a) =
        published(&work.join("pub-a"), &store, "cells_a.zip", 11, &tracker.url);
    let (_zip_b, md5_b, seed_b, port_b) =
        published(&work.join("pub-b"), &store, "cells_b.zip", 12, &tracker.url);

    let pow_dir = common::project_with(
        &work.join("project"),
        &format!(
            "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"a\"\n\
             torrent_file_name = \"{md5_a}.torrent\"\n\n\
             [[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"b\"\n\
             torrent_file_name = \"{md5_b}.torrent\"\n\n\
             [[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"never\"\n\
             torrent_file_name = \"{md5_a}.torrent\"\n"
        ),
    );
    let store_arg = store.to_str().unwrap();
    let mut loaded = Vec::new();
    for (key, port) in [("a", port_a), ("b", port_b)] {
        let id = format!("ConnectomeCSVDataSource:{key}");
        let o = source(
            &pow_dir,
            &[
                "load",
                &id,
                "--json",
                "--bind",
                "127.0.0.1",
                "--port",
                &free_port().to_string(),
                "--torrent-store",
                store_arg,
                "--peer",
                &format!("127.0.0.1:{port}"),
            ],
        );
        assert!(o.status.success(), "load {key}: {}", text(&o.stderr));
        let json: serde_json::Value =
            serde_json::from_str(text(&o.stdout).lines().last().unwrap()).unwrap();
        loaded.push(PathBuf::from(json["content"].as_str().unwrap()));
    }
    drop((seed_a, seed_b));
    // One byte of b's loaded copy changes.
    let mut damaged = std::fs::read(&loaded[1]).unwrap();
    damaged[100_000] ^= 1;
    std::fs::write(&loaded[1], &damaged).unwrap();

    let never = source(&pow_dir, &["seed", "ConnectomeCSVDataSource:never"]);
    let never_err = text(&never.stderr);
    assert!(!never.status.success());
    assert!(
        never_err.contains("ConnectomeCSVDataSource:never: not loaded on this machine"),
        "{never_err}"
    );

    let port = free_port();
    let mut seeding = pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .args(["source", "seed", "--all", "--json", "--bind", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::first_stdout_line(&mut seeding);
    let mut seeding = Killed(seeding);
    let started: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(started["port"], port, "{started}");
    let ids = |key: &str| -> Vec<String> {
        started[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids("seeding"), ["ConnectomeCSVDataSource:a"], "{started}");
    assert_eq!(ids("failed"), ["ConnectomeCSVDataSource:b"], "{started}");
    let why = started["failed"][0]["error"].as_str().unwrap();
    assert!(why.contains("pieces verify on disk"), "{why}");

    // The original seeds are gone: aria2 finds only `pow source seed` through the tracker.
    let out = work.join("aria2");
    let torrent_a = store.join(format!("{md5_a}.torrent"));
    if !aria2_fetch(&torrent_a, &out) {
        let log = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        panic!(
            "aria2 did not finish; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    common::same_bytes(&zip_a, &out.join("cells_a.zip")).unwrap();

    // SIGTERM: a graceful stop that reports what was uploaded (stderr ends when it exits).
    let mut stderr_pipe = seeding.0.stderr.take().unwrap();
    Command::new("kill")
        .arg(seeding.0.id().to_string())
        .status()
        .unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut stderr_pipe, &mut stderr).unwrap();
    let size = std::fs::metadata(&zip_a).unwrap().len();
    let uploaded: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stopped ConnectomeCSVDataSource:a: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stop line: {stderr}"));
    println!(
        "pow source seed --all: a seeded ({size} bytes, {uploaded} uploaded to aria2), b refused ({why})"
    );
    assert!(uploaded >= size, "{stderr}");
}
