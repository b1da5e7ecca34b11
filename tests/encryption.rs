//! Message stream encryption (MSE/PE) against real clients: libtorrent 2.0 and aria2 set to
//! require RC4 download from `pow seed` and seed to `pow download`, whose default (`allow`)
//! dials in plaintext and again encrypted when the peer closes the plaintext handshake.
//! libtorrent's own default (an encrypted handshake first, plaintext stream preferred) gets an
//! encrypted handshake with a plaintext stream from pow. Refusals (`--encryption require`
//! against a plaintext peer, `off` against an encrypted one) are shown with a hand-made peer:
//! no real client can be told to send exactly one kind of handshake and report the close.

mod common;

use common::transmission::Transmission;
use common::{
    free_port, mib_payload, pow_download_json, pow_seed, same_bytes, Killed, PowTracker, TempDir,
};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A libtorrent session (Debian's python3-libtorrent) that seeds or leeches one torrent on
/// 127.0.0.1:PORT, with its default encryption settings or (`rc4`) RC4 required both ways.
/// Prints `seeding` once it seeds; a leecher prints `done KINDS` (the kinds of connections it
/// had: rc4, encrypted-handshake, plaintext, as libtorrent's peer_info flags say) and exits 0.
/// The leecher is held to 2 MiB/s so that its connection lives through several polls of the
/// peer list: unlimited, a few MiB over loopback can finish between two polls, and the peer
/// (closed once both ends are seeds) is never seen.
const LT_ENCRYPTED: &str = "import libtorrent as lt, sys, time
mode, torrent, path, port, policy, peer = sys.argv[1:7]
s = {'listen_interfaces': '127.0.0.1:' + port, 'enable_dht': False, 'enable_lsd': False,
     'enable_upnp': False, 'enable_natpmp': False, 'enable_incoming_utp': False,
     'enable_outgoing_utp': False, 'allow_multiple_connections_per_ip': True}
if policy == 'rc4':
    s.update({'out_enc_policy': 0, 'in_enc_policy': 0, 'allowed_enc_level': 2, 'prefer_rc4': True})
ses = lt.session(s)
atp = lt.add_torrent_params(); atp.ti = lt.torrent_info(torrent); atp.save_path = path
h = ses.add_torrent(atp)
if mode == 'leech':
    h.set_download_limit(2 << 20)
if peer != '0':
    h.connect_peer(('127.0.0.1', int(peer)))
seen, ready, t0 = set(), False, time.time()
while time.time() - t0 < 60:
    for p in h.get_peer_info():
        if p.flags & (lt.peer_info.connecting | lt.peer_info.handshake):
            continue
        seen.add('rc4' if p.flags & lt.peer_info.rc4_encrypted else
                 'encrypted-handshake' if p.flags & lt.peer_info.plaintext_encrypted else 'plaintext')
    st = h.status()
    if mode == 'seed' and st.is_seeding and not ready:
        print('seeding', flush=True); ready = True
    if mode == 'leech' and st.is_seeding:
        print('done', ','.join(sorted(seen)), flush=True); sys.exit(0)
    time.sleep(0.05)
print('timed out; peers seen:', ','.join(sorted(seen)), flush=True)
sys.exit(1)
";

fn libtorrent(
    mode: &str,
    torrent: &Path,
    dir: &Path,
    port: u16,
    policy: &str,
    peer: u16,
) -> Killed {
    Killed(
        Command::new("/usr/bin/python3")
            .args(["-c", LT_ENCRYPTED, mode])
            .arg(torrent)
            .arg(dir)
            .args([port.to_string(), policy.to_string(), peer.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3-libtorrent (scripts/install-deps --tests)"),
    )
}

/// The libtorrent leecher's last line, once it exits (it fails the test if it did not finish).
fn leecher_result(mut leecher: Killed) -> String {
    let mut out = String::new();
    leecher
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = leecher.0.wait().unwrap();
    assert!(status.success(), "libtorrent leecher: {out}");
    out.trim().to_string()
}

fn connections(report: &serde_json::Value) -> (u64, u64, u64) {
    let c = &report["connections"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{report}"));
    (n("plaintext"), n("encrypted_handshake"), n("rc4"))
}

fn wait_line(child: &mut Killed, expected: &str) {
    let line = common::first_stdout_line(&mut child.0);
    assert_eq!(line.trim(), expected, "first line");
}

#[test]
fn libtorrent_requiring_rc4_downloads_from_pow_and_seeds_to_it() {
    let tmp = TempDir::new("mse-lt-rc4");
    let (data, torrent) = mib_payload(tmp.path(), "blob", 8, None);
    let data_dir = data.parent().unwrap();

    // libtorrent seeds with RC4 required; pow dials it with its defaults.
    let lt_port = free_port();
    let mut seed = libtorrent("seed", &torrent, data_dir, lt_port, "rc4", 0);
    wait_line(&mut seed, "seeding");
    let out = tmp.path().join("pow-from-lt");
    let started = Instant::now();
    let peer = format!("127.0.0.1:{lt_port}");
    let report = pow_download_json(torrent.to_str().unwrap(), &out, &["--peer", &peer]);
    let secs = started.elapsed().as_secs_f64();
    let bytes = same_bytes(&data, &out.join("blob")).unwrap();
    let (plaintext, handshake_only, rc4) = connections(&report);
    println!(
        "  libtorrent (RC4 required) -> pow (default): {bytes} bytes verified in {secs:.2} s; connections: {plaintext} plaintext, {handshake_only} encrypted handshake, {rc4} RC4"
    );
    assert_eq!((plaintext, handshake_only), (0, 0), "{report}");
    assert!(rc4 >= 1, "{report}");
    drop(seed);

    // pow seeds with its defaults; libtorrent with RC4 required dials it.
    let pow_port = free_port();
    let _seed = pow_seed(&torrent, data_dir, pow_port, &[], Stdio::null());
    let lt_out = tmp.path().join("lt-from-pow");
    let started = Instant::now();
    let leecher = libtorrent("leech", &torrent, &lt_out, free_port(), "rc4", pow_port);
    let result = leecher_result(leecher);
    let bytes = same_bytes(&data, &lt_out.join("blob")).unwrap();
    println!(
        "  pow (default) -> libtorrent (RC4 required): {bytes} bytes verified in {:.2} s; libtorrent saw: {result}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(result, "done rc4");
}

#[test]
fn libtorrent_by_default_gets_an_encrypted_handshake_and_a_plaintext_stream() {
    let tmp = TempDir::new("mse-lt-default");
    let (data, torrent) = mib_payload(tmp.path(), "blob", 4, None);
    let data_dir = data.parent().unwrap();
    for (mode, expected) in [
        ("allow", "done encrypted-handshake"),
        // A plaintext-only pow refuses libtorrent's encrypted handshake; it dials again in
        // plaintext.
        ("off", "done plaintext"),
        ("prefer", "done rc4"),
    ] {
        let pow_port = free_port();
        let _seed = pow_seed(
            &torrent,
            data_dir,
            pow_port,
            &["--encryption", mode],
            Stdio::null(),
        );
        let out = tmp.path().join(format!("lt-from-pow-{mode}"));
        let leecher = libtorrent("leech", &torrent, &out, free_port(), "default", pow_port);
        let result = leecher_result(leecher);
        same_bytes(&data, &out.join("blob")).unwrap();
        println!("  pow seed --encryption {mode} -> libtorrent (defaults): {result}");
        assert_eq!(result, expected, "pow seed --encryption {mode}");
    }
}

/// aria2c with RC4 required (`--bt-require-crypto --bt-min-crypto-level=arc4`), peers from the
/// tracker; `seed` keeps it seeding `torrent` from `dir` until killed.
fn aria2(torrent: &Path, dir: &Path, seed: bool) -> Killed {
    let mut command = Command::new("aria2c");
    command
        .args([
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
        ])
        .args(["--enable-peer-exchange=false", "--disable-ipv6=true"])
        .args(["--bt-require-crypto=true", "--bt-min-crypto-level=arc4"])
        .args(["--console-log-level=warn", "--summary-interval=0"])
        .args(["--file-allocation=none", "--bt-tracker-interval=1"])
        .arg(format!("--listen-port={}", free_port()))
        .arg(format!(
            "--log={}",
            dir.with_extension("aria2.log").display()
        ))
        .arg("--log-level=info")
        .arg("-d")
        .arg(dir)
        .arg(torrent)
        .stdout(Stdio::null());
    if seed {
        command.args(["--check-integrity=true", "--seed-ratio=0.0"]);
    } else {
        command.args(["--seed-time=0", "--bt-stop-timeout=60"]);
    }
    Killed(
        command
            .spawn()
            .expect("aria2c (scripts/install-deps --tests)"),
    )
}

fn aria2_log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.with_extension("aria2.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[test]
fn aria2_requiring_rc4_downloads_from_pow_and_seeds_to_it() {
    let tmp = TempDir::new("mse-aria2");
    let tracker = PowTracker::start();
    let (data, torrent) = mib_payload(tmp.path(), "blob", 8, Some(&tracker.url));
    let data_dir = data.parent().unwrap();

    // pow seeds (defaults); aria2 requiring RC4 finds it through the tracker.
    let pow_port = free_port();
    let seed = pow_seed(&torrent, data_dir, pow_port, &[], Stdio::null());
    let out = tmp.path().join("aria2-from-pow");
    let started = Instant::now();
    let mut leecher = aria2(&torrent, &out, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = leecher.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "aria2 did not finish:\n{}",
            aria2_log_tail(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "aria2:\n{}", aria2_log_tail(&out));
    let bytes = same_bytes(&data, &out.join("blob")).unwrap();
    println!(
        "  pow (default) -> aria2 (RC4 required): {bytes} bytes verified in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    drop(seed);

    // aria2 seeds with RC4 required; pow (defaults) finds it through the tracker.
    let seeder = aria2(&torrent, data_dir, true);
    let out = tmp.path().join("pow-from-aria2");
    let started = Instant::now();
    let report = pow_download_json(torrent.to_str().unwrap(), &out, &[]);
    let bytes = same_bytes(&data, &out.join("blob")).unwrap();
    let (plaintext, handshake_only, rc4) = connections(&report);
    println!(
        "  aria2 (RC4 required) -> pow (default): {bytes} bytes verified in {:.2} s; connections: {plaintext} plaintext, {handshake_only} encrypted handshake, {rc4} RC4",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((plaintext, handshake_only), (0, 0), "{report}");
    assert!(rc4 >= 1, "{report}");
    drop(seeder);
}

#[test]
fn pow_to_pow_rc4_carries_the_metadata_and_the_payload() {
    let tmp = TempDir::new("mse-pow");
    let (data, torrent) = mib_payload(tmp.path(), "blob", 8, None);
    let data_dir = data.parent().unwrap();
    let port = free_port();
    let _seed = pow_seed(
        &torrent,
        data_dir,
        port,
        &["--encryption", "require"],
        Stdio::null(),
    );
    let peer = format!("127.0.0.1:{port}");
    for mode in ["require", "prefer", "allow"] {
        let out = tmp.path().join(format!("pow-{mode}"));
        let started = Instant::now();
        let report = pow_download_json(
            torrent.to_str().unwrap(),
            &out,
            &["--peer", &peer, "--encryption", mode],
        );
        let bytes = same_bytes(&data, &out.join("blob")).unwrap();
        println!(
            "  pow seed --encryption require -> pow download --encryption {mode}: {bytes} bytes in {:.2} s, {}",
            started.elapsed().as_secs_f64(),
            report["connections"]
        );
        assert_eq!(connections(&report), (0, 0, 1), "{report}");
    }

    // A magnet link: the metadata comes through RC4 too.
    let info_hash = pow_metainfo::Metainfo::from_file(&torrent)
        .unwrap()
        .info_hash
        .to_hex();
    let link = format!("magnet:?xt=urn:btih:{info_hash}&x.pe={peer}");
    let out = tmp.path().join("pow-magnet");
    let report = pow_download_json(&link, &out, &["--encryption", "require"]);
    same_bytes(&data, &out.join("blob")).unwrap();
    assert_eq!(connections(&report), (0, 0, 1), "{report}");
    println!("  magnet link, --encryption require both ends: metadata and payload verified");
}

/// Reads until the peer closes; true if it did within `limit` (having sent at most `max` bytes).
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration, max: usize) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = 0;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                got += n;
                assert!(got <= max, "the peer sent {got} bytes");
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn require_refuses_plaintext_and_off_refuses_encryption() {
    let tmp = TempDir::new("mse-refuse");
    let (data, torrent) = mib_payload(tmp.path(), "blob", 1, None);
    let data_dir = data.parent().unwrap();
    let info_hash = pow_metainfo::Metainfo::from_file(&torrent)
        .unwrap()
        .info_hash
        .0;

    let port = free_port();
    let seed = pow_seed(
        &torrent,
        data_dir,
        port,
        &["--encryption", "require"],
        Stdio::null(),
    );
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut handshake = b"\x13BitTorrent protocol\0\0\0\0\0\0\0\0".to_vec();
    handshake.extend_from_slice(&info_hash);
    handshake.extend_from_slice(b"-XX0000-plaintext!!!");
    plain.write_all(&handshake).unwrap();
    assert!(
        closed_within(&mut plain, Duration::from_secs(5), 0),
        "a plaintext handshake to --encryption require was not closed"
    );
    drop(seed);

    let port = free_port();
    let _seed = pow_seed(
        &torrent,
        data_dir,
        port,
        &["--encryption", "off"],
        Stdio::null(),
    );
    let mut encrypted = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_, first) = pow_mse::Initiator::new(
        info_hash,
        pow_mse::Methods::EITHER_PREFER_PLAINTEXT,
        [7; 20],
        &[1; 100],
        handshake,
    );
    encrypted.write_all(&first).unwrap();
    assert!(
        closed_within(&mut encrypted, Duration::from_secs(5), 0),
        "an encrypted handshake to --encryption off was not closed"
    );
    println!("  --encryption require closed a plaintext handshake; off closed an encrypted one");
}

/// Transmission's settings for encryption required both ways.
const ENCRYPTION_REQUIRED: [(&str, i64); 1] = [("encryption", 2)];

#[test]
fn transmission_requiring_encryption_downloads_from_pow_and_seeds_to_it() {
    let tmp = TempDir::new("mse-transmission");
    let tracker = PowTracker::start();
    let (data, torrent) = mib_payload(tmp.path(), "blob", 4, Some(&tracker.url));
    let data_dir = data.parent().unwrap();

    // Transmission 3.00 does not dial 127.0.0.1 peers a tracker names: pow's seed (defaults)
    // dials it, in plaintext first; Transmission closes that, and pow dials again encrypted.
    let pow_port = free_port();
    let _seed = pow_seed(
        &torrent,
        data_dir,
        pow_port,
        &["--announce-min", "1"],
        Stdio::null(),
    );
    let out = tmp.path().join("transmission-from-pow");
    let started = Instant::now();
    let leecher = Transmission::start(tmp.path(), &torrent, &out, false, &ENCRYPTION_REQUIRED);
    leecher.wait_done(Duration::from_secs(60));
    let bytes = same_bytes(&data, &out.join("blob")).unwrap();
    println!(
        "  pow (default) -> Transmission (encryption required): {bytes} bytes verified in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    drop(leecher);
    drop(_seed);

    // Transmission seeds with encryption required; pow (defaults) dials it from the tracker.
    let seeder = Transmission::start(tmp.path(), &torrent, data_dir, true, &ENCRYPTION_REQUIRED);
    seeder.wait_done(Duration::from_secs(30));
    let out = tmp.path().join("pow-from-transmission");
    let started = Instant::now();
    let report = pow_download_json(torrent.to_str().unwrap(), &out, &[]);
    let bytes = same_bytes(&data, &out.join("blob")).unwrap();
    let (plaintext, handshake_only, rc4) = connections(&report);
    println!(
        "  Transmission (encryption required) -> pow (default): {bytes} bytes verified in {:.2} s; connections: {plaintext} plaintext, {handshake_only} encrypted handshake, {rc4} RC4",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((plaintext, handshake_only), (0, 0), "{report}");
    assert!(rc4 >= 1, "{report}");
}
