//! Faults (#10): a full disk under a download, a seed's data truncated or deleted while it
//! serves, a tracker that goes down and comes back, and `kill -9` at 20 random moments of a
//! seed, a download, `pow save` and `pow serve`. Each prints what was verified before and after
//! the fault: nothing verified is ever lost.
//!
//! Everything runs on 127.0.0.1 with `pow` alone (no swarm-lab), so these tests run in
//! parallel with each other. Downloads run with `POW_TRACE_VERIFIED` (one line per verified
//! piece, see `crash_resume.rs`), which survives a SIGKILL.

mod common;

use common::serve::{form, rand_u64, Server};
use common::trace::{parse_trace, resume_claims, Rng};
use common::{free_port, make_zip, md5_hex, pow, pseudo_random_bytes, TempDir, Tmpfs};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fixed, so a failure can be replayed.
const RNG_SEED: u64 = 0xfa17_2026_1125;

/// A payload file and its torrent, made with `pow torrent create`.
struct Payload {
    work: TempDir,
    /// Directory holding the payload (the seed's `--data`).
    data: PathBuf,
    torrent: PathBuf,
    bytes: Vec<u8>,
    piece_len: usize,
    pieces: u32,
    info_hash: String,
}

impl Payload {
    fn new(tag: &str, len: usize, piece_len: usize) -> Payload {
        let work = TempDir::new(&format!("fault-{tag}"));
        let bytes = pseudo_random_bytes(len, 0x9e37_79b9_7f4a_7c15 ^ len as u64);
        let data = work.path().join("seed");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("payload.bin"), &bytes).unwrap();
        let torrent = work.path().join("payload.torrent");
        let metainfo =
            common::create_torrent(&data.join("payload.bin"), &torrent, piece_len as u32);
        Payload {
            data,
            torrent,
            bytes,
            piece_len,
            pieces: metainfo.geometry.piece_count(),
            info_hash: metainfo.info_hash.to_hex(),
            work,
        }
    }

    fn t(&self) -> &str {
        self.torrent.to_str().unwrap()
    }

    fn all(&self) -> HashSet<u32> {
        (0..self.pieces).collect()
    }

    /// Pieces whose bytes in `file` are the payload's.
    fn correct_pieces(&self, file: &Path) -> HashSet<u32> {
        let actual = std::fs::read(file).unwrap_or_default();
        self.bytes
            .chunks(self.piece_len)
            .enumerate()
            .filter(|(i, want)| {
                actual.get(i * self.piece_len..i * self.piece_len + want.len()) == Some(*want)
            })
            .map(|(i, _)| i as u32)
            .collect()
    }

    fn resume_file(&self, out: &Path) -> PathBuf {
        out.join(format!(".{}.pow-resume", self.info_hash))
    }
}

/// `pow seed` on 127.0.0.1, killed with SIGKILL when dropped; stderr goes to a file.
struct Seed {
    child: Child,
    port: u16,
    stderr: PathBuf,
    /// Its first JSON line.
    started: serde_json::Value,
}

impl Seed {
    fn start(payload: &Payload, data: &Path, port: u16, extra: &[&str]) -> Seed {
        let stderr = payload
            .work
            .path()
            .join(format!("seed-{port}-{}.log", rand_u64()));
        let mut child = pow()
            .args(["seed", payload.t(), "--data"])
            .arg(data)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let line = common::first_stdout_line(&mut child);
        let started = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        Seed {
            child,
            port,
            stderr,
            started,
        }
    }

    fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `pow download` from `peers` into `out`, tracing verified pieces to `trace`.
fn download(payload: &Payload, out: &Path, peers: &[String], trace: &Path) -> Command {
    let mut cmd = pow();
    cmd.args(["download", payload.t(), "-o"])
        .arg(out)
        .args(["--port", &free_port().to_string(), "--bind", "127.0.0.1"])
        // Saves many times a second, so kills land before, during and after saves.
        .args(["--json", "--resume-every", "0.05"])
        .env("POW_TRACE_VERIFIED", trace);
    for p in peers {
        cmd.args(["--peer", p]);
    }
    cmd
}

fn sorted(set: &HashSet<u32>) -> Vec<u32> {
    let mut v: Vec<u32> = set.iter().copied().collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// 1. Disk full

#[test]
fn disk_full_stops_the_download_and_a_rerun_after_more_space_fetches_only_the_rest() {
    let payload = Payload::new("full", 12 << 20, 256 << 10);
    let seed = Seed::start(&payload, &payload.data, free_port(), &[]);
    let out = payload.work.path().join("small");
    // 60 % of the payload.
    let disk = match Tmpfs::mount(&out, "7373k") {
        Ok(disk) => disk,
        Err(e) => {
            println!("SKIPPED: cannot mount a tmpfs here ({e}); the disk-full case needs root");
            return;
        }
    };
    let trace = payload.work.path().join("full.trace");
    let target = out.join("payload.bin");

    let first = download(&payload, &out, &[seed.peer()], &trace)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        !first.status.success(),
        "a full disk must fail the download"
    );
    let error_line = stderr
        .lines()
        .find(|l| l.starts_with("pow: cannot write"))
        .unwrap_or_else(|| panic!("no clear error: {stderr}"));
    assert!(
        error_line.contains(target.to_str().unwrap())
            && error_line.contains("No space left on device")
            && error_line.contains("free space and run again to resume"),
        "{error_line}"
    );
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["complete"], false);
    let runs = parse_trace(&trace);
    let verified_1: HashSet<u32> = runs[0].verified.iter().copied().collect();
    let correct = payload.correct_pieces(&target);
    let claims = resume_claims(&payload.resume_file(&out));
    assert!(
        verified_1.is_subset(&correct),
        "a verified piece is not on disk"
    );
    assert!(
        claims.is_subset(&correct),
        "the resume file claims too much"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-written files left: {leftovers:?}"
    );
    println!("disk full: {error_line}");
    if let Some(line) = stderr.lines().find(|l| l.contains("resume file")) {
        println!("disk full: {line}");
    }
    println!(
        "disk full: before the fault 0 pieces; at it {} of {} verified ({} correct on disk, resume file claims {}), exit code {:?}",
        verified_1.len(),
        payload.pieces,
        correct.len(),
        claims.len(),
        first.status.code()
    );
    assert!(
        !verified_1.is_empty(),
        "nothing verified before the disk filled"
    );

    disk.resize("32m");
    let second = download(&payload, &out, &[seed.peer()], &trace)
        .output()
        .unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    let runs = parse_trace(&trace);
    let rerun = &runs[1];
    assert!(
        verified_1.is_subset(&rerun.start),
        "pieces verified before the disk filled were lost: {:?}",
        sorted(&verified_1.difference(&rerun.start).copied().collect())
    );
    let fetched: HashSet<u32> = rerun.verified.iter().copied().collect();
    assert!(fetched.is_disjoint(&rerun.start), "fetched a piece again");
    assert_eq!(
        rerun.start.union(&fetched).copied().collect::<HashSet<_>>(),
        payload.all()
    );
    let left = u64::from(payload.pieces - rerun.start.len() as u32) * payload.piece_len as u64;
    assert!(report["downloaded"].as_u64().unwrap() <= left, "{report}");
    assert_eq!(std::fs::read(&target).unwrap(), payload.bytes);
    println!(
        "disk full: after remount to 32 MiB the rerun started from {} with {} pieces, fetched {} pieces ({} bytes), complete, bytes match",
        rerun.source,
        rerun.start.len(),
        fetched.len(),
        report["downloaded"]
    );
}

// ---------------------------------------------------------------------------------------
// 2. A seed's data truncated or deleted under it

const CHOKE: u8 = 0;
const UNCHOKE: u8 = 1;
const INTERESTED: u8 = 2;
const BITFIELD: u8 = 5;
const REQUEST: u8 = 6;
const PIECE: u8 = 7;

/// A scripted leecher on a blocking socket.
struct Wire {
    stream: TcpStream,
    bitfield: Vec<u8>,
}

impl Wire {
    /// Handshakes, reads the seed's bitfield and waits to be unchoked.
    fn connect(port: u16, info_hash: &str) -> Wire {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut hs = vec![19u8];
        hs.extend_from_slice(b"BitTorrent protocol");
        hs.extend_from_slice(&[0; 8]);
        hs.extend_from_slice(&hex::decode(info_hash).unwrap());
        hs.extend_from_slice(&common::raw_peer::unique_peer_id());
        stream.write_all(&hs).unwrap();
        let mut theirs = [0u8; 68];
        stream.read_exact(&mut theirs).unwrap();
        let mut wire = Wire {
            stream,
            bitfield: Vec::new(),
        };
        wire.send(INTERESTED, &[]);
        loop {
            match wire.recv().expect("seed closed before unchoking") {
                (BITFIELD, bits) => wire.bitfield = bits,
                (UNCHOKE, _) => return wire,
                _ => {}
            }
        }
    }

    fn send(&mut self, id: u8, payload: &[u8]) {
        let mut msg = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        msg.push(id);
        msg.extend_from_slice(payload);
        let _ = self.stream.write_all(&msg);
    }

    /// The next message (keep-alives skipped); `None` when the seed closed the connection.
    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).ok()?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                continue;
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).ok()?;
            return Some((body[0], body[1..].to_vec()));
        }
    }

    fn has(&self, piece: u32) -> bool {
        self.bitfield
            .get(piece as usize / 8)
            .is_some_and(|b| b & (0x80 >> (piece % 8)) != 0)
    }

    /// Requests a whole piece; its bytes, or `None` if the seed closed or choked instead.
    fn piece(&mut self, payload: &Payload, index: u32) -> Option<Vec<u8>> {
        let start = index as usize * payload.piece_len;
        let size = payload.piece_len.min(payload.bytes.len() - start);
        for begin in (0..size).step_by(16384) {
            let mut r = index.to_be_bytes().to_vec();
            r.extend_from_slice(&(begin as u32).to_be_bytes());
            r.extend_from_slice(&(16384.min(size - begin) as u32).to_be_bytes());
            self.send(REQUEST, &r);
        }
        let mut got = vec![0u8; size];
        let mut filled = 0;
        while filled < size {
            match self.recv()? {
                (PIECE, body) => {
                    let at = u32::from_be_bytes(body[4..8].try_into().unwrap()) as usize;
                    assert_eq!(u32::from_be_bytes(body[..4].try_into().unwrap()), index);
                    got[at..at + body.len() - 8].copy_from_slice(&body[8..]);
                    filled += body.len() - 8;
                }
                (CHOKE, _) => return None,
                _ => {}
            }
        }
        Some(got)
    }
}

#[test]
fn seed_data_truncated_or_deleted_while_serving_never_sends_a_wrong_byte() {
    let payload = Payload::new("lost", 4 << 20, 64 << 10);
    let half = payload.pieces / 2;
    // An honest seed of its own copy: the real leecher finishes from it.
    let honest_dir = payload.work.path().join("honest");
    std::fs::create_dir_all(&honest_dir).unwrap();
    std::fs::copy(
        payload.data.join("payload.bin"),
        honest_dir.join("payload.bin"),
    )
    .unwrap();
    let honest = Seed::start(&payload, &honest_dir, free_port(), &[]);
    for case in ["truncate", "delete"] {
        let dir = payload.work.path().join(case);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("payload.bin");
        std::fs::copy(payload.data.join("payload.bin"), &file).unwrap();
        let mut seed = Seed::start(&payload, &dir, free_port(), &[]);
        assert_eq!(seed.started["pieces_good"], payload.pieces);

        let mut leech = Wire::connect(seed.port, &payload.info_hash);
        let before: Vec<u32> = (0..4).collect();
        for &i in &before {
            let got = leech.piece(&payload, i).expect("served before the fault");
            assert_eq!(got, payload.piece_bytes(i), "piece {i} before the fault");
        }
        match case {
            "truncate" => std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len((half as usize * payload.piece_len) as u64)
                .unwrap(),
            _ => std::fs::remove_file(&file).unwrap(),
        }
        // A piece of the lost half, then one of the first half on a new connection.
        let asked = half + 3;
        let after_lost = leech.piece(&payload, asked);
        if let Some(got) = &after_lost {
            assert_eq!(
                got,
                &payload.piece_bytes(asked),
                "{case}: a wrong byte served"
            );
        }
        let mut again = Wire::connect(seed.port, &payload.info_hash);
        let advertised = (0..payload.pieces).filter(|&i| again.has(i)).count();
        let kept = again.piece(&payload, 1).expect("a kept piece is served");
        assert_eq!(kept, payload.piece_bytes(1));

        // A real leecher with both seeds gets every byte right.
        let out = payload.work.path().join(format!("out-{case}"));
        let trace = payload.work.path().join(format!("{case}.trace"));
        let done = download(&payload, &out, &[seed.peer(), honest.peer()], &trace)
            .args(["--snub-timeout", "2"])
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        assert_eq!(
            std::fs::read(out.join("payload.bin")).unwrap(),
            payload.bytes
        );
        let report: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
        let from_damaged = report["received_by_peer"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer"] == seed.peer())
            .map_or(0, |p| p["bytes"].as_u64().unwrap());
        assert!(
            seed.child.try_wait().unwrap().is_none(),
            "{case}: the seed died"
        );
        let log = seed.log();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("can no longer be read"))
            .collect();
        println!(
            "{case}: before the fault {} pieces served and verified; asked for piece {asked} after it: {}; a new connection sees {advertised} of {} pieces advertised and gets piece 1 right; a real leecher finished with every byte right ({from_damaged} bytes from the damaged seed, {} hash failures); seed alive, {} lost-piece warning(s){}",
            before.len(),
            if after_lost.is_some() { "served, bytes right" } else { "connection closed, nothing sent" },
            payload.pieces,
            report["hash_failures"],
            warnings.len(),
            warnings.first().map_or(String::new(), |w| format!(", first: {}", w.trim())),
        );
        assert_eq!(report["hash_failures"], 0);
        if case == "truncate" {
            assert!(after_lost.is_none(), "a truncated piece was served");
            assert!(!again.has(asked), "the lost piece is still advertised");
            assert!(
                warnings
                    .first()
                    .is_some_and(|w| w.contains(file.to_str().unwrap())),
                "no warning naming the path: {log}"
            );
        } else {
            // Unlinked, the file lives on while the seed holds it open: the bytes it serves
            // are still the right ones, so nothing is lost yet; a restart finds it gone, and
            // refuses to seed nothing.
            assert!(after_lost.is_some() && advertised == payload.pieces as usize);
            seed.kill();
            let restarted = pow()
                .args(["seed", payload.t(), "--data"])
                .arg(&dir)
                .args(["--port", "0", "--bind", "127.0.0.1"])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&restarted.stderr);
            println!("delete: restarted: {}", stderr.trim());
            assert_eq!(restarted.status.code(), Some(1), "{stderr}");
            let none = format!("nothing to seed: none of the {} pieces", payload.pieces);
            assert!(stderr.contains(&none), "{stderr}");
        }
    }
}

impl Payload {
    fn piece_bytes(&self, index: u32) -> Vec<u8> {
        let start = index as usize * self.piece_len;
        self.bytes[start..(start + self.piece_len).min(self.bytes.len())].to_vec()
    }
}

// ---------------------------------------------------------------------------------------
// 3. Tracker down, then back

fn start_tracker(port: u16) -> Child {
    let child = pow()
        .args(["tracker", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--interval", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tracker never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn scrape_complete(url: &str, torrent: &str) -> u64 {
    let out = pow()
        .args(["tracker", "scrape", url, torrent, "--json"])
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["complete"].as_u64())
        .unwrap_or(0)
}

#[test]
fn tracker_down_for_a_while_then_back_and_the_download_completes() {
    let payload = Payload::new("tracker", 4 << 20, 64 << 10);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/announce");
    // The hidden --announce-min 1 makes the first retry 1 s (doubling) and lets the
    // tracker's 2 s interval through; the defaults (15 s, 30 s floor) would make this slow.
    let fast = ["--tracker", &url, "--announce-min", "1"];
    let mut tracker = start_tracker(port);
    let seed = Seed::start(&payload, &payload.data, free_port(), &fast);
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape_complete(&url, payload.t()) < 1 {
        assert!(Instant::now() < deadline, "the seed never announced");
        std::thread::sleep(Duration::from_millis(100));
    }
    tracker.kill().unwrap();
    tracker.wait().unwrap();
    let down_at = Instant::now();

    // The leecher knows no peer: only the tracker can tell it about the seed.
    let out = payload.work.path().join("out");
    let leech_err = payload.work.path().join("leech.log");
    let mut leech = pow()
        .args(["download", payload.t(), "-o"])
        .arg(&out)
        .args(["--port", &free_port().to_string(), "--bind", "127.0.0.1"])
        .args(fast)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&leech_err).unwrap())
        .spawn()
        .unwrap();
    const DOWN: Duration = Duration::from_secs(5);
    std::thread::sleep(DOWN);
    let leech_failures_while_down = std::fs::read_to_string(&leech_err)
        .unwrap()
        .matches("pow: tracker:")
        .count();
    let seed_failures_while_down = seed.log().matches("pow: tracker:").count();
    let mut tracker = start_tracker(port);
    let up_at = Instant::now();
    let deadline = up_at + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = leech.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = leech.kill();
            panic!(
                "no download 30 s after the tracker came back: {}",
                std::fs::read_to_string(&leech_err).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let done_at = Instant::now();
    let mut stdout = String::new();
    leech
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let _ = tracker.kill();
    let _ = tracker.wait();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&leech_err).unwrap()
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        std::fs::read(out.join("payload.bin")).unwrap(),
        payload.bytes
    );
    println!(
        "tracker: down {:.1} s; while down the leecher reported {leech_failures_while_down} failed announces and the seed {seed_failures_while_down}; after it came back the download ({} pieces, from 0 verified) completed in {:.1} s, {} bytes from {}",
        (up_at - down_at).as_secs_f64(),
        payload.pieces,
        (done_at - up_at).as_secs_f64(),
        report["downloaded"],
        report["received_by_peer"]
    );
    assert!(leech_failures_while_down >= 2, "the leecher never retried");
    assert!(seed_failures_while_down >= 1, "the seed never re-announced");
    assert_eq!(report["pieces_verified"], payload.pieces);
}

// ---------------------------------------------------------------------------------------
// 4. kill -9: seed and download (5 rounds, both killed: 10 moments)

#[test]
fn kill_9_seed_and_download_at_five_moments_each() {
    const ROUNDS: usize = 5;
    const THROTTLE: &[&str] = &["--max-upload-rate", "32M"];
    let payload = Payload::new("kill-seed", 64 << 20, 256 << 10);
    let seed_file = payload.data.join("payload.bin");
    let out = payload.work.path().join("out");
    let target = out.join("payload.bin");
    let trace = payload.work.path().join("kill.trace");
    let seed_port = free_port();
    let mut rng = Rng(RNG_SEED);
    let mut targets: Vec<f64> = (0..ROUNDS).map(|_| 0.05 + 0.85 * rng.unit()).collect();
    targets.sort_by(f64::total_cmp);
    println!("kill seed+download: rng seed {RNG_SEED:#x}; kill at fractions {targets:.3?}");
    for (round, fraction) in targets.iter().enumerate() {
        // Throttled, so each kill lands mid-download: unthrottled on loopback the last 15% of
        // 64 MiB took less than the ~25 ms between seeing the kill point and the kill, and a
        // round found the download complete.
        let mut seed = Seed::start(&payload, &payload.data, seed_port, THROTTLE);
        assert_eq!(
            seed.started["pieces_good"], payload.pieces,
            "round {round}: the seed lost pieces"
        );
        let mut leech = download(&payload, &out, &[seed.peer()], &trace)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let goal = (fraction * f64::from(payload.pieces)) as usize;
        let at_least = 2 + (rng.next() % 16) as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let runs = parse_trace(&trace);
            let (on_disk, here) = runs
                .get(round)
                .map_or((0, 0), |r| (r.start.len(), r.verified.len()));
            if runs.len() > round && on_disk + here >= goal.max(on_disk + at_least) {
                break;
            }
            assert!(
                leech.try_wait().unwrap().is_none(),
                "round {round}: the download ended before its kill point"
            );
            assert!(Instant::now() < deadline, "round {round}: no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 20_000));
        // Alternate which one dies first; the other follows a few milliseconds later.
        let gap = Duration::from_micros(rng.next() % 5_000);
        if round % 2 == 0 {
            seed.kill();
            std::thread::sleep(gap);
            leech.kill().unwrap();
        } else {
            leech.kill().unwrap();
            std::thread::sleep(gap);
            seed.kill();
        }
        leech.wait().unwrap();
        let runs = parse_trace(&trace);
        let this = &runs[round];
        let correct = payload.correct_pieces(&target);
        let claims = resume_claims(&payload.resume_file(&out));
        let wrong: Vec<_> = claims.difference(&correct).collect();
        assert!(wrong.is_empty(), "round {round}: resume claims {wrong:?}");
        let seed_ok = payload.correct_pieces(&seed_file).len();
        assert_eq!(seed_ok, payload.pieces as usize, "the seed's data changed");
        println!(
            "kill {} (seed) and {} (download) at {:>5.1}%: seed had started from {} with {}/{} pieces; download started from {} with {} pieces, verified {} more; after the kills: download {} correct on disk, resume file claims {}; seed data {} of {} pieces intact",
            2 * round + 1,
            2 * round + 2,
            fraction * 100.0,
            seed.started["resume"],
            seed.started["pieces_good"],
            payload.pieces,
            this.source,
            this.start.len(),
            this.verified.len(),
            correct.len(),
            claims.len(),
            seed_ok,
            payload.pieces
        );
    }
    let seed = Seed::start(&payload, &payload.data, seed_port, &[]);
    println!(
        "seed restarted after {ROUNDS} kills: from {} with {}/{} pieces",
        seed.started["resume"], seed.started["pieces_good"], payload.pieces
    );
    assert_eq!(seed.started["pieces_good"], payload.pieces);
    let last = download(&payload, &out, &[seed.peer()], &trace)
        .output()
        .unwrap();
    assert!(last.status.success(), "the last run did not complete");
    assert_eq!(std::fs::read(&target).unwrap(), payload.bytes);

    // Nothing verified is lost: a full check finds every known piece; a trusted resume file
    // (data untouched since its save) may miss only pieces verified after that save.
    let runs = parse_trace(&trace);
    let mut known: HashSet<u32> = HashSet::new();
    let mut refetched = 0;
    for (i, r) in runs.iter().enumerate() {
        let again: Vec<_> = r.verified.iter().filter(|p| r.start.contains(p)).collect();
        assert!(
            again.is_empty(),
            "run {i} verified pieces it had: {again:?}"
        );
        let lost = known.difference(&r.start).count();
        if r.source == "file" {
            refetched += lost;
        } else {
            assert_eq!(lost, 0, "run {i} ({}) lost pieces", r.source);
        }
        known = r.start.iter().chain(&r.verified).copied().collect();
    }
    assert_eq!(known, payload.all());
    println!(
        "download: {} runs, complete, bytes match; pieces fetched twice (verified after a resume file's last save): {refetched}",
        runs.len()
    );
    assert!(refetched <= 32);
}

// ---------------------------------------------------------------------------------------
// 4. kill -9: pow save (5 moments)

#[test]
fn kill_9_during_pow_save_leaves_all_or_none_of_the_batch() {
    const KILLS: usize = 5;
    const BATCH: usize = 4000;
    let work = TempDir::new("fault-save");
    let dir = work.path().join("pow");
    let status = pow()
        .arg("--pow-dir")
        .arg(&dir)
        .arg("init")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let batch_file = |name: &str| -> PathBuf {
        let path = work.path().join(format!("{name}.toml"));
        let mut text = String::new();
        for i in 0..BATCH {
            text.push_str(&format!(
                "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"{name}_{i}\"\ncsv_file_name = \"c{i}.csv\"\ntorrent_file_name = \"{i:032x}.torrent\"\n\n"
            ));
        }
        std::fs::write(&path, text).unwrap();
        path
    };
    let save = |file: &Path| -> Child {
        pow()
            .arg("--pow-dir")
            .arg(&dir)
            .arg("save")
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let listed = || -> Vec<String> {
        let out = pow()
            .arg("--pow-dir")
            .arg(&dir)
            .args(["source", "list", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pow source list after a kill: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        list.iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let count = |ids: &[String], batch: &str| {
        let prefix = format!("ConnectomeCSVDataSource:{batch}_");
        ids.iter().filter(|id| id.starts_with(&prefix)).count()
    };

    // One whole save first: it is kept through every kill, and its time sets the kill range.
    let started = Instant::now();
    assert!(save(&batch_file("whole")).wait().unwrap().success());
    let took = started.elapsed();
    let mut rng = Rng(RNG_SEED ^ 0x5a5e);
    let mut expected_total = BATCH;
    for kill in 0..KILLS {
        let name = format!("k{kill}");
        let file = batch_file(&name);
        // Most of a save is parsing; the commit is at its end, so the moments lean late.
        let at = took.mul_f64(0.3 + 0.75 * rng.unit());
        let mut child = save(&file);
        std::thread::sleep(at);
        let finished_first = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        child.wait().unwrap();
        let ids = listed();
        let here = count(&ids, &name);
        assert!(
            here == 0 || here == BATCH,
            "kill {kill}: {here} of {BATCH} sources of the batch were saved"
        );
        assert_eq!(
            count(&ids, "whole"),
            BATCH,
            "kill {kill}: an earlier save lost"
        );
        expected_total += here;
        assert_eq!(ids.len(), expected_total);
        println!(
            "save kill {} at {:>4} ms of a {:>4} ms save{}: before {} sources, after {} ({} of the batch of {BATCH}: {})",
            kill + 1,
            at.as_millis(),
            took.as_millis(),
            if finished_first { " (it had already finished)" } else { "" },
            expected_total - here,
            ids.len(),
            here,
            if here == 0 { "none" } else { "all" }
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. kill -9: pow serve with an upload in flight (5 moments)

#[test]
fn kill_9_during_an_upload_to_pow_serve_leaves_only_whole_datasets() {
    const KILLS: usize = 5;
    let work = TempDir::new("fault-serve");
    let data = work.path().join("server");
    let tracker_port = free_port();
    let mut rng = Rng(RNG_SEED ^ 0x5e7e);
    let mut whole: Vec<String> = Vec::new();
    for kill in 0..KILLS {
        let mut server = Server::start(&data, tracker_port, &[]);
        let zip = work.path().join(format!("up-{kill}.zip"));
        make_zip(&zip, 8, 100 + kill as u64);
        let md5 = md5_hex(&zip);
        let (content_type, body) = form(
            &format!("up-{kill}.zip"),
            &std::fs::read(&zip).unwrap(),
            None,
        );
        let mut stream = TcpStream::connect(&server.addr).unwrap();
        write!(
            stream,
            "POST /upload HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        // Even kills: while receiving, at a random point of the body. Odd kills: the body is
        // all sent, and the server is killed a random moment into checking and publishing.
        let moment = if kill % 2 == 0 {
            let cut = (body.len() as f64 * (0.05 + 0.9 * rng.unit())) as usize;
            stream.write_all(&body[..cut]).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            format!("receiving, {cut} of {} bytes sent", body.len())
        } else {
            stream.write_all(&body).unwrap();
            let wait = Duration::from_micros(rng.next() % 250_000);
            std::thread::sleep(wait);
            format!("publishing, {} ms after the whole body", wait.as_millis())
        };
        let before = server.files_in("torrents");
        server.kill();
        drop(stream);

        let server = Server::start(&data, tracker_port, &[]);
        let listed = server.wait_all_seeding();
        let published = listed.contains(&md5);
        let mut expected = whole.clone();
        if published {
            expected.push(md5.clone());
            expected.sort();
        }
        assert_eq!(listed, expected, "kill {kill}: datasets after restart");
        assert!(
            server.files_in("incoming").is_empty(),
            "kill {kill}: incoming/ not emptied: {:?}",
            server.files_in("incoming")
        );
        let torrents = server.files_in("torrents");
        let names: Vec<String> = listed.iter().map(|m| format!("{m}.torrent")).collect();
        let stray: Vec<_> = torrents
            .iter()
            .filter(|t| !names.contains(t) && t.as_str() != "index.json")
            .collect();
        assert!(
            stray.is_empty(),
            "kill {kill}: stray in torrents/: {stray:?}"
        );
        assert_eq!(server.files_in("content"), listed, "kill {kill}: content/");
        for m in &listed {
            let dir = data.join("content").join(m);
            // The content file, beside the seed's resume file (`.<info-hash>.pow-resume`).
            let files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect();
            assert_eq!(files.len(), 1, "kill {kill}: content of {m}: {files:?}");
            let name = &files[0];
            assert_eq!(&md5_hex(name), m, "kill {kill}: content of {m}");
            let verify = pow()
                .arg("verify")
                .arg(data.join("torrents").join(format!("{m}.torrent")))
                .arg("--data")
                .arg(&dir)
                .output()
                .unwrap();
            assert!(verify.status.success(), "kill {kill}: {m} does not verify");
        }
        println!(
            "serve kill {} while {moment}: before {} dataset(s) ({} torrent files), after restart {} listed, all seeding and verifying; the upload in flight {}",
            kill + 1,
            whole.len(),
            before.iter().filter(|t| t.ends_with(".torrent")).count(),
            listed.len(),
            if published { "was published whole" } else { "left nothing" }
        );
        whole = listed;
    }
}

/// `pow download --seed` stops on a SIGTERM that comes between the end of the download and the
/// seeding: here while its report waits on a full stdout pipe (read once the signal is sent).
/// Before, the download's signal listener was gone by then and the seed's not yet made; tokio
/// keeps its handler installed, so the signal was ignored and the seed went on until killed.
#[test]
fn a_sigterm_as_a_download_turns_to_seeding_stops_it() {
    let status = sigterm_while_reporting(true);
    assert!(status.success(), "{status}");
}

/// A `pow download` whose report waits on a reader that never reads stops at once on a
/// SIGTERM (130), with the data complete. Before, nothing listened after the download: the
/// signal was ignored and it waited on the reader for good.
#[test]
fn a_sigterm_while_the_report_waits_on_its_reader_stops_at_once() {
    let status = sigterm_while_reporting(false);
    assert_eq!(status.code(), Some(130), "{status}");
}

/// Runs `pow download` (with `--seed` when `seed`) from a pow seed with stdout a full pipe, so
/// that its report waits; once every piece is verified, sends SIGTERM, then (with `--seed`)
/// reads the pipe. Returns how it ended within 10 s (the content checked complete).
fn sigterm_while_reporting(seed: bool) -> std::process::ExitStatus {
    use std::os::fd::AsRawFd;
    let work = TempDir::new("term-window");
    let (data, torrent) = common::mib_payload(work.path(), "w.bin", 1, None);
    let seed_port = free_port();
    let _seed = common::pow_seed(
        &torrent,
        data.parent().unwrap(),
        seed_port,
        &[],
        Stdio::null(),
    );
    // A full pipe: the download's first write to stdout (its report) waits until we read.
    let (mut reader, mut writer) = std::io::pipe().unwrap();
    let capacity = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_GETPIPE_SZ) };
    assert!(capacity > 0, "F_GETPIPE_SZ");
    writer.write_all(&vec![b'.'; capacity as usize]).unwrap();
    let out = work.path().join("out");
    let trace = work.path().join("trace");
    let pieces = pow_metainfo::Metainfo::from_file(&torrent)
        .unwrap()
        .geometry
        .piece_count() as usize;
    let mut download = pow();
    download
        .env("POW_TRACE_VERIFIED", &trace)
        .arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(&out)
        .args(["--peer", &format!("127.0.0.1:{seed_port}")])
        .args(["--port", &free_port().to_string(), "--bind", "127.0.0.1"])
        .stdout(writer)
        .stderr(Stdio::null());
    if seed {
        download.arg("--seed");
    }
    let mut download = common::Killed(download.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let verified = || {
        parse_trace(&trace)
            .iter()
            .map(|r| r.verified.len())
            .sum::<usize>()
    };
    while verified() < pieces {
        assert!(Instant::now() < deadline, "the download did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every piece is verified: the download is complete (and reported so, whatever signal
    // comes), and soon waits to write its report.
    std::thread::sleep(Duration::from_millis(500));
    let pid = download.0.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    if seed {
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = download.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after a SIGTERM sent as its report waited (--seed: {seed})"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("  --seed {seed}: stopped by the SIGTERM: {status}");
    common::same_bytes(&data, &out.join("w.bin")).unwrap();
    status
}
