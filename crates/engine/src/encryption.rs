//! Encrypted handshakes on peer connections ([`pow_mse`]): which connections get one, dialing
//! with one, and telling an encrypted handshake from a plaintext one on accept.
//!
//! After the handshake the stream is RC4 or plaintext, as the two ends agreed; a connection
//! keeps its [`Ciphers`] and the socket loop applies them to every byte read and written.

use crate::peer::PeerError;
use crate::transport::PeerStream;
use bytes::BytesMut;
use pow_mse::{Initiator, Methods, Rc4, Responder, MAX_PAD};
use rand::{Rng, RngCore};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Which connections use message stream encryption (MSE/PE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encryption {
    /// Plaintext only: encrypted handshakes are refused (as rqbit and aria2 without MSE).
    Off,
    /// Both accepted; we dial in plaintext and, when a peer closes the connection during the
    /// handshake (it requires encryption), once more encrypted. The payload stays plaintext
    /// whenever the peer allows it: the handshake is hidden at no cost per byte.
    #[default]
    Allow,
    /// We dial encrypted and pick RC4 for the whole stream whenever the peer allows it
    /// (Transmission's default); plaintext peers are dialed again in plaintext.
    Prefer,
    /// RC4 for the whole stream, both ways; plaintext handshakes are refused.
    Require,
}

impl Encryption {
    pub(crate) fn dials_encrypted_first(self) -> bool {
        matches!(self, Encryption::Prefer | Encryption::Require)
    }

    /// A dial the peer closed during the handshake is tried once the other way.
    pub(crate) fn redials(self) -> bool {
        matches!(self, Encryption::Allow | Encryption::Prefer)
    }

    fn accepts_plaintext(self) -> bool {
        self != Encryption::Require
    }

    fn methods(self) -> Methods {
        match self {
            Encryption::Off | Encryption::Allow => Methods::EITHER_PREFER_PLAINTEXT,
            Encryption::Prefer => Methods::EITHER_PREFER_RC4,
            Encryption::Require => Methods::RC4_ONLY,
        }
    }
}

/// A connection's stream ciphers after its handshake; both `None` for a plaintext stream.
#[derive(Debug, Default)]
pub(crate) struct Ciphers {
    pub send: Option<Rc4>,
    pub recv: Option<Rc4>,
    /// The handshake was an encrypted one (the stream may still be plaintext).
    pub encrypted_handshake: bool,
    /// The info-hash an encrypted handshake was keyed with (its SKEY): the BitTorrent
    /// handshake after it must name the same torrent.
    pub skey: Option<[u8; 20]>,
}

impl Ciphers {
    /// Encrypts `bytes` in place when the stream is RC4.
    pub fn seal(&mut self, bytes: &mut [u8]) {
        if let Some(send) = &mut self.send {
            send.apply(bytes);
        }
    }

    /// Decrypts the last `n` bytes of `buf` (just read) in place when the stream is RC4.
    pub fn open_tail(&mut self, buf: &mut [u8], n: usize) {
        if let Some(recv) = &mut self.recv {
            let len = buf.len();
            recv.apply(&mut buf[len - n..]);
        }
    }
}

/// The private key and padding of one handshake (160 random bits, 0-512 random bytes).
fn secret_and_pad() -> ([u8; 20], Vec<u8>) {
    let mut rng = rand::rng();
    let mut secret = [0u8; 20];
    rng.fill_bytes(&mut secret);
    let mut pad = vec![0u8; rng.random_range(0..=MAX_PAD)];
    rng.fill_bytes(&mut pad);
    (secret, pad)
}

/// Reads more of the handshake into `buf`, by `deadline`.
pub(crate) async fn read_more(
    stream: &mut PeerStream,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<usize, PeerError> {
    let n = tokio::time::timeout_at(deadline.into(), stream.read_buf(buf))
        .await
        .map_err(|_| PeerError::Timeout)??;
    if n == 0 {
        return Err(PeerError::Protocol(crate::peer::CLOSED_DURING_HANDSHAKE));
    }
    Ok(n)
}

/// The dialing end's encrypted handshake for `info_hash`, with `initial_payload` (our
/// BitTorrent handshake) inside it. What the peer sent past it is left in `buf`, decrypted.
pub(crate) async fn dial(
    stream: &mut PeerStream,
    buf: &mut BytesMut,
    info_hash: [u8; 20],
    policy: Encryption,
    initial_payload: Vec<u8>,
    deadline: Instant,
) -> Result<Ciphers, PeerError> {
    let (secret, pad) = secret_and_pad();
    let (mut initiator, first) =
        Initiator::new(info_hash, policy.methods(), secret, &pad, initial_payload);
    stream.write_all(&first).await?;
    loop {
        let progress = initiator.step(buf)?;
        if !progress.send.is_empty() {
            stream.write_all(&progress.send).await?;
        }
        if let Some(done) = progress.done {
            return Ok(Ciphers {
                send: done.send,
                recv: done.recv,
                encrypted_handshake: true,
                skey: Some(done.info_hash),
            });
        }
        read_more(stream, buf, deadline).await?;
    }
}

/// The accepting end: reads the connection's first bytes and, unless they are a plaintext
/// handshake, answers an encrypted one for any of `info_hashes` (asked for only then). Either
/// way `buf` then starts with the peer's BitTorrent handshake, or the part of it read so far.
pub(crate) async fn accept(
    stream: &mut PeerStream,
    buf: &mut BytesMut,
    info_hashes: impl FnOnce() -> Vec<[u8; 20]>,
    policy: Encryption,
    deadline: Instant,
) -> Result<Ciphers, PeerError> {
    let plaintext = loop {
        if let Some(plaintext) = pow_mse::is_plaintext_handshake(buf) {
            break plaintext;
        }
        read_more(stream, buf, deadline).await?;
    };
    if plaintext {
        if !policy.accepts_plaintext() {
            return Err(PeerError::Protocol(
                "plaintext handshake refused (encryption required)",
            ));
        }
        return Ok(Ciphers::default());
    }
    if policy == Encryption::Off {
        return Err(PeerError::Protocol(
            "not a BitTorrent handshake (encrypted handshakes are off)",
        ));
    }
    let (secret, pad) = secret_and_pad();
    let mut responder = Responder::new(info_hashes(), policy.methods(), secret, pad);
    loop {
        let progress = responder.step(buf)?;
        if !progress.send.is_empty() {
            stream.write_all(&progress.send).await?;
        }
        if let Some(done) = progress.done {
            let mut payload = BytesMut::from(&done.initial_payload[..]);
            payload.extend_from_slice(buf);
            *buf = payload;
            return Ok(Ciphers {
                send: done.send,
                recv: done.recv,
                encrypted_handshake: true,
                skey: Some(done.info_hash),
            });
        }
        read_more(stream, buf, deadline).await?;
    }
}
