//! One listening port for many torrents (`pow serve` seeds every dataset on one port, as
//! libtorrent and Transmission do): each incoming connection's handshake is read first, and the
//! connection is handed to the torrent whose info-hash it names.

use crate::peer::{self, Routed};
use crate::{Inner, Torrent};
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Time an incoming peer has to send its handshake before we know which torrent it wants.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(20);
/// Incoming connections still owing their handshake; more are closed at once, so a flood of
/// silent connections costs at most this many tasks and buffers.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

type Routes = Arc<Mutex<HashMap<[u8; 20], Weak<Inner>>>>;

/// A listening socket shared by the torrents attached to it. Stops accepting when dropped.
pub struct SharedListener {
    routes: Routes,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl SharedListener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<SharedListener> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let routes: Routes = Arc::default();
        let stop = watch::channel(false).0;
        tokio::spawn(accept_loop(listener, routes.clone(), stop.subscribe()));
        Ok(SharedListener {
            routes,
            local_addr,
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Routes incoming peers for `torrent`'s info-hash to it (until it is detached or gone).
    pub fn attach(&self, torrent: &Torrent) {
        let info_hash = torrent.inner.metainfo.info_hash.0;
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

async fn accept_loop(listener: TcpListener, routes: Routes, mut stop: watch::Receiver<bool>) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let Ok(permit) = pending.clone().try_acquire_owned() else {
                        tracing::debug!("{addr}: too many pending handshakes, closed");
                        continue;
                    };
                    let routes = routes.clone();
                    tokio::spawn(async move {
                        let routed = read_route(stream, addr, &routes).await;
                        drop(permit);
                        if let Some((inner, stream, routed)) = routed {
                            peer::accept_routed(inner, stream, addr, routed).await;
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = crate::until_true(&mut stop) => return,
        }
    }
}

async fn read_route(
    mut stream: TcpStream,
    addr: SocketAddr,
    routes: &Routes,
) -> Option<(Arc<Inner>, TcpStream, Routed)> {
    let mut buf = BytesMut::with_capacity(1024);
    let handshake =
        match peer::read_handshake(&mut stream, &mut buf, Instant::now() + ROUTE_TIMEOUT).await {
            Ok(hs) => hs,
            Err(e) => {
                tracing::debug!("{addr}: handshake: {e}");
                return None;
            }
        };
    let inner = routes
        .lock()
        .expect("listener routes lock")
        .get(&handshake.info_hash)
        .and_then(Weak::upgrade);
    match inner {
        Some(inner) => Some((inner, stream, Routed { handshake, buf })),
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
