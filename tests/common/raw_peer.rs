//! A peer written by hand on a blocking std `TcpStream`: it speaks the wire bytes directly, so
//! nothing in pow's own codec can make it more polite than a test intends.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const UNCHOKE: u8 = 1;
pub const INTERESTED: u8 = 2;
pub const HAVE: u8 = 4;
pub const BITFIELD: u8 = 5;
pub const REQUEST: u8 = 6;
pub const PIECE: u8 = 7;
pub const EXTENDED: u8 = 20;

/// Reserved bytes with the BEP 10 extension-protocol bit set.
pub const EXTENSION_BIT: [u8; 8] = [0, 0, 0, 0, 0, 0x10, 0, 0];

/// A peer on a plain blocking socket.
pub struct RawPeer {
    pub stream: TcpStream,
}

/// What reading from a peer ended with.
#[derive(Debug, PartialEq)]
pub enum End {
    /// The connection was closed (EOF or reset).
    Closed,
    /// Nothing more within the timeout.
    Quiet,
}

impl RawPeer {
    pub fn connect(port: u16, info_hash: [u8; 20]) -> RawPeer {
        Self::connect_with(port, info_hash, [0; 8])
    }

    /// Connects with these reserved bytes (extension bits) in the handshake; returns the peer
    /// and the reserved bytes of the answer.
    pub fn connect_with(port: u16, info_hash: [u8; 20], reserved: [u8; 8]) -> RawPeer {
        Self::connect_reserved(port, info_hash, reserved).0
    }

    pub fn connect_reserved(
        port: u16,
        info_hash: [u8; 20],
        reserved: [u8; 8],
    ) -> (RawPeer, [u8; 8]) {
        Self::connect_as(port, info_hash, reserved, unique_peer_id())
    }

    /// Connects with this peer id (pow keeps one connection per peer id).
    pub fn connect_as(
        port: u16,
        info_hash: [u8; 20],
        reserved: [u8; 8],
        peer_id: [u8; 20],
    ) -> (RawPeer, [u8; 8]) {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        Self::greet(stream, info_hash, reserved, peer_id)
    }

    /// Dials pow and sends a handshake for `info_hash` only: pow's own is read by
    /// [`RawPeer::read_handshake`], when pow sends one (not for a torrent it lacks).
    pub fn dial(port: u16, info_hash: [u8; 20]) -> RawPeer {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(&handshake([0; 8], info_hash, unique_peer_id()))
            .unwrap();
        RawPeer { stream }
    }

    /// Reads the other side's 68-byte handshake (within 10 s).
    pub fn read_handshake(&mut self) -> [u8; 68] {
        let mut theirs = [0u8; 68];
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        self.stream.read_exact(&mut theirs).unwrap();
        theirs
    }

    /// Connects from another loopback address (`127.0.0.2`: another host, as pow sees it) with
    /// this peer id.
    pub fn connect_from(
        source: std::net::Ipv4Addr,
        port: u16,
        info_hash: [u8; 20],
        peer_id: [u8; 20],
    ) -> RawPeer {
        Self::try_connect_from(source, port, info_hash, peer_id).expect("pow closed the connection")
    }

    /// As [`RawPeer::connect_from`], or `None` when pow closes the connection before its
    /// handshake (it has no room).
    pub fn try_connect_from(
        source: std::net::Ipv4Addr,
        port: u16,
        info_hash: [u8; 20],
        peer_id: [u8; 20],
    ) -> Option<RawPeer> {
        // std cannot bind a socket before connecting it; tokio's `TcpSocket` can.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let stream = runtime
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind((source, 0).into())?;
                socket
                    .connect((std::net::Ipv4Addr::LOCALHOST, port).into())
                    .await?
                    .into_std()
            })
            .unwrap();
        stream.set_nonblocking(false).unwrap();
        let mut stream = stream;
        stream
            .write_all(&handshake([0; 8], info_hash, peer_id))
            .ok()?;
        let mut theirs = [0u8; 68];
        stream.read_exact(&mut theirs).ok()?;
        assert_eq!(theirs[28..48], info_hash);
        Some(RawPeer { stream })
    }

    /// Sends our handshake, reads theirs (checking the info-hash); returns their reserved bytes.
    fn greet(
        mut stream: TcpStream,
        info_hash: [u8; 20],
        reserved: [u8; 8],
        peer_id: [u8; 20],
    ) -> (RawPeer, [u8; 8]) {
        stream
            .write_all(&handshake(reserved, info_hash, peer_id))
            .unwrap();
        let mut theirs = [0u8; 68];
        stream.read_exact(&mut theirs).unwrap();
        assert_eq!(theirs[28..48], info_hash);
        (RawPeer { stream }, theirs[20..28].try_into().unwrap())
    }

    /// Waits (up to 20 s) for a dial on `listener`, reads the handshake (checking it is for
    /// `info_hash`) and answers as `peer_id`.
    pub fn accept_as(listener: &TcpListener, info_hash: [u8; 20], peer_id: [u8; 20]) -> RawPeer {
        Self::accept_answering(listener, info_hash, info_hash, peer_id, [0; 8])
    }

    /// As [`RawPeer::accept_as`], answering with these reserved bytes (extension bits).
    pub fn accept_reserved(
        listener: &TcpListener,
        info_hash: [u8; 20],
        reserved: [u8; 8],
    ) -> RawPeer {
        Self::accept_answering(listener, info_hash, info_hash, unique_peer_id(), reserved)
    }

    /// Waits (up to 20 s) for a dial on `listener`, reads the handshake (checking it is for
    /// `expected`) and answers with a handshake for `answer` (another torrent, to test that).
    pub fn accept(listener: &TcpListener, expected: [u8; 20], answer: [u8; 20]) -> RawPeer {
        Self::accept_answering(listener, expected, answer, unique_peer_id(), [0; 8])
    }

    fn accept_answering(
        listener: &TcpListener,
        expected: [u8; 20],
        answer: [u8; 20],
        peer_id: [u8; 20],
        reserved: [u8; 8],
    ) -> RawPeer {
        let stream =
            accept_within(listener, Duration::from_secs(20)).expect("nothing dialed the listener");
        stream.set_nodelay(true).unwrap();
        let mut peer = RawPeer { stream };
        let theirs = peer.read_handshake();
        assert_eq!(theirs[28..48], expected, "the handshake pow sent");
        peer.stream
            .write_all(&handshake(reserved, answer, peer_id))
            .unwrap();
        peer
    }

    pub fn send(&mut self, id: u8, payload: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(&frame(id, payload))
    }

    /// An extended message (BEP 10): `ext_id` and a bencoded body.
    pub fn send_extended(&mut self, ext_id: u8, body: &[u8]) -> std::io::Result<()> {
        let mut payload = vec![ext_id];
        payload.extend_from_slice(body);
        self.send(EXTENDED, &payload)
    }

    /// Reads until an extended message with `ext_id` arrives (other messages are dropped);
    /// returns its body, or how the wait ended.
    pub fn next_extended(&mut self, ext_id: u8, timeout: Duration) -> Result<Vec<u8>, End> {
        let deadline = Instant::now() + timeout;
        loop {
            let (id, payload) = self.read(deadline.saturating_duration_since(Instant::now()))?;
            if id == EXTENDED && payload.first() == Some(&ext_id) {
                return Ok(payload[1..].to_vec());
            }
        }
    }

    pub fn request(&mut self, index: u32, begin: u32, length: u32) -> std::io::Result<()> {
        self.send(REQUEST, &request_payload(index, begin, length))
    }

    /// The next message (id, payload), or how the stream ended. Keep-alives are skipped.
    pub fn read(&mut self, timeout: Duration) -> Result<(u8, Vec<u8>), End> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(End::Quiet);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut len = [0u8; 4];
            self.read_exact(&mut len)?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                continue;
            }
            let mut body = vec![0u8; len];
            self.read_exact(&mut body)?;
            return Ok((body[0], body[1..].to_vec()));
        }
    }

    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), End> {
        match self.stream.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(End::Quiet)
            }
            Err(_) => Err(End::Closed),
        }
    }

    /// Reads until `id` arrives; panics on anything else ending the wait. Returns the ids seen.
    pub fn wait_for(&mut self, id: u8) -> Vec<u8> {
        let mut seen = Vec::new();
        loop {
            match self.read(Duration::from_secs(20)) {
                Ok((got, _)) => {
                    seen.push(got);
                    if got == id {
                        return seen;
                    }
                }
                Err(end) => panic!("waiting for message {id}: {end:?} after {seen:?}"),
            }
        }
    }

    /// Reads until the connection closes (or `timeout`); returns the message ids seen and how
    /// it ended.
    pub fn drain(&mut self, timeout: Duration) -> (Vec<u8>, End) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            match self.read(deadline.saturating_duration_since(Instant::now())) {
                Ok((id, _)) => seen.push(id),
                Err(end) => return (seen, end),
            }
        }
    }

    /// Interested, then waits for the unchoke.
    pub fn get_unchoked(&mut self) {
        self.send(INTERESTED, &[]).unwrap();
        self.wait_for(UNCHOKE);
    }

    /// Reads (and drops) whatever comes until pow closes the connection; returns how long that
    /// took, or `None` if it was still open after `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            let left = (start + limit).saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Some(start.elapsed()),
            }
        }
    }

    /// Reads messages until a request arrives; returns its (index, begin, length).
    pub fn next_request(&mut self, timeout: Duration) -> (u32, u32, u32) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline.saturating_duration_since(Instant::now())) {
                Ok((REQUEST, p)) => return (word(&p, 0), word(&p, 4), word(&p, 8)),
                Ok(_) => {}
                Err(end) => panic!("waiting for a request: {end:?}"),
            }
        }
    }
}

/// A message as it goes on the wire: length prefix, id, payload.
pub fn frame(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = (1 + payload.len() as u32).to_be_bytes().to_vec();
    frame.push(id);
    frame.extend_from_slice(payload);
    frame
}

/// The big-endian u32 at `at`.
pub fn word(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(p[at..at + 4].try_into().unwrap())
}

/// Peak resident memory (VmHWM) of a running process, KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

pub fn request_payload(index: u32, begin: u32, length: u32) -> Vec<u8> {
    [index, begin, length]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

/// `-XX0001-` and 12 digits unique to this process and call: each hand-written peer is a
/// peer of its own (pow closes a second connection from a peer id it is connected to).
pub fn unique_peer_id() -> [u8; 20] {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = format!(
        "-XX0001-{:06}{:06}",
        std::process::id() % 1_000_000,
        n % 1_000_000
    );
    id.as_bytes().try_into().unwrap()
}

/// The 68-byte handshake.
pub fn handshake(reserved: [u8; 8], info_hash: [u8; 20], peer_id: [u8; 20]) -> Vec<u8> {
    let mut hs = vec![19u8];
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&reserved);
    hs.extend_from_slice(&info_hash);
    hs.extend_from_slice(&peer_id);
    hs
}

/// The next connection dialed to `listener` within `limit`, blocking, or `None`.
pub fn accept_within(listener: &TcpListener, limit: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return Some(stream);
            }
            // A dial that was reset before we took it, or a signal, is no verdict: wait on.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::ConnectionAborted | ErrorKind::Interrupted
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}
