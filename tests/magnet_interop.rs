//! Magnet links with real clients (issue #11, acceptance 1): `pow download MAGNET` fetches the
//! metadata (BEP 9 over BEP 10) and then the content from each real seeder, over the connection
//! the metadata came over; libtorrent and aria2 fetch the metadata and content from a `pow seed`
//! given only the magnet link.

mod common;

use common::{pow, pow_bin, same_bytes, Lab};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// swarm-lab's `ext` ports, used by pow on either side here.
const POW_LEECH_PORT: &str = "51205";
const POW_SEED_PORT: u16 = 51105;

fn magnet_of(torrent: &Path) -> String {
    let out = pow()
        .args(["torrent", "magnet"])
        .arg(torrent)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs `command` to completion within `limit`; returns whether it succeeded.
fn run_within(command: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            return (status.success(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            return (
                false,
                format!("timed out; {}", String::from_utf8_lossy(&output.stderr)),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn magnet_downloads_from_real_seeders_and_real_clients_fetch_metadata_from_pow() {
    let lab = Lab::new("magnet");
    let (data, torrent) = lab.payload("64M", &[]);
    let link = magnet_of(&torrent);
    let data_dir = data.parent().unwrap();
    println!("magnet link: {link}");
    let seeders: Vec<&str> = common::real_clients()
        .into_iter()
        .filter(|c| ["libtorrent", "aria2", "transmission", "rqbit"].contains(c))
        .collect();

    for seeder in &seeders {
        // swarm-lab's seed ports: aria2 51101, transmission 51102, libtorrent 51103, rqbit 51104.
        let port = 51101
            + ["aria2", "transmission", "libtorrent", "rqbit"]
                .iter()
                .position(|c| c == seeder)
                .unwrap();
        let (ok, _, err) = lab.script(
            "seed.sh",
            &[
                seeder,
                torrent.to_str().unwrap(),
                data_dir.to_str().unwrap(),
                "--timeout",
                "600",
            ],
        );
        assert!(ok, "seed.sh {seeder}: {err}");
        let out = lab.work.path().join(format!("magnet-from-{seeder}"));
        let started = Instant::now();
        let (ok, text) = run_within(
            Command::new(pow_bin())
                .args(["download", &link, "-o"])
                .arg(&out)
                .args(["--port", POW_LEECH_PORT, "--bind", "127.0.0.1", "--json"])
                .args(["--metadata-timeout", "60"])
                .env("POW_LOG", "debug"),
            Duration::from_secs(180),
        );
        lab.script("seed.sh", &["stop", seeder]);
        assert!(ok, "pow download of the magnet link from {seeder}: {text}");
        let bytes = same_bytes(&data, &out.join(data.file_name().unwrap()))
            .unwrap_or_else(|e| panic!("{seeder}: {e}"));
        // The session went on with the metadata's connection: it dialed the seed no more.
        // Transmission closed a second connection from the same address at once and let the
        // third through 12 s later, which made a 64 MiB download take 33 s.
        common::assert_metadata_connection_kept(&text, &format!("127.0.0.1:{port}"), seeder);
        println!(
            "{seeder:>12} -> pow  magnet: metadata + {bytes} bytes verified in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }

    // pow seeds; the real clients get only the magnet link.
    let mut seed = Command::new(pow_bin())
        .args(["seed"])
        .arg(&torrent)
        .arg("--data")
        .arg(data_dir)
        .args(["--port", &POW_SEED_PORT.to_string(), "--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", POW_SEED_PORT)).is_err() {
        assert!(Instant::now() < deadline, "pow seed did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = lab.work.path().join("libtorrent-from-pow");
    let started = Instant::now();
    let script = "import libtorrent as lt, sys, time\n\
        uri, out, peer = sys.argv[1], sys.argv[2], int(sys.argv[3])\n\
        ses = lt.session({'listen_interfaces': '127.0.0.1:51203', 'enable_dht': False,\n\
          'enable_lsd': False, 'enable_upnp': False, 'enable_natpmp': False,\n\
          'enable_incoming_utp': False, 'enable_outgoing_utp': False,\n\
          'allow_multiple_connections_per_ip': True})\n\
        p = lt.parse_magnet_uri(uri); p.save_path = out\n\
        h = ses.add_torrent(p); h.connect_peer(('127.0.0.1', peer))\n\
        t0 = time.time()\n\
        while time.time() - t0 < 120:\n\
        \x20   s = h.status()\n\
        \x20   if s.has_metadata and s.state in (lt.torrent_status.seeding, lt.torrent_status.finished):\n\
        \x20       sys.exit(0)\n\
        \x20   time.sleep(0.1)\n\
        sys.exit(1)\n";
    let (ok, text) = run_within(
        Command::new("/usr/bin/python3")
            .args(["-c", script, &link])
            .arg(&out)
            .arg(POW_SEED_PORT.to_string()),
        Duration::from_secs(150),
    );
    assert!(ok, "libtorrent magnet download from pow: {text}");
    let bytes = same_bytes(&data, &out.join(data.file_name().unwrap())).unwrap();
    println!(
        "  pow -> libtorrent magnet: metadata + {bytes} bytes verified in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let out = lab.work.path().join("aria2-from-pow");
    let started = Instant::now();
    let (ok, text) = run_within(
        Command::new("aria2c")
            .args(["--seed-time=0", "--enable-dht=false", "--enable-dht6=false"])
            .args([
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--bt-stop-timeout=120",
            ])
            .args([
                "--listen-port=51202",
                "--console-log-level=warn",
                "--summary-interval=0",
            ])
            .args(["--file-allocation=none", "--disable-ipv6=true"])
            .arg("-d")
            .arg(&out)
            .arg(&link),
        Duration::from_secs(150),
    );
    let _ = seed.kill();
    let _ = seed.wait();
    assert!(ok, "aria2 magnet download from pow: {text}");
    let bytes = same_bytes(&data, &out.join(data.file_name().unwrap())).unwrap();
    println!(
        "  pow -> aria2 magnet: metadata + {bytes} bytes verified in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// `--max-download-rate` holds for a magnet link's metadata too, not only for the content
/// after it: 4,000 one-byte files with long names make an info dictionary of about 300 KB,
/// fetched from eight `pow seed`s at 3,000 B/s in no less than (its size less the first burst
/// and the last read) / 3,000 B/s, over a minute. Unlimited, the same takes a fraction of a
/// second. A peer had a minute for the whole dictionary, so this fetch never ended; and all
/// eight asked at once split the limit so that none got a piece in 30 s.
/// The link (its scheme in capitals, which `download` took for a file name) also names our
/// own address, which the metadata phase dialed (the tracker lists it back to us too).
#[test]
fn the_download_rate_limit_holds_for_the_metadata() {
    let work = common::TempDir::new("magnet-rate");
    let data = work.path().join("data");
    let set = data.join("many");
    std::fs::create_dir_all(&set).unwrap();
    for i in 0..4000 {
        let name = format!("a-file-with-a-long-name-so-the-metadata-is-large-{i:05}.dat");
        std::fs::write(set.join(name), [i as u8]).unwrap();
    }
    let torrent = work.path().join("many.torrent");
    let metainfo = common::create_torrent(&set, &torrent, 16384);
    let info_len = metainfo.info_bytes.len() as f64;
    // Eight seeds share the limit if all are asked at once: 375 B/s each, 44 s a piece.
    let mut magnet = magnet_of(&torrent);
    let mut seeds = Vec::new();
    for _ in 0..8 {
        let port = common::free_port();
        seeds.push(common::pow_seed(&torrent, &data, port, &[], Stdio::null()));
        magnet.push_str(&format!("&x.pe=127.0.0.1:{port}"));
    }
    let unlimited = common::pow_download_json(&magnet, &work.path().join("unlimited"), &[]);
    let unlimited = unlimited["metadata_seconds"].as_f64().unwrap();

    let ours = common::free_port();
    let magnet = format!(
        "MAGNET:{}&x.pe=127.0.0.1:{ours}",
        magnet.strip_prefix("magnet:").unwrap()
    );
    let out = common::pow()
        .args(["download", &magnet, "-o"])
        .arg(work.path().join("limited"))
        // Bound to every address, as by default: the session compared a listed address with
        // 0.0.0.0:PORT, never a match.
        .args(["--port", &ours.to_string(), "--bind", "0.0.0.0", "--json"])
        .args(["--max-download-rate", "3000"])
        // Debug: the session's dial of itself ends in a debug line ("connected to ourselves").
        .env("POW_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let limited = report["metadata_seconds"].as_f64().unwrap();
    // The bucket starts full (128 KiB, engine::RateLimit), and the last read (at most 4 KiB,
    // the least a read takes) is paid after it arrived.
    let bound = (info_len - 131072.0 - 4096.0) / 3000.0;
    println!(
        "metadata of {info_len} bytes: {unlimited:.2} s unlimited, {limited:.2} s at 3,000 B/s \
         (bound {bound:.2} s)"
    );
    assert!(
        limited >= bound && bound > 60.0,
        "{limited:.2} s, bound {bound:.2} s"
    );
    let files = std::fs::read_dir(work.path().join("limited").join("many"))
        .unwrap()
        .count();
    assert_eq!(files, 4000);
    let own = format!("127.0.0.1:{ours}:");
    assert!(
        !stderr.lines().any(|l| l.contains(&own)),
        "our own address was dialed: {stderr}"
    );
}

/// An info dictionary of 1.2 MiB (77 metadata pieces) from a `pow seed`, which rejects metadata
/// requests once 1 MiB waits for the reader (Transmission queues 64 and rejects the rest): the
/// leecher keeps 16 asks in flight and gets it. Asking for every piece at once was rejected,
/// and a reject ended the peer, so the magnet download never started.
#[test]
fn metadata_of_more_pieces_than_a_seed_queues_is_fetched() {
    let work = common::TempDir::new("magnet-large-info");
    let data = work.path().join("data");
    let set = data.join("deep");
    // Few files, long paths: a 1.2 MiB dictionary without thousands of open files.
    let mut dir = set.clone();
    for level in 0..7 {
        dir = dir.join(format!("{level}-{}", "level-of-a-deep-dataset-".repeat(10)));
    }
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..640 {
        let name = format!("{i:04}-{}", "a-long-file-name-".repeat(14));
        std::fs::write(dir.join(name), [i as u8; 3]).unwrap();
    }
    let torrent = work.path().join("deep.torrent");
    let metainfo = common::create_torrent(&set, &torrent, 16384);
    let info_len = metainfo.info_bytes.len();
    assert!(info_len > 64 * 16384 + 16384, "{info_len} bytes of info");
    let port = common::free_port();
    let _seed = common::pow_seed(&torrent, &data, port, &[], Stdio::null());
    let magnet = format!("{}&x.pe=127.0.0.1:{port}", magnet_of(&torrent));
    let out = work.path().join("out");
    let report = common::pow_download_json(&magnet, &out, &[]);
    println!(
        "metadata of {info_len} bytes ({} pieces) in {:.2} s, then {} files",
        info_len.div_ceil(16384),
        report["metadata_seconds"].as_f64().unwrap(),
        metainfo.files.len()
    );
    let mut fetched = out.join("deep");
    for level in 0..7 {
        fetched = fetched.join(format!("{level}-{}", "level-of-a-deep-dataset-".repeat(10)));
    }
    assert_eq!(std::fs::read_dir(&fetched).unwrap().count(), 640);
}

/// A rerun of a magnet download uses the dictionary an earlier run kept, with this link's
/// trackers first: the kept file named the earlier run's tracker, now dead, and the rerun, whose
/// link names a live tracker, stalled. The kept trackers still come after them: a bare link
/// rerun after a run given `--tracker` finds its peers there.
#[test]
fn a_rerun_takes_the_trackers_of_its_link_not_of_the_kept_metadata() {
    let work = common::TempDir::new("magnet-rerun");
    let live = common::PowTracker::start();
    let (data, torrent) = common::mib_payload(work.path(), "set.bin", 4, Some(&live.url));
    let _seed = common::pow_seed(
        &torrent,
        data.parent().unwrap(),
        common::free_port(),
        &[],
        Stdio::null(),
    );
    // What a run killed after the metadata leaves: the dictionary, with its link's tracker,
    // since gone.
    let dead = format!("http://127.0.0.1:{}/announce", common::free_port());
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let info_hash = pow_metainfo::Metainfo::from_file(&torrent)
        .unwrap()
        .info_hash;
    let kept = out.join(format!(".{}.pow-metadata.torrent", info_hash.to_hex()));
    let o = pow()
        .args(["torrent", "create"])
        .arg(&data)
        .arg("-o")
        .arg(&kept)
        .args(["--piece-length", "65536", "-t", &dead])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o.stderr));
    let link = magnet_of(&torrent);
    assert!(link.contains("&tr="), "{link}");
    common::pow_download_json(&link, &out, &["--stall-timeout", "20"]);
    let bytes = same_bytes(&data, &out.join("set.bin")).unwrap();
    println!("rerun with a live tracker in its link: {bytes} bytes");
    // And a link naming no tracker, after a run given `--tracker`: the kept one still serves.
    let out = work.path().join("out-bare");
    std::fs::create_dir_all(&out).unwrap();
    let kept = out.join(format!(".{}.pow-metadata.torrent", info_hash.to_hex()));
    std::fs::copy(&torrent, &kept).unwrap();
    let bare = format!("magnet:?xt=urn:btih:{}", info_hash.to_hex());
    common::pow_download_json(&bare, &out, &["--stall-timeout", "20"]);
    let bytes = same_bytes(&data, &out.join("set.bin")).unwrap();
    println!("rerun of a bare link after a run with --tracker: {bytes} bytes");
}

/// A peer that serves a wrong info dictionary for a magnet link (the size it names, other
/// bytes) is asked once: pow does not dial it again, and with nobody else to ask it ends at
/// once, saying why. It was dialed again 10 s later, then 20 s, ... until `--metadata-timeout`.
#[test]
fn a_peer_that_sends_a_wrong_dictionary_is_not_asked_again() {
    use common::raw_peer::{accept_within, handshake, unique_peer_id, RawPeer, EXTENSION_BIT};
    use std::sync::atomic::{AtomicUsize, Ordering};
    const SIZE: usize = 20_000; // two metadata pieces
    let info_hash = [0x5a; 20];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dials = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = dials.clone();
    std::thread::spawn(move || {
        while let Some(stream) = accept_within(&listener, Duration::from_secs(120)) {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut peer = RawPeer { stream };
            peer.read_handshake();
            let ours = handshake(EXTENSION_BIT, info_hash, unique_peer_id());
            std::io::Write::write_all(&mut peer.stream, &ours).unwrap();
            let theirs = peer.next_extended(0, Duration::from_secs(5)).unwrap();
            let theirs = String::from_utf8_lossy(&theirs).into_owned();
            let at = theirs.find("11:ut_metadatai").unwrap() + 15;
            let their_id: u8 = theirs[at..].split('e').next().unwrap().parse().unwrap();
            let hs = format!("d1:md11:ut_metadatai1ee13:metadata_sizei{SIZE}ee");
            peer.send_extended(0, hs.as_bytes()).unwrap();
            while let Ok(ask) = peer.next_extended(1, Duration::from_secs(5)) {
                let ask = String::from_utf8_lossy(&ask).into_owned();
                let piece: usize = ask
                    .split("5:piecei")
                    .nth(1)
                    .unwrap()
                    .split('e')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let len = (SIZE - piece * 16384).min(16384);
                let mut data =
                    format!("d8:msg_typei1e5:piecei{piece}e10:total_sizei{SIZE}ee").into_bytes();
                data.extend(std::iter::repeat_n(b'x', len));
                if peer.send_extended(their_id, &data).is_err() {
                    break;
                }
            }
        }
    });
    let link = format!(
        "magnet:?xt=urn:btih:{}&x.pe=127.0.0.1:{port}",
        hex::encode(info_hash)
    );
    let started = Instant::now();
    let out = common::pow_download(&link, &common::TempDir::new("wrong-dict").path().join("o"))
        .args(["--utp", "off", "--metadata-timeout", "60"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "{:.2} s, {} dial(s): {}",
        took.as_secs_f64(),
        dials.load(Ordering::SeqCst),
        stderr.trim()
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sent metadata whose SHA-1 is not the info-hash"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(9), "{took:?}");
    assert_eq!(dials.load(Ordering::SeqCst), 1);
}

/// Every connection the metadata phase has past its handshakes goes on in the download, not
/// only the one the dictionary came over: three `pow seed`s named by `x.pe` are each dialed
/// once, and each sends content. Closing the others and dialing them again cost a round trip
/// each, and a Transmission seed refuses a quick reconnect for about 10 s.
#[test]
fn every_connection_of_the_metadata_phase_goes_on_in_the_download() {
    let work = common::TempDir::new("magnet-every-connection");
    let (data, torrent) = common::mib_payload(work.path(), "blob", 16, None);
    let ports = [
        common::free_port(),
        common::free_port(),
        common::free_port(),
    ];
    let _seeds: Vec<common::Killed> = ports
        .iter()
        .map(|&port| common::pow_seed(&torrent, data.parent().unwrap(), port, &[], Stdio::null()))
        .collect();
    let mut link = magnet_of(&torrent);
    for port in ports {
        link.push_str(&format!("&x.pe=127.0.0.1:{port}"));
    }
    let out = work.path().join("out");
    let o = common::pow_download(&link, &out)
        .arg("--json")
        .env("POW_LOG", "debug")
        .output()
        .unwrap();
    let log = common::text(&o.stderr);
    assert!(o.status.success(), "pow download: {log}");
    same_bytes(&data, &out.join("blob")).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(common::text(&o.stdout).lines().last().unwrap()).unwrap();
    for port in ports {
        common::assert_metadata_connection_kept(&log, &format!("127.0.0.1:{port}"), "seed");
        let bytes = common::peer_bytes(&report, "received_by_peer", port);
        println!("127.0.0.1:{port}: one connection, {bytes} bytes of content");
    }
}

/// A peer that announces a message longer than any the metadata phase needs (here 1 MiB; the
/// longest is the bitfield of the largest dictionary accepted, 314,573 bytes) is dropped at
/// once, saying so. Up to 8 MiB was read from each of up to 8 peers at once.
#[test]
fn a_peer_that_announces_an_oversized_message_is_dropped_at_once() {
    use common::raw_peer::{accept_within, handshake, unique_peer_id, RawPeer, EXTENSION_BIT};
    let info_hash = [0x6b; 20];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        while let Some(stream) = accept_within(&listener, Duration::from_secs(30)) {
            let mut peer = RawPeer { stream };
            peer.read_handshake();
            let ours = handshake(EXTENSION_BIT, info_hash, unique_peer_id());
            std::io::Write::write_all(&mut peer.stream, &ours).unwrap();
            let _ = peer.next_extended(0, Duration::from_secs(5));
            let oversized = (1u32 << 20) + 1;
            let mut head = oversized.to_be_bytes().to_vec();
            head.push(5);
            let _ = std::io::Write::write_all(&mut peer.stream, &head);
            std::thread::sleep(Duration::from_secs(10));
        }
    });
    let link = format!(
        "magnet:?xt=urn:btih:{}&x.pe=127.0.0.1:{port}",
        hex::encode(info_hash)
    );
    let out = common::pow_download(&link, &common::TempDir::new("oversized").path().join("o"))
        .args(["--utp", "off", "--metadata-timeout", "4"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{}", stderr.trim());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("message of 1048577 bytes"), "{stderr}");
}
