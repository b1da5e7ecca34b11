//! Issue 3 acceptance 1 and 2 against real software from swarm-lab, all on 127.0.0.1:
//! pow's tracker client against opentracker, and real clients (aria2, Transmission,
//! libtorrent) finding each other through `pow tracker`.

mod common;

use common::{lab_lock, pow, pow_bin, strip_ansi, swarm_lab, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PORT: u16 = 6969;

/// Runs a swarm-lab script with this test's state dir.
fn run_lab(state: &Path, script: &str, args: &[&str]) -> Output {
    Command::new(swarm_lab().join(script))
        .args(args)
        .env("SWARM_LAB_STATE", state)
        .env("TRACKER_PORT", PORT.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

fn lab_ok(state: &Path, script: &str, args: &[&str]) -> String {
    let out = run_lab(state, script, args);
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops every seeder, the lab tracker and our own tracker process, even when the test fails.
struct Lab {
    state: PathBuf,
    tracker: Option<Child>,
    _lock: std::fs::File,
    tmp: TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let lock = lab_lock();
        let tmp = TempDir::new(tag);
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        Lab {
            state,
            tracker: None,
            _lock: lock,
            tmp,
        }
    }
    fn dir(&self) -> &Path {
        self.tmp.path()
    }
    /// make-payload.sh: returns the .torrent path.
    fn payload(&self, name: &str, size: &str, announce: &str) -> PathBuf {
        let out = lab_ok(
            &self.state,
            "make-payload.sh",
            &[
                size,
                self.dir().join("p").to_str().unwrap(),
                "--name",
                name,
                "--seed",
                name,
                "--announce",
                announce,
            ],
        );
        PathBuf::from(out.lines().next().expect("torrent path"))
    }
    fn data(&self, name: &str) -> PathBuf {
        self.dir().join("p/data").join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = run_lab(&self.state, "seed.sh", &["stop", "all"]);
        let _ = run_lab(&self.state, "tracker.sh", &["stop"]);
        if let Some(mut t) = self.tracker.take() {
            let _ = t.kill();
            let _ = t.wait();
        }
    }
}

fn json(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "pow failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn pow_announce(url: &str, torrent: &Path, port: u16, extra: &[&str]) -> serde_json::Value {
    let p = port.to_string();
    let mut args = vec![
        "tracker",
        "announce",
        url,
        torrent.to_str().unwrap(),
        "--port",
        &p,
        "--json",
        "--timeout",
        "5",
    ];
    args.extend_from_slice(extra);
    json(pow().args(&args).output().unwrap())
}

fn pow_scrape(url: &str, torrent: &Path) -> (u64, u64) {
    let v = json(
        pow()
            .args([
                "tracker",
                "scrape",
                url,
                torrent.to_str().unwrap(),
                "--json",
            ])
            .output()
            .unwrap(),
    );
    (
        v["complete"].as_u64().unwrap(),
        v["incomplete"].as_u64().unwrap(),
    )
}

fn peers(v: &serde_json::Value) -> Vec<String> {
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn opentracker_http_and_udp_with_a_real_client() {
    let t0 = Instant::now();
    let lab = Lab::new("trk-ot");
    eprintln!("lab lock after {:.1}s", t0.elapsed().as_secs_f64());
    let http = format!("http://127.0.0.1:{PORT}/announce");
    let udp = format!("udp://127.0.0.1:{PORT}/announce");
    let t = lab.payload("ot-4M", "4M", &http);
    // aria2 seeds; seed.sh starts opentracker, whitelists the torrent and waits until
    // opentracker lists 127.0.0.1:51101
    lab_ok(
        &lab.state,
        "seed.sh",
        &[
            "aria2",
            t.to_str().unwrap(),
            lab.dir().join("p/data").to_str().unwrap(),
            "--timeout",
            "300",
        ],
    );
    eprintln!("aria2 seeding after {:.1}s", t0.elapsed().as_secs_f64());
    let status = lab_ok(&lab.state, "tracker.sh", &["status"]);
    assert!(status.starts_with("running opentracker"), "{status}");
    let seeder = "127.0.0.1:51101".to_string();

    let a = pow_announce(&http, &t, 40001, &[]);
    assert!(peers(&a).contains(&seeder), "HTTP: {a}");
    let b = pow_announce(&udp, &t, 40002, &[]);
    assert!(peers(&b).contains(&seeder), "UDP: {b}");
    assert!(b["interval"].as_u64().unwrap() > 0);

    // scrape over both protocols agrees with the announce counts: aria2 seeds, we two leech
    let sh = pow_scrape(&http, &t);
    let su = pow_scrape(&udp, &t);
    assert_eq!(sh, su, "HTTP and UDP scrape differ");
    assert_eq!(
        (
            b["complete"].as_u64().unwrap(),
            b["incomplete"].as_u64().unwrap()
        ),
        sh,
        "announce counts vs scrape"
    );
    assert_eq!(sh, (1, 2));
    // stopped takes us out again, seen by scrape
    pow_announce(&http, &t, 40001, &["--event", "stopped"]);
    pow_announce(&udp, &t, 40002, &["--event", "stopped"]);
    assert_eq!(pow_scrape(&http, &t), (1, 0));
    assert_eq!(pow_scrape(&udp, &t), (1, 0));
    eprintln!(
        "opentracker: announce {a} / {b}, scrape {sh:?}, done after {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

/// Waits until `pow tracker` hands out 127.0.0.1:port for the torrent (polled with
/// `event=stopped` from a probe port, so the probe is never registered).
fn wait_listed(url: &str, torrent: &Path, port: u16) {
    let want = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = pow_announce(url, torrent, 9, &["--event", "stopped", "--numwant", "200"]);
        if peers(&v).contains(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "{want} never announced to {url}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn seed_port(client: &str) -> u16 {
    match client {
        "aria2" => 51101,
        "transmission" => 51102,
        _ => 51103,
    }
}

/// seed -> leech through pow's tracker, verified byte for byte.
fn transfer(lab: &Lab, seeder: &str, leecher: &str, name: &str, announce: &str) -> f64 {
    let t = lab.payload(name, "8M", announce);
    let data = lab.dir().join("p/data");
    lab_ok(
        &lab.state,
        "seed.sh",
        &[
            seeder,
            t.to_str().unwrap(),
            data.to_str().unwrap(),
            "--timeout",
            "300",
            "--no-tracker",
        ],
    );
    wait_listed(announce, &t, seed_port(seeder));
    let out = lab.dir().join(format!("out-{name}"));
    let t0 = Instant::now();
    let res = run_lab(
        &lab.state,
        "leech.sh",
        &[
            leecher,
            t.to_str().unwrap(),
            out.to_str().unwrap(),
            "--timeout",
            "120",
            "--no-tracker",
        ],
    );
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        res.status.success(),
        "{seeder} -> {leecher} ({announce}) failed: {}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    let want = std::fs::read(lab.data(name)).unwrap();
    let got = std::fs::read(out.join(name)).unwrap();
    assert!(
        want == got,
        "{seeder} -> {leecher}: downloaded bytes differ"
    );
    lab_ok(&lab.state, "seed.sh", &["stop", seeder]);
    eprintln!(
        "{seeder} -> {leecher} via {announce}: {} bytes verified in {secs:.1}s",
        got.len()
    );
    secs
}

#[test]
fn real_clients_find_each_other_through_pow_tracker() {
    let mut lab = Lab::new("trk-pow");
    let log = std::fs::File::create(lab.dir().join("tracker.log")).unwrap();
    let child = Command::new(pow_bin())
        .args([
            "tracker",
            "--listen",
            &format!("127.0.0.1:{PORT}"),
            "--interval",
            "2",
        ])
        .env("POW_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start pow tracker");
    lab.tracker = Some(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", PORT)).is_err() {
        assert!(Instant::now() < deadline, "pow tracker did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let http = format!("http://127.0.0.1:{PORT}/announce");
    let udp = format!("udp://127.0.0.1:{PORT}/announce");
    // every client on each side at least once, over HTTP
    transfer(&lab, "libtorrent", "aria2", "pow-lt-aria2", &http);
    transfer(&lab, "aria2", "transmission", "pow-aria2-tr", &http);
    transfer(&lab, "transmission", "libtorrent", "pow-tr-lt", &http);
    // libtorrent over UDP on both sides
    transfer(&lab, "libtorrent", "libtorrent", "pow-lt-lt-udp", &udp);

    let raw = std::fs::read_to_string(lab.dir().join("tracker.log")).unwrap();
    let log = strip_ansi(&raw);
    let udp_announces = log
        .lines()
        .filter(|l| l.contains("proto=\"udp\"") && l.contains("peer=127.0.0.1:51203"))
        .count();
    assert!(
        udp_announces > 0,
        "libtorrent leecher never announced over UDP:\n{log}"
    );
    assert!(log.contains("proto=\"http\""), "announces are logged");
}
