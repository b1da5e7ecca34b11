//! One connection per peer: when `pow download` and a peer dial each other (a seed that
//! connects back to the leechers a tracker lists does this; rqbit's did in the benchmarks), or
//! a peer dials twice, pow keeps one connection and closes the other. With both kept, end-game
//! fetched up to a pipeline's worth of blocks twice (about 10 MB of 1 GiB from rqbit's seed)
//! and pieces split between the two connections were read back to be hashed again.
//!
//! Both ends see both connections, so both must close the same one: pow keeps a connection that
//! already carries payload, else the one dialed by the lower peer id (pow's ids start `-PW`). Only connections from one host count as
//! the same peer: a peer id is no secret, and an impostor elsewhere claiming it must not close
//! the real peer's connection. The peer here is written by hand (`common::raw_peer`), because
//! which end dials first cannot be arranged with a real client.

mod common;

use common::raw_peer::{
    accept_within, End, RawPeer, BITFIELD, INTERESTED, PIECE, REQUEST, UNCHOKE,
};
use common::{pow, TempDir};
use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::time::Duration;

/// `pow download` of a 1 MiB torrent whose only peer is `listener`.
struct Downloader {
    child: Child,
    port: u16,
    listener: TcpListener,
    info_hash: [u8; 20],
    pieces: u32,
    _work: TempDir,
}

impl Downloader {
    fn start(tag: &str) -> Downloader {
        Self::start_bound(tag, "127.0.0.1")
    }

    /// Listening on `bind` (`::` listens on both IPv6 and IPv4).
    fn start_bound(tag: &str, bind: &str) -> Downloader {
        let work = TempDir::new(tag);
        let data = work.path().join("dup.bin");
        let content: Vec<u8> = (0..1_048_576u32).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(&data, &content).unwrap();
        let torrent = work.path().join("dup.torrent");
        let metainfo = common::create_torrent(&data, &torrent, 65536);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = listener.local_addr().unwrap().to_string();
        let port = common::free_port();
        let child = pow()
            .arg("download")
            .arg(&torrent)
            .arg("-o")
            .arg(work.path().join("out"))
            .args(["--peer", &peer, "--port", &port.to_string()])
            .args(["--bind", bind])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Downloader {
            child,
            port,
            listener,
            info_hash: metainfo.info_hash.0,
            pieces: metainfo.geometry.piece_count(),
            _work: work,
        }
    }

    /// The connection pow dialed, answered as `peer_id`.
    fn accept(&self, peer_id: &[u8; 20]) -> RawPeer {
        RawPeer::accept_as(&self.listener, self.info_hash, *peer_id)
    }

    /// A connection we dial to pow as `peer_id`.
    fn dial(&self, peer_id: &[u8; 20]) -> RawPeer {
        RawPeer::connect_as(self.port, self.info_hash, [0; 8], *peer_id).0
    }

    /// The connection serves: told we have every piece and unchoked, pow asks for blocks.
    fn assert_used(&self, peer: &mut RawPeer) {
        let bitfield = vec![0xff; self.pieces.div_ceil(8) as usize];
        peer.send(BITFIELD, &bitfield).unwrap();
        peer.wait_for(INTERESTED);
        peer.send(UNCHOKE, &[]).unwrap();
        peer.wait_for(REQUEST);
    }
}

impl Drop for Downloader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether pow closes a connection within a few seconds (`Closed`) or keeps it (`Quiet`).
fn fate(peer: &mut RawPeer) -> End {
    peer.drain(Duration::from_secs(3)).1
}

/// pow dials us and we dial pow, both as `id`: pow closes one connection within seconds and
/// uses the other, ours if `ours_kept`. Returns the kept connection (to keep it open).
fn dial_both_ways(pow: &Downloader, id: &[u8; 20], ours_kept: bool) -> RawPeer {
    let dialed_by_pow = pow.accept(id);
    std::thread::sleep(Duration::from_millis(200));
    let dialed_by_us = pow.dial(id);
    let (mut closed, mut kept) = match ours_kept {
        true => (dialed_by_pow, dialed_by_us),
        false => (dialed_by_us, dialed_by_pow),
    };
    assert_eq!(fate(&mut closed), End::Closed);
    assert_eq!(fate(&mut kept), End::Quiet);
    pow.assert_used(&mut kept);
    kept
}

#[test]
fn when_both_ends_dial_the_connection_dialed_by_the_lower_peer_id_is_kept() {
    // Lower than pow's `-PW...`: the connection we dialed is kept.
    let pow = Downloader::start("dup-lower");
    let _kept = dial_both_ways(&pow, b"-AA0001-dup-lower-id", true);
    // pow retries peers it is not connected to every 10 s; it knows it is connected to this
    // one, so it does not dial it again (to be closed again).
    let redial = accept_within(&pow.listener, Duration::from_secs(15));
    assert!(
        redial.is_none(),
        "pow dialed the peer it is connected to again"
    );
    println!("both dialed, peer id below pow's: pow closed its own connection, kept ours, no redial in 15 s");

    // Higher than pow's: the connection pow dialed is kept.
    let pow = Downloader::start("dup-higher");
    dial_both_ways(&pow, b"-ZZ0001-dup-higher-i", false);
    println!("both dialed, peer id above pow's: pow closed ours, kept its own");
}

#[test]
fn a_connection_that_carries_payload_is_not_displaced_by_a_later_dial() {
    // What a seed did to rqbit's leecher in the benchmarks: rqbit dialed pow's seed and was
    // fetching; seconds later pow's retry reached rqbit's listen port (a tracker still listed
    // it) and, its dial being by the lower peer id, closed the busy connection, whose blocks
    // in flight rqbit then fetched again. Here pow dials us at start, but we answer only after
    // our own connection (as a peer id above pow's, which the rule alone would close) has
    // delivered a block.
    let pow = Downloader::start("dup-busy");
    let id = *b"-ZZ0001-busy-conn-id";
    common::wait_listening(pow.port, "pow download");
    let mut busy = pow.dial(&id);
    pow.assert_used(&mut busy);
    let (index, begin, length) = busy.next_request(Duration::from_secs(10));
    let start = (index * 65536 + begin) as usize;
    let content: Vec<u8> = (0..1_048_576u32).map(|i| (i * 13 % 251) as u8).collect();
    let mut block = common::raw_peer::request_payload(index, begin, 0)[..8].to_vec();
    block.extend_from_slice(&content[start..start + length as usize]);
    busy.send(PIECE, &block).unwrap();
    // Time for pow to book the block (it sends nothing back for one); ample on a loaded
    // machine.
    std::thread::sleep(Duration::from_millis(1000));
    let mut late = pow.accept(&id);
    assert_eq!(fate(&mut late), End::Closed, "the later dial was kept");
    assert_eq!(
        fate(&mut busy),
        End::Quiet,
        "the connection that carried a block was closed"
    );
    println!("a block delivered, then pow's own dial answered by the same peer: the dial closed, the busy connection kept");
}

#[test]
fn a_peer_that_dials_twice_keeps_its_first_connection() {
    let pow = Downloader::start("dup-twice");
    let id = *b"-XX0001-dials-twice-";
    // pow's own dial to the listener is answered by another peer, which stays quiet.
    let _other = pow.accept(&common::raw_peer::unique_peer_id());
    let mut first = pow.dial(&id);
    std::thread::sleep(Duration::from_millis(200));
    let mut second = pow.dial(&id);
    assert_eq!(fate(&mut second), End::Closed);
    assert_eq!(fate(&mut first), End::Quiet);
    pow.assert_used(&mut first);
    println!("a peer id dialed twice: the second connection closed, the first used");
}

#[test]
fn a_peer_id_claimed_from_another_host_does_not_displace_the_peer() {
    let pow = Downloader::start("dup-impostor");
    // Below pow's id: were the impostor taken for this peer dialing back, its connection would
    // be the one kept and pow's own connection to the real peer closed.
    let id = *b"-AA0001-real-peer-id";
    let mut real = pow.accept(&id);
    std::thread::sleep(Duration::from_millis(200));
    let mut impostor =
        RawPeer::connect_from("127.0.0.2".parse().unwrap(), pow.port, pow.info_hash, id);
    assert_eq!(
        fate(&mut real),
        End::Quiet,
        "the real peer's connection was closed"
    );
    assert_eq!(fate(&mut impostor), End::Quiet);
    pow.assert_used(&mut real);
    println!("the same peer id from 127.0.0.2: a peer of its own; pow's connection to the real peer kept and used");
}

#[test]
fn a_dual_stack_listener_still_sees_one_peer() {
    // pow listens on `::`: our dial to 127.0.0.1 reaches it as `::ffff:127.0.0.1`, while the
    // connection pow dialed is to 127.0.0.1. The same host either way.
    let pow = Downloader::start_bound("dup-dual-stack", "::");
    dial_both_ways(&pow, b"-AA0001-dual-stack-i", true);
    println!("listening on ::, both dialed: one connection kept, as on 127.0.0.1");
}
