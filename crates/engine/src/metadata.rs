//! Fetching a torrent's info dictionary from peers (BEP 9) when all we have is its info-hash
//! (a magnet link). Several peers are asked at once; the first complete copy whose SHA-1 is the
//! info-hash wins. A peer that sends a wrong copy, rejects, or stalls is dropped and others are
//! tried as addresses arrive (from trackers or the link's `x.pe`); while trackers or the DHT
//! still look, a failed address is dialed again 10 s later, then 20, 40, ... s, at most every
//! 5 minutes, as the session redials. Peers are dialed over TCP
//! and uTP in the order [`crate::Utp`] says, as the session dials them.
//!
//! The connection the dictionary came over, and every other one past its handshakes, is
//! handed to the session ([`HandedPeer`]), as libtorrent keeps them: the handshake already
//! says what the session's says (the same peer id, extensions), and what the peer sent besides
//! metadata (its bitfield, extension handshake) is kept for the session to read. A second dial
//! would cost a round trip, and Transmission refuses a new connection from an address it just
//! saw close for about 10 s.

use crate::encryption::{self, Ciphers, Encryption};
use crate::peer::{our_reserved, read_handshake, PeerError};
use crate::transport::{self, DialOutcome, Next, PeerStream, Transport};
use crate::{KnownPeer, RateLimit, Utp};
use bytes::{Buf, Bytes, BytesMut};
use pow_utp::UtpSocket;
use pow_wire::extension::{
    self, ExtHandshake, MetadataMessage, EXTENDED, EXTENDED_HANDSHAKE, METADATA_PIECE_LEN,
    OUR_UT_METADATA,
};
use pow_wire::{Handshake, Message};
use sha1::{Digest, Sha1};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Largest info dictionary accepted (libtorrent's default limit is also in the tens of MiB;
/// a 2-million-piece torrent's is 40 MiB, far past any dataset we publish).
pub const MAX_METADATA_SIZE: u64 = 48 << 20;
/// Peers asked at once.
const PARALLEL_PEERS: usize = 8;
/// Time a peer has for each metadata piece after its extension handshake (more under a rate
/// limit, [`piece_timeout`]): not for the whole dictionary, which under a rate limit or from a
/// slow peer can take minutes.
const PIECE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest message read: the bitfield of a torrent whose dictionary is
/// [`MAX_METADATA_SIZE`] (20 bytes a piece), which may come before the metadata; metadata
/// pieces are 16 KiB. It was 8 MiB, held for each of up to 8 peers at once.
const MAX_FRAME: usize = 1 + (MAX_METADATA_SIZE as usize / 20).div_ceil(8);
/// Once the dictionary came, how long the other connections have to stop at a message's end and
/// be handed over (those still dialing or in their handshake are closed).
const HAND_OVER_WAIT: Duration = Duration::from_millis(100);
/// The peer's other messages kept for the session, at most: a bitfield of a dictionary of
/// [`MAX_METADATA_SIZE`] (2.5 million pieces) is 315 KB. Past it the connection is not handed
/// over.
const MAX_KEPT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("no peer sent the metadata within {0:?} ({1})")]
    TimedOut(Duration, String),
    #[error("no peer to ask for the metadata: every peer source ended without naming one")]
    NoPeers,
    #[error("no peer left to ask for the metadata ({0})")]
    NoneLeft(String),
}

/// Peers asked at once: all [`PARALLEL_PEERS`], but under a rate limit one per 64 KiB/s of it.
/// Each fetches the whole dictionary, so more would only split the limit between copies.
fn parallel_peers(limit: Option<&RateLimit>) -> usize {
    limit.map_or(PARALLEL_PEERS, |l| {
        (l.bytes_per_second() / (64 * 1024)).clamp(1, PARALLEL_PEERS as u64) as usize
    })
}

/// [`PIECE_TIMEOUT`], plus, under a rate limit, the time a piece takes at the share of it each
/// peer asked at once gets.
fn piece_timeout(limit: Option<&RateLimit>) -> Duration {
    PIECE_TIMEOUT
        + limit.map_or(Duration::ZERO, |l| {
            let share = l.bytes_per_second() as f64 / parallel_peers(Some(l)) as f64;
            Duration::from_secs_f64(METADATA_PIECE_LEN as f64 / share.max(1.0))
        })
}

/// How peers are dialed for the metadata, as the session will dial them.
pub struct FetchSettings {
    /// The whole fetch's time.
    pub timeout: Duration,
    /// Encrypted or plaintext handshakes.
    pub encryption: Encryption,
    /// What all peers send is paid to it as the download's reads are (`--max-download-rate`).
    pub limit: Option<Arc<RateLimit>>,
    /// Peers are dialed over uTP from that socket too, first or after TCP as its mode says.
    pub utp: Option<(Utp, Arc<UtpSocket>)>,
    /// The address the download will listen on: a tracker lists it back to us, and it is not
    /// dialed.
    pub listen: Option<SocketAddr>,
    /// The download will run a DHT node: the handshake says so, as the session's will (unless
    /// the torrent turns out private: then the session sends no `port`, which a peer takes as
    /// no DHT).
    pub dht: bool,
}

/// What a fetch found: the dictionary, the connection it came over, and every address heard
/// of, for the session to go on with.
pub struct Fetched {
    /// The raw bencoded info dictionary (its SHA-1 is the info-hash).
    pub info: Vec<u8>,
    /// The connections past their handshakes, the one the dictionary came over first (unless
    /// its peer sent more than [`MAX_KEPT`] besides metadata).
    pub connections: Vec<HandedPeer>,
    /// Every address heard of, the handed peer's included, but not those given up.
    pub peers: Vec<SocketAddr>,
}

/// A connection whose handshakes are done, for [`crate::Torrent::adopt`].
pub struct HandedPeer {
    pub(crate) addr: SocketAddr,
    pub(crate) stream: PeerStream,
    /// The peer's handshake (ours said what the session's says: [`our_reserved`]).
    pub(crate) handshake: Handshake,
    /// The peer's messages the fetch read and did not use, then what it read after them;
    /// decrypted.
    pub(crate) buf: BytesMut,
    pub(crate) ciphers: Ciphers,
    /// The socket a uTP stream runs on, kept as long as the connection: the metadata phase's
    /// own, when the peer port's was taken, would otherwise close with the fetch.
    pub(crate) utp_socket: Option<Arc<UtpSocket>>,
}

impl HandedPeer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Fetches the info dictionary for `info_hash` from peers received on `peers`, with the
/// session's `peer_id`.
pub async fn fetch_metadata(
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    mut peers: mpsc::UnboundedReceiver<SocketAddr>,
    settings: FetchSettings,
) -> Result<Fetched, MetadataError> {
    let FetchSettings {
        timeout,
        encryption,
        limit,
        utp,
        listen,
        dht,
    } = settings;
    let ours = Ours {
        info_hash,
        peer_id,
        reserved: our_reserved(dht),
        encryption,
    };
    let deadline = Instant::now() + timeout;
    // Every address heard of, dialed again as the session dials peers ([`KnownPeer::due`])
    // until the metadata comes or the time is up, also once the sources are done (a magnet
    // link's `x.pe` peers alone): a seed still checking its data when first dialed
    // (Transmission times the handshake out then), or restarting, is asked again 10 s later,
    // not never.
    let mut known: HashMap<SocketAddr, KnownPeer> = HashMap::new();
    let mut in_flight: HashSet<SocketAddr> = HashSet::new();
    // Peers that sent a wrong dictionary (or are ourselves): not dialed again, though sources
    // name them again.
    let mut given_up: HashSet<SocketAddr> = HashSet::new();
    let mut running = JoinSet::new();
    // Set once the dictionary came: the other connections stop and are handed over.
    let (got_it, stop) = tokio::sync::watch::channel(false);
    let mut last_error = String::from("no peers yet");
    let mut sources_open = true;
    let mut room = crate::KnownRoom::default();
    loop {
        let now = Instant::now();
        for (addr, peer) in known.iter_mut() {
            if running.len() >= parallel_peers(limit.as_deref()) {
                break;
            }
            if in_flight.contains(addr) || given_up.contains(addr) || !peer.due(now) {
                continue;
            }
            peer.last_dial = Some(now);
            in_flight.insert(*addr);
            let (addr, limit, utp, stop) = (*addr, limit.clone(), utp.clone(), stop.clone());
            running.spawn(async move {
                let result = fetch_from(addr, ours, limit, utp, stop).await;
                (addr, result)
            });
        }
        if !sources_open && known.is_empty() {
            return Err(MetadataError::NoPeers);
        }
        if !sources_open && running.is_empty() && known.keys().all(|a| given_up.contains(a)) {
            return Err(MetadataError::NoneLeft(last_error));
        }
        tokio::select! {
            addr = peers.recv(), if sources_open => match addr {
                Some(addr) => {
                    let own = listen.is_some_and(|l| crate::is_own_address(addr, l));
                    if !own && crate::dialable(addr) && !known.contains_key(&addr) {
                        // As many as a session keeps (a tracker's answer of a megabyte names
                        // 170,000); when full, one given up on or failed goes, so that a
                        // source of dead addresses cannot keep out the peers others name.
                        if room.make(&mut known, worth_forgetting(&in_flight, &given_up)) {
                            known.insert(addr, KnownPeer::default());
                        }
                    }
                }
                None => sources_open = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok((addr, Ok(Got::Dictionary(info, peer)))) => {
                    tracing::info!("{addr}: metadata received ({} bytes)", info.len());
                    let _ = got_it.send(true);
                    let mut connections: Vec<HandedPeer> = peer.into_iter().collect();
                    connections.extend(stopped_connections(&mut running, &mut given_up).await);
                    return Ok(Fetched {
                        info,
                        connections,
                        peers: known.into_keys().filter(|a| !given_up.contains(a)).collect(),
                    });
                }
                Ok((addr, Ok(Got::Stopped(_)))) => {
                    in_flight.remove(&addr);
                }
                Ok((addr, Err(failure))) => {
                    tracing::info!("metadata: {}", failure.message);
                    in_flight.remove(&addr);
                    room.dial_failed();
                    if failure.for_good {
                        given_up.insert(addr);
                    } else if let Some(peer) = known.get_mut(&addr) {
                        peer.dialed(false);
                    }
                    last_error = failure.message;
                }
                Err(e) => last_error = e.to_string(),
            },
            // Redials come due with time alone.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline.into()) => {
                return Err(MetadataError::TimedOut(timeout, last_error));
            }
        }
    }
}

/// The other connections, stopped at a message's end once the dictionary came: those that
/// answer within [`HAND_OVER_WAIT`] (the rest are closed with `running`). A peer that sent a
/// wrong dictionary meanwhile is given up, as before.
async fn stopped_connections(
    running: &mut JoinSet<(SocketAddr, Result<Got, Failure>)>,
    given_up: &mut HashSet<SocketAddr>,
) -> Vec<HandedPeer> {
    let mut connections = Vec::new();
    let until = tokio::time::Instant::now() + HAND_OVER_WAIT;
    while let Ok(Some(done)) = tokio::time::timeout_at(until, running.join_next()).await {
        match done {
            Ok((_, Ok(Got::Dictionary(_, Some(peer)) | Got::Stopped(Some(peer))))) => {
                connections.push(peer);
            }
            Ok((addr, Err(failure))) if failure.for_good => {
                given_up.insert(addr);
            }
            _ => {}
        }
    }
    connections
}

/// Who we say we are in a handshake: what the session will say.
#[derive(Clone, Copy)]
struct Ours {
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    reserved: [u8; 8],
    encryption: Encryption,
}

/// What a connection ended with, when not with a failure. The connection is `None` when it
/// cannot be handed on (its peer sent more than [`MAX_KEPT`] besides metadata).
enum Got {
    /// The dictionary, and the connection it came over.
    Dictionary(Vec<u8>, Option<HandedPeer>),
    /// Another connection's dictionary came first: this one stopped at a message's end.
    Stopped(Option<HandedPeer>),
}

async fn fetch_from(
    addr: SocketAddr,
    ours: Ours,
    limit: Option<Arc<RateLimit>>,
    utp: Option<(Utp, Arc<UtpSocket>)>,
    stop: watch::Receiver<bool>,
) -> Result<Got, Failure> {
    let limit = limit.as_deref();
    let (mode, socket) = match &utp {
        Some((mode, socket)) => (*mode, Some(socket.as_ref())),
        None => (Utp::Off, None),
    };
    let order = mode.dial_order(socket);
    let mut fetched = transport::dial_in_turn(
        addr,
        order,
        ours.encryption,
        // Once the dictionary came, a connection that failed is not tried another way.
        || *stop.borrow(),
        |transport, encrypted| {
            let dial = Dial {
                addr,
                transport,
                socket,
            };
            let stop = stop.clone();
            async move { fetch_once(&dial, ours, encrypted, limit, stop).await }
        },
    )
    .await;
    if let Some(Ok(Got::Dictionary(_, Some(handed)) | Got::Stopped(Some(handed)))) = &mut fetched {
        if handed.stream.is_utp() {
            handed.utp_socket = utp.as_ref().map(|(_, socket)| socket.clone());
        }
    }
    let (message, for_good) = match fetched {
        Some(Ok(got)) => return Ok(got),
        Some(Err(Attempt::Bad(message))) => (message, true),
        Some(Err(
            Attempt::Unreachable(message) | Attempt::Refused(message) | Attempt::Failed(message),
        )) => (message, false),
        None => (format!("{addr}: no transport to dial"), false),
    };
    Err(Failure { message, for_good })
}

/// Why a peer gave no metadata.
struct Failure {
    message: String,
    /// Not worth dialing again (it sent a wrong dictionary, or it is ourselves).
    for_good: bool,
}

/// Where and how one connection is dialed.
struct Dial<'a> {
    addr: SocketAddr,
    transport: Transport,
    socket: Option<&'a UtpSocket>,
}

/// Why one connection gave no metadata.
enum Attempt {
    /// No connection: the other transport may reach the peer.
    Unreachable(String),
    /// The peer closed it during the handshake (it may want the other kind of handshake, or
    /// the other transport).
    Refused(String),
    Failed(String),
    /// A wrong dictionary, or ourselves: not dialed again.
    Bad(String),
}

impl DialOutcome for Result<Got, Attempt> {
    fn next(&self) -> Next {
        match self {
            Ok(_) | Err(Attempt::Failed(_) | Attempt::Bad(_)) => Next::Stop,
            Err(Attempt::Unreachable(_)) => Next::OtherTransport,
            Err(Attempt::Refused(_)) => Next::OtherHandshake,
        }
    }
}

async fn fetch_once(
    dial: &Dial<'_>,
    ours: Ours,
    encrypted: bool,
    limit: Option<&RateLimit>,
    stop: watch::Receiver<bool>,
) -> Result<Got, Attempt> {
    let Ours {
        info_hash,
        peer_id,
        reserved,
        encryption,
    } = ours;
    let addr = dial.addr;
    let fail = |what: &str| format!("{addr}: {what}");
    // From the address the uTP socket is bound to (the session's), if any.
    let from = dial.socket.map(|socket| socket.local_addr().ip());
    let mut stream = transport::connect(dial.transport, addr, dial.socket, from, CONNECT_TIMEOUT)
        .await
        .map_err(|e| Attempt::Unreachable(fail(&format!("connect: {e}"))))?;
    let mut ours = Handshake::new(info_hash, peer_id);
    ours.reserved = reserved;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let deadline = Instant::now() + CONNECT_TIMEOUT * 2;
    let handshake = async {
        let mut ciphers = if encrypted {
            let initial = ours.encode().to_vec();
            encryption::dial(
                &mut stream,
                &mut buf,
                info_hash,
                encryption,
                initial,
                deadline,
            )
            .await?
        } else {
            stream.write_all(&ours.encode()).await?;
            Ciphers::default()
        };
        let theirs = read_handshake(&mut stream, &mut buf, &mut ciphers, deadline).await?;
        Ok::<_, PeerError>((theirs, ciphers))
    };
    let (theirs, ciphers) = handshake.await.map_err(|e| {
        let message = fail(&format!("handshake: {e}"));
        match e.is_closed_by_peer() {
            true => Attempt::Refused(message),
            false => Attempt::Failed(message),
        }
    })?;
    if theirs.peer_id == peer_id {
        return Err(Attempt::Bad(fail("is ourselves")));
    }
    let connection = HandedPeer {
        addr,
        stream,
        buf,
        ciphers,
        handshake: theirs,
        utp_socket: None,
    };
    exchange(connection, info_hash, limit, stop).await
}

/// The extension handshake and the metadata requests, after the BitTorrent handshake.
async fn exchange(
    mut connection: HandedPeer,
    info_hash: [u8; 20],
    limit: Option<&RateLimit>,
    mut stop: watch::Receiver<bool>,
) -> Result<Got, Attempt> {
    let HandedPeer {
        addr,
        ref mut stream,
        ref mut buf,
        ref mut ciphers,
        handshake: ref theirs,
        ..
    } = connection;
    let fail = |what: &str| Attempt::Failed(format!("{addr}: {what}"));
    if theirs.info_hash != info_hash {
        return Err(fail("handshake for another torrent"));
    }
    if !extension::has_extension_bit(&theirs.reserved) {
        return Err(fail("does not speak the extension protocol (BEP 10)"));
    }
    let mut out = BytesMut::new();
    // BEP 6 wants what we have right after the handshake; the session, if it takes this
    // connection over, tells its pieces by `have`s.
    if pow_wire::has_fast_bit(&theirs.reserved) {
        Message::HaveNone.encode(&mut out);
    }
    ExtHandshake {
        ut_metadata: Some(OUR_UT_METADATA),
        client: Some(concat!("pow ", env!("CARGO_PKG_VERSION")).to_string()),
        ..ExtHandshake::default()
    }
    .to_message()
    .encode(&mut out);
    ciphers.seal(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|e| fail(&e.to_string()))?;

    // The peer's messages other than metadata, as they came, for the session; None once
    // past [`MAX_KEPT`].
    let mut kept = Some(BytesMut::new());
    let mut pieces: Vec<Option<Bytes>> = Vec::new();
    let mut size = 0u64;
    let mut their_id = 0u8;
    let mut asks = MetadataAsks::default();
    let piece_timeout = piece_timeout(limit);
    let mut piece_deadline = Instant::now() + piece_timeout;
    loop {
        let read = tokio::time::timeout_at(
            piece_deadline.into(),
            read_frame(stream, buf, ciphers, limit),
        );
        // Reading stops between messages (what was read of the next stays in `buf`).
        let read = tokio::select! {
            read = read => Some(read),
            _ = crate::until_true(&mut stop) => None,
        };
        let Some(read) = read else {
            return Ok(Got::Stopped(hand_over(kept, connection)));
        };
        let frame = read
            .map_err(|_| fail(&format!("no metadata piece for {piece_timeout:.0?}")))?
            .map_err(|e| fail(&e))?;
        let Some((id, payload)) = frame else {
            continue;
        };
        let extended = match id {
            EXTENDED => {
                Some(extension::split_extended(&payload).map_err(|e| fail(&e.to_string()))?)
            }
            _ => None,
        };
        if !matches!(extended, Some((OUR_UT_METADATA, _))) {
            keep(&mut kept, id, &payload);
        }
        let Some((ext_id, body)) = extended else {
            continue;
        };
        if ext_id == EXTENDED_HANDSHAKE {
            // A later handshake (a pow leecher sends one when it completes) may move the id;
            // the dictionary and what was asked stay.
            let hs = ExtHandshake::decode(&body).map_err(|e| fail(&e.to_string()))?;
            // A later handshake lists changes only (BEP 10): without ut_metadata, it stays.
            their_id = match (hs.ut_metadata, pieces.is_empty()) {
                (Some(id), _) => id,
                (None, false) => their_id,
                (None, true) => return Err(fail("does not serve metadata (no ut_metadata)")),
            };
            if pieces.is_empty() {
                size = hs
                    .metadata_size
                    .ok_or_else(|| fail("did not say the metadata size"))?;
                if size == 0 || size > MAX_METADATA_SIZE {
                    return Err(fail(&format!(
                        "metadata size {size} outside 1..={MAX_METADATA_SIZE}"
                    )));
                }
                let count = extension::metadata_pieces(size);
                pieces = vec![None; count as usize];
                asks = MetadataAsks::new(count);
                piece_deadline = Instant::now() + piece_timeout;
            } else if hs.metadata_size.is_some_and(|s| s != size) {
                return Err(fail("changed its metadata size"));
            }
        } else if ext_id == OUR_UT_METADATA && !pieces.is_empty() {
            match MetadataMessage::decode(&body).map_err(|e| fail(&e.to_string()))? {
                MetadataMessage::Data {
                    piece,
                    total_size,
                    data,
                } => {
                    let start = piece as u64 * METADATA_PIECE_LEN as u64;
                    let expected = (size.saturating_sub(start)).min(METADATA_PIECE_LEN as u64);
                    if total_size != size
                        || piece as usize >= pieces.len()
                        || data.len() as u64 != expected
                    {
                        return Err(fail("sent a metadata piece that does not fit"));
                    }
                    // One not asked for is ignored, as libtorrent does.
                    if asks.answered(piece) {
                        // A copy: a slice would keep the whole frame (up to `MAX_FRAME`,
                        // padded with unknown keys) alive for 16 KiB of metadata.
                        pieces[piece as usize] = Some(Bytes::copy_from_slice(&data));
                        piece_deadline = Instant::now() + piece_timeout;
                    }
                }
                MetadataMessage::Reject { piece } => {
                    if !asks.rejected(piece, pieces.get(piece as usize)) {
                        return Err(fail(&format!(
                            "rejected metadata piece {piece} {METADATA_REJECTS_IN_A_ROW} times \
                             in a row"
                        )));
                    }
                }
                MetadataMessage::Request { .. } | MetadataMessage::Unknown { .. } => {}
            }
            if pieces.iter().all(Option::is_some) {
                let info: Vec<u8> = pieces.into_iter().flatten().flatten().collect();
                if <[u8; 20]>::from(Sha1::digest(&info)) != info_hash {
                    return Err(Attempt::Bad(format!(
                        "{addr}: sent metadata whose SHA-1 is not the info-hash"
                    )));
                }
                return Ok(Got::Dictionary(info, hand_over(kept, connection)));
            }
        } else {
            continue;
        }
        let more = asks.next(&pieces);
        if !more.is_empty() {
            let mut requests = BytesMut::new();
            for piece in more {
                MetadataMessage::Request { piece }
                    .to_message(their_id)
                    .encode(&mut requests);
            }
            ciphers.seal(&mut requests);
            stream
                .write_all(&requests)
                .await
                .map_err(|e| fail(&e.to_string()))?;
        }
    }
}

/// The connection for the session, with the messages kept from it in front of what it read
/// after them; None if they were too many to keep.
fn hand_over(kept: Option<BytesMut>, connection: HandedPeer) -> Option<HandedPeer> {
    let mut kept = kept?;
    kept.extend_from_slice(&connection.buf);
    Some(HandedPeer {
        buf: kept,
        ..connection
    })
}

/// Adds a message to those kept for the session, unless that passes [`MAX_KEPT`]. One longer
/// than the session's limit (`MAX_EXTENDED_LEN`, a bitfield aside) is dropped: this phase reads
/// frames under a larger one, and the session, decoding what was kept, counted such a message
/// (an extension's it would never take) as a violation against a peer that broke no rule.
fn keep(kept: &mut Option<BytesMut>, id: u8, payload: &[u8]) {
    let Some(buf) = kept else {
        return;
    };
    if id != pow_wire::id::BITFIELD && 1 + payload.len() > extension::MAX_EXTENDED_LEN as usize {
        return;
    }
    if buf.len() + 5 + payload.len() > MAX_KEPT {
        *kept = None;
        return;
    }
    buf.extend_from_slice(&(1 + payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&[id]);
    buf.extend_from_slice(payload);
}

/// Metadata requests a peer has at once: Transmission queues 64 and rejects the rest, pow's
/// seed rejects once 1 MiB waits for the reader. Asking for a 1.2 MiB dictionary all at once
/// (76 pieces) was rejected by both.
const METADATA_REQUESTS_IN_FLIGHT: usize = 16;
/// Rejects with no piece between them after which the peer is given up (one that does not
/// have the dictionary rejects everything).
const METADATA_REJECTS_IN_A_ROW: u32 = 3;

/// Which metadata pieces are asked for, and which wait to be.
#[derive(Default)]
struct MetadataAsks {
    waiting: std::collections::VecDeque<u32>,
    in_flight: HashSet<u32>,
    rejects_in_a_row: u32,
}

impl MetadataAsks {
    fn new(count: u32) -> MetadataAsks {
        MetadataAsks {
            waiting: (0..count).collect(),
            ..MetadataAsks::default()
        }
    }

    /// False for a piece that was not asked for.
    fn answered(&mut self, piece: u32) -> bool {
        let asked = self.in_flight.remove(&piece);
        if asked {
            self.rejects_in_a_row = 0;
        }
        asked
    }

    /// A rejected piece is asked again later; false once the peer rejected too often.
    fn rejected(&mut self, piece: u32, have: Option<&Option<Bytes>>) -> bool {
        if self.in_flight.remove(&piece) && matches!(have, Some(None)) {
            self.waiting.push_back(piece);
        }
        self.rejects_in_a_row += 1;
        self.rejects_in_a_row < METADATA_REJECTS_IN_A_ROW
    }

    /// Pieces to ask for now, up to the window.
    fn next(&mut self, pieces: &[Option<Bytes>]) -> Vec<u32> {
        let mut asks = Vec::new();
        while self.in_flight.len() < METADATA_REQUESTS_IN_FLIGHT {
            let Some(piece) = self.waiting.pop_front() else {
                break;
            };
            if pieces[piece as usize].is_none() && self.in_flight.insert(piece) {
                asks.push(piece);
            }
        }
        asks
    }
}

/// Reads one message; returns its id and payload (`None` for a keep-alive). Each read is
/// paid to `limit` (waiting out what it owes) and takes at most an eighth of its second.
async fn read_frame(
    stream: &mut PeerStream,
    buf: &mut BytesMut,
    ciphers: &mut Ciphers,
    limit: Option<&RateLimit>,
) -> Result<Option<(u8, Bytes)>, String> {
    loop {
        if buf.len() >= 4 {
            let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
            if len > MAX_FRAME {
                return Err(format!("message of {len} bytes"));
            }
            if buf.len() >= 4 + len {
                buf.advance(4);
                let mut frame = buf.split_to(len).freeze();
                if frame.is_empty() {
                    return Ok(None);
                }
                let id = frame.get_u8();
                return Ok(Some((id, frame)));
            }
            buf.reserve(4 + len - buf.len());
        }
        let n = match limit {
            Some(limit) => {
                let cap = limit.read_cap(256 * 1024) as u64;
                (&mut *stream).take(cap).read_buf(buf).await
            }
            None => stream.read_buf(buf).await,
        }
        .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        ciphers.open_tail(buf, n);
        if let Some(wait) = limit.and_then(|limit| limit.take_owing(n)) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{keep, MAX_KEPT};
    use bytes::BytesMut;
    use pow_wire::{Decoder, Message};

    /// Kept messages read back as the peer sent them; past [`MAX_KEPT`] nothing is handed on.
    #[test]
    fn kept_messages_are_read_back_whole_and_bounded() {
        let mut kept = Some(BytesMut::new());
        keep(&mut kept, 1, &[]);
        keep(&mut kept, 4, &7u32.to_be_bytes());
        let mut buf = kept.clone().unwrap();
        let decoder = Decoder::new(16);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Message::Unchoke));
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Message::Have(7)));
        assert!(buf.is_empty());
        // An extension's message over the session's limit is dropped, not handed on to make
        // the session's decoder (which the engine's peer sets up this way) fail.
        keep(&mut kept, 20, &[0; 20_000]);
        let session = Decoder::new(16).with_max_len(pow_wire::extension::MAX_EXTENDED_LEN);
        let mut buf = kept.clone().unwrap();
        assert_eq!(session.decode(&mut buf).unwrap(), Some(Message::Unchoke));
        assert_eq!(session.decode(&mut buf).unwrap(), Some(Message::Have(7)));
        assert_eq!(session.decode(&mut buf).unwrap(), None);
        keep(&mut kept, 5, &vec![0xff; MAX_KEPT]);
        assert!(kept.is_none());
        keep(&mut kept, 1, &[]);
        assert!(kept.is_none());
    }
}

/// How worth forgetting a known address is, to make room: one given up on most, then the
/// ones whose dials failed the most times in a row; not one being asked now, nor one that has
/// not failed.
fn worth_forgetting<'a>(
    in_flight: &'a HashSet<SocketAddr>,
    given_up: &'a HashSet<SocketAddr>,
) -> impl Fn(&SocketAddr, &KnownPeer) -> Option<(bool, u32)> + 'a {
    |addr, peer| {
        let given_up = given_up.contains(addr);
        let failed = given_up || peer.failed_dials > 0;
        (failed && !in_flight.contains(addr)).then_some((given_up, peer.failed_dials))
    }
}

#[cfg(test)]
mod forget_tests {
    use super::*;

    /// A full table of addresses makes room by forgetting one given up on, else the most
    /// failed, never one being asked; with none failed, nothing is forgotten, and that is not
    /// looked for again until a dial fails.
    #[test]
    fn a_full_table_forgets_the_address_given_up_on_or_failed_most() {
        let at = |port: u16| SocketAddr::from(([10, 0, 0, 1], port));
        let mut known: HashMap<SocketAddr, KnownPeer> = (1..=crate::MAX_KNOWN_PEERS as u16)
            .map(|p| (at(p), KnownPeer::default()))
            .collect();
        let (mut in_flight, mut given_up) = (HashSet::new(), HashSet::new());
        let mut room = crate::KnownRoom::default();
        assert!(!room.make(&mut known, worth_forgetting(&in_flight, &given_up)));
        known.get_mut(&at(1)).unwrap().failed_dials = 5;
        assert!(
            !room.make(&mut known, worth_forgetting(&in_flight, &given_up)),
            "looked for again before a dial failed"
        );
        room.dial_failed();
        known.get_mut(&at(2)).unwrap().failed_dials = 2;
        given_up.insert(at(3));
        in_flight.insert(at(3));
        assert!(room.make(&mut known, worth_forgetting(&in_flight, &given_up)));
        assert!(!known.contains_key(&at(1)) && known.contains_key(&at(3)));
        known.insert(at(1), KnownPeer::default());
        in_flight.clear();
        assert!(room.make(&mut known, worth_forgetting(&in_flight, &given_up)));
        assert!(!known.contains_key(&at(3)) && known.contains_key(&at(2)));
        known.insert(at(3), KnownPeer::default());
        given_up.clear();
        assert!(room.make(&mut known, worth_forgetting(&in_flight, &given_up)));
        assert!(!known.contains_key(&at(2)), "the failed one went");
    }
}
