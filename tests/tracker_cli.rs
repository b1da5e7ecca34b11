//! `pow tracker` as users run it: the server on a free port, `announce` and `scrape` against
//! it, strict rejection of malformed announces, and clear one-line errors.

mod common;

use common::{pow, pow_bin, strip_ansi, TempDir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `pow tracker --listen 127.0.0.1:0`: the address comes from its first stdout line.
fn start() -> Server {
    let mut child = Command::new(pow_bin())
        .args(["tracker", "--listen", "127.0.0.1:0", "--interval", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = common::first_stdout_line(&mut child);
    let url = line
        .trim()
        .strip_prefix("tracker listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server(child, url)
}

fn torrent(dir: &Path) -> std::path::PathBuf {
    // a minimal single-file torrent, bencoded by hand (keys sorted)
    let pieces = [0u8; 20];
    let mut info = b"d6:lengthi1000e4:name4:test12:piece lengthi16384e6:pieces20:".to_vec();
    info.extend_from_slice(&pieces);
    info.push(b'e');
    let announce = "http://127.0.0.1:1/announce";
    let mut t = format!("d8:announce{}:{announce}4:info", announce.len()).into_bytes();
    t.extend_from_slice(&info);
    t.push(b'e');
    let path = dir.join("t.torrent");
    std::fs::write(&path, t).unwrap();
    path
}

/// `tmp/data/NAME.bin` of `size` pseudo-random bytes (from `seed`) and its torrent
/// `tmp/NAME.torrent` (64 KiB pieces): (the data directory, the torrent).
fn one_file_torrent(
    tmp: &Path,
    name: &str,
    size: usize,
    seed: u64,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = tmp.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join(format!("{name}.bin"));
    std::fs::write(&file, common::pseudo_random_bytes(size, seed)).unwrap();
    let torrent = tmp.join(format!("{name}.torrent"));
    common::create_torrent(&file, &torrent, 65536);
    (data, torrent)
}

/// `pow tracker` with a 600 s interval, its info-level log (every announce) written to `log`:
/// the server and its announce URL.
fn tracker_logging_to(log: &Path) -> (Server, String) {
    let mut tracker = Server(
        Command::new(pow_bin())
            .args(["tracker", "--listen", "127.0.0.1:0", "--interval", "600"])
            .env("POW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
        String::new(),
    );
    let line = common::first_stdout_line(&mut tracker.0);
    let url = line
        .trim()
        .strip_prefix("tracker listening on ")
        .unwrap()
        .to_string();
    (tracker, url)
}

fn raw_get(url: &str, target: &str) -> String {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/announce");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn pow_tracker_serves_announce_and_scrape_and_rejects_malformed() {
    let tmp = TempDir::new("trk-cli");
    let t = torrent(tmp.path());
    let server = start();
    let url = server.1.clone();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let udp = url.replace("http://", "udp://");

    let out = pow()
        .args([
            "tracker",
            "announce",
            &url,
            t.to_str().unwrap(),
            "--port",
            "5001",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["interval"], 1);
    assert_eq!(v["incomplete"], 1);
    let out = pow()
        .args([
            "tracker",
            "announce",
            &udp,
            t.to_str().unwrap(),
            "--port",
            "5002",
            "--left",
            "0",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["peers"], serde_json::json!(["127.0.0.1:5001"]));
    assert_eq!(
        (v["complete"].as_u64(), v["incomplete"].as_u64()),
        (Some(1), Some(1))
    );
    let out = pow()
        .args(["tracker", "scrape", &url, t.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("seeders    1") && text.contains("leechers   1"),
        "{text}"
    );

    // malformed: a bencoded failure reason, and the server keeps going
    let reply = raw_get(&url, "/announce?info_hash=%01%02&peer_id=x&port=1");
    assert!(reply.contains("d14:failure reason"), "{reply}");
    assert!(reply.contains("info_hash must be 20 bytes"), "{reply}");
    let reply = raw_get(&url, "/announce?info_hash=aaaaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb&port=0&uploaded=0&downloaded=0&left=0");
    assert!(reply.contains("invalid port 0"), "{reply}");
    let out = pow()
        .args([
            "tracker",
            "announce",
            &url,
            t.to_str().unwrap(),
            "--port",
            "5003",
            "--event",
            "stopped",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn announce_to_a_dead_tracker_is_one_clear_line() {
    let tmp = TempDir::new("trk-cli-dead");
    let t = torrent(tmp.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for url in [
        format!("http://127.0.0.1:{port}/announce"),
        format!("https://127.0.0.1:{port}/announce"),
        format!("udp://127.0.0.1:{port}"),
    ] {
        let out = pow()
            .args([
                "tracker",
                "announce",
                &url,
                t.to_str().unwrap(),
                "--timeout",
                "2",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("pow: connecting to 127.0.0.1:{port} failed")),
            "{err}"
        );
        // Why, too: it said only "failed" (refused, unreachable and reset read the same).
        assert!(err.contains("Connection refused"), "{err}");
    }
}

/// A download that completes within its first second tells the tracker it has nothing left:
/// the announce loop's copy of the progress is refreshed once a second, and `completed` and
/// `stopped` used to carry that copy, so the tracker counted a new seed as a leecher (with
/// the whole torrent left) until the next regular announce, up to half an hour later. And it
/// announces `completed` before `stopped`, though it stops before `min interval` passed.
#[test]
fn a_download_that_completes_at_once_tells_the_tracker_it_has_nothing_left() {
    let tmp = TempDir::new("trk-cli-left");
    let (data, torrent) = one_file_torrent(tmp.path(), "quick", 4 << 20, 0x1EF7);
    let log_path = tmp.path().join("tracker.log");
    let (tracker, url) = tracker_logging_to(&log_path);
    let seed_port = common::free_port();
    let _seed = common::pow_seed(&torrent, &data, seed_port, &["--no-pex"], Stdio::null());
    let seed = format!("127.0.0.1:{seed_port}");
    let out = tmp.path().join("out");
    let report = common::pow_download_json(
        torrent.to_str().unwrap(),
        &out,
        &["--no-pex", "--peer", &seed, "--tracker", &url],
    );
    assert_eq!(report["complete"], true, "{report}");
    drop(tracker);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let announces: Vec<String> = log
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("announce") && l.contains(" left="))
        .collect();
    println!("{}", announces.join("\n"));
    let last = announces.last().expect("the download announced");
    assert!(
        last.contains("event=Stopped") && last.contains(" left=0 "),
        "last announce: {last}"
    );
    // `completed` is owed even though the download stopped before `min interval` passed.
    let completed: Vec<&String> = announces
        .iter()
        .filter(|l| l.contains("event=Completed"))
        .collect();
    assert_eq!(completed.len(), 1, "one `completed`");
    assert!(completed[0].contains(" left=0 "), "{}", completed[0]);
}

/// `pow download TARGET -o OUT` on a free port of 127.0.0.1 with `extra` arguments, its
/// info-level log written to `log`; killed when dropped.
fn download_logging(target: &str, out: &Path, log: &Path, extra: &[&str]) -> common::Killed {
    common::Killed(
        common::pow_download(target, out)
            .args(extra)
            .env("POW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn log_of(path: &Path) -> String {
    strip_ansi(&std::fs::read_to_string(path).unwrap())
}

/// Waits until the log at `path` contains `needle`, at most until `started` is `limit` s old.
fn wait_for_line(path: &Path, needle: &str, started: std::time::Instant, limit: u64) {
    while !log_of(path).contains(needle) {
        assert!(
            started.elapsed().as_secs() < limit,
            "no {needle:?} in: {}",
            log_of(path)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until `download` exits, which it must do successfully before `started` is `limit` s
/// old; `why` says what a timeout means.
fn wait_success(
    download: &mut common::Killed,
    log: &Path,
    started: std::time::Instant,
    limit: u64,
    why: &str,
) {
    let status = loop {
        if let Some(status) = download.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed().as_secs() < limit,
            "{why}: {}",
            log_of(log)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "{}", log_of(log));
}

/// A download that no peer serves asks the tracker again as soon as `min interval` allows,
/// not after the regular interval; so does a magnet link's download while it waits for the
/// metadata. Here the seed announces after the downloads did and cannot be found any other
/// way: Transmission does not dial loopback peers a tracker names, as a seed cannot dial a
/// downloader behind NAT. Before, a download waited for its next regular announce (600 s
/// here; trackers often say 30 minutes), and the magnet's gave up at its metadata timeout.
/// Two of the downloads are of one torrent: they find each other at once, and, having nothing
/// to trade, go on asking; the magnet link is of another torrent. Each runs on its own loopback
/// address (`--bind`, which its dials start from), as peers on other hosts would: Transmission
/// keeps one connection per address and torrent, and closed the second download's while the
/// first's was open; the first then finished and left, and the second was once not let in
/// for 90 s.
#[test]
fn a_download_nobody_serves_announces_again_at_min_interval() {
    let tmp = TempDir::new("trk-cli-no-peers");
    let tracker_port = common::free_port();
    let _tracker = common::Killed(
        Command::new("python3")
            .arg(common::swarm_lab().join("tiny-tracker.py"))
            .args(["--port", &tracker_port.to_string(), "--interval", "600"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_listening(tracker_port, "tiny-tracker.py");
    let url = format!("http://127.0.0.1:{tracker_port}/announce");
    let (data, torrent) = common::mib_payload(tmp.path(), "blob", 4, Some(&url));
    let (magnet_data, magnet_torrent) = common::mib_payload(tmp.path(), "blob5", 5, Some(&url));
    let info_hash = pow_metainfo::Metainfo::from_file(&magnet_torrent)
        .unwrap()
        .info_hash
        .to_hex();
    let magnet = format!("magnet:?xt=urn:btih:{info_hash}&tr={url}");
    let started = std::time::Instant::now();
    let targets = [
        (torrent.to_str().unwrap(), &data),
        (torrent.to_str().unwrap(), &data),
        (&magnet, &magnet_data),
    ];
    let ports = targets.map(|_| common::free_port());
    let downloads: Vec<_> = targets
        .into_iter()
        .enumerate()
        .map(|(i, (target, data))| {
            let out = tmp.path().join(format!("out{i}"));
            let log = tmp.path().join(format!("download{i}.log"));
            let mut command = pow();
            command
                .arg("download")
                .arg(target)
                .arg("-o")
                .arg(&out)
                .args(["--port", &ports[i].to_string()])
                .args(["--bind", &format!("127.0.0.{}", i + 1)])
                .args(["--announce-min", "1"]);
            if i == 0 {
                // The tracker sees every announce come from 127.0.0.1.
                command.args(["--peer", &format!("127.0.0.2:{}", ports[1])]);
            }
            let child = common::Killed(
                command
                    .env("POW_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .unwrap(),
            );
            (child, data.clone(), out, log)
        })
        .collect();
    for (_, _, _, log) in &downloads {
        wait_for_line(log, "peers, next announce in 600s", started, 20);
    }
    let seeder = common::transmission::Transmission::start(
        tmp.path(),
        &torrent,
        data.parent().unwrap(),
        true,
        &[],
    );
    let added = seeder.remote(&[
        "-a",
        magnet_torrent.to_str().unwrap(),
        "-w",
        data.parent().unwrap().to_str().unwrap(),
    ]);
    assert!(added.0, "{}", added.1);
    seeder.remote(&["-t", "2", "-v"]);
    for (mut download, data, out, log) in downloads {
        wait_success(
            &mut download,
            &log,
            started,
            90,
            "the download did not find the seed",
        );
        let name = data.file_name().unwrap();
        assert_eq!(
            common::same_bytes(&data, &out.join(name)),
            Ok(std::fs::metadata(&data).unwrap().len()),
            "{}",
            log_of(&log)
        );
        println!(
            "  {} downloaded from a seed that announced after it, in {:.1} s",
            out.join(name).display(),
            started.elapsed().as_secs_f64()
        );
        for line in log_of(&log).lines().filter(|l| l.contains("metadata")) {
            println!("    {line}");
        }
    }
}

/// A magnet link's download dials again, 10 s later, a peer that was down when first dialed,
/// until its metadata timeout: one link with a tracker that keeps the search open, one with
/// its `x.pe` peer alone. Each used to try each address once: the first waited for its
/// metadata timeout, the second ended at once with "every peer source ended".
#[test]
fn a_magnet_download_dials_again_a_peer_that_was_down() {
    let tmp = TempDir::new("trk-cli-redial");
    let tracker = common::PowTracker::start();
    let (data, torrent) = common::mib_payload(tmp.path(), "blob", 2, None);
    let info_hash = pow_metainfo::Metainfo::from_file(&torrent)
        .unwrap()
        .info_hash
        .to_hex();
    let seed_port = common::free_port();
    let x_pe_only = format!("magnet:?xt=urn:btih:{info_hash}&x.pe=127.0.0.1:{seed_port}");
    let with_tracker = format!("{x_pe_only}&tr={}", tracker.url);
    let started = std::time::Instant::now();
    let mut downloads: Vec<_> = [("with-tracker", &with_tracker), ("x-pe-only", &x_pe_only)]
        .into_iter()
        .map(|(name, magnet)| {
            let out = tmp.path().join(name);
            let log = tmp.path().join(format!("{name}.log"));
            let download = download_logging(magnet, &out, &log, &["--metadata-timeout", "60"]);
            (name, out, log, download)
        })
        .collect();
    for (_, _, log, _) in &downloads {
        wait_for_line(
            log,
            &format!("metadata: 127.0.0.1:{seed_port}:"),
            started,
            20,
        );
    }
    let down_for = started.elapsed().as_secs_f64();
    let _seed = common::pow_seed(
        &torrent,
        data.parent().unwrap(),
        seed_port,
        &["--no-pex"],
        Stdio::null(),
    );
    for (name, out, log, download) in &mut downloads {
        wait_success(download, log, started, 50, "the peer was not dialed again");
        assert_eq!(common::same_bytes(&data, &out.join("blob")), Ok(2 << 20));
        println!(
            "  {name}: the seed was down for the first dial ({down_for:.1} s in); downloaded in \
             {:.1} s",
            started.elapsed().as_secs_f64()
        );
        for line in log_of(log).lines().filter(|l| l.contains("metadata")) {
            println!("    {line}");
        }
    }
}

/// A magnet link that names no tracker and no peer, without `--dht`, cannot find anyone: it
/// ends at once and says what would give it peers, rather than waiting out the metadata
/// timeout.
#[test]
fn a_magnet_link_with_nowhere_to_look_ends_at_once_with_a_hint() {
    let tmp = TempDir::new("trk-cli-nowhere");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let started = std::time::Instant::now();
    let o = common::pow_download(
        &format!("magnet:?xt=urn:btih:{hash}"),
        &tmp.path().join("out"),
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "nowhere to look for peers of {hash}: no tracker, no peer, and the DHT is off (give \
             --tracker URL, --peer IP:PORT or --dht)"
        )),
        "{stderr}"
    );
    // At once: waiting for the metadata timeout would take 60 s and more.
    assert!(started.elapsed().as_secs() < 15);
}

/// A download whose only tracker is a UDP one that never answers stops within the stop
/// timeout (5 s) of SIGTERM. The stop used to wait for the announce round under way: BEP 15's
/// retries (15 + 30 + 60 s) took 105 s.
#[test]
fn a_download_stops_at_once_while_its_udp_tracker_does_not_answer() {
    let tmp = TempDir::new("trk-cli-stop");
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tracker = format!("udp://{}/announce", silent.local_addr().unwrap());
    let (_, torrent) = common::mib_payload(tmp.path(), "blob", 1, None);
    let log = tmp.path().join("download.log");
    let mut download = download_logging(
        torrent.to_str().unwrap(),
        &tmp.path().join("out"),
        &log,
        &["--tracker", &tracker],
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let mut buf = [0u8; 64];
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    assert!(
        silent.recv_from(&mut buf).is_ok(),
        "no announce reached the tracker"
    );
    // SAFETY: kill(2) on the child's pid, which is still ours to wait for.
    unsafe { libc::kill(download.0.id() as i32, libc::SIGTERM) };
    let stopping = std::time::Instant::now();
    while download.0.try_wait().unwrap().is_none() {
        assert!(
            stopping.elapsed().as_secs() < 15,
            "still running 15 s after SIGTERM: {}",
            log_of(&log)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!(
        "stopped {:.1} s after SIGTERM, with its UDP tracker silent",
        stopping.elapsed().as_secs_f64()
    );
}

/// `pow seed --port 0` listens on a port the system gives, and tells that one to its tracker
/// (and in `--json`): a download that knows only the tracker completes from it. The tracker
/// used to be told port 0, which it refused ("invalid port 0"), so nobody could find the seed.
#[test]
fn a_seed_on_port_0_tells_its_tracker_the_port_it_was_given() {
    let tmp = TempDir::new("trk-port-0");
    let (data, torrent) = one_file_torrent(tmp.path(), "given", 1 << 20, 0x0B07);
    let tracker = start();
    let mut seed = common::Killed(
        pow()
            .arg("seed")
            .arg(&torrent)
            .arg("--data")
            .arg(&data)
            .args(["--port", "0", "--bind", "127.0.0.1", "--json", "--no-pex"])
            .args(["--tracker", &tracker.1])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let line = common::first_stdout_line(&mut seed.0);
    let seeding: serde_json::Value = serde_json::from_str(&line).unwrap();
    let port = seeding["port"].as_u64().unwrap();
    assert_ne!(port, 0, "{line}");
    // The tracker lists the seed at that port (asked as another peer, until the seed's first
    // announce is in).
    let seed_addr = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    loop {
        let asked = pow()
            .args(["tracker", "announce", &tracker.1])
            .arg(&torrent)
            .args(["--port", "5003", "--json"])
            .output()
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&asked.stdout).unwrap();
        let peers = answer["peers"].as_array().cloned().unwrap_or_default();
        if peers.iter().any(|p| p == seed_addr.as_str()) {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 20,
            "the tracker never listed {seed_addr}: {answer}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = tmp.path().join("out");
    let report = common::pow_download_json(
        torrent.to_str().unwrap(),
        &out,
        &["--no-pex", "--tracker", &tracker.1, "--stall-timeout", "20"],
    );
    println!("seed on port {port}; a download through the tracker alone: {report}");
    assert_eq!(report["complete"], true, "{report}");
}

/// `pow download --json` whose reader is gone (`| true`): the report is dropped, the download
/// ends with success, and the tracker is still told `stopped`. `println!` used to panic on
/// the closed pipe (exit 101) before the tracker heard anything past `started`.
#[test]
fn a_download_whose_reader_is_gone_still_tells_its_tracker() {
    let tmp = TempDir::new("trk-pipe");
    let (data, torrent) = one_file_torrent(tmp.path(), "piped", 1 << 20, 0x919E);
    let log_path = tmp.path().join("tracker.log");
    let (tracker, url) = tracker_logging_to(&log_path);
    let seed_port = common::free_port();
    let _seed = common::pow_seed(&torrent, &data, seed_port, &["--no-pex"], Stdio::null());
    let out = tmp.path().join("out");
    let mut download = common::pow_download(torrent.to_str().unwrap(), &out)
        .args(["--json", "--no-pex", "--tracker", &url])
        .args(["--peer", &format!("127.0.0.1:{seed_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(download.stdout.take()); // the reader goes away before the report
    let status = download.wait().unwrap();
    let mut stderr = String::new();
    download
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    drop(tracker);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let stopped = log
        .lines()
        .map(strip_ansi)
        .any(|l| l.contains("announce") && l.contains("event=Stopped"));
    assert!(stopped, "no `stopped` announce:\n{log}");
}
