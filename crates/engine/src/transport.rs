//! A peer connection's byte stream: TCP, or uTP (BEP 29, [`pow_utp`]) over the UDP port of
//! the same number. Everything above the handshake is the same for both.

use pow_utp::{UtpSocket, UtpStream};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
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
pub(crate) async fn bind_utp(addr: std::net::SocketAddr) -> Option<std::sync::Arc<UtpSocket>> {
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
    addr: std::net::SocketAddr,
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
    pub(crate) async fn accept(&self) -> io::Result<(PeerStream, std::net::SocketAddr)> {
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

impl PeerStream {
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
