//! A BitTorrent session for one torrent: peer connections (outgoing and incoming), the request
//! pipeline, piece verification, and serving what we have.
//!
//! One tokio task per peer connection ([`peer`]). Shared bookkeeping (the picker, who has what,
//! strikes) sits behind one mutex that tasks hold only for short, non-blocking updates. Blocks
//! are written with positioned writes and hashed in piece order as they arrive, beside the
//! peer's socket loop ([`received`]); a piece that one peer's in-order hash cannot decide is
//! read back and SHA-1 checked on the blocking pool; a failed piece is discarded and
//! re-requested. A bad piece all from one peer gives it a strike (banned after
//! [`MAX_STRIKES`]); one from several peers keeps each sender's block hash, and once the piece
//! verifies, whoever sent a block that differs is banned (libtorrent's smart ban), as is at once
//! a peer that sends one block of it with other bytes in two attempts.
//!
//! The engine knows nothing of trackers: callers feed it peer addresses with
//! [`Torrent::add_peers`] (from a tracker client, or given by hand); peers tell each other of
//! more by peer exchange ([`pex`]).
//!
//! With [`EngineConfig::resume_interval`] set, the verified set is saved to the storage's
//! resume file every interval while it changes ([`Torrent::save_resume`] saves on demand).

mod choker;
mod encryption;
pub mod fuzzing;
mod inorder;
mod listener;
pub mod metadata;
mod peer;
pub mod pex;
mod ratelimit;
mod received;
mod superseed;
pub mod trace;
mod transport;
pub mod webseed;

pub use encryption::Encryption;
pub use listener::{SharedListener, MAX_PENDING_HANDSHAKES, MAX_PENDING_HANDSHAKES_PER_HOST};
pub use ratelimit::RateLimit;
pub use transport::Utp;

use pow_metainfo::Metainfo;
use pow_picker::{PeerKey, Picker, Share};
use pow_storage::{Durability, Storage};
use pow_wire::Bitfield;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use transport::PeerListener;

/// Bad pieces a peer may take part in before it is banned.
pub const MAX_STRIKES: u32 = 3;
/// Connections we dialed to one address that may end in a breach of the protocol before the
/// address is banned; each also backs off its next dial as a failed dial does (libtorrent
/// stops dialing a peer after 3 failures).
pub const MAX_VIOLATIONS: u32 = 3;
/// Addresses remembered to dial, so a peer that names thousands of addresses cannot grow the
/// session without bound. Past it, a new address takes the place of one whose dials failed
/// (the most in a row), or is dropped while none has.
pub const MAX_KNOWN_PEERS: usize = 2000;
/// Connections from one host that finish their handshake with us; more are closed. 50 idle
/// connections from one machine took every peer slot of a seed, and nobody else got in
/// (libtorrent allows one per address unless told otherwise; peers behind one NAT share an
/// address, hence a few). The loopback addresses `127.0.0.1` and `::1`, where every process of
/// a local swarm comes from, are not capped.
pub const MAX_PEERS_PER_HOST: usize = 8;
/// A spared seed with nothing left that sparing lets us ask it for (see
/// `peer::Peer::pick_from_seed`) is asked for anything once the peers lending to us send less
/// than this fraction of the seed's best rate. Lower, a leecher waits on slow peers for pieces
/// a seed could send at once; higher, a swarm's leechers go back to the seed for pieces they
/// could trade.
pub const SPARE_SEED_AT: f64 = 0.5;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub peer_id: [u8; 20],
    /// Where to accept incoming peers; `None` for outgoing connections only.
    pub listen: Option<SocketAddr>,
    /// Connection cap (incoming and outgoing together).
    pub max_peers: usize,
    /// Peers we upload to at once, one of them optimistic ([`choker`]).
    pub upload_slots: usize,
    /// How often the upload slots are handed out again ([`choker`]; 10 s, the optimistic
    /// slot every third time).
    pub choke_interval: Duration,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Keep-alive after this long without sending.
    pub keepalive: Duration,
    /// Drop a peer after this long without hearing from it.
    pub idle_timeout: Duration,
    /// Outstanding requests with no block for this long: the peer is snubbing us.
    pub snub_timeout: Duration,
    /// Save the resume file this often while new pieces are verified; `None`: never on its own.
    pub resume_interval: Option<Duration>,
    /// When complete, tell each peer of a few pieces at a time (BEP 16 super-seeding, see
    /// [`superseed`]): for the first seed of new data to a swarm of leechers.
    pub super_seed: bool,
    /// A peer whose blocks took this long to write and hash in the last second gets a thread
    /// of its own for that, beside its socket loop ([`received`]); `None`: never. Default:
    /// `None`, unless `POW_WRITER_AFTER_MS` sets the time (0: every peer, from the start) and
    /// this process may run on more than one core (its CPU affinity: on one core the hand-over
    /// only costs). Off by default because on the 2-core benches it never paid: leeching 1 GiB
    /// inline was as fast from pow's and rqbit's seeds and 8-15% cheaper from aria2's and
    /// libtorrent's (README, "Performance"); a peer faster than one core can hash (about 1
    /// GiB/s here) on a machine with idle cores is where it could.
    pub writer_after_busy: Option<Duration>,
    /// Caps what all peers together get from us (blocks served); `None`: no limit. Give
    /// several sessions the same bucket to cap them together.
    pub upload_limit: Option<Arc<RateLimit>>,
    /// Caps what all peers and web seeds together send us, as `upload_limit` does uploads.
    pub download_limit: Option<Arc<RateLimit>>,
    /// The port peers reach this session at when it has no listener of its own (a
    /// [`SharedListener`]'s), told to them in the extension handshake as `listen` would be.
    pub advertised_port: Option<u16>,
    /// Peer exchange (BEP 11, [`pex`]): tell peers which peers we are connected to, and dial
    /// the peers they tell us of. Never for a private torrent, whatever this says.
    pub pex: bool,
    /// The least time between two peer-exchange messages to one peer (libtorrent drops a
    /// peer that sends three within a minute).
    pub pex_interval: Duration,
    /// The UDP port of our DHT node, if one runs: told to peers that run one too (BEP 5
    /// `port` message).
    pub dht_port: Option<u16>,
    /// Where the DHT nodes peers tell us of (their IP, the port of their `port` message) go,
    /// for the caller's DHT node to ping.
    pub dht_nodes: Option<mpsc::UnboundedSender<SocketAddr>>,
    /// Which connections use message stream encryption, dialed and accepted ([`Encryption`]).
    pub encryption: Encryption,
    /// uTP (BEP 29) besides TCP: accepted on the listening port's number, and dialed as
    /// [`Utp`] says.
    pub utp: Utp,
    /// A uTP socket bound already on the listening port's number (one that shares its port
    /// with a DHT node, [`pow_utp::UtpSocket::bind_sharing`]); else one is bound at start.
    pub utp_socket: Option<Arc<pow_utp::UtpSocket>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            peer_id: new_peer_id(),
            listen: None,
            max_peers: 50,
            upload_slots: 8,
            choke_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(20),
            keepalive: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(180),
            snub_timeout: Duration::from_secs(60),
            resume_interval: None,
            super_seed: false,
            writer_after_busy: default_writer_after_busy(),
            upload_limit: None,
            download_limit: None,
            advertised_port: None,
            pex: true,
            pex_interval: Duration::from_secs(60),
            dht_port: None,
            dht_nodes: None,
            encryption: Encryption::default(),
            utp: Utp::default(),
            utp_socket: None,
        }
    }
}

fn default_writer_after_busy() -> Option<Duration> {
    let millis = std::env::var("POW_WRITER_AFTER_MS").ok()?.parse().ok()?;
    if !std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        return None;
    }
    Some(Duration::from_millis(millis))
}

/// `-PW0100-` (Azureus style: client PW, version 0.1.0.0) and 12 random characters.
pub fn new_peer_id() -> [u8; 20] {
    const ALNUM: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut id = *b"-PW0100-000000000000";
    let mut rng = rand::rng();
    for b in &mut id[8..] {
        *b = ALNUM[rng.random_range(0..ALNUM.len())];
    }
    id
}

/// Counters for progress bars and tracker announces.
#[derive(Debug, Default)]
pub struct Stats {
    /// Payload bytes received that we wanted.
    pub downloaded: AtomicU64,
    /// Payload bytes received that we did not want (duplicates, unrequested) or that failed
    /// their hash.
    pub wasted: AtomicU64,
    pub uploaded: AtomicU64,
    pub hash_failures: AtomicU64,
    /// BEP 6 messages received: have-all (a seed said so in one message) and reject.
    pub have_all_received: AtomicU64,
    pub rejects_received: AtomicU64,
    /// Peers that told us BEP 21 `upload_only` (they want nothing more).
    pub upload_only_received: AtomicU64,
    /// Pieces verified from the SHA-1 computed as their blocks arrived, without reading them
    /// back from disk.
    pub hashed_as_received: AtomicU64,
    /// Peers whose blocks were written and hashed on a thread of their own
    /// ([`EngineConfig::writer_after_busy`]).
    pub writer_threads: AtomicU64,
    /// Peer-exchange messages sent and received, and the new addresses those received named.
    pub pex_sent: AtomicU64,
    pub pex_received: AtomicU64,
    pub peers_from_pex: AtomicU64,
    /// Peer connections whose handshakes completed: plaintext, encrypted with a plaintext
    /// stream after it, and RC4 throughout.
    pub connections_plaintext: AtomicU64,
    pub connections_encrypted_handshake: AtomicU64,
    pub connections_rc4: AtomicU64,
    /// Of those, connections over uTP (the rest are TCP).
    pub connections_utp: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub downloaded: u64,
    pub uploaded: u64,
    pub wasted: u64,
    pub hash_failures: u64,
    pub have_all_received: u64,
    pub rejects_received: u64,
    pub upload_only_received: u64,
    /// Pieces verified without a read-back (see [`Stats::hashed_as_received`]).
    pub hashed_as_received: u64,
    /// Peers given a writer thread (see [`Stats::writer_threads`]).
    pub writer_threads: u64,
    /// Peer exchange: messages sent, messages received, new peers learned from them.
    pub pex_sent: u64,
    pub pex_received: u64,
    pub peers_from_pex: u64,
    /// Connections by kind of handshake and stream (see [`Stats::connections_rc4`]).
    pub connections_plaintext: u64,
    pub connections_encrypted_handshake: u64,
    pub connections_rc4: u64,
    pub connections_utp: u64,
    /// Bytes of wanted pieces not yet verified.
    pub left: u64,
    pub pieces_have: u32,
    pub pieces_total: u32,
    pub peers: usize,
    /// Peers that have sent us at least one block.
    pub peers_sending: usize,
    /// Web seeds in use (not counted in `peers`).
    pub web_seeds: usize,
    /// Payload bytes received from web seeds (pieces that failed their hash included).
    pub web_seed_bytes: u64,
    pub complete: bool,
}

/// What peer tasks are told by others.
#[derive(Debug)]
pub(crate) enum PeerCmd {
    /// We verified this piece: send `have`.
    Have(u32),
    /// End-game: another peer delivered this block first.
    Cancel(pow_metainfo::Block),
    /// This piece failed its hash check and is wanted again: a peer that has it and that we
    /// told `not interested` (once every piece was ours or being checked) must say
    /// `interested` again, or nobody would fetch it.
    Wanted,
    /// Leave (banned or shutting down).
    Close,
    /// The choker took its upload slot ([`choker`]).
    Choke,
    /// The choker gave it an upload slot.
    Unchoke,
}

pub(crate) struct PeerEntry {
    pub addr: SocketAddr,
    /// The wire connection's peer id and direction (none for a web seed).
    pub wire: Option<WireLink>,
    /// Another address we dialed the same peer at, whose connection was closed as a duplicate
    /// of this one (so the reconnect loop does not dial it again).
    pub dialed_at: Option<SocketAddr>,
    /// Where the peer accepts connections: the address we dialed, or its IP with the port its
    /// extension handshake names (`None` until then, and for a web seed). What peer exchange
    /// tells others.
    pub listen_addr: Option<SocketAddr>,
    pub bits: Bitfield,
    pub tx: mpsc::UnboundedSender<PeerCmd>,
    pub unchoked_by_us: bool,
    /// It told us it wants pieces we have (its last `interested` / `not interested`).
    pub interested: bool,
    /// Payload bytes booked from it, and served to it, on this connection.
    pub received: u64,
    pub sent: u64,
    /// It unchokes us and is not a spared seed, as of its connection's last tick: its pieces are
    /// counted as lent in the picker, and a seed we spare is not asked for them (see
    /// [`State::set_lending`]).
    pub lending: bool,
    /// Payload bytes per second it sends us, as its connection last measured.
    pub rate: f64,
    /// It said BEP 21 `upload_only` (wants nothing more) in its last extension handshake.
    pub upload_only: bool,
    /// It completed while connected to us: it lends as it did while a leecher, and is not
    /// spared as a seed (see [`PeerEntry::spared`]).
    pub became_seed: bool,
    /// A pow leecher counted in our seed share (see [`State::recount_share`]).
    pub sharing: bool,
    /// Closed to make room for a newcomer from another host; its slot is the newcomer's.
    pub giving_up: bool,
}

impl PeerEntry {
    /// A peer just connected (or a web seed just added): nothing sent or unchoked yet.
    pub fn new(
        addr: SocketAddr,
        wire: Option<WireLink>,
        bits: Bitfield,
        tx: mpsc::UnboundedSender<PeerCmd>,
    ) -> PeerEntry {
        PeerEntry {
            addr,
            wire,
            dialed_at: None,
            listen_addr: None,
            bits,
            tx,
            unchoked_by_us: false,
            interested: false,
            received: 0,
            sent: 0,
            lending: false,
            rate: 0.0,
            upload_only: false,
            became_seed: false,
            sharing: false,
            giving_up: false,
        }
    }

    /// A seed we spare (`peer::Peer::pick_from_seed`): a wire peer that had every piece when
    /// it told us what it has. A leecher that completed since is as plentiful a source as it
    /// was, and sparing it would only send its swarm back to the seeds it came from.
    pub fn spared(&self) -> bool {
        self.wire.is_some() && self.bits.is_full() && !self.became_seed
    }

    /// Whether it lends to us while it unchokes us: it is not a spared seed.
    pub fn lends_when_unchoking(&self) -> bool {
        self.wire.is_some() && !self.spared()
    }
}

/// Who is at the other end of a wire connection, and which end dialed.
#[derive(Clone, Copy)]
pub(crate) struct WireLink {
    pub peer_id: [u8; 20],
    pub outgoing: bool,
    /// Over uTP (told to other peers by peer exchange, BEP 11's `added.f` 0x04).
    pub utp: bool,
}

/// The blocks of a piece's current attempt, each with its sender.
#[derive(Default)]
pub(crate) struct Senders {
    pub blocks: Vec<Sender>,
    /// Not all from one peer.
    pub mixed: bool,
}

impl Senders {
    /// The addresses that sent blocks, each once (a peer that reconnected mid-piece is one).
    pub fn peers(&self) -> Vec<SocketAddr> {
        let mut peers: Vec<_> = self.blocks.iter().map(|b| b.addr).collect();
        peers.sort_unstable();
        peers.dedup();
        peers
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Sender {
    pub begin: u32,
    pub key: PeerKey,
    pub addr: SocketAddr,
}

/// A block of a failed attempt at a piece: who sent it and the SHA-1 of what they sent.
pub(crate) struct Suspect {
    pub begin: u32,
    pub addr: SocketAddr,
    pub sha1: [u8; 20],
}

pub(crate) struct State {
    pub picker: Picker,
    pub peers: HashMap<PeerKey, PeerEntry>,
    next_key: PeerKey,
    /// Addresses we may connect to, with how our dials to each went.
    pub known: HashMap<SocketAddr, KnownPeer>,
    pub connecting: HashSet<SocketAddr>,
    pub banned: HashSet<SocketAddr>,
    /// Hosts of banned peers that had connected to us: their incoming connections are closed.
    pub banned_hosts: HashSet<IpAddr>,
    /// Breaches of the protocol by connections from each host (see `peer::run_incoming`).
    pub violations_by_host: HashMap<IpAddr, u32>,
    pub strikes: HashMap<SocketAddr, u32>,
    /// Who sent each block of each piece still being assembled.
    pub senders: HashMap<u32, Senders>,
    /// The blocks of failed attempts at pieces whose blocks came from more than one peer, by
    /// sender and hash: once the piece verifies, whoever sent a block that differs from the
    /// good one is banned, and nobody else (libtorrent's smart ban).
    pub suspects: HashMap<u32, Vec<Suspect>>,
    /// Bytes received per peer address, for reports ("who sent what").
    pub received_from: HashMap<SocketAddr, u64>,
    /// Bytes served per peer address (the most served-to ones, past a cap).
    pub sent_to: BytesByPeer,
    /// Web seeds ([`webseed`]) by their pseudo-address (their bytes are in `received_from`).
    pub web_seeds: HashMap<SocketAddr, String>,
    /// Pieces we had and could no longer read (file truncated or gone under us): no longer
    /// ours, and peers may still believe we have them (see `peer::Peer::queue_request`).
    pub lost: HashSet<u32>,
    /// Set when super-seeding (a complete torrent and [`EngineConfig::super_seed`]).
    pub super_seed: Option<superseed::SuperSeed>,
    /// Blocks booked with the picker and not yet written, by piece: a piece is read back for
    /// its check only when none are left ([`peer::verify_piece`] waits for [`Inner::written`]).
    pub unwritten: HashMap<u32, u32>,
    /// Our peer id, the ids of the connected pow leechers (wire peers with a pow peer id that
    /// are not seeds and still want pieces: a partial seed says `upload_only`, and never
    /// fetches a share; kept by [`State::recount_share`]), and our [`Share`] among them of the
    /// pieces only a seed has.
    own_id: [u8; 20],
    pow_leechers: Vec<[u8; 20]>,
    share: Share,
}

/// Whether a peer id is pow's (`-PW`): only pow leechers split a seed's pieces by
/// [`Share`], so only they are counted in one.
fn is_pow(peer_id: &[u8; 20]) -> bool {
    peer_id.starts_with(b"-PW")
}

impl State {
    /// The key the next peer added gets.
    pub fn next_peer_key(&self) -> PeerKey {
        self.next_key
    }

    /// Says whether peer `key` lends to us, keeping the picker's count of lent pieces in step
    /// with the bits the peer is counted with.
    pub fn set_lending(&mut self, key: PeerKey, lending: bool) {
        let State { peers, picker, .. } = self;
        let Some(entry) = peers.get_mut(&key) else {
            return;
        };
        if entry.lending != lending {
            entry.lending = lending;
            if lending {
                picker.lender_added(&entry.bits);
            } else {
                picker.lender_removed(&entry.bits);
            }
        }
    }

    /// Removes a peer from the session's books (the picker's counts, its requests).
    pub fn remove_peer(&mut self, key: PeerKey) -> Option<PeerEntry> {
        self.set_lending(key, false);
        self.recount_share(key, true);
        let entry = self.peers.remove(&key)?;
        self.picker.peer_disconnected(key, &entry.bits);
        Some(entry)
    }

    /// What the peers lending to us (unchoking us, not spared seeds) send us together, bytes
    /// per second.
    pub fn lending_rate(&self) -> f64 {
        self.peers
            .values()
            .filter(|e| e.lending)
            .map(|e| e.rate)
            .sum()
    }

    /// Counts peer `key` in our seed share (`State::share`) or not, after it connected, its bits
    /// changed, or before it is removed (`leaving`).
    pub fn recount_share(&mut self, key: PeerKey, leaving: bool) {
        let Some(entry) = self.peers.get_mut(&key) else {
            return;
        };
        let Some(wire) = entry.wire else {
            return;
        };
        let sharing =
            !leaving && is_pow(&wire.peer_id) && !entry.bits.is_full() && !entry.upload_only;
        if sharing == entry.sharing {
            return;
        }
        entry.sharing = sharing;
        if sharing {
            self.pow_leechers.push(wire.peer_id);
        } else if let Some(at) = self.pow_leechers.iter().position(|id| *id == wire.peer_id) {
            self.pow_leechers.swap_remove(at);
        }
        self.share = Share::among(&self.own_id, &self.pow_leechers);
    }

    /// Wire connections (web seeds, which are in `peers` too, are not): what
    /// [`EngineConfig::max_peers`] caps. A torrent listing 50 mirrors took every slot.
    pub fn wire_peers(&self) -> usize {
        // `web_seeds` keeps a stopped web seed's URL (for its figures) after it left `peers`.
        self.peers
            .values()
            .filter(|p| !self.web_seeds.contains_key(&p.addr))
            .count()
    }

    /// Wire connections but those given up for a newcomer (see `peer::slot_to_give_up`).
    pub fn staying_wire_peers(&self) -> usize {
        self.wire_peers() - self.peers.values().filter(|p| p.giving_up).count()
    }

    /// Adds a connection (or web seed) under the next key, which it returns.
    pub fn add_peer(&mut self, entry: PeerEntry) -> PeerKey {
        let key = self.next_key;
        self.next_key += 1;
        self.peers.insert(key, entry);
        self.recount_share(key, false);
        key
    }

    /// Books a block that `key` (at `addr`) sent: the picker's verdict on it, and whether every
    /// block of the piece's current attempt so far came from `key`. A wanted block counts as
    /// unwritten until the caller reports it with [`Inner::written`]; peers that asked for the
    /// same block in end-game are sent a cancel.
    pub fn book_block(
        &mut self,
        key: PeerKey,
        addr: SocketAddr,
        index: u32,
        begin: u32,
        length: u32,
    ) -> (pow_picker::Received, bool) {
        use pow_picker::Received;
        let received = self.picker.block_received(key, index, begin, length);
        let cancels = match &received {
            Received::Stored { cancel } | Received::PieceDone { cancel } => cancel.clone(),
            Received::Unwanted => return (received, false),
        };
        let senders = self.senders.entry(index).or_default();
        senders.mixed |= senders.blocks.first().is_some_and(|first| first.key != key);
        senders.blocks.push(Sender { begin, key, addr });
        let sole = !senders.mixed;
        *self.received_from.entry(addr).or_default() += u64::from(length);
        *self.unwritten.entry(index).or_default() += 1;
        if let Some(entry) = self.peers.get_mut(&key) {
            entry.received += u64::from(length);
        }
        if let Some(piece) = self.picker.piece_index(index) {
            let block = pow_metainfo::Block {
                piece,
                begin,
                length,
            };
            for other in cancels {
                if let Some(entry) = self.peers.get(&other) {
                    let _ = entry.tx.send(PeerCmd::Cancel(block));
                }
            }
        }
        (received, sole)
    }
}

pub(crate) struct Inner {
    pub metainfo: Arc<Metainfo>,
    pub storage: Arc<Storage>,
    pub config: EngineConfig,
    pub state: Mutex<State>,
    pub stats: Stats,
    pub complete: watch::Sender<bool>,
    /// The first disk error: the download cannot go on (see [`Torrent::wait_failed`]).
    pub failed: watch::Sender<Option<DiskFailed>>,
    pub shutdown: watch::Sender<bool>,
    /// Held while saving the resume file; holds the piece count last saved and how durably,
    /// so saves are in order and an unchanged set is not written again as durably.
    pub resume_saved: tokio::sync::Mutex<Option<(u32, Durability)>>,
    /// Woken when a piece's last unwritten block is written (see [`State::unwritten`]).
    pub all_written: tokio::sync::Notify,
    /// Starts a choking round before its time: an upload slot was freed ([`choke_loop`]).
    pub choke_wake: tokio::sync::Notify,
    /// The uTP socket on the peer port's number: ours, or a shared listener's once attached.
    pub utp: std::sync::OnceLock<Arc<pow_utp::UtpSocket>>,
}

impl Inner {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("engine state lock")
    }

    /// `count` booked blocks of piece `index` are on disk (or will never be: their write
    /// failed and the piece with it).
    pub fn written(&self, index: u32, count: u32) {
        let mut state = self.lock();
        let Some(left) = state.unwritten.get_mut(&index) else {
            return;
        };
        *left = left.saturating_sub(count);
        if *left == 0 {
            state.unwritten.remove(&index);
            drop(state);
            self.all_written.notify_waiters();
        }
    }

    /// Adds addresses to dial (skipping known, banned and our own) and starts connecting while
    /// under the connection cap. Returns how many were new.
    pub fn learn_peers(self: &Arc<Self>, addrs: impl IntoIterator<Item = SocketAddr>) -> usize {
        let mut state = self.lock();
        let State {
            known,
            connecting,
            banned,
            ..
        } = &mut *state;
        let mut new = 0;
        let mut room = KnownRoom::default();
        // When full, the peer whose dials failed (or never completed a handshake) the most
        // times in a row goes (not one being dialed now): fake addresses that peer exchange
        // named fill the table only until they are dialed, and trackers' peers still get in.
        let forget = |addr: &SocketAddr, peer: &KnownPeer| {
            let failures = peer.failed_dials.max(peer.unfinished_dials);
            (failures > 0 && !connecting.contains(addr)).then_some(failures)
        };
        for addr in addrs {
            let own = self.config.listen.is_some_and(|l| is_own_address(addr, l));
            if own || !dialable(addr) || banned.contains(&addr) || known.contains_key(&addr) {
                continue;
            }
            if room.make(known, forget) {
                known.insert(addr, KnownPeer::default());
                new += 1;
            }
        }
        drop(state);
        try_connect(self);
        new
    }

    /// Peer exchange is on: configured so, and the torrent is not private (BEP 27: its peers
    /// come from its trackers only).
    pub fn pex_enabled(&self) -> bool {
        self.config.pex && !self.metainfo.private
    }

    /// Ends the download with `error`, met doing `doing` ([`DiskFailed::doing`]): a write that
    /// failed (a full disk, a read-only or vanished directory) or a piece that could not be read
    /// back; the first error is the one reported.
    pub fn fail_download(&self, doing: &'static str, error: &pow_storage::StorageError) {
        let failure = DiskFailed {
            doing,
            error: error.to_string(),
            disk_full: error.is_disk_full(),
        };
        self.failed
            .send_if_modified(|failed| failed.is_none() && failed.replace(failure).is_none());
    }

    /// Waits until no booked block of piece `index` is still to be written.
    pub async fn until_written(&self, index: u32) {
        loop {
            let notified = self.all_written.notified();
            tokio::pin!(notified);
            // Registered before the check, so a write finishing in between still wakes us.
            notified.as_mut().enable();
            if !self.lock().unwritten.contains_key(&index) {
                return;
            }
            notified.await;
        }
    }
}

/// A running torrent. Cheap to clone.
#[derive(Clone)]
pub struct Torrent {
    inner: Arc<Inner>,
}

impl Torrent {
    /// Starts the session: listens (if configured) and connects to peers as they are added.
    /// `have` is what is already verified on disk (from `Storage::check_existing`); `picker`
    /// may carry file selections.
    pub async fn start(
        storage: Arc<Storage>,
        picker: Picker,
        mut config: EngineConfig,
    ) -> std::io::Result<Torrent> {
        let listener = match config.listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot listen for peers on {addr}: {e}"))
                })?;
                // Port 0 asks the system for one; the extension handshake, our own address
                // in trackers' answers and the trackers themselves need the one it gave (they
                // were told port 0, and refused it).
                config.listen = Some(listener.local_addr()?);
                Some(listener)
            }
            None => None,
        };
        let metainfo = storage.metainfo().clone();
        let complete = picker.is_complete();
        if config.super_seed && !complete {
            tracing::warn!(
                "--super-seed needs every piece verified ({} of {} here): seeding as usual",
                picker.have().count(),
                metainfo.geometry.piece_count()
            );
        }
        let super_seed = (config.super_seed && complete).then(|| {
            superseed::SuperSeed::new(
                metainfo.geometry.piece_count(),
                u64::from(metainfo.geometry.piece_length()),
            )
        });
        let inner = Arc::new(Inner {
            metainfo,
            storage,
            state: Mutex::new(State {
                picker,
                peers: HashMap::new(),
                next_key: 1,
                known: HashMap::new(),
                connecting: HashSet::new(),
                banned: HashSet::new(),
                banned_hosts: HashSet::new(),
                violations_by_host: HashMap::new(),
                strikes: HashMap::new(),
                senders: HashMap::new(),
                suspects: HashMap::new(),
                received_from: HashMap::new(),
                sent_to: BytesByPeer::default(),
                web_seeds: HashMap::new(),
                lost: HashSet::new(),
                super_seed,
                unwritten: HashMap::new(),
                own_id: config.peer_id,
                pow_leechers: Vec::new(),
                share: Share::all(),
            }),
            stats: Stats::default(),
            complete: watch::channel(complete).0,
            failed: watch::channel(None).0,
            shutdown: watch::channel(false).0,
            resume_saved: tokio::sync::Mutex::new(None),
            all_written: tokio::sync::Notify::new(),
            choke_wake: tokio::sync::Notify::new(),
            utp: std::sync::OnceLock::new(),
            config,
        });
        if let Some(listener) = listener {
            // uTP on the port of the same number, where peers look for it.
            let utp_addr = listener.local_addr()?;
            let pending = Arc::new(listener::PendingHandshakes::default());
            tokio::spawn(peer::accept_loop(
                inner.clone(),
                PeerListener::Tcp(listener),
                pending.clone(),
            ));
            if inner.config.utp != Utp::Off {
                let socket = match inner.config.utp_socket.clone() {
                    Some(socket) => Some(socket),
                    None => transport::bind_utp(utp_addr).await,
                };
                if let Some(socket) = socket {
                    let _ = inner.utp.set(socket.clone());
                    tokio::spawn(peer::accept_loop(
                        inner.clone(),
                        PeerListener::Utp(socket),
                        pending,
                    ));
                }
            }
        }
        tokio::spawn(connect_loop(inner.clone()));
        tokio::spawn(choke_loop(inner.clone()));
        let torrent = Torrent { inner };
        if let Some(every) = torrent.inner.config.resume_interval {
            tokio::spawn(resume_loop(torrent.clone(), every));
        }
        Ok(torrent)
    }

    /// Saves the verified set to the resume file, as durable as `durability` says
    /// ([`pow_storage::resume`]), unless the last save recorded the same set at least that
    /// durably. Returns whether it wrote.
    pub async fn save_resume(&self, durability: Durability) -> Result<bool, String> {
        let mut saved = self.inner.resume_saved.lock().await;
        // Taken after the save lock: a later save never records an older set.
        let have = self.inner.lock().picker.have().clone();
        let count = have.count();
        if let Some((saved_count, saved_durability)) = *saved {
            if saved_count == count
                && (saved_durability == Durability::Synced || durability == Durability::ThisBoot)
            {
                return Ok(false);
            }
        }
        let storage = self.inner.storage.clone();
        tokio::task::spawn_blocking(move || storage.save_resume(&have, durability))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        *saved = Some((count, durability));
        Ok(true)
    }

    pub fn metainfo(&self) -> &Arc<Metainfo> {
        &self.inner.metainfo
    }

    /// Peers to connect to (from a tracker or the command line). Known and banned ones are
    /// skipped; connections start at once while under the connection cap.
    /// Where it listens for peers (the port the system gave, for port 0); None if it does not.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.config.listen
    }

    pub fn add_peers(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.inner.learn_peers(addrs);
    }

    /// Goes on with the connection a magnet link's metadata came over, as a peer connection
    /// dialed by this session (its peer id and handshake bits are the session's). Its address
    /// is booked as being dialed, so that [`Torrent::add_peers`] does not dial it again.
    pub fn adopt(&self, handed: metadata::HandedPeer) {
        let addr = handed.addr();
        {
            let mut state = self.inner.lock();
            if *self.inner.shutdown.borrow() || state.banned.contains(&addr) {
                return;
            }
            state.known.entry(addr).or_default().last_dial = Some(Instant::now());
            state.connecting.insert(addr);
        }
        tokio::spawn(peer::adopt(self.inner.clone(), handed));
    }

    /// BEP 19 web seeds to fetch pieces from alongside peers (each URL once; not http: ignored;
    /// the first [`MAX_WEB_SEEDS`]).
    /// Each runs until the torrent is complete, it is banned, or it has nothing left we want.
    pub fn add_web_seeds(&self, urls: impl IntoIterator<Item = String>) {
        if *self.inner.shutdown.borrow() || self.inner.lock().picker.is_complete() {
            return;
        }
        let mut usable: Vec<String> = Vec::new();
        for url in urls {
            let http = url.starts_with("http://") || url.starts_with("https://");
            if !http {
                tracing::warn!("web seed {url}: not an http URL; ignored");
            } else if !usable.contains(&url) && usable.len() < MAX_WEB_SEEDS {
                usable.push(url);
            }
        }
        for url in usable {
            webseed::start(&self.inner, url);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.inner.lock();
        let stats = &self.inner.stats;
        Snapshot {
            downloaded: stats.downloaded.load(Ordering::Relaxed),
            uploaded: stats.uploaded.load(Ordering::Relaxed),
            wasted: stats.wasted.load(Ordering::Relaxed),
            hash_failures: stats.hash_failures.load(Ordering::Relaxed),
            have_all_received: stats.have_all_received.load(Ordering::Relaxed),
            upload_only_received: stats.upload_only_received.load(Ordering::Relaxed),
            rejects_received: stats.rejects_received.load(Ordering::Relaxed),
            hashed_as_received: stats.hashed_as_received.load(Ordering::Relaxed),
            writer_threads: stats.writer_threads.load(Ordering::Relaxed),
            pex_sent: stats.pex_sent.load(Ordering::Relaxed),
            pex_received: stats.pex_received.load(Ordering::Relaxed),
            peers_from_pex: stats.peers_from_pex.load(Ordering::Relaxed),
            connections_plaintext: stats.connections_plaintext.load(Ordering::Relaxed),
            connections_encrypted_handshake: stats
                .connections_encrypted_handshake
                .load(Ordering::Relaxed),
            connections_rc4: stats.connections_rc4.load(Ordering::Relaxed),
            connections_utp: stats.connections_utp.load(Ordering::Relaxed),
            left: state.picker.bytes_left(),
            pieces_have: state.picker.have().count(),
            pieces_total: self.inner.metainfo.geometry.piece_count(),
            peers: state
                .peers
                .values()
                .filter(|p| !state.web_seeds.contains_key(&p.addr))
                .count(),
            peers_sending: state
                .peers
                .values()
                .filter(|p| p.received > 0 && !state.web_seeds.contains_key(&p.addr))
                .count(),
            web_seeds: state
                .peers
                .values()
                .filter(|p| state.web_seeds.contains_key(&p.addr))
                .count(),
            web_seed_bytes: state
                .web_seeds
                .keys()
                .filter_map(|a| state.received_from.get(a))
                .sum(),
            complete: state.picker.is_complete(),
        }
    }

    /// The first piece at or after `from` that is not both verified and written: the content
    /// before it can be read from disk while the download goes on (the loader's MD5 follows
    /// it). Scans from `from`, so a caller that follows keeps the whole scan linear.
    pub fn readable_until(&self, from: u32) -> u32 {
        let state = self.inner.lock();
        let have = state.picker.have();
        let count = self.inner.metainfo.geometry.piece_count();
        (from..count)
            .find(|&p| !have.get(p) || state.unwritten.contains_key(&p))
            .unwrap_or(count)
    }

    /// Bytes of payload received from each peer address so far.
    pub fn received_by_peer(&self) -> Vec<(SocketAddr, u64)> {
        let state = self.inner.lock();
        let mut v = sorted(&state.received_from);
        v.retain(|(addr, _)| !state.web_seeds.contains_key(addr));
        v
    }

    /// Bytes of payload received from each web seed URL so far (failed pieces included).
    pub fn received_by_web_seed(&self) -> Vec<(String, u64)> {
        let state = self.inner.lock();
        let mut v: Vec<(String, u64)> = state
            .web_seeds
            .iter()
            .map(|(addr, url)| {
                (
                    url.clone(),
                    state.received_from.get(addr).copied().unwrap_or(0),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Bytes of payload served to each peer address so far: at most
    /// [`BytesByPeer::MAX_ADDRESSES`] of them, those served most; the rest are in
    /// [`Torrent::sent_to_others`].
    pub fn sent_by_peer(&self) -> Vec<(SocketAddr, u64)> {
        sorted(&self.inner.lock().sent_to.by_addr)
    }

    /// Peers (addresses) served and bytes served to them that [`Torrent::sent_by_peer`]
    /// leaves out.
    pub fn sent_to_others(&self) -> (u64, u64) {
        self.inner.lock().sent_to.others
    }

    /// Resolves when every wanted piece is verified.
    pub async fn wait_complete(&self) {
        until_true(&mut self.inner.complete.subscribe()).await;
    }

    /// Resolves with the first disk error (a full disk, a read-only or vanished directory, a
    /// piece that cannot be read back).
    /// Every peer would hit it too, so the session cannot make progress: the caller stops.
    /// Pieces verified before it stay on disk.
    pub async fn wait_failed(&self) -> DiskFailed {
        let mut rx = self.inner.failed.subscribe();
        loop {
            if let Some(error) = rx.borrow_and_update().clone() {
                return error;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Closes every connection and stops accepting.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        for peer in self.inner.lock().peers.values() {
            let _ = peer.tx.send(PeerCmd::Close);
        }
    }
}

/// Hands out the upload slots every [`EngineConfig::choke_interval`], and at once when
/// [`Inner::choke_wake`] says one was freed, until the session shuts down.
async fn choke_loop(inner: Arc<Inner>) {
    let mut choker = choker::Choker::new(inner.config.upload_slots, inner.config.choke_interval);
    let mut shutdown = inner.shutdown.subscribe();
    let mut refusals_kept_since = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(choker.round_length()) => {}
            _ = inner.choke_wake.notified() => {}
            _ = until_true(&mut shutdown) => return,
        }
        // A peer that rejected a block without choking us may have been busy for a moment:
        // it is asked again once a round (by the clock: wakes come at any time).
        if refusals_kept_since.elapsed() >= choker.round_length() {
            inner.lock().picker.forget_refusals();
            refusals_kept_since = Instant::now();
        }
        rechoke(&inner, &mut choker, Instant::now());
    }
}

/// One choking round: the choker's choice is unchoked, and interested peers outside it that
/// held a slot are choked. Peers that are not interested keep what they have (a super-seeded
/// peer loses interest between the pieces it is told of). Nothing is unchoked before we have
/// a piece to give.
fn rechoke(inner: &Inner, choker: &mut choker::Choker, now: Instant) {
    let mut state = inner.lock();
    if state.picker.have().count() == 0 {
        return;
    }
    let seeding = state.picker.is_complete();
    let candidates: Vec<choker::Candidate> = state
        .peers
        .iter()
        .filter(|(_, p)| p.wire.is_some())
        .map(|(&key, p)| choker::Candidate {
            key,
            interested: p.interested,
            received: p.received,
            sent: p.sent,
        })
        .collect();
    let chosen = choker.round(&candidates, seeding, now);
    for (key, entry) in state.peers.iter_mut() {
        if entry.wire.is_none() {
            continue;
        }
        if chosen.contains(key) {
            if !entry.unchoked_by_us {
                entry.unchoked_by_us = true;
                let _ = entry.tx.send(PeerCmd::Unchoke);
            }
        } else if entry.unchoked_by_us && entry.interested {
            entry.unchoked_by_us = false;
            let _ = entry.tx.send(PeerCmd::Choke);
        }
    }
}

/// Saves the resume file every `every` while the session runs (only when it changed). A failed
/// save is reported once; the session goes on (the next start just checks the data).
async fn resume_loop(torrent: Torrent, every: Duration) {
    let mut shutdown = torrent.inner.shutdown.subscribe();
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {
                if let Err(e) = torrent.save_resume(Durability::ThisBoot).await {
                    if !warned {
                        tracing::warn!("cannot save the resume file: {e}");
                        warned = true;
                    }
                }
            }
            _ = crate::until_true(&mut shutdown) => return,
        }
    }
}

/// Every few seconds, dials known peers we are not connected to that are due ([`KnownPeer::due`]).
async fn connect_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3)) => try_connect(&inner),
            _ = crate::until_true(&mut shutdown) => return,
        }
    }
}

/// How long after a dial an address is dialed again: [`RETRY_AFTER`] after one that reached a
/// peer (connected, or a handshake it closed: it may be starting) or a first that reached
/// nobody, doubled for each further dial in a row that reached nobody (refused or timed out on
/// every transport), up to [`MAX_RETRY_AFTER`]: a dead address listed by a tracker or an
/// exchange costs a connect timeout every five minutes, not every ten seconds, for as long as
/// the session runs. A peer that answers keeps the 10 s: in one CI run Transmission (encryption
/// required) never connected to a pow seed in 65 s once such dials were backed off too.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Web seeds of a torrent fetched from: each holds up to 16 MiB of requests in flight, and a
/// torrent (or magnet link) may list any number.
pub const MAX_WEB_SEEDS: usize = 8;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The disk error that ended a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFailed {
    /// What failed: "write", or "read back" (a piece's check).
    pub doing: &'static str,
    /// The error, naming the file.
    pub error: String,
    /// For want of space (or quota): freeing some lets a rerun go on.
    pub disk_full: bool,
}

impl std::fmt::Display for DiskFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

/// Room for one more address in a table of known peers, which holds at most
/// [`MAX_KNOWN_PEERS`] (a session's, and a magnet's metadata phase's). Once nothing could be
/// forgotten, it is not looked for again until [`KnownRoom::dial_failed`]: each look is a pass
/// over the table, and a tracker's answer may name 170,000 addresses.
#[derive(Debug, Default)]
pub(crate) struct KnownRoom {
    nothing_to_forget: bool,
}

impl KnownRoom {
    /// True when `known` has room for one more, made if need be by forgetting the address
    /// that `forget` ranks highest (`None`: not to be forgotten).
    pub fn make<R: Ord>(
        &mut self,
        known: &mut HashMap<SocketAddr, KnownPeer>,
        forget: impl Fn(&SocketAddr, &KnownPeer) -> Option<R>,
    ) -> bool {
        if known.len() < MAX_KNOWN_PEERS {
            self.nothing_to_forget = false;
            return true;
        }
        if self.nothing_to_forget {
            return false;
        }
        let worst = known
            .iter()
            .filter_map(|(addr, peer)| Some((forget(addr, peer)?, *addr)))
            .max()
            .map(|(_, addr)| addr);
        let room = worst.is_some_and(|addr| known.remove(&addr).is_some());
        self.nothing_to_forget = !room;
        room
    }

    /// A dial failed, so an address may now be worth forgetting.
    pub fn dial_failed(&mut self) {
        self.nothing_to_forget = false;
    }
}

/// A peer address we may dial, and how our dials to it went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KnownPeer {
    /// When we last dialed it (`None`: never).
    pub last_dial: Option<Instant>,
    /// Dials in a row that reached nobody (refused or timed out on every transport), or whose
    /// connection ended in a breach of the protocol: each doubles the wait before the next.
    pub failed_dials: u32,
    /// Connections to it that ended in a breach of the protocol (see [`MAX_VIOLATIONS`]).
    pub violations: u32,
    /// Dials in a row that did not complete the BitTorrent handshake (nobody there, or a
    /// close or silence during it). Such an address keeps the short redial wait (a peer that
    /// answers may take a few tries: Transmission with encryption required), but is the first
    /// forgotten when the table is full: one peer's exchange named 2,000 ports of its host
    /// that accept and then say nothing, and they held the table for the whole session.
    pub unfinished_dials: u32,
    /// Added to each wait before a redial, drawn once per address (up to
    /// [`MAX_REDIAL_JITTER`]): peers that learned of an address in the same announce do not
    /// redial it in step for ever. Transmission closes a handshake from an address while
    /// another from it is under way, so two pow downloads on one host that dialed a
    /// Transmission seed at the same moment kept colliding every 10 s (one never connected in
    /// 90 s in a CI run).
    pub jitter: Duration,
}

/// See [`KnownPeer::jitter`].
const MAX_REDIAL_JITTER: Duration = Duration::from_secs(2);

impl Default for KnownPeer {
    fn default() -> Self {
        KnownPeer {
            last_dial: None,
            failed_dials: 0,
            violations: 0,
            unfinished_dials: 0,
            jitter: MAX_REDIAL_JITTER.mul_f64(rand::random::<f64>()),
        }
    }
}

impl KnownPeer {
    /// Whether it may be dialed again at `now` (see [`RETRY_AFTER`]).
    fn due(&self, now: Instant) -> bool {
        let wait = RETRY_AFTER
            .saturating_mul(1 << self.failed_dials.saturating_sub(1).min(16))
            .min(MAX_RETRY_AFTER)
            + self.jitter;
        self.last_dial
            .is_none_or(|t| now.saturating_duration_since(t) >= wait)
    }

    /// Records how a dial ended: whether it reached a peer (a connection, whatever became of
    /// the handshake).
    pub fn dialed(&mut self, reached: bool) {
        self.failed_dials = if reached {
            0
        } else {
            self.failed_dials.saturating_add(1)
        };
    }

    /// Records whether a dial's handshake completed (see [`KnownPeer::unfinished_dials`]).
    pub fn handshake_ended(&mut self, completed: bool) {
        self.unfinished_dials = if completed {
            0
        } else {
            self.unfinished_dials.saturating_add(1)
        };
    }

    /// Records a connection that ended in a breach of the protocol: its next dial waits as
    /// after a failed one (a peer that breaks the protocol on every connection was redialed
    /// every 10 s for as long as the session ran). Returns the breaches so far.
    pub fn violated(&mut self) -> u32 {
        self.failed_dials = self.failed_dials.saturating_add(1);
        self.violations = self.violations.saturating_add(1);
        self.violations
    }
}

/// An address a peer can listen at: trackers and peer exchange have named port 0, `0.0.0.0`
/// and multicast addresses, where a dial fails or goes where it should not.
pub fn dialable(addr: SocketAddr) -> bool {
    let ip_ok = match addr.ip() {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()),
        IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
    };
    addr.port() != 0 && ip_ok
}

/// Whether `addr` is our own `listen` address, as a tracker lists it back to us: its port at
/// the address bound, or, bound to every address, at a loopback one. (At a public address it
/// is caught by the peer id in the handshake.)
pub fn is_own_address(addr: SocketAddr, listen: SocketAddr) -> bool {
    let ip = addr.ip();
    addr.port() == listen.port()
        && (ip == listen.ip()
            || ip.is_unspecified()
            || (listen.ip().is_unspecified() && ip.is_loopback()))
}

fn try_connect(inner: &Arc<Inner>) {
    if *inner.shutdown.borrow() {
        return;
    }
    let mut state = inner.lock();
    // Seeds connect out too: some clients (Transmission on loopback) never dial peers that a
    // tracker lists, so they are reached only this way. A peer that dialed us is connected at
    // the listening address it named as well: dialing that would only reach it again.
    let connected: HashSet<SocketAddr> = state
        .peers
        .values()
        .flat_map(|p| [Some(p.addr), p.dialed_at, p.listen_addr])
        .flatten()
        .collect();
    let now = Instant::now();
    let mut slots = inner
        .config
        .max_peers
        .saturating_sub(state.wire_peers() + state.connecting.len());
    let candidates: Vec<SocketAddr> = state
        .known
        .iter()
        .filter(|(addr, known)| {
            !connected.contains(addr)
                && !state.connecting.contains(addr)
                && !state.banned.contains(addr)
                && known.due(now)
        })
        .map(|(addr, _)| *addr)
        .collect();
    for addr in candidates {
        if slots == 0 {
            break;
        }
        slots -= 1;
        if let Some(known) = state.known.get_mut(&addr) {
            known.last_dial = Some(now);
        }
        state.connecting.insert(addr);
        tokio::spawn(peer::connect(inner.clone(), addr));
    }
}

/// Waits until the watched flag is true (or its sender is gone). Holds no borrow across the
/// await, so the futures that use it stay `Send`.
pub(crate) async fn until_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Bytes per peer address, for reports, of at most [`BytesByPeer::MAX_ADDRESSES`] addresses:
/// a seed meets a new address (a new port) at every connection, and one that runs for months
/// kept them all. Past the cap, the address with the fewest bytes is counted in `others`.
#[derive(Debug, Default)]
pub struct BytesByPeer {
    by_addr: HashMap<SocketAddr, u64>,
    /// Addresses folded, and their bytes.
    others: (u64, u64),
}

impl BytesByPeer {
    pub const MAX_ADDRESSES: usize = 4096;

    pub fn add(&mut self, addr: SocketAddr, bytes: u64) {
        self.add_keeping(addr, bytes, Self::MAX_ADDRESSES);
    }

    fn add_keeping(&mut self, addr: SocketAddr, bytes: u64, max_addresses: usize) {
        if let Some(sum) = self.by_addr.get_mut(&addr) {
            *sum += bytes;
            return;
        }
        if self.by_addr.len() >= max_addresses {
            // A scan, once per new address at the cap: cheaper than keeping an order.
            let least = self.by_addr.iter().min_by_key(|(_, sum)| **sum);
            if let Some((&least, &sum)) = least {
                self.by_addr.remove(&least);
                self.others.0 += 1;
                self.others.1 += sum;
            }
        }
        self.by_addr.insert(addr, bytes);
    }
}

fn sorted(counts: &HashMap<SocketAddr, u64>) -> Vec<(SocketAddr, u64)> {
    let mut v: Vec<_> = counts.iter().map(|(a, n)| (*a, *n)).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use pow_metainfo::create::{create, CreateOptions};

    /// Past the cap the address served least is folded, so the ones served most stay listed
    /// and every byte is still counted.
    #[test]
    fn bytes_by_peer_keeps_a_bounded_number_of_addresses() {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut sent = BytesByPeer::default();
        for port in 1..=1000u16 {
            sent.add_keeping(addr(port), u64::from(port), 100);
        }
        sent.add_keeping(addr(1000), 1, 100);
        assert_eq!(sent.by_addr.len(), 100);
        assert_eq!(sent.others, (900, (1..=900u64).sum()));
        assert_eq!(sent.by_addr[&addr(1000)], 1001);
        assert_eq!(sent.by_addr.keys().map(|a| a.port()).min(), Some(901));
        let total: u64 = sent.by_addr.values().sum::<u64>() + sent.others.1;
        assert_eq!(total, (1..=1000u64).sum::<u64>() + 1);
        sent.add(addr(1), 5);
        assert_eq!(
            sent.by_addr.len(),
            101,
            "the cap of a real session is larger"
        );
    }

    /// A torrent of one 32 KiB piece to download (nothing on disk yet), in a temporary
    /// directory, with a runtime to start it on.
    struct OnePiece {
        dir: std::path::PathBuf,
        content: Vec<u8>,
        metainfo: Arc<Metainfo>,
        storage: Arc<Storage>,
        picker: Picker,
        runtime: tokio::runtime::Runtime,
    }

    fn one_piece(tag: &str) -> OnePiece {
        let dir = std::env::temp_dir().join(format!("pow-engine-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let content: Vec<u8> = (0..32768u32).map(|i| (i * 7 % 251) as u8).collect();
        let source = dir.join("piece.bin");
        std::fs::write(&source, &content).unwrap();
        let options = CreateOptions {
            piece_length: Some(32768),
            ..CreateOptions::default()
        };
        let metainfo = Arc::new(create(&source, &options).unwrap().metainfo);
        let storage = Arc::new(Storage::new(metainfo.clone(), &dir.join("out")).unwrap());
        let picker = Picker::new(metainfo.geometry.clone(), Bitfield::new(1));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        OnePiece {
            dir,
            content,
            metainfo,
            storage,
            picker,
            runtime,
        }
    }

    /// Undialable addresses are never known. With the known peers full, a new address takes
    /// the place of the one whose dials failed most, and is dropped while none has failed (it
    /// used to be dropped always: addresses that peer exchange named and that never answer
    /// kept trackers' peers out for good).
    #[test]
    fn a_full_peer_table_makes_room_by_forgetting_a_failed_peer() {
        let OnePiece {
            dir,
            storage,
            picker,
            runtime,
            ..
        } = one_piece("known");
        runtime.block_on(async {
            let torrent = Torrent::start(storage, picker, EngineConfig::default())
                .await
                .unwrap();
            let inner = &torrent.inner;
            let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
            // Trackers and peer exchange have named these; none can be dialed.
            let undialable = ["127.0.0.1:0", "0.0.0.0:6881", "224.0.0.1:6881", "[::]:6881"]
                .map(|a| a.parse::<SocketAddr>().unwrap());
            assert_eq!(inner.learn_peers(undialable), 0);
            assert!(inner.lock().known.is_empty());
            {
                // Dialed just now, so none is due again while the test runs.
                let mut state = inner.lock();
                for port in 0..MAX_KNOWN_PEERS as u16 {
                    let peer = KnownPeer {
                        last_dial: Some(Instant::now()),
                        ..KnownPeer::default()
                    };
                    state.known.insert(addr(10_000 + port), peer);
                }
            }
            assert_eq!(inner.learn_peers([addr(9)]), 0, "no failed peer to forget");
            {
                let mut state = inner.lock();
                state.known.get_mut(&addr(10_001)).unwrap().failed_dials = 1;
                state.known.get_mut(&addr(10_002)).unwrap().failed_dials = 3;
            }
            assert_eq!(inner.learn_peers([addr(9)]), 1);
            let state = inner.lock();
            assert_eq!(state.known.len(), MAX_KNOWN_PEERS);
            assert!(state.known.contains_key(&addr(9)));
            assert!(
                !state.known.contains_key(&addr(10_002)),
                "the most failed is forgotten"
            );
            assert!(state.known.contains_key(&addr(10_001)));
            drop(state);
            // An address that accepts but never completes a handshake goes too, though its
            // dials "reached" it (it held the table for the session before).
            {
                let mut state = inner.lock();
                let silent = state.known.get_mut(&addr(10_003)).unwrap();
                silent.dialed(true);
                silent.handshake_ended(false);
                silent.handshake_ended(false);
                state.known.get_mut(&addr(10_001)).unwrap().failed_dials = 0;
            }
            assert_eq!(inner.learn_peers([addr(8)]), 1);
            assert!(!inner.lock().known.contains_key(&addr(10_003)));
            torrent.shutdown();
        });
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A completion that happens while nobody waits is still seen by a later `wait_complete`
    /// (`download` and `source load` wait anew in each round of their loop).
    #[test]
    fn a_completion_nobody_waited_for_is_kept() {
        let OnePiece {
            dir,
            storage,
            picker,
            runtime,
            ..
        } = one_piece("complete");
        runtime.block_on(async {
            let torrent = Torrent::start(storage, picker, EngineConfig::default())
                .await
                .unwrap();
            peer::record_verdict(&torrent.inner, 0, true, None);
            let waited =
                tokio::time::timeout(Duration::from_secs(5), torrent.wait_complete()).await;
            assert!(waited.is_ok(), "wait_complete missed the completion");
            torrent.shutdown();
        });
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Who counts in our share of a seed's pieces, and which seeds are spared: pow leechers
    /// count until they complete, say `upload_only` or leave; other clients never do; a seed
    /// from the start is spared, a leecher that completed is not (it lends).
    #[test]
    fn a_seed_share_counts_the_pow_leechers_that_still_want_pieces() {
        let OnePiece {
            dir,
            storage,
            picker,
            runtime,
            ..
        } = one_piece("share");
        runtime.block_on(async {
            let config_id = || *b"-PW0100-mmmmmmmmmmmm";
            let config = EngineConfig {
                peer_id: config_id(),
                ..EngineConfig::default()
            };
            let torrent = Torrent::start(storage, picker, config).await.unwrap();
            let (tx, _rx) = mpsc::unbounded_channel();
            let mut all = Bitfield::new(1);
            all.set(0);
            let peer = |id: &[u8; 20], bits: &Bitfield| {
                let link = WireLink {
                    peer_id: *id,
                    outgoing: true,
                    utp: false,
                };
                let addr = SocketAddr::from(([127, 0, 0, 2], 6881));
                PeerEntry::new(addr, Some(link), bits.clone(), tx.clone())
            };
            let none = Bitfield::new(1);
            let (own, a, z) = (
                config_id(),
                *b"-PW0100-aaaaaaaaaaaa",
                *b"-PW0100-zzzzzzzzzzzz",
            );
            let among = |others: &[[u8; 20]]| Share::among(&own, others);
            let mut state = torrent.inner.lock();
            let below = state.add_peer(peer(&a, &none));
            let above = state.add_peer(peer(&z, &none));
            state.add_peer(peer(b"-lt20A0-aaaaaaaaaaaa", &none));
            let seed = state.add_peer(peer(b"-PW0100-bbbbbbbbbbbb", &all));
            assert_eq!(state.share, among(&[a, z]));
            assert!(state.peers[&seed].spared() && !state.peers[&seed].lends_when_unchoking());

            // `below` completes while connected (as a `have` does it).
            let entry = state.peers.get_mut(&below).unwrap();
            entry.bits = all.clone();
            entry.became_seed = true;
            state.recount_share(below, false);
            assert_eq!(state.share, among(&[z]));
            assert!(!state.peers[&below].spared() && state.peers[&below].lends_when_unchoking());

            state.peers.get_mut(&above).unwrap().upload_only = true;
            state.recount_share(above, false);
            assert_eq!(state.share, Share::all());
            state.peers.get_mut(&above).unwrap().upload_only = false;
            state.recount_share(above, false);
            assert_eq!(state.share, among(&[z]));
            state.remove_peer(above);
            assert_eq!(state.share, Share::all());
            drop(state);
            torrent.shutdown();
        });
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The connect loop's view of one address over an hour, ticking each second: every dial
    /// reaches nobody, so the waits double from 10 s up to 5 min; one dial that reaches the
    /// peer brings the next back to 10 s after it.
    #[test]
    fn a_dead_address_is_dialed_less_and_less_often() {
        let t0 = Instant::now();
        let mut known = KnownPeer {
            jitter: Duration::ZERO,
            ..KnownPeer::default()
        };
        let mut dials: Vec<u64> = Vec::new();
        for second in 0..3600 {
            let now = t0 + Duration::from_secs(second);
            if known.due(now) {
                dials.push(second);
                known.last_dial = Some(now);
                known.dialed(false);
            }
        }
        let waits: Vec<u64> = dials.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(waits[..7], [10, 20, 40, 80, 160, 300, 300]);
        assert!(waits[7..].iter().all(|&w| w == 300), "{waits:?}");
        let now = t0 + Duration::from_secs(3600);
        known.last_dial = Some(now);
        known.dialed(true);
        assert!(!known.due(now + Duration::from_secs(9)));
        assert!(known.due(now + Duration::from_secs(10)));
        // Each address waits its own extra, up to 2 s, so that peers that learned of it at
        // once do not redial it in step.
        known.jitter = Duration::from_millis(1500);
        assert!(!known.due(now + Duration::from_millis(11_400)));
        assert!(known.due(now + Duration::from_millis(11_500)));
        let jitters: Vec<Duration> = (0..100).map(|_| KnownPeer::default().jitter).collect();
        assert!(jitters.iter().all(|j| *j < MAX_REDIAL_JITTER));
        assert!(jitters.iter().any(|j| *j != jitters[0]), "{jitters:?}");
    }

    /// Smart-ban suspects of a piece that fails again and again: a sender that sends its block
    /// again with the same bytes adds no entry (they used to pile up, one per block per
    /// failure); one that sends other bytes than the first time is banned at once, before
    /// the piece ever verifies.
    #[test]
    fn a_block_sent_twice_with_other_bytes_bans_its_sender() {
        let OnePiece {
            dir,
            storage,
            picker,
            runtime,
            ..
        } = one_piece("two-faced");
        runtime.block_on(async {
            let torrent = Torrent::start(storage, picker, EngineConfig::default())
                .await
                .unwrap();
            let inner = torrent.inner.clone();
            let addr = |port| SocketAddr::from(([127, 0, 0, 2], port));
            let mut all = Bitfield::new(1);
            all.set(0);
            // The same two peers each time, connected again under new keys: on one connection
            // each would be on parole after the first failure, fetching whole pieces alone.
            let key = AtomicU64::new(100);
            let attempt = |first_block: [u8; 20]| {
                let first = key.fetch_add(2, Ordering::Relaxed);
                let second = first + 1;
                let mut state = inner.lock();
                assert_eq!(state.picker.pick(first, &all, 1).len(), 1);
                assert_eq!(state.picker.pick(second, &all, 1).len(), 1);
                state.book_block(first, addr(1), 0, 0, 16384);
                state.book_block(second, addr(2), 0, 16384, 16384);
                state.unwritten.clear();
                drop(state);
                peer::record_verdict(&inner, 0, false, Some(vec![first_block, [2; 20]]));
            };
            attempt([1; 20]);
            attempt([1; 20]);
            attempt([1; 20]);
            {
                let state = inner.lock();
                assert_eq!(
                    state.suspects[&0].len(),
                    2,
                    "one entry per block and sender"
                );
                assert!(state.banned.is_empty());
            }
            attempt([3; 20]);
            let state = inner.lock();
            assert_eq!(state.banned, HashSet::from([addr(1)]));
            assert_eq!(state.suspects[&0].len(), 2);
            drop(state);
            torrent.shutdown();
        });
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A torrent of two files, `a.bin` and `b.bin` (their lengths given), to download with
    /// pieces of `piece_length`, where a directory stands at `b.bin`'s path: every write into
    /// it fails.
    struct BlockedSecondFile {
        dir: std::path::PathBuf,
        content: Vec<u8>,
        torrent: Torrent,
        runtime: tokio::runtime::Runtime,
    }

    fn blocked_second_file(tag: &str, lengths: [usize; 2], piece_length: u64) -> BlockedSecondFile {
        let dir = std::env::temp_dir().join(format!("pow-engine-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let source = dir.join("set");
        std::fs::create_dir_all(&source).unwrap();
        let content: Vec<u8> = (0..lengths[0] + lengths[1])
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(source.join("a.bin"), &content[..lengths[0]]).unwrap();
        std::fs::write(source.join("b.bin"), &content[lengths[0]..]).unwrap();
        let options = CreateOptions {
            piece_length: Some(piece_length),
            ..CreateOptions::default()
        };
        let metainfo = Arc::new(create(&source, &options).unwrap().metainfo);
        let out = dir.join("out");
        std::fs::create_dir_all(out.join("set").join("b.bin")).unwrap();
        let storage = Arc::new(Storage::new(metainfo.clone(), &out).unwrap());
        let pieces = metainfo.geometry.piece_count();
        let picker = Picker::new(metainfo.geometry.clone(), Bitfield::new(pieces));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let torrent = runtime
            .block_on(Torrent::start(storage, picker, EngineConfig::default()))
            .unwrap();
        BlockedSecondFile {
            dir,
            content,
            torrent,
            runtime,
        }
    }

    /// Books every piece's blocks from one peer (all of them picked first), and returns
    /// them as a peer task hands them to be written, in `order` (piece, block number).
    fn booked(inner: &Inner, content: &[u8], order: &[(u32, u32)]) -> Vec<received::Unwritten> {
        let (key, addr) = (100, SocketAddr::from(([127, 0, 0, 2], 1)));
        let geometry = &inner.metainfo.geometry;
        let mut all = Bitfield::new(geometry.piece_count());
        for piece in 0..geometry.piece_count() {
            all.set(piece);
        }
        let mut state = inner.lock();
        assert!(!state.picker.pick(key, &all, 64).is_empty());
        order
            .iter()
            .map(|&(index, block)| {
                let begin = block * pow_metainfo::BLOCK_SIZE;
                let at = (u64::from(geometry.piece_length()) * u64::from(index)) as usize
                    + begin as usize;
                let data = &content[at..at + pow_metainfo::BLOCK_SIZE as usize];
                let (received, sole) = state.book_block(key, addr, index, begin, data.len() as u32);
                received::Unwritten {
                    index,
                    begin,
                    data: bytes::Bytes::copy_from_slice(data),
                    piece_done: matches!(received, pow_picker::Received::PieceDone { .. }),
                    sole,
                }
            })
            .collect()
    }

    /// A write that fails ends the download; a piece that the same batch completed before it
    /// is on disk whole, and is verified and kept, not dropped with the batch (it used to be
    /// neither decided nor released).
    #[test]
    fn a_write_error_keeps_the_pieces_its_batch_completed_before_it() {
        let BlockedSecondFile {
            dir,
            content,
            torrent,
            runtime,
        } = blocked_second_file("batch", [16384, 16384], 16384);
        runtime.block_on(async {
            let inner = torrent.inner.clone();
            let mut blocks = booked(&inner, &content, &[(0, 0), (1, 0)]);
            assert!(blocks.iter().all(|b| b.piece_done && b.sole));
            let mut hashes = inorder::InOrderHashes::default();
            let written = received::write_blocks(&inner, &mut hashes, &mut blocks);
            assert!(written.is_err());
            assert!(inner.failed.borrow().is_some(), "the download is over");
            let state = inner.lock();
            assert!(state.picker.have().get(0), "piece 0 was written whole");
            assert!(!state.picker.have().get(1));
            drop(state);
            torrent.shutdown();
        });
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// One piece across both files: its blocks 0 and 2 are written, then a batch brings block
    /// 3 (in the file that cannot be written) and block 1, which completes the piece. Sorted,
    /// block 1's run is written and block 3's fails: the piece is not whole, so it must not be
    /// checked. Checked, it failed and counted a hash failure against an honest peer.
    #[test]
    fn a_piece_whose_later_block_failed_to_write_is_not_checked() {
        let BlockedSecondFile {
            dir,
            content,
            torrent,
            runtime,
        } = blocked_second_file("later-block", [49152, 16384], 65536);
        runtime.block_on(async {
            let inner = torrent.inner.clone();
            let mut blocks = booked(&inner, &content, &[(0, 0), (0, 2), (0, 3), (0, 1)]);
            let mut earlier: Vec<_> = blocks.drain(..2).collect();
            assert!(blocks[1].piece_done);
            let mut hashes = inorder::InOrderHashes::default();
            received::write_blocks(&inner, &mut hashes, &mut earlier).unwrap();
            assert!(received::write_blocks(&inner, &mut hashes, &mut blocks).is_err());
            // Ample time for a read-back check of 64 KiB on the blocking pool.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(inner.stats.hash_failures.load(Ordering::Relaxed), 0);
            assert!(!inner.lock().picker.have().get(0));
            torrent.shutdown();
        });
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Peers 100 and 101 (at 127.0.0.2, port 1 and port 2: [`addr`]) each pick a block of
    /// piece 0 of a one-piece torrent: (100, 101).
    fn both_pick_piece_0(inner: &Inner) -> (PeerKey, PeerKey) {
        let (first, second) = (100, 101);
        let mut all = Bitfield::new(1);
        all.set(0);
        let mut state = inner.lock();
        assert_eq!(state.picker.pick(first, &all, 1).len(), 1);
        assert_eq!(state.picker.pick(second, &all, 1).len(), 1);
        (first, second)
    }

    /// The address of test peer `port`.
    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 2], port))
    }

    /// One piece of two blocks. The first peer's block is written; the second peer's block,
    /// which completes the piece, is booked but (as a peer task does until the end of its read)
    /// not yet written. The read-back check must wait for it: read now, it would see zeros,
    /// fail the piece and strike two honest peers.
    #[test]
    fn a_read_back_check_waits_for_blocks_booked_but_not_yet_written() {
        let OnePiece {
            dir,
            content,
            metainfo,
            storage,
            picker,
            runtime,
        } = one_piece("unwritten");
        runtime.block_on(async {
            let torrent = Torrent::start(storage.clone(), picker, EngineConfig::default())
                .await
                .unwrap();
            let inner = torrent.inner.clone();
            let (first, second) = both_pick_piece_0(&inner);
            let piece = metainfo.geometry.piece(0).unwrap();
            let (received, _) = inner.lock().book_block(first, addr(1), 0, 0, 16384);
            assert!(matches!(received, pow_picker::Received::Stored { .. }));
            storage.write_block(piece, 0, &content[..16384]).unwrap();
            inner.written(0, 1);
            let (received, sole) = inner.lock().book_block(second, addr(2), 0, 16384, 16384);
            assert!(matches!(received, pow_picker::Received::PieceDone { .. }) && !sole);

            let check = tokio::spawn(peer::verify_piece(inner.clone(), 0));
            // Ample time for a read-back check (one 32 KiB piece, on the blocking pool) to run.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !check.is_finished(),
                "checked before the last block was written"
            );
            storage
                .write_block(piece, 16384, &content[16384..])
                .unwrap();
            inner.written(0, 1);
            check.await.unwrap();
            assert!(inner.lock().picker.have().get(0));
            assert_eq!(inner.stats.hash_failures.load(Ordering::Relaxed), 0);
            torrent.shutdown();
        });
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A piece whose two blocks came from two peers is written whole, then its file is cut
    /// short behind pow's back (another program), so the read-back check cannot read it. That
    /// is our disk's fault: it used to count as a bad piece and strike both honest senders.
    /// Now nobody is struck, no hash failure is counted, and the download ends naming the read.
    #[test]
    fn a_piece_that_cannot_be_read_back_strikes_nobody_and_ends_the_download() {
        let OnePiece {
            dir,
            content,
            metainfo,
            storage,
            picker,
            runtime,
        } = one_piece("unreadable");
        runtime.block_on(async {
            let torrent = Torrent::start(storage.clone(), picker, EngineConfig::default())
                .await
                .unwrap();
            let inner = torrent.inner.clone();
            let (first, second) = both_pick_piece_0(&inner);
            let piece = metainfo.geometry.piece(0).unwrap();
            for (key, port, begin) in [(first, 1, 0), (second, 2, 16384)] {
                let _ = inner.lock().book_block(key, addr(port), 0, begin, 16384);
                storage
                    .write_block(piece, begin, &content[begin as usize..][..16384])
                    .unwrap();
                inner.written(0, 1);
            }
            let file = dir.join("out").join("piece.bin");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len(1000)
                .unwrap();

            assert!(!peer::verify_piece(inner.clone(), 0).await, "no verdict");
            let failed = inner.failed.borrow().clone().expect("the download is over");
            assert_eq!(failed.doing, "read back");
            assert!(failed.error.contains("piece.bin"), "{}", failed.error);
            let state = inner.lock();
            assert!(state.strikes.is_empty(), "struck {:?}", state.strikes);
            assert!(!state.picker.have().get(0));
            drop(state);
            assert_eq!(inner.stats.hash_failures.load(Ordering::Relaxed), 0);
            torrent.shutdown();
        });
        std::fs::remove_dir_all(dir).unwrap();
    }
}
