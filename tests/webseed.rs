//! BEP 19 web seeds: `pow download` fetches pieces over HTTP `Range:` requests from a torrent's
//! `url-list`, verifies them like peer data, and falls back to peers for a piece the web seed
//! serves corrupt.
//!
//! The web server is a small Range-capable HTTP/1.1 server in this file (Python's
//! `http.server` ignores `Range:` and always answers 200 with the whole file). It serves files
//! under a root directory, can flip bytes in one file range, and counts what it served: the
//! faults (a corrupt range, dead or failing mirrors) need it, since a real server will not
//! produce them. Test (e) runs the single- and multi-file layouts against nginx, a real server.

mod common;

use common::nginx::Nginx;
use common::{free_port, pow, pseudo_random_bytes, same_tree, TempDir, Tmpfs};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PIECE: u64 = 64 * 1024;

/// What the server did, shared with the test.
#[derive(Default)]
struct Served {
    requests: AtomicU64,
    range_requests: AtomicU64,
    bytes: AtomicU64,
    /// The corrupted range was sent at least once.
    corrupted_sent: AtomicBool,
}

/// Flip the bytes of `range` (offsets in the file) whenever they are served for `url_path`.
#[derive(Clone)]
struct Corruption {
    url_path: String,
    range: std::ops::Range<u64>,
}

/// How a server breaks the protocol or turns requests away: faults a real web server will not
/// produce on demand.
#[derive(Clone, Copy)]
enum Fault {
    /// Every range answered from one byte further on (its `Content-Range` says so).
    AnotherRange,
    /// Every body marked `Content-Encoding: gzip` (its bytes the file's).
    EncodedUnasked,
    /// Every request answered with this status.
    Status(u16),
    /// The first `first` requests answered 503 with `Retry-After: <seconds>`.
    Busy { first: u64, seconds: u64 },
    /// The first request's body sent a byte a second.
    TrickleFirst,
    /// The first request served, every later one answered 403 half a second later (after
    /// the first run was stored).
    RefusedAfterFirst,
}

struct Server {
    addr: SocketAddr,
    served: Arc<Served>,
}

impl Server {
    /// Serves files under `root` on 127.0.0.1 (a thread per connection, one request each).
    fn start(root: &Path, corruption: Option<Corruption>) -> Server {
        Server::start_with(root, corruption, None)
    }

    /// [`Server::start`], with `fault`.
    fn faulty(root: &Path, fault: Fault) -> Server {
        Server::start_with(root, None, Some(fault))
    }

    fn start_with(root: &Path, corruption: Option<Corruption>, fault: Option<Fault>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(Served::default());
        let root = root.to_path_buf();
        let counters = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (root, counters, corruption) =
                    (root.clone(), counters.clone(), corruption.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &counters, corruption.as_ref(), fault);
                });
            }
        });
        Server { addr, served }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn serve(
    stream: TcpStream,
    root: &Path,
    served: &Served,
    corruption: Option<&Corruption>,
    fault: Option<Fault>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range: Option<(u64, Option<u64>)> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("range:") {
            let spec = value.trim().strip_prefix("bytes=").unwrap_or("");
            let (a, b) = spec.split_once('-').unwrap_or(("", ""));
            range = a.parse().ok().map(|a| (a, b.parse().ok()));
        }
    }
    let nth = served.requests.fetch_add(1, Ordering::Relaxed);
    let mut out = stream;
    match fault {
        Some(Fault::Status(status)) => {
            write!(
                out,
                "HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Some(Fault::RefusedAfterFirst) if nth > 0 => {
            std::thread::sleep(Duration::from_millis(500));
            write!(
                out,
                "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Some(Fault::Busy { first, seconds }) if nth < first => {
            write!(
                out,
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {seconds}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        _ => {}
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let decoded = String::from_utf8(percent_decode(&path)).unwrap();
    let file = root.join(decoded.trim_start_matches('/'));
    let Ok(data) = std::fs::read(&file) else {
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    };
    let len = data.len() as u64;
    let (start, end) = match range {
        Some((a, b)) => (a, b.unwrap_or(len - 1).min(len - 1)),
        None => (0, len - 1),
    };
    if start >= len || start > end {
        write!(
            out,
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    let mut body = data[start as usize..=end as usize].to_vec();
    if let Some(c) = corruption.filter(|c| c.url_path == path) {
        for offset in c.range.start.max(start)..c.range.end.min(end + 1) {
            body[(offset - start) as usize] ^= 0xff;
            served.corrupted_sent.store(true, Ordering::Relaxed);
        }
    }
    if range.is_some() {
        served.range_requests.fetch_add(1, Ordering::Relaxed);
        let shift = u64::from(matches!(fault, Some(Fault::AnotherRange)));
        write!(
            out,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {}-{}/{len}\r\n",
            start + shift,
            end + shift
        )?;
    } else {
        write!(out, "HTTP/1.1 200 OK\r\n")?;
    }
    if matches!(fault, Some(Fault::EncodedUnasked)) {
        write!(out, "Content-Encoding: gzip\r\n")?;
    }
    write!(
        out,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if matches!(fault, Some(Fault::TrickleFirst)) && nth == 0 {
        for byte in body.chunks(1) {
            out.write_all(byte)?;
            served.bytes.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_secs(1));
        }
        return Ok(());
    }
    out.write_all(&body)?;
    served.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    Ok(())
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    pseudo_random_bytes(len, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}

fn create_torrent(content: &Path, torrent: &Path, web_seed: &str) {
    create_torrent_seeds(content, torrent, &[web_seed]);
}

fn create_torrent_seeds(content: &Path, torrent: &Path, web_seeds: &[&str]) {
    let mut cmd = pow();
    cmd.args(["torrent", "create"])
        .arg(content)
        .arg("-o")
        .arg(torrent)
        .args(["--piece-length", &PIECE.to_string(), "--no-date"]);
    for url in web_seeds {
        cmd.args(["--web-seed", url]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "torrent create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_download(torrent: &Path, output: &Path, peers: &[SocketAddr]) -> Child {
    let mut cmd = pow();
    cmd.arg("download")
        .arg(torrent)
        .arg("-o")
        .arg(output)
        .args(["--port", &free_port().to_string(), "--bind", "127.0.0.1"])
        .arg("--json");
    for peer in peers {
        cmd.args(["--peer", &peer.to_string()]);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the download to exit (killed after `limit`); returns its JSON summary.
fn finish(mut child: Child, limit: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("download did not finish in {limit:?}; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let summary = out
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary; stdout:\n{out}\nstderr:\n{err}"));
    if !err.is_empty() {
        println!("download stderr:\n{err}");
    }
    summary
}

/// A child process killed when dropped (the test may panic).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peer_bytes(summary: &serde_json::Value) -> u64 {
    summary["received_by_peer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["bytes"].as_u64().unwrap())
        .sum()
}

fn figures(label: &str, summary: &serde_json::Value, served: &Served, elapsed: Duration) {
    println!(
        "{label}: {} pieces, {} B from web seed, {} B from peers, {} hash failures, {} B wasted; server: {} requests ({} with Range), {} B sent; {:.2} s",
        summary["pieces_total"],
        summary["web_seed_bytes"],
        peer_bytes(summary),
        summary["hash_failures"],
        summary["wasted"],
        served.requests.load(Ordering::Relaxed),
        served.range_requests.load(Ordering::Relaxed),
        served.bytes.load(Ordering::Relaxed),
        elapsed.as_secs_f64()
    );
}

/// (a) A single-file torrent whose web seed URL names the file itself (under another name and
/// directory than the torrent's), no peers.
#[test]
fn single_file_from_web_seed_alone() {
    let tmp = TempDir::new("webseed-single");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let total = 3 * 1024 * 1024 + 12_345;
    let data = bytes(total, 1);
    std::fs::write(src.join("payload.bin"), &data).unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(www.join("mirror")).unwrap();
    std::fs::write(www.join("mirror/copy of payload.bin"), &data).unwrap();
    let server = Server::start(&www, None);
    let torrent = tmp.path().join("t.torrent");
    create_torrent(
        &src.join("payload.bin"),
        &torrent,
        &server.url("/mirror/copy%20of%20payload.bin"),
    );

    let started = Instant::now();
    let out = tmp.path().join("out");
    let summary = finish(start_download(&torrent, &out, &[]), Duration::from_secs(60));
    let elapsed = started.elapsed();
    figures("single file", &summary, &server.served, elapsed);
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["web_seed_bytes"].as_u64(), Some(total as u64));
    assert_eq!(summary["hash_failures"].as_u64(), Some(0));
    // Each run is a whole piece here: every piece is hashed from the fetched bytes, none is
    // read back from disk.
    assert_eq!(
        summary["pieces_hashed_as_received"], summary["pieces_total"],
        "{summary}"
    );
    assert_eq!(std::fs::read(out.join("payload.bin")).unwrap(), data);
}

/// A web seed's data onto a full disk (a 1 MiB tmpfs under a 3 MiB download, no peers): the
/// download stops with the write error, as it does with peers' data. It used to fail the
/// piece, log the error and fetch the same piece again at once, for ever, counting every
/// fetch as downloaded (so `--stall-timeout` never fired either).
#[test]
fn a_full_disk_under_a_web_seed_download_stops_it_with_the_error() {
    let tmp = TempDir::new("webseed-full");
    let data = bytes(3 * 1024 * 1024, 5);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("payload.bin"), &data).unwrap();
    let server = Server::start(&src, None);
    let torrent = tmp.path().join("t.torrent");
    create_torrent(
        &src.join("payload.bin"),
        &torrent,
        &server.url("/payload.bin"),
    );
    let out = tmp.path().join("small");
    let _disk = match Tmpfs::mount(&out, "1m") {
        Ok(disk) => disk,
        Err(e) => {
            println!("SKIPPED: cannot mount a tmpfs here ({e}); the disk-full case needs root");
            return;
        }
    };
    let mut child = start_download(&torrent, &out, &[]);
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let line = err
        .lines()
        .find(|l| l.starts_with("pow: cannot write"))
        .unwrap_or_else(|| panic!("no clear error within 30 s: {err}"));
    println!(
        "full disk under a web seed: {status} after {:.2} s; {line}; server sent {} B",
        started.elapsed().as_secs_f64(),
        server.served.bytes.load(Ordering::Relaxed)
    );
    assert!(!status.success());
    assert!(line.contains("No space left on device"), "{line}");
    assert!(
        server.served.bytes.load(Ordering::Relaxed) < 2 * data.len() as u64,
        "it kept fetching"
    );
}

/// (b) A multi-file torrent (files smaller and larger than a piece, so pieces span files; names
/// that need percent-encoding), web seed URL without a trailing slash, no peers.
#[test]
fn multi_file_from_web_seed_alone() {
    let tmp = TempDir::new("webseed-multi");
    let src = tmp.path().join("src");
    let content = src.join("my set");
    let files: &[(&str, usize)] = &[
        ("a.bin", 100_000),
        ("sub dir/b%c.bin", 1_500_000),
        ("sub dir/tiny.txt", 10),
        ("sub dir/deeper/c.bin", 700_001),
        ("z.bin", 40_000),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        let path = content.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes(*len, 10 + i as u64)).unwrap();
    }
    let www = tmp.path().join("www");
    std::fs::create_dir_all(www.join("pub")).unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(&content)
        .arg(www.join("pub"))
        .status()
        .unwrap();
    assert!(status.success());
    let server = Server::start(&www, None);
    let torrent = tmp.path().join("t.torrent");
    create_torrent(&content, &torrent, &server.url("/pub"));

    let started = Instant::now();
    let out = tmp.path().join("out");
    let summary = finish(start_download(&torrent, &out, &[]), Duration::from_secs(60));
    let elapsed = started.elapsed();
    figures("multi file", &summary, &server.served, elapsed);
    let total: u64 = files.iter().map(|(_, l)| *l as u64).sum();
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["web_seed_bytes"].as_u64(), Some(total));
    assert_eq!(summary["hash_failures"].as_u64(), Some(0));
    // Pieces that span files took more than one range request each.
    assert!(
        server.served.range_requests.load(Ordering::Relaxed)
            > summary["pieces_total"].as_u64().unwrap()
    );
    same_tree(&content, &out.join("my set")).unwrap();
}

/// (c) The web seed serves one piece corrupt; a `pow seed` peer has the good copy. The bad
/// piece fails its hash (a strike for the web seed, which is not asked for it again) and comes
/// from the peer. The seed starts once the corrupt range was served, so the web seed surely
/// gets that piece first; the downloader retries the refused peer after 10 s.
#[test]
fn corrupt_piece_from_web_seed_comes_from_a_peer() {
    let tmp = TempDir::new("webseed-corrupt");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let total = 2 * 1024 * 1024;
    let data = bytes(total, 7);
    std::fs::write(src.join("data.bin"), &data).unwrap();
    let bad_piece = 5;
    let server = Server::start(
        &src,
        Some(Corruption {
            url_path: "/data.bin".into(),
            range: bad_piece * PIECE + 1000..bad_piece * PIECE + 1010,
        }),
    );
    let torrent = tmp.path().join("t.torrent");
    // A trailing slash: the torrent's name is appended.
    create_torrent(&src.join("data.bin"), &torrent, &server.url("/"));

    let seed_port = free_port();
    let seed_addr: SocketAddr = format!("127.0.0.1:{seed_port}").parse().unwrap();
    let started = Instant::now();
    let out = tmp.path().join("out");
    let download = start_download(&torrent, &out, &[seed_addr]);
    while !server.served.corrupted_sent.load(Ordering::Relaxed) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the corrupt range was never requested"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _seed = Killed(
        pow()
            .arg("seed")
            .arg(&torrent)
            .arg("--data")
            .arg(&src)
            .args(["--port", &seed_port.to_string(), "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let summary = finish(download, Duration::from_secs(60));
    let elapsed = started.elapsed();
    figures("corrupt piece + peer", &summary, &server.served, elapsed);
    assert_eq!(summary["complete"], true, "{summary}");
    assert!(summary["hash_failures"].as_u64().unwrap() >= 1, "{summary}");
    assert!(peer_bytes(&summary) >= PIECE, "{summary}");
    assert!(summary["web_seed_bytes"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(std::fs::read(out.join("data.bin")).unwrap(), data);
}

/// (d) Four web seeds: one refuses connections (backs off), one answers 404 (given up), one
/// serves every piece corrupt (banned after MAX_STRIKES bad pieces), one is good. No peers.
#[test]
fn bad_web_seeds_are_given_up_and_the_good_one_finishes() {
    let tmp = TempDir::new("webseed-bad");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let total = 2 * 1024 * 1024;
    let data = bytes(total, 3);
    std::fs::write(src.join("data.bin"), &data).unwrap();
    let good = Server::start(&src, None);
    let missing = Server::start(&tmp.path().join("nothing"), None);
    let corrupt = Server::start(
        &src,
        Some(Corruption {
            url_path: "/data.bin".into(),
            range: 0..u64::MAX,
        }),
    );
    let refused = format!("http://127.0.0.1:{}/data.bin", free_port());
    let torrent = tmp.path().join("t.torrent");
    create_torrent_seeds(
        &src.join("data.bin"),
        &torrent,
        &[
            &refused,
            &missing.url("/data.bin"),
            &corrupt.url("/data.bin"),
            &good.url("/data.bin"),
        ],
    );
    let started = Instant::now();
    let out = tmp.path().join("out");
    let summary = finish(start_download(&torrent, &out, &[]), Duration::from_secs(60));
    let elapsed = started.elapsed();
    figures(
        "four web seeds (good server)",
        &summary,
        &good.served,
        elapsed,
    );
    println!(
        "  404 server: {} requests; corrupting server: {} requests, {} B sent",
        missing.served.requests.load(Ordering::Relaxed),
        corrupt.served.requests.load(Ordering::Relaxed),
        corrupt.served.bytes.load(Ordering::Relaxed),
    );
    println!("  by web seed: {}", summary["received_by_web_seed"]);
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(std::fs::read(out.join("data.bin")).unwrap(), data);
    // The 404 is final: a single request (or one per run in flight then).
    assert!(missing.served.requests.load(Ordering::Relaxed) <= 4);
    // Banned after 3 strikes, with at most the runs then in flight failing after that.
    let failures = summary["hash_failures"].as_u64().unwrap();
    let corrupt_pieces = corrupt.served.bytes.load(Ordering::Relaxed) / PIECE;
    // (A corrupt piece still in flight at the ban is dropped unhashed.)
    assert!(failures <= corrupt_pieces, "{summary}");
    assert!(failures <= 3 + 4, "{summary}");
}

/// A web seed whose copy of the file is one byte short (another version, or one not wholly
/// uploaded) answers the last piece's range cut short, naming its length: that file is not
/// asked of it again. Each retry fetched the tail again, about every second once the other
/// runs had gone well, for as long as the download ran.
#[test]
fn a_web_seed_whose_file_is_shorter_is_not_asked_for_it_again() {
    let tmp = TempDir::new("webseed-short");
    let src = tmp.path().join("src");
    let short_root = tmp.path().join("short");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&short_root).unwrap();
    let data = bytes(4 * 1024 * 1024 + 1000, 8);
    std::fs::write(src.join("data.bin"), &data).unwrap();
    std::fs::write(short_root.join("data.bin"), &data[..data.len() - 1]).unwrap();
    let short = Server::start(&short_root, None);
    let torrent = tmp.path().join("t.torrent");
    create_torrent(&src.join("data.bin"), &torrent, &short.url("/data.bin"));
    let download = Killed(start_download(&torrent, &tmp.path().join("out"), &[]));
    std::thread::sleep(Duration::from_secs(8));
    drop(download);
    let requests = short.served.requests.load(Ordering::Relaxed);
    println!(
        "a web seed one byte short: {requests} requests in 8 s, {} B served",
        short.served.bytes.load(Ordering::Relaxed)
    );
    // The runs of the first round (at most 4); none again.
    assert!(requests <= 4, "{requests} requests");
}

/// Runs a download of `torrent` for `time` and kills it; returns what it logged.
/// Runs a download of `torrent` until it logs a line containing `wanted` (or `within` passed),
/// then for `then` more, and kills it; returns what it logged. (A wait on the log, not a fixed
/// time: a loaded machine may take seconds to start it.)
fn log_of_download_until(
    torrent: &Path,
    output: &Path,
    wanted: &str,
    within: Duration,
    then: Duration,
) -> String {
    let mut download = Killed(start_download(torrent, output, &[]));
    let stderr = download.0.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + within;
    while let Ok(line) = received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        log.push_str(&line);
        log.push('\n');
        if line.contains(wanted) {
            break;
        }
    }
    std::thread::sleep(then);
    let _ = download.0.kill();
    let _ = download.0.wait();
    log.extend(received.try_iter().map(|line| line + "\n"));
    log
}

/// One web seed with `fault`, alone, holding `file_bytes` of data: the torrent and its server.
fn lone_faulty_web_seed(
    tmp: &TempDir,
    name: &str,
    fault: Fault,
    file_bytes: usize,
) -> (std::path::PathBuf, Server) {
    let src = tmp.path().join(name);
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), bytes(file_bytes, 9)).unwrap();
    let server = Server::faulty(&src, fault);
    let torrent = tmp.path().join(format!("{name}.torrent"));
    create_torrent(&src.join("data.bin"), &torrent, &server.url("/data.bin"));
    (torrent, server)
}

/// A web seed that breaks the protocol (here: another range than asked; a body encoded
/// unasked) is given up after `MAX_PROTOCOL_STRIKES` (3) rounds of it, at 0, 1 and 3 s with
/// the back-off, and asked nothing more in the 5 s after. Each was retried with the back-off
/// for as long as the download ran (a 4th request at 7 s). One piece, so one run a round.
#[test]
fn a_web_seed_breaking_the_protocol_is_given_up() {
    let tmp = TempDir::new("webseed-protocol");
    let checks: Vec<_> = [
        ("another-range", Fault::AnotherRange),
        ("encoded", Fault::EncodedUnasked),
    ]
    .into_iter()
    .map(|(name, fault)| {
        let (torrent, server) = lone_faulty_web_seed(&tmp, name, fault, PIECE as usize);
        let out = tmp.path().join(format!("{name}-out"));
        std::thread::spawn(move || {
            let log = log_of_download_until(
                &torrent,
                &out,
                "rounds of protocol errors",
                Duration::from_secs(30),
                Duration::from_secs(5),
            );
            (name, server.served.requests.load(Ordering::Relaxed), log)
        })
    })
    .collect();
    for check in checks {
        let (name, requests, log) = check.join().unwrap();
        println!("{name}: {requests} requests");
        assert!(
            log.contains("3 rounds of protocol errors, not using it"),
            "{name}: {log}"
        );
        assert_eq!(requests, 3, "{name}: {log}");
    }
}

/// A web seed that refuses us (401, 403) before any run came from it is not used again: it
/// was asked again with the back-off (at 0, 1, 3 s, ...) for as long as the download ran.
#[test]
fn a_web_seed_refusing_us_is_not_asked_again() {
    let tmp = TempDir::new("webseed-refused");
    let checks: Vec<_> = [401u16, 403]
        .into_iter()
        .map(|status| {
            let name = format!("status-{status}");
            let (torrent, server) =
                lone_faulty_web_seed(&tmp, &name, Fault::Status(status), PIECE as usize);
            let out = tmp.path().join(format!("{name}-out"));
            std::thread::spawn(move || {
                let log = log_of_download_until(
                    &torrent,
                    &out,
                    "not using it",
                    Duration::from_secs(20),
                    Duration::from_secs(3),
                );
                (status, server.served.requests.load(Ordering::Relaxed), log)
            })
        })
        .collect();
    for check in checks {
        let (status, requests, log) = check.join().unwrap();
        println!("HTTP {status}: {requests} requests");
        assert!(
            log.contains("before any run came from it; not using it"),
            "{status}: {log}"
        );
        assert_eq!(requests, 1, "{status}: {log}");
    }
    // Once a run came from it, a 403 gives up that file only, as a 404 does.
    let (torrent, server) = lone_faulty_web_seed(
        &tmp,
        "refuses-later",
        Fault::RefusedAfterFirst,
        2 * PIECE as usize,
    );
    let log = log_of_download_until(
        &torrent,
        &tmp.path().join("refuses-later-out"),
        "not asking it for that file again",
        Duration::from_secs(20),
        Duration::from_secs(3),
    );
    let requests = server.served.requests.load(Ordering::Relaxed);
    println!("HTTP 403 after a run: {requests} requests");
    assert!(
        log.contains("HTTP 403; not asking it for that file again"),
        "{log}"
    );
    assert_eq!(requests, 2, "{log}");
}

/// A 503 with `Retry-After: 3` is asked again after 3 s, not at the first back-off step (1 s).
#[test]
fn a_busy_web_seed_is_asked_again_when_it_said() {
    let tmp = TempDir::new("webseed-busy");
    let fault = Fault::Busy {
        first: 1,
        seconds: 3,
    };
    let (torrent, server) = lone_faulty_web_seed(&tmp, "busy", fault, PIECE as usize);
    let started = Instant::now();
    let summary = finish(
        start_download(&torrent, &tmp.path().join("out"), &[]),
        Duration::from_secs(30),
    );
    let elapsed = started.elapsed();
    let requests = server.served.requests.load(Ordering::Relaxed);
    println!("503 with Retry-After 3: {requests} requests, done in {elapsed:.2?}");
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(requests, 2);
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
}

/// A server that sends a run's body a byte a second (each byte restarts the 30 s read
/// timeout) loses the run once it is slower than `MIN_RUN_RATE` (4 KiB/s) past the first
/// 30 s: a 16 KiB piece at 34 s, then the back-off (1 s); the next request is served whole.
/// The download waited for the trickle to end (16,384 s).
#[test]
fn a_web_seed_trickling_a_run_loses_it_at_the_deadline() {
    let tmp = TempDir::new("webseed-trickle");
    let (torrent, server) = lone_faulty_web_seed(&tmp, "trickle", Fault::TrickleFirst, 16 * 1024);
    let started = Instant::now();
    let summary = finish(
        start_download(&torrent, &tmp.path().join("out"), &[]),
        Duration::from_secs(70),
    );
    let elapsed = started.elapsed();
    let requests = server.served.requests.load(Ordering::Relaxed);
    println!("a trickling web seed: {requests} requests, done in {elapsed:.2?}");
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(requests, 2);
    assert!(elapsed >= Duration::from_secs(34), "{elapsed:?}");
}

/// (e) The same two layouts as (a) and (b) from a real web server: nginx answers each `Range:`
/// request with 206 itself, so the web seed client is checked against someone else's HTTP.
#[test]
fn single_and_multi_file_from_nginx_alone() {
    let tmp = TempDir::new("webseed-nginx");
    let www = tmp.path().join("www");
    let nginx_dir = tmp.path().join("nginx");
    std::fs::create_dir_all(www.join("mirror")).unwrap();
    let single = bytes(2 * 1024 * 1024 + 777, 21);
    std::fs::write(tmp.path().join("payload.bin"), &single).unwrap();
    std::fs::write(www.join("mirror/copy of payload.bin"), &single).unwrap();
    let content = tmp.path().join("src/my set");
    let files: &[(&str, usize)] = &[
        ("a.bin", 100_000),
        ("sub dir/b%c.bin", 1_500_000),
        ("sub dir/tiny.txt", 10),
        ("z.bin", 40_000),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        for root in [content.clone(), www.join("pub/my set")] {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes(*len, 30 + i as u64)).unwrap();
        }
    }
    let nginx = Nginx::start(&nginx_dir, &www);

    let torrent = tmp.path().join("single.torrent");
    create_torrent(
        &tmp.path().join("payload.bin"),
        &torrent,
        &nginx.url("/mirror/copy%20of%20payload.bin"),
    );
    let out = tmp.path().join("out-single");
    let summary = finish(start_download(&torrent, &out, &[]), Duration::from_secs(60));
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(
        summary["web_seed_bytes"].as_u64(),
        Some(single.len() as u64)
    );
    assert_eq!(summary["hash_failures"].as_u64(), Some(0));
    assert_eq!(std::fs::read(out.join("payload.bin")).unwrap(), single);
    let (partial_single, _) = nginx.partial_responses();

    let torrent = tmp.path().join("multi.torrent");
    create_torrent(&content, &torrent, &nginx.url("/pub"));
    let out = tmp.path().join("out-multi");
    let summary = finish(start_download(&torrent, &out, &[]), Duration::from_secs(60));
    assert_eq!(summary["complete"], true, "{summary}");
    let total: u64 = files.iter().map(|(_, l)| *l as u64).sum();
    assert_eq!(summary["web_seed_bytes"].as_u64(), Some(total));
    assert_eq!(summary["hash_failures"].as_u64(), Some(0));
    same_tree(&content, &out.join("my set")).unwrap();
    let (partial, all) = nginx.partial_responses();
    println!(
        "nginx web seed: single file {} B and multi-file {total} B verified; nginx logged {all} requests, {partial} answered 206 ({partial_single} for the single file)",
        single.len()
    );
    assert!(
        partial_single > 0 && partial > partial_single,
        "{partial} of {all}"
    );
}

/// `--max-download-rate 1M` holds for web seeds too: a 4 MiB file from nginx alone takes at
/// least (4 MiB less the 128 KiB first burst) / 1 MiB/s = 3.875 s.
#[test]
fn download_rate_limit_holds_for_a_web_seed() {
    let tmp = TempDir::new("webseed-limit");
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let data = bytes(4 * 1024 * 1024, 5);
    std::fs::write(tmp.path().join("limited.bin"), &data).unwrap();
    std::fs::write(www.join("limited.bin"), &data).unwrap();
    let nginx = Nginx::start(&tmp.path().join("nginx"), &www);
    let torrent = tmp.path().join("limited.torrent");
    create_torrent(
        &tmp.path().join("limited.bin"),
        &torrent,
        &nginx.url("/limited.bin"),
    );
    let out = tmp.path().join("out");
    let child = pow()
        .arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(&out)
        .args(["--port", &free_port().to_string(), "--bind", "127.0.0.1"])
        .args(["--json", "--max-download-rate", "1M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let summary = finish(child, Duration::from_secs(60));
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(std::fs::read(out.join("limited.bin")).unwrap(), data);
    let seconds = summary["seconds"].as_f64().unwrap();
    println!("web seed with --max-download-rate 1M: 4 MiB in {seconds:.2} s");
    assert!(
        seconds >= 3.875,
        "4 MiB in {seconds:.2} s: faster than 1 MiB/s allows"
    );
}

/// A torrent listing 60 web seeds (here all at a closed port): only the first
/// `MAX_WEB_SEEDS` (8) are fetched from, and web seeds take no peer slot. They counted
/// against the 50 peer connections, so such a torrent took every slot: the download dialed
/// no peer and closed every peer that dialed it.
#[test]
fn many_web_seeds_leave_the_peer_slots_to_peers() {
    let tmp = TempDir::new("webseed-many");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), bytes(1024 * 1024, 9)).unwrap();
    let closed = free_port();
    let urls: Vec<String> = (0..60)
        .map(|i| format!("http://127.0.0.1:{closed}/{i}/data.bin"))
        .collect();
    let torrent = tmp.path().join("t.torrent");
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    create_torrent_seeds(&src.join("data.bin"), &torrent, &refs);
    let info_hash = pow_metainfo::Metainfo::from_file(&torrent)
        .unwrap()
        .info_hash
        .0;
    let port = free_port();
    let _download = Killed(
        pow()
            .arg("download")
            .arg(&torrent)
            .arg("-o")
            .arg(tmp.path().join("out"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the download never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The web seeds are registered just after the port opens.
    std::thread::sleep(Duration::from_secs(1));
    let mut peer = common::raw_peer::RawPeer::dial(port, info_hash);
    peer.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut theirs = [0u8; 68];
    let answered = std::io::Read::read_exact(&mut peer.stream, &mut theirs);
    assert!(
        answered.is_ok(),
        "a peer dialing the download was closed: {answered:?}"
    );
    assert_eq!(&theirs[28..48], &info_hash);
}
