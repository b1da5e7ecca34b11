//! uTP (BEP 29) against real clients. libtorrent 2.0 with TCP switched off both ways
//! downloads from a default `pow seed` (libtorrent dials it over uTP) and seeds to a default
//! `pow download` (whose TCP dial libtorrent resets, so pow falls back to uTP); Transmission
//! 3.00 (libutp) with uTP on downloads from and seeds to pow set to `--utp prefer`; and pow
//! to pow; a magnet link's metadata from libtorrent over uTP; uTP and the DHT node on one
//! UDP port. Every transfer's bytes are compared with the payload, and the connection's
//! transport is read from the other client's side where it says (libtorrent's peer flags).

mod common;

use common::transmission::Transmission;
use common::{
    free_port, mib_payload, pow, pow_download_json, pow_seed, same_bytes, Killed, TempDir,
};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A libtorrent session with TCP off (incoming and outgoing), so any peer connection it has
/// is uTP. Seeds (prints `seeding`) or leeches one torrent on 127.0.0.1:PORT, dialing PEER
/// unless it is 0; a leecher prints `done KINDS SECONDS` (KINDS from its peer flags: utp,
/// tcp) and exits 0. `utp_socket` is bit 17 of libtorrent's peer_info flags (peer_info.hpp);
/// the Python binding does not name it.
const LT_UTP_ONLY: &str = "import libtorrent as lt, sys, time
mode, torrent, path, port, peer = sys.argv[1:6]
s = {'listen_interfaces': '127.0.0.1:' + port, 'enable_dht': False, 'enable_lsd': False,
     'enable_upnp': False, 'enable_natpmp': False, 'enable_incoming_tcp': False,
     'enable_outgoing_tcp': False, 'enable_incoming_utp': True, 'enable_outgoing_utp': True,
     'allow_multiple_connections_per_ip': True}
ses = lt.session(s)
atp = lt.add_torrent_params(); atp.ti = lt.torrent_info(torrent); atp.save_path = path
h = ses.add_torrent(atp)
if peer != '0':
    h.connect_peer(('127.0.0.1', int(peer)))
seen, ready, t0 = set(), False, time.time()
while time.time() - t0 < 60:
    for p in h.get_peer_info():
        if p.flags & (lt.peer_info.connecting | lt.peer_info.handshake):
            continue
        seen.add('utp' if int(p.flags) & (1 << 17) else 'tcp')
    st = h.status()
    if mode == 'seed' and st.is_seeding and not ready:
        print('seeding', flush=True); ready = True
    if mode == 'leech' and st.is_seeding:
        print('done', ','.join(sorted(seen)), round(time.time() - t0, 2), flush=True); sys.exit(0)
    time.sleep(0.05)
print('timed out; peers seen:', ','.join(sorted(seen)), flush=True)
sys.exit(1)
";

fn libtorrent_utp_only(mode: &str, torrent: &Path, dir: &Path, port: u16, peer: u16) -> Killed {
    Killed(
        Command::new("/usr/bin/python3")
            .args(["-c", LT_UTP_ONLY, mode])
            .arg(torrent)
            .arg(dir)
            .args([port.to_string(), peer.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3-libtorrent (scripts/install-deps --tests)"),
    )
}

/// The process's whole stdout once it exits; it must exit 0.
fn output_of(mut child: Killed, what: &str) -> String {
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{what}: {out}");
    out.trim().to_string()
}

fn utp_connections(report: &serde_json::Value) -> u64 {
    report["connections"]["utp"].as_u64().unwrap()
}

/// Stops a `pow seed` with SIGINT, as a user's Ctrl-C, and returns its stderr (which ends
/// with the connection counts).
fn stop_seed(seed: Killed, stderr_file: &Path) -> String {
    let pid = seed.0.id().to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    let mut seed = seed;
    let deadline = Instant::now() + Duration::from_secs(10);
    while seed.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "pow seed did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(stderr_file).unwrap()
}

/// `pow download --utp prefer` of `torrent` (one file, "blob") from the seed on `port` into
/// `out`: its --json report and the number of bytes that match `data`.
fn download_preferring_utp(
    torrent: &Path,
    port: u16,
    out: &Path,
    data: &Path,
) -> (serde_json::Value, u64) {
    let report = pow_download_json(
        torrent.to_str().unwrap(),
        out,
        &["--peer", &format!("127.0.0.1:{port}"), "--utp", "prefer"],
    );
    let bytes = same_bytes(data, &out.join("blob")).unwrap();
    (report, bytes)
}

/// "connections: ... N over uTP" from a stopped seed's stderr.
fn seed_utp_count(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .rfind(|l| l.starts_with("connections:"))
        .unwrap_or_else(|| panic!("no connections line in: {stderr}"));
    let before = line.trim_end_matches(" over uTP");
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn libtorrent_over_utp_alone_downloads_from_pow_and_seeds_to_it() {
    let tmp = TempDir::new("utp-libtorrent");
    let (data, torrent) = mib_payload(tmp.path(), "blob", 16, None);
    let data_dir = data.parent().unwrap();

    // libtorrent dials a default pow seed: uTP is all it has.
    let pow_port = free_port();
    let stderr_file = tmp.path().join("seed.err");
    let seed = pow_seed(
        &torrent,
        data_dir,
        pow_port,
        &[],
        std::fs::File::create(&stderr_file).unwrap().into(),
    );
    let out = tmp.path().join("lt-from-pow");
    let leecher = libtorrent_utp_only("leech", &torrent, &out, free_port(), pow_port);
    let result = output_of(leecher, "libtorrent leecher");
    let bytes = same_bytes(&data, &out.join("blob")).unwrap();
    let stderr = stop_seed(seed, &stderr_file);
    println!("  pow seed -> libtorrent (uTP only): {bytes} bytes verified; libtorrent says `{result}`; pow seed: {} connection(s) over uTP", seed_utp_count(&stderr));
    assert!(result.starts_with("done utp "), "{result}");
    assert!(seed_utp_count(&stderr) >= 1, "{stderr}");

    // libtorrent seeds; a default pow download dials TCP first, is reset, and goes over uTP.
    let lt_port = free_port();
    let mut seeder = libtorrent_utp_only("seed", &torrent, data_dir, lt_port, 0);
    let mut line = [0u8; 8];
    seeder
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"seeding\n");
    let out = tmp.path().join("pow-from-lt");
    let started = Instant::now();
    let report = pow_download_json(
        torrent.to_str().unwrap(),
        &out,
        &["--peer", &format!("127.0.0.1:{lt_port}")],
    );
    let bytes = same_bytes(&data, &out.join("blob")).unwrap();
    println!(
        "  libtorrent (uTP only) -> pow download (defaults): {bytes} bytes verified in {:.2} s, {} MiB/s; connections {}",
        started.elapsed().as_secs_f64(),
        report["mib_per_s"],
        report["connections"]
    );
    assert!(utp_connections(&report) >= 1, "{report}");

    // A magnet link naming only that libtorrent: the metadata comes over uTP too. With a DHT
    // node (bootstrapped from a socket that never answers), which starts before the session
    // and shares the peer port's UDP socket with it: the session still dials over uTP.
    let magnet = pow()
        .args(["torrent", "magnet"])
        .arg(&torrent)
        .output()
        .unwrap();
    assert!(magnet.status.success(), "{}", common::text(&magnet.stderr));
    let link = format!(
        "{}&x.pe=127.0.0.1:{lt_port}",
        common::text(&magnet.stdout).trim()
    );
    let out = tmp.path().join("pow-from-lt-magnet");
    let silent_node = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = silent_node.local_addr().unwrap().to_string();
    let report = pow_download_json(&link, &out, &["--dht-bootstrap", &silent]);
    let bytes = same_bytes(&data, &out.join("blob")).unwrap();
    println!(
        "  libtorrent (uTP only) -> pow download MAGNET (defaults, a DHT node): metadata in {} s, {bytes} bytes verified; connections {}",
        report["metadata_seconds"], report["connections"]
    );
    assert!(utp_connections(&report) >= 1, "{report}");
}

/// uTP and the DHT node share the peer port's UDP number, as in libtorrent and Transmission:
/// a pow seed running a node answers a DHT ping there and a uTP download from the same port.
#[test]
fn utp_and_the_dht_node_share_the_peer_port() {
    use pow_dht::krpc::{Body, Message, Query};
    let tmp = TempDir::new("utp-dht");
    let (data, torrent) = mib_payload(tmp.path(), "blob", 4, None);
    let data_dir = data.parent().unwrap();
    let silent_node = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = silent_node.local_addr().unwrap().to_string();
    let port = free_port();
    let stderr_file = tmp.path().join("seed.err");
    let seed = pow_seed(
        &torrent,
        data_dir,
        port,
        &["--dht-bootstrap", &silent],
        std::fs::File::create(&stderr_file).unwrap().into(),
    );
    let node = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    node.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let ping = Message {
        tid: b"pw".to_vec(),
        body: Body::Query {
            id: [7u8; 20],
            query: Query::Ping,
        },
    };
    // The seed may still be binding its UDP socket: a ping before that is lost, so ping
    // again until it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 1500];
    let (n, from) = loop {
        node.send_to(&ping.encode(), ("127.0.0.1", port)).unwrap();
        match node.recv_from(&mut buf) {
            Ok(got) => break got,
            Err(_) if Instant::now() < deadline => {}
            Err(e) => panic!("no DHT answer on the peer port within 10 s: {e}"),
        }
    };
    let answer = Message::decode(&buf[..n]).unwrap();
    assert_eq!((answer.tid.as_slice(), from.port()), (&b"pw"[..], port));
    assert!(matches!(answer.body, Body::Response(_)), "{answer:?}");

    let (report, bytes) = download_preferring_utp(&torrent, port, &tmp.path().join("out"), &data);
    let stderr = stop_seed(seed, &stderr_file);
    println!(
        "  UDP {port}: a DHT ping answered, and {bytes} bytes over uTP; connections {}",
        report["connections"]
    );
    assert_eq!(utp_connections(&report), 1, "{report}");
    assert!(!stderr.contains("uTP not listening"), "{stderr}");
}

#[test]
fn transmission_over_utp_downloads_from_pow_and_seeds_to_it() {
    let tmp = TempDir::new("utp-transmission");
    let tracker = common::PowTracker::start();
    let (data, torrent) = mib_payload(tmp.path(), "blob", 4, Some(&tracker.url));
    let data_dir = data.parent().unwrap();
    let utp_on = [("utp-enabled", 1)];

    // Transmission 3.00 does not dial 127.0.0.1 peers a tracker names, so pow dials it, over
    // uTP first (--utp prefer).
    let pow_port = free_port();
    let stderr_file = tmp.path().join("seed.err");
    let seed = pow_seed(
        &torrent,
        data_dir,
        pow_port,
        &["--announce-min", "1", "--utp", "prefer"],
        std::fs::File::create(&stderr_file).unwrap().into(),
    );
    let out = tmp.path().join("transmission-from-pow");
    let started = Instant::now();
    let leecher = Transmission::start(tmp.path(), &torrent, &out, false, &utp_on);
    leecher.wait_done(Duration::from_secs(60));
    let bytes = same_bytes(&data, &out.join("blob")).unwrap();
    let took = started.elapsed().as_secs_f64();
    drop(leecher);
    let stderr = stop_seed(seed, &stderr_file);
    println!(
        "  pow seed (--utp prefer) -> Transmission (uTP on): {bytes} bytes verified in {took:.2} s; {} connection(s) over uTP",
        seed_utp_count(&stderr)
    );
    assert!(seed_utp_count(&stderr) >= 1, "{stderr}");

    let seeder = Transmission::start(tmp.path(), &torrent, data_dir, true, &utp_on);
    seeder.wait_done(Duration::from_secs(30));
    let out = tmp.path().join("pow-from-transmission");
    let started = Instant::now();
    // Transmission announces a few seconds after it starts seeding, so the download's first
    // announce may find nobody; it asks again each second (the tracker's min interval).
    let report = pow_download_json(
        torrent.to_str().unwrap(),
        &out,
        &["--utp", "prefer", "--announce-min", "1"],
    );
    let bytes = same_bytes(&data, &out.join("blob")).unwrap();
    println!(
        "  Transmission (uTP on) -> pow download (--utp prefer): {bytes} bytes verified in {:.2} s; connections {}",
        started.elapsed().as_secs_f64(),
        report["connections"]
    );
    assert!(utp_connections(&report) >= 1, "{report}");
}

#[test]
fn pow_to_pow_over_utp_and_off_means_tcp() {
    let tmp = TempDir::new("utp-pow");
    let (data, torrent) = mib_payload(tmp.path(), "blob", 16, None);
    let data_dir = data.parent().unwrap();
    let port = free_port();
    let _seed = pow_seed(&torrent, data_dir, port, &[], Stdio::null());
    let peer = format!("127.0.0.1:{port}");
    for (mode, expect_utp) in [("prefer", 1), ("on", 0), ("off", 0)] {
        let out = tmp.path().join(format!("out-{mode}"));
        let report = pow_download_json(
            torrent.to_str().unwrap(),
            &out,
            &["--peer", &peer, "--utp", mode],
        );
        let bytes = same_bytes(&data, &out.join("blob")).unwrap();
        println!(
            "  pow -> pow, --utp {mode}: {bytes} bytes verified at {:.1} MiB/s; connections {}",
            report["mib_per_s"].as_f64().unwrap(),
            report["connections"]
        );
        assert_eq!(utp_connections(&report), expect_utp, "{report}");
    }
    // A pow seed with uTP off has no UDP socket: a --utp prefer download falls back to TCP.
    let port = free_port();
    let _tcp_only = pow_seed(&torrent, data_dir, port, &["--utp", "off"], Stdio::null());
    let (report, _) =
        download_preferring_utp(&torrent, port, &tmp.path().join("out-fallback"), &data);
    assert_eq!(utp_connections(&report), 0, "{report}");
}

/// Hostile datagrams on a seed's uTP port: garbage, uTP-shaped packets for connections that
/// do not exist (data, acks, FINs, resets) and SYNs never followed up. The seed survives them
/// and a uTP download from it still completes with every byte. The packets are hand-made: no
/// real client sends these.
#[test]
fn hostile_datagrams_on_the_utp_port_are_survived() {
    let tmp = TempDir::new("utp-hostile");
    let (data, torrent) = mib_payload(tmp.path(), "blob", 4, None);
    let data_dir = data.parent().unwrap();
    let port = free_port();
    let mut seed = pow_seed(&torrent, data_dir, port, &[], Stdio::null());
    let attacker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let bytes = common::pseudo_random_bytes(3000 * 64, 77);
    let mut sent = 0;
    for (i, chunk) in bytes.chunks(64).enumerate() {
        let mut datagram = chunk[..(chunk[0] as usize % 64).max(1)].to_vec();
        if i % 3 == 1 && datagram.len() >= 20 {
            // A uTP version 1 header of any type but SYN, for a random connection id.
            datagram[0] = ((datagram[0] % 4) << 4) | 1;
            datagram[1] = 0;
        } else if i % 30 == 2 && datagram.len() >= 20 {
            datagram[0] = 0x41; // a SYN nobody follows up
            datagram[1] = 0;
        }
        attacker.send_to(&datagram, ("127.0.0.1", port)).unwrap();
        sent += 1;
    }
    let (report, bytes) = download_preferring_utp(&torrent, port, &tmp.path().join("out"), &data);
    println!(
        "  {sent} hostile datagrams, then {bytes} bytes verified; connections {}",
        report["connections"]
    );
    assert!(seed.0.try_wait().unwrap().is_none(), "the seed died");
    assert_eq!(utp_connections(&report), 1, "{report}");
}

/// Context switches of every thread of a process so far: each wake-up of an idle thread is one.
fn context_switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// A seed nobody dials sleeps: its uTP socket's timers tick only while it has connections.
/// They ticked every 20 ms for as long as the socket was open, so an idle `pow seed` (or
/// `pow serve` with its datasets) woke about 100 times a second: 600 context switches in 3 s
/// here. After a uTP download from it ends, it sleeps again.
#[test]
fn an_idle_seed_sleeps_between_utp_connections() {
    let tmp = TempDir::new("utp-idle");
    let (data, torrent) = mib_payload(tmp.path(), "blob", 4, None);
    let port = free_port();
    let seed = pow_seed(&torrent, data.parent().unwrap(), port, &[], Stdio::null());
    let pid = seed.0.id();
    let wakeups_in_3s = || {
        let before = context_switches(pid);
        std::thread::sleep(Duration::from_secs(3));
        context_switches(pid) - before
    };
    std::thread::sleep(Duration::from_secs(1));
    let idle = wakeups_in_3s();
    println!("idle seed: {idle} context switches in 3 s");
    assert!(idle < 100, "an idle seed woke {idle} times in 3 s");

    let out = tmp.path().join("out");
    let report = pow_download_json(
        torrent.to_str().unwrap(),
        &out,
        &["--peer", &format!("127.0.0.1:{port}"), "--utp", "prefer"],
    );
    same_bytes(&data, &out.join("blob")).unwrap();
    assert_eq!(utp_connections(&report), 1, "{report}");
    // The closed connection leaves the socket's table within a few seconds (its FIN answered,
    // or the linger time at most).
    let deadline = Instant::now() + Duration::from_secs(45);
    let after = loop {
        let after = wakeups_in_3s();
        if after < 100 || Instant::now() > deadline {
            break after;
        }
    };
    println!("after a uTP download: {after} context switches in 3 s");
    assert!(
        after < 100,
        "the seed kept waking after its uTP connection: {after} in 3 s"
    );
}
