//! One listening port for many torrents (`pow serve` seeds every dataset on one port, as
//! libtorrent and Transmission do): each incoming connection's handshake is read first, and the
//! connection is handed to the torrent whose info-hash it names. An encrypted handshake names
//! it only by a hash, so it is answered for every torrent attached at the time. uTP peers are
//! accepted on the UDP port of the same number and routed the same way.

use crate::encryption::{self, Ciphers, Encryption};
use crate::peer::{self, Routed};
use crate::transport::{self, PeerListener, PeerStream};
use crate::{Inner, Torrent};
use bytes::BytesMut;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Time an incoming peer has to send its handshake before we know which torrent it wants.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(20);
/// Incoming connections still owing their handshake; more are closed at once, so a flood of
/// silent connections costs at most this many tasks and buffers.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// The same from one host (an IPv6 /64 is one): a flood from one address leaves room for
/// everyone else's.
/// Handshakes take milliseconds, so even many peers behind one NAT seldom owe this many.
pub const MAX_PENDING_HANDSHAKES_PER_HOST: usize = 32;

/// The incoming connections that still owe their handshake, in all and per host, shared by a
/// port's TCP and uTP listeners.
#[derive(Default)]
pub(crate) struct PendingHandshakes {
    counts: Mutex<Counts>,
}

/// Only hosts with a pending handshake have an entry: one refused gets none (entries left at
/// 0 by refusals grew without bound under SYNs from ever-new addresses, and each admission
/// summed them all).
#[derive(Default)]
struct Counts {
    total: usize,
    /// Each host's pending handshakes, oldest first: an id and how to give it up.
    by_host: HashMap<IpAddr, VecDeque<(u64, Arc<Eviction>)>>,
    next_id: u64,
}

/// Set when a pending handshake's place goes to another host's.
#[derive(Default)]
struct Eviction {
    evicted: AtomicBool,
    notify: tokio::sync::Notify,
}

/// One pending handshake, counted until dropped, or until its place is given to another host's
/// ([`Pending::evicted`]).
pub(crate) struct Pending {
    handshakes: Arc<PendingHandshakes>,
    host: IpAddr,
    id: u64,
    eviction: Arc<Eviction>,
}

impl PendingHandshakes {
    /// Counts a handshake from `addr` in, or `None` (the connection is to be closed) when its
    /// host has [`MAX_PENDING_HANDSHAKES_PER_HOST`], or all have [`MAX_PENDING_HANDSHAKES`] and
    /// none holds two more than its host. Otherwise a full count makes room: the oldest
    /// handshake of the host holding most is given up. Refusing every newcomer once the count
    /// was full let 8 silent hosts (32 each, or one IPv6 /56) shut everyone out, at about 13
    /// connections a second.
    pub fn admit(self: &Arc<Self>, addr: SocketAddr) -> Option<Pending> {
        let host = crate::peer::host_of(addr.ip());
        let mut counts = lock(&self.counts);
        let from_host = counts.by_host.get(&host).map_or(0, VecDeque::len);
        if from_host >= MAX_PENDING_HANDSHAKES_PER_HOST {
            tracing::debug!("{addr}: too many pending handshakes from its host, closed");
            return None;
        }
        if counts.total >= MAX_PENDING_HANDSHAKES {
            let most = counts
                .by_host
                .iter()
                .max_by_key(|(_, waiting)| waiting.len())
                .filter(|(_, waiting)| waiting.len() > from_host + 1)
                .map(|(&victim, _)| victim);
            let Some(victim) = most else {
                tracing::debug!("{addr}: too many pending handshakes, closed");
                return None;
            };
            let waiting = counts.by_host.get_mut(&victim).expect("found");
            let (_, eviction) = waiting.pop_front().expect("not empty");
            if waiting.is_empty() {
                counts.by_host.remove(&victim);
            }
            counts.total -= 1;
            eviction.evicted.store(true, Ordering::Relaxed);
            eviction.notify.notify_one();
            tracing::debug!("{addr}: a pending handshake from {victim} given up for it");
        }
        counts.total += 1;
        let id = counts.next_id;
        counts.next_id += 1;
        let eviction = Arc::new(Eviction::default());
        counts
            .by_host
            .entry(host)
            .or_default()
            .push_back((id, eviction.clone()));
        Some(Pending {
            handshakes: self.clone(),
            host,
            id,
            eviction,
        })
    }
}

impl Pending {
    /// Completes once this handshake's place went to another host's: the connection is to be
    /// closed.
    pub async fn evicted(&self) {
        self.eviction.notify.notified().await;
    }

    #[cfg(test)]
    fn is_evicted(&self) -> bool {
        self.eviction.evicted.load(Ordering::Relaxed)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut counts = lock(&self.handshakes.counts);
        let Some(waiting) = counts.by_host.get_mut(&self.host) else {
            return;
        };
        // An evicted one was uncounted when it was given up.
        let Some(at) = waiting.iter().position(|(id, _)| *id == self.id) else {
            return;
        };
        waiting.remove(at);
        if waiting.is_empty() {
            counts.by_host.remove(&self.host);
        }
        counts.total -= 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Routes = Arc<Mutex<HashMap<[u8; 20], Weak<Inner>>>>;

/// A listening socket shared by the torrents attached to it. Stops accepting when dropped.
pub struct SharedListener {
    routes: Routes,
    encryption: Encryption,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    utp: Option<Arc<pow_utp::UtpSocket>>,
    utp_mode: crate::Utp,
    /// The uTP socket's port for a DHT node to share, until one takes it.
    shared_udp: Mutex<Option<pow_utp::SharedUdp>>,
}

impl SharedListener {
    /// Listens on `addr`, accepting encrypted and plaintext handshakes as `encryption` says,
    /// over TCP and, unless `utp` is off, over uTP on the UDP port of the same number.
    pub async fn bind(
        addr: SocketAddr,
        encryption: Encryption,
        utp: crate::Utp,
    ) -> std::io::Result<SharedListener> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let routes: Routes = Arc::default();
        let stop = watch::channel(false).0;
        let pending = Arc::new(PendingHandshakes::default());
        let accepting = accept_loop(
            PeerListener::Tcp(listener),
            routes.clone(),
            encryption,
            pending.clone(),
            stop.subscribe(),
        );
        tokio::spawn(accepting);
        let utp_mode = utp;
        let (utp, shared_udp) = match utp_mode {
            crate::Utp::Off => (None, None),
            _ => match transport::bind_utp_sharing(local_addr).await {
                Some((socket, shared)) => (Some(socket), Some(shared)),
                None => (None, None),
            },
        };
        if let Some(socket) = &utp {
            let accepting = accept_loop(
                PeerListener::Utp(socket.clone()),
                routes.clone(),
                encryption,
                pending,
                stop.subscribe(),
            );
            tokio::spawn(accepting);
        }
        Ok(SharedListener {
            routes,
            encryption,
            local_addr,
            stop,
            utp,
            utp_mode,
            shared_udp: Mutex::new(shared_udp),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn encryption(&self) -> Encryption {
        self.encryption
    }

    /// The UDP socket uTP listens on and the datagrams it got that are not uTP, for a DHT node
    /// on the same port; once.
    pub fn take_shared_udp(&self) -> Option<pow_utp::SharedUdp> {
        self.shared_udp.lock().expect("shared udp lock").take()
    }

    /// Whether the attached torrents dial over uTP, and first or second.
    pub fn utp(&self) -> crate::Utp {
        self.utp_mode
    }

    /// Routes incoming peers for `torrent`'s info-hash to it (until it is detached or gone).
    pub fn attach(&self, torrent: &Torrent) {
        let info_hash = torrent.inner.metainfo.info_hash.0;
        if let Some(socket) = &self.utp {
            // Its dials over uTP leave from the port peers know.
            let _ = torrent.inner.utp.set(socket.clone());
        }
        self.lock()
            .insert(info_hash, Arc::downgrade(&torrent.inner));
    }

    pub fn detach(&self, info_hash: &[u8; 20]) {
        self.lock().remove(info_hash);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 20], Weak<Inner>>> {
        self.routes.lock().expect("listener routes lock")
    }
}

impl Drop for SharedListener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Accepts from `listener` (TCP, or uTP on the same port number) and routes each connection;
/// `pending` caps the handshakes still owed over both.
async fn accept_loop(
    listener: PeerListener,
    routes: Routes,
    encryption: Encryption,
    pending: Arc<PendingHandshakes>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let Some(permit) = pending.admit(addr) else {
                        continue;
                    };
                    let routes = routes.clone();
                    tokio::spawn(route(stream, addr, routes, encryption, permit));
                }
                Err(_) if listener.gone() => return,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = crate::until_true(&mut stop) => return,
        }
    }
}

/// Reads an incoming connection's handshake and hands it to its torrent.
async fn route(
    stream: PeerStream,
    addr: SocketAddr,
    routes: Routes,
    encryption: Encryption,
    permit: Pending,
) {
    let routed = tokio::select! {
        routed = read_route(stream, addr, &routes, encryption) => routed,
        () = permit.evicted() => {
            tracing::debug!("{addr}: handshake given up, its place went to another host's");
            None
        }
    };
    drop(permit);
    if let Some((inner, stream, routed)) = routed {
        peer::accept_routed(inner, stream, addr, routed).await;
    }
}

async fn read_route(
    mut stream: PeerStream,
    addr: SocketAddr,
    routes: &Routes,
    encryption: Encryption,
) -> Option<(Arc<Inner>, PeerStream, Routed)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = Instant::now() + ROUTE_TIMEOUT;
    let served = || {
        routes
            .lock()
            .expect("listener routes lock")
            .keys()
            .copied()
            .collect()
    };
    let read = async {
        let mut ciphers: Ciphers =
            encryption::accept(&mut stream, &mut buf, served, encryption, deadline).await?;
        let handshake = peer::read_handshake(&mut stream, &mut buf, &mut ciphers, deadline).await?;
        Ok::<_, peer::PeerError>((handshake, ciphers))
    };
    let (handshake, ciphers) = match read.await {
        Ok(read) => read,
        Err(e) => {
            tracing::debug!("{addr}: handshake: {e}");
            return None;
        }
    };
    if ciphers.skey.is_some_and(|skey| skey != handshake.info_hash) {
        // libtorrent closes these too: the stream was keyed for one torrent and the peer asks
        // for another.
        tracing::debug!(
            "{addr}: encrypted handshake for {}, BitTorrent handshake for {}: closed",
            hex_of(&ciphers.skey.unwrap_or_default()),
            hex_of(&handshake.info_hash)
        );
        return None;
    }
    let inner = routes
        .lock()
        .expect("listener routes lock")
        .get(&handshake.info_hash)
        .and_then(Weak::upgrade);
    match inner {
        Some(inner) => {
            let routed = Routed {
                handshake,
                buf,
                ciphers,
            };
            Some((inner, stream, routed))
        }
        None => {
            tracing::debug!(
                "{addr}: handshake for a torrent we do not serve ({})",
                hex_of(&handshake.info_hash)
            );
            None
        }
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The caps, and no trace of what was refused: once the total is full, a newcomer takes
    /// the place of the oldest handshake of the host holding most, until no host holds two
    /// more than its own; then 10,000 other hosts are refused and leave no entry behind; as
    /// pending ones finish (or are given up), their room is free again.
    #[test]
    fn pending_handshakes_are_capped_shared_out_and_refusals_leave_nothing() {
        let pending = Arc::new(PendingHandshakes::default());
        let at = |host: u32, port: u16| SocketAddr::from((std::net::Ipv4Addr::from(host), port));
        let one_host: Vec<Pending> = (0..MAX_PENDING_HANDSHAKES_PER_HOST as u16)
            .map(|port| pending.admit(at(1, port)).expect("under the per-host cap"))
            .collect();
        assert!(pending.admit(at(1, 9999)).is_none(), "per-host cap");
        let others: Vec<Pending> = (0..(MAX_PENDING_HANDSHAKES - MAX_PENDING_HANDSHAKES_PER_HOST))
            .map(|i| {
                pending
                    .admit(at(100 + i as u32, 1))
                    .expect("under the total")
            })
            .collect();
        assert!(one_host.iter().all(|p| !p.is_evicted()));
        // Full: 31 newcomers each take the place of host 1's oldest, down to its last one.
        let newcomers: Vec<Pending> = (0..MAX_PENDING_HANDSHAKES_PER_HOST as u32 - 1)
            .map(|i| pending.admit(at(500_000 + i, 1)).expect("a place given up"))
            .collect();
        let evicted = one_host.iter().filter(|p| p.is_evicted()).count();
        assert_eq!(evicted, MAX_PENDING_HANDSHAKES_PER_HOST - 1);
        assert!(!one_host.last().unwrap().is_evicted(), "the newest stays");
        assert!(others.iter().all(|p| !p.is_evicted()));
        for host in 1_000_000..1_010_000 {
            assert!(pending.admit(at(host, 1)).is_none(), "total cap");
        }
        {
            let counts = lock(&pending.counts);
            assert_eq!(counts.total, MAX_PENDING_HANDSHAKES);
            assert_eq!(counts.by_host.len(), MAX_PENDING_HANDSHAKES);
        }
        drop(one_host);
        assert!(pending.admit(at(2_000_000, 1)).is_some());
        drop(others);
        drop(newcomers);
        let counts = lock(&pending.counts);
        assert_eq!((counts.total, counts.by_host.len()), (0, 0));
    }
}
