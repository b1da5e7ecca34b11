//! A Mainline DHT node (BEP 5, IPv4): finds peers for an info-hash without a tracker, and
//! tells the network we are one.
//!
//! One UDP socket; a task reads it, answers queries (`ping`, `find_node`, `get_peers`,
//! `announce_peer`, so other nodes can use us as we use them) and hands responses to the
//! query that waits for them by transaction id. [`Dht::bootstrap`] fills the routing table
//! ([`table`]) from known routers; [`Dht::announce`] runs an iterative `get_peers` lookup
//! (at most [`ALPHA`] queries in flight, until the [`table::K`] closest nodes have answered
//! or failed) and then `announce_peer`s to the closest that gave a token. Every minute
//! [`Dht::upkeep`] pings nodes silent for 15 minutes and refreshes a bucket none of whose
//! nodes answered lately (BEP 5), so nodes that left are given up on and replaced.
//!
//! Bounds against hostile nodes: a lookup queries at most [`MAX_LOOKUP_NODES`] nodes, takes
//! at most [`LOOKUP_TIME`], keeps at most [`MAX_LOOKUP_PEERS`] peers and takes at most
//! [`table::K`] nodes from one response; a response is matched only from the address the query
//! went to, by a random transaction id;
//! announces are accepted only with a token we gave that address (SHA-1 of a secret that
//! changes every 5 minutes and the address), and we keep at most [`MAX_PEERS_PER_HASH`] peers
//! for each of at most [`MAX_HASHES`] info-hashes, 30 minutes each, at most
//! [`MAX_HASHES_PER_IP`] of them announced first by one IP address. A node enters the routing
//! table only by answering a query of ours: one that queries us is pinged first (at most
//! [`MAX_VERIFYING`] at once), since a query's source address may be forged.
//!
//! The codecs ([`krpc`]) know nothing of sockets; this crate knows nothing of the engine: the
//! caller gives peers found to its torrent.

pub mod krpc;
pub mod state;
pub mod table;

use krpc::{Body, Id, Message, NodeInfo, Query, Response};
use rand::Rng;
use sha1::{Digest, Sha1};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use table::{distance, Table, K};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// Queries in flight at once in a lookup (Kademlia's alpha).
pub const ALPHA: usize = 4;
/// Most nodes one lookup queries.
pub const MAX_LOOKUP_NODES: usize = 100;
/// Most peers one lookup returns.
pub const MAX_LOOKUP_PEERS: usize = 200;
/// Longest a lookup runs.
pub const LOOKUP_TIME: Duration = Duration::from_secs(20);
/// How long a node has to answer a query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Peers kept per info-hash announced to us, and info-hashes kept.
pub const MAX_PEERS_PER_HASH: usize = 100;
pub const MAX_HASHES: usize = 2000;
/// Peers one IP address (an IPv6 /64) may have kept for one info-hash (loopback, where local
/// test swarms live, excepted): one host announcing a hundred ports pushed every other peer out.
pub const MAX_PEERS_PER_IP_AND_HASH: usize = 4;
/// Info-hashes one IP address (an IPv6 /64) may have had us keep, by announcing them first
/// (loopback excepted): one host with a token announced 2,000 made-up ones, every place there is, and
/// for half an hour nobody else's announce of a new torrent was kept. A node is among the 8
/// nearest to few hashes of a real network (a host seeding 10,000 torrents in a DHT of a
/// million nodes reaches a given node with about one of them), so honest hosts stay far below.
pub const MAX_HASHES_PER_IP: usize = 64;
/// An announced peer is forgotten after this long without announcing again.
const PEER_TTL: Duration = Duration::from_secs(30 * 60);
/// The token secret changes this often; a token from the one before is still accepted.
const SECRET_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// Peers returned in one `get_peers` response (a UDP datagram must stay well under 1,500 bytes).
const VALUES_PER_RESPONSE: usize = 50;
/// Nodes one lookup keeps in view, asked or not (when full, a nearer one takes the place of the
/// farthest not asked yet).
const MAX_CANDIDATES: usize = 4 * MAX_LOOKUP_NODES;
/// Nodes that queried us and are being pinged before they enter the routing table, at most.
pub const MAX_VERIFYING: usize = 16;
/// How often the routing table's upkeep runs ([`Dht::upkeep`]).
pub const UPKEEP_EVERY: Duration = Duration::from_secs(60);
/// Questionable nodes pinged in one round of upkeep: 480 an hour, against a full table's
/// 1,280 entries that mostly stay good by answering lookups.
pub const PINGS_PER_UPKEEP: usize = 8;

/// The routers of the public DHT, for `--dht` without `--dht-bootstrap`.
pub const PUBLIC_ROUTERS: &[&str] = &[
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
    "dht.libtorrent.org:25401",
];

/// A running DHT node. Cheap to clone; [`Dht::shutdown`] stops it.
#[derive(Clone)]
pub struct Dht {
    inner: Arc<Inner>,
}

/// A datagram and its sender.
pub type Datagram = (Vec<u8>, SocketAddr);

struct Inner {
    socket: Arc<UdpSocket>,
    /// Datagrams read for us by the socket's owner (uTP on the same port), when it is shared.
    incoming: Option<tokio::sync::Mutex<mpsc::Receiver<Datagram>>>,
    local: SocketAddr,
    id: Id,
    state: Mutex<State>,
    stop: watch::Sender<bool>,
}

struct State {
    table: Table,
    /// Queries waiting for an answer, by transaction id, with the address asked.
    pending: HashMap<[u8; 2], (SocketAddr, oneshot::Sender<Reply>)>,
    /// Peers announced to us, by info-hash.
    stored: HashMap<Id, Announced>,
    /// How many of the `stored` info-hashes each IP address announced first.
    first_announced_by: HashMap<IpAddr, usize>,
    secret: [u8; 20],
    previous_secret: [u8; 20],
    secret_since: Instant,
    /// Nodes that queried us, pinged to see whether they answer ([`verify`]): their address,
    /// with port 0 but on loopback.
    verifying: HashSet<SocketAddrV4>,
}

enum Reply {
    Response(Response),
    Error(i64, String),
}

/// Why [`Dht::query`] failed when the node did not answer (rather than answering an error).
const NO_ANSWER: &str = "no answer";

/// What a lookup asks for.
#[derive(Debug, Clone, Copy)]
enum Find {
    Nodes,
    /// Peers, then announcing us on this TCP port when given.
    Peers {
        announce: Option<u16>,
    },
}

/// What a round of [`Dht::upkeep`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Upkeep {
    /// Questionable nodes pinged, and how many answered.
    pub pinged: usize,
    pub answered: usize,
    /// The bucket refreshed, if one was.
    pub refreshed: Option<usize>,
}

/// What a lookup found.
#[derive(Debug, Default, Clone)]
pub struct Lookup {
    /// Peers for the info-hash, each once.
    pub peers: Vec<SocketAddr>,
    /// Nodes asked, and how many answered.
    pub queried: usize,
    pub answered: usize,
    /// Nodes that accepted our `announce_peer`.
    pub announced: usize,
}

impl Dht {
    /// Binds the node's UDP socket (IPv4) and starts answering, under a new random id.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Dht> {
        Dht::bind_as(addr, None).await
    }

    /// As [`Dht::bind`], under `id` when given (a saved one, [`state`]).
    pub async fn bind_as(addr: SocketAddr, id: Option<Id>) -> std::io::Result<Dht> {
        let socket = UdpSocket::bind(addr).await?;
        Dht::start(Arc::new(socket), None, id)
    }

    /// A node on a socket another protocol owns (uTP on the peer port, as libtorrent and
    /// Transmission share it): it sends from `socket` and reads the datagrams the owner
    /// hands over on `incoming`.
    pub fn on_shared_socket(
        socket: Arc<UdpSocket>,
        incoming: mpsc::Receiver<Datagram>,
        id: Option<Id>,
    ) -> std::io::Result<Dht> {
        Dht::start(socket, Some(incoming), id)
    }

    fn start(
        socket: Arc<UdpSocket>,
        incoming: Option<mpsc::Receiver<Datagram>>,
        id: Option<Id>,
    ) -> std::io::Result<Dht> {
        let local = socket.local_addr()?;
        let mut rng = rand::rng();
        let id: Id = id.unwrap_or_else(|| rng.random());
        let inner = Arc::new(Inner {
            socket,
            incoming: incoming.map(tokio::sync::Mutex::new),
            local,
            id,
            state: Mutex::new(State {
                table: Table::new(id),
                pending: HashMap::new(),
                stored: HashMap::new(),
                first_announced_by: HashMap::new(),
                secret: rng.random(),
                previous_secret: rng.random(),
                secret_since: Instant::now(),
                verifying: HashSet::new(),
            }),
            stop: watch::channel(false).0,
        });
        // Subscribed before the tasks run: a receiver made after `shutdown` would wait for a
        // change that already happened.
        tokio::spawn(receive_loop(inner.clone(), inner.stop.subscribe()));
        let dht = Dht {
            inner: inner.clone(),
        };
        tokio::spawn(upkeep_loop(dht, inner.stop.subscribe()));
        Ok(Dht { inner })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    pub fn id(&self) -> Id {
        self.inner.id
    }

    /// Nodes in the routing table.
    pub fn nodes(&self) -> usize {
        self.inner.lock().table.len()
    }

    /// The nodes of the routing table not yet given up on: lookups ask only these.
    pub fn answering_nodes(&self) -> usize {
        self.inner.lock().table.answering()
    }

    /// Our id and the nodes of the routing table that answered lately, most recently heard
    /// first: what to keep for the next run ([`state::save`]).
    pub fn saved_state(&self) -> state::Saved {
        let nodes = self.inner.lock().table.good(state::MAX_SAVED_NODES);
        state::Saved {
            id: self.inner.id,
            nodes: nodes.into_iter().map(|n| SocketAddr::V4(n.addr)).collect(),
        }
    }

    /// Announces kept for other nodes: info-hashes, and peers over all of them.
    pub fn stored(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (
            state.stored.len(),
            state.stored.values().map(|a| a.peers.len()).sum(),
        )
    }

    /// A node someone told us of (a peer's BEP 5 `port` message): pinged, and kept in the
    /// routing table if it answers.
    pub fn add_node(&self, addr: SocketAddr) {
        let Some(addr) = krpc::v4(addr).filter(krpc::dialable) else {
            return;
        };
        let dht = self.clone();
        tokio::spawn(async move {
            let _ = dht.query(addr, Query::Ping).await;
        });
    }

    /// Stops answering and reading; queries in flight fail.
    pub fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
    }

    /// Asks `routers` (and then the nodes they name) for the nodes closest to our own id, to
    /// fill the routing table. Returns the table's size after.
    pub async fn bootstrap(&self, routers: &[SocketAddr]) -> usize {
        let routers: Vec<SocketAddrV4> = routers.iter().filter_map(|a| krpc::v4(*a)).collect();
        self.lookup(self.inner.id, Find::Nodes, &routers).await;
        self.nodes()
    }

    /// Finds peers for `info_hash` (an iterative `get_peers`) without announcing.
    pub async fn get_peers(&self, info_hash: Id) -> Lookup {
        self.lookup(info_hash, Find::Peers { announce: None }, &[])
            .await
    }

    /// Finds peers for `info_hash` and announces that we are one, on TCP port `port`, to the
    /// closest nodes that answered.
    pub async fn announce(&self, info_hash: Id, port: u16) -> Lookup {
        self.lookup(
            info_hash,
            Find::Peers {
                announce: Some(port),
            },
            &[],
        )
        .await
    }

    /// One round of BEP 5's upkeep of the routing table at `now` (run every [`UPKEEP_EVERY`]):
    /// up to [`PINGS_PER_UPKEEP`] questionable nodes are pinged (an answer makes a node good
    /// again, silence counts against it, so a node that left is given up on and its place
    /// freed), then the stalest bucket, if none of its nodes was heard from lately, is
    /// refreshed: a `find_node` lookup of a random id in its range brings it nodes that answer.
    pub async fn upkeep(&self, now: Instant) -> Upkeep {
        let (pinged, answered) = self.ping_questionable(now).await;
        Upkeep {
            pinged,
            answered,
            refreshed: self.refresh_stale_bucket(now).await,
        }
    }

    /// Pings up to [`PINGS_PER_UPKEEP`] questionable nodes; returns how many, and how many
    /// answered under the id we know them by. An error reply counts against a node as
    /// silence does: else a node answering so was pinged first in every round, forever.
    async fn ping_questionable(&self, now: Instant) -> (usize, usize) {
        let questionable = self.inner.lock().table.questionable(now, PINGS_PER_UPKEEP);
        let pinged = questionable.len();
        let mut pings = tokio::task::JoinSet::new();
        for node in questionable {
            let dht = self.clone();
            pings.spawn(async move {
                match dht.query(node.addr, Query::Ping).await {
                    Ok(response) => response.id == node.id,
                    Err(why) => {
                        if why != NO_ANSWER {
                            dht.inner.lock().table.failed(node.addr);
                        }
                        false
                    }
                }
            });
        }
        let mut answered = 0;
        while let Some(good) = pings.join_next().await {
            answered += usize::from(good.unwrap_or(false));
        }
        (pinged, answered)
    }

    /// Refreshes the stalest bucket, if one is stale at `now` ([`Table::stale_bucket`]):
    /// a `find_node` lookup of a random id in its range. Returns the bucket.
    async fn refresh_stale_bucket(&self, now: Instant) -> Option<usize> {
        let (b, target) = {
            let mut state = self.inner.lock();
            let b = state.table.stale_bucket(now)?;
            state.table.refreshing(b, now);
            (b, state.table.id_in_bucket(b, rand::rng().random()))
        };
        self.lookup(target, Find::Nodes, &[]).await;
        Some(b)
    }

    /// The iterative lookup: `get_peers` when looking for peers (and announcing), `find_node`
    /// when for nodes (bootstrap, a bucket's refresh). `seeds` are addresses to start from
    /// besides the table.
    async fn lookup(&self, target: Id, find: Find, seeds: &[SocketAddrV4]) -> Lookup {
        let (peers_wanted, announce_port) = match find {
            Find::Nodes => (false, None),
            Find::Peers { announce } => (true, announce),
        };
        let mut candidates = Candidates::new(target);
        for node in self.inner.lock().table.closest(&target, K) {
            candidates.add(Some(node.id), node.addr);
        }
        for addr in seeds {
            candidates.add(None, *addr);
        }
        let deadline = tokio::time::Instant::now() + LOOKUP_TIME;
        let mut in_flight = tokio::task::JoinSet::new();
        let mut peers: Vec<SocketAddr> = Vec::new();
        let mut lookup = Lookup::default();
        loop {
            while in_flight.len() < ALPHA && lookup.queried < MAX_LOOKUP_NODES {
                let Some(addr) = candidates.next_to_ask() else {
                    break;
                };
                lookup.queried += 1;
                let query = match peers_wanted {
                    true => Query::GetPeers { info_hash: target },
                    false => Query::FindNode { target },
                };
                let dht = self.clone();
                in_flight.spawn(async move { (addr, dht.query(addr, query).await) });
            }
            let next = tokio::time::timeout_at(deadline, in_flight.join_next()).await;
            let Ok(Some(Ok((addr, result)))) = next else {
                break;
            };
            match result {
                Ok(response) => {
                    lookup.answered += 1;
                    for value in &response.values {
                        if peers.len() < MAX_LOOKUP_PEERS && !peers.contains(value) {
                            peers.push(*value);
                        }
                    }
                    candidates.add_named(&response.nodes, &self.inner.id);
                    candidates.answered(addr, response.id, response.token);
                }
                Err(_) => candidates.failed(addr),
            }
        }
        in_flight.abort_all();
        if let Some(port) = announce_port {
            let mut announces = tokio::task::JoinSet::new();
            for (addr, token) in candidates.closest_with_tokens(K) {
                let dht = self.clone();
                let query = Query::AnnouncePeer {
                    info_hash: target,
                    port,
                    implied_port: false,
                    token,
                };
                announces.spawn(async move { dht.query(addr, query).await.is_ok() });
            }
            while let Some(done) = announces.join_next().await {
                lookup.announced += usize::from(done.unwrap_or(false));
            }
        }
        lookup.peers = peers;
        tracing::debug!(
            "dht lookup {}: {} asked, {} answered, {} peers, announced to {}",
            hex(&target),
            lookup.queried,
            lookup.answered,
            lookup.peers.len(),
            lookup.announced
        );
        lookup
    }

    /// One query; the response, or why there is none.
    async fn query(&self, addr: SocketAddrV4, query: Query) -> Result<Response, String> {
        if !krpc::dialable(&addr) {
            return Err("not a node address".into());
        }
        let (tx, rx) = oneshot::channel();
        let tid = {
            let mut state = self.inner.lock();
            let tid = unused_tid(&state.pending, rand::rng().random())
                .ok_or("every transaction id is in flight")?;
            state.pending.insert(tid, (SocketAddr::V4(addr), tx));
            tid
        };
        // Removes the entry however this ends, a lookup that is done aborting us included.
        let _pending = Pending {
            inner: &self.inner,
            tid,
        };
        let message = Message {
            tid: tid.to_vec(),
            body: Body::Query {
                id: self.inner.id,
                query,
            },
        };
        self.inner
            .socket
            .send_to(&message.encode(), addr)
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(QUERY_TIMEOUT, rx).await {
            Ok(Ok(Reply::Response(response))) => Ok(response),
            Ok(Ok(Reply::Error(code, message))) => Err(format!("error {code}: {message}")),
            _ => {
                self.inner.lock().table.failed(addr);
                Err(NO_ANSWER.into())
            }
        }
    }
}

/// The first transaction id from `start` on that no query in flight has. Random (`start` is),
/// so that an off-path node cannot guess the id of a query to answer it in the asked node's
/// place with a spoofed address; never one in flight, whose answer would go to the other query.
fn unused_tid<V>(pending: &HashMap<[u8; 2], V>, start: u16) -> Option<[u8; 2]> {
    (0..=u16::MAX)
        .map(|i| start.wrapping_add(i).to_be_bytes())
        .find(|tid| !pending.contains_key(tid))
}

/// A query's entry in [`State::pending`], removed when dropped.
struct Pending<'a> {
    inner: &'a Inner,
    tid: [u8; 2],
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.inner.lock().pending.remove(&self.tid);
    }
}

/// The nodes of one lookup, nearest first.
struct Candidates {
    target: Id,
    list: Vec<Candidate>,
}

struct Candidate {
    addr: SocketAddrV4,
    /// Unknown for a router given by address.
    id: Option<Id>,
    state: Asked,
    token: Option<Vec<u8>>,
}

#[derive(PartialEq)]
enum Asked {
    Not,
    InFlight,
    Answered,
    Failed,
}

impl Candidates {
    fn new(target: Id) -> Candidates {
        Candidates {
            target,
            list: Vec::new(),
        }
    }

    fn distance(&self, c: &Candidate) -> Id {
        c.id.map_or([0xff; 20], |id| distance(&id, &self.target))
    }

    fn add(&mut self, id: Option<Id>, addr: SocketAddrV4) {
        if !krpc::dialable(&addr) || self.list.iter().any(|c| c.addr == addr) {
            return;
        }
        let candidate = Candidate {
            addr,
            id,
            state: Asked::Not,
            token: None,
        };
        if self.list.len() >= MAX_CANDIDATES {
            // Full: a nearer node takes the place of the farthest not asked yet, so that the
            // list cannot be closed to the nodes we are looking for. Nodes asked are kept: the
            // tokens of those that answered are what we announce with.
            let Some((farthest, _)) = self
                .list
                .iter()
                .enumerate()
                .filter(|(_, c)| c.state == Asked::Not)
                .max_by_key(|(_, c)| self.distance(c))
            else {
                return;
            };
            if self.distance(&self.list[farthest]) <= self.distance(&candidate) {
                return;
            }
            self.list.remove(farthest);
        }
        self.list.push(candidate);
        let target = self.target;
        self.list
            .sort_by_key(|c| c.id.map_or([0xff; 20], |id| distance(&id, &target)));
    }

    /// The nodes named in one response, but only the [`K`] of them nearest the target, as many
    /// as an honest node names: a hostile one naming thousands of made-up nodes near the target
    /// must not crowd out the nodes the others name.
    fn add_named(&mut self, nodes: &[NodeInfo], own: &Id) {
        let mut named: Vec<&NodeInfo> = nodes
            .iter()
            .filter(|n| n.id != *own && krpc::dialable(&n.addr))
            .collect();
        named.sort_by_key(|n| distance(&n.id, &self.target));
        for node in named.into_iter().take(K) {
            self.add(Some(node.id), node.addr);
        }
    }

    /// The nearest node not yet asked, if it is among the K nearest that have not failed (a
    /// lookup ends once those all answered).
    fn next_to_ask(&mut self) -> Option<SocketAddrV4> {
        let candidate = self
            .list
            .iter_mut()
            .filter(|c| c.state != Asked::Failed)
            .take(K)
            .find(|c| c.state == Asked::Not)?;
        candidate.state = Asked::InFlight;
        Some(candidate.addr)
    }

    fn answered(&mut self, addr: SocketAddrV4, id: Id, token: Option<Vec<u8>>) {
        if let Some(c) = self.list.iter_mut().find(|c| c.addr == addr) {
            c.state = Asked::Answered;
            c.id = Some(id);
            c.token = token;
        }
        let target = self.target;
        self.list
            .sort_by_key(|c| c.id.map_or([0xff; 20], |id| distance(&id, &target)));
    }

    fn failed(&mut self, addr: SocketAddrV4) {
        if let Some(c) = self.list.iter_mut().find(|c| c.addr == addr) {
            c.state = Asked::Failed;
        }
    }

    fn closest_with_tokens(&self, n: usize) -> Vec<(SocketAddrV4, Vec<u8>)> {
        let mut answered: Vec<&Candidate> = self
            .list
            .iter()
            .filter(|c| c.state == Asked::Answered && c.token.is_some())
            .collect();
        answered.sort_by_key(|c| self.distance(c));
        answered
            .into_iter()
            .take(n)
            .map(|c| (c.addr, c.token.clone().expect("filtered")))
            .collect()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("dht state lock")
    }
}

async fn upkeep_loop(dht: Dht, mut stop: watch::Receiver<bool>) {
    let first = tokio::time::Instant::now() + UPKEEP_EVERY;
    let mut every = tokio::time::interval_at(first, UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            upkeep = dht.upkeep(Instant::now()) => tracing::debug!("dht upkeep: {upkeep:?}"),
            _ = stop.changed() => return,
        }
    }
}

async fn receive_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    if let Some(incoming) = &inner.incoming {
        let mut incoming = incoming.lock().await;
        loop {
            tokio::select! {
                received = incoming.recv() => match received {
                    Some((datagram, from)) => {
                        let (reply, querier) = handle(&inner, &datagram, from);
                        if let Some(reply) = reply {
                            let _ = inner.socket.send_to(&reply, from).await;
                        }
                        if let Some(querier) = querier {
                            verify(&inner, querier);
                        }
                    }
                    None => {
                        // The socket's owner is gone: so is the node, upkeep included.
                        let _ = inner.stop.send(true);
                        return;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            received = inner.socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    let (reply, querier) = handle(&inner, &buf[..n], from);
                    if let Some(reply) = reply {
                        let _ = inner.socket.send_to(&reply, from).await;
                    }
                    if let Some(querier) = querier {
                        verify(&inner, querier);
                    }
                }
                // ICMP port unreachable from an earlier send shows up here on Linux.
                Err(e) => tracing::trace!("dht receive: {e}"),
            },
            _ = stop.changed() => return,
        }
    }
}

/// One datagram: a response for a waiting query, or a query to answer (the returned bytes,
/// with the querier when it is to be pinged, [`verify`], once the answer went).
fn handle(inner: &Inner, datagram: &[u8], from: SocketAddr) -> (Option<Vec<u8>>, Option<NodeInfo>) {
    let message = match Message::decode(datagram) {
        Ok(m) => m,
        Err(e) => {
            tracing::trace!("dht {from}: {e}");
            return (None, None);
        }
    };
    let now = Instant::now();
    let mut state = inner.lock();
    let tid = <[u8; 2]>::try_from(message.tid.as_slice()).ok();
    let waiting = |state: &mut State| tid.and_then(|tid| state.take_pending(tid, from));
    match message.body {
        Body::Response(response) => {
            let Some(waiting) = waiting(&mut state) else {
                return (None, None);
            };
            if let Some(addr) = krpc::v4(from) {
                let node = NodeInfo {
                    id: response.id,
                    addr,
                };
                state.table.seen(node, now);
                state.table.answered_as(&node);
            }
            let _ = waiting.send(Reply::Response(response));
            (None, None)
        }
        Body::Error { code, message } => {
            if let Some(waiting) = waiting(&mut state) {
                let _ = waiting.send(Reply::Error(code, message));
            }
            (None, None)
        }
        Body::Query { id, query } => {
            let querier = krpc::v4(from)
                .map(|addr| NodeInfo { id, addr })
                .filter(|node| !state.table.heard_from(node, now));
            let body = answer(inner.id, &mut state, query, from, now);
            let reply = Message {
                tid: message.tid,
                body,
            };
            (Some(reply.encode()), querier)
        }
    }
}

/// Pings a node that queried us and is not in the routing table: its answer puts it there
/// (as any answer does, [`handle`]). Only a node that answers is good by BEP 5: a query's
/// source address may be forged, and forged entries, handed out in our `find_node` answers,
/// sent others' lookups to hosts that never asked, and pushed out nodes that would answer.
/// Only those the table would take are pinged ([`Table::would_take`]: most queriers fall in
/// full buckets), at most [`MAX_VERIFYING`] at once and one per IP address at a time (loopback
/// aside, as in the table), so that one host querying from many ports holds one of them.
fn verify(inner: &Arc<Inner>, querier: NodeInfo) {
    let addr = querier.addr;
    let one_per_ip = match addr.ip().is_loopback() {
        true => addr,
        false => SocketAddrV4::new(*addr.ip(), 0),
    };
    {
        let mut state = inner.lock();
        if !state.table.would_take(&querier)
            || state.verifying.len() >= MAX_VERIFYING
            || !state.verifying.insert(one_per_ip)
        {
            return;
        }
    }
    let dht = Dht {
        inner: inner.clone(),
    };
    tokio::spawn(async move {
        let _ = dht.query(addr, Query::Ping).await;
        dht.inner.lock().verifying.remove(&one_per_ip);
    });
}

fn answer(own: Id, state: &mut State, query: Query, from: SocketAddr, now: Instant) -> Body {
    let response = |nodes: Vec<NodeInfo>| Response {
        id: own,
        nodes,
        ..Response::default()
    };
    match query {
        Query::Ping => Body::Response(response(vec![])),
        Query::FindNode { target } => Body::Response(response(state.table.closest(&target, K))),
        Query::GetPeers { info_hash } => {
            let token = state.token_for(from.ip(), now);
            let values = state
                .stored
                .get(&info_hash)
                .map(|announced| {
                    announced
                        .peers
                        .iter()
                        .filter(|(_, at)| now.duration_since(*at) < PEER_TTL)
                        .take(VALUES_PER_RESPONSE)
                        .map(|(addr, _)| *addr)
                        .collect()
                })
                .unwrap_or_default();
            Body::Response(Response {
                id: own,
                nodes: state.table.closest(&info_hash, K),
                values,
                token: Some(token),
            })
        }
        Query::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
        } => {
            if !state.token_valid(&token, from.ip(), now) {
                return Body::Error {
                    code: 203,
                    message: "bad token".into(),
                };
            }
            let port = if implied_port { from.port() } else { port };
            if port == 0 {
                return Body::Error {
                    code: 203,
                    message: "port 0".into(),
                };
            }
            state.store(info_hash, SocketAddr::new(from.ip(), port), now);
            Body::Response(response(vec![]))
        }
        Query::Other(_) => Body::Error {
            code: 204,
            message: "Method Unknown".into(),
        },
    }
}

impl State {
    /// The query waiting for transaction `tid`, if it was sent to `from`: anyone can guess a
    /// transaction id, so an answer counts only from the address asked.
    fn take_pending(&mut self, tid: [u8; 2], from: SocketAddr) -> Option<oneshot::Sender<Reply>> {
        // Compared as IPv4 where either is (v4-mapped): on a dual-stack socket (`--bind
        // [::]`) every answer came from `[::ffff:a.b.c.d]`, never the address asked, and was
        // dropped.
        let canonical = |addr: SocketAddr| (addr.ip().to_canonical(), addr.port());
        if self
            .pending
            .get(&tid)
            .is_none_or(|(asked, _)| canonical(*asked) != canonical(from))
        {
            return None;
        }
        self.pending.remove(&tid).map(|(_, waiting)| waiting)
    }

    fn rotate(&mut self, now: Instant) {
        if now.duration_since(self.secret_since) >= SECRET_LIFETIME {
            self.previous_secret = self.secret;
            self.secret = rand::rng().random();
            self.secret_since = now;
        }
    }

    fn token_for(&mut self, ip: IpAddr, now: Instant) -> Vec<u8> {
        self.rotate(now);
        token(&self.secret, ip)
    }

    fn token_valid(&mut self, presented: &[u8], ip: IpAddr, now: Instant) -> bool {
        self.rotate(now);
        presented == token(&self.secret, ip) || presented == token(&self.previous_secret, ip)
    }

    fn store(&mut self, info_hash: Id, peer: SocketAddr, now: Instant) {
        let loopback = peer.ip().to_canonical().is_loopback();
        let host = host_of(peer.ip());
        if !self.stored.contains_key(&info_hash) {
            let over = |state: &State| {
                state.stored.len() >= MAX_HASHES
                    || (!loopback
                        && state.first_announced_by.get(&host).copied().unwrap_or(0)
                            >= MAX_HASHES_PER_IP)
            };
            if over(self) {
                self.forget_expired(now);
                if over(self) {
                    return;
                }
            }
            *self.first_announced_by.entry(host).or_default() += 1;
            self.stored.insert(
                info_hash,
                Announced {
                    peers: Vec::new(),
                    first_by: host,
                },
            );
        }
        let peers = &mut self.stored.get_mut(&info_hash).expect("kept above").peers;
        peers.retain(|(addr, at)| *addr != peer && now.duration_since(*at) < PEER_TTL);
        let same_ip = |addr: &SocketAddr| host_of(addr.ip()) == host;
        let of_its_ip = peers.iter().filter(|(addr, _)| same_ip(addr)).count();
        if of_its_ip >= MAX_PEERS_PER_IP_AND_HASH && !loopback {
            // In place of its own oldest.
            if let Some(oldest) = peers.iter().position(|(addr, _)| same_ip(addr)) {
                peers.remove(oldest);
            }
        } else if peers.len() >= MAX_PEERS_PER_HASH {
            peers.remove(0);
        }
        peers.push((peer, now));
    }
}

/// The peers announced for one info-hash, and the host that announced it first.
struct Announced {
    peers: Vec<(SocketAddr, Instant)>,
    first_by: IpAddr,
}

/// The host an address counts as for the per-address bounds: an IPv4 address (mapped ones
/// too), or an IPv6 address's /64, which one host is given whole (one host announcing from
/// 32 addresses of its /64 took all 2,000 places 64 at a time).
fn host_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

impl State {
    /// Drops the info-hashes none of whose peers announced within [`PEER_TTL`].
    fn forget_expired(&mut self, now: Instant) {
        let first_announced_by = &mut self.first_announced_by;
        self.stored.retain(|_, announced| {
            let live = announced
                .peers
                .iter()
                .any(|(_, at)| now.duration_since(*at) < PEER_TTL);
            if !live {
                if let Some(count) = first_announced_by.get_mut(&announced.first_by) {
                    *count -= 1;
                    if *count == 0 {
                        first_announced_by.remove(&announced.first_by);
                    }
                }
            }
            live
        });
    }
}

fn token(secret: &[u8; 20], ip: IpAddr) -> Vec<u8> {
    let mut hasher = Sha1::new();
    hasher.update(secret);
    match ip.to_canonical() {
        IpAddr::V4(v4) => hasher.update(v4.octets()),
        IpAddr::V6(v6) => hasher.update(v6.octets()),
    }
    hasher.finalize()[..8].to_vec()
}

fn hex(id: &Id) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves `host:port` names (the public routers) to IPv4 socket addresses; names that do
/// not resolve are skipped.
pub async fn resolve(names: &[String]) -> Vec<SocketAddr> {
    let mut out = HashSet::new();
    for name in names {
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addrs) => out.extend(addrs.filter(SocketAddr::is_ipv4)),
            Err(e) => tracing::warn!("dht bootstrap {name}: {e}"),
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU16, Ordering};

    async fn node() -> Dht {
        Dht::bind("127.0.0.1:0".parse().unwrap()).await.unwrap()
    }

    /// A node that queries us enters the routing table once it answers our ping, not before:
    /// one that never answers (a forged source address, here a socket that only sends) is
    /// not handed out in our `find_node` answers. Before, it entered the table with its query.
    #[tokio::test]
    async fn a_node_that_queries_us_enters_the_table_once_it_answers_a_ping() {
        let us = node().await;
        let querier = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let find_node = |id: Id| {
            Message {
                tid: b"fn".to_vec(),
                body: Body::Query {
                    id,
                    query: Query::FindNode { target: [1; 20] },
                },
            }
            .encode()
        };
        async fn receive(socket: &UdpSocket) -> Message {
            let mut buf = [0u8; 1500];
            let (n, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf))
                .await
                .expect("a datagram")
                .unwrap();
            Message::decode(&buf[..n]).unwrap()
        }
        querier
            .send_to(&find_node([7; 20]), us.local_addr())
            .await
            .unwrap();
        let mut ping = None;
        for _ in 0..2 {
            let message = receive(&querier).await;
            if let Body::Query {
                query: Query::Ping, ..
            } = message.body
            {
                ping = Some(message.tid);
            }
        }
        let ping = ping.expect("the querier is pinged");
        assert_eq!(us.nodes(), 0, "in the table before it answered");

        let pong = Message {
            tid: ping,
            body: Body::Response(Response {
                id: [7; 20],
                ..Response::default()
            }),
        };
        querier
            .send_to(&pong.encode(), us.local_addr())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(us.nodes(), 1, "it answered");

        // A second querier never answers: after the ping's timeout it is still not named.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        silent
            .send_to(&find_node([9; 20]), us.local_addr())
            .await
            .unwrap();
        tokio::time::sleep(QUERY_TIMEOUT + Duration::from_millis(300)).await;
        querier
            .send_to(&find_node([7; 20]), us.local_addr())
            .await
            .unwrap();
        let answer = receive(&querier).await;
        let Body::Response(named) = answer.body else {
            panic!("{answer:?}");
        };
        assert_eq!(us.nodes(), 1);
        assert!(
            named.nodes.iter().all(|n| n.id != [9; 20]),
            "the silent querier is named: {named:?}"
        );
    }

    /// BEP 5's upkeep: once nodes have been silent for 15 minutes they are pinged; one still
    /// there answers and stays good, one that left is given up on after going unanswered twice
    /// (its place free for a node that answers), and a bucket none of whose nodes was heard
    /// from lately is refreshed with a lookup in its range. Before, a node that left stayed in
    /// the table, good and handed out, for as long as no lookup happened to ask it.
    #[tokio::test]
    async fn upkeep_pings_silent_nodes_and_gives_up_on_those_gone() {
        let us = node().await;
        let (staying, leaving) = (node().await, node().await);
        us.bootstrap(&[staying.local_addr(), leaving.local_addr()])
            .await;
        assert_eq!(us.answering_nodes(), 2);
        leaving.shutdown();
        let later = Instant::now() + table::QUESTIONABLE_AFTER + Duration::from_secs(60);
        assert_eq!(
            us.ping_questionable(Instant::now()).await,
            (0, 0),
            "none silent yet"
        );
        assert_eq!(us.ping_questionable(later).await, (2, 1));
        assert_eq!(us.answering_nodes(), 2, "one silence is not yet giving up");
        assert_eq!(us.ping_questionable(later).await, (2, 1));
        assert_eq!(us.answering_nodes(), 1, "the node that left is given up on");
        let kept = us.inner.lock().table.closest(&[0; 20], K);
        assert_eq!(kept.len(), 1);
        assert_eq!(SocketAddr::V4(kept[0].addr), staying.local_addr());
        assert_eq!(
            us.ping_questionable(later).await,
            (1, 1),
            "given up on: not pinged"
        );
        // The nodes' buckets (one or two) were heard from before `later` less 15 minutes:
        // each is refreshed once, the stalest first, then none for 15 minutes.
        let mut refreshed = Vec::new();
        while let Some(b) = us.refresh_stale_bucket(later).await {
            assert!(
                !refreshed.contains(&b) && refreshed.len() < 2,
                "{refreshed:?}, {b}"
            );
            refreshed.push(b);
        }
        println!("refreshed buckets {refreshed:?}");
        assert!(!refreshed.is_empty());
        staying.shutdown();
        us.shutdown();
    }

    #[tokio::test]
    async fn nodes_find_each_other_and_the_peers_announced_to_them() {
        // A little network on loopback: a router, then nodes that bootstrap from it.
        let router = node().await;
        let mut nodes = Vec::new();
        for _ in 0..12 {
            let n = node().await;
            n.bootstrap(&[router.local_addr()]).await;
            nodes.push(n);
        }
        assert!(router.nodes() >= 8, "the router knows {}", router.nodes());
        let info_hash = [0x5a; 20];
        let seed = &nodes[0];
        let announced = seed.announce(info_hash, 51413).await;
        println!("announce: {announced:?}");
        assert!(announced.announced >= 1, "{announced:?}");
        let found = nodes[11].get_peers(info_hash).await;
        println!("lookup: {found:?}");
        let expected: SocketAddr = "127.0.0.1:51413".parse().unwrap();
        assert_eq!(found.peers, vec![expected]);
        for n in nodes.iter().chain([&router]) {
            n.shutdown();
        }
    }

    /// A node on a dual-stack socket takes the answers of IPv4 nodes, which come from
    /// v4-mapped addresses (it dropped them all: `pow dht lookup --bind [::]:0` found nobody).
    #[tokio::test]
    async fn a_node_on_a_dual_stack_socket_takes_ipv4_answers() {
        let router = node().await;
        let Ok(dual) = Dht::bind("[::]:0".parse().unwrap()).await else {
            println!("no IPv6 socket on this machine: nothing to check");
            router.shutdown();
            return;
        };
        let known = dual.bootstrap(&[router.local_addr()]).await;
        assert!(known >= 1, "knows {known} nodes");
        for n in [&dual, &router] {
            n.shutdown();
        }
    }

    /// One IP keeps a few peers of an info-hash, each new one in place of its own oldest; the
    /// peers of other IPs stay (a host announcing 200 ports pushed every one out). Loopback,
    /// where local test swarms live, keeps many.
    #[tokio::test]
    async fn one_host_announcing_many_ports_pushes_nobody_out() {
        let dht = node().await;
        let now = Instant::now();
        let hash = [7u8; 20];
        let honest: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        let of = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));
        {
            let mut state = dht.inner.lock();
            state.store(hash, honest, now);
            for port in 1..=200 {
                state.store(hash, of([10, 0, 0, 2], port), now);
            }
            let peers: Vec<SocketAddr> =
                state.stored[&hash].peers.iter().map(|(a, _)| *a).collect();
            assert!(peers.contains(&honest), "{peers:?}");
            assert!(peers.contains(&of([10, 0, 0, 2], 200)), "{peers:?}");
            assert_eq!(peers.len(), 1 + MAX_PEERS_PER_IP_AND_HASH, "{peers:?}");
            for port in 1..=50 {
                state.store(hash, of([127, 0, 0, 1], port), now);
            }
            assert_eq!(
                state.stored[&hash].peers.len(),
                1 + MAX_PEERS_PER_IP_AND_HASH + 50
            );
        }
        dht.shutdown();
    }

    /// One host announcing made-up info-hashes gets [`MAX_HASHES_PER_IP`] of them kept, not
    /// every place: another host's new torrent is still kept. Once its peers expire, its places
    /// are free again. Loopback, where local test swarms live, is not held to it.
    #[tokio::test]
    async fn one_host_announcing_many_hashes_leaves_room_for_others() {
        let dht = node().await;
        let now = Instant::now();
        let flooder = |n: u16| SocketAddr::from(([10, 0, 0, 9], 6881 + (n % 7)));
        let hash = |n: u32| {
            let mut id = [0u8; 20];
            id[..4].copy_from_slice(&n.to_be_bytes());
            id
        };
        {
            let mut state = dht.inner.lock();
            for n in 0..MAX_HASHES as u32 {
                state.store(hash(n), flooder(n as u16), now);
            }
            assert_eq!(state.stored.len(), MAX_HASHES_PER_IP);
            let honest: SocketAddr = "10.0.0.1:6881".parse().unwrap();
            state.store(hash(1 << 31), honest, now);
            assert!(state.stored.contains_key(&hash(1 << 31)));
            // A peer of its own added to a hash it announced first is kept as before.
            state.store(hash(0), SocketAddr::from(([10, 0, 0, 9], 7000)), now);
            assert_eq!(state.stored[&hash(0)].peers.len(), 2);
            // Half an hour on, the flooder's announces have expired: it may announce again.
            let later = now + PEER_TTL + Duration::from_secs(1);
            state.store(hash(1 << 30), flooder(0), later);
            assert!(state.stored.contains_key(&hash(1 << 30)));
            assert_eq!(state.first_announced_by[&IpAddr::from([10, 0, 0, 9])], 1);
            for n in 0..200u32 {
                state.store(
                    hash(2_000_000 + n),
                    SocketAddr::from(([127, 0, 0, 1], 9000)),
                    later,
                );
            }
            assert_eq!(state.first_announced_by[&IpAddr::from([127, 0, 0, 1])], 200);
            // IPv6: one /64 is one host, whichever of its addresses announces.
            let in_64 = |n: u32| {
                let ip: std::net::Ipv6Addr =
                    format!("2001:db8:0:7::{:x}", n % 1000 + 1).parse().unwrap();
                SocketAddr::from((ip, 6881))
            };
            for n in 0..1000u32 {
                state.store(hash(3_000_000 + n), in_64(n), later);
            }
            let host: IpAddr = "2001:db8:0:7::".parse().unwrap();
            assert_eq!(state.first_announced_by[&host], MAX_HASHES_PER_IP);
            let other_64: SocketAddr = "[2001:db8:0:8::1]:6881".parse().unwrap();
            state.store(hash(4_000_000), other_64, later);
            assert!(state.stored.contains_key(&hash(4_000_000)));
        }
        dht.shutdown();
    }

    /// Hostile nodes that answer every query with eight more of themselves, each closer to
    /// the target than the last, and fifty made-up peers: the lookup still ends, within its
    /// bounds (peers capped). A response from an address that was not asked is not believed.
    #[tokio::test]
    async fn a_lookup_stays_bounded_among_hostile_nodes() {
        let target = [0x42u8; 20];
        let mut sockets = Vec::new();
        for _ in 0..150 {
            sockets.push(Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()));
        }
        let addrs: Vec<SocketAddrV4> = sockets
            .iter()
            .map(|s| krpc::v4(s.local_addr().unwrap()).unwrap())
            .collect();
        let counter = Arc::new(AtomicU16::new(0));
        for socket in &sockets {
            let (socket, addrs, counter) = (socket.clone(), addrs.clone(), counter.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let Ok(query) = Message::decode(&buf[..n]) else {
                        continue;
                    };
                    // Bootstrapping meets three plain routers; the lookup for the target, the
                    // endless chain.
                    let chain = matches!(
                        query.body,
                        Body::Query {
                            query: Query::GetPeers { .. },
                            ..
                        }
                    );
                    let step = if chain {
                        counter.fetch_add(1, Ordering::Relaxed)
                    } else {
                        0
                    };
                    let closer = |i: u16| {
                        let mut id = target;
                        id[18..].copy_from_slice(&(u16::MAX - step * 8 - i).to_be_bytes());
                        NodeInfo {
                            id,
                            addr: addrs[usize::from(step + i) % addrs.len()],
                        }
                    };
                    let reply = Message {
                        tid: query.tid,
                        body: Body::Response(Response {
                            id: closer(0).id,
                            nodes: if chain {
                                (1..9).map(closer).collect()
                            } else {
                                vec![]
                            },
                            values: (0..50)
                                .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + step * 50 + i)))
                                .collect(),
                            token: Some(b"t".to_vec()),
                        }),
                    };
                    let _ = socket.send_to(&reply.encode(), from).await;
                }
            });
        }
        let dht = node().await;
        let started = Instant::now();
        let routers: Vec<SocketAddr> = addrs[..3].iter().map(|a| SocketAddr::V4(*a)).collect();
        dht.bootstrap(&routers).await;
        let lookup = dht.get_peers(target).await;
        println!(
            "{} asked, {} peers kept, in {:?}",
            lookup.queried,
            lookup.peers.len(),
            started.elapsed()
        );
        // 150 addresses, each named again and again under ever closer ids: a node is asked
        // once, by the id it was first named with, so the chain ends well before the cap.
        assert!(lookup.queried <= MAX_LOOKUP_NODES, "{lookup:?}");
        assert_eq!(lookup.peers.len(), MAX_LOOKUP_PEERS);
        assert!(started.elapsed() < 2 * LOOKUP_TIME + Duration::from_secs(2));

        // A made-up answer to a query we are making, from an address we did not ask.
        let liar = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let asked = krpc::v4(silent.local_addr().unwrap()).unwrap();
        let query = tokio::spawn({
            let dht = dht.clone();
            async move { dht.query(asked, Query::Ping).await }
        });
        let mut buf = [0u8; 2048];
        let (n, _) = silent.recv_from(&mut buf).await.unwrap();
        let tid = Message::decode(&buf[..n]).unwrap().tid;
        let lie = Message {
            tid,
            body: Body::Response(Response {
                id: [9; 20],
                ..Response::default()
            }),
        };
        liar.send_to(&lie.encode(), dht.local_addr()).await.unwrap();
        assert_eq!(query.await.unwrap(), Err("no answer".to_string()));
        dht.shutdown();
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> SocketAddrV4 {
        SocketAddrV4::new([a, b, c, d].into(), 6881)
    }

    /// One hostile node answers with 2,500 made-up nodes nearer the target than any real one;
    /// an honest node names the real ones. Only K of the made-up nodes are taken, so once they
    /// have failed the lookup goes on to the real ones within its query budget.
    #[test]
    fn a_flood_of_named_nodes_does_not_crowd_out_the_others() {
        let target = [0x42; 20];
        let mut candidates = Candidates::new(target);
        let (hostile, honest) = (v4(10, 0, 0, 1), v4(10, 0, 0, 2));
        candidates.add(Some([0xf0; 20]), hostile);
        candidates.add(Some([0xf1; 20]), honest);
        assert_eq!(candidates.next_to_ask(), Some(hostile));
        assert_eq!(candidates.next_to_ask(), Some(honest));
        let made_up: Vec<NodeInfo> = (0..2500u16)
            .map(|i| {
                let mut id = target;
                id[18..].copy_from_slice(&(i + 1).to_be_bytes());
                let [hi, lo] = i.to_be_bytes();
                NodeInfo {
                    id,
                    addr: v4(10, 1, hi, lo),
                }
            })
            .collect();
        candidates.add_named(&made_up, &[0; 20]);
        candidates.answered(hostile, [0xf0; 20], Some(b"t".to_vec()));
        let real: Vec<NodeInfo> = (0..8u8)
            .map(|i| {
                let mut id = target;
                id[10] ^= 0x80;
                id[19] = i;
                NodeInfo {
                    id,
                    addr: v4(10, 2, 0, i),
                }
            })
            .collect();
        candidates.add_named(&real, &[0; 20]);
        candidates.answered(honest, [0xf1; 20], Some(b"t".to_vec()));
        // The made-up nodes never answer; the real ones do.
        let (mut asked_made_up, mut asked_real) = (0, 0);
        for _ in 2..MAX_LOOKUP_NODES {
            let Some(addr) = candidates.next_to_ask() else {
                break;
            };
            match real.iter().find(|n| n.addr == addr) {
                Some(node) => {
                    asked_real += 1;
                    candidates.answered(addr, node.id, Some(b"t".to_vec()));
                }
                None => {
                    asked_made_up += 1;
                    candidates.failed(addr);
                }
            }
        }
        assert_eq!((asked_made_up, asked_real), (K, real.len()));
        let mut announce_to: Vec<SocketAddrV4> = candidates
            .closest_with_tokens(K)
            .into_iter()
            .map(|(addr, _)| addr)
            .collect();
        announce_to.sort();
        assert_eq!(announce_to, real.iter().map(|n| n.addr).collect::<Vec<_>>());
    }

    /// A full list takes a nearer node in place of the farthest one not asked yet, never in
    /// place of one asked (its token is needed to announce), and refuses a farther one.
    #[test]
    fn a_full_candidate_list_takes_nearer_nodes_in_place_of_unasked_ones() {
        let target = [0; 20];
        let mut candidates = Candidates::new(target);
        for i in 0..MAX_CANDIDATES as u16 {
            let mut id = [0x80; 20];
            id[18..].copy_from_slice(&i.to_be_bytes());
            let [hi, lo] = i.to_be_bytes();
            candidates.add(Some(id), v4(10, 0, hi, lo + 1));
        }
        assert_eq!(candidates.list.len(), MAX_CANDIDATES);
        // The five farthest have answered.
        for c in &mut candidates.list[MAX_CANDIDATES - 5..] {
            c.state = Asked::Answered;
            c.token = Some(b"t".to_vec());
        }
        let farthest_unasked = candidates.list[MAX_CANDIDATES - 6].addr;
        let near = v4(10, 9, 9, 9);
        candidates.add(Some([0x01; 20]), near);
        let addrs = |c: &Candidates| c.list.iter().map(|c| c.addr).collect::<Vec<_>>();
        assert_eq!(candidates.list.len(), MAX_CANDIDATES);
        assert_eq!(candidates.list[0].addr, near);
        assert!(!addrs(&candidates).contains(&farthest_unasked));
        assert_eq!(candidates.closest_with_tokens(K).len(), 5);
        // Farther than every node not asked: refused.
        candidates.add(Some([0xff; 20]), v4(10, 9, 9, 8));
        assert!(!addrs(&candidates).contains(&v4(10, 9, 9, 8)));
        assert_eq!(candidates.list.len(), MAX_CANDIDATES);
    }

    /// Addresses where no node can be are neither candidates nor asked.
    #[tokio::test]
    async fn no_node_address_is_asked() {
        let mut candidates = Candidates::new([0; 20]);
        for addr in [
            v4(0, 0, 0, 0),
            v4(224, 0, 0, 1),
            v4(255, 255, 255, 255),
            SocketAddrV4::new([10, 0, 0, 1].into(), 0),
        ] {
            candidates.add(Some([1; 20]), addr);
        }
        assert!(candidates.list.is_empty());
        let dht = node().await;
        let started = Instant::now();
        let answer = dht.query(v4(0, 0, 0, 0), Query::Ping).await;
        assert_eq!(answer, Err("not a node address".to_string()));
        assert!(started.elapsed() < QUERY_TIMEOUT);
        dht.shutdown();
    }

    /// Transaction ids are random (one query after another does not give the next number),
    /// and never one in flight.
    #[tokio::test]
    async fn transaction_ids_are_random_and_never_one_in_flight() {
        let dht = node().await;
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let asked = krpc::v4(other.local_addr().unwrap()).unwrap();
        let mut tids = Vec::new();
        for _ in 0..16 {
            let query = tokio::spawn({
                let dht = dht.clone();
                async move { dht.query(asked, Query::Ping).await }
            });
            let mut buf = [0u8; 2048];
            let (n, from) = other.recv_from(&mut buf).await.unwrap();
            let tid = Message::decode(&buf[..n]).unwrap().tid;
            let pong = Message {
                tid: tid.clone(),
                body: Body::Response(Response {
                    id: [9; 20],
                    ..Response::default()
                }),
            };
            other.send_to(&pong.encode(), from).await.unwrap();
            assert!(query.await.unwrap().is_ok());
            tids.push(u16::from_be_bytes(tid.try_into().unwrap()));
        }
        let steps_of_one = tids
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(steps_of_one <= 1, "{tids:?}");
        dht.shutdown();

        let mut pending: HashMap<[u8; 2], ()> = HashMap::new();
        assert_eq!(unused_tid(&pending, 77), Some(77u16.to_be_bytes()));
        pending.extend((0..=u16::MAX).map(|t| (t.to_be_bytes(), ())));
        pending.remove(&[0x12, 0x34]);
        assert_eq!(unused_tid(&pending, 0), Some([0x12, 0x34]));
        assert_eq!(unused_tid(&pending, 0x1235), Some([0x12, 0x34]));
        pending.insert([0x12, 0x34], ());
        assert_eq!(unused_tid(&pending, 0), None);
    }

    #[tokio::test]
    async fn announces_need_a_token_from_us_for_that_address() {
        let dht = node().await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ask = |query: Query| {
            Message {
                tid: b"xy".to_vec(),
                body: Body::Query { id: [1; 20], query },
            }
            .encode()
        };
        let exchange = |bytes: Vec<u8>| {
            let client = &client;
            let to = dht.local_addr();
            async move {
                client.send_to(&bytes, to).await.unwrap();
                let mut buf = [0u8; 2048];
                loop {
                    let (n, _) = client.recv_from(&mut buf).await.unwrap();
                    match Message::decode(&buf[..n]).unwrap().body {
                        // the node pings us, a querier it does not know yet
                        Body::Query { .. } => continue,
                        body => return body,
                    }
                }
            }
        };
        let forged = ask(Query::AnnouncePeer {
            info_hash: [2; 20],
            port: 6881,
            implied_port: false,
            token: b"guessed".to_vec(),
        });
        assert!(matches!(
            exchange(forged).await,
            Body::Error { code: 203, .. }
        ));
        let Body::Response(r) = exchange(ask(Query::GetPeers { info_hash: [2; 20] })).await else {
            panic!("no get_peers response");
        };
        let token = r.token.expect("a token");
        assert!(r.values.is_empty());
        let real = ask(Query::AnnouncePeer {
            info_hash: [2; 20],
            port: 0,
            implied_port: true,
            token,
        });
        assert!(matches!(exchange(real).await, Body::Response(_)));
        let Body::Response(r) = exchange(ask(Query::GetPeers { info_hash: [2; 20] })).await else {
            panic!("no get_peers response");
        };
        assert_eq!(r.values, vec![client.local_addr().unwrap()]);
        assert!(matches!(
            exchange(ask(Query::Other("vote".into()))).await,
            Body::Error { code: 204, .. }
        ));
        dht.shutdown();
    }
}
