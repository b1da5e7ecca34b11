//! One peer connection: handshake, then a loop over socket reads, socket writes, commands from
//! the session, and a once-a-second tick (pipeline size, keep-alive, timeouts).
//!
//! Serving is bounded so a hostile or slow peer costs little: a request is checked (a block
//! inside the torrent, at most 16 KiB, for a piece we have, while the peer is unchoked) and
//! queued; queued requests are read from disk only while less than [`SEND_WATERMARK`] bytes
//! wait to be sent. Reading the socket does not wait for writing, so a peer that does not read
//! still gets its messages decoded and its misbehaviour counted, except that with
//! [`MAX_QUEUED_REQUESTS`] queued, or [`MAX_UNSENT`] bytes of replies waiting for it, we stop
//! reading until some are served or sent: TCP then slows the peer down, and no honest request
//! is dropped (Transmission sends over 1,000 at once).
//! Requests outside the torrent end the connection at once; ignored requests (while choked,
//! or for a piece we lack) end it after [`MAX_IGNORED_REQUESTS`].
//!
//! Downloading is bounded the same way: a block we never asked this peer for is dropped
//! unwritten and ends the connection after [`MAX_UNREQUESTED_BLOCKS`]; the idle timeout counts
//! from the last *whole* message, so a peer that stops mid-message or sends a byte a second is
//! dropped as if silent.

use crate::encryption::{self, Ciphers};
use crate::inorder::InOrderHashes;
use crate::listener::{Pending, PendingHandshakes};
use crate::metadata::HandedPeer;
use crate::pex::PexLink;
use crate::received::{self, Unwritten, Writer};
use crate::transport::{self, Next, PeerListener, PeerStream, Transport};
use crate::{Inner, PeerCmd, PeerEntry, WireLink, MAX_STRIKES, SPARE_SEED_AT};
use bytes::{Buf, Bytes, BytesMut};
use pow_metainfo::Block;
use pow_picker::{PeerKey, Received};
use pow_wire::extension::{self, ExtHandshake, MetadataMessage, EXTENDED, EXTENDED_HANDSHAKE};
use pow_wire::pex::OUR_UT_PEX;
use pow_wire::{Bitfield, BlockRequest, Decoder, Handshake, Message};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Room kept free in a peer's read buffer before each socket read: a read takes up to this
/// much (16 blocks), so a fast peer costs one wake-up and one syscall per 16 blocks, not 4.
const READ_CHUNK: usize = 256 * 1024;

/// Requests kept in flight per peer until its rate is first measured, a second after the
/// connection starts (2 MiB: a 256 MiB download from one fast seed takes about that second).
/// Interleaved A/B on loopback, 12 runs each at 256 MiB, against 16: from rqbit's seed 726
/// against 607 MiB/s, from pow's 746 against 594; 64 and 256-500 did less.
const FIRST_PIPELINE: usize = 128;
/// Before that first second is over, the pipeline grows (never shrinks) to a second of the
/// rate measured since the first block, once this long has passed: a seed that answers 2 MiB
/// in flight faster than it is asked again (aria2's, on loopback) was held at 128 blocks for
/// the whole of a download that takes less than a second. Pinned to one core each, 256 MiB
/// from aria2's seed took 0.53-0.56 s at 128 and 0.42-0.44 s at 256 or 500; from rqbit's and
/// pow's seeds 128 to 500 made no difference.
const RAMP_AFTER: Duration = Duration::from_millis(100);
/// After the first second the pipeline follows the measured rate, within these bounds.
const MIN_PIPELINE: usize = 16;
const MAX_PIPELINE: usize = 500;
/// Aim to have this much of the peer's measured rate in flight (bandwidth-delay product with
/// a generous delay, so fast loopback peers are never starved).
const PIPELINE_SECONDS: f64 = 1.0;

/// Requests from a peer waiting to be served; with this many we read no more from the peer.
pub(crate) const MAX_QUEUED_REQUESTS: usize = 1024;
/// Requests we ignore (sent while choked, or for a piece we lack) before the peer is dropped. A choke crosses requests already on the wire, at most one pipeline (the
/// count restarts at each unchoke), so more than this is not a race but a flood.
pub(crate) const MAX_IGNORED_REQUESTS: u32 = 1024;
/// Metadata requests a peer may make (or 4 per metadata piece, if more): enough to fetch it a
/// few times over, not enough to use us as a 16 KiB-per-message amplifier.
const MAX_METADATA_REQUESTS: u32 = 64;
/// Stop reading blocks from disk for a peer while this much waits in its send buffer: a slow
/// reader holds at most this (plus one block) of our memory.
pub(crate) const SEND_WATERMARK: usize = 1024 * 1024;
/// A peer that reads slowly gets a smaller send buffer: what it takes in this long (at least
/// [`MIN_SEND_WATERMARK`]), so a choke or cancel reaches it behind at most that much, not
/// seconds of blocks (a 1 MiB/s leecher took a whole second of blocks after a choke).
const SEND_BUFFER_SECONDS: f64 = 0.25;
const MIN_SEND_WATERMARK: usize = 128 * 1024;
/// Blocks are read into the send buffer once less than this is left in it, and then up to
/// [`SEND_WATERMARK`] at once; the kernel's send buffer keeps the connection busy meanwhile.
/// Before a refill the unsent rest moves to the buffer's front (see `serve_queued`).
const SEND_REFILL_BELOW: usize = 64 * 1024;
/// With this much waiting to be sent to a peer we stop decoding its messages and reading its
/// socket until it takes some. Blocks stop at [`SEND_WATERMARK`]; only replies to its own
/// messages (a reject for each `cancel`, a choke and unchoke for each flip of interest) can
/// pass it, and a peer that sent those in a loop while reading nothing grew our memory
/// without limit (the send stall took 60 s, and reading 64 KiB every 50 s never met it).
const MAX_UNSENT: usize = 2 * SEND_WATERMARK;
/// A peer that takes none of our bytes for this long, while we have some for it, is dropped.
const SEND_STALL: Duration = Duration::from_secs(60);
/// Blocks a peer may send that we never asked it for before it is dropped. Honest peers send
/// none: blocks that cross our cancel, its choke or our snub release are excused (`withdrawn`).
/// Such blocks are never written; the few allowed cost at most 16 x 16 KiB of bandwidth.
pub(crate) const MAX_UNREQUESTED_BLOCKS: u32 = 16;
/// Withdrawn requests remembered per peer. Entries leave when their block arrives or we ask
/// for the block again; a peer that never sends them must not grow the set, so past this it is
/// cleared (a late block is then counted as unrequested, well within the limit above).
const MAX_WITHDRAWN: usize = 2 * MAX_PIPELINE;

/// How many times over a peer may say it lost pieces it had (a have-none or bitfield after
/// a fuller one), counted in whole torrents. BEP 3 peers never lose pieces; a client that
/// deletes and re-fetches may once or twice. Without a bound, 5-byte have-all/have-none pairs
/// would each make us walk every piece.
const LOSS_ALLOWANCE: u64 = 4;

/// Accepts connections from `listener` (TCP, or uTP on the UDP port of the same number) for as
/// long as the torrent runs. `pending` caps the handshakes still owed, over both listeners, as
/// a shared listener's are ([`crate::MAX_PENDING_HANDSHAKES`], and per host
/// [`crate::MAX_PENDING_HANDSHAKES_PER_HOST`]); more are closed at once.
pub(crate) async fn accept_loop(
    inner: Arc<Inner>,
    listener: PeerListener,
    pending: Arc<PendingHandshakes>,
) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let no_room = {
                        let state = inner.lock();
                        state.staying_wire_peers() >= inner.config.max_peers
                            && slot_to_give_up(&state, host_of(addr.ip())).is_none()
                    };
                    // Closed before it is counted, so it takes no other host's pending place.
                    if no_room {
                        continue;
                    }
                    let Some(permit) = pending.admit(addr) else {
                        continue;
                    };
                    let side = Side::Accepted(permit);
                    tokio::spawn(run_incoming(inner.clone(), stream, addr, side));
                }
                Err(_) if listener.gone() => return,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = crate::until_true(&mut shutdown) => return,
        }
    }
}

/// How a dial ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialed {
    /// The handshakes completed; the connection ran to its end.
    Connected,
    /// No connection (refused, timed out): the other transport may reach the peer.
    Unreachable,
    /// The peer closed it during the handshake: worth the other kind of handshake, then the
    /// other transport.
    Refused,
    /// The handshake failed otherwise (ourselves, a timeout, an encryption error).
    Failed,
    /// The peer broke the protocol, in the handshake (another torrent) or after it.
    Violated,
}

impl transport::DialOutcome for Dialed {
    fn next(&self) -> Next {
        match self {
            Dialed::Connected | Dialed::Failed | Dialed::Violated => Next::Stop,
            Dialed::Unreachable => Next::OtherTransport,
            Dialed::Refused => Next::OtherHandshake,
        }
    }
}

pub(crate) async fn connect(inner: Arc<Inner>, addr: SocketAddr) {
    let order = inner
        .config
        .utp
        .dial_order(inner.utp.get().map(Arc::as_ref));
    let outcome = transport::dial_in_turn(
        addr,
        order,
        inner.config.encryption,
        || *inner.shutdown.borrow(),
        |transport, encrypted| dial(&inner, addr, transport, encrypted),
    )
    .await;
    book_dial(&inner, addr, outcome);
}

/// Books how a dial of `addr` ended (`None`: no transport tried) on its known address: a
/// breach of the protocol is a strike, and [`crate::MAX_VIOLATIONS`] of them ban it.
fn book_dial(inner: &Inner, addr: SocketAddr, outcome: Option<Dialed>) {
    let mut state = inner.lock();
    state.connecting.remove(&addr);
    let Some(known) = state.known.get_mut(&addr) else {
        return;
    };
    match outcome {
        Some(Dialed::Violated) => {
            let violations = known.violated();
            if violations >= crate::MAX_VIOLATIONS {
                let why = format!("banned after {violations} protocol violations");
                ban(&mut state, addr, &why);
            }
        }
        outcome => {
            known.dialed(outcome != Some(Dialed::Unreachable));
            if let Some(outcome) = outcome {
                known.handshake_ended(outcome == Dialed::Connected);
            }
        }
    }
}

/// Dials `addr` over `transport` and runs the connection to its end.
async fn dial(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    transport: Transport,
    encrypted: bool,
) -> Dialed {
    let socket = inner.utp.get().map(Arc::as_ref);
    let from = inner.config.listen.map(|listen| listen.ip());
    let timeout = inner.config.connect_timeout;
    match transport::connect(transport, addr, socket, from, timeout).await {
        Ok(stream) => run(inner.clone(), stream, addr, Side::Dialed { encrypted }).await,
        Err(e) => {
            tracing::debug!("connect {addr} ({transport:?}): {e}");
            Dialed::Unreachable
        }
    }
}

/// Runs a connection whose handshakes the metadata phase did (a magnet link's), then books
/// the address as [`connect`] does.
pub(crate) async fn adopt(inner: Arc<Inner>, handed: HandedPeer) {
    let addr = handed.addr;
    let stream = handed.stream;
    let utp_socket = handed.utp_socket;
    let handed = Box::new(Routed {
        handshake: handed.handshake,
        buf: handed.buf,
        ciphers: handed.ciphers,
    });
    let outcome = run(inner.clone(), stream, addr, Side::Handed(handed)).await;
    if let Some(socket) = utp_socket {
        // The metadata phase's own socket (the peer port's was taken): it closes when the
        // last holder lets go, and the closed stream still has its FIN (and maybe data) to
        // deliver.
        tokio::spawn(async move {
            tokio::time::sleep(CLOSED_UTP_SOCKET_LINGER).await;
            drop(socket);
        });
    }
    book_dial(&inner, addr, Some(outcome));
}

/// How long a handed-over uTP connection's own socket outlives it (its FIN's resends).
const CLOSED_UTP_SOCKET_LINGER: Duration = Duration::from_secs(30);

/// The reserved bytes of our handshake: the extension protocol (BEP 10), the fast extension
/// (BEP 6), and the DHT (BEP 5) when we run a node.
pub(crate) fn our_reserved(dht: bool) -> [u8; 8] {
    let mut reserved = [0; 8];
    extension::set_extension_bit(&mut reserved);
    pow_wire::set_fast_bit(&mut reserved);
    if dht {
        pow_wire::set_dht_bit(&mut reserved);
    }
    reserved
}

/// How a connection began.
enum Side {
    /// We dialed it, with an encrypted handshake or a plaintext one.
    Dialed { encrypted: bool },
    /// We dialed it and the metadata phase did both handshakes ([`adopt`]).
    Handed(Box<Routed>),
    /// Our listener accepted it; the permit is one of the pending handshakes, given back once
    /// the handshake is read.
    Accepted(Pending),
    /// A shared listener accepted it and read the handshake.
    Routed(Box<Routed>),
}

/// An incoming connection whose handshake a shared listener already read, to route it; or
/// one the metadata phase handed over (then ours was sent too).
pub(crate) struct Routed {
    pub handshake: Handshake,
    /// Bytes read after the handshake (the peer may send its bitfield at once), decrypted.
    pub buf: BytesMut,
    pub ciphers: Ciphers,
}

/// Takes over a connection routed to this torrent by a [`crate::SharedListener`].
pub(crate) async fn accept_routed(
    inner: Arc<Inner>,
    stream: PeerStream,
    addr: SocketAddr,
    routed: Routed,
) {
    let full = inner.lock().wire_peers() >= inner.config.max_peers;
    if !full && !*inner.shutdown.borrow() {
        run_incoming(inner, stream, addr, Side::Routed(Box::new(routed))).await;
    }
}

/// Runs a connection a peer made to us, and books a breach of the protocol on its host: it
/// came from a port of its choosing and comes back from another, so its address is not worth
/// counting; after [`crate::MAX_VIOLATIONS`] the host's connections are closed, as one we
/// dial is banned by its address. Before, a peer could break the protocol on every connection
/// for as long as it liked.
async fn run_incoming(inner: Arc<Inner>, stream: PeerStream, addr: SocketAddr, side: Side) {
    let host = host_of(addr.ip());
    if run(inner.clone(), stream, addr, side).await != Dialed::Violated || is_local_swarm(host) {
        return;
    }
    let mut state = inner.lock();
    let violations = &mut state.violations_by_host;
    if violations.len() >= crate::MAX_KNOWN_PEERS && !violations.contains_key(&host) {
        // Hosts that break the protocol once and never again need not be kept for ever.
        violations.clear();
    }
    let count = violations.entry(host).or_default();
    *count += 1;
    let count = *count;
    if count >= crate::MAX_VIOLATIONS && state.banned_hosts.insert(host) {
        tracing::warn!("{addr}: banned after {count} protocol violations from {host}; no more connections from it");
    }
}

/// `127.0.0.1` or `::1`: where every process of a swarm on this machine comes from, so not a
/// host that caps or bans by address can single out.
fn is_local_swarm(host: IpAddr) -> bool {
    host == Ipv4Addr::LOCALHOST || host == Ipv6Addr::LOCALHOST
}

/// The host an address counts as for caps and bans: an IPv4 address (also written as
/// IPv6-mapped), or an IPv6 address's /64, which one machine is handed whole and may send from
/// any address of (`::1` stays itself).
pub(crate) fn host_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if v6 != Ipv6Addr::LOCALHOST => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        host => host,
    }
}

/// With every slot taken, a connection from `host` may have one that another host gives up:
/// the host holding most slots, if it holds two more than `host` does, gives up its least
/// useful peer (the one that exchanged least with us, one not interested first among equals).
/// Without it, a few hosts that connected and sat idle (7 addresses with 8 connections each,
/// or one IPv6 /56) kept every slot for good.
fn slot_to_give_up(state: &crate::State, host: IpAddr) -> Option<PeerKey> {
    // A peer already given up holds its slot until its task ends: it is not counted, nor
    // given up twice (every newcomer meanwhile took the same one, past `max_peers`).
    let staying = |p: &&PeerEntry| p.wire.is_some() && !p.giving_up;
    let mut by_host: HashMap<IpAddr, usize> = HashMap::new();
    for p in state.peers.values().filter(staying) {
        *by_host.entry(host_of(p.addr.ip())).or_default() += 1;
    }
    let ours = by_host.get(&host).copied().unwrap_or(0);
    let (&most, _) = by_host
        .iter()
        .filter(|&(_, &count)| count >= ours + 2)
        .max_by_key(|&(_, &count)| count)?;
    state
        .peers
        .iter()
        .filter(|(_, p)| staying(p) && host_of(p.addr.ip()) == most)
        .min_by_key(|(_, p)| (p.received + p.sent, p.interested))
        .map(|(&key, _)| key)
}

/// Room for a peer that connected to us and finished its handshake: `Ok(None)`, or
/// `Ok(Some(key))` once the peer `key` is closed to make it ([`slot_to_give_up`]); else why it
/// cannot stay. The peer slots were checked before the handshake, and a burst of connections
/// passed that check together (up to 255 over `max_peers`), so they are counted again here,
/// under the lock that adds the peer. A second connection of a peer already connected is let
/// through to the duplicate rule, which keeps one of the two.
fn no_room_for_incoming(
    state: &crate::State,
    addr: SocketAddr,
    peer_id: [u8; 20],
    config: &crate::EngineConfig,
) -> Result<Option<PeerKey>, &'static str> {
    let host = host_of(addr.ip());
    let from_host = || {
        state
            .peers
            .values()
            .filter(|p| p.wire.is_some() && host_of(p.addr.ip()) == host)
    };
    let same_address = |p: &&PeerEntry| p.addr.ip().to_canonical() == addr.ip().to_canonical();
    if from_host()
        .filter(same_address)
        .any(|p| p.wire.is_some_and(|wire| wire.peer_id == peer_id))
    {
        return Ok(None);
    }
    if !is_local_swarm(host) && from_host().count() >= crate::MAX_PEERS_PER_HOST {
        return Err("as many connections from its host as one host may have");
    }
    if state.staying_wire_peers() >= config.max_peers {
        return slot_to_give_up(state, host)
            .map(Some)
            .ok_or("every peer slot taken");
    }
    Ok(None)
}

/// Runs a connection to its end.
async fn run(inner: Arc<Inner>, stream: PeerStream, addr: SocketAddr, side: Side) -> Dialed {
    stream.tune();
    let outgoing = matches!(side, Side::Dialed { .. } | Side::Handed(_));
    let direction = match side {
        Side::Dialed { .. } => "out",
        Side::Handed(_) => "out, kept from the metadata phase",
        Side::Accepted(_) | Side::Routed(_) => "in",
    };
    let mut conn = match handshake(&inner, stream, side).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!("{addr}: handshake: {e}");
            if matches!(e, PeerError::Protocol(CONNECTED_TO_OURSELVES)) {
                // A tracker or a peer's exchange listed us under an address we do not know
                // as ours: never dial it again.
                inner.lock().banned.insert(addr);
            }
            return if e.is_closed_by_peer() {
                Dialed::Refused
            } else if e.is_violation() && outgoing {
                // Not for a peer that connected to us: a handshake for another torrent is what
                // an honest peer of the one this port served before sends (a shared listener
                // drops those uncounted too).
                Dialed::Violated
            } else {
                Dialed::Failed
            };
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let key = {
        let mut state = inner.lock();
        let banned_host = !outgoing
            && [addr.ip().to_canonical(), host_of(addr.ip())]
                .iter()
                .any(|host| state.banned_hosts.contains(host));
        if state.banned.contains(&addr) || banned_host {
            tracing::debug!("{addr}: banned, closed");
            return Dialed::Failed;
        }
        if !outgoing {
            match no_room_for_incoming(&state, addr, conn.peer_id, &inner.config) {
                Ok(None) => {}
                Ok(Some(given_up)) => {
                    if let Some(other) = state.peers.get_mut(&given_up) {
                        tracing::debug!(
                            "{}: closed, its host holds most slots; for {addr}",
                            other.addr
                        );
                        other.giving_up = true;
                        let _ = other.tx.send(PeerCmd::Close);
                    }
                }
                Err(full) => {
                    tracing::debug!("{addr}: {full}, closed");
                    return Dialed::Failed;
                }
            }
        }
        let link = WireLink {
            peer_id: conn.peer_id,
            outgoing,
            utp: conn.stream.is_utp(),
        };
        // Set when a duplicate connection we dialed is closed in favour of this one.
        let mut dialed_at = None;
        // Only a connection from the same host counts: anyone can claim a peer id it has seen,
        // and an impostor elsewhere must not displace the real peer's connection. Canonical,
        // since a dual-stack listener sees an IPv4 peer we dialed as `::ffff:a.b.c.d`.
        let host = addr.ip().to_canonical();
        let duplicate = state.peers.values_mut().find(|p| {
            p.addr.ip().to_canonical() == host
                && p.wire.is_some_and(|wire| wire.peer_id == conn.peer_id)
        });
        if let Some(other) = duplicate {
            // Two connections to one peer (both ends dialed, or it dialed twice) would fetch
            // the same blocks twice in end-game and split pieces between them. Each end sees
            // both connections, so both must keep the same one: one that already carries
            // payload (closing it would throw away the blocks in flight, and the peer's end
            // sees the same traffic); else the one dialed by the lower peer id; if the same
            // end dialed both, the first. The address we dialed is remembered on the one
            // kept, so that it is not dialed again.
            let dialer = |link: WireLink| match link.outgoing {
                true => inner.config.peer_id,
                false => link.peer_id,
            };
            let other_link = other.wire.expect("found by its link");
            let other_carries_payload = other.received > 0 || other.sent > 0;
            if !other_carries_payload && dialer(link) < dialer(other_link) {
                tracing::debug!(
                    "{addr}: also connected at {}; closing that connection",
                    other.addr
                );
                let _ = other.tx.send(PeerCmd::Close);
                dialed_at = other_link.outgoing.then_some(other.addr);
            } else {
                tracing::debug!("{addr}: already connected at {}; closing", other.addr);
                if outgoing {
                    other.dialed_at = Some(addr);
                }
                return Dialed::Connected;
            }
        }
        let pieces = inner.metainfo.geometry.piece_count();
        let mut entry = PeerEntry::new(addr, Some(link), Bitfield::new(pieces), tx);
        entry.dialed_at = dialed_at;
        entry.listen_addr = outgoing.then_some(addr);
        let key = state.add_peer(entry);
        if let Some(ss) = state.super_seed.as_mut() {
            ss.connected(key, pieces);
        }
        key
    };
    let (stream_kind, counter) = match (&conn.ciphers.send, conn.ciphers.encrypted_handshake) {
        (Some(_), _) => ("RC4", &inner.stats.connections_rc4),
        (None, true) => (
            "encrypted handshake",
            &inner.stats.connections_encrypted_handshake,
        ),
        (None, false) => ("plaintext", &inner.stats.connections_plaintext),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let utp = conn.stream.is_utp();
    if utp {
        inner.stats.connections_utp.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(
        "{addr}: connected ({direction}, {}, {stream_kind}), peer id {}",
        if utp { "uTP" } else { "TCP" },
        String::from_utf8_lossy(&conn.peer_id[..8])
    );
    let mut peer = Peer::new(inner.clone(), key, addr);
    let result = peer.run(&mut conn, rx).await;
    peer.finish_received().await;
    if let Err(e) = &result {
        tracing::info!("{addr}: closed: {e}");
    }
    let violated = result.as_ref().is_err_and(PeerError::is_violation);
    let mut state = inner.lock();
    if let Some(entry) = state.remove_peer(key) {
        if entry.unchoked_by_us {
            inner.choke_wake.notify_one();
        }
        let crate::State {
            super_seed, peers, ..
        } = &mut *state;
        if let Some(ss) = super_seed.as_mut() {
            for (key, piece) in ss.disconnected(key, &entry.bits, peers) {
                if let Some(entry) = peers.get(&key) {
                    let _ = entry.tx.send(PeerCmd::Have(piece));
                }
            }
        }
    }
    if violated {
        Dialed::Violated
    } else {
        Dialed::Connected
    }
}

struct Conn {
    stream: PeerStream,
    /// Bytes read and not yet decoded (decrypted as they are read).
    buf: BytesMut,
    ciphers: Ciphers,
    /// How much of the start of the peer's `out` buffer is encrypted already (RC4 only).
    sealed: usize,
    peer_id: [u8; 20],
    /// The peer's handshake reserved bytes (which extensions it speaks).
    reserved: [u8; 8],
    /// The metadata phase sent our opening (have-none to a BEP 6 peer): what we have is told
    /// by `have`s, since a bitfield may only open a connection.
    opened: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Wire(#[from] pow_wire::WireError),
    #[error("protocol: {0}")]
    Extension(#[from] extension::ExtensionError),
    /// Ends the connection for a reason that is no breach of the protocol (the peer closed
    /// it, went silent, asked for a piece we lost).
    #[error("{0}")]
    Protocol(&'static str),
    /// The peer broke the protocol: a strike against its address (see
    /// [`crate::MAX_VIOLATIONS`]).
    #[error("{0}")]
    Violation(&'static str),
    #[error("timed out")]
    Timeout,
    #[error("closed by us")]
    Closed,
    #[error("{0}")]
    Encryption(#[from] pow_mse::MseError),
}

impl PeerError {
    /// The peer ended the connection (closed or reset it): during a handshake, what a peer
    /// does that refuses the kind of handshake we sent.
    pub(crate) fn is_closed_by_peer(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            PeerError::Protocol(what) => *what == CLOSED_DURING_HANDSHAKE,
            PeerError::Io(e) => matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }

    /// The peer broke the protocol (a message our codec refuses, or one the session may not
    /// take from it), as opposed to a connection that ended for want of anything to do.
    pub(crate) fn is_violation(&self) -> bool {
        matches!(
            self,
            PeerError::Wire(_) | PeerError::Extension(_) | PeerError::Violation(_)
        )
    }
}

const CONNECTED_TO_OURSELVES: &str = "connected to ourselves";
pub(crate) const CLOSED_DURING_HANDSHAKE: &str = "closed during handshake";

async fn handshake(inner: &Inner, mut stream: PeerStream, side: Side) -> Result<Conn, PeerError> {
    let info_hash = inner.metainfo.info_hash.0;
    let mut ours = Handshake::new(info_hash, inner.config.peer_id);
    ours.reserved = our_reserved(inner.config.dht_port.is_some());
    let mut ours = ours.encode();
    let policy = inner.config.encryption;
    let deadline = Instant::now() + inner.config.handshake_timeout;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let opened = matches!(side, Side::Handed(_));
    let (theirs, ciphers, buf) = match side {
        Side::Routed(routed) => {
            let Routed {
                handshake,
                buf,
                mut ciphers,
            } = *routed;
            ciphers.seal(&mut ours);
            stream.write_all(&ours).await?;
            (handshake, ciphers, buf)
        }
        Side::Handed(handed) => {
            let Routed {
                handshake,
                buf,
                ciphers,
            } = *handed;
            (handshake, ciphers, buf)
        }
        Side::Dialed { encrypted: true } => {
            let initial = ours.to_vec();
            let mut ciphers =
                encryption::dial(&mut stream, &mut buf, info_hash, policy, initial, deadline)
                    .await?;
            let theirs = read_handshake(&mut stream, &mut buf, &mut ciphers, deadline).await?;
            (theirs, ciphers, buf)
        }
        Side::Dialed { encrypted: false } => {
            stream.write_all(&ours).await?;
            let mut ciphers = Ciphers::default();
            let theirs = read_handshake(&mut stream, &mut buf, &mut ciphers, deadline).await?;
            (theirs, ciphers, buf)
        }
        Side::Accepted(pending) => {
            let read = async {
                let mut ciphers =
                    encryption::accept(&mut stream, &mut buf, || vec![info_hash], policy, deadline)
                        .await?;
                ciphers.seal(&mut ours);
                stream.write_all(&ours).await?;
                let theirs = read_handshake(&mut stream, &mut buf, &mut ciphers, deadline).await?;
                Ok::<_, PeerError>((theirs, ciphers))
            };
            let (theirs, ciphers) = tokio::select! {
                read = read => read?,
                () = pending.evicted() => {
                    return Err(PeerError::Protocol(
                        "handshake given up: its place went to another host's",
                    ))
                }
            };
            (theirs, ciphers, buf)
        }
    };
    if theirs.info_hash != inner.metainfo.info_hash.0 {
        return Err(PeerError::Violation("handshake for another torrent"));
    }
    if theirs.peer_id == inner.config.peer_id {
        return Err(PeerError::Protocol(CONNECTED_TO_OURSELVES));
    }
    Ok(Conn {
        stream,
        buf,
        ciphers,
        sealed: 0,
        peer_id: theirs.peer_id,
        reserved: theirs.reserved,
        opened,
    })
}

/// Reads the peer's 68-byte handshake into `buf`, decrypting what it reads when the stream
/// is RC4 (what follows the handshake stays in `buf`).
pub(crate) async fn read_handshake(
    stream: &mut PeerStream,
    buf: &mut BytesMut,
    ciphers: &mut Ciphers,
    deadline: Instant,
) -> Result<Handshake, PeerError> {
    loop {
        if let Some(hs) = Handshake::decode(buf)? {
            return Ok(hs);
        }
        let n = encryption::read_more(stream, buf, deadline).await?;
        ciphers.open_tail(buf, n);
    }
}

/// What a bitfield, have-all or have-none says the peer has.
enum Claim {
    All,
    None,
    These(Bitfield),
}

struct Peer {
    inner: Arc<Inner>,
    key: PeerKey,
    addr: SocketAddr,
    decoder: Decoder,
    am_interested: bool,
    am_choking: bool,
    peer_choking: bool,
    /// Blocks were picked for this peer since its last choke: a choke then has bookings of
    /// its own to release in the picker.
    picked_since_choke: bool,
    peer_interested: bool,
    inflight: HashMap<(u32, u32), Block>,
    /// Requests we took back (cancelled, lost to its choke, released when it snubbed us) whose
    /// block may still arrive: not counted as unrequested. Bounded by [`MAX_WITHDRAWN`].
    withdrawn: HashSet<(u32, u32)>,
    /// Blocks received that we never asked this peer for (see [`MAX_UNREQUESTED_BLOCKS`]).
    unrequested: u32,
    pipeline: usize,
    /// When the last whole message arrived (a partial one does not count).
    last_recv: Instant,
    last_send: Instant,
    last_block: Instant,
    bytes_this_tick: u64,
    /// When the first block we asked for came, until the first tick (see [`RAMP_AFTER`]).
    first_block: Option<Instant>,
    ticked: bool,
    rate: f64,
    /// The highest `rate` measured: what this peer can send when asked for everything.
    best_rate: f64,
    /// A seed we spare had nothing to offer at the last pick: pick from it again next tick
    /// (a pick that finds nothing walks every candidate piece).
    spared_dry: bool,
    /// The peer has unchoked us at least once (see `Message::Unchoke`).
    first_unchoke_seen: bool,
    /// Our last extension handshake to it said `upload_only`.
    told_upload_only: bool,
    /// It sent a bitfield, have-all or have-none (see `replace_bits`).
    bits_claimed: bool,
    /// Pieces it said it had and then, by a later bitfield or have-none, that it had not.
    pieces_lost: u64,
    /// Bytes waiting to be written to the socket.
    out: BytesMut,
    /// How much `serve_queued` fills `out` to: [`SEND_WATERMARK`], or less for a slow reader.
    send_watermark: usize,
    /// When the last refill of `out` ended, and how much `out` then held: timed until it
    /// drains below [`SEND_REFILL_BELOW`], which sets `send_watermark`.
    refilled: Option<(Instant, usize)>,
    /// The peer's requests, checked, in arrival order.
    requests: VecDeque<BlockRequest>,
    /// The same requests as a set: a repeated request is dropped without scanning the queue.
    queued: HashSet<BlockRequest>,
    /// Requests ignored since we last unchoked the peer (see [`MAX_IGNORED_REQUESTS`]).
    ignored: u32,
    /// Last time the socket took bytes from `out` (or `out` was empty).
    last_write: Instant,
    /// The session's upload limit left the next queued block unpaid: serve again at this time.
    upload_wait: Option<Instant>,
    /// The session's download limit is owed for what we read: read again at this time.
    download_wait: Option<Instant>,
    /// Both sides set the BEP 10 bit: extended messages may be sent and are read.
    extensions: bool,
    /// Both sides set the BEP 6 bit: have-all/none, reject, suggest and allowed-fast are used.
    fast: bool,
    /// The id the peer wants for `ut_metadata` messages, from its extension handshake.
    their_ut_metadata: Option<u8>,
    /// Peer exchange with this peer ([`crate::pex`]).
    pex: PexLink,
    /// The peer told us its DHT port (BEP 5 `port`); later ones are ignored.
    dht_port_heard: bool,
    /// How many outstanding requests the peer keeps (`reqq`; at least 1).
    their_reqq: Option<usize>,
    /// Metadata pieces the peer asked for (see [`MAX_METADATA_REQUESTS`]).
    metadata_requests: u32,
    /// SHA-1 of the pieces this peer is sending us, fed as their blocks are written, while
    /// they are written on this task ([`Peer::write_received`]; a writer takes them over).
    hashes: InOrderHashes,
    /// Time spent writing and hashing on this task since the last tick.
    busy_writing: Duration,
    /// Blocks received and booked since the last socket read, written together after the
    /// messages in the buffer are handled (see [`Peer::hand_received`]).
    unwritten: Vec<Unwritten>,
    /// Writes and hashes this peer's blocks on a thread of its own, once it sends fast enough
    /// (see `EngineConfig::writer_after_busy` and [`received`]).
    writer: Option<Writer>,
    /// Queued blocks not in the page cache, being read in from disk on the blocking pool
    /// ([`Peer::start_warming`]); nothing is served until it is done.
    warming: Option<tokio::task::JoinHandle<()>>,
    /// A warm-up just finished: the next block is read even if it has to wait for the disk
    /// (it was evicted again), so a peer is served under any memory pressure.
    warmed: bool,
    /// We super-seed this peer: it hears of our pieces a few at a time ([`crate::superseed`]).
    super_seeded: bool,
    /// Super-seeding: the peer's first message (its bitfield, if it sends one) was handled,
    /// so what it lacks is known and it has been told of its first pieces.
    first_told: bool,
}

impl Peer {
    fn new(inner: Arc<Inner>, key: PeerKey, addr: SocketAddr) -> Peer {
        let pieces = inner.metainfo.geometry.piece_count();
        let now = Instant::now();
        Peer {
            inner,
            key,
            addr,
            decoder: Decoder::new(pieces).with_max_len(extension::MAX_EXTENDED_LEN),
            extensions: false,
            fast: false,
            their_ut_metadata: None,
            pex: PexLink::default(),
            dht_port_heard: false,
            their_reqq: None,
            upload_wait: None,
            download_wait: None,
            metadata_requests: 0,
            hashes: InOrderHashes::default(),
            busy_writing: Duration::ZERO,
            unwritten: Vec::new(),
            writer: None,
            warming: None,
            warmed: false,
            super_seeded: false,
            first_told: false,
            am_interested: false,
            am_choking: true,
            peer_choking: true,
            picked_since_choke: false,
            peer_interested: false,
            inflight: HashMap::new(),
            withdrawn: HashSet::new(),
            unrequested: 0,
            pipeline: FIRST_PIPELINE,
            last_recv: now,
            last_send: now,
            last_block: now,
            bytes_this_tick: 0,
            first_block: None,
            ticked: false,
            rate: 0.0,
            best_rate: 0.0,
            spared_dry: false,
            first_unchoke_seen: false,
            told_upload_only: false,
            bits_claimed: false,
            pieces_lost: 0,
            out: BytesMut::with_capacity(64 * 1024),
            send_watermark: SEND_WATERMARK,
            refilled: None,
            requests: VecDeque::new(),
            queued: HashSet::new(),
            ignored: 0,
            last_write: now,
        }
    }

    async fn run(
        &mut self,
        conn: &mut Conn,
        mut rx: mpsc::UnboundedReceiver<PeerCmd>,
    ) -> Result<(), PeerError> {
        let (have, super_seeded) = {
            let state = self.inner.lock();
            (state.picker.have().clone(), state.super_seed.is_some())
        };
        self.fast = pow_wire::has_fast_bit(&conn.reserved);
        self.super_seeded = super_seeded;
        if super_seeded {
            // Pieces are told one `have` at a time (see `reveal`).
            if self.fast && !conn.opened {
                Message::HaveNone.encode(&mut self.out);
            }
        } else if conn.opened {
            for piece in have.ones() {
                Message::Have(piece).encode(&mut self.out);
            }
        } else if self.fast && have.is_full() {
            Message::HaveAll.encode(&mut self.out);
        } else if self.fast && have.count() == 0 {
            Message::HaveNone.encode(&mut self.out);
        } else if have.count() > 0 {
            Message::Bitfield(have).encode(&mut self.out);
        }
        if let (Some(port), true) = (
            self.inner.config.dht_port,
            pow_wire::has_dht_bit(&conn.reserved),
        ) {
            Message::Port(port).encode(&mut self.out);
        }
        self.extensions = extension::has_extension_bit(&conn.reserved);
        if self.extensions {
            self.extension_handshake()
                .to_message()
                .encode(&mut self.out);
        }
        self.start_writer_if_busy();
        // The first tick a second from now, not at once: at once it measured a zero rate and
        // set the pipeline to its minimum before a single block came.
        let second = Duration::from_secs(1);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
        let mut shutdown = self.inner.shutdown.subscribe();
        let (mut reader, mut writer) = conn.stream.split();
        loop {
            // Whole messages already buffered are handled before reading more. Requests only
            // queue here, so this never waits for the peer to read.
            while self.requests.len() < MAX_QUEUED_REQUESTS && self.out.len() < MAX_UNSENT {
                let Some(message) = self.decoder.decode(&mut conn.buf)? else {
                    break;
                };
                self.last_recv = Instant::now();
                self.handle(message)?;
                if self.super_seeded && !self.first_told {
                    self.first_told = true;
                    self.reveal(|ss, peers, key| ss.refill(key, peers));
                }
            }
            self.hand_received().await?;
            self.serve_queued()?;
            self.fill_pipeline();
            let room = self.requests.len() < MAX_QUEUED_REQUESTS && self.out.len() < MAX_UNSENT;
            if conn.ciphers.send.is_some() {
                conn.ciphers.seal(&mut self.out[conn.sealed..]);
                conn.sealed = self.out.len();
            }
            if conn.buf.capacity() - conn.buf.len() < READ_CHUNK / 2 {
                // Whole blocks were split off and written; this reclaims their space (or
                // allocates anew if one is still referenced) so each read can take a lot.
                conn.buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                read = read_some(&mut reader, &mut conn.buf, self.read_cap()), if room && self.download_wait.is_none() => {
                    let n = read?;
                    if n == 0 {
                        return Err(PeerError::Protocol("peer closed the connection"));
                    }
                    conn.ciphers.open_tail(&mut conn.buf, n);
                    if let Some(limit) = &self.inner.config.download_limit {
                        self.download_wait = limit.take_owing(n).map(|wait| Instant::now() + wait);
                    }
                }
                written = writer.write(&self.out), if !self.out.is_empty() => {
                    let n = written?;
                    if n == 0 {
                        return Err(PeerError::Protocol("peer closed the connection"));
                    }
                    self.out.advance(n);
                    conn.sealed = conn.sealed.saturating_sub(n);
                    self.last_write = Instant::now();
                    self.last_send = self.last_write;
                    self.time_drain();
                }
                cmd = rx.recv() => match cmd {
                    Some(PeerCmd::Have(piece)) => {
                        Message::Have(piece).encode(&mut self.out);
                        self.update_interest();
                        self.tell_upload_only_when_done();
                    }
                    Some(PeerCmd::Cancel(block)) => {
                        if let Some(block) = self.take_back((block.piece.get(), block.begin)) {
                            Message::Cancel(BlockRequest {
                                index: block.piece.get(),
                                begin: block.begin,
                                length: block.length,
                            })
                            .encode(&mut self.out);
                        }
                    }
                    Some(PeerCmd::Close) | None => return Err(PeerError::Closed),
                    Some(PeerCmd::Wanted) => {
                        self.spared_dry = false;
                        self.update_interest();
                    }
                    Some(PeerCmd::Choke) => self.choke(),
                    Some(PeerCmd::Unchoke) => {
                        // Unless this task choked it since (it lost interest): the slot is
                        // counted by the flag, and the wire must agree with it.
                        let counted = self.inner.lock().peers.get(&self.key).is_some_and(|e| e.unchoked_by_us);
                        if counted {
                            self.unchoke();
                        }
                    }
                },
                _ = tick.tick() => self.on_tick()?,
                _ = wait_until(self.upload_wait), if self.upload_wait.is_some() => {}
                _ = wait_until(self.download_wait), if self.download_wait.is_some() => {
                    self.download_wait = None;
                }
                _ = crate::until_true(&mut shutdown) => return Err(PeerError::Closed),
                _ = warmed(&mut self.warming), if self.warming.is_some() => {
                    self.warming = None;
                    self.warmed = true;
                }
            }
        }
    }

    /// Under a download limit, a read takes at most [`crate::RateLimit::read_cap`].
    fn read_cap(&self) -> Option<usize> {
        let limit = self.inner.config.download_limit.as_ref()?;
        Some(limit.read_cap(READ_CHUNK))
    }

    fn on_tick(&mut self) -> Result<(), PeerError> {
        let now = Instant::now();
        if self.super_seeded {
            self.reveal(|ss, peers, key| ss.tick(key, peers));
        }
        // Exponential moving average of the receive rate, bytes per second.
        self.rate = 0.5 * self.rate + 0.5 * self.bytes_this_tick as f64;
        self.bytes_this_tick = 0;
        self.ticked = true;
        self.best_rate = self.best_rate.max(self.rate);
        self.spared_dry = false;
        {
            // Whether it lends follows its choke once a tick, not at each message: counting a
            // peer in or out walks its bitfield, and 5-byte choke/unchoke flips must not buy that.
            let mut state = self.inner.lock();
            if let Some(entry) = state.peers.get_mut(&self.key) {
                entry.rate = self.rate;
                let lending = !self.peer_choking && entry.lends_when_unchoking();
                state.set_lending(self.key, lending);
            }
        }
        let wanted = (self.rate * PIPELINE_SECONDS / 16384.0) as usize;
        self.pipeline = wanted.clamp(MIN_PIPELINE, MAX_PIPELINE);
        self.start_writer_if_busy();
        self.busy_writing = Duration::ZERO;
        if now.duration_since(self.last_recv) > self.inner.config.idle_timeout {
            return Err(PeerError::Protocol("silent for too long"));
        }
        if let Some(message) = self.pex.due(&self.inner, self.key, now) {
            message.encode(&mut self.out);
        }
        if now.duration_since(self.last_send) > self.inner.config.keepalive {
            Message::KeepAlive.encode(&mut self.out);
        }
        if self.out.is_empty() {
            self.last_write = now;
        } else if now.duration_since(self.last_write) > SEND_STALL {
            return Err(PeerError::Protocol("does not read what we send"));
        }
        if !self.inflight.is_empty()
            && now.duration_since(self.last_block) > self.inner.config.snub_timeout
        {
            // Snubbed: give its requests to others, keep one in flight to see if it recovers.
            tracing::info!(
                "{}: snubbed us; re-requesting its blocks elsewhere",
                self.addr
            );
            self.release_requests();
            self.pipeline = 1;
            self.last_block = now;
        }
        Ok(())
    }

    /// When writer threads are asked for ([`crate::EngineConfig::writer_after_busy`]), a peer
    /// busy enough in writing and hashing that another core could take half its work gets
    /// one. Slower peers stay inline: in a swarm of many connections on a busy machine a
    /// thread per peer only adds hand-overs (8 pow leechers from one super-seed, each with a
    /// writer per peer, passed pieces on later and the seed uploaded up to 2.9x the payload,
    /// not 1.0x). Asked each tick and once at the start (where only a zero threshold says yes).
    fn start_writer_if_busy(&mut self) {
        let busy = self.inner.config.writer_after_busy;
        if self.writer.is_none() && busy.is_some_and(|after| self.busy_writing >= after) {
            let hashes = std::mem::take(&mut self.hashes);
            self.writer = Some(Writer::start(self.inner.clone(), hashes));
        }
    }

    fn release_requests(&mut self) {
        let mut state = self.inner.lock();
        for block in self.inflight.values() {
            state.picker.request_failed(self.key, block);
        }
        drop(state);
        self.withdraw_all();
    }

    /// Moves one request from in flight to withdrawn.
    fn take_back(&mut self, key: (u32, u32)) -> Option<Block> {
        let block = self.inflight.remove(&key)?;
        self.remember_withdrawn(key);
        Some(block)
    }

    /// Moves every request in flight to withdrawn.
    fn withdraw_all(&mut self) {
        let keys: Vec<(u32, u32)> = self.inflight.drain().map(|(k, _)| k).collect();
        for key in keys {
            self.remember_withdrawn(key);
        }
    }

    fn remember_withdrawn(&mut self, key: (u32, u32)) {
        if self.withdrawn.len() >= MAX_WITHDRAWN {
            self.withdrawn.clear();
        }
        self.withdrawn.insert(key);
    }

    /// BEP 21 `upload_only`: we have every piece we want, and do not super-seed (a super-seed
    /// passes for a leecher).
    fn upload_only(&self) -> bool {
        let state = self.inner.lock();
        state.picker.is_complete() && state.super_seed.is_none()
    }

    /// Ours, saying whether we are [`Peer::upload_only`].
    fn extension_handshake(&mut self) -> ExtHandshake {
        self.told_upload_only = self.upload_only();
        ExtHandshake {
            upload_only: self.told_upload_only,
            ut_metadata: Some(extension::OUR_UT_METADATA),
            ut_pex: self.inner.pex_enabled().then_some(OUR_UT_PEX),
            metadata_size: Some(self.inner.metainfo.info_bytes.len() as u64),
            client: Some(concat!("pow ", env!("CARGO_PKG_VERSION")).to_string()),
            reqq: Some(MAX_QUEUED_REQUESTS as u32),
            yourip: Some(match self.addr.ip() {
                std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
                std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
            }),
            listen_port: (self.inner.config.listen.map(|a| a.port()))
                .or(self.inner.config.advertised_port),
        }
    }

    /// With the last wanted piece verified, our extension handshake again, now saying
    /// `upload_only` (BEP 21), so pow leechers stop counting us in their [`Share`]s.
    fn tell_upload_only_when_done(&mut self) {
        // The flag first: the session lock is taken only once complete.
        let complete = *self.inner.complete.borrow();
        if complete && self.extensions && !self.told_upload_only && self.upload_only() {
            self.extension_handshake()
                .to_message()
                .encode(&mut self.out);
        }
    }

    /// An extended message: the peer's extension handshake, a peer exchange, or a
    /// `ut_metadata` request we answer from the torrent's info dictionary. Other extensions
    /// are ignored.
    fn on_extended(&mut self, payload: &Bytes) -> Result<(), PeerError> {
        let (ext_id, body) = extension::split_extended(payload)?;
        if ext_id == EXTENDED_HANDSHAKE {
            let theirs = ExtHandshake::decode(&body)?;
            self.their_ut_metadata = theirs.ut_metadata;
            self.their_reqq = theirs.reqq.map(|n| (n as usize).max(1));
            self.pex.handshake(&self.inner, theirs.ut_pex);
            let mut state = self.inner.lock();
            let Some(entry) = state.peers.get_mut(&self.key) else {
                return Ok(());
            };
            if let Some(port) = theirs.listen_port.filter(|&p| p != 0) {
                // A port we dialed is known to work; one the peer names is taken otherwise.
                entry
                    .listen_addr
                    .get_or_insert(SocketAddr::new(self.addr.ip(), port));
            }
            if theirs.upload_only && !entry.upload_only {
                self.inner
                    .stats
                    .upload_only_received
                    .fetch_add(1, Ordering::Relaxed);
            }
            entry.upload_only = theirs.upload_only;
            state.recount_share(self.key, false);
            return Ok(());
        }
        if ext_id == OUR_UT_PEX {
            return Ok(self
                .pex
                .receive(&self.inner, self.addr, &body, Instant::now())?);
        }
        if ext_id != extension::OUR_UT_METADATA {
            return Ok(());
        }
        let (MetadataMessage::Request { piece }, Some(their_id)) =
            (MetadataMessage::decode(&body)?, self.their_ut_metadata)
        else {
            return Ok(());
        };
        let info = &self.inner.metainfo.info_bytes;
        let pieces = extension::metadata_pieces(info.len() as u64);
        self.metadata_requests += 1;
        if self.metadata_requests > MAX_METADATA_REQUESTS.max(4 * pieces) {
            return Err(PeerError::Violation("too many metadata requests"));
        }
        // A peer that asks and does not read gets rejects once a send buffer's worth waits
        // for it: at most 4 asks per piece, unread, held 4 times the info dictionary (160 MiB
        // for a 40 MiB one) per connection.
        let reply = if piece < pieces && self.out.len() < SEND_WATERMARK {
            let start = piece as usize * extension::METADATA_PIECE_LEN;
            let end = (start + extension::METADATA_PIECE_LEN).min(info.len());
            MetadataMessage::Data {
                piece,
                total_size: info.len() as u64,
                data: Bytes::copy_from_slice(&info[start..end]),
            }
        } else {
            MetadataMessage::Reject { piece }
        };
        reply.to_message(their_id).encode(&mut self.out);
        Ok(())
    }

    fn handle(&mut self, message: Message) -> Result<(), PeerError> {
        match message {
            Message::Unknown {
                id: EXTENDED,
                payload,
            } if self.extensions => self.on_extended(&payload)?,
            Message::Port(port) => {
                // Only the first: each is a ping from us, and a peer must not aim a stream of
                // them anywhere.
                if let (Some(nodes), false, true) =
                    (&self.inner.config.dht_nodes, self.dht_port_heard, port != 0)
                {
                    self.dht_port_heard = true;
                    let _ = nodes.send(SocketAddr::new(self.addr.ip(), port));
                }
            }
            Message::KeepAlive | Message::Unknown { .. } => {}
            Message::Choke => {
                tracing::debug!(
                    "{}: choked us with {} requests in flight",
                    self.addr,
                    self.inflight.len()
                );
                self.peer_choking = true;
                // Releasing our bookings walks every partial piece under the session lock: a
                // choke with nothing picked for the peer since the last has none to release,
                // and a stream of them must not buy that walk each time. (After an unchoke it
                // did: a peer streaming unchoke-choke pairs, 10 bytes each, had the session
                // walk every partial piece 26,000 times per 256 KiB read, holding every other
                // peer's task off the lock.)
                let picked = std::mem::take(&mut self.picked_since_choke);
                let booked = picked || !self.inflight.is_empty();
                self.withdraw_all();
                if booked {
                    self.inner.lock().picker.peer_choked(self.key);
                }
            }
            Message::Unchoke => {
                // `withdrawn` stays: requests we sent before its choke reached us may reach
                // it after it unchoked us again, and then it serves them.
                tracing::debug!("{}: unchoked us", self.addr);
                self.peer_choking = false;
                self.last_block = Instant::now();
                if !self.first_unchoke_seen {
                    // The first unchoke counts at once (a small download may end before the
                    // first tick); later flips wait for the tick, see `on_tick`.
                    self.first_unchoke_seen = true;
                    let mut state = self.inner.lock();
                    let lends = state
                        .peers
                        .get(&self.key)
                        .is_some_and(PeerEntry::lends_when_unchoking);
                    state.set_lending(self.key, lends);
                }
            }
            Message::Interested => {
                self.peer_interested = true;
                self.set_interested(true);
                self.consider_unchoke();
            }
            Message::NotInterested => {
                self.peer_interested = false;
                self.set_interested(false);
                // A super-seeded peer loses interest each time it has fetched what it was
                // told of, and regains it at the next `have`: choking it each time would
                // only add round trips (and requests crossing the choke).
                if !self.super_seeded {
                    if self.am_choking {
                        // The choker may have counted it in a slot since (its `Unchoke` not
                        // yet handled): uncounted here, that command finds the flag clear and
                        // does not unchoke a peer that has lost interest. Left set, the peer
                        // was unchoked outside the count, and rounds, which choke only
                        // interested peers, never took the slot back.
                        if let Some(entry) = self.inner.lock().peers.get_mut(&self.key) {
                            entry.unchoked_by_us = false;
                        }
                    }
                    self.choke();
                }
            }
            Message::Have(piece) => {
                let mut state = self.inner.lock();
                let entry = state.peers.get_mut(&self.key).expect("registered");
                if piece >= entry.bits.len() {
                    return Err(PeerError::Violation("have for a piece that does not exist"));
                }
                let new = !entry.bits.get(piece);
                if new {
                    entry.bits.set(piece);
                    let now_seed = entry.bits.is_full();
                    entry.became_seed |= now_seed;
                    let lending = entry.lending;
                    state.picker.peer_have(piece);
                    if lending {
                        state.picker.lender_have(piece);
                    }
                    if now_seed {
                        state.recount_share(self.key, false);
                    }
                }
                // Its pieces only grow, so a `have` can only make it interesting, and only for a
                // piece we need: checked for that piece alone. Re-checking every bit on each
                // one let a peer repeating `have` on a big torrent hold the session lock for a
                // pass over the whole bitfield per 9 bytes it sent.
                let becomes_interesting = new && !self.am_interested && state.picker.needs(piece);
                drop(state);
                // A repeated `have` says nothing new (and must not count twice).
                if self.super_seeded && new {
                    self.reveal(|ss, peers, key| ss.have(key, piece, peers));
                }
                if becomes_interesting {
                    self.update_interest();
                }
            }
            Message::Bitfield(bits) => self.replace_bits(Claim::These(bits))?,
            Message::HaveAll
            | Message::HaveNone
            | Message::Suggest(_)
            | Message::AllowedFast(_)
            | Message::Reject(_)
                if !self.fast =>
            {
                return Err(PeerError::Violation(
                    "fast extension message from a peer that did not negotiate it",
                ));
            }
            Message::HaveAll => {
                self.inner
                    .stats
                    .have_all_received
                    .fetch_add(1, Ordering::Relaxed);
                self.replace_bits(Claim::All)?;
            }
            Message::HaveNone => self.replace_bits(Claim::None)?,
            // Hints we do not act on: pieces are picked rarest first, and we do not request
            // while choked.
            Message::Suggest(_) | Message::AllowedFast(_) => {}
            Message::Reject(r) => {
                tracing::debug!("{}: reject {r:?}", self.addr);
                self.inner
                    .stats
                    .rejects_received
                    .fetch_add(1, Ordering::Relaxed);
                // The block goes back to the picker at once instead of waiting for a snub.
                if let Some(block) = self.take_back((r.index, r.begin)) {
                    self.inner.lock().picker.request_rejected(self.key, &block);
                }
            }
            Message::Request(r) => self.queue_request(r)?,
            Message::Cancel(r) => {
                if self.queued.remove(&r) {
                    self.requests.retain(|q| *q != r);
                    // BEP 6: a request is answered once, by its piece or a reject, even when
                    // cancelled; clients that wait for it keep the slot until then.
                    if self.fast {
                        Message::Reject(r).encode(&mut self.out);
                    }
                }
            }
            Message::Piece { index, begin, data } => self.receive(index, begin, data)?,
        }
        Ok(())
    }

    /// Super-seeding: runs one of [`crate::superseed::SuperSeed`]'s steps for this peer and
    /// sends each `have` it decides on to the peer it is for (this one included, by its
    /// channel like the others, so the order of `have`s stays that of the decisions).
    fn reveal(
        &self,
        step: impl FnOnce(
            &mut crate::superseed::SuperSeed,
            &HashMap<PeerKey, PeerEntry>,
            PeerKey,
        ) -> Vec<crate::superseed::Reveal>,
    ) {
        let mut state = self.inner.lock();
        let State {
            super_seed, peers, ..
        } = &mut *state;
        let Some(ss) = super_seed.as_mut() else {
            return;
        };
        for (key, piece) in step(ss, peers, self.key) {
            if let Some(entry) = peers.get(&key) {
                let _ = entry.tx.send(PeerCmd::Have(piece));
            }
        }
    }

    fn update_interest(&mut self) {
        let state = self.inner.lock();
        let interesting = state
            .peers
            .get(&self.key)
            .is_some_and(|e| state.picker.interesting(&e.bits));
        drop(state);
        if interesting != self.am_interested {
            self.am_interested = interesting;
            if interesting {
                Message::Interested.encode(&mut self.out);
            } else {
                Message::NotInterested.encode(&mut self.out);
            }
        }
    }

    /// What the peer has, from a bitfield, have-all or have-none, replacing what it said
    /// before. Any number are taken (aria2 1.36 sends several on one connection); the work is
    /// by the pieces that changed, so a repeat costs nothing beyond reading it. A 5-byte
    /// have-all/have-none that changes much is paid for by [`LOSS_ALLOWANCE`].
    fn replace_bits(&mut self, claim: Claim) -> Result<(), PeerError> {
        let mut state = self.inner.lock();
        let entry = state.peers.get_mut(&self.key).expect("registered");
        let pieces = entry.bits.len();
        let new = match claim {
            Claim::All if entry.bits.is_full() => None,
            Claim::None if entry.bits.count() == 0 => None,
            Claim::These(bits) if bits == entry.bits => None,
            Claim::All => Some(Bitfield::full(pieces)),
            Claim::None => Some(Bitfield::new(pieces)),
            Claim::These(bits) => Some(bits),
        };
        let first = !std::mem::replace(&mut self.bits_claimed, true);
        let Some(new) = new else {
            return Ok(());
        };
        tracing::debug!(
            "{}: now has {} pieces, had {}",
            self.addr,
            new.count(),
            entry.bits.count()
        );
        // A seed by a later claim became one while connected: it is not spared (see
        // `PeerEntry::spared`), as after the `have` of its last piece.
        entry.became_seed = new.is_full() && !first;
        state.set_lending(self.key, false);
        let State { peers, picker, .. } = &mut *state;
        let entry = peers.get_mut(&self.key).expect("registered");
        for (piece, has) in entry.bits.changes(&new) {
            if has {
                picker.peer_have(piece);
            } else {
                picker.peer_lost(piece);
                self.pieces_lost += 1;
            }
        }
        entry.bits = new;
        state.recount_share(self.key, false);
        drop(state);
        if self.pieces_lost > LOSS_ALLOWANCE * u64::from(pieces.max(1)) {
            return Err(PeerError::Violation(
                "says again and again that it lost pieces it had",
            ));
        }
        self.update_interest();
        Ok(())
    }

    /// Chokes the peer (if unchoked): its queued requests are dropped, as BEP 3 says.
    fn choke(&mut self) {
        if self.am_choking {
            return;
        }
        self.am_choking = true;
        // BEP 6: every request we drop is rejected, so the peer can ask someone else now.
        if self.fast {
            for r in self.requests.drain(..) {
                Message::Reject(r).encode(&mut self.out);
            }
        }
        self.requests.clear();
        self.queued.clear();
        tracing::debug!("{}: choking", self.addr);
        Message::Choke.encode(&mut self.out);
        if let Some(entry) = self.inner.lock().peers.get_mut(&self.key) {
            entry.unchoked_by_us = false;
        }
    }

    /// Unchokes the peer (the choker gave it a slot and counted it).
    fn unchoke(&mut self) {
        if self.am_choking {
            tracing::debug!("{}: unchoking", self.addr);
            self.am_choking = false;
            self.ignored = 0;
            Message::Unchoke.encode(&mut self.out);
        }
    }

    /// Records the peer's interest for the choker; a slot it leaves starts a round early.
    fn set_interested(&self, interested: bool) {
        let mut state = self.inner.lock();
        let Some(entry) = state.peers.get_mut(&self.key) else {
            return;
        };
        entry.interested = interested;
        tracing::debug!("{}: interested {interested}", self.addr);
        let slot_freed = !interested && entry.unchoked_by_us && !self.super_seeded;
        drop(state);
        if slot_freed {
            self.inner.choke_wake.notify_one();
        }
    }

    fn consider_unchoke(&mut self) {
        if !self.am_choking {
            return;
        }
        let mut state = self.inner.lock();
        let unchoked = state.peers.values().filter(|p| p.unchoked_by_us).count();
        if unchoked < self.inner.config.upload_slots && state.picker.have().count() > 0 {
            if let Some(entry) = state.peers.get_mut(&self.key) {
                entry.unchoked_by_us = true;
            }
            drop(state);
            self.unchoke();
        }
    }

    /// Checks a request and queues it. A block outside the torrent ends the connection; a
    /// request we will not serve is ignored and counted.
    fn queue_request(&mut self, r: BlockRequest) -> Result<(), PeerError> {
        if self
            .inner
            .metainfo
            .geometry
            .block(r.index, r.begin, r.length)
            .is_none()
        {
            return Err(PeerError::Violation("request outside the torrent"));
        }
        // The queue has room: the read loop stops decoding when it is full.
        let (have, lost) = {
            let state = self.inner.lock();
            (
                state.picker.have().get(r.index),
                state.lost.contains(&r.index),
            )
        };
        if lost && !self.fast {
            // We told it we have this piece; BitTorrent cannot take that back, and without
            // BEP 6 `reject` the request would wait for the peer's own timeout. Closing frees
            // its requests at once, and a new connection gets our current bitfield. A fast
            // peer gets a reject below instead.
            return Err(PeerError::Protocol("asked for a piece we lost"));
        }
        if !self.am_choking && have {
            if self.queued.insert(r) {
                self.requests.push_back(r);
            }
            return Ok(());
        }
        if self.fast {
            Message::Reject(r).encode(&mut self.out);
        }
        self.ignored += 1;
        if self.ignored > MAX_IGNORED_REQUESTS {
            return Err(PeerError::Violation(
                "too many requests while choked or for pieces we lack",
            ));
        }
        Ok(())
    }

    /// After a write: once the last refill has drained, the peer's read rate sets the next
    /// refill's size.
    fn time_drain(&mut self) {
        let Some((at, filled)) = self.refilled else {
            return;
        };
        if self.out.len() >= SEND_REFILL_BELOW {
            return;
        }
        self.refilled = None;
        let seconds = at.elapsed().as_secs_f64().max(1e-6);
        let rate = filled.saturating_sub(self.out.len()) as f64 / seconds;
        self.send_watermark =
            ((rate * SEND_BUFFER_SECONDS) as usize).clamp(MIN_SEND_WATERMARK, SEND_WATERMARK);
    }

    /// Reads queued blocks from disk into the send buffer, up to the watermark. A block that
    /// cannot be read (its file was truncated or removed under us) makes its piece lost: never
    /// served or advertised again, and this peer, which asked for it, is closed (see
    /// `queue_request`). A short read is an error, so no byte we do not have is ever sent.
    fn serve_queued(&mut self) -> Result<(), PeerError> {
        let mut served = 0u64;
        self.upload_wait = None;
        if self.requests.is_empty() || self.out.len() >= SEND_REFILL_BELOW || self.warming.is_some()
        {
            return Ok(());
        }
        // Room for the whole refill now, while little is left to move: otherwise `BytesMut`
        // fills the space after the sent bytes first and, once that runs out, moves the
        // megabyte it holds to the front (profiled: 4-6% of a seed's CPU). A peer we only
        // download from never gets here, so it keeps its small buffer.
        self.out
            .reserve(SEND_WATERMARK + pow_wire::MAX_MESSAGE_LEN as usize);
        while self.out.len() < self.send_watermark {
            let Some(&r) = self.requests.front() else {
                break;
            };
            if let Some(limit) = &self.inner.config.upload_limit {
                if let Err(wait) = limit.take(r.length) {
                    self.upload_wait = Some(Instant::now() + wait);
                    break;
                }
            }
            self.requests.pop_front();
            self.queued.remove(&r);
            let block = self
                .inner
                .metainfo
                .geometry
                .block(r.index, r.begin, r.length)
                .expect("checked when queued");
            let start = self.out.len();
            self.out
                .extend_from_slice(&pow_wire::piece_header(r.index, r.begin, r.length));
            let length = r.length as usize;
            self.out.reserve(length);
            let room = &mut self.out.spare_capacity_mut()[..length];
            let storage = &self.inner.storage;
            let read = if std::mem::take(&mut self.warmed) {
                storage
                    .read_block(block.piece, block.begin, room)
                    .map(|()| true)
            } else {
                storage.read_block_cached(block.piece, block.begin, room)
            };
            match read {
                Ok(true) => {}
                Ok(false) => {
                    self.out.truncate(start);
                    self.requests.push_front(r);
                    self.queued.insert(r);
                    if let Some(limit) = &self.inner.config.upload_limit {
                        limit.refund(r.length);
                    }
                    self.start_warming();
                    break;
                }
                Err(e) if e.is_out_of_descriptors() => {
                    // Not the data's fault: this connection goes (its socket frees a
                    // descriptor too), the piece stays served.
                    self.out.truncate(start);
                    tracing::warn!("{}: cannot read piece {}: {e}", self.addr, r.index);
                    return Err(PeerError::Protocol("out of file descriptors"));
                }
                Err(e) => {
                    self.out.truncate(start);
                    self.lose_piece(r.index, &e);
                    return Err(PeerError::Protocol("asked for a piece we lost"));
                }
            }
            // SAFETY: the read said it filled all `length` bytes after the header.
            unsafe { self.out.set_len(start + 13 + length) };
            served += u64::from(r.length);
        }
        if served > 0 {
            self.refilled = Some((Instant::now(), self.out.len()));
            self.inner
                .stats
                .uploaded
                .fetch_add(served, Ordering::Relaxed);
            let mut state = self.inner.lock();
            state.sent_to.add(self.addr, served);
            if let Some(entry) = state.peers.get_mut(&self.key) {
                entry.sent += served;
            }
        }
        Ok(())
    }

    /// Reads the next send buffer's worth of queued blocks into the page cache on the
    /// blocking pool: a read from a cold disk waits for the device, and on a peer task it
    /// would hold up every task of its runtime worker.
    fn start_warming(&mut self) {
        let geometry = &self.inner.metainfo.geometry;
        let mut blocks = Vec::new();
        let mut bytes = 0usize;
        for r in &self.requests {
            if bytes >= self.send_watermark {
                break;
            }
            if let Some(block) = geometry.block(r.index, r.begin, r.length) {
                blocks.push((block.piece, block.begin, r.length));
                bytes += r.length as usize;
            }
        }
        tracing::debug!(
            "{}: reading blocks in from disk ({} bytes)",
            self.addr,
            bytes
        );
        let inner = self.inner.clone();
        self.warming = Some(tokio::task::spawn_blocking(move || {
            // A read error here is met again, and reported, by the read after it.
            let _ = inner.storage.warm(&blocks);
        }));
    }

    fn lose_piece(&mut self, index: u32, error: &pow_storage::StorageError) {
        let mut state = self.inner.lock();
        if state.lost.insert(index) {
            state.picker.piece_lost(index);
            tracing::warn!("piece {index} can no longer be read, no longer serving it: {error}");
        }
    }

    fn receive(&mut self, index: u32, begin: u32, data: Bytes) -> Result<(), PeerError> {
        let len = data.len() as u64;
        let stats = &self.inner.stats;
        let asked = match self.inflight.remove(&(index, begin)) {
            // Left unchecked, the picker refuses the block but keeps it booked to this peer,
            // whose pipeline slot is free again: a peer answering every request so would book
            // every block of the torrent while it stays.
            Some(block) if block.length as usize != data.len() => {
                stats.wasted.fetch_add(len, Ordering::Relaxed);
                return Err(PeerError::Violation(
                    "sent a block of another length than asked",
                ));
            }
            Some(_) => true,
            None => false,
        };
        if !asked && !self.withdrawn.remove(&(index, begin)) {
            // Never asked of this peer: not written, not credited, and only a few allowed.
            stats.wasted.fetch_add(len, Ordering::Relaxed);
            self.unrequested += 1;
            if self.unrequested > MAX_UNREQUESTED_BLOCKS {
                return Err(PeerError::Violation("too many blocks we did not request"));
            }
            return Ok(());
        }
        self.bytes_this_tick += len;
        if asked {
            // Only blocks we are waiting for show the peer is not snubbing us.
            self.last_block = Instant::now();
            if self.first_block.is_none() && !self.ticked {
                self.first_block = Some(self.last_block);
            }
        }
        // `sole`: every block of the piece's current attempt came from this peer (the set is
        // cleared when a piece is verified or fails).
        let (received, sole) =
            self.inner
                .lock()
                .book_block(self.key, self.addr, index, begin, data.len() as u32);
        if received == Received::Unwanted {
            stats.wasted.fetch_add(len, Ordering::Relaxed);
            return Ok(());
        }
        stats.downloaded.fetch_add(len, Ordering::Relaxed);
        self.unwritten.push(Unwritten {
            index,
            begin,
            data,
            piece_done: matches!(received, Received::PieceDone { .. }),
            sole,
        });
        Ok(())
    }

    /// Writes and hashes the blocks booked since the last call on this task (a peer with no
    /// [`Writer`], and the fuzz harness).
    fn write_received(&mut self) -> Result<(), PeerError> {
        let started = Instant::now();
        let result = received::write_blocks(&self.inner, &mut self.hashes, &mut self.unwritten)
            .map_err(|e| PeerError::Io(std::io::Error::other(e)));
        self.busy_writing += started.elapsed();
        result
    }

    /// Hands the blocks booked since the last call to this peer's [`Writer`], waiting while
    /// its queue is full; without one, writes them here.
    async fn hand_received(&mut self) -> Result<(), PeerError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let Some(writer) = &self.writer else {
            return self.write_received();
        };
        writer
            .send(std::mem::take(&mut self.unwritten))
            .await
            .map_err(PeerError::Protocol)?;
        match &*self.inner.failed.borrow() {
            Some(failed) => Err(PeerError::Io(std::io::Error::other(failed.error.clone()))),
            None => Ok(()),
        }
    }

    /// The blocks booked before the loop ended (an error in a later message of the same read)
    /// are written, and every block this peer sent is written and hashed before it is gone.
    async fn finish_received(&mut self) {
        let _ = self.hand_received().await;
        if let Some(writer) = self.writer.take() {
            writer.finish().await;
        }
    }

    /// A seed we spare ([`PeerEntry::spared`]; web seeds have their own loop).
    fn is_spared_seed(&self, state: &State) -> bool {
        state.peers.get(&self.key).is_some_and(PeerEntry::spared)
    }

    /// Up to `want` blocks to ask a seed for. A seed is spared: it is asked only for pieces
    /// that no peer lending to us has and that are ours by [`Share`] (the swarm's pow leechers
    /// split what only seeds have, so two of them rarely fetch the same piece from one). With
    /// none of those left, it is asked for anything once the lending peers send less than
    /// [`SPARE_SEED_AT`] of its best rate (or it has sent nothing yet): a leecher does not
    /// wait long on slow peers, or for a share whose owner is not fetching it.
    fn pick_from_seed(&mut self, state: &mut State, want: usize) -> Vec<Block> {
        let mut blocks = Vec::new();
        if !self.spared_dry {
            let State {
                picker,
                peers,
                share,
                ..
            } = &mut *state;
            let Some(entry) = peers.get(&self.key) else {
                return Vec::new();
            };
            blocks = picker.pick_sparing(self.key, &entry.bits, want, share);
            self.spared_dry = blocks.is_empty();
        }
        // The lenders' rate walks every peer: only asked when the sparing pick is empty. A
        // seed that has sent nothing yet counts as fast: else lenders that send nothing at all
        // (0 < 0.5 * 0 never holds) kept it from ever being asked.
        // (Its first second's bytes are not in `best_rate` yet: that one it must wait for, or
        // a swarm's leechers all go back to the seed for anything in their first second.)
        let sent_nothing = self.best_rate == 0.0 && self.bytes_this_tick == 0;
        let seed_rate = if sent_nothing {
            f64::INFINITY
        } else {
            self.best_rate
        };
        if blocks.is_empty() && state.lending_rate() < SPARE_SEED_AT * seed_rate {
            let State { picker, peers, .. } = &mut *state;
            if let Some(entry) = peers.get(&self.key) {
                blocks = picker.pick(self.key, &entry.bits, want);
            }
        }
        blocks
    }

    /// Before the first tick, a pipeline of a second of the rate measured since the first block,
    /// if that is more (see [`RAMP_AFTER`]).
    fn ramp_up(&mut self) {
        let Some(first) = self.first_block.filter(|_| !self.ticked) else {
            return;
        };
        let elapsed = first.elapsed();
        if elapsed < RAMP_AFTER {
            return;
        }
        let rate = self.bytes_this_tick as f64 / elapsed.as_secs_f64();
        let wanted = (rate * PIPELINE_SECONDS / 16384.0) as usize;
        self.pipeline = self.pipeline.max(wanted.min(MAX_PIPELINE));
    }

    fn fill_pipeline(&mut self) {
        self.ramp_up();
        // BEP 10 `reqq`: never more outstanding requests than the peer said it keeps.
        let limit = self.pipeline.min(self.their_reqq.unwrap_or(usize::MAX));
        if self.peer_choking || !self.am_interested || self.inflight.len() >= limit {
            return;
        }
        let want = limit - self.inflight.len();
        self.picked_since_choke = true;
        let blocks = {
            let inner = Arc::clone(&self.inner);
            let mut state = inner.lock();
            if self.is_spared_seed(&state) {
                self.pick_from_seed(&mut state, want)
            } else {
                let State { picker, peers, .. } = &mut *state;
                match peers.get(&self.key) {
                    Some(entry) => picker.pick(self.key, &entry.bits, want),
                    None => Vec::new(),
                }
            }
        };
        for block in blocks {
            Message::Request(BlockRequest {
                index: block.piece.get(),
                begin: block.begin,
                length: block.length,
            })
            .encode(&mut self.out);
            let key = (block.piece.get(), block.begin);
            self.withdrawn.remove(&key);
            self.inflight.insert(key, block);
        }
        if self.inflight.is_empty() {
            // Nothing left that this peer can give us.
            self.update_interest();
        }
    }
}

use crate::State;

/// One read into `buf`, of at most `cap` bytes when there is a cap.
async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    cap: Option<usize>,
) -> std::io::Result<usize> {
    match cap {
        Some(cap) => reader.take(cap as u64).read_buf(buf).await,
        None => reader.read_buf(buf).await,
    }
}

/// Waits for a warm-up ([`Peer::start_warming`]) to finish.
async fn warmed(warming: &mut Option<tokio::task::JoinHandle<()>>) {
    if let Some(handle) = warming {
        let _ = handle.await;
    }
}

async fn wait_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Hashes a completed piece on the blocking pool and records the verdict; a bad piece's
/// blocks are hashed too, for [`record_verdict`]'s smart ban.
/// False when the piece could not be read back (no verdict: see [`read_back_failed`]).
pub(crate) async fn verify_piece(inner: Arc<Inner>, index: u32) -> bool {
    // Other peers (or web seeds) may have booked blocks of it that they have yet to write.
    inner.until_written(index).await;
    let storage = inner.storage.clone();
    let piece = inner.metainfo.geometry.piece(index).expect("valid piece");
    let expected = *inner.metainfo.piece_hash(piece);
    let verdict = tokio::task::spawn_blocking(move || {
        use sha1::Digest;
        let data = storage.read_piece(piece)?;
        let good = sha1::Sha1::digest(&data).as_slice() == expected;
        Ok((good, (!good).then(|| block_hashes(&data))))
    })
    .await
    .unwrap_or_else(|panicked| {
        Err(pow_storage::StorageError::Io {
            path: "the read-back check".into(),
            source: std::io::Error::other(panicked.to_string()),
        })
    });
    match verdict {
        Ok((good, bad_blocks)) => {
            record_verdict(&inner, index, good, bad_blocks);
            true
        }
        Err(e) => {
            read_back_failed(&inner, index, &e);
            false
        }
    }
}

/// A piece could not be read back to be checked. That is our disk's doing, not its senders':
/// none is struck (a read error used to count as a bad piece, and banned honest peers). Out of
/// descriptors, a passing state, the piece is fetched again; any other error ends the download,
/// as a write error does.
fn read_back_failed(inner: &Arc<Inner>, index: u32, error: &pow_storage::StorageError) {
    let mut state = inner.lock();
    state.senders.remove(&index);
    state.picker.piece_failed(index);
    if error.is_out_of_descriptors() {
        tracing::warn!("cannot read piece {index} back to check it ({error}); fetching it again");
        for peer in state.peers.values().filter(|p| p.bits.get(index)) {
            let _ = peer.tx.send(PeerCmd::Wanted);
        }
        return;
    }
    drop(state);
    tracing::error!("cannot read piece {index} back to check it: {error}");
    inner.fail_download("read back", error);
}

/// SHA-1 of each block of a piece's bytes.
fn block_hashes(piece: &[u8]) -> Vec<[u8; 20]> {
    use sha1::Digest;
    piece
        .chunks(pow_metainfo::BLOCK_SIZE as usize)
        .map(|block| sha1::Sha1::digest(block).into())
        .collect()
}

/// Records a piece's hash check: good, it is ours and every peer hears `have`; bad, its blocks
/// are freed for re-request. A bad piece all from one peer gives it a strike. One whose blocks
/// came from several peers gives none: with `bad_blocks` (the SHA-1 of each block of the bad
/// attempt) each sender's block is kept as a suspect, and once the piece verifies, whoever
/// sent a block that differs from the good one is banned (libtorrent's smart ban); meanwhile
/// each sender is on parole (whole pieces of its own, see `pow_picker`), so a peer that sends
/// the same bad block into every attempt cannot keep the piece from ever verifying. Striking
/// every sender instead let a peer that slipped bad blocks into an honest seed's pieces get
/// that seed banned; without `bad_blocks` (a web seed's in-memory check) every sender is
/// struck, as before.
pub(crate) fn record_verdict(
    inner: &Arc<Inner>,
    index: u32,
    ok: bool,
    bad_blocks: Option<Vec<[u8; 20]>>,
) {
    let piece = inner.metainfo.geometry.piece(index).expect("valid piece");
    let mut state = inner.lock();
    let senders = state.senders.remove(&index).unwrap_or_default();
    if ok {
        state.picker.piece_verified(index);
        if let (false, Some(sender)) = (senders.mixed, senders.blocks.first()) {
            state.picker.end_parole(sender.key);
        }
        crate::trace::event(&format!("verified {index}"));
        if state.picker.is_complete() {
            // Before the `have`s: a peer task reads it when it sends the last one (see
            // `tell_upload_only_when_done`). `send_replace` keeps the value even when nobody
            // waits yet (`send` would drop it), so a later `wait_complete` returns.
            inner.complete.send_replace(true);
        }
        for peer in state.peers.values() {
            let _ = peer.tx.send(PeerCmd::Have(index));
        }
        if let Some(suspects) = state.suspects.remove(&index) {
            tokio::spawn(smart_ban(inner.clone(), index, suspects));
        }
        return;
    }
    state.picker.piece_failed(index);
    for peer in state.peers.values().filter(|p| p.bits.get(index)) {
        let _ = peer.tx.send(PeerCmd::Wanted);
    }
    let size = u64::from(inner.metainfo.geometry.piece_size(piece));
    inner.stats.hash_failures.fetch_add(1, Ordering::Relaxed);
    inner.stats.wasted.fetch_add(size, Ordering::Relaxed);
    inner.stats.downloaded.fetch_sub(
        size.min(inner.stats.downloaded.load(Ordering::Relaxed)),
        Ordering::Relaxed,
    );
    match bad_blocks {
        Some(hashes) if senders.mixed => {
            tracing::warn!(
                "piece {index} failed its hash check; fetching it again (its blocks came from \
                 {} peers: each gets whole pieces of its own until one verifies, and whoever \
                 sent a bad block is banned once this one verifies)",
                senders.peers().len()
            );
            for sender in &senders.blocks {
                state.picker.put_on_parole(sender.key);
            }
            let mut two_faced = Vec::new();
            let suspects = state.suspects.entry(index).or_default();
            for sender in &senders.blocks {
                let block = (sender.begin / pow_metainfo::BLOCK_SIZE) as usize;
                let Some(&sha1) = hashes.get(block) else {
                    continue;
                };
                // One entry per block and sender, however often the piece fails: a peer
                // that sends it again with the same bytes adds nothing, and one that sends
                // other bytes than before sent a bad block at least once (libtorrent bans
                // it as well).
                match suspects
                    .iter()
                    .find(|s| s.begin == sender.begin && s.addr == sender.addr)
                {
                    Some(earlier) if earlier.sha1 != sha1 => {
                        two_faced.push((sender.addr, sender.begin))
                    }
                    Some(_) => {}
                    None => suspects.push(crate::Suspect {
                        begin: sender.begin,
                        addr: sender.addr,
                        sha1,
                    }),
                }
            }
            for (addr, begin) in two_faced {
                ban(
                    &mut state,
                    addr,
                    &format!(
                        "banned: it sent the block at {begin} of piece {index} twice, with \
                         other bytes each time"
                    ),
                );
            }
        }
        _ => {
            tracing::warn!("piece {index} failed its hash check; fetching it again");
            for addr in senders.peers() {
                strike(&mut state, addr);
            }
        }
    }
}

/// A strike against the peer at `addr`; the last one bans it and closes its connection. Those
/// of a peer that connected to us count against its host, as its ban does: counted by its
/// address, a peer that sent two bad pieces, went and came back from another port, never
/// reached three.
fn strike(state: &mut crate::State, addr: SocketAddr) {
    let counted_at = match connected_to_us(state, addr) {
        true => SocketAddr::new(host_of(addr.ip()), 0),
        false => addr,
    };
    let strikes = state.strikes.entry(counted_at).or_default();
    *strikes += 1;
    // Pieces already in flight may fail after the ban, before the peer's task has closed:
    // ban (and log) once.
    if *strikes >= MAX_STRIKES {
        ban(
            state,
            addr,
            &format!("banned after {MAX_STRIKES} bad pieces"),
        );
    }
}

/// Compares the blocks of failed attempts at piece `index` with the piece now verified on
/// disk, and bans every sender of a block that differs.
async fn smart_ban(inner: Arc<Inner>, index: u32, suspects: Vec<crate::Suspect>) {
    let storage = inner.storage.clone();
    let piece = inner.metainfo.geometry.piece(index).expect("valid piece");
    let good =
        tokio::task::spawn_blocking(move || storage.read_piece(piece).map(|d| block_hashes(&d)))
            .await;
    let Ok(Ok(good)) = good else {
        return;
    };
    let mut state = inner.lock();
    for suspect in suspects {
        let block = (suspect.begin / pow_metainfo::BLOCK_SIZE) as usize;
        if good.get(block) != Some(&suspect.sha1) {
            let why = format!(
                "its block at {} of piece {index} differs from the verified piece's",
                suspect.begin
            );
            ban(&mut state, suspect.addr, &format!("banned: {why}"));
        }
    }
}

/// Bans the peer at `addr` (once: logged the first time, `what` saying why) and closes its
/// connections. A peer that connected to us is banned by its host as well: it came from a
/// port of its choosing, and would come back from another (libtorrent bans by address too).
/// One we dialed is banned at the address we dial, and others on its host stay welcome.
fn ban(state: &mut crate::State, addr: SocketAddr, what: &str) {
    if !state.banned.insert(addr) {
        return;
    }
    if connected_to_us(state, addr) {
        state.banned_hosts.insert(addr.ip().to_canonical());
        tracing::warn!("{addr}: {what}; no more connections from {}", addr.ip());
    } else {
        tracing::warn!("{addr}: {what}");
    }
    for peer in state.peers.values().filter(|p| p.addr == addr) {
        let _ = peer.tx.send(PeerCmd::Close);
    }
}

/// Whether the peer at `addr` connected to us (from a port of its choosing).
fn connected_to_us(state: &crate::State, addr: SocketAddr) -> bool {
    match state.peers.values().find(|p| p.addr == addr) {
        Some(peer) => peer.wire.is_some_and(|wire| !wire.outgoing),
        // Gone already (a smart ban decides later): we dial only addresses we know.
        None => !state.known.contains_key(&addr),
    }
}

/// The `peer_session` fuzz target's way in (see [`crate::fuzzing`]): registers a peer on
/// `inner` and feeds `Peer::handle` (what the socket loop calls per message) the messages decoded
/// from `input`, with the pipeline and serving steps the loop runs after each; stops at the
/// first error, as the connection would. Returns how many messages were handled.
pub(crate) fn fuzz_session(
    inner: &Arc<Inner>,
    fast: bool,
    extensions: bool,
    input: &[u8],
) -> usize {
    let addr: SocketAddr = "127.0.0.2:6881".parse().expect("address");
    let (tx, _rx) = mpsc::unbounded_channel();
    let key = {
        let pieces = inner.metainfo.geometry.piece_count();
        let entry = PeerEntry::new(addr, None, Bitfield::new(pieces), tx);
        inner.lock().add_peer(entry)
    };
    let mut peer = Peer::new(inner.clone(), key, addr);
    peer.fast = fast;
    peer.extensions = extensions;
    let mut buf = BytesMut::from(input);
    let mut handled = 0;
    while let Ok(Some(message)) = peer.decoder.decode(&mut buf) {
        handled += 1;
        let handled_ok = peer.handle(message).is_ok();
        // Blocks booked before an error are still written, as the socket loop's end does.
        if !handled_ok | peer.write_received().is_err() {
            break;
        }
        peer.fill_pipeline();
        if peer.serve_queued().is_err() || (handled % 64 == 0 && peer.on_tick().is_err()) {
            break;
        }
        // What we would send is dropped: a real socket would take it.
        peer.out.clear();
    }
    inner.lock().remove_peer(key);
    handled
}

#[cfg(test)]
mod host_tests {
    use super::*;

    /// A choke with nothing picked for the peer since its last choke leaves the picker alone;
    /// after an unchoke it walked every partial piece again (a stream of unchoke-choke pairs
    /// bought one walk each). Shown with a block booked to the peer, which such a walk frees.
    #[test]
    fn unchoke_choke_pairs_with_nothing_asked_between_walk_no_piece() {
        let dir = std::env::temp_dir().join(format!("pow-engine-flips-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("piece.bin");
        std::fs::write(&source, vec![7u8; 32768]).unwrap();
        let options = pow_metainfo::create::CreateOptions {
            piece_length: Some(32768),
            ..Default::default()
        };
        let metainfo = Arc::new(
            pow_metainfo::create::create(&source, &options)
                .unwrap()
                .metainfo,
        );
        let storage =
            Arc::new(pow_storage::Storage::new(metainfo.clone(), &dir.join("out")).unwrap());
        let picker = pow_picker::Picker::new(metainfo.geometry.clone(), Bitfield::new(1));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let torrent = crate::Torrent::start(storage, picker, crate::EngineConfig::default())
                .await
                .unwrap();
            let inner = torrent.inner.clone();
            let addr: SocketAddr = "127.0.0.2:6881".parse().unwrap();
            let (tx, _rx) = mpsc::unbounded_channel();
            let mut all = Bitfield::new(1);
            all.set(0);
            let key = {
                let mut state = inner.lock();
                let key = state.add_peer(PeerEntry::new(addr, None, all.clone(), tx));
                assert_eq!(state.picker.pick(key, &all, 1).len(), 1, "block 0 booked");
                key
            };
            let mut peer = Peer::new(inner.clone(), key, addr);
            for _ in 0..1000 {
                peer.handle(Message::Unchoke).unwrap();
                peer.handle(Message::Choke).unwrap();
            }
            // Block 0 is still booked to the peer: no choke walked the partial pieces.
            let booked = inner.lock().picker.requests_of(key);
            assert_eq!(booked.len(), 1, "{booked:?}");
        });
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Caps and bans count an IPv6 /64 as one host (one machine is handed one whole and may
    /// send from any address of it), an IPv4 address as itself however it is written.
    #[test]
    fn a_host_is_an_ipv4_address_or_an_ipv6_64() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(host_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            host_of(ip("2001:db8:1:2:ffff:1:2:3")),
            host_of(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            host_of(ip("2001:db8:1:3::1")),
            host_of(ip("2001:db8:1:2::1"))
        );
        assert_eq!(host_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(host_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(host_of(ip("::1")), ip("::1"));
        assert!(is_local_swarm(host_of(ip("::ffff:127.0.0.1"))));
        assert!(!is_local_swarm(host_of(ip("127.0.0.2"))));
    }
}
