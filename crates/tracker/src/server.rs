//! A small open tracker for tests and labs: HTTP `/announce` + `/scrape` and BEP 15 UDP on the
//! same port, everything in memory, with caps on torrents and peers (oldest evicted) and on
//! concurrent HTTP connections, so memory stays bounded whatever clients send.

use crate::percent::parse_query;
use crate::udp::{ACTION_ANNOUNCE, ACTION_CONNECT, ACTION_ERROR, ACTION_SCRAPE, PROTOCOL_ID};
use crate::{Event, InfoHash, PeerId, ScrapeStats};
use pow_bencode::{dict, Value};
use std::collections::hash_map::{DefaultHasher, Entry, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `interval` sent to clients; peers not seen for two intervals expire.
    pub interval: Duration,
    pub max_torrents: usize,
    pub max_peers_per_torrent: usize,
    /// Most peers returned in one reply (and the default when numwant is absent: 50).
    pub max_numwant: usize,
    pub max_http_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            interval: Duration::from_secs(60),
            max_torrents: 10_000,
            max_peers_per_torrent: 2_000,
            max_numwant: 200,
            max_http_connections: 512,
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

struct PeerEntry {
    peer_id: PeerId,
    left: u64,
    last_seen: Instant,
}

struct Swarm {
    peers: HashMap<SocketAddr, PeerEntry>,
    downloaded: u32,
    last_activity: Instant,
}

impl Swarm {
    fn counts(&self) -> ScrapeStats {
        let complete = self.peers.values().filter(|p| p.left == 0).count() as u32;
        ScrapeStats {
            complete,
            incomplete: self.peers.len() as u32 - complete,
            downloaded: self.downloaded,
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
pub struct State {
    cfg: ServerConfig,
    torrents: HashMap<InfoHash, Swarm>,
    stats: ServerStats,
}

impl State {
    pub fn new(cfg: ServerConfig) -> State {
        State {
            cfg,
            torrents: HashMap::new(),
            stats: ServerStats::default(),
        }
    }

    fn expiry(&self) -> Duration {
        self.cfg.interval * 2
    }

    pub fn stats(&self) -> ServerStats {
        ServerStats {
            torrents: self.torrents.len(),
            peers: self.torrents.values().map(|s| s.peers.len()).sum(),
            ..self.stats
        }
    }

    /// Drops expired peers and empty swarms.
    pub fn sweep(&mut self, now: Instant) {
        let expiry = self.expiry();
        self.torrents.retain(|_, s| {
            s.peers
                .retain(|_, p| now.saturating_duration_since(p.last_seen) <= expiry);
            !s.peers.is_empty()
        });
    }

    /// Applies one announce from `ip` and picks peers for the reply.
    pub fn announce(&mut self, a: &Announce, ip: IpAddr, now: Instant) -> Reply {
        self.stats.announces += 1;
        let key = SocketAddr::new(ip, a.port);
        if !self.torrents.contains_key(&a.info_hash) {
            if a.event == Event::Stopped {
                return Reply::default();
            }
            if self.torrents.len() >= self.cfg.max_torrents {
                if let Some(oldest) = self
                    .torrents
                    .iter()
                    .min_by_key(|(_, s)| s.last_activity)
                    .map(|(h, _)| *h)
                {
                    self.torrents.remove(&oldest);
                    self.stats.evicted_torrents += 1;
                }
            }
        }
        let expiry = self.expiry();
        let max_peers = self.cfg.max_peers_per_torrent.max(1);
        let swarm = self.torrents.entry(a.info_hash).or_insert_with(|| Swarm {
            peers: HashMap::new(),
            downloaded: 0,
            last_activity: now,
        });
        swarm.last_activity = now;
        swarm
            .peers
            .retain(|_, p| now.saturating_duration_since(p.last_seen) <= expiry);
        if a.event == Event::Stopped {
            swarm.peers.remove(&key);
        } else {
            if a.event == Event::Completed {
                swarm.downloaded = swarm.downloaded.saturating_add(1);
            }
            let len = swarm.peers.len();
            match swarm.peers.entry(key) {
                Entry::Occupied(mut e) => {
                    let p = e.get_mut();
                    p.peer_id = a.peer_id;
                    p.left = a.left;
                    p.last_seen = now;
                }
                Entry::Vacant(e) => {
                    let full = len >= max_peers;
                    e.insert(PeerEntry {
                        peer_id: a.peer_id,
                        left: a.left,
                        last_seen: now,
                    });
                    if full {
                        if let Some(oldest) = swarm
                            .peers
                            .iter()
                            .filter(|(k, _)| **k != key)
                            .min_by_key(|(_, p)| p.last_seen)
                            .map(|(k, _)| *k)
                        {
                            swarm.peers.remove(&oldest);
                            self.stats.evicted_peers += 1;
                        }
                    }
                }
            }
        }
        let want = a.numwant.unwrap_or(50).min(self.cfg.max_numwant);
        // A seeder gets only leechers. A peer with nothing left that has neither downloaded nor
        // uploaded anything may not know the size yet: aria2 fetching a magnet link's metadata
        // announces `left=0`, and it needs the seeders most.
        let seeding = a.left == 0 && (a.downloaded > 0 || a.uploaded > 0);
        let peers = swarm
            .peers
            .iter()
            .filter(|(k, p)| **k != key && !(seeding && p.left == 0))
            .take(want)
            .map(|(k, p)| (*k, p.peer_id))
            .collect();
        let counts = swarm.counts();
        let swarm_empty = swarm.peers.is_empty();
        if swarm_empty {
            self.torrents.remove(&a.info_hash);
        }
        Reply { peers, counts }
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

async fn serve_http(listener: TcpListener, state: Arc<Mutex<State>>, cfg: ServerConfig) {
    let permits = Arc::new(Semaphore::new(cfg.max_http_connections.max(1)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let state = state.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                handle_http(stream, peer, &state, &cfg),
            )
            .await;
        });
    }
}

async fn handle_http(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: &Mutex<State>,
    cfg: &ServerConfig,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_len = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 8192 {
            return respond(&mut stream, 431, &failure("request headers too large")).await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
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
                let reply = lock(state).announce(&a, ip, Instant::now());
                log_announce("http", &a, ip, &reply);
                encode_reply(&reply, a.compact, a.no_peer_id, cfg.interval)
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
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here; keep serving
                tracing::debug!("udp recv: {e}");
                continue;
            }
        };
        if let Some(reply) = handle_udp(&buf[..n], from, &state, &cfg, &secret) {
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

fn handle_udp(
    p: &[u8],
    from: SocketAddr,
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
            let a = Announce {
                info_hash: p[16..36].try_into().ok()?,
                peer_id: p[36..56].try_into().ok()?,
                downloaded: be_u64(&p[56..64]),
                left: be_u64(&p[64..72]),
                uploaded: be_u64(&p[72..80]),
                event,
                port,
                numwant: usize::try_from(numwant).ok(),
                compact: true,
                no_peer_id: true,
            };
            let reply = lock(state).announce(&a, ip, Instant::now());
            log_announce("udp", &a, ip, &reply);
            let mut r = ACTION_ANNOUNCE.to_be_bytes().to_vec();
            r.extend_from_slice(tid);
            r.extend_from_slice(&(cfg.interval.as_secs().max(1) as u32).to_be_bytes());
            r.extend_from_slice(&reply.counts.incomplete.to_be_bytes());
            r.extend_from_slice(&reply.counts.complete.to_be_bytes());
            for (addr, _) in &reply.peers {
                // peers of the requester's address family only
                match (addr.ip(), from.is_ipv4() || ip.is_ipv4()) {
                    (IpAddr::V4(v4), true) => r.extend_from_slice(&v4.octets()),
                    (IpAddr::V6(v6), false) => r.extend_from_slice(&v6.octets()),
                    _ => continue,
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
        _ => Some(udp_error(tid, "unknown action")),
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
    fn swarm_rules_stopped_expiry_and_caps() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut st = State::new(ServerConfig {
            interval: Duration::from_secs(10),
            max_torrents: 3,
            max_peers_per_torrent: 4,
            ..ServerConfig::default()
        });
        let t0 = Instant::now();
        let r = st.announce(&ann(1, 0, Event::Started), ip, t0);
        assert!(r.peers.is_empty());
        let r = st.announce(&ann(2, 5, Event::Started), ip, t0);
        assert_eq!(r.peers.len(), 1);
        assert_eq!((r.counts.complete, r.counts.incomplete), (1, 1));
        // a seeder is not given other seeders
        let seeder = Announce {
            uploaded: 1,
            ..ann(3, 0, Event::Started)
        };
        let r = st.announce(&seeder, ip, t0);
        assert_eq!(r.peers, vec![(SocketAddr::new(ip, 2), [2; 20])]);
        // ... unless it has moved no data at all (a magnet client before it knows the size)
        let r = st.announce(&ann(4, 0, Event::Started), ip, t0);
        assert_eq!(r.peers.len(), 3);
        st.announce(&ann(4, 0, Event::Stopped), ip, t0);
        // stopped removes
        st.announce(&ann(3, 0, Event::Stopped), ip, t0);
        assert_eq!(st.scrape(&[1; 20]).complete, 1);
        // completed counts downloads
        st.announce(&ann(2, 0, Event::Completed), ip, t0);
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
            );
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
            st.announce(&a, ip, t0 + Duration::from_secs(100 + u64::from(i)));
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
}
