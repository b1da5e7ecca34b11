//! How many requests `pow download` puts in flight to a peer before it has measured the peer's
//! rate: 128 blocks (2 MiB), until 100 ms after the first block (then a second of the rate
//! measured so far, if more). The socket loop's one-second tick used to
//! fire at once, measure a zero rate and cut the pipeline to 16 before the first block came;
//! a 256 MiB download from one fast seed is over in about that second (see README
//! "First pipeline"). The peer is written by hand (`common::raw_peer`) because it must never
//! send a block, so that nothing but the first pipeline decides how many requests come.

mod common;

use common::raw_peer::{word, End, RawPeer, BITFIELD, INTERESTED, PIECE, REQUEST, UNCHOKE};
use common::{pow, pseudo_random_bytes, TempDir};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `FIRST_PIPELINE` in crates/engine/src/peer.rs.
const FIRST_PIPELINE: usize = 128;

/// `pow download` of `data` (one file, 256 KiB pieces) from a raw peer only, which tells it
/// it has every piece and unchokes it. Returns the download (killed when dropped), the peer,
/// when the peer's handshake was done and how long after it the unchoke went.
fn download_from_a_raw_seed(
    work: &TempDir,
    data: &[u8],
    peer_id: [u8; 20],
) -> (common::Killed, RawPeer, Instant, Duration) {
    let path = work.path().join("blob");
    std::fs::write(&path, data).unwrap();
    let torrent = work.path().join("blob.torrent");
    let metainfo = common::create_torrent(&path, &torrent, 262_144);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = listener.local_addr().unwrap().to_string();
    let child = pow()
        .arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(work.path().join("out"))
        .args(["--peer", &peer_addr])
        .args(["--port", &common::free_port().to_string()])
        .args(["--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = common::Killed(child);
    let mut peer = RawPeer::accept_as(&listener, metainfo.info_hash.0, peer_id);
    let connected = Instant::now();
    let pieces = metainfo.geometry.piece_count() as usize;
    peer.send(BITFIELD, &vec![0xff; pieces.div_ceil(8)])
        .unwrap();
    peer.wait_for(INTERESTED);
    peer.send(UNCHOKE, &[]).unwrap();
    let unchoked_after = connected.elapsed();
    (child, peer, connected, unchoked_after)
}

#[test]
fn a_fresh_peer_is_asked_for_128_blocks_at_once() {
    let work = TempDir::new("pipeline");
    // 4 MiB in 256 KiB pieces: 256 blocks, more than the first pipeline.
    let data = pseudo_random_bytes(4 << 20, 0x5eed);
    let (child, mut peer, _, unchoked_after) =
        download_from_a_raw_seed(&work, &data, *b"-XX0001-pipelinetest");
    // Requests come at once after the unchoke; none more until blocks arrive, and we send none.
    let (seen, _) = peer.drain(Duration::from_millis(600));
    let requests = seen.iter().filter(|&&id| id == REQUEST).count();
    drop(child);
    println!(
        "  unchoked {} ms after the handshake; {requests} requests in flight",
        unchoked_after.as_millis()
    );
    assert_eq!(requests, FIRST_PIPELINE, "message ids: {seen:?}");
}

/// A peer that answers every request at once is asked for more than the first pipeline before
/// the first second is over: the pipeline grows to a second of the rate measured since the
/// first block, 100 ms after it (`RAMP_AFTER` in crates/engine/src/peer.rs). Without that, a
/// seed answering 2 MiB in flight faster than it was asked again (aria2's, on loopback) was
/// held at 128 blocks for the whole of a download that takes less than a second.
#[test]
fn a_fast_peer_is_asked_for_more_within_the_first_second() {
    let work = TempDir::new("pipeline-ramp");
    let data = pseudo_random_bytes(64 << 20, 0x7a3b);
    let (child, mut peer, connected, _) =
        download_from_a_raw_seed(&work, &data, *b"-XX0001-pipelineramp");
    // Rounds: read every request pow has out (until it has been quiet for 10 ms: it sends no
    // more until blocks come), then answer them all. A round's count is pow's pipeline.
    let mut rounds = Vec::new();
    let mut served = 0usize;
    while connected.elapsed() < Duration::from_millis(800) && served < data.len() {
        let mut asked = Vec::new();
        loop {
            let wait = Duration::from_millis(if asked.is_empty() { 2000 } else { 10 });
            match peer.read(wait) {
                Ok((REQUEST, p)) => asked.push((word(&p, 0), word(&p, 4), word(&p, 8))),
                Ok(_) => {}
                Err(End::Quiet) if !asked.is_empty() => break,
                Err(end) => panic!("pow stopped asking: {end:?} after rounds {rounds:?}"),
            }
        }
        rounds.push(asked.len());
        for (index, begin, length) in asked {
            let at = index as usize * 262_144 + begin as usize;
            let mut payload = Vec::with_capacity(8 + length as usize);
            payload.extend_from_slice(&index.to_be_bytes());
            payload.extend_from_slice(&begin.to_be_bytes());
            payload.extend_from_slice(&data[at..at + length as usize]);
            peer.send(PIECE, &payload).unwrap();
            served += length as usize;
        }
        if rounds.last() > Some(&FIRST_PIPELINE) {
            break;
        }
    }
    drop(child);
    println!(
        "  requests in flight, round by round, in the first {} ms: {rounds:?}",
        connected.elapsed().as_millis()
    );
    assert!(
        rounds.iter().any(|&n| n > FIRST_PIPELINE),
        "never more than {FIRST_PIPELINE} in flight in {} ms: {rounds:?}",
        connected.elapsed().as_millis()
    );
}
