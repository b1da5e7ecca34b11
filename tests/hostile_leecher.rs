//! Seeding and choking issue, acceptance line 5: peers that break the rules get nothing they
//! should not and are dropped, `pow seed`'s memory stays bounded, and a real leecher completes
//! alongside them.
//!
//! The hostile peers are written here by hand on std `TcpStream`s: they speak the wire bytes
//! directly, so nothing in pow's own codec can make them more polite than intended.

mod common;

use common::raw_peer::{
    request_payload, vm_hwm_kib, End, RawPeer, BITFIELD, HAVE, INTERESTED, PIECE, REQUEST, UNCHOKE,
};
use common::{pow_bin, same_bytes, Lab, TempDir};
use std::io::Write;
use std::time::Duration;

/// Out-of-range and over-long requests, a flood while choked and a peer that never reads, all
/// against one `pow seed` while aria2 downloads the same torrent from it.
#[test]
fn hostile_peers_are_dropped_while_a_real_leecher_completes() {
    let lab = Lab::new("hostile");
    let (data, torrent) = lab.payload("256M", &[]);
    let metainfo = pow_metainfo::Metainfo::from_file(&torrent).unwrap();
    let info_hash = metainfo.info_hash.0;
    let pieces = metainfo.geometry.piece_count();
    let piece_len = metainfo.geometry.piece_length();
    let t = torrent.to_str().unwrap();
    let dir = data.parent().unwrap().to_str().unwrap();
    let seed_cmd = format!(
        "{} seed {{torrent}} --data {{dir}} --port {{port}} --bind 127.0.0.1",
        pow_bin().display()
    );
    let (ok, _, err) = lab.script_env("seed.sh", &["ext", t, dir], &[("SEED_CMD", &seed_cmd)]);
    assert!(ok, "pow seed: {err}");
    let pid: u32 = std::fs::read_to_string(lab.state.path().join("seed-ext/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "pow", "the seed's pid file names pow itself");
    let port = 51105;
    let before = vm_hwm_kib(pid);

    let out = lab.work.path().join("out-hostile");
    let (leech, hostile) = std::thread::scope(|scope| {
        let leech = scope.spawn(|| {
            lab.script(
                "leech.sh",
                &["aria2", t, out.to_str().unwrap(), "--timeout", "180"],
            )
        });
        let hostile = scope.spawn(move || {
            let mut report = Vec::new();
            // Each invalid request on its own connection, after an honest start.
            for (what, index, begin, length) in [
                ("index past the last piece", pieces, 0, 16384),
                ("block past the piece's end", 0, piece_len - 8192, 16384),
                ("more than 16 KiB", 0, 0, 32768),
            ] {
                let mut peer = RawPeer::connect(port, info_hash);
                peer.get_unchoked();
                peer.request(index, begin, length).unwrap();
                let (seen, end) = peer.drain(Duration::from_secs(10));
                assert!(!seen.contains(&PIECE), "{what}: data was sent");
                assert_eq!(end, End::Closed, "{what}: not disconnected");
                report.push(format!("{what}: disconnected, no data"));
            }
            // 10,000 requests without ever being unchoked (never even interested).
            let mut flood = RawPeer::connect(port, info_hash);
            let mut burst = Vec::new();
            for i in 0..10_000u32 {
                burst.extend_from_slice(&13u32.to_be_bytes());
                burst.push(REQUEST);
                burst.extend_from_slice(&request_payload(i % pieces, 0, 16384));
            }
            // pow may hang up before it has read everything: a failed write is expected.
            let _ = flood.stream.write_all(&burst);
            let (seen, end) = flood.drain(Duration::from_secs(10));
            assert!(seen.iter().all(|&id| id == BITFIELD), "flood got {seen:?}");
            assert_eq!(end, End::Closed, "flooder not disconnected");
            report.push("10,000 requests while choked: disconnected, no data".to_string());
            // A peer that asks for 1,000 blocks (16 MiB) and reads none of them for 5 s.
            let mut slow = RawPeer::connect(port, info_hash);
            slow.get_unchoked();
            for i in 0..1000u32 {
                let (index, begin) = (i / (piece_len / 16384), (i % (piece_len / 16384)) * 16384);
                slow.request(index, begin, 16384).unwrap();
            }
            std::thread::sleep(Duration::from_secs(5));
            let during = vm_hwm_kib(pid);
            report.push(format!(
                "slow reader: 1,000 blocks asked, none read for 5 s; seed VmHWM then {during} KiB"
            ));
            drop(slow);
            report
        });
        (leech.join().unwrap(), hostile.join().unwrap())
    });
    let after = vm_hwm_kib(pid);
    lab.script("seed.sh", &["stop", "ext"]);
    for line in &hostile {
        println!("{line}");
    }
    let (ok, stdout, err) = leech;
    assert!(ok, "aria2 alongside the hostile peers: {stdout}\n{err}");
    let bytes = same_bytes(&data, &out.join(data.file_name().unwrap())).unwrap();
    let result = common::result_line(&stdout);
    println!("aria2 got {bytes} bytes, verified  {result}");
    println!(
        "pow seed VmHWM: {before} KiB before, {after} KiB after (+{} KiB)",
        after - before
    );
    assert!(
        after - before < 32 * 1024,
        "seed memory grew by {} KiB",
        after - before
    );
}

/// A request for a piece the seed does not have (its copy is corrupt) gets no data and does
/// not stop the peer from getting a piece the seed has.
#[test]
fn a_piece_the_seed_lacks_is_never_sent() {
    let work = TempDir::new("lacks");
    let set = work.path().join("data/lacks");
    std::fs::create_dir_all(&set).unwrap();
    let content: Vec<u8> = (0..1_048_576u32).map(|i| (i * 31 % 253) as u8).collect();
    std::fs::write(set.join("a.bin"), &content).unwrap();
    let torrent = work.path().join("lacks.torrent");
    let info_hash = common::create_torrent(&set, &torrent, 65536).info_hash.0;
    let mut corrupt = content.clone();
    corrupt[5 * 65536 + 7] ^= 0xff; // piece 5
    std::fs::write(set.join("a.bin"), &corrupt).unwrap();
    // A free port (a fixed one inside the ephemeral range was once taken by another test's
    // outgoing connection in CI, and the seed could not listen); the torrent has no tracker.
    let port = common::free_port();
    let mut seed = common::pow()
        .arg("seed")
        .arg(&torrent)
        .arg("--data")
        .arg(work.path().join("data"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(seed.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    if line.is_empty() {
        let mut stderr = String::new();
        std::io::Read::read_to_string(seed.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        panic!("pow seed printed nothing: {stderr}");
    }
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ready["pieces_good"], 15, "{ready}");

    let mut peer = RawPeer::connect(port, info_hash);
    let (id, bitfield) = peer.read(Duration::from_secs(10)).unwrap();
    assert_eq!(id, BITFIELD);
    assert_eq!(bitfield[0] & 0x04, 0, "piece 5 is not advertised");
    peer.get_unchoked();
    peer.request(5, 0, 16384).unwrap();
    peer.request(6, 0, 16384).unwrap();
    let mut got = Vec::new();
    loop {
        let (id, payload) = peer.read(Duration::from_secs(10)).expect("piece 6");
        if id == PIECE {
            let index = u32::from_be_bytes(payload[..4].try_into().unwrap());
            got.push(index);
            if index == 6 {
                assert_eq!(&payload[8..], &content[6 * 65536..6 * 65536 + 16384]);
                break;
            }
        }
    }
    let (later, end) = peer.drain(Duration::from_secs(1));
    assert_eq!(got, vec![6], "only the piece the seed has was sent");
    assert!(!later.contains(&PIECE), "{later:?}");
    assert_eq!(end, End::Quiet, "one such request is ignored, not punished");
    println!("request for missing piece 5: no data; piece 6 served; connection kept");

    // A peer with every piece, unchoking the seed: `pow seed` serves what it has and fetches
    // nothing (it used to ask for piece 5 and write it over the local file).
    let mut full = RawPeer::connect(port, info_hash);
    full.send(BITFIELD, &[0xff, 0xff]).unwrap();
    full.send(UNCHOKE, &[]).unwrap();
    let (seen, _) = full.drain(Duration::from_secs(2));
    let _ = seed.kill();
    let _ = seed.wait();
    println!("a peer with every piece unchoking the seed: it sent {seen:?}");
    assert!(
        !seen.contains(&INTERESTED) && !seen.contains(&REQUEST),
        "the seed wants piece 5: {seen:?}"
    );
    assert!(
        std::fs::read(set.join("a.bin")).unwrap() == corrupt,
        "the local file was changed"
    );
}

/// A `pow seed` of `mib` MiB of pseudo-random bytes (file `blob`, 64 KiB pieces) on
/// 127.0.0.1:`port`, killed when dropped.
struct SmallSeed {
    work: TempDir,
    data: std::path::PathBuf,
    torrent: std::path::PathBuf,
    metainfo: pow_metainfo::Metainfo,
    port: u16,
    _seed: common::Killed,
}

impl SmallSeed {
    fn start(tag: &str, mib: usize) -> SmallSeed {
        let work = TempDir::new(tag);
        let (data, torrent) = common::mib_payload(work.path(), "blob", mib, None);
        let metainfo = pow_metainfo::Metainfo::from_file(&torrent).unwrap();
        let port = common::free_port();
        let seed = common::pow_seed(
            &torrent,
            data.parent().unwrap(),
            port,
            &[],
            std::process::Stdio::null(),
        );
        SmallSeed {
            work,
            data,
            torrent,
            metainfo,
            port,
            _seed: seed,
        }
    }

    /// Seconds a `pow download` from 127.0.0.1 of the whole torrent takes, with this seed as
    /// its only peer; it must complete with the same bytes.
    fn timed_download(&self) -> f64 {
        let started = std::time::Instant::now();
        let out = self.work.path().join("out");
        let report = common::pow_download_json(
            self.torrent.to_str().unwrap(),
            &out,
            &["--peer", &format!("127.0.0.1:{}", self.port)],
        );
        let took = started.elapsed().as_secs_f64();
        assert_eq!(report["complete"], true, "{report}");
        let name = self.data.file_name().unwrap();
        assert_eq!(
            same_bytes(&self.data, &out.join(name)),
            Ok(std::fs::metadata(&self.data).unwrap().len())
        );
        took
    }
}

/// 300 connections from one host (127.0.0.2) that never send a handshake, against a `pow
/// seed`: it holds 32 of them (`pow_engine::MAX_PENDING_HANDSHAKES_PER_HOST`, each a task and a
/// buffer until the 20 s handshake timeout) and closes the rest at once, and a download from
/// another host (127.0.0.1) completes meanwhile. Before, the seed's own listener held every
/// one; a shared listener (`pow serve`'s) held 256 from anyone, and then no one else got in.
#[test]
fn a_flood_of_silent_connections_from_one_host_leaves_room_for_others() {
    const PER_HOST: usize = 32; // pow_engine::MAX_PENDING_HANDSHAKES_PER_HOST
    let seed = SmallSeed::start("silent", 4);
    let silent = silent_connections(seed.port, 2..3, 300);
    let (held, closed) = held_and_closed(&silent);
    let took = seed.timed_download();
    println!(
        "300 silent connections from 127.0.0.2: {held} held, {closed} closed at once; a download \
         from 127.0.0.1 meanwhile in {took:.2} s"
    );
    assert_eq!((held, closed), (PER_HOST, 300 - PER_HOST));
    assert!(
        took < 10.0,
        "the download waited for the silent connections: {took:.1} s"
    );
}

/// `per_host` connections to `port` from each of 127.0.0.`hosts` that never send anything.
fn silent_connections(
    port: u16,
    hosts: std::ops::Range<u8>,
    per_host: usize,
) -> Vec<std::net::TcpStream> {
    // std cannot bind a socket before connecting it; tokio's `TcpSocket` can.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut streams = Vec::new();
        for host in hosts {
            for _ in 0..per_host {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(([127, 0, 0, host], 0).into()).unwrap();
                let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
                streams.push(stream.into_std().unwrap());
            }
        }
        streams
    })
}

/// How many of `streams` the other end holds open, and how many it closed.
fn held_and_closed(streams: &[std::net::TcpStream]) -> (usize, usize) {
    use std::io::Read;
    let (mut held, mut closed) = (0, 0);
    for mut stream in streams {
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        match stream.read(&mut [0u8; 1]) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            _ => held += 1,
        }
    }
    (held, closed)
}

/// A peer that asks for metadata pieces (BEP 9) and never reads: once a send buffer's worth
/// (1 MiB) waits for it, the rest of its asks get rejects, not 16 KiB each. A torrent of 32,768
/// pieces (a 655 KB info dictionary, 41 metadata pieces) lets a peer ask 164 times: it used to
/// get 164 answers queued, 2.6 MB, and 4 times the dictionary in general (160 MiB per
/// connection for a 40 MiB one).
#[test]
fn metadata_asked_for_and_never_read_is_rejected_past_a_send_buffer() {
    const ASKS: u32 = 164; // pow's cap for 41 metadata pieces: 4 each
    const OURS: u8 = 3; // the id we name for ut_metadata
    let work = TempDir::new("metadata-unread");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("zeros.bin");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let torrent = work.path().join("zeros.torrent");
    let metainfo = common::create_torrent(&file, &torrent, 16384);
    assert_eq!(metainfo.info_bytes.len().div_ceil(16384), 41);
    let port = common::free_port();
    let _seed = common::pow_seed(&torrent, &data, port, &[], std::process::Stdio::null());
    let mut reserved = [0u8; 8];
    reserved[5] |= 0x10; // BEP 10
    let mut peer = RawPeer::connect_with(port, metainfo.info_hash.0, reserved);
    let m = format!("d1:md11:ut_metadatai{OURS}eee");
    peer.send_extended(0, m.as_bytes()).unwrap();
    let theirs = peer.next_extended(0, Duration::from_secs(10)).unwrap();
    assert!(String::from_utf8_lossy(&theirs).contains("11:ut_metadatai1e"));
    for ask in 0..ASKS {
        let request = format!("d8:msg_typei0e5:piecei{}ee", ask % 41);
        peer.send_extended(1, request.as_bytes()).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let (mut data_replies, mut rejects) = (0, 0);
    while let Ok(body) = peer.next_extended(OURS, Duration::from_secs(2)) {
        let text = String::from_utf8_lossy(&body);
        if text.starts_with("d8:msg_typei1e") {
            data_replies += 1;
        } else if text.starts_with("d8:msg_typei2e") {
            rejects += 1;
        }
    }
    println!(
        "{ASKS} metadata asks, none read for 1 s: {data_replies} pieces sent, {rejects} rejects"
    );
    assert_eq!(data_replies + rejects, ASKS);
    assert!(rejects > 0, "every ask answered with 16 KiB");
    assert!(
        data_replies >= 64,
        "at least a send buffer's worth: {data_replies}"
    );
}

/// 50 connections from one host (127.0.0.2) that finish their handshake and then say nothing,
/// against a `pow seed` with 50 peer slots: it keeps 8 (`pow_engine::MAX_PEERS_PER_HOST`) and
/// closes the rest, and a download from 127.0.0.1 completes. Before, the idle connections took
/// every slot and the download was turned away.
#[test]
fn idle_peers_from_one_host_take_a_few_slots_and_leave_the_rest() {
    const PER_HOST: usize = 8; // pow_engine::MAX_PEERS_PER_HOST
    let seed = SmallSeed::start("per-host", 4);
    let (work, data, torrent, port) = (&seed.work, &seed.data, &seed.torrent, seed.port);
    let info_hash = seed.metainfo.info_hash.0;
    let mut idle: Vec<RawPeer> = (0..50u8)
        .map(|i| {
            let mut peer_id = *b"-XX0001-idle-peer-00";
            peer_id[19] = i;
            RawPeer::connect_from(
                std::net::Ipv4Addr::new(127, 0, 0, 2),
                port,
                info_hash,
                peer_id,
            )
        })
        .collect();
    let held = idle
        .iter_mut()
        .map(|peer| peer.closed_within(Duration::from_secs(1)))
        .filter(Option::is_none)
        .count();
    let out = work.path().join("out");
    let report = common::pow_download_json(
        torrent.to_str().unwrap(),
        &out,
        &[
            "--peer",
            &format!("127.0.0.1:{port}"),
            "--stall-timeout",
            "10",
        ],
    );
    println!("50 idle peers from 127.0.0.2: {held} kept; a download from 127.0.0.1: {report}");
    assert_eq!(held, PER_HOST);
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(same_bytes(data, &out.join("blob")), Ok(4 << 20));
}

/// 7 hosts (127.0.0.2 to 127.0.0.8) each connect 8 peers that finish their handshake and then
/// say nothing: 56 against a seed's 50 slots, so every slot is taken. A download from another
/// host (127.0.0.1) still completes: the host holding most slots gives one up for it. Before,
/// the idle peers kept every slot for good and the download was turned away.
#[test]
fn idle_peers_from_a_few_hosts_cannot_keep_every_slot() {
    const PER_HOST: u8 = 8; // pow_engine::MAX_PEERS_PER_HOST
    let seed = SmallSeed::start("few-hosts", 4);
    let (work, data, torrent, port) = (&seed.work, &seed.data, &seed.torrent, seed.port);
    let info_hash = seed.metainfo.info_hash.0;
    // The last host's connections past its first two each take a slot from a host holding
    // two more than it; its last one finds none and is closed before its handshake.
    let mut idle: Vec<RawPeer> = (2..9u8)
        .flat_map(|host| (0..PER_HOST).map(move |i| (host, i)))
        .filter_map(|(host, i)| {
            let mut peer_id = *b"-XX0001-idle-peer-00";
            (peer_id[18], peer_id[19]) = (host, i);
            let from = std::net::Ipv4Addr::new(127, 0, 0, host);
            RawPeer::try_connect_from(from, port, info_hash, peer_id)
        })
        .collect();
    let held = idle
        .iter_mut()
        .map(|peer| peer.closed_within(Duration::from_millis(100)))
        .filter(Option::is_none)
        .count();
    assert_eq!(
        held, 50,
        "the seed's 50 slots (pow_engine's default max_peers) are taken"
    );
    let out = work.path().join("out");
    let report = common::pow_download_json(
        torrent.to_str().unwrap(),
        &out,
        &[
            "--peer",
            &format!("127.0.0.1:{port}"),
            "--stall-timeout",
            "10",
        ],
    );
    println!("56 idle peers from 7 hosts: {held} kept; a download from 127.0.0.1: {report}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(same_bytes(data, &out.join("blob")), Ok(4 << 20));
}

/// A peer that connects to us and breaks the protocol (a `have` for a piece the torrent does
/// not have) on each of three connections, each from a new port: its host's next connection
/// is closed after the handshake, and a peer elsewhere (127.0.0.1) is still served. Before,
/// it could come back and break the protocol for as long as it liked.
#[test]
fn a_host_breaking_the_protocol_on_three_connections_is_closed_out() {
    let seed = SmallSeed::start("violator", 1);
    let (info_hash, port) = (seed.metainfo.info_hash.0, seed.port);
    let pieces = seed.metainfo.geometry.piece_count();
    let violator = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let connect = |i: u8| {
        let mut peer_id = *b"-XX0001-violator-000";
        peer_id[19] = i;
        RawPeer::connect_from(violator, port, info_hash, peer_id)
    };
    let closed_at_once = |peer: &mut RawPeer| peer.closed_within(Duration::from_secs(2)).is_some();
    for i in 0..3 {
        let mut peer = connect(i);
        assert!(
            !closed_at_once(&mut peer),
            "connection {i} closed before it did anything"
        );
        peer.send(HAVE, &pieces.to_be_bytes()).unwrap();
        assert!(
            closed_at_once(&mut peer),
            "a have past the last piece kept connection {i}"
        );
    }
    let mut after = connect(3);
    assert!(
        closed_at_once(&mut after),
        "the fourth connection from 127.0.0.2 was kept"
    );
    let (mut elsewhere, _) = RawPeer::connect_reserved(port, info_hash, [0; 8]);
    assert!(
        !closed_at_once(&mut elsewhere),
        "127.0.0.1 was closed out too"
    );
}

/// A BEP 6 peer, unchoked, that sends `request` + `cancel` for the same block in a loop and
/// reads nothing: each pair queues a 17-byte reject for it. Once 2 MiB of replies wait
/// (`MAX_UNSENT` in the engine's peer.rs) the seed stops reading from it, so its memory stays
/// bounded; it used to decode every pair and grow its send buffer without limit (about half
/// of what the peer sent), and the send stall took 60 s to drop the peer.
#[test]
fn a_peer_that_asks_and_cancels_in_a_loop_and_reads_nothing_holds_bounded_memory() {
    const CANCEL: u8 = 8;
    const FAST_BIT: [u8; 8] = [0, 0, 0, 0, 0, 0, 0, 0x04];
    let seed = SmallSeed::start("ask-cancel", 4);
    let pid = seed._seed.0.id();
    let mut peer = RawPeer::connect_with(seed.port, seed.metainfo.info_hash.0, FAST_BIT);
    peer.get_unchoked();
    let before = vm_hwm_kib(pid);
    let pair: Vec<u8> = [REQUEST, CANCEL]
        .iter()
        .flat_map(|&id| common::raw_peer::frame(id, &request_payload(0, 0, 16384)))
        .collect();
    let chunk = pair.repeat(30_000); // 1 MB
    peer.stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    // 64 MB of pairs, or until the seed stops reading them (the write then times out).
    let mut sent = 0usize;
    for _ in 0..64 {
        if peer.stream.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = vm_hwm_kib(pid);
    println!(
        "{} MB of request+cancel pairs taken, none of the rejects read; seed VmHWM {before} KiB \
         before, {after} KiB after (+{} KiB)",
        sent / 1_000_000,
        after - before
    );
    assert!(
        after - before < 8 * 1024,
        "seed memory grew by {} KiB",
        after - before
    );
}

/// 8 hosts (127.0.0.2 to 127.0.0.9) each open 32 connections that never send a handshake:
/// together the 256 pending handshakes a seed holds (`pow_engine::MAX_PENDING_HANDSHAKES`).
/// A download from another host (127.0.0.1) completes meanwhile: its connection takes the
/// place of the oldest pending one of a host holding most. It used to be closed at once
/// until the silent ones timed out (20 s), so 8 addresses could shut out everyone.
#[test]
fn silent_connections_from_a_few_hosts_cannot_fill_every_pending_place() {
    const PER_HOST: usize = 32; // pow_engine::MAX_PENDING_HANDSHAKES_PER_HOST
    let seed = SmallSeed::start("silent-hosts", 4);
    let silent = silent_connections(seed.port, 2..10, PER_HOST);
    // Every one of them is held (none closed at once), so the seed's places are all taken.
    let (held, _) = held_and_closed(&silent);
    assert_eq!(held, 8 * PER_HOST);
    let took = seed.timed_download();
    println!(
        "{} silent connections from 8 hosts ({held} held); a download from 127.0.0.1 \
         meanwhile in {took:.2} s",
        silent.len()
    );
    assert!(
        took < 10.0,
        "the download waited for the silent connections: {took:.1} s"
    );
}
