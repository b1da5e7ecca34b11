//! A peer connection's byte stream: TCP, or uTP (BEP 29, [`pow_utp`]) over the UDP port of
//! the same number. Everything above the handshake is the same for both.

use crate::encryption::Encryption;
use pow_utp::{UtpSocket, UtpStream};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Whether peers are reached and accepted over uTP as well as TCP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Utp {
    /// TCP only.
    Off,
    /// uTP accepted on the peer port's number; peers are dialed over TCP first and over uTP
    /// when TCP fails (refused, timed out, or closed during the handshake both ways).
    #[default]
    On,
    /// As `On`, but peers are dialed over uTP first (as libtorrent and Transmission do), and
    /// over TCP when uTP fails.
    Prefer,
}

/// Which transport a dial uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Utp,
}

/// Where dialing a peer goes after one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// The attempt connected (whatever came of it after) or failed in a way no other attempt
    /// mends (another torrent, ourselves, a protocol error): stop.
    Stop,
    /// No connection (refused, timed out): the other transport may reach the peer.
    OtherTransport,
    /// The peer closed the connection during the handshake: a peer that requires encryption
    /// does that to a plaintext handshake, one that knows no encryption to an encrypted one.
    /// Worth the other kind of handshake, then the other transport.
    OtherHandshake,
}

/// The end of one dial attempt, as [`dial_in_turn`] reads it.
pub(crate) trait DialOutcome {
    fn next(&self) -> Next;
}

/// Dials the peer at `addr` the way both the session and the metadata fetch do: over each transport in
/// `order` in turn; over each, with the handshake `encryption` dials first and, when the peer
/// closes that one and `encryption` allows it, once with the other kind. An unreachable peer
/// is not dialed again with the other handshake over the same transport (that would double a
/// dead peer's connect timeout). `attempt(transport, encrypted)` makes one attempt; the last
/// attempt's outcome is returned (`None` when `stopping` held before the first).
pub(crate) async fn dial_in_turn<O, F, Fut>(
    addr: SocketAddr,
    order: &[Transport],
    encryption: Encryption,
    stopping: impl Fn() -> bool,
    mut attempt: F,
) -> Option<O>
where
    O: DialOutcome,
    F: FnMut(Transport, bool) -> Fut,
    Fut: std::future::Future<Output = O>,
{
    let mut last = None;
    for &transport in order {
        if stopping() {
            break;
        }
        let encrypted = encryption.dials_encrypted_first();
        let mut outcome = attempt(transport, encrypted).await;
        if outcome.next() == Next::OtherHandshake && encryption.redials() && !stopping() {
            tracing::debug!(
                "{addr}: no handshake over {transport:?}; dialing again {}",
                if encrypted {
                    "in plaintext"
                } else {
                    "encrypted"
                }
            );
            outcome = attempt(transport, !encrypted).await;
        }
        let next = outcome.next();
        last = Some(outcome);
        if next == Next::Stop {
            break;
        }
    }
    last
}

/// Opens a connection to `addr` over `transport` within `timeout` (uTP from `socket`). A TCP
/// connection starts from address `from` when it is a specific one of `addr`'s family (`--bind
/// 127.0.0.2`: peers see that address, as the uTP socket bound to it shows them, and as
/// Transmission's bind address does).
pub(crate) async fn connect(
    transport: Transport,
    addr: SocketAddr,
    socket: Option<&UtpSocket>,
    from: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<PeerStream> {
    let timed_out = |_| io::Error::new(io::ErrorKind::TimedOut, "timed out");
    match (transport, socket) {
        (Transport::Tcp, _) => tokio::time::timeout(timeout, connect_tcp(addr, from))
            .await
            .map_err(timed_out)?
            .map(PeerStream::Tcp),
        (Transport::Utp, Some(socket)) => tokio::time::timeout(timeout, socket.connect(addr))
            .await
            .map_err(timed_out)?
            .map(PeerStream::Utp),
        (Transport::Utp, None) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no uTP socket to dial from",
        )),
    }
}

async fn connect_tcp(addr: SocketAddr, from: Option<IpAddr>) -> io::Result<TcpStream> {
    let from = from.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4());
    let Some(from) = from else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

impl Utp {
    /// The transports to dial a peer with, in order.
    pub(crate) fn dial_order(self, socket: Option<&UtpSocket>) -> &'static [Transport] {
        match (self, socket.is_some()) {
            (Utp::Off, _) | (_, false) => &[Transport::Tcp],
            (Utp::On, true) => &[Transport::Tcp, Transport::Utp],
            (Utp::Prefer, true) => &[Transport::Utp, Transport::Tcp],
        }
    }
}

/// Binds uTP on `addr` (the TCP listener's address); a port taken already (by a DHT node on
/// the same number, say) leaves the torrent on TCP alone, with a warning.
pub(crate) async fn bind_utp(addr: SocketAddr) -> Option<std::sync::Arc<UtpSocket>> {
    match UtpSocket::bind(addr).await {
        Ok(socket) => Some(std::sync::Arc::new(socket)),
        Err(e) => {
            tracing::warn!("uTP not listening on udp {addr}: {e}; TCP only");
            None
        }
    }
}

/// As [`bind_utp`], sharing the port with whoever takes the [`pow_utp::SharedUdp`].
pub(crate) async fn bind_utp_sharing(
    addr: SocketAddr,
) -> Option<(std::sync::Arc<UtpSocket>, pow_utp::SharedUdp)> {
    match UtpSocket::bind_sharing(addr).await {
        Ok((socket, shared)) => Some((std::sync::Arc::new(socket), shared)),
        Err(e) => {
            tracing::warn!("uTP not listening on udp {addr}: {e}; TCP only");
            None
        }
    }
}

/// Where incoming connections come from: a TCP listener or a uTP socket.
pub(crate) enum PeerListener {
    Tcp(tokio::net::TcpListener),
    Utp(std::sync::Arc<UtpSocket>),
}

impl PeerListener {
    /// The next connection. An error from TCP is passing (out of descriptors, say); from uTP
    /// it means the socket is gone ([`PeerListener::gone`]).
    pub(crate) async fn accept(&self) -> io::Result<(PeerStream, SocketAddr)> {
        match self {
            PeerListener::Tcp(listener) => {
                let (stream, addr) = listener.accept().await?;
                Ok((PeerStream::Tcp(stream), addr))
            }
            PeerListener::Utp(socket) => {
                let stream = socket.accept().await?;
                let addr = stream.peer_addr();
                Ok((PeerStream::Utp(stream), addr))
            }
        }
    }

    /// Whether an accept error ends accepting for good.
    pub(crate) fn gone(&self) -> bool {
        matches!(self, PeerListener::Utp(_))
    }
}

pub(crate) enum PeerStream {
    Tcp(TcpStream),
    Utp(UtpStream),
}

/// The most bytes a TCP connection keeps written but not yet sent in the kernel
/// (`TCP_NOTSENT_LOWAT`); the rest waits in the peer task's buffer. A megabyte queued in the
/// kernel was sent, at each window update, inside the receiver's `recv()` and on its core:
/// real leechers spent 10-20% more CPU per GiB from pow's seed (README, "Unsent bytes in the
/// seed's kernel"). A later message (a choke, a have) no longer queues behind it either.
#[cfg(target_os = "linux")]
const KERNEL_UNSENT_LIMIT: libc::c_int = 16 * 1024;

impl PeerStream {
    /// Socket options of a peer connection: no Nagle delay (a request or a have goes out at
    /// once), and at most `KERNEL_UNSENT_LIMIT` unsent in the kernel. uTP paces its own sends.
    pub(crate) fn tune(&self) {
        if let PeerStream::Tcp(tcp) = self {
            let _ = tcp.set_nodelay(true);
            limit_kernel_unsent(tcp);
        }
    }

    pub(crate) fn is_utp(&self) -> bool {
        matches!(self, PeerStream::Utp(_))
    }

    /// A reading half and a writing half, used at once by one task (as `TcpStream::split`).
    pub(crate) fn split(&mut self) -> (PeerReader<'_>, PeerWriter<'_>) {
        match self {
            PeerStream::Tcp(tcp) => {
                let (r, w) = tcp.split();
                (PeerReader::Tcp(r), PeerWriter::Tcp(w))
            }
            PeerStream::Utp(utp) => (PeerReader::Utp(utp), PeerWriter::Utp(utp)),
        }
    }
}

#[cfg(target_os = "linux")]
fn limit_kernel_unsent(tcp: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is the open socket `tcp` owns, and the option value is a c_int
    // whose size is passed with it.
    let failed = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&KERNEL_UNSENT_LIMIT as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } != 0;
    if failed {
        // Older kernels lack it: the connection works as before, only less evenly paced.
        tracing::debug!("TCP_NOTSENT_LOWAT: {}", io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
fn limit_kernel_unsent(_tcp: &TcpStream) {}

pub(crate) enum PeerReader<'a> {
    Tcp(ReadHalf<'a>),
    Utp(&'a UtpStream),
}

pub(crate) enum PeerWriter<'a> {
    Tcp(WriteHalf<'a>),
    Utp(&'a UtpStream),
}

// The whole stream reads and writes through its halves, so each transport is matched once.
impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (mut reader, _) = self.get_mut().split();
        Pin::new(&mut reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let (_, mut writer) = self.get_mut().split();
        Pin::new(&mut writer).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (_, mut writer) = self.get_mut().split();
        Pin::new(&mut writer).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (_, mut writer) = self.get_mut().split();
        Pin::new(&mut writer).poll_shutdown(cx)
    }
}

impl AsyncRead for PeerReader<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerReader::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            PeerReader::Utp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerWriter::Tcp(s) => Pin::new(s).poll_write(cx, data),
            PeerWriter::Utp(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerWriter::Tcp(s) => Pin::new(s).poll_flush(cx),
            PeerWriter::Utp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerWriter::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            PeerWriter::Utp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attempt's end as the test scripts it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Scripted(Next);

    impl DialOutcome for Scripted {
        fn next(&self) -> Next {
            self.0
        }
    }

    /// The attempts `dial_in_turn` makes when each (transport, encrypted) pair ends as
    /// `script` says (unlisted pairs stop).
    fn attempts(
        order: &[Transport],
        encryption: Encryption,
        script: &[((Transport, bool), Next)],
    ) -> Vec<(Transport, bool)> {
        let made = std::cell::RefCell::new(Vec::new());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(dial_in_turn(
            "127.0.0.1:1".parse().unwrap(),
            order,
            encryption,
            || false,
            |transport, encrypted| {
                made.borrow_mut().push((transport, encrypted));
                let next = script
                    .iter()
                    .find(|(attempt, _)| *attempt == (transport, encrypted))
                    .map_or(Next::Stop, |(_, next)| *next);
                std::future::ready(Scripted(next))
            },
        ));
        made.into_inner()
    }

    #[test]
    fn the_dial_policy() {
        use Next::*;
        use Transport::*;
        let both = [Tcp, Utp];
        // Connected at once: one attempt.
        assert_eq!(attempts(&both, Encryption::Allow, &[]), [(Tcp, false)]);
        // Unreachable over TCP: uTP next, not TCP again encrypted.
        assert_eq!(
            attempts(&both, Encryption::Allow, &[((Tcp, false), OtherTransport)]),
            [(Tcp, false), (Utp, false)]
        );
        // Closed during the plaintext handshake: encrypted over the same transport.
        assert_eq!(
            attempts(&both, Encryption::Allow, &[((Tcp, false), OtherHandshake)]),
            [(Tcp, false), (Tcp, true)]
        );
        // Closed both ways: the other transport, encrypted first under `prefer`.
        assert_eq!(
            attempts(
                &both,
                Encryption::Prefer,
                &[
                    ((Tcp, true), OtherHandshake),
                    ((Tcp, false), OtherHandshake)
                ]
            ),
            [(Tcp, true), (Tcp, false), (Utp, true)]
        );
        // `require` and `off` never dial the other kind of handshake.
        assert_eq!(
            attempts(&both, Encryption::Require, &[((Tcp, true), OtherHandshake)]),
            [(Tcp, true), (Utp, true)]
        );
        assert_eq!(
            attempts(
                &[Utp, Tcp],
                Encryption::Off,
                &[((Utp, false), OtherHandshake)]
            ),
            [(Utp, false), (Tcp, false)]
        );
    }

    /// A dial starts from the bound address when there is one (the peer sees 127.0.0.2), and
    /// from wherever the system picks when it is unspecified or of the other family.
    #[test]
    fn a_tcp_dial_starts_from_the_bound_address() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let to = listener.local_addr().unwrap();
            let seen_from = |from: Option<&str>| {
                let from = from.map(|f| f.parse::<IpAddr>().unwrap());
                let listener = &listener;
                async move {
                    let timeout = Duration::from_secs(5);
                    let _dialed = connect(Transport::Tcp, to, None, from, timeout)
                        .await
                        .unwrap();
                    listener.accept().await.unwrap().1.ip().to_string()
                }
            };
            assert_eq!(seen_from(Some("127.0.0.2")).await, "127.0.0.2");
            assert_eq!(seen_from(Some("0.0.0.0")).await, "127.0.0.1");
            assert_eq!(seen_from(Some("::1")).await, "127.0.0.1");
            assert_eq!(seen_from(None).await, "127.0.0.1");
        });
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_tcp_peer_connection_keeps_little_unsent_in_the_kernel_and_no_nagle_delay() {
        use std::os::fd::AsRawFd;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tcp = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let stream = PeerStream::Tcp(tcp);
            stream.tune();
            let PeerStream::Tcp(tcp) = &stream else {
                unreachable!()
            };
            assert!(tcp.nodelay().unwrap());
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: an open socket, and a c_int with its size.
            let rc = unsafe {
                libc::getsockopt(
                    tcp.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_NOTSENT_LOWAT,
                    (&mut value as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0);
            assert_eq!(value, KERNEL_UNSENT_LIMIT);
        });
    }
}
