//! How many requests `pow download` puts in flight to a peer before it has measured the peer's
//! rate: 128 blocks (2 MiB), for the first second. The socket loop's one-second tick used to
//! fire at once, measure a zero rate and cut the pipeline to 16 before the first block came;
//! a 256 MiB download from one fast seed is over in about that second (see README
//! "First pipeline"). The peer is written by hand (`common::raw_peer`) because it must never
//! send a block, so that nothing but the first pipeline decides how many requests come.

mod common;

use common::raw_peer::{RawPeer, BITFIELD, INTERESTED, REQUEST, UNCHOKE};
use common::{pow, pseudo_random_bytes, TempDir};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `FIRST_PIPELINE` in crates/engine/src/peer.rs.
const FIRST_PIPELINE: usize = 128;

#[test]
fn a_fresh_peer_is_asked_for_128_blocks_at_once() {
    let work = TempDir::new("pipeline");
    let data = work.path().join("blob");
    // 4 MiB in 256 KiB pieces: 256 blocks, more than the first pipeline.
    std::fs::write(&data, pseudo_random_bytes(4 << 20, 0x5eed)).unwrap();
    let torrent = work.path().join("blob.torrent");
    let metainfo = common::create_torrent(&data, &torrent, 262_144);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = listener.local_addr().unwrap().to_string();
    let mut child = pow()
        .arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(work.path().join("out"))
        .args([
            "--peer",
            &peer_addr,
            "--port",
            &common::free_port().to_string(),
        ])
        .args(["--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut peer = RawPeer::accept_as(&listener, metainfo.info_hash.0, *b"-XX0001-pipelinetest");
    let connected = Instant::now();
    let pieces = metainfo.geometry.piece_count() as usize;
    peer.send(BITFIELD, &vec![0xff; pieces.div_ceil(8)])
        .unwrap();
    peer.wait_for(INTERESTED);
    peer.send(UNCHOKE, &[]).unwrap();
    let unchoked_after = connected.elapsed();
    // Requests come at once after the unchoke; none more until blocks arrive, and we send none.
    let (seen, _) = peer.drain(Duration::from_millis(600));
    let requests = seen.iter().filter(|&&id| id == REQUEST).count();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "  unchoked {} ms after the handshake; {requests} requests in flight",
        unchoked_after.as_millis()
    );
    assert_eq!(requests, FIRST_PIPELINE, "message ids: {seen:?}");
}
