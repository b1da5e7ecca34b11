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
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
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
    by_host: HashMap<IpAddr, usize>,
}

/// One pending handshake, counted until dropped.
pub(crate) struct Pending {
    handshakes: Arc<PendingHandshakes>,
    host: IpAddr,
}

impl PendingHandshakes {
    /// Counts a handshake from `addr` in, or `None` (the connection is to be closed) when there
    /// are too many, from everyone or from its host.
    pub fn admit(self: &Arc<Self>, addr: SocketAddr) -> Option<Pending> {
        let host = crate::peer::host_of(addr.ip());
        let mut counts = lock(&self.counts);
        let from_host = counts.by_host.get(&host).copied().unwrap_or(0);
        if counts.total >= MAX_PENDING_HANDSHAKES || from_host >= MAX_PENDING_HANDSHAKES_PER_HOST {
            tracing::debug!("{addr}: too many pending handshakes, closed");
            return None;
        }
        counts.total += 1;
        *counts.by_host.entry(host).or_default() += 1;
        Some(Pending {
            handshakes: self.clone(),
            host,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut counts = lock(&self.handshakes.counts);
        if let Some(count) = counts.by_host.get_mut(&self.host) {
            *count -= 1;
            if *count == 0 {
                counts.by_host.remove(&self.host);
            }
            counts.total -= 1;
        }
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
    let routed = read_route(stream, addr, &routes, encryption).await;
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

    /// The caps, and no trace of what was refused: once the total is full, connections from
    /// 10,000 other hosts are refused and leave no entry behind; as pending ones finish, their
    /// room is free again.
    #[test]
    fn pending_handshakes_are_capped_and_refusals_leave_nothing() {
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
        for host in 1_000_000..1_010_000 {
            assert!(pending.admit(at(host, 1)).is_none(), "total cap");
        }
        {
            let counts = lock(&pending.counts);
            assert_eq!(counts.total, MAX_PENDING_HANDSHAKES);
            assert_eq!(counts.by_host.len(), 1 + others.len());
        }
        drop(one_host);
        assert!(pending.admit(at(2_000_000, 1)).is_some());
        drop(others);
        let counts = lock(&pending.counts);
        assert_eq!((counts.total, counts.by_host.len()), (0, 0));
    }
}
