//! Message stream encryption (MSE, also "protocol encryption"), as libtorrent, Transmission,
//! aria2 and Vuze speak it: a Diffie-Hellman exchange that hides the BitTorrent handshake, after
//! which the stream is either RC4 or plaintext, as the two ends agree. Peers that require
//! encryption refuse a plaintext handshake; many that prefer it try this first.
//!
//! Sans I/O, like the wire codec: [`Initiator`] (the end that dialed) and [`Responder`] (the end
//! that accepted) take the bytes read so far in a `BytesMut`, consume what they understand and
//! say what to send; randomness (the private key, the padding) comes from the caller.
//!
//! The exchange, A dialing B (S = the DH secret, SKEY = the info-hash):
//! 1. A: Ya, PadA. 2. B: Yb, PadB (each pad 0-512 random bytes).
//! 3. A: SHA1("req1" S), SHA1("req2" SKEY) xor SHA1("req3" S),
//!    RC4(VC, crypto_provide, len(PadC), PadC, len(IA), IA), IA being A's first payload (its
//!    BitTorrent handshake).
//! 4. B: RC4(VC, crypto_select, len(PadD), PadD), then the payload stream.
//!
//! RC4 keys are SHA1("keyA" S SKEY) for what A sends and SHA1("keyB" S SKEY) for what B sends,
//! each with its first 1024 bytes of keystream thrown away. B finds step 3 by searching for
//! SHA1("req1" S) after Ya, and which torrent A wants by trying the info-hashes it serves; A
//! finds step 4 by searching for the 8 bytes that VC (all zero) encrypts to.
//!
//! Limits: the pads are at most 512 bytes, so a peer that has not synchronised within 512 bytes
//! of where the pad began gets [`MseError::NoSync`]; IA is at most [`MAX_INITIAL_PAYLOAD`].

use bytes::{Buf, BytesMut};
use num_bigint::BigUint;
use sha1::{Digest, Sha1};
use std::sync::OnceLock;

/// Length of a public key and of the shared secret: 768 bits, big-endian.
pub const KEY_LEN: usize = 96;
/// Longest PadA, PadB, PadC or PadD.
pub const MAX_PAD: usize = 512;
/// Longest initial payload accepted: a BitTorrent handshake is 68 bytes; libtorrent sends it
/// alone. Room for a few more messages, no room for a flood.
pub const MAX_INITIAL_PAYLOAD: usize = 16 * 1024;
/// Bytes of keystream discarded before use (RC4's first bytes leak the key).
const RC4_DISCARD: usize = 1024;
/// The verification constant.
const VC: [u8; 8] = [0; 8];

/// The 768-bit prime of the exchange (the Oakley group 1 prime); the generator is 2.
const PRIME_HEX: &[u8] = b"FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";

fn prime() -> &'static BigUint {
    static PRIME: OnceLock<BigUint> = OnceLock::new();
    PRIME.get_or_init(|| BigUint::parse_bytes(PRIME_HEX, 16).expect("the MSE prime"))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MseError {
    #[error("encrypted handshake: the peer's public key is not a valid one")]
    BadPublicKey,
    #[error("encrypted handshake: no synchronisation within {MAX_PAD} bytes of padding")]
    NoSync,
    #[error("encrypted handshake: for a torrent we do not serve")]
    UnknownTorrent,
    #[error("encrypted handshake: wrong verification constant")]
    BadVerification,
    #[error("encrypted handshake: padding of {0} bytes (at most {MAX_PAD})")]
    PadTooLong(usize),
    #[error("encrypted handshake: initial payload of {0} bytes (at most {MAX_INITIAL_PAYLOAD})")]
    InitialPayloadTooLong(usize),
    #[error(
        "encrypted handshake: no method both ends allow (offered {offered:#x}, ours {ours:#x})"
    )]
    NoCommonMethod { offered: u32, ours: u32 },
    #[error("encrypted handshake: the peer selected {0:#x}, which we did not offer")]
    BadSelect(u32),
}

/// What the stream is after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Plaintext,
    Rc4,
}

impl Method {
    fn bit(self) -> u32 {
        match self {
            Method::Plaintext => 0x01,
            Method::Rc4 => 0x02,
        }
    }
}

/// The methods one end accepts, and which it picks when answering a peer that offers both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Methods {
    pub plaintext: bool,
    pub rc4: bool,
    pub prefer_rc4: bool,
}

impl Methods {
    /// Both, plaintext picked when the peer offers both: the handshake is hidden, the payload
    /// costs nothing extra (libtorrent's default).
    pub const EITHER_PREFER_PLAINTEXT: Methods = Methods {
        plaintext: true,
        rc4: true,
        prefer_rc4: false,
    };
    /// Both, RC4 picked when the peer offers both (Transmission's "preferred").
    pub const EITHER_PREFER_RC4: Methods = Methods {
        plaintext: true,
        rc4: true,
        prefer_rc4: true,
    };
    /// RC4 only: the whole stream is encrypted or there is no connection.
    pub const RC4_ONLY: Methods = Methods {
        plaintext: false,
        rc4: true,
        prefer_rc4: true,
    };

    fn bits(self) -> u32 {
        (if self.plaintext { 0x01 } else { 0 }) | (if self.rc4 { 0x02 } else { 0 })
    }

    /// The responder's choice among the methods the initiator `offered`.
    fn select(self, offered: u32) -> Result<Method, MseError> {
        let common = offered & self.bits();
        let rc4 = common & 0x02 != 0;
        let plaintext = common & 0x01 != 0;
        match (plaintext, rc4) {
            (true, true) if self.prefer_rc4 => Ok(Method::Rc4),
            (true, _) => Ok(Method::Plaintext),
            (false, true) => Ok(Method::Rc4),
            (false, false) => Err(MseError::NoCommonMethod {
                offered,
                ours: self.bits(),
            }),
        }
    }
}

/// The RC4 stream cipher: encrypting and decrypting are the same XOR with its keystream.
#[derive(Clone)]
pub struct Rc4 {
    state: [u8; 256],
    i: u8,
    j: u8,
}

impl Rc4 {
    pub fn new(key: &[u8]) -> Rc4 {
        let mut state = [0u8; 256];
        for (k, slot) in state.iter_mut().enumerate() {
            *slot = k as u8;
        }
        let mut j = 0u8;
        for k in 0..256 {
            j = j.wrapping_add(state[k]).wrapping_add(key[k % key.len()]);
            state.swap(k, j as usize);
        }
        Rc4 { state, i: 0, j: 0 }
    }

    /// XORs `data` with the next `data.len()` bytes of keystream.
    pub fn apply(&mut self, data: &mut [u8]) {
        let (mut i, mut j) = (self.i, self.j);
        let s = &mut self.state;
        for byte in data {
            i = i.wrapping_add(1);
            j = j.wrapping_add(s[i as usize]);
            s.swap(i as usize, j as usize);
            *byte ^= s[s[i as usize].wrapping_add(s[j as usize]) as usize];
        }
        self.i = i;
        self.j = j;
    }

    /// The cipher as MSE keys it: SHA1(`label` S SKEY), its first 1024 bytes thrown away.
    fn keyed(label: &[u8], secret: &[u8; KEY_LEN], skey: &[u8; 20]) -> Rc4 {
        let mut rc4 = Rc4::new(&hash(&[label, secret, skey]));
        rc4.apply(&mut [0u8; RC4_DISCARD]);
        rc4
    }
}

impl std::fmt::Debug for Rc4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rc4(..)")
    }
}

fn hash(parts: &[&[u8]]) -> [u8; 20] {
    let mut sha = Sha1::new();
    for part in parts {
        sha.update(part);
    }
    sha.finalize().into()
}

/// One end's Diffie-Hellman key pair.
struct KeyPair {
    private: BigUint,
    public: [u8; KEY_LEN],
}

impl KeyPair {
    /// `secret`: 160 random bits, as the specification asks.
    fn new(secret: [u8; 20]) -> KeyPair {
        let private = BigUint::from_bytes_be(&secret);
        let public = BigUint::from(2u8).modpow(&private, prime());
        KeyPair {
            private,
            public: to_key_bytes(&public),
        }
    }

    fn shared_secret(&self, theirs: &[u8]) -> Result<[u8; KEY_LEN], MseError> {
        let y = BigUint::from_bytes_be(theirs);
        // 0, 1 and P-1 (and anything past P) would make the secret guessable.
        let one = BigUint::from(1u8);
        if y <= one || y >= prime() - &one {
            return Err(MseError::BadPublicKey);
        }
        Ok(to_key_bytes(&y.modpow(&self.private, prime())))
    }
}

fn to_key_bytes(n: &BigUint) -> [u8; KEY_LEN] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    out[KEY_LEN - bytes.len()..].copy_from_slice(&bytes);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The outcome of a finished handshake.
#[derive(Debug)]
pub struct Established {
    /// The torrent the initiator asked for (the initiator's own, on its side).
    pub info_hash: [u8; 20],
    pub method: Method,
    /// The cipher for what we send from now on; `None` when the method is plaintext.
    pub send: Option<Rc4>,
    /// The cipher for what we read from now on; `None` when the method is plaintext. What was
    /// already read past the handshake is decrypted in place before the handshake returns.
    pub recv: Option<Rc4>,
    /// The initiator's initial payload, decrypted (on the responder's side; empty on the other).
    pub initial_payload: Vec<u8>,
}

/// What a step of the handshake asks of the caller.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes to send to the peer now (may be empty).
    pub send: Vec<u8>,
    /// The handshake is over; what is left in the input buffer is payload, already decrypted.
    pub done: Option<Established>,
}

/// The end that dialed.
pub struct Initiator {
    keys: KeyPair,
    info_hash: [u8; 20],
    offer: Methods,
    initial_payload: Vec<u8>,
    state: InitiatorState,
}

enum InitiatorState {
    AwaitPublicKey,
    /// Looking for the encrypted VC; `mark` is what it encrypts to.
    AwaitSync {
        send: Rc4,
        recv: Rc4,
        mark: [u8; 8],
    },
    AwaitSelect {
        send: Rc4,
        recv: Rc4,
    },
    AwaitPadD {
        send: Rc4,
        recv: Rc4,
        method: Method,
        len: usize,
    },
    Done,
}

impl Initiator {
    /// Starts a handshake for `info_hash` offering `offer`, with `initial_payload` (our
    /// BitTorrent handshake, usually) sent inside it. Returns the first bytes to send (Ya and
    /// `pad_a`, at most [`MAX_PAD`] bytes).
    pub fn new(
        info_hash: [u8; 20],
        offer: Methods,
        secret: [u8; 20],
        pad_a: &[u8],
        initial_payload: Vec<u8>,
    ) -> (Initiator, Vec<u8>) {
        assert!(pad_a.len() <= MAX_PAD && initial_payload.len() <= MAX_INITIAL_PAYLOAD);
        let keys = KeyPair::new(secret);
        let mut first = keys.public.to_vec();
        first.extend_from_slice(pad_a);
        let initiator = Initiator {
            keys,
            info_hash,
            offer,
            initial_payload,
            state: InitiatorState::AwaitPublicKey,
        };
        (initiator, first)
    }

    /// Takes what was read so far from `input`; call again with more bytes until `done`.
    pub fn step(&mut self, input: &mut BytesMut) -> Result<Progress, MseError> {
        let mut progress = Progress::default();
        loop {
            let state = std::mem::replace(&mut self.state, InitiatorState::Done);
            let (next, more) = match state {
                InitiatorState::AwaitPublicKey if input.len() >= KEY_LEN => {
                    let secret = self.keys.shared_secret(&input[..KEY_LEN])?;
                    input.advance(KEY_LEN);
                    let mut send = Rc4::keyed(b"keyA", &secret, &self.info_hash);
                    let recv = Rc4::keyed(b"keyB", &secret, &self.info_hash);
                    let mut mark = VC;
                    recv.clone().apply(&mut mark);
                    progress.send = self.step_three(&secret, &mut send);
                    (InitiatorState::AwaitSync { send, recv, mark }, true)
                }
                InitiatorState::AwaitSync {
                    send,
                    mut recv,
                    mark,
                } => match find(&input[..input.len().min(MAX_PAD + 8)], &mark) {
                    Some(at) => {
                        input.advance(at);
                        recv.apply(&mut input[..8]);
                        input.advance(8);
                        (InitiatorState::AwaitSelect { send, recv }, true)
                    }
                    None if input.len() >= MAX_PAD + 8 => return Err(MseError::NoSync),
                    None => (InitiatorState::AwaitSync { send, recv, mark }, false),
                },
                InitiatorState::AwaitSelect { send, mut recv } if input.len() >= 6 => {
                    recv.apply(&mut input[..6]);
                    let select = u32::from_be_bytes(input[..4].try_into().expect("4 bytes"));
                    let len = u16::from_be_bytes([input[4], input[5]]) as usize;
                    input.advance(6);
                    let method = match select {
                        0x01 => Method::Plaintext,
                        0x02 => Method::Rc4,
                        other => return Err(MseError::BadSelect(other)),
                    };
                    if method.bit() & self.offer.bits() == 0 {
                        return Err(MseError::BadSelect(select));
                    }
                    if len > MAX_PAD {
                        return Err(MseError::PadTooLong(len));
                    }
                    let next = InitiatorState::AwaitPadD {
                        send,
                        recv,
                        method,
                        len,
                    };
                    (next, true)
                }
                InitiatorState::AwaitPadD {
                    send,
                    mut recv,
                    method,
                    len,
                } if input.len() >= len => {
                    recv.apply(&mut input[..len]);
                    input.advance(len);
                    progress.done = Some(finish(self.info_hash, method, send, recv, input));
                    (InitiatorState::Done, false)
                }
                waiting => (waiting, false),
            };
            self.state = next;
            if !more {
                return Ok(progress);
            }
        }
    }

    fn step_three(&mut self, secret: &[u8; KEY_LEN], send: &mut Rc4) -> Vec<u8> {
        let mut out = hash(&[b"req1", secret]).to_vec();
        let req2 = hash(&[b"req2", &self.info_hash]);
        let req3 = hash(&[b"req3", secret]);
        out.extend(req2.iter().zip(req3).map(|(a, b)| a ^ b));
        let start = out.len();
        out.extend_from_slice(&VC);
        out.extend_from_slice(&self.offer.bits().to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes()); // no PadC
        out.extend_from_slice(&(self.initial_payload.len() as u16).to_be_bytes());
        out.append(&mut self.initial_payload);
        send.apply(&mut out[start..]);
        out
    }
}

/// The ciphers kept for an RC4 stream, dropped for a plaintext one; what is left in `input`
/// is decrypted for the caller.
fn finish(
    info_hash: [u8; 20],
    method: Method,
    send: Rc4,
    mut recv: Rc4,
    input: &mut BytesMut,
) -> Established {
    let (send, recv) = match method {
        Method::Plaintext => (None, None),
        Method::Rc4 => {
            recv.apply(input);
            (Some(send), Some(recv))
        }
    };
    Established {
        info_hash,
        method,
        send,
        recv,
        initial_payload: Vec::new(),
    }
}

/// The end that accepted.
pub struct Responder {
    keys: KeyPair,
    pad_b: Vec<u8>,
    info_hashes: Vec<[u8; 20]>,
    accept: Methods,
    state: ResponderState,
}

enum ResponderState {
    AwaitPublicKey,
    AwaitSync {
        secret: Box<[u8; KEY_LEN]>,
        mark: [u8; 20],
    },
    AwaitTorrent {
        secret: Box<[u8; KEY_LEN]>,
    },
    AwaitProvide {
        torrent: Stream,
    },
    AwaitPadC {
        torrent: Stream,
        offered: u32,
        len: usize,
    },
    AwaitPayload {
        torrent: Stream,
        offered: u32,
        len: usize,
    },
    Done,
}

/// A torrent identified, and the ciphers keyed for it.
struct Stream {
    info_hash: [u8; 20],
    send: Rc4,
    recv: Rc4,
}

impl Responder {
    /// Answers a peer that wants one of `info_hashes`, accepting `accept`. `secret`: 160
    /// random bits; `pad_b`: at most [`MAX_PAD`] random bytes.
    pub fn new(
        info_hashes: Vec<[u8; 20]>,
        accept: Methods,
        secret: [u8; 20],
        pad_b: Vec<u8>,
    ) -> Responder {
        assert!(pad_b.len() <= MAX_PAD);
        Responder {
            keys: KeyPair::new(secret),
            pad_b,
            info_hashes,
            accept,
            state: ResponderState::AwaitPublicKey,
        }
    }

    /// Takes what was read so far from `input` (from the connection's first byte); call
    /// again with more bytes until `done`.
    pub fn step(&mut self, input: &mut BytesMut) -> Result<Progress, MseError> {
        let mut progress = Progress::default();
        loop {
            let state = std::mem::replace(&mut self.state, ResponderState::Done);
            let (next, more) = match state {
                ResponderState::AwaitPublicKey if input.len() >= KEY_LEN => {
                    let secret = Box::new(self.keys.shared_secret(&input[..KEY_LEN])?);
                    input.advance(KEY_LEN);
                    progress.send = self.keys.public.to_vec();
                    progress.send.append(&mut self.pad_b);
                    let mark = hash(&[b"req1", &secret[..]]);
                    (ResponderState::AwaitSync { secret, mark }, true)
                }
                ResponderState::AwaitSync { secret, mark } => {
                    match find(&input[..input.len().min(MAX_PAD + 20)], &mark) {
                        Some(at) => {
                            input.advance(at + 20);
                            (ResponderState::AwaitTorrent { secret }, true)
                        }
                        None if input.len() >= MAX_PAD + 20 => return Err(MseError::NoSync),
                        None => (ResponderState::AwaitSync { secret, mark }, false),
                    }
                }
                ResponderState::AwaitTorrent { secret } if input.len() >= 20 => {
                    let req3 = hash(&[b"req3", &secret[..]]);
                    let mut req2 = [0u8; 20];
                    for (k, byte) in req2.iter_mut().enumerate() {
                        *byte = input[k] ^ req3[k];
                    }
                    input.advance(20);
                    let info_hash = *self
                        .info_hashes
                        .iter()
                        .find(|ih| hash(&[b"req2", &ih[..]]) == req2)
                        .ok_or(MseError::UnknownTorrent)?;
                    let torrent = Stream {
                        info_hash,
                        send: Rc4::keyed(b"keyB", &secret, &info_hash),
                        recv: Rc4::keyed(b"keyA", &secret, &info_hash),
                    };
                    (ResponderState::AwaitProvide { torrent }, true)
                }
                ResponderState::AwaitProvide { mut torrent } if input.len() >= 14 => {
                    torrent.recv.apply(&mut input[..14]);
                    if input[..8] != VC {
                        return Err(MseError::BadVerification);
                    }
                    let offered = u32::from_be_bytes(input[8..12].try_into().expect("4 bytes"));
                    let len = u16::from_be_bytes([input[12], input[13]]) as usize;
                    input.advance(14);
                    if len > MAX_PAD {
                        return Err(MseError::PadTooLong(len));
                    }
                    let next = ResponderState::AwaitPadC {
                        torrent,
                        offered,
                        len,
                    };
                    (next, true)
                }
                ResponderState::AwaitPadC {
                    mut torrent,
                    offered,
                    len,
                } if input.len() >= len + 2 => {
                    torrent.recv.apply(&mut input[..len + 2]);
                    let payload = u16::from_be_bytes([input[len], input[len + 1]]) as usize;
                    input.advance(len + 2);
                    if payload > MAX_INITIAL_PAYLOAD {
                        return Err(MseError::InitialPayloadTooLong(payload));
                    }
                    let next = ResponderState::AwaitPayload {
                        torrent,
                        offered,
                        len: payload,
                    };
                    (next, true)
                }
                ResponderState::AwaitPayload {
                    mut torrent,
                    offered,
                    len,
                } if input.len() >= len => {
                    let method = self.accept.select(offered)?;
                    torrent.recv.apply(&mut input[..len]);
                    let initial_payload = input.split_to(len).to_vec();
                    let mut answer = VC.to_vec();
                    answer.extend_from_slice(&method.bit().to_be_bytes());
                    answer.extend_from_slice(&0u16.to_be_bytes()); // no PadD
                    torrent.send.apply(&mut answer);
                    progress.send.extend_from_slice(&answer);
                    let mut done =
                        finish(torrent.info_hash, method, torrent.send, torrent.recv, input);
                    done.initial_payload = initial_payload;
                    progress.done = Some(done);
                    (ResponderState::Done, false)
                }
                waiting => (waiting, false),
            };
            self.state = next;
            if !more {
                return Ok(progress);
            }
        }
    }
}

/// Whether a connection's first bytes are a plaintext BitTorrent handshake (`Some(true)`), an
/// encrypted one (`Some(false)`), or too few to tell (`None`).
pub fn is_plaintext_handshake(first: &[u8]) -> Option<bool> {
    const START: &[u8; 20] = b"\x13BitTorrent protocol";
    let n = first.len().min(START.len());
    if first[..n] != START[..n] {
        Some(false)
    } else if n == START.len() {
        Some(true)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
