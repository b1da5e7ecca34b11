//! A small open tracker for tests and labs: HTTP `/announce` + `/scrape` and BEP 15 UDP on the
//! same port, everything in memory. Memory stays bounded whatever clients send: torrents and
//! peers are capped in total (the least recently active evicted), per torrent (the least
//! recently seen peer evicted) and per address (refused), and HTTP connections are capped in
//! total and per address, each given a few seconds to send its request.

use crate::percent::parse_query;
use crate::udp::{ACTION_ANNOUNCE, ACTION_CONNECT, ACTION_ERROR, ACTION_SCRAPE, PROTOCOL_ID};
use crate::{Event, InfoHash, PeerId, ScrapeStats};
use indexmap::IndexMap;
use pow_bencode::{dict, Value};
use std::collections::hash_map::{DefaultHasher, Entry, RandomState};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// The caps that bound the tracker's memory and its HTTP connections.
///
/// Caps "per address" count an IPv4 address, or an IPv6 /64 (one host is routinely given a
/// whole /64), so that one host cannot take what is meant for all. This machine is not capped:
/// `127.0.0.1` and `::1`, where every process of a local swarm comes from, nor a client that
/// reaches the tracker from the very address it listens on (a `pow serve` whose datasets'
/// seeds announce to its own tracker through its public name: one peer per dataset).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `interval` sent to clients; peers not seen for two intervals expire.
    pub interval: Duration,
    /// Torrents kept; past it, the least recently announced one is dropped with its peers.
    pub max_torrents: usize,
    /// Peers kept per torrent; past it, the least recently seen peer of the torrent is dropped.
    pub max_peers_per_torrent: usize,
    /// Peers kept over all torrents; past it, the least recently announced other torrent is
    /// dropped with its peers.
    ///
    /// This bounds memory whatever `max_torrents` and `max_peers_per_torrent` say (the `pow
    /// tracker` defaults, 10,000 x 2,000, would allow 20 million peers). Worst case on a 64-bit
    /// target, with the defaults (100,000 peers, 10,000 torrents), about 90 MB:
    ///
    /// - a peer: an 88-byte entry in its swarm's seeds or leechers (an index map), which holds
    ///   room for at most 4 entries per peer (it is shrunk when under a quarter full), each
    ///   with 8/7 index buckets of 9 bytes: 393 bytes; its place in the swarm's age index,
    ///   632-byte B-tree nodes at least 5 entries each: 127 bytes; its address's counter, 33
    ///   bytes at up to 16/7 buckets each: 76 bytes. 596 bytes x 100,000 = 60 MB.
    /// - a torrent: the 8 spare entries each of its two maps may keep besides (16 x 98 =
    ///   1,573 bytes), its age index's first node (632), its 225 bytes in the torrent map at
    ///   up to 16/7 buckets each (514) and its place in the activity index (496-byte nodes of
    ///   at least 5: 99). 2.82 KB x 10,000 = 28 MB.
    ///
    /// `tests/server_memory.rs` counts the bytes of the costliest floods it knows: 71 MB at
    /// most (every swarm's seeds and leechers grown to 25 each and left with 5), 40 MB for
    /// ever-new peers.
    /// That is the state; each open HTTP connection adds its request buffer (up to 10 KB).
    pub max_peers_total: usize,
    /// Peers one address may have listed over all torrents; past it, its announces that would
    /// list it once more are refused (its listed peers still re-announce and stop). A torrent
    /// exists only while it has a peer, so this also bounds the torrents one address creates.
    /// 1,000 is 50 clients behind one address in 20 torrents each, and leaves any one address
    /// at most 1% of `max_peers_total`.
    pub max_peers_per_ip: usize,
    /// Most peers returned in one reply (and the default when numwant is absent: 50).
    pub max_numwant: usize,
    /// HTTP connections served at once; more wait to be accepted.
    pub max_http_connections: usize,
    /// HTTP connections one address may hold open; more are closed at once. 64 is above
    /// libtorrent's 50 concurrent HTTP announces (`max_concurrent_http_announces`), and leaves
    /// the others at least seven eighths of `max_http_connections`.
    pub max_http_connections_per_ip: usize,
    /// Time a connection has to send its request's head before it is closed unanswered: a
    /// client sends it as soon as it connects, so a connection silent this long is holding a
    /// slot, not asking.
    pub http_header_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            interval: Duration::from_secs(60),
            max_torrents: 10_000,
            max_peers_per_torrent: 2_000,
            max_peers_total: 100_000,
            max_peers_per_ip: 1_000,
            max_numwant: 200,
            max_http_connections: 512,
            max_http_connections_per_ip: 64,
            http_header_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub torrents: usize,
    pub peers: usize,
    pub announces: u64,
    pub rejected: u64,
    pub evicted_torrents: u64,
    pub evicted_peers: u64,
}

/// A parsed, valid announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    pub numwant: Option<usize>,
    pub compact: bool,
    pub no_peer_id: bool,
}

fn exact<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("{what} must be {N} bytes, got {}", v.len()))
}

fn number(v: &[u8], what: &str) -> Result<u64, String> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return Err(format!("{what} is not a non-negative integer"));
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{what} is out of range"))
}

/// Strict parsing of an HTTP announce query, from the raw (still percent-encoded) bytes.
pub fn parse_announce_query(query: &[u8]) -> Result<Announce, String> {
    let pairs = parse_query(query).ok_or("broken percent-encoding in the query")?;
    let mut fields: HashMap<&[u8], &[u8]> = HashMap::new();
    for (k, v) in &pairs {
        if fields.insert(k, v).is_some() && matches!(&k[..], b"info_hash" | b"peer_id" | b"port") {
            return Err(format!("{} given twice", String::from_utf8_lossy(k)));
        }
    }
    let get = |k: &str| {
        fields
            .get(k.as_bytes())
            .copied()
            .ok_or_else(|| format!("missing {k}"))
    };
    let port = number(get("port")?, "port")?;
    if port == 0 || port > 65535 {
        return Err(format!("invalid port {port}"));
    }
    let event = match fields.get(&b"event"[..]).copied().unwrap_or(b"") {
        b"" | b"empty" | b"paused" => Event::None,
        b"started" => Event::Started,
        b"completed" => Event::Completed,
        b"stopped" => Event::Stopped,
        other => {
            return Err(format!(
                "invalid event {:?}",
                String::from_utf8_lossy(other)
            ))
        }
    };
    let numwant = match fields.get(&b"numwant"[..]) {
        Some(v) => Some(number(v, "numwant")?.min(100_000) as usize),
        None => None,
    };
    Ok(Announce {
        info_hash: exact(get("info_hash")?, "info_hash")?,
        peer_id: exact(get("peer_id")?, "peer_id")?,
        port: port as u16,
        uploaded: number(get("uploaded")?, "uploaded")?,
        downloaded: number(get("downloaded")?, "downloaded")?,
        left: number(get("left")?, "left")?,
        event,
        numwant,
        compact: fields.get(&b"compact"[..]).copied() != Some(b"0"),
        no_peer_id: fields.get(&b"no_peer_id"[..]).copied() == Some(b"1"),
    })
}

/// When a peer or a torrent was last heard from. Stamps are handed out under the lock, never
/// going back in time, and the sequence number makes each one unique: they are the keys of
/// the age indexes, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    at: Instant,
    seq: u64,
}

struct PeerEntry {
    peer_id: PeerId,
    seen: Seen,
}

/// Peers listed over all torrents, in total and per address, for the caps that span torrents.
#[derive(Default)]
struct PeerCounts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl PeerCounts {
    fn of(&self, ip: IpAddr) -> usize {
        self.per_address
            .get(&address_block(ip))
            .copied()
            .unwrap_or(0)
    }

    fn add(&mut self, ip: IpAddr) {
        self.total += 1;
        *self.per_address.entry(address_block(ip)).or_default() += 1;
    }

    fn remove(&mut self, ip: IpAddr) {
        self.total -= 1;
        if let Entry::Occupied(mut count) = self.per_address.entry(address_block(ip)) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

struct Swarm {
    /// The listed peers with nothing left to download, and the others: apart, so that a
    /// seeder's reply draws from the leechers alone without passing over the seeds.
    seeds: IndexMap<SocketAddr, PeerEntry>,
    leechers: IndexMap<SocketAddr, PeerEntry>,
    /// The same peers, least recently seen first: expiry and eviction take from the front
    /// instead of scanning the swarm.
    by_age: BTreeMap<Seen, SocketAddr>,
    downloaded: u32,
    last_activity: Seen,
}

impl Swarm {
    fn new(now: Seen) -> Swarm {
        Swarm {
            seeds: IndexMap::new(),
            leechers: IndexMap::new(),
            by_age: BTreeMap::new(),
            downloaded: 0,
            last_activity: now,
        }
    }

    fn len(&self) -> usize {
        self.seeds.len() + self.leechers.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, key: &SocketAddr) -> Option<&PeerEntry> {
        self.seeds.get(key).or_else(|| self.leechers.get(key))
    }

    fn keys(&self) -> impl Iterator<Item = &SocketAddr> {
        self.seeds.keys().chain(self.leechers.keys())
    }

    fn counts(&self) -> ScrapeStats {
        ScrapeStats {
            complete: self.seeds.len() as u32,
            incomplete: self.leechers.len() as u32,
            downloaded: self.downloaded,
        }
    }

    /// Lists the peer at `key`, or refreshes it if listed.
    fn upsert(&mut self, key: SocketAddr, a: &Announce, seen: Seen, counts: &mut PeerCounts) {
        match self.take(&key) {
            Some(old) => {
                self.by_age.remove(&old.seen);
            }
            None => counts.add(key.ip()),
        }
        let entry = PeerEntry {
            peer_id: a.peer_id,
            seen,
        };
        let group = if a.left == 0 {
            &mut self.seeds
        } else {
            &mut self.leechers
        };
        group.insert(key, entry);
        self.by_age.insert(seen, key);
    }

    fn remove(&mut self, key: &SocketAddr, counts: &mut PeerCounts) {
        let Some(gone) = self.take(key) else {
            return;
        };
        self.by_age.remove(&gone.seen);
        counts.remove(key.ip());
        // A hash map keeps its room when entries leave: a swarm that once held 2,000 peers
        // would hold room for 2,000 for good. Shrinking to half full once under a quarter
        // full keeps the rehashing amortized O(1) per removal.
        for group in [&mut self.seeds, &mut self.leechers] {
            let len = group.len();
            if group.capacity() > 4 * len + 8 {
                group.shrink_to(2 * len);
            }
        }
    }

    /// Takes the peer at `key` out of its group, moving the group's last entry into its place.
    fn take(&mut self, key: &SocketAddr) -> Option<PeerEntry> {
        self.seeds
            .swap_remove(key)
            .or_else(|| self.leechers.swap_remove(key))
    }

    /// Up to `want` listed peers other than `asker` that a reply to it carries, drawn at
    /// random (as opentracker does) in O(`want`): leechers only when `leechers_only`. Drawn in
    /// the map's order, every client of a swarm larger than a reply was sent the same few
    /// peers, who took every newcomer's connections while the rest were named to nobody.
    fn draw(
        &self,
        asker: &SocketAddr,
        leechers_only: bool,
        want: usize,
        families: Families,
    ) -> Vec<(SocketAddr, PeerId)> {
        let leechers = self.leechers.len();
        let pool = if leechers_only { leechers } else { self.len() };
        let at = |i: usize| {
            if i < leechers {
                self.leechers.get_index(i)
            } else {
                self.seeds.get_index(i - leechers)
            }
        };
        let fits = |key: &SocketAddr| key != asker && families.carry(key);
        // One more than wanted, in case the asker is among them.
        let amount = want.saturating_add(1).min(pool);
        let mut drawn: Vec<(SocketAddr, PeerId)> =
            rand::seq::index::sample(&mut rand::rng(), pool, amount)
                .into_iter()
                .filter_map(at)
                .filter(|(key, _)| fits(key))
                .take(want)
                .map(|(key, peer)| (*key, peer.peer_id))
                .collect();
        if drawn.len() < want && amount < pool && families != Families::Both {
            // Peers of the other family took places in the draw (a UDP reply of 50 from a
            // swarm of 300 IPv6 and 10 IPv4 peers named one or two of the 10): the rest in
            // order from a random start, O(swarm) only then.
            let taken: std::collections::HashSet<SocketAddr> =
                drawn.iter().map(|(key, _)| *key).collect();
            let start = rand::Rng::random_range(&mut rand::rng(), 0..pool);
            let more = (start..pool)
                .chain(0..start)
                .filter_map(at)
                .filter(|(key, _)| fits(key) && !taken.contains(*key))
                .take(want - drawn.len())
                .map(|(key, peer)| (*key, peer.peer_id));
            drawn.extend(more.collect::<Vec<_>>());
        }
        drawn
    }

    fn least_recently_seen(&self) -> Option<(Seen, SocketAddr)> {
        self.by_age
            .first_key_value()
            .map(|(seen, key)| (*seen, *key))
    }

    /// Drops the peers last seen before `cutoff`, oldest first: O(1) when none has expired.
    fn expire(&mut self, cutoff: Instant, counts: &mut PeerCounts) {
        while let Some((seen, key)) = self.least_recently_seen() {
            if seen.at >= cutoff {
                break;
            }
            self.remove(&key, counts);
        }
    }

    /// Takes the swarm's peers out of the counts, when the whole swarm is dropped.
    fn uncount(&self, counts: &mut PeerCounts) {
        for key in self.keys() {
            counts.remove(key.ip());
        }
    }
}

/// Caps per address count an IPv6 /64 as one address: one host is routinely given a whole
/// /64 and may announce from any address in it.
fn address_block(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
        v4 => v4,
    }
}

/// The peers a reply can carry: an HTTP reply carries both families (`peers` and `peers6`), a
/// UDP one only the requester's (BEP 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Families {
    Both,
    Ipv4,
    Ipv6,
}

impl Families {
    fn carry(self, peer: &SocketAddr) -> bool {
        match self {
            Families::Both => true,
            Families::Ipv4 => peer.is_ipv4(),
            Families::Ipv6 => peer.is_ipv6(),
        }
    }
}

/// Where a client is, for the caps per address (see [`ServerConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// It reached the tracker from the address the tracker was reached at.
    ThisMachine,
    Elsewhere,
}

impl Origin {
    /// `peer`, seen on a socket of this machine at `local` (unspecified: not known).
    fn of(peer: IpAddr, local: IpAddr) -> Origin {
        let same = !local.is_unspecified() && canonical_ip(peer) == canonical_ip(local);
        if same {
            Origin::ThisMachine
        } else {
            Origin::Elsewhere
        }
    }
}

/// What an announce returns, before encoding.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub peers: Vec<(SocketAddr, PeerId)>,
    pub counts: ScrapeStats,
}

/// The tracker's memory: swarms by info-hash.
///
/// Nothing under the lock scans all torrents or a whole swarm per announce: the least
/// recently active torrent and the least recently seen peer of a swarm come off the front of
/// age indexes (O(log n)), and counts are kept as peers come and go. What remains linear is
/// `sweep`, once per interval, in the number of torrents; a reply's peers are drawn in
/// O(reply).
pub struct State {
    cfg: ServerConfig,
    torrents: HashMap<InfoHash, Swarm>,
    /// Info-hashes, least recently announced first: which torrent to evict.
    by_activity: BTreeMap<Seen, InfoHash>,
    counts: PeerCounts,
    clock: Seen,
    stats: ServerStats,
}

impl State {
    pub fn new(cfg: ServerConfig) -> State {
        State {
            cfg,
            torrents: HashMap::new(),
            by_activity: BTreeMap::new(),
            counts: PeerCounts::default(),
            clock: Seen {
                at: Instant::now(),
                seq: 0,
            },
            stats: ServerStats::default(),
        }
    }

    fn expiry(&self) -> Duration {
        self.cfg.interval * 2
    }

    fn stamp(&mut self, now: Instant) -> Seen {
        self.clock = Seen {
            at: now.max(self.clock.at),
            seq: self.clock.seq + 1,
        };
        self.clock
    }

    pub fn stats(&self) -> ServerStats {
        ServerStats {
            torrents: self.torrents.len(),
            peers: self.counts.total,
            ..self.stats
        }
    }

    /// Drops expired peers and empty swarms: O(torrents + expired peers).
    pub fn sweep(&mut self, now: Instant) {
        let Some(cutoff) = now.checked_sub(self.expiry()) else {
            return;
        };
        let (counts, by_activity) = (&mut self.counts, &mut self.by_activity);
        self.torrents.retain(|_, swarm| {
            swarm.expire(cutoff, counts);
            if swarm.is_empty() {
                by_activity.remove(&swarm.last_activity);
            }
            !swarm.is_empty()
        });
    }

    fn drop_torrent(&mut self, hash: &InfoHash) {
        if let Some(swarm) = self.torrents.remove(hash) {
            self.by_activity.remove(&swarm.last_activity);
            swarm.uncount(&mut self.counts);
        }
    }

    /// Drops the least recently announced torrent but `keep`; false if there is none.
    fn evict_a_torrent(&mut self, keep: Option<&InfoHash>) -> bool {
        let Some(victim) = self
            .by_activity
            .values()
            .find(|hash| Some(*hash) != keep)
            .copied()
        else {
            return false;
        };
        self.drop_torrent(&victim);
        self.stats.evicted_torrents += 1;
        true
    }

    /// Makes room for one more peer in the swarm of `hash`: a full swarm drops its least
    /// recently seen peer, a full tracker the least recently announced other torrent.
    fn make_room_for_a_peer(&mut self, hash: &InfoHash) {
        // A swarm may not outgrow the total, or there would be no other torrent to evict.
        let swarm_cap = self
            .cfg
            .max_peers_per_torrent
            .min(self.cfg.max_peers_total)
            .max(1);
        let Some(swarm) = self.torrents.get_mut(hash) else {
            return;
        };
        if swarm.len() >= swarm_cap {
            if let Some((_, oldest)) = swarm.least_recently_seen() {
                swarm.remove(&oldest, &mut self.counts);
                self.stats.evicted_peers += 1;
            }
            return;
        }
        while self.counts.total >= self.cfg.max_peers_total.max(1) {
            if !self.evict_a_torrent(Some(hash)) {
                break;
            }
        }
    }

    /// Applies one announce from `ip` and picks peers for the reply. Refused (with the reason
    /// for the client) if it would list a peer from an address that has its share listed.
    pub fn announce(&mut self, a: &Announce, ip: IpAddr, now: Instant) -> Result<Reply, String> {
        self.announce_from(a, ip, now, Origin::Elsewhere, Families::Both)
    }

    /// As [`State::announce`], from a client on this machine (`Origin::ThisMachine`) or not,
    /// for a reply that carries `families`.
    fn announce_from(
        &mut self,
        a: &Announce,
        ip: IpAddr,
        now: Instant,
        origin: Origin,
        families: Families,
    ) -> Result<Reply, String> {
        self.stats.announces += 1;
        let key = SocketAddr::new(ip, a.port);
        let seen = self.stamp(now);
        let cutoff = now.checked_sub(self.expiry());
        if let (Some(swarm), Some(cutoff)) = (self.torrents.get_mut(&a.info_hash), cutoff) {
            swarm.expire(cutoff, &mut self.counts);
            if swarm.is_empty() {
                self.drop_torrent(&a.info_hash);
            }
        }
        let listed = self
            .torrents
            .get(&a.info_hash)
            .is_some_and(|swarm| swarm.get(&key).is_some());
        let joins = !listed && a.event != Event::Stopped;
        let per_ip = self.cfg.max_peers_per_ip.max(1);
        let capped = origin == Origin::Elsewhere && !is_local_swarm(ip);
        if joins && capped && self.counts.of(ip) >= per_ip {
            self.stats.rejected += 1;
            return Err(format!(
                "too many peers from your address (at most {per_ip} over all torrents)"
            ));
        }
        if !self.torrents.contains_key(&a.info_hash) {
            if a.event == Event::Stopped {
                return Ok(Reply::default());
            }
            while self.torrents.len() >= self.cfg.max_torrents.max(1) {
                if !self.evict_a_torrent(None) {
                    break;
                }
            }
            self.torrents.insert(a.info_hash, Swarm::new(seen));
            self.by_activity.insert(seen, a.info_hash);
        }
        if joins {
            self.make_room_for_a_peer(&a.info_hash);
        }
        let Some(swarm) = self.torrents.get_mut(&a.info_hash) else {
            return Ok(Reply::default());
        };
        // Only a peer of the swarm keeps it from eviction: a `stopped` from anyone else (which
        // no cap holds back) kept any torrent listed for free.
        if listed || joins {
            self.by_activity.remove(&swarm.last_activity);
            swarm.last_activity = seen;
            self.by_activity.insert(seen, a.info_hash);
        }
        if a.event == Event::Stopped {
            swarm.remove(&key, &mut self.counts);
        } else {
            // Once per peer, as opentracker counts: a client repeating `completed` made
            // scrape's `downloaded` whatever it liked.
            if a.event == Event::Completed && !swarm.seeds.contains_key(&key) {
                swarm.downloaded = swarm.downloaded.saturating_add(1);
            }
            swarm.upsert(key, a, seen, &mut self.counts);
        }
        let want = a.numwant.unwrap_or(50).min(self.cfg.max_numwant);
        // A seeder gets only leechers. A peer with nothing left that has neither downloaded nor
        // uploaded anything may not know the size yet: aria2 fetching a magnet link's metadata
        // announces `left=0`, and it needs the seeders most.
        let seeding = a.left == 0 && (a.downloaded > 0 || a.uploaded > 0);
        let peers = swarm.draw(&key, seeding, want, families);
        let counts = swarm.counts();
        if swarm.is_empty() {
            self.drop_torrent(&a.info_hash);
        }
        Ok(Reply { peers, counts })
    }

    pub fn scrape(&self, hash: &InfoHash) -> ScrapeStats {
        self.torrents
            .get(hash)
            .map(Swarm::counts)
            .unwrap_or_default()
    }

    fn reject(&mut self) {
        self.stats.rejected += 1;
    }
}

/// The bencoded announce reply: compact `peers` (+ `peers6`) or a list of dicts.
pub fn encode_reply(reply: &Reply, compact: bool, no_peer_id: bool, interval: Duration) -> Vec<u8> {
    let secs = interval.as_secs().max(1) as i64;
    let mut d = vec![
        ("interval", Value::Int(secs)),
        ("min interval", Value::Int((secs / 2).max(1))),
        ("complete", Value::Int(i64::from(reply.counts.complete))),
        ("incomplete", Value::Int(i64::from(reply.counts.incomplete))),
        ("downloaded", Value::Int(i64::from(reply.counts.downloaded))),
    ];
    if compact {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (addr, _) in &reply.peers {
            match addr.ip() {
                IpAddr::V4(ip) => {
                    v4.extend_from_slice(&ip.octets());
                    v4.extend_from_slice(&addr.port().to_be_bytes());
                }
                IpAddr::V6(ip) => {
                    v6.extend_from_slice(&ip.octets());
                    v6.extend_from_slice(&addr.port().to_be_bytes());
                }
            }
        }
        d.push(("peers", Value::Bytes(v4)));
        if !v6.is_empty() {
            d.push(("peers6", Value::Bytes(v6)));
        }
    } else {
        let list = reply
            .peers
            .iter()
            .map(|(addr, id)| {
                let mut p = vec![
                    ("ip", Value::str(&addr.ip().to_string())),
                    ("port", Value::Int(i64::from(addr.port()))),
                ];
                if !no_peer_id {
                    p.push(("peer id", Value::Bytes(id.to_vec())));
                }
                dict(p)
            })
            .collect();
        d.push(("peers", Value::List(list)));
    }
    dict(d).encode()
}

pub fn failure(reason: &str) -> Vec<u8> {
    dict([("failure reason", Value::str(reason))]).encode()
}

/// A running tracker. Dropping it stops it.
pub struct TrackerServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TrackerServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl TrackerServer {
    /// Binds TCP and UDP on `addr` (port 0: a free port, the same for both) and starts serving
    /// on the current tokio runtime.
    pub async fn start(addr: SocketAddr, cfg: ServerConfig) -> io::Result<TrackerServer> {
        let (tcp, udp) = bind_pair(addr).await?;
        let addr = tcp.local_addr()?;
        let state = Arc::new(Mutex::new(State::new(cfg.clone())));
        let secret = RandomState::new();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(serve_http(tcp, state.clone(), cfg.clone())));
        tasks.push(tokio::spawn(serve_udp(
            udp,
            state.clone(),
            cfg.clone(),
            secret,
        )));
        let sweeper = state.clone();
        let every = cfg.interval.max(Duration::from_millis(100));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                lock(&sweeper).sweep(Instant::now());
            }
        }));
        tracing::info!(%addr, interval = ?cfg.interval, "tracker listening (HTTP /announce /scrape, UDP)");
        Ok(TrackerServer { addr, state, tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn http_announce_url(&self) -> String {
        format!("http://{}/announce", self.addr)
    }

    pub fn udp_announce_url(&self) -> String {
        format!("udp://{}/announce", self.addr)
    }

    pub fn stats(&self) -> ServerStats {
        lock(&self.state).stats()
    }

    pub fn scrape(&self, hash: &InfoHash) -> ScrapeStats {
        lock(&self.state).scrape(hash)
    }
}

async fn bind_pair(addr: SocketAddr) -> io::Result<(TcpListener, UdpSocket)> {
    if addr.port() != 0 {
        let tcp = TcpListener::bind(addr).await?;
        let udp = UdpSocket::bind(addr).await?;
        return Ok((tcp, udp));
    }
    let mut last = None;
    for _ in 0..20 {
        let tcp = TcpListener::bind(addr).await?;
        match UdpSocket::bind(tcp.local_addr()?).await {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port")))
}

// ---------------------------------------------------------------- HTTP

/// Longest a connection is served, request and reply: past the request head, which has
/// `http_header_timeout`, only a client that reads the reply very slowly gets near it.
const HTTP_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP connections open per address, so that one host's idle connections cannot take every
/// slot.
#[derive(Default)]
struct OpenConnections(Mutex<HashMap<IpAddr, usize>>);

/// A connection's place in [`OpenConnections`], given back when it is dropped.
struct ConnectionSlot {
    table: Arc<OpenConnections>,
    address: IpAddr,
}

impl OpenConnections {
    /// A place for a connection from `ip`, unless its address already holds `cap` of them.
    fn claim(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<ConnectionSlot> {
        // Before the /64 is taken: `::1`'s is `::`.
        let cap = if is_local_swarm(ip) { usize::MAX } else { cap };
        let address = address_block(canonical_ip(ip));
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(address).or_default();
        if *count >= cap.max(1) {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            table: self.clone(),
            address,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Entry::Occupied(mut count) = open.entry(self.address) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

async fn serve_http(listener: TcpListener, state: Arc<Mutex<State>>, cfg: ServerConfig) {
    let permits = Arc::new(Semaphore::new(cfg.max_http_connections.max(1)));
    let open = Arc::new(OpenConnections::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Checked before waiting for a slot: a host over its share is turned away at once
        // (while every slot is taken, its connections wait in the backlog with the others').
        let local = stream.local_addr().map_or(peer.ip(), |l| l.ip());
        let origin = Origin::of(peer.ip(), local);
        let cap = match origin {
            Origin::ThisMachine => usize::MAX,
            Origin::Elsewhere => cfg.max_http_connections_per_ip,
        };
        let Some(slot) = open.claim(peer.ip(), cap) else {
            tracing::debug!(%peer, "HTTP connection closed: its address has its share open");
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let state = state.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _held = (slot, permit);
            let _ = tokio::time::timeout(
                HTTP_EXCHANGE_TIMEOUT,
                handle_http(stream, peer, origin, &state, &cfg),
            )
            .await;
        });
    }
}

/// What reading a request's head came to.
enum Head {
    /// The bytes read and the length of the head within them (up to the blank line).
    Complete(Vec<u8>, usize),
    TooLarge,
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Head::Complete(buf, p));
        }
        if buf.len() > 8192 {
            return Ok(Head::TooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn handle_http(
    mut stream: TcpStream,
    peer: SocketAddr,
    origin: Origin,
    state: &Mutex<State>,
    cfg: &ServerConfig,
) -> io::Result<()> {
    let Ok(head) = tokio::time::timeout(cfg.http_header_timeout, read_head(&mut stream)).await
    else {
        let waited = cfg.http_header_timeout;
        tracing::debug!(%peer, "HTTP connection closed: no request within {waited:?}");
        return Ok(());
    };
    let (buf, head_len) = match head? {
        Head::Complete(buf, head_len) => (buf, head_len),
        Head::TooLarge => {
            return respond(&mut stream, 431, &failure("request headers too large")).await
        }
        Head::Closed => return Ok(()),
    };
    let line_end = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head_len);
    let line = &buf[..line_end];
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return respond(&mut stream, 400, &failure("bad request line")).await;
    };
    if method != b"GET" {
        return respond(&mut stream, 405, &failure("only GET")).await;
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, &b""[..]),
    };
    let ip = canonical_ip(peer.ip());
    let body = if path.ends_with(b"/announce") {
        match parse_announce_query(query) {
            Ok(a) => {
                match lock(state).announce_from(&a, ip, Instant::now(), origin, Families::Both) {
                    Ok(reply) => {
                        log_announce("http", &a, ip, &reply);
                        encode_reply(&reply, a.compact, a.no_peer_id, cfg.interval)
                    }
                    Err(reason) => {
                        tracing::info!(%peer, "refused HTTP announce: {reason}");
                        failure(&reason)
                    }
                }
            }
            Err(reason) => {
                lock(state).reject();
                tracing::info!(%peer, "rejected HTTP announce: {reason}");
                failure(&reason)
            }
        }
    } else if path.ends_with(b"/scrape") {
        scrape_http(query, state)
    } else {
        return respond(&mut stream, 404, &failure("unknown path")).await;
    };
    respond(&mut stream, 200, &body).await
}

fn scrape_http(query: &[u8], state: &Mutex<State>) -> Vec<u8> {
    let Some(pairs) = parse_query(query) else {
        return failure("broken percent-encoding in the query");
    };
    let hashes: Vec<&Vec<u8>> = pairs
        .iter()
        .filter(|(k, _)| k == b"info_hash")
        .map(|(_, v)| v)
        .collect();
    if hashes.is_empty() {
        return failure("full scrape is not supported: give info_hash");
    }
    if hashes.len() > 200 {
        return failure("too many info_hash values (at most 200)");
    }
    let st = lock(state);
    let mut files = Vec::new();
    for h in hashes {
        let Ok(hash) = InfoHash::try_from(&h[..]) else {
            return failure("info_hash must be 20 bytes");
        };
        let c = st.scrape(&hash);
        files.push((
            hash.to_vec(),
            dict([
                ("complete", Value::Int(i64::from(c.complete))),
                ("downloaded", Value::Int(i64::from(c.downloaded))),
                ("incomplete", Value::Int(i64::from(c.incomplete))),
            ]),
        ));
    }
    dict([("files", dict(files))]).encode()
}

/// `127.0.0.1` or `::1` (also as IPv4-mapped): not capped per address (see [`ServerConfig`]).
fn is_local_swarm(ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    ip == std::net::Ipv4Addr::LOCALHOST || ip == Ipv6Addr::LOCALHOST
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn log_announce(proto: &str, a: &Announce, ip: IpAddr, reply: &Reply) {
    tracing::info!(
        proto,
        info_hash = %hex::encode(a.info_hash),
        peer = %SocketAddr::new(ip, a.port),
        event = ?a.event,
        left = a.left,
        returned = reply.peers.len(),
        seeders = reply.counts.complete,
        leechers = reply.counts.incomplete,
        "announce"
    );
}

async fn respond(stream: &mut TcpStream, status: u16, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

// ---------------------------------------------------------------- UDP

/// Connection ids are a keyed hash of the client IP and the minute: no state to keep, valid
/// for the current and the previous minute (BEP 15: servers accept for 2 minutes). Bound to
/// the IP only, not the port, so a client may switch sockets.
fn connection_id(secret: &RandomState, from: SocketAddr, minute: u64) -> u64 {
    let mut h: DefaultHasher = secret.build_hasher();
    canonical_ip(from.ip()).hash(&mut h);
    minute.hash(&mut h);
    h.finish()
}

fn minute_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

async fn serve_udp(
    socket: UdpSocket,
    state: Arc<Mutex<State>>,
    cfg: ServerConfig,
    secret: RandomState,
) {
    let mut buf = vec![0u8; 2048];
    // Known only when bound to one address (the destination of each datagram is not asked).
    let local = socket
        .local_addr()
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |l| l.ip());
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here; keep serving
                tracing::debug!("udp recv: {e}");
                continue;
            }
        };
        let origin = Origin::of(from.ip(), local);
        if let Some(reply) = handle_udp(&buf[..n], from, origin, &state, &cfg, &secret) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

fn udp_error(tid: &[u8], msg: &str) -> Vec<u8> {
    let mut r = ACTION_ERROR.to_be_bytes().to_vec();
    r.extend_from_slice(tid);
    r.extend_from_slice(msg.as_bytes());
    r
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Peers a UDP announce reply names at most, by family: 20 + 200 x 6 = 1,220 bytes and
/// 20 + 66 x 18 = 1,208, each under IPv6's minimum MTU of 1,280 with its headers.
const MAX_UDP_PEERS_V4: usize = 200;
const MAX_UDP_PEERS_V6: usize = 66;

fn handle_udp(
    p: &[u8],
    from: SocketAddr,
    origin: Origin,
    state: &Mutex<State>,
    cfg: &ServerConfig,
    secret: &RandomState,
) -> Option<Vec<u8>> {
    if p.len() < 16 {
        return None;
    }
    let conn = be_u64(&p[0..8]);
    let action = be_u32(&p[8..12]);
    let tid = &p[12..16];
    let minute = minute_now();
    if action == ACTION_CONNECT {
        if conn != PROTOCOL_ID {
            return Some(udp_error(tid, "bad protocol id"));
        }
        let mut r = ACTION_CONNECT.to_be_bytes().to_vec();
        r.extend_from_slice(tid);
        r.extend_from_slice(&connection_id(secret, from, minute).to_be_bytes());
        return Some(r);
    }
    if action != ACTION_ANNOUNCE && action != ACTION_SCRAPE {
        // Not a request: an error or a reply of another tracker's, which a packet with a forged
        // source sends here; answered, with another error, two trackers kept each other
        // answering without end.
        return None;
    }
    let valid = conn == connection_id(secret, from, minute)
        || conn == connection_id(secret, from, minute.wrapping_sub(1));
    if !valid {
        lock(state).reject();
        return Some(udp_error(tid, "invalid connection id"));
    }
    let ip = canonical_ip(from.ip());
    match action {
        ACTION_ANNOUNCE => {
            if p.len() < 98 {
                lock(state).reject();
                return Some(udp_error(tid, "announce packet too short"));
            }
            let Some(event) = Event::from_udp_code(be_u32(&p[80..84])) else {
                lock(state).reject();
                return Some(udp_error(tid, "invalid event"));
            };
            let port = u16::from_be_bytes([p[96], p[97]]);
            if port == 0 {
                lock(state).reject();
                return Some(udp_error(tid, "invalid port 0"));
            }
            let numwant = be_u32(&p[92..96]) as i32;
            let families = if from.is_ipv4() || ip.is_ipv4() {
                Families::Ipv4
            } else {
                Families::Ipv6
            };
            // One datagram that needs no fragments (opentracker's limits): 200 IPv6 peers
            // made 3,620 bytes, which IPv6 paths commonly drop, and the tracker looked dead
            // to a client asking for 200 (libtorrent's default).
            let most = match families {
                Families::Ipv6 => MAX_UDP_PEERS_V6,
                _ => MAX_UDP_PEERS_V4,
            };
            let a = Announce {
                info_hash: p[16..36].try_into().ok()?,
                peer_id: p[36..56].try_into().ok()?,
                downloaded: be_u64(&p[56..64]),
                left: be_u64(&p[64..72]),
                uploaded: be_u64(&p[72..80]),
                event,
                port,
                numwant: usize::try_from(numwant).ok().map(|n| n.min(most)),
                compact: true,
                no_peer_id: true,
            };
            let reply = match lock(state).announce_from(&a, ip, Instant::now(), origin, families) {
                Ok(reply) => reply,
                Err(reason) => {
                    tracing::info!(%from, "refused UDP announce: {reason}");
                    return Some(udp_error(tid, &reason));
                }
            };
            log_announce("udp", &a, ip, &reply);
            let mut r = ACTION_ANNOUNCE.to_be_bytes().to_vec();
            r.extend_from_slice(tid);
            r.extend_from_slice(&(cfg.interval.as_secs().max(1) as u32).to_be_bytes());
            r.extend_from_slice(&reply.counts.incomplete.to_be_bytes());
            r.extend_from_slice(&reply.counts.complete.to_be_bytes());
            for (addr, _) in &reply.peers {
                match addr.ip() {
                    IpAddr::V4(v4) => r.extend_from_slice(&v4.octets()),
                    IpAddr::V6(v6) => r.extend_from_slice(&v6.octets()),
                }
                r.extend_from_slice(&addr.port().to_be_bytes());
            }
            Some(r)
        }
        ACTION_SCRAPE => {
            let hashes = &p[16..];
            if hashes.is_empty()
                || !hashes.chunks_exact(20).remainder().is_empty()
                || hashes.len() / 20 > 74
            {
                return Some(udp_error(tid, "bad scrape request"));
            }
            let st = lock(state);
            let mut r = ACTION_SCRAPE.to_be_bytes().to_vec();
            r.extend_from_slice(tid);
            for h in hashes.chunks_exact(20) {
                let c = st.scrape(h.try_into().ok()?);
                r.extend_from_slice(&c.complete.to_be_bytes());
                r.extend_from_slice(&c.downloaded.to_be_bytes());
                r.extend_from_slice(&c.incomplete.to_be_bytes());
            }
            Some(r)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::percent::encode;
    use crate::response::parse_announce;

    fn query(extra: &str) -> String {
        format!(
            "info_hash={}&peer_id={}&port=6881&uploaded=0&downloaded=0&left=10{extra}",
            encode(&[0x2b; 20]),
            encode(b"-XX0000-123456789012")
        )
    }

    #[test]
    fn strict_query_parsing() {
        let a =
            parse_announce_query(query("&event=started&numwant=5&compact=0").as_bytes()).unwrap();
        assert_eq!(a.info_hash, [0x2b; 20]);
        assert_eq!(a.event, Event::Started);
        assert_eq!(a.numwant, Some(5));
        assert!(!a.compact);
        let err = |q: &str| parse_announce_query(q.as_bytes()).unwrap_err();
        assert!(err(&query("&event=bogus")).contains("event"));
        assert!(err(&query("").replace("port=6881", "port=0")).contains("port"));
        assert!(err(&query("").replace("port=6881", "port=65536")).contains("port"));
        assert!(err(&query("").replace("&left=10", "")).contains("missing left"));
        assert!(err(&query("").replace("left=10", "left=-1")).contains("left"));
        assert!(err(&query("").replace("%2B%2B&", "%2B&")).contains("info_hash"));
        assert!(err(&query("&port=1")).contains("twice"));
        assert!(err("info_hash=%zz").contains("percent"));
        // '+' is a space in form encoding (Python's urlencode): 0x20 bytes
        let plus = query("").replace(&encode(&[0x2b; 20]), &"+".repeat(20));
        assert_eq!(
            parse_announce_query(plus.as_bytes()).unwrap().info_hash,
            [b' '; 20]
        );
    }

    fn ann(port: u16, left: u64, event: Event) -> Announce {
        Announce {
            info_hash: [1; 20],
            peer_id: [port as u8; 20],
            port,
            uploaded: 0,
            downloaded: 0,
            left,
            event,
            numwant: None,
            compact: true,
            no_peer_id: false,
        }
    }

    #[test]
    fn replies_name_different_peers_of_a_swarm_larger_than_a_reply() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut st = State::new(ServerConfig::default());
        let t0 = Instant::now();
        for port in 1000..1300 {
            st.announce(&ann(port, 5, Event::Started), ip, t0).unwrap();
        }
        let mut named = std::collections::HashSet::new();
        let mut firsts = std::collections::HashSet::new();
        for port in 2000..2020 {
            let r = st.announce(&ann(port, 5, Event::Started), ip, t0).unwrap();
            assert_eq!(r.peers.len(), 50);
            firsts.insert(r.peers[0].0);
            named.extend(r.peers.iter().map(|(addr, _)| addr.port()));
        }
        // 20 replies of 50 from 300: a random choice names about 290 of them (the same 50 in
        // the map's order, and a newcomer now and then).
        let old = named.iter().filter(|p| (1000..1300).contains(*p)).count();
        assert!(old > 200, "20 replies named only {old} of the 300 peers");
        assert!(firsts.len() > 10, "{} different first peers", firsts.len());
    }

    /// A UDP reply carries the requester's family only: drawing from both and dropping the
    /// other family after named 1 or 2 of 10 IPv4 peers among 300 IPv6 ones.
    #[test]
    fn a_udp_reply_names_every_peer_of_the_requesters_family_there_is() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mut st = State::new(ServerConfig::default());
        let t0 = Instant::now();
        for port in 1000..1300 {
            st.announce(&ann(port, 5, Event::Started), v6, t0).unwrap();
        }
        for port in 3000..3010 {
            st.announce(&ann(port, 5, Event::Started), v4, t0).unwrap();
        }
        for _ in 0..20 {
            let asker = ann(4000, 5, Event::Started);
            let r = st
                .announce_from(&asker, v4, t0, Origin::Elsewhere, Families::Ipv4)
                .unwrap();
            let named: Vec<u16> = r.peers.iter().map(|(a, _)| a.port()).collect();
            assert!(r.peers.iter().all(|(a, _)| a.is_ipv4()), "{named:?}");
            assert_eq!(r.peers.len(), 10, "{named:?}");
            let r = st
                .announce_from(&asker, v6, t0, Origin::Elsewhere, Families::Ipv6)
                .unwrap();
            assert!(r.peers.iter().all(|(a, _)| a.is_ipv6()));
            assert_eq!(r.peers.len(), 50);
        }
    }

    /// A UDP reply fits one unfragmented datagram: an IPv6 requester asking for 200 peers
    /// got 3,620 bytes.
    #[test]
    fn a_udp_reply_needs_no_fragments() {
        let state = Mutex::new(State::new(ServerConfig::default()));
        let cfg = ServerConfig::default();
        let secret = RandomState::new();
        let t0 = Instant::now();
        for port in 1000..1300 {
            let v6: IpAddr = "2001:db8::1".parse().unwrap();
            let v4: IpAddr = "127.0.0.1".parse().unwrap();
            lock(&state)
                .announce(&ann(port, 5, Event::Started), v6, t0)
                .unwrap();
            lock(&state)
                .announce(&ann(port, 5, Event::Started), v4, t0)
                .unwrap();
        }
        for (from, peers) in [("[2001:db8::2]:7000", 66), ("127.0.0.2:7000", 200)] {
            let from: SocketAddr = from.parse().unwrap();
            let handle =
                |p: &[u8]| handle_udp(p, from, Origin::Elsewhere, &state, &cfg, &secret).unwrap();
            let mut connect = PROTOCOL_ID.to_be_bytes().to_vec();
            connect.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
            connect.extend_from_slice(&[7; 4]);
            let connection = &handle(&connect)[8..16];
            let mut announce = connection.to_vec();
            announce.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
            announce.extend_from_slice(&[8; 4]);
            announce.extend_from_slice(&[1; 20]); // info-hash
            announce.extend_from_slice(&[9; 20]); // peer id
            announce.extend_from_slice(&[0; 8]); // downloaded
            announce.extend_from_slice(&5u64.to_be_bytes()); // left
            announce.extend_from_slice(&[0; 8]); // uploaded
            announce.extend_from_slice(&2u32.to_be_bytes()); // started
            announce.extend_from_slice(&[0; 8]); // ip, key
            announce.extend_from_slice(&200u32.to_be_bytes()); // num_want
            announce.extend_from_slice(&7000u16.to_be_bytes());
            let reply = handle(&announce);
            assert_eq!(be_u32(&reply[0..4]), ACTION_ANNOUNCE, "{reply:?}");
            let entry = if from.is_ipv4() { 6 } else { 18 };
            assert_eq!((reply.len() - 20) / entry, peers, "from {from}");
            assert!(reply.len() <= 1232, "{} bytes from {from}", reply.len());
        }
    }

    /// scrape's `downloaded` counts a peer's `completed` once, as opentracker does.
    #[test]
    fn a_repeated_completed_is_counted_once() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut st = State::new(ServerConfig::default());
        let t0 = Instant::now();
        st.announce(&ann(1000, 5, Event::Started), ip, t0).unwrap();
        for _ in 0..100 {
            st.announce(&ann(1000, 0, Event::Completed), ip, t0)
                .unwrap();
        }
        assert_eq!(st.scrape(&[1; 20]).downloaded, 1);
        st.announce(&ann(1001, 0, Event::Completed), ip, t0)
            .unwrap();
        assert_eq!(st.scrape(&[1; 20]).downloaded, 2);
    }

    #[test]
    fn swarm_rules_stopped_expiry_and_caps() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut st = State::new(ServerConfig {
            interval: Duration::from_secs(10),
            max_torrents: 3,
            max_peers_per_torrent: 4,
            ..ServerConfig::default()
        });
        let t0 = Instant::now();
        let r = st.announce(&ann(1, 0, Event::Started), ip, t0).unwrap();
        assert!(r.peers.is_empty());
        let r = st.announce(&ann(2, 5, Event::Started), ip, t0).unwrap();
        assert_eq!(r.peers.len(), 1);
        assert_eq!((r.counts.complete, r.counts.incomplete), (1, 1));
        // a seeder is not given other seeders
        let seeder = Announce {
            uploaded: 1,
            ..ann(3, 0, Event::Started)
        };
        let r = st.announce(&seeder, ip, t0).unwrap();
        assert_eq!(r.peers, vec![(SocketAddr::new(ip, 2), [2; 20])]);
        // ... unless it has moved no data at all (a magnet client before it knows the size)
        let r = st.announce(&ann(4, 0, Event::Started), ip, t0).unwrap();
        assert_eq!(r.peers.len(), 3);
        st.announce(&ann(4, 0, Event::Stopped), ip, t0).unwrap();
        // stopped removes
        st.announce(&ann(3, 0, Event::Stopped), ip, t0).unwrap();
        assert_eq!(st.scrape(&[1; 20]).complete, 1);
        // completed counts downloads
        st.announce(&ann(2, 0, Event::Completed), ip, t0).unwrap();
        assert_eq!(
            st.scrape(&[1; 20]),
            ScrapeStats {
                complete: 2,
                incomplete: 0,
                downloaded: 1
            }
        );
        // per-torrent cap: oldest evicted
        for port in 10..20 {
            st.announce(
                &ann(port, 1, Event::None),
                ip,
                t0 + Duration::from_secs(u64::from(port)),
            )
            .unwrap();
        }
        assert_eq!(st.stats().peers, 4);
        assert!(st.stats().evicted_peers >= 6);
        // expiry after 2 intervals
        st.sweep(t0 + Duration::from_secs(19 + 21));
        assert_eq!(st.stats().peers, 0);
        assert_eq!(st.stats().torrents, 0);
        // torrent cap
        for i in 0..10u8 {
            let mut a = ann(1, 1, Event::None);
            a.info_hash = [i; 20];
            st.announce(&a, ip, t0 + Duration::from_secs(100 + u64::from(i)))
                .unwrap();
        }
        assert_eq!(st.stats().torrents, 3);
        assert_eq!(st.scrape(&[9; 20]).incomplete, 1);
        assert_eq!(st.scrape(&[0; 20]).incomplete, 0);
    }

    #[test]
    fn replies_compact_dict_and_peers6() {
        let reply = Reply {
            peers: vec![
                ("127.0.0.1:51101".parse().unwrap(), [1; 20]),
                ("[::1]:51102".parse().unwrap(), [2; 20]),
            ],
            counts: ScrapeStats {
                complete: 1,
                incomplete: 1,
                downloaded: 0,
            },
        };
        for compact in [true, false] {
            let body = encode_reply(&reply, compact, false, Duration::from_secs(30));
            let r = parse_announce(&body).unwrap();
            assert_eq!(r.interval, Some(30));
            assert_eq!(r.min_interval, Some(15));
            let got: Vec<SocketAddr> = reply.peers.iter().map(|p| p.0).collect();
            assert_eq!(r.peers, got, "compact={compact}");
        }
        let body = encode_reply(&reply, true, false, Duration::from_secs(30));
        assert!(pow_bencode::decode(&body).unwrap().get("peers6").is_some());
    }

    /// An announce of `event` from `port` on the torrent numbered `torrent`.
    fn on(torrent: u32, port: u16, event: Event) -> Announce {
        let mut a = ann(port, 1, event);
        a.info_hash[..4].copy_from_slice(&torrent.to_be_bytes());
        a
    }

    /// `ip` joins the torrent numbered `torrent` from `port`.
    fn join(
        st: &mut State,
        ip: &str,
        torrent: u32,
        port: u16,
        now: Instant,
    ) -> Result<Reply, String> {
        st.announce(&on(torrent, port, Event::Started), ip.parse().unwrap(), now)
    }

    /// The indexes and counters agree with the swarms they index.
    fn assert_consistent(st: &State) {
        let mut per_address: HashMap<IpAddr, usize> = HashMap::new();
        for (hash, swarm) in &st.torrents {
            assert!(!swarm.is_empty(), "a torrent without peers is dropped");
            assert_eq!(st.by_activity.get(&swarm.last_activity), Some(hash));
            assert_eq!(swarm.by_age.len(), swarm.len());
            for (seen, key) in &swarm.by_age {
                assert_eq!(swarm.get(key).unwrap().seen, *seen);
            }
            for key in swarm.keys() {
                *per_address.entry(address_block(key.ip())).or_default() += 1;
            }
        }
        assert_eq!(st.by_activity.len(), st.torrents.len());
        assert_eq!(st.counts.total, per_address.values().sum::<usize>());
        assert_eq!(st.counts.per_address, per_address);
    }

    #[test]
    fn an_address_lists_at_most_its_share_of_peers_over_all_torrents() {
        let mut st = State::new(ServerConfig {
            max_peers_per_ip: 5,
            ..ServerConfig::default()
        });
        let t0 = Instant::now();
        // ever-new torrents from one address: past its share, refused, and nothing is created
        for torrent in 0..5 {
            join(&mut st, "10.0.0.1", torrent, 6881, t0).unwrap();
        }
        let refused = join(&mut st, "10.0.0.1", 5, 6881, t0).unwrap_err();
        assert!(
            refused.contains("too many peers from your address"),
            "{refused}"
        );
        // ever-new ports in a torrent it is in: refused too
        join(&mut st, "10.0.0.1", 0, 6882, t0).unwrap_err();
        let s = st.stats();
        assert_eq!((s.torrents, s.peers, s.rejected), (5, 5, 2));
        // its listed peers still re-announce and stop, and a stop gives the room back
        let ip = "10.0.0.1".parse().unwrap();
        st.announce(&on(0, 6881, Event::None), ip, t0).unwrap();
        st.announce(&on(0, 6881, Event::Stopped), ip, t0).unwrap();
        join(&mut st, "10.0.0.1", 5, 6881, t0).unwrap();
        // another address is not held back
        let r = join(&mut st, "10.0.0.2", 5, 6881, t0).unwrap();
        assert_eq!(r.peers.len(), 1);
        // an IPv6 /64 is one address; the next /64 is another
        for host in 1..=5 {
            join(&mut st, &format!("2001:db8::{host}"), 9, 6881, t0).unwrap();
        }
        join(&mut st, "2001:db8::ffff:1", 9, 6881, t0).unwrap_err();
        join(&mut st, "2001:db8:0:1::1", 9, 6881, t0).unwrap();
        assert_consistent(&st);
        // expired peers give their room back too
        st.sweep(t0 + Duration::from_secs(121));
        assert_eq!(st.stats().peers, 0);
        join(&mut st, "10.0.0.1", 6, 6881, t0 + Duration::from_secs(121)).unwrap();
        assert_consistent(&st);
    }

    #[test]
    fn a_lab_swarm_on_loopback_is_listed_whole() {
        // 20 peers in each of 5 torrents, every one from 127.0.0.1, with a share of 10 per
        // address: 127.0.0.1 is every local process, not one host
        let mut st = State::new(ServerConfig {
            max_peers_per_ip: 10,
            ..ServerConfig::default()
        });
        let t0 = Instant::now();
        for torrent in 0..5 {
            for n in 0..20 {
                let r = join(&mut st, "127.0.0.1", torrent, 7000 + n, t0).unwrap();
                assert_eq!(r.peers.len(), usize::from(n));
            }
        }
        let s = st.stats();
        assert_eq!((s.torrents, s.peers, s.rejected), (5, 100, 0));
    }

    /// A `stopped` from a peer the swarm does not list changes nothing, and does not count as
    /// the torrent's activity: anyone could keep any torrent from eviction so.
    #[test]
    fn a_stopped_from_outside_the_swarm_does_not_keep_it_from_eviction() {
        let mut st = State::new(ServerConfig {
            max_torrents: 2,
            ..ServerConfig::default()
        });
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        join(&mut st, "10.0.0.1", 1, 6881, at(1)).unwrap();
        join(&mut st, "10.0.0.2", 2, 6881, at(2)).unwrap();
        let outsider = "10.9.9.9".parse().unwrap();
        st.announce(&on(1, 7000, Event::Stopped), outsider, at(3))
            .unwrap();
        join(&mut st, "10.0.0.3", 3, 6881, at(4)).unwrap();
        let listed = |st: &State, torrent: u32| st.scrape(&on(torrent, 1, Event::None).info_hash);
        assert_eq!(listed(&st, 1).incomplete, 0, "torrent 1 was the one to go");
        assert_eq!(listed(&st, 2).incomplete, 1, "torrent 2 went instead");
        assert_consistent(&st);
    }

    #[test]
    fn past_the_total_the_least_recently_announced_other_torrent_goes() {
        let mut st = State::new(ServerConfig {
            max_peers_total: 10,
            max_peers_per_torrent: 4,
            ..ServerConfig::default()
        });
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut clock = 0;
        let mut fill = |st: &mut State, torrent: u32, hosts: std::ops::Range<u32>| {
            for host in hosts {
                clock += 1;
                join(
                    st,
                    &format!("10.0.{torrent}.{host}"),
                    torrent,
                    6881,
                    at(clock),
                )
                .unwrap();
            }
        };
        fill(&mut st, 0, 0..4);
        fill(&mut st, 1, 0..4);
        fill(&mut st, 2, 0..2);
        assert_eq!(st.stats().peers, 10);
        // torrent 0 is announced to again: torrent 1 is now the least recently announced
        join(&mut st, "10.0.0.0", 0, 6881, at(20)).unwrap();
        let r = join(&mut st, "10.0.2.2", 2, 6881, at(21)).unwrap();
        assert_eq!(r.counts.incomplete, 3);
        assert_eq!(st.scrape(&on(1, 0, Event::None).info_hash).incomplete, 0);
        let s = st.stats();
        assert_eq!((s.torrents, s.peers, s.evicted_torrents), (2, 7, 1));
        // a swarm at its own cap drops its least recently seen peer instead
        fill(&mut st, 2, 3..5);
        assert_eq!(st.scrape(&on(2, 0, Event::None).info_hash).incomplete, 4);
        assert_eq!(st.stats().evicted_peers, 1);
        assert_consistent(&st);
        // whatever comes, never more than the total
        for n in 0..1_000u32 {
            join(
                &mut st,
                &format!("10.1.{}.{}", n / 256, n % 256),
                n % 7,
                6881,
                at(30 + u64::from(n)),
            )
            .unwrap();
            assert!(st.stats().peers <= 10);
        }
        assert_consistent(&st);
    }

    #[test]
    fn the_indexes_stay_true_to_the_swarms_whatever_the_announces() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut st = State::new(ServerConfig {
            interval: Duration::from_secs(10),
            max_torrents: 6,
            max_peers_per_torrent: 8,
            max_peers_total: 30,
            max_peers_per_ip: 12,
            ..ServerConfig::default()
        });
        let t0 = Instant::now();
        for step in 0..20_000u64 {
            let now = t0 + Duration::from_millis(step * 10);
            if rng.random_ratio(1, 500) {
                st.sweep(now);
            } else {
                let event = [
                    Event::None,
                    Event::Started,
                    Event::Completed,
                    Event::Stopped,
                ][rng.random_range(0..4)];
                let mut a = on(rng.random_range(0..10), rng.random_range(1..6), event);
                a.left = rng.random_range(0..2);
                let ip = IpAddr::from([10, 0, 0, rng.random_range(0..8)]);
                let _ = st.announce(&a, ip, now);
            }
            assert_consistent(&st);
            let s = st.stats();
            assert!(s.torrents <= 6 && s.peers <= 30, "{s:?}");
        }
    }

    #[test]
    fn a_full_tracker_takes_new_torrents_and_peers_without_scanning() {
        // Finding what to evict by a scan would visit every torrent, then every peer of the
        // swarm, on each of these announces: 2 billion visits for each phase, seconds. From
        // the front of an age index, it is a few microseconds.
        let mut st = State::new(ServerConfig {
            max_torrents: 100_000,
            max_peers_per_torrent: 50_000,
            max_peers_total: 1_000_000,
            max_peers_per_ip: usize::MAX,
            ..ServerConfig::default()
        });
        let t0 = Instant::now();
        let address = |n: u32| IpAddr::from((0x0a00_0000 + n).to_be_bytes());
        for n in 0..100_000 {
            st.announce(&on(n, 6881, Event::Started), address(n), t0)
                .unwrap();
        }
        let started = Instant::now();
        for n in 100_000..120_000 {
            st.announce(&on(n, 6881, Event::Started), address(n), t0)
                .unwrap();
        }
        let new_torrents = started.elapsed();
        assert_eq!(st.stats().evicted_torrents, 20_000);
        let swarm = u32::MAX;
        for n in 0..50_000 {
            st.announce(&on(swarm, 6881, Event::Started), address(n), t0)
                .unwrap();
        }
        let started = Instant::now();
        for n in 50_000..70_000 {
            st.announce(&on(swarm, 6881, Event::Started), address(n), t0)
                .unwrap();
        }
        let new_peers = started.elapsed();
        assert_eq!(st.stats().evicted_peers, 20_000);
        eprintln!("20,000 new torrents took {new_torrents:?}, 20,000 new peers {new_peers:?}");
        assert!(
            new_torrents < Duration::from_secs(1) && new_peers < Duration::from_secs(1),
            "20,000 new torrents took {new_torrents:?}, 20,000 new peers {new_peers:?}"
        );
    }
}
