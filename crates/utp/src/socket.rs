//! The tokio side: one UDP socket, a driver task that routes datagrams to connections and
//! runs their timers, and [`UtpStream`]s the application reads and writes.
//!
//! Each connection sits behind a mutex shared by its stream and the driver. The stream sends
//! the datagrams its writes and reads produce itself (`try_send_to`, no task hop); the driver
//! sends those produced by incoming packets and timers, and whatever a full socket buffer
//! held back.

use crate::conn::{Connection, State};
use crate::offload;
use crate::packet::{self, Header, Kind};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How often timers are checked (RTOs are at least 500 ms).
const TICK: Duration = Duration::from_millis(20);
/// Connections accepted and not yet taken by [`UtpSocket::accept`]; SYNs past this are dropped.
const ACCEPT_BACKLOG: usize = 64;
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// The smallest window a connection offers, however small the socket's buffer.
const MIN_RECEIVE_WINDOW: usize = 64 * 1024;
/// recvmmsg calls (each up to a batch of datagrams) between two looks at the timer.
const RECEIVES_PER_WAKE: usize = 64;
/// A stream dropped with data still unacked gets this long to deliver it.
const LINGER: Duration = Duration::from_secs(30);
/// Connections on one socket, lingering ones included; SYNs past it are not answered.
const MAX_CONNECTIONS: usize = 4096;

type Key = (SocketAddr, u16);

struct Shared {
    udp: Arc<UdpSocket>,
    /// What each connection offers its peer (see [`enlarge_buffers`]).
    receive_window: usize,
    sender: offload::Sender,
    conns: Mutex<HashMap<Key, Arc<Handle>>>,
    /// Connections whose stream was dropped, oldest first (some may be gone already): when
    /// `conns` is full, a SYN takes the place of the oldest of them.
    dropped: Mutex<VecDeque<Key>>,
    /// Told when [`UtpSocket::connect`] adds a connection: the driver ticks only while there
    /// are connections, so that an idle socket (a seed nobody dials over uTP) does not wake 50
    /// times a second.
    dialed: tokio::sync::Notify,
    /// Where datagrams that are not uTP go (a DHT node on the same port), if anywhere.
    others: Option<mpsc::Sender<(Vec<u8>, SocketAddr)>>,
}

/// The UDP socket of a [`UtpSocket`] and the datagrams it received that are not uTP: what a
/// DHT node needs to share the port (libtorrent and Transmission run both on one socket).
pub struct SharedUdp {
    pub socket: Arc<UdpSocket>,
    pub incoming: mpsc::Receiver<(Vec<u8>, SocketAddr)>,
}

/// Datagrams for the sharing node not yet read by it; more are dropped (UDP may lose them).
const OTHERS_BACKLOG: usize = 256;

struct Handle {
    addr: SocketAddr,
    inner: Mutex<Inner>,
}

struct Inner {
    conn: Connection,
    /// Datagrams a full socket buffer held back, sent first next time.
    backlog: Vec<Vec<u8>>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// The stream is gone: the connection only finishes sending (until [`LINGER`]).
    dropped_at: Option<Instant>,
}

impl Handle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    /// Sends what the connection has queued; what does not fit waits for the next tick.
    fn send(&mut self, shared: &Shared, addr: SocketAddr) {
        let mut queued = std::mem::take(&mut self.backlog);
        queued.append(&mut self.conn.outgoing);
        let sent = shared.sender.send(&shared.udp, addr, &queued);
        queued.drain(..sent);
        self.backlog = queued;
    }

    fn wake(&mut self) {
        let c = &self.conn;
        if !c.readable.is_empty() || c.eof || c.state == State::Closed {
            if let Some(w) = self.read_waker.take() {
                w.wake();
            }
        }
        if c.send_room() > 0 || c.state != State::SynSent {
            if let Some(w) = self.write_waker.take() {
                w.wake();
            }
        }
    }

    fn finished(&self, now: Instant) -> bool {
        let c = &self.conn;
        (c.state == State::Closed && self.backlog.is_empty())
            || self
                .dropped_at
                .is_some_and(|at| c.done_sending() || now.duration_since(at) > LINGER)
    }
}

/// A uTP endpoint on one UDP port: accepts connections and dials them.
pub struct UtpSocket {
    shared: Arc<Shared>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<UtpStream>>,
    local: SocketAddr,
    driver: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for UtpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UtpSocket({})", self.local)
    }
}

impl Drop for UtpSocket {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl UtpSocket {
    pub async fn bind(addr: SocketAddr) -> io::Result<UtpSocket> {
        UtpSocket::bind_with(addr, None).await
    }

    /// As [`UtpSocket::bind`], handing datagrams that are not uTP to the returned
    /// [`SharedUdp`], whose socket sends from the same port.
    pub async fn bind_sharing(addr: SocketAddr) -> io::Result<(UtpSocket, SharedUdp)> {
        let (tx, rx) = mpsc::channel(OTHERS_BACKLOG);
        let socket = UtpSocket::bind_with(addr, Some(tx)).await?;
        let shared = SharedUdp {
            socket: socket.shared.udp.clone(),
            incoming: rx,
        };
        Ok((socket, shared))
    }

    async fn bind_with(
        addr: SocketAddr,
        others: Option<mpsc::Sender<(Vec<u8>, SocketAddr)>>,
    ) -> io::Result<UtpSocket> {
        let udp = UdpSocket::bind(addr).await?;
        let receive_window = enlarge_buffers(&udp);
        let local = udp.local_addr()?;
        let shared = Arc::new(Shared {
            receive_window,
            udp: Arc::new(udp),
            sender: offload::Sender::new(),
            conns: Mutex::new(HashMap::new()),
            dropped: Mutex::new(VecDeque::new()),
            dialed: tokio::sync::Notify::new(),
            others,
        });
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        let driver = tokio::spawn(drive(Arc::downgrade(&shared), tx));
        Ok(UtpSocket {
            shared,
            accepted: tokio::sync::Mutex::new(rx),
            local,
            driver,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next connection a peer dialed.
    pub async fn accept(&self) -> io::Result<UtpStream> {
        self.accepted
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::other("uTP socket closed"))
    }

    /// Dials `addr`; fails with `TimedOut` when no answer comes to two SYNs (3 s).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<UtpStream> {
        let now = now();
        let handle = {
            let mut conns = lock(&self.shared.conns);
            let recv_id = loop {
                let id = rand::random::<u16>();
                // Both ids must be free: the peer sends to `id`, and `id + 1` is what a SYN
                // from that peer announcing `id` would be filed under.
                if !conns.contains_key(&(addr, id))
                    && !conns.contains_key(&(addr, id.wrapping_add(1)))
                {
                    break id;
                }
            };
            let handle = Arc::new(Handle {
                addr,
                inner: Mutex::new(Inner {
                    conn: Connection::dial(recv_id, self.shared.receive_window, now),
                    backlog: Vec::new(),
                    read_waker: None,
                    write_waker: None,
                    dropped_at: None,
                }),
            });
            conns.insert((addr, recv_id), handle.clone());
            handle
        };
        self.shared.dialed.notify_one();
        handle.lock().send(&self.shared, addr);
        let stream = UtpStream {
            shared: self.shared.clone(),
            handle,
        };
        poll_fn(|cx| {
            let mut inner = stream.handle.lock();
            match inner.conn.state {
                State::Connected => Poll::Ready(Ok(())),
                State::Closed => Poll::Ready(Err(io::Error::from(
                    inner.conn.error.unwrap_or(io::ErrorKind::ConnectionRefused),
                ))),
                State::SynSent => {
                    inner.write_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await?;
        Ok(stream)
    }
}

/// Socket buffers of a few hundred KiB (the default) overflow at a window's burst of
/// datagrams even on loopback; ask for [`SOCKET_BUFFER`] (the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`). Best effort: a smaller buffer only costs resends.
/// Returns the window a connection on this socket may offer: half the receive buffer the
/// kernel granted (it counts a datagram's whole allocation, about twice a data packet's
/// payload), so one peer's burst fits in it.
fn enlarge_buffers(udp: &UdpSocket) -> usize {
    use std::os::fd::AsRawFd;
    let size = SOCKET_BUFFER as libc::c_int;
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid socket descriptor and a c_int option value of the right length.
        unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    let mut granted: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above, with room for the c_int the kernel writes back.
    let ok = unsafe {
        libc::getsockopt(
            udp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut granted as *mut libc::c_int).cast(),
            &mut len,
        )
    } == 0;
    if ok && granted > 0 {
        (granted as usize / 2).max(MIN_RECEIVE_WINDOW)
    } else {
        crate::conn::RECV_BUFFER
    }
}

/// The time, as tokio sees it (so tests may pause it).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn drive(shared: Weak<Shared>, accepted: mpsc::Sender<UtpStream>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut receiver = offload::Receiver::new();
    let mut touched: Vec<Arc<Handle>> = Vec::new();
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Connections are added only here (a SYN) and by `connect`, which notifies.
        let idle = lock(&shared.conns).is_empty();
        tokio::select! {
            ready = shared.udp.readable() => {
                if ready.is_err() {
                    return;
                }
                // What arrived together (one recvmmsg, at most RECEIVE_BATCH datagrams) is
                // handled before any answer goes out, so a burst of data packets is acked
                // once, and a long drain still acks as it goes and the sender's window keeps
                // moving. At most RECEIVES_PER_WAKE of them, then back to the select: a flood
                // that never let the socket run dry kept the timers (resends, dial timeouts,
                // lingering connections' end) from ever running.
                for _ in 0..RECEIVES_PER_WAKE {
                    match receiver.receive(&shared.udp) {
                        Ok(n) => {
                            for i in 0..n {
                                let (datagram, from) = receiver.datagram(i);
                                let Some(from) = from else { continue };
                                if let Some(handle) = incoming(&shared, &accepted, datagram, from) {
                                    if !touched.iter().any(|h| Arc::ptr_eq(h, &handle)) {
                                        touched.push(handle);
                                    }
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            // Linux reports an ICMP error of an earlier send here.
                            tracing::debug!("uTP receive: {e}");
                        }
                    }
                    for handle in touched.drain(..) {
                        let mut inner = handle.lock();
                        inner.conn.flush(now());
                        inner.send(&shared, handle.addr);
                        inner.wake();
                    }
                }
            }
            _ = shared.dialed.notified(), if idle => {}
            _ = tick.tick(), if !idle => {
                let now = now();
                let all: Vec<(Key, Arc<Handle>)> =
                    lock(&shared.conns).iter().map(|(k, h)| (*k, h.clone())).collect();
                let mut finished = Vec::new();
                for (key, handle) in all {
                    let mut inner = handle.lock();
                    inner.conn.on_tick(now);
                    inner.send(&shared, handle.addr);
                    inner.wake();
                    if inner.finished(now) {
                        finished.push(key);
                    }
                }
                if !finished.is_empty() {
                    let mut conns = lock(&shared.conns);
                    for key in finished {
                        conns.remove(&key);
                    }
                }
            }
        }
    }
}

/// Hands one datagram to its connection, or makes a connection of a SYN; returns the
/// connection it touched.
fn incoming(
    shared: &Arc<Shared>,
    accepted: &mpsc::Sender<UtpStream>,
    datagram: &[u8],
    from: SocketAddr,
) -> Option<Arc<Handle>> {
    if !packet::looks_like_utp(datagram) {
        if let Some(others) = &shared.others {
            let _ = others.try_send((datagram.to_vec(), from));
        }
        return None;
    }
    let packet = packet::decode(datagram).ok()?;
    let now = now();
    let key = (from, packet.header.conn_id);
    let existing = lock(&shared.conns).get(&key).cloned();
    if let Some(handle) = existing {
        handle.lock().conn.on_packet(&packet, now);
        return Some(handle);
    }
    if packet.header.kind == Kind::Syn {
        // Filed under the id the peer will send to: its SYN's id plus one.
        let key = (from, packet.header.conn_id.wrapping_add(1));
        let mut conns = lock(&shared.conns);
        if let Some(handle) = conns.get(&key).cloned() {
            // The same SYN again (our answer was lost, or is slower than the peer's 1 s
            // resend): answered again by the connection it made. A new one in its place
            // answered with another sequence number and left the first, whose stream the
            // engine holds, never fed again.
            drop(conns);
            handle.lock().conn.on_packet(&packet, now);
            return Some(handle);
        }
        if conns.len() >= MAX_CONNECTIONS && !forget_oldest_dropped(shared, &mut conns) {
            // Every one has a stream that someone holds.
            return None;
        }
        let permit = accepted.try_reserve().ok()?;
        let handle = Arc::new(Handle {
            addr: from,
            inner: Mutex::new(Inner {
                conn: Connection::accept(
                    &packet.header,
                    rand::random(),
                    shared.receive_window,
                    now,
                ),
                backlog: Vec::new(),
                read_waker: None,
                write_waker: None,
                dropped_at: None,
            }),
        });
        conns.insert(key, handle.clone());
        drop(conns);
        permit.send(UtpStream {
            shared: shared.clone(),
            handle: handle.clone(),
        });
        return Some(handle);
    }
    if packet.header.kind != Kind::Reset {
        // A packet of a connection we do not know (we forgot it, or never had it).
        reset(shared, &packet.header, from);
    }
    None
}

/// Forgets the connection whose stream was dropped longest ago (it was lingering to deliver
/// what it had left, up to [`LINGER`]); false if there is none. Streams the engine closed at
/// once (over its cap of pending handshakes) each lingered 30 s for a FIN nobody acked, so
/// about 137 SYNs a second filled the table and every uTP dial to us was refused.
fn forget_oldest_dropped(shared: &Shared, conns: &mut HashMap<Key, Arc<Handle>>) -> bool {
    let mut dropped = lock(&shared.dropped);
    while let Some(key) = dropped.pop_front() {
        // Its key may be a newer connection's by now (the same address and id).
        let lingering = conns
            .get(&key)
            .is_some_and(|handle| handle.lock().dropped_at.is_some());
        if lingering {
            conns.remove(&key);
            return true;
        }
    }
    false
}

fn reset(shared: &Shared, to: &Header, addr: SocketAddr) {
    let header = Header {
        kind: Kind::Reset,
        // The peer sends to us on its send id; its receive id is one off either way, and a
        // reset names the id it receives on. libutp answers the same way.
        conn_id: to.conn_id,
        timestamp: 0,
        timestamp_diff: 0,
        wnd: 0,
        seq: 0,
        ack: to.seq,
    };
    let mut out = Vec::with_capacity(packet::HEADER);
    packet::encode(&header, None, &[], &mut out);
    let _ = shared.udp.try_send_to(&out, addr);
}

/// One uTP connection, read and written like a TCP stream. Dropping it closes our side
/// gracefully: what was written is still delivered (for up to 30 s), then a FIN.
pub struct UtpStream {
    shared: Arc<Shared>,
    handle: Arc<Handle>,
}

impl UtpStream {
    pub fn peer_addr(&self) -> SocketAddr {
        self.handle.addr
    }

    fn poll_read_inner(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.handle.lock();
        let now = now();
        if !inner.conn.readable.is_empty() {
            let data = inner.conn.read(buf.remaining(), now);
            buf.put_slice(&data);
            inner.send(&self.shared, self.handle.addr);
            return Poll::Ready(Ok(()));
        }
        if inner.conn.eof {
            return Poll::Ready(Ok(()));
        }
        if let Some(kind) = inner.conn.error {
            return Poll::Ready(Err(kind.into()));
        }
        inner.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_write_inner(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut inner = self.handle.lock();
        if let Some(kind) = inner.conn.error {
            return Poll::Ready(Err(kind.into()));
        }
        // After our shutdown the send buffer has no room, and a write waited for room for
        // good; a TCP socket's write after `shutdown(SHUT_WR)` fails with EPIPE.
        if inner.conn.state == State::Closed || inner.conn.close_requested() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = inner.conn.write(data, now());
        if n == 0 && !data.is_empty() {
            inner.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        inner.send(&self.shared, self.handle.addr);
        Poll::Ready(Ok(n))
    }

    fn close_our_side(&self) {
        let mut inner = self.handle.lock();
        inner.conn.close(now());
        inner.send(&self.shared, self.handle.addr);
    }
}

impl Drop for UtpStream {
    fn drop(&mut self) {
        self.close_our_side();
        let mut inner = self.handle.lock();
        inner.dropped_at = Some(now());
        let key = (self.handle.addr, inner.conn.recv_id);
        drop(inner);
        let mut dropped = lock(&self.shared.dropped);
        // Keys of connections finished since are dropped here too, so this stays about as
        // long as the table.
        if dropped.len() >= MAX_CONNECTIONS {
            dropped.pop_front();
        }
        dropped.push_back(key);
    }
}

impl AsyncRead for UtpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_read(cx, buf)
    }
}

impl AsyncWrite for UtpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_shutdown(cx)
    }
}

/// Shared references read and write too (one reader and one writer at a time, as with
/// `TcpStream::split`).
impl AsyncRead for &UtpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_inner(cx, buf)
    }
}

impl AsyncWrite for &UtpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_inner(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close_our_side();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn loopback() -> UtpSocket {
        UtpSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_sockets_carry_a_stream_each_way() {
        let a = loopback().await;
        let b = loopback().await;
        let data: Vec<u8> = (0..8 << 20)
            .map(|i: u32| (i * 31 + i / 977) as u8)
            .collect();
        let expected = data.clone();
        let b_addr = b.local_addr();
        let server = tokio::spawn(async move {
            let mut s = b.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(b"thanks").await.unwrap();
            drop(s);
            // The socket must outlive the stream's last packets.
            tokio::time::sleep(Duration::from_millis(300)).await;
            got
        });
        let started = Instant::now();
        let mut s = a.connect(b_addr).await.unwrap();
        s.write_all(&data).await.unwrap();
        s.shutdown().await.unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.unwrap();
        let got = server.await.unwrap();
        let took = started.elapsed();
        assert!(
            got == expected,
            "bytes differ ({} of {})",
            got.len(),
            expected.len()
        );
        assert_eq!(reply, b"thanks");
        eprintln!("8 MiB over uTP on loopback in {took:?}");
    }

    /// A write after our shutdown fails at once (as TCP's EPIPE); it waited for send-buffer
    /// room that never comes, for good. The peer reads what came before, then the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_after_shutdown_fails_and_sends_nothing() {
        let a = loopback().await;
        let b = loopback().await;
        let b_addr = b.local_addr();
        let (read, got) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let mut s = b.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            read.send(got).unwrap();
            // Its own side stays open: the connection is not closed under the writer.
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(s);
        });
        let mut s = a.connect(b_addr).await.unwrap();
        s.write_all(b"before").await.unwrap();
        s.shutdown().await.unwrap();
        let after = tokio::time::timeout(Duration::from_secs(5), s.write(b"after"))
            .await
            .expect("a write after shutdown still waiting after 5 s");
        assert_eq!(after.map_err(|e| e.kind()), Err(io::ErrorKind::BrokenPipe));
        assert_eq!(got.await.unwrap(), b"before");
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_port_hands_other_datagrams_on_and_still_speaks_utp() {
        let (a, mut others) = UtpSocket::bind_sharing("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let node = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        node.send_to(ping, a.local_addr()).await.unwrap();
        let (datagram, from) = others.incoming.recv().await.unwrap();
        assert_eq!(
            (&datagram[..], from),
            (&ping[..], node.local_addr().unwrap())
        );
        others.socket.send_to(b"d1:y1:re", from).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, reply_from) = node.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], reply_from), (&b"d1:y1:re"[..], a.local_addr()));

        let b = loopback().await;
        let b_addr = b.local_addr();
        let server = tokio::spawn(async move {
            let mut s = b.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut s = a.connect(b_addr).await.unwrap();
        s.write_all(b"over the shared port").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(server.await.unwrap(), b"over the shared port");
        assert!(
            others.incoming.try_recv().is_err(),
            "uTP packets went to the other node"
        );
    }

    /// A dialer's SYN announcing `conn_id`, as a datagram.
    fn syn(conn_id: u16) -> Vec<u8> {
        let header = Header {
            kind: Kind::Syn,
            conn_id,
            timestamp: 0,
            timestamp_diff: 0,
            wnd: 1 << 20,
            seq: 1,
            ack: 0,
        };
        let mut datagram = Vec::new();
        packet::encode(&header, None, &[], &mut datagram);
        datagram
    }

    /// A SYN that comes again (its answer lost, or slower than the dialer's 1 s resend) is
    /// answered by the connection it made, with the same sequence number, and makes no
    /// second stream; it used to replace the first connection with a new one.
    #[tokio::test]
    async fn a_repeated_syn_is_answered_by_the_connection_it_made() {
        let b = loopback().await;
        let dialer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let datagram = syn(500);
        let mut answers = Vec::new();
        for _ in 0..2 {
            dialer.send_to(&datagram, b.local_addr()).await.unwrap();
            let mut buf = [0u8; 1500];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), dialer.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let answer = packet::decode(&buf[..n]).unwrap().header;
            assert_eq!(
                (answer.kind, answer.conn_id, answer.ack),
                (Kind::State, 500, 1)
            );
            answers.push(answer.seq);
        }
        assert_eq!(answers[0], answers[1], "the same connection answered");
        let first = tokio::time::timeout(Duration::from_secs(1), b.accept()).await;
        assert!(first.is_ok(), "the SYN made a stream");
        let second = tokio::time::timeout(Duration::from_millis(300), b.accept()).await;
        assert!(second.is_err(), "the repeated SYN made a second stream");
    }

    /// Streams accepted and dropped at once (as the engine drops those over its cap of
    /// pending handshakes) linger for a FIN their silent dialer never acks. With the table
    /// full of them, a new dialer still gets in: it takes the place of the oldest. It used to
    /// be refused until they timed out (30 s), so 137 SYNs a second shut out every dialer.
    #[tokio::test]
    async fn dropped_streams_make_room_for_a_new_dialer() {
        let b = loopback().await;
        let b_addr = b.local_addr();
        let b = Arc::new(b);
        let acceptor = b.clone();
        let accepted = tokio::spawn(async move {
            for n in 0..MAX_CONNECTIONS {
                let stream = tokio::time::timeout(Duration::from_secs(10), acceptor.accept())
                    .await
                    .unwrap_or_else(|_| panic!("SYN {n} made no stream"))
                    .unwrap();
                drop(stream);
            }
        });
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for conn_id in 0..MAX_CONNECTIONS as u16 {
            silent.send_to(&syn(conn_id * 2), b_addr).await.unwrap();
            if conn_id % 32 == 31 {
                // Within the accept backlog (64), and in the socket's receive buffer.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        accepted.await.unwrap();
        assert_eq!(
            lock(&b.shared.conns).len(),
            MAX_CONNECTIONS,
            "the table is full"
        );
        let a = loopback().await;
        let dialed = tokio::time::timeout(Duration::from_secs(5), a.connect(b_addr)).await;
        match dialed {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("a new dialer was refused: {e}"),
            Err(_) => panic!("a new dialer was not answered in 5 s"),
        }
    }

    #[tokio::test]
    async fn dialing_a_silent_port_times_out() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = loopback().await;
        tokio::time::pause();
        let err = a.connect(silent.local_addr().unwrap()).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
