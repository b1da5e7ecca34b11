//! The Mainline DHT (BEP 5) against libtorrent's, on loopback: a libtorrent node `c` stands
//! for the DHT (everyone bootstraps from it). pow downloads a magnet link with no tracker and
//! no peer, finding the libtorrent seed that announced itself to `c`; and a libtorrent leecher
//! with a bare torrent finds a `pow seed` whose announce `c` accepted (libtorrent reports it
//! with a `dht_announce_alert`).

mod common;

use common::{free_port, make_zip, pow, same_bytes, text, TempDir};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

fn dataset(work: &Path, seed: u64) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    make_zip(&data.join("set.zip"), 8, seed);
    let torrent = work.join("set.torrent");
    let info_hash = common::create_torrent(&data.join("set.zip"), &torrent, 262_144)
        .info_hash
        .to_hex();
    (data, torrent, info_hash)
}

fn bytes_of(info_hash: &str) -> [u8; 20] {
    hex::decode(info_hash).unwrap().try_into().unwrap()
}

/// The port of the first BEP 5 `port` message among the peer's next few messages.
fn port_message(peer: &mut common::raw_peer::RawPeer) -> Option<u16> {
    for _ in 0..4 {
        if let Ok((9, payload)) = peer.read(std::time::Duration::from_secs(5)) {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
    None
}

#[test]
fn pow_finds_a_libtorrent_seed_on_the_dht_from_a_bare_magnet_link() {
    let work = TempDir::new("dht-lt-seed");
    let (data, torrent, info_hash) = dataset(work.path(), 21);
    let script = "torrent, data, info_hash, pc, pb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
c = session(pc)
b = session(pb, bootstrap=pc)
hb = b.add_torrent({'ti': lt.torrent_info(torrent), 'save_path': data})
last = [0]
def kick():
    if hb.status().state == lt.torrent_status.seeding and time.time() - last[0] > 3:
        hb.force_dht_announce()
        last[0] = time.time()
at = announced_to(c, info_hash, 60, kick)
if not at: sys.exit('the libtorrent seed did not announce to the DHT')
print('seed announced from %s' % at, flush=True)
time.sleep(300)
";
    let (pc, pb) = (free_port(), free_port());
    let mut lt = common::lt_dht_python(
        script,
        &[
            torrent.display().to_string(),
            data.display().to_string(),
            info_hash.clone(),
            pc.to_string(),
            pb.to_string(),
        ],
    );
    let line = common::first_stdout_line(&mut lt.0);
    assert!(line.starts_with("seed announced"), "{line}");
    let out = work.path().join("out");
    let started = Instant::now();
    let o = pow()
        .arg("download")
        .arg(format!("magnet:?xt=urn:btih:{info_hash}"))
        .arg("-o")
        .arg(&out)
        .args(["--dht-bootstrap", &format!("127.0.0.1:{pc}")])
        .args(["--port", &free_port().to_string(), "--bind", "127.0.0.1"])
        .args(["--json", "--metadata-timeout", "60"])
        .env("POW_LOG", "info")
        .output()
        .unwrap();
    let stdout = text(&o.stdout);
    let stderr = text(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let bytes = same_bytes(&data.join("set.zip"), &out.join("set.zip")).unwrap();
    let dht_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("dht:")).collect();
    println!(
        "libtorrent seed -> pow by DHT alone: {line}; metadata and {bytes} bytes verified in \
         {:.1} s; peers from the DHT {}, received by peer {}\n{}",
        started.elapsed().as_secs_f64(),
        report["peers_from_dht"],
        report["received_by_peer"],
        dht_lines.join("\n")
    );
    assert!(report["peers_from_dht"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(
        report["received_by_peer"][0]["peer"],
        format!("127.0.0.1:{pb}"),
        "{report}"
    );
}

#[test]
fn a_libtorrent_leecher_finds_a_pow_seed_on_the_dht() {
    let work = TempDir::new("dht-pow-seed");
    let (data, torrent, info_hash) = dataset(work.path(), 22);
    let seed_port = free_port();
    let script = "torrent, out, info_hash, pc, pl, seed_port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
c = session(pc)
print('ready', flush=True)
at = announced_to(c, info_hash, 60)
if not at: sys.exit('pow did not announce to the DHT')
print('pow announced from %s' % at, flush=True)
l = session(pl, bootstrap=pc)
h = l.add_torrent({'ti': lt.torrent_info(torrent), 'save_path': out})
t0 = time.time()
last = 0
peers = set()
while time.time() - t0 < 90:
    peers.update('%s:%d' % p.ip for p in h.get_peer_info())
    if h.status().state == lt.torrent_status.seeding:
        print('downloaded in %.1f s from %s' % (time.time() - t0, sorted(peers)), flush=True)
        sys.exit(0)
    if time.time() - last > 3:
        h.force_dht_announce()
        last = time.time()
    time.sleep(0.1)
sys.exit('the libtorrent leecher did not finish')
";
    let (pc, pl) = (free_port(), free_port());
    let out = work.path().join("out");
    let mut lt = common::lt_dht_python(
        script,
        &[
            torrent.display().to_string(),
            out.display().to_string(),
            info_hash,
            pc.to_string(),
            pl.to_string(),
            seed_port.to_string(),
        ],
    );
    let mut lines = BufReader::new(lt.0.stdout.take().unwrap());
    let mut ready = String::new();
    lines.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let bootstrap = format!("127.0.0.1:{pc}");
    let _seed = common::pow_seed(
        &torrent,
        &data,
        seed_port,
        &["--dht-bootstrap", &bootstrap],
        Stdio::null(),
    );
    let started = Instant::now();
    // The script exits when its leecher is done, or gives up.
    let mut stdout = String::new();
    lines.read_to_string(&mut stdout).unwrap();
    let status = lt.0.wait().unwrap();
    println!(
        "pow seed -> libtorrent by DHT alone, {:.1} s: {stdout}",
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("pow announced from 127.0.0.1:{seed_port}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("from ['127.0.0.1:{seed_port}']")),
        "{stdout}"
    );
    let bytes = same_bytes(&data.join("set.zip"), &out.join("set.zip")).unwrap();
    assert!(bytes > 8_000_000);
}

/// BEP 5's `port` message: a pow running a DHT node sets the reserved bit and tells a peer
/// that set it too its UDP port; the port a peer tells it gets a ping, once per connection.
#[test]
fn peers_that_run_a_dht_node_swap_ports() {
    use common::raw_peer::RawPeer;
    use pow_dht::krpc::{Body, Message, Query};
    let work = TempDir::new("dht-port");
    let (data, torrent, info_hash) = dataset(work.path(), 23);
    let info_hash = bytes_of(&info_hash);
    // Bootstrap from a socket that never answers: only the peer's port can add a node.
    let silent_node = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let silent = silent_node.local_addr().unwrap().to_string();
    let _seed = common::pow_seed(
        &torrent,
        &data,
        port,
        &["--dht-bootstrap", &silent],
        Stdio::null(),
    );
    let (mut peer, reserved) =
        RawPeer::connect_reserved(port, info_hash, [0, 0, 0, 0, 0, 0, 0, 0x01]);
    assert_eq!(reserved[7] & 0x01, 0x01, "pow did not set the DHT bit");
    let told = port_message(&mut peer);
    assert_eq!(told, Some(port), "pow's port message");

    let node = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    node.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let node_port = node.local_addr().unwrap().port();
    peer.send(9, &node_port.to_be_bytes()).unwrap();
    peer.send(9, &node_port.to_be_bytes()).unwrap();
    let mut pings = 0;
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = node.recv_from(&mut buf) {
        let message = Message::decode(&buf[..n]).unwrap();
        assert_eq!(from.port(), port, "the ping came from pow's DHT port");
        if let Body::Query {
            query: Query::Ping, ..
        } = message.body
        {
            pings += 1;
        }
    }
    println!("pow told its DHT port {port}; two port messages to it gave {pings} ping");
    assert_eq!(pings, 1);
}

/// A torrent's own BEP 5 `nodes` (`pow torrent create --dht-node`) are asked besides the
/// routers: a pow leecher whose only `--dht-bootstrap` never answers still finds the pow seed
/// that announced itself to the node the torrent names, and so does a magnet link's `dht=`.
#[test]
fn a_torrents_own_nodes_bootstrap_the_dht() {
    let work = TempDir::new("dht-nodes");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    make_zip(&data.join("set.zip"), 4, 24);
    let pc = free_port();
    let torrent = work.path().join("set.torrent");
    let created = pow()
        .args(["torrent", "create"])
        .arg(data.join("set.zip"))
        .arg("-o")
        .arg(&torrent)
        .args(["--dht-node", &format!("127.0.0.1:{pc}"), "--json"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", text(&created.stderr));
    let shown = pow()
        .args(["torrent", "show"])
        .arg(&torrent)
        .output()
        .unwrap();
    assert!(
        text(&shown.stdout).contains(&format!("dht node:     127.0.0.1:{pc}")),
        "{}",
        text(&shown.stdout)
    );
    let info_hash = pow_metainfo::Metainfo::from_file(&torrent)
        .unwrap()
        .info_hash
        .to_hex();
    let script = "info_hash, pc = sys.argv[1], int(sys.argv[2])
c = session(pc)
print('ready', flush=True)
at = announced_to(c, info_hash, 60)
print('pow announced from %s' % at, flush=True)
time.sleep(300)
";
    let mut lt = common::lt_dht_python(script, &[info_hash.clone(), pc.to_string()]);
    let mut lines = BufReader::new(lt.0.stdout.take().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // The seed needs no bootstrap flag beyond --dht: the torrent names the node. (A silent
    // --dht-bootstrap keeps the public routers out of a test.)
    let silent_node = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = silent_node.local_addr().unwrap().to_string();
    let seed_port = free_port();
    let _seed = common::pow_seed(
        &torrent,
        &data,
        seed_port,
        &["--dht-bootstrap", &silent],
        Stdio::null(),
    );
    line.clear();
    lines.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        format!("pow announced from 127.0.0.1:{seed_port}")
    );
    let out = work.path().join("out");
    let report = common::pow_download_json(
        torrent.to_str().unwrap(),
        &out,
        &["--dht-bootstrap", &silent],
    );
    let bytes = same_bytes(&data.join("set.zip"), &out.join("set.zip")).unwrap();
    println!(
        "torrent nodes only: {line}; {bytes} bytes from {} (peers from the DHT {})",
        report["received_by_peer"], report["peers_from_dht"]
    );
    assert_eq!(
        report["received_by_peer"][0]["peer"],
        format!("127.0.0.1:{seed_port}")
    );
    // A magnet link's `dht=` names the node the same way (libtorrent asks it); pow left it
    // out, and found nobody.
    let link = format!("magnet:?xt=urn:btih:{info_hash}&dht=127.0.0.1:{pc}");
    let out = work.path().join("from-magnet");
    let report = common::pow_download_json(
        &link,
        &out,
        &["--dht-bootstrap", &silent, "--metadata-timeout", "90"],
    );
    let bytes = same_bytes(&data.join("set.zip"), &out.join("set.zip")).unwrap();
    println!(
        "magnet dht= only: {bytes} bytes from {}",
        report["received_by_peer"]
    );
}

/// The DHT's UDP port taken by another program: pow's node takes any free port, says so, and
/// names that one in its `port` message.
/// --dht-port and --dht-state without a node to apply to (no --dht, no --dht-bootstrap) are
/// refused, in every command that takes them: they were taken and ignored.
#[test]
fn dht_options_without_a_node_are_refused() {
    let work = TempDir::new("dht-options");
    let (data, torrent, _) = dataset(work.path(), 41);
    let torrent = torrent.to_str().unwrap();
    let data = data.to_str().unwrap();
    for command in [
        vec!["download", torrent, "-o", data],
        vec!["seed", torrent, "--data", data],
        vec!["serve"],
        vec!["source", "seed", "--all"],
    ] {
        for option in [["--dht-port", "7001"], ["--dht-state", "state"]] {
            let o = pow().args(&command).args(option).output().unwrap();
            let stderr = text(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{command:?} {option:?}: {stderr}");
            assert!(
                stderr.contains(option[0]) && stderr.contains("--dht"),
                "{stderr}"
            );
        }
    }
    // With --dht-bootstrap they are taken: pow_dht_node_lookup_seed_and_download_by_themselves.
}

#[test]
fn a_busy_dht_port_gives_way_to_any_port() {
    use common::raw_peer::RawPeer;
    let work = TempDir::new("dht-busy");
    let (data, torrent, info_hash) = dataset(work.path(), 25);
    let info_hash = bytes_of(&info_hash);
    let port = free_port();
    let _squatter = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let silent_node = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = silent_node.local_addr().unwrap().to_string();
    let mut seed = common::pow_seed(
        &torrent,
        &data,
        port,
        &["--dht-bootstrap", &silent],
        Stdio::piped(),
    );
    let (mut peer, _) = RawPeer::connect_reserved(port, info_hash, [0, 0, 0, 0, 0, 0, 0, 0x01]);
    let told = port_message(&mut peer);
    let _ = seed.0.kill();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut seed.0.stderr.take().unwrap(), &mut stderr).unwrap();
    println!("UDP {port} taken: pow's port message named {told:?}; {stderr}");
    assert!(told.is_some_and(|p| p != port && p != 0), "{told:?}");
    assert!(
        stderr.contains(&format!("UDP 127.0.0.1:{port} is in use")),
        "{stderr}"
    );
}

/// A network of pow alone: `pow dht node` as its bootstrap node, a `pow seed` that announces
/// to it, `pow dht lookup` that finds the seed, and `pow download` that downloads from it.
#[test]
fn pow_dht_node_lookup_seed_and_download_by_themselves() {
    let work = TempDir::new("dht-pow-only");
    let (data, torrent, info_hash) = dataset(work.path(), 26);
    let mut node = common::Killed(
        pow()
            .args(["dht", "node", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let line = common::first_stdout_line(&mut node.0);
    let node_addr = line
        .trim()
        .strip_prefix("dht node listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let seed_port = free_port();
    let _seed = common::pow_seed(
        &torrent,
        &data,
        seed_port,
        &["--dht-bootstrap", &node_addr],
        Stdio::null(),
    );
    let seed_addr = format!("127.0.0.1:{seed_port}");
    let started = Instant::now();
    let found = loop {
        let o = pow()
            .args(["dht", "lookup", &info_hash, "--dht-bootstrap", &node_addr])
            .args(["--bind", "127.0.0.1:0", "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        let found: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
        if found["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| *p == *seed_addr)
        {
            break found;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the seed never showed up: {found}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // The node's id and the nodes that answered it are kept (--dht-state), and bring the next
    // run back to the network when its bootstrap node is gone (a dead address here).
    let state = work.path().join("state").join("dht-state");
    let lookup_with_state = |bootstrap: &str| -> serde_json::Value {
        let o = pow()
            .args(["dht", "lookup", &info_hash, "--dht-bootstrap", bootstrap])
            .args(["--bind", "127.0.0.1:0", "--json", "--dht-state"])
            .arg(&state)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        serde_json::from_str(&text(&o.stdout)).unwrap()
    };
    lookup_with_state(&node_addr);
    let saved = std::fs::read_to_string(&state).unwrap();
    let id_line = |saved: &str| saved.lines().nth(1).unwrap().to_string();
    let saved_nodes = saved.lines().filter(|l| l.starts_with("node ")).count();
    assert!(
        saved.starts_with("pow dht state 1\nid ") && saved_nodes >= 1,
        "{saved}"
    );
    let again = lookup_with_state("127.0.0.1:1");
    assert!(
        again["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| *p == *seed_addr),
        "the saved nodes did not find the seed: {again}"
    );
    let resaved = std::fs::read_to_string(&state).unwrap();
    assert_eq!(
        id_line(&resaved),
        id_line(&saved),
        "the node id was not kept"
    );
    println!(
        "dht state: {saved_nodes} nodes saved; a lookup bootstrapped from a dead address found the seed through them: {again}"
    );
    let out = work.path().join("out");
    let download_state = work.path().join("download-dht-state");
    let report = common::pow_download_json(
        &format!("magnet:?xt=urn:btih:{info_hash}"),
        &out,
        &[
            "--dht-bootstrap",
            &node_addr,
            "--dht-state",
            download_state.to_str().unwrap(),
        ],
    );
    let kept = std::fs::read_to_string(&download_state).unwrap();
    assert!(
        kept.lines().any(|l| l == format!("node {node_addr}")),
        "{kept}"
    );
    let bytes = same_bytes(&data.join("set.zip"), &out.join("set.zip")).unwrap();
    let _ = node.0.kill();
    println!(
        "pow dht lookup: {found}; pow download of the bare magnet: {bytes} bytes from {}",
        report["received_by_peer"]
    );
    assert_eq!(report["received_by_peer"][0]["peer"], *seed_addr);
}
