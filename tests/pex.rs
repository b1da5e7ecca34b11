//! Peer exchange (BEP 11). A pow seed tells each peer of the others it is connected to (by
//! their listening address), then of the ones that left; it dials the peers a peer names, at
//! most 50 from one message and three messages a minute; a private torrent does none of it.
//! Against libtorrent in both directions: two libtorrent leechers that know only a pow seed
//! find each other through it, and a pow leecher that knows only a libtorrent peer downloads
//! from a libtorrent seed that peer told it of; a libtorrent peer on uTP is exchanged with
//! the uTP flag. The listening address a connected peer names is not dialed while it stays.

mod common;

use common::raw_peer::{RawPeer, EXTENSION_BIT};
use common::{free_port, pow, same_bytes, text, Killed, TempDir};
use pow_wire::extension::ExtHandshake;
use pow_wire::pex::{PexMessage, OUR_UT_PEX};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The id our raw peers take `ut_pex` messages as.
const THEIR_UT_PEX: u8 = 7;

/// A 1 MiB file and its torrent (no tracker; `--private` if asked).
fn payload(work: &Path, private: bool) -> (PathBuf, PathBuf, [u8; 20]) {
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let content: Vec<u8> = (0..1_048_576u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(data.join("pex.bin"), &content).unwrap();
    let torrent = work.join("pex.torrent");
    let mut create = pow();
    create
        .args(["torrent", "create"])
        .arg(data.join("pex.bin"))
        .arg("-o")
        .arg(&torrent)
        .args(["--piece-length", "65536"]);
    if private {
        create.arg("--private");
    }
    assert!(create.output().unwrap().status.success());
    let info_hash = pow_metainfo::Metainfo::from_file(&torrent)
        .unwrap()
        .info_hash
        .0;
    (data, torrent, info_hash)
}

/// `pow seed` on a free port, once it listens; stderr kept for [`stop`].
fn seed(torrent: &Path, data: &Path, extra: &[&str]) -> (Killed, u16) {
    let port = free_port();
    let seed = common::pow_seed(torrent, data, port, extra, Stdio::piped());
    (seed, port)
}

/// A raw peer that speaks BEP 10, says it listens on `listen_port` and takes `ut_pex`; returns
/// it with pow's extension handshake.
fn pex_peer(port: u16, info_hash: [u8; 20], listen_port: u16) -> (RawPeer, ExtHandshake) {
    let (mut peer, reserved) = RawPeer::connect_reserved(port, info_hash, EXTENSION_BIT);
    assert_eq!(reserved[5] & 0x10, 0x10, "pow sets the extension bit");
    let ours = format!("d1:md6:ut_pexi{THEIR_UT_PEX}ee1:pi{listen_port}ee");
    peer.send_extended(0, ours.as_bytes()).unwrap();
    let theirs = peer.next_extended(0, Duration::from_secs(10)).unwrap();
    (peer, ExtHandshake::decode(&theirs).unwrap())
}

fn next_pex(peer: &mut RawPeer, timeout: Duration) -> PexMessage {
    let body = peer
        .next_extended(THEIR_UT_PEX, timeout)
        .expect("a peer-exchange message from pow");
    PexMessage::decode(&body).unwrap()
}

fn pex_naming(addrs: &[SocketAddr]) -> Vec<u8> {
    let mut added = Vec::new();
    for addr in addrs {
        let SocketAddr::V4(v4) = addr else {
            unreachable!()
        };
        added.extend_from_slice(&v4.ip().octets());
        added.extend_from_slice(&v4.port().to_be_bytes());
    }
    let mut body = format!("d5:added{}:", added.len()).into_bytes();
    body.extend_from_slice(&added);
    body.extend_from_slice(format!("7:added.f{}:", addrs.len()).as_bytes());
    body.extend(std::iter::repeat_n(0u8, addrs.len()));
    body.push(b'e');
    body
}

fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn dialed_within(listener: &TcpListener, limit: Duration) -> bool {
    common::raw_peer::accept_within(listener, limit).is_some()
}

/// Stops a `pow seed` as Ctrl-C would; returns what it wrote to stderr.
fn stop(mut seed: Killed) -> String {
    let pid = seed.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let mut stderr = String::new();
    let mut pipe = seed.0.stderr.take().unwrap();
    std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
    seed.0.wait().unwrap();
    stderr
}

#[test]
fn a_pow_seed_tells_peers_of_each_other_and_dials_the_peers_they_name() {
    let work = TempDir::new("pex-seed");
    let (data, torrent, info_hash) = payload(work.path(), false);
    let (seed, port) = seed(&torrent, &data, &["--pex-interval", "2"]);

    let (l1, a1) = listener();
    let (l2, a2) = listener();
    let (mut r1, ours) = pex_peer(port, info_hash, a1.port());
    assert_eq!(ours.ut_pex, Some(OUR_UT_PEX), "pow's handshake: {ours:?}");
    assert_eq!(ours.listen_port, Some(port));
    let (mut r2, _) = pex_peer(port, info_hash, a2.port());

    // Each hears of the other at the listening port it named, within a tick or two.
    let to_r1 = next_pex(&mut r1, Duration::from_secs(5));
    // r1's messages are paced by its own connection's tick: timed from its first message, not
    // r2's (which may come up to a tick later).
    let told_at = Instant::now();
    let to_r2 = next_pex(&mut r2, Duration::from_secs(5));
    println!("pow -> r1: {to_r1:?}\npow -> r2: {to_r2:?}");
    assert_eq!(to_r1.added, vec![(a2, 0)]);
    assert_eq!(to_r2.added, vec![(a1, 0)]);

    // r2 leaves: r1 is told, no sooner than the interval after the first message.
    drop(r2);
    let gone = next_pex(&mut r1, Duration::from_secs(10));
    let gap = told_at.elapsed();
    println!(
        "pow -> r1 after r2 left ({:.1} s later): {gone:?}",
        gap.as_secs_f64()
    );
    assert_eq!((gone.added, gone.dropped), (vec![], vec![a2]));
    assert!(gap >= Duration::from_millis(1800), "{gap:?}");

    // r1 names 400 peers: pow takes the first 50, and dials them (the first is ours).
    let (l3, a3) = listener();
    let mut named = vec![a3];
    named.extend((1..400u16).map(|p| SocketAddr::from(([127, 0, 0, 1], p))));
    r1.send_extended(OUR_UT_PEX, &pex_naming(&named)).unwrap();
    assert!(
        dialed_within(&l3, Duration::from_secs(10)),
        "pow did not dial the named peer"
    );
    // Two more messages in the same minute are read; a fourth is ignored, and is no offence.
    let (l4, a4) = listener();
    let (l5, a5) = listener();
    let (l6, a6) = listener();
    for addr in [a4, a5, a6] {
        r1.send_extended(OUR_UT_PEX, &pex_naming(&[addr])).unwrap();
    }
    assert!(dialed_within(&l4, Duration::from_secs(10)));
    assert!(dialed_within(&l5, Duration::from_secs(10)));
    assert!(
        !dialed_within(&l6, Duration::from_secs(5)),
        "a fourth message in a minute was read"
    );
    assert_eq!(
        r1.closed_within(Duration::from_secs(1)),
        None,
        "pow dropped r1"
    );
    drop((l1, l2));

    let stderr = stop(seed);
    println!("{stderr}");
    assert!(
        stderr.contains("peer exchange: 3 messages sent, 3 received (52 new peers)"),
        "{stderr}"
    );
}

#[test]
fn a_private_torrent_or_no_pex_has_no_peer_exchange() {
    let work = TempDir::new("pex-private");
    let (data, torrent, info_hash) = payload(work.path(), true);
    let (seed, port) = seed(&torrent, &data, &["--pex-interval", "1"]);
    let (l1, a1) = listener();
    let (mut r1, ours) = pex_peer(port, info_hash, a1.port());
    assert_eq!(
        ours.ut_pex, None,
        "pow offered ut_pex for a private torrent: {ours:?}"
    );
    let (_r2, _) = pex_peer(port, info_hash, free_port());
    let (l3, a3) = listener();
    r1.send_extended(OUR_UT_PEX, &pex_naming(&[a3])).unwrap();
    assert!(
        !dialed_within(&l3, Duration::from_secs(5)),
        "pow dialed a peer named by PEX"
    );
    assert_eq!(
        r1.next_extended(THEIR_UT_PEX, Duration::from_secs(3)).err(),
        Some(common::raw_peer::End::Quiet),
        "pow sent a peer exchange for a private torrent"
    );
    drop(l1);
    let stderr = stop(seed);
    assert!(!stderr.contains("peer exchange:"), "{stderr}");

    // A public torrent seeded with --no-pex: no ut_pex offered either.
    let public = TempDir::new("pex-off");
    let (data, torrent, info_hash) = payload(public.path(), false);
    let (seed, port) = self::seed(&torrent, &data, &["--no-pex"]);
    let (_r, ours) = pex_peer(port, info_hash, free_port());
    assert_eq!(ours.ut_pex, None, "--no-pex: {ours:?}");
    stop(seed);
}

#[test]
fn a_connected_peers_listening_address_is_dialed_only_once_it_leaves() {
    let work = TempDir::new("pex-listening");
    let (data, torrent, info_hash) = payload(work.path(), false);
    let (seed, port) = seed(&torrent, &data, &["--pex-interval", "1"]);
    // r1 dialed pow and listens at `a1`; r2 names `a1`. Dialing it would only reach r1 again
    // (a second connection, closed at the handshake), every 10 s while r1 stays.
    let (l1, a1) = listener();
    let (r1, _) = pex_peer(port, info_hash, a1.port());
    let (mut r2, _) = pex_peer(port, info_hash, free_port());
    // pow's own exchange names `a1` to r2 once it has read r1's extension handshake: only
    // then is r2's naming it a test of the rule (before, on a loaded machine, r2's message
    // could be read first, and pow dialed an address it did not yet know as r1's).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !next_pex(&mut r2, Duration::from_secs(10))
        .added
        .iter()
        .any(|(addr, _)| *addr == a1)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pow never named r1's address"
        );
    }
    r2.send_extended(OUR_UT_PEX, &pex_naming(&[a1])).unwrap();
    assert!(
        !dialed_within(&l1, Duration::from_secs(8)),
        "pow dialed the listening address of a peer it is connected to"
    );
    drop(r1);
    assert!(
        dialed_within(&l1, Duration::from_secs(10)),
        "pow did not dial the address once its peer left"
    );
    stop(seed);
}

/// Two libtorrent sessions (no DHT, LSD, uTP): `python3 - ARGS` runs `script` with them.
const LT_SESSIONS: &str = "import libtorrent as lt, sys, time
def session(port, **extra):
    settings = {'listen_interfaces': '127.0.0.1:%d' % port, 'enable_dht': False,
        'enable_lsd': False, 'enable_upnp': False, 'enable_natpmp': False,
        'enable_incoming_utp': False, 'enable_outgoing_utp': False,
        'allow_multiple_connections_per_ip': True}
    settings.update(extra)
    return lt.session(settings)
";

fn python(script: &str, args: &[String]) -> Child {
    Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!("{LT_SESSIONS}{script}"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn libtorrent_leechers_find_each_other_through_a_pow_seed() {
    let work = TempDir::new("pex-lt-leech");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::make_zip(&data.join("set.zip"), 16, 11);
    let torrent = work.path().join("set.torrent");
    common::create_torrent(&data.join("set.zip"), &torrent, 262_144);
    // Slow, so the leechers are still leechers (two seeds would part) when PEX arrives.
    let (seed, port) = seed(&torrent, &data, &["--max-upload-rate", "256K"]);
    let script = "torrent, out, pow_port, p1, p2 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
handles = []
for i, p in enumerate([p1, p2]):
    s = session(p)
    h = s.add_torrent({'ti': lt.torrent_info(torrent), 'save_path': '%s/%d' % (out, i)})
    h.connect_peer(('127.0.0.1', pow_port))
    handles.append((s, h, p))
t0 = time.time()
while time.time() - t0 < 60:
    for (s, h, p) in handles:
        for peer in h.get_peer_info():
            # Once the two have met they exchange peers too, and pow's own address gains
            # the pex flag (libtorrent keeps every source that named a peer): not the sign.
            if peer.source & lt.peer_info.pex and peer.ip[1] != pow_port:
                print('session on %d: peer %s:%d from pex after %.1f s' % (p, peer.ip[0], peer.ip[1], time.time() - t0))
                sys.exit(0)
    time.sleep(0.2)
print('no peer from pex in 60 s')
sys.exit(1)
";
    let (p1, p2) = (free_port(), free_port());
    let leechers = python(
        script,
        &[
            torrent.display().to_string(),
            work.path().join("out").display().to_string(),
            port.to_string(),
            p1.to_string(),
            p2.to_string(),
        ],
    );
    let out = leechers.wait_with_output().unwrap();
    let stderr = stop(seed);
    println!("{}{}", text(&out.stdout), stderr);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let line = text(&out.stdout);
    assert!(
        line.contains(&format!(":{p1} from pex")) || line.contains(&format!(":{p2} from pex")),
        "{line}"
    );
    assert!(stderr.contains("peer exchange: "), "{stderr}");
}

#[test]
fn a_pow_leecher_downloads_from_a_seed_a_libtorrent_peer_names() {
    let work = TempDir::new("pex-lt-seed");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::make_zip(&data.join("set.zip"), 16, 12);
    let torrent = work.path().join("set.torrent");
    common::create_torrent(&data.join("set.zip"), &torrent, 262_144);
    // x seeds; s downloads from x, slowly, so it stays a leecher connected to x. pow is told
    // of s only.
    let script = "torrent, data, out, xp, sp = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
x = session(xp)
hx = x.add_torrent({'ti': lt.torrent_info(torrent), 'save_path': data})
s = session(sp, download_rate_limit=131072)
# Loopback peers are in libtorrent's unlimited local class unless put in the global one.
everyone = lt.ip_filter()
everyone.add_rule('0.0.0.0', '255.255.255.255', 1 << lt.session.global_peer_class_id)
s.set_peer_class_filter(everyone)
hs = s.add_torrent({'ti': lt.torrent_info(torrent), 'save_path': out})
t0 = time.time()
while hx.status().state != lt.torrent_status.seeding:
    if time.time() - t0 > 30: sys.exit('x did not seed')
    time.sleep(0.1)
hs.connect_peer(('127.0.0.1', xp))
print('ready', flush=True)
time.sleep(120)
";
    let (xp, sp) = (free_port(), free_port());
    let mut lt = Killed(python(
        script,
        &[
            torrent.display().to_string(),
            data.display().to_string(),
            work.path().join("s").display().to_string(),
            xp.to_string(),
            sp.to_string(),
        ],
    ));
    assert_eq!(common::first_stdout_line(&mut lt.0).trim(), "ready");
    let out = work.path().join("pow");
    let started = Instant::now();
    let report = common::pow_download_json(
        torrent.to_str().unwrap(),
        &out,
        &["--peer", &format!("127.0.0.1:{sp}")],
    );
    let bytes = same_bytes(&data.join("set.zip"), &out.join("set.zip")).unwrap();
    // From the seed pow dialed, or from a connection the seed made to pow (s tells it of pow
    // too): either way a peer pow was never given.
    let from_x: u64 = report["received_by_peer"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["peer"] != format!("127.0.0.1:{sp}"))
        .map(|p| p["bytes"].as_u64().unwrap())
        .sum();
    println!(
        "pow told of the libtorrent leecher only: {bytes} bytes verified in {:.1} s, {from_x} \
         from the seed it named (port {xp}); pex received {}, peers from pex {}; by peer {}",
        started.elapsed().as_secs_f64(),
        report["pex_received"],
        report["peers_from_pex"],
        report["received_by_peer"]
    );
    assert!(report["peers_from_pex"].as_u64().unwrap() >= 1, "{report}");
    assert!(from_x > 0, "{report}");
}

/// A peer connected over uTP is told to others with BEP 11's uTP flag (`added.f` 0x04), so
/// that they dial it over uTP (libtorrent reads the flag).
#[test]
fn a_peer_on_utp_is_exchanged_with_the_utp_flag() {
    let work = TempDir::new("pex-utp");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::make_zip(&data.join("set.zip"), 16, 13);
    let torrent = work.path().join("set.torrent");
    common::create_torrent(&data.join("set.zip"), &torrent, 262_144);
    let info_hash = pow_metainfo::Metainfo::from_file(&torrent)
        .unwrap()
        .info_hash
        .0;
    // Slow, so that the libtorrent leecher is still connected when the exchange happens.
    let (seed, port) = seed(
        &torrent,
        &data,
        &["--max-upload-rate", "256K", "--pex-interval", "1"],
    );
    let script =
        "torrent, out, pow_port, p = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = session(p, enable_incoming_tcp=False, enable_outgoing_tcp=False,
            enable_incoming_utp=True, enable_outgoing_utp=True)
h = s.add_torrent({'ti': lt.torrent_info(torrent), 'save_path': out})
h.connect_peer(('127.0.0.1', pow_port))
time.sleep(60)
";
    let lt_port = free_port();
    let _leecher = Killed(python(
        script,
        &[
            torrent.display().to_string(),
            work.path().join("out").display().to_string(),
            port.to_string(),
            lt_port.to_string(),
        ],
    ));
    let (mut raw, _) = pex_peer(port, info_hash, free_port());
    let lt_addr = SocketAddr::from(([127, 0, 0, 1], lt_port));
    let deadline = Instant::now() + Duration::from_secs(20);
    let flags = loop {
        assert!(
            Instant::now() < deadline,
            "pow never named the libtorrent peer"
        );
        let message = next_pex(&mut raw, Duration::from_secs(20));
        if let Some((_, f)) = message.added.iter().find(|(a, _)| *a == lt_addr) {
            break *f;
        }
    };
    let stderr = stop(seed);
    println!("pow named libtorrent's {lt_addr} with flags {flags:#04x}");
    assert_eq!(
        flags & pow_wire::pex::flags::UTP,
        pow_wire::pex::flags::UTP,
        "{stderr}"
    );
    assert!(!stderr.contains("; 0 over uTP"), "{stderr}");
}
