//! The BitTorrent peer wire protocol (BEP 3) as a pure codec: bytes in, typed messages out,
//! and back. No sockets, no tokio, no clocks.
//!
//! - [`Handshake`]: the 68-byte opening, reserved bits kept and exposed.
//! - [`Decoder`]: takes a `BytesMut` read buffer that may hold partial or several messages and
//!   returns whole [`Message`]s. A `piece` payload is a `Bytes` slice of the read buffer, so
//!   block data is copied once (socket to buffer) before storage writes it out.
//! - [`Message::encode`] and [`piece_header`] for sending; a piece is sent as its 13-byte
//!   header followed by the block, so the block itself need not be copied into a frame.
//! - [`Bitfield`]: have-sets in wire order (piece 0 is the high bit of byte 0).
//! - [`extension`]: the BEP 10 handshake and BEP 9 metadata messages inside message id 20;
//!   [`pex`]: BEP 11 peer exchange, also inside it.
//!
//! Limits enforced while decoding (a peer that breaks them gets a typed error and should be
//! dropped): a message longer than 16 KiB + 13 bytes is refused unless it is a bitfield of
//! exactly `ceil(pieces / 8)` bytes; a request or cancel for more than 16 KiB is refused; a
//! bitfield with spare bits set is refused; messages of fixed size must have that size.

mod bitfield;
pub mod extension;
pub mod pex;

pub use bitfield::Bitfield;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
pub const HANDSHAKE_LEN: usize = 68;
/// Largest block a peer may request or send.
pub const MAX_BLOCK: u32 = 16 * 1024;
/// Largest message (length prefix value) other than a bitfield: a `piece` with a 16 KiB block
/// is 9 + 16384 bytes; 4 more bytes of slack as the limit is usually stated.
pub const MAX_MESSAGE_LEN: u32 = MAX_BLOCK + 13;

/// Message ids (BEP 3).
pub mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    /// Fast extension (BEP 6), only between peers that both set its reserved bit.
    pub const SUGGEST: u8 = 0x0D;
    pub const HAVE_ALL: u8 = 0x0E;
    pub const HAVE_NONE: u8 = 0x0F;
    pub const REJECT: u8 = 0x10;
    pub const ALLOWED_FAST: u8 = 0x11;
}

/// Sets the reserved-bytes bit of the fast extension (BEP 6: byte 7, `0x04`).
pub fn set_fast_bit(reserved: &mut [u8; 8]) {
    reserved[7] |= 0x04;
}

pub fn has_fast_bit(reserved: &[u8; 8]) -> bool {
    reserved[7] & 0x04 != 0
}

/// Sets the reserved-bytes bit that says we run a DHT node (BEP 5: byte 7, `0x01`); its UDP
/// port follows in a `port` message.
pub fn set_dht_bit(reserved: &mut [u8; 8]) {
    reserved[7] |= 0x01;
}

pub fn has_dht_bit(reserved: &[u8; 8]) -> bool {
    reserved[7] & 0x01 != 0
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("handshake does not start with the BitTorrent protocol string")]
    BadProtocol,
    #[error("message of {len} bytes is longer than the {limit}-byte limit")]
    TooLong { len: u32, limit: u32 },
    #[error("message id {id} with {len} bytes: wrong length for that message")]
    BadLength { id: u8, len: u32 },
    #[error("bitfield of {got} bytes, expected {expected} for {pieces} pieces")]
    BitfieldSize {
        got: usize,
        expected: usize,
        pieces: u32,
    },
    #[error("bitfield has spare bits set past piece {pieces}")]
    BitfieldSpareBits { pieces: u32 },
    #[error("request for {0} bytes; at most 16 KiB may be requested")]
    RequestTooLong(u32),
}

/// The 68-byte handshake: `19 "BitTorrent protocol" reserved[8] info_hash[20] peer_id[20]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

impl Handshake {
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20]) -> Handshake {
        Handshake {
            reserved: [0; 8],
            info_hash,
            peer_id,
        }
    }

    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = 19;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash);
        out[48..68].copy_from_slice(&self.peer_id);
        out
    }

    /// Takes a handshake off the front of `buf`; `Ok(None)` while fewer than 68 bytes are
    /// there. The protocol string is checked as soon as its bytes arrive.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Handshake>, WireError> {
        let have = buf.len().min(20);
        let mut expected = [0u8; 20];
        expected[0] = 19;
        expected[1..].copy_from_slice(PROTOCOL);
        if buf[..have] != expected[..have] {
            return Err(WireError::BadProtocol);
        }
        if buf.len() < HANDSHAKE_LEN {
            return Ok(None);
        }
        let raw = buf.split_to(HANDSHAKE_LEN);
        Ok(Some(Handshake {
            reserved: raw[20..28].try_into().expect("8 bytes"),
            info_hash: raw[28..48].try_into().expect("20 bytes"),
            peer_id: raw[48..68].try_into().expect("20 bytes"),
        }))
    }

    /// BEP 10 extension protocol bit.
    pub fn supports_extensions(&self) -> bool {
        self.reserved[5] & 0x10 != 0
    }
    /// BEP 6 fast extension bit.
    pub fn supports_fast(&self) -> bool {
        self.reserved[7] & 0x04 != 0
    }
    /// BEP 5 DHT bit.
    pub fn supports_dht(&self) -> bool {
        self.reserved[7] & 0x01 != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(Bitfield),
    Request(BlockRequest),
    Piece {
        index: u32,
        begin: u32,
        data: Bytes,
    },
    Cancel(BlockRequest),
    Port(u16),
    /// BEP 6: the sender suggests this piece.
    Suggest(u32),
    /// BEP 6: the sender has every piece (instead of a bitfield).
    HaveAll,
    /// BEP 6: the sender has no piece.
    HaveNone,
    /// BEP 6: the sender will not serve this request.
    Reject(BlockRequest),
    /// BEP 6: the sender serves this piece even while choking us.
    AllowedFast(u32),
    /// A message id this codec does not know, skipped by its length; the payload is kept so
    /// extensions can be layered on top without changing the framing.
    Unknown {
        id: u8,
        payload: Bytes,
    },
}

/// What `request` and `cancel` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRequest {
    pub index: u32,
    pub begin: u32,
    pub length: u32,
}

impl Message {
    /// Appends this message, framed, to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Message::KeepAlive => out.put_u32(0),
            Message::Choke => simple(out, id::CHOKE),
            Message::Unchoke => simple(out, id::UNCHOKE),
            Message::Interested => simple(out, id::INTERESTED),
            Message::NotInterested => simple(out, id::NOT_INTERESTED),
            Message::Have(index) => indexed(out, id::HAVE, *index),
            Message::Bitfield(bits) => {
                out.put_u32(1 + bits.as_bytes().len() as u32);
                out.put_u8(id::BITFIELD);
                out.put_slice(bits.as_bytes());
            }
            Message::Request(r) => block_request(out, id::REQUEST, r),
            Message::Cancel(r) => block_request(out, id::CANCEL, r),
            Message::Piece { index, begin, data } => {
                out.put_slice(&piece_header(*index, *begin, data.len() as u32));
                out.put_slice(data);
            }
            Message::Port(port) => {
                out.put_u32(3);
                out.put_u8(id::PORT);
                out.put_u16(*port);
            }
            Message::Suggest(index) => indexed(out, id::SUGGEST, *index),
            Message::HaveAll => simple(out, id::HAVE_ALL),
            Message::HaveNone => simple(out, id::HAVE_NONE),
            Message::Reject(r) => block_request(out, id::REJECT, r),
            Message::AllowedFast(index) => indexed(out, id::ALLOWED_FAST, *index),
            Message::Unknown { id, payload } => {
                out.put_u32(1 + payload.len() as u32);
                out.put_u8(*id);
                out.put_slice(payload);
            }
        }
    }
}

fn indexed(out: &mut BytesMut, id: u8, index: u32) {
    out.put_u32(5);
    out.put_u8(id);
    out.put_u32(index);
}

fn simple(out: &mut BytesMut, id: u8) {
    out.put_u32(1);
    out.put_u8(id);
}

fn block_request(out: &mut BytesMut, id: u8, r: &BlockRequest) {
    out.put_u32(13);
    out.put_u8(id);
    out.put_u32(r.index);
    out.put_u32(r.begin);
    out.put_u32(r.length);
}

/// The 13 bytes that precede a block of `block_len` bytes in a `piece` message.
pub fn piece_header(index: u32, begin: u32, block_len: u32) -> [u8; 13] {
    let mut h = [0u8; 13];
    h[0..4].copy_from_slice(&(9 + block_len).to_be_bytes());
    h[4] = id::PIECE;
    h[5..9].copy_from_slice(&index.to_be_bytes());
    h[9..13].copy_from_slice(&begin.to_be_bytes());
    h
}

/// Splits a stream of messages (after the handshake) into [`Message`]s.
#[derive(Debug, Clone)]
pub struct Decoder {
    piece_count: u32,
    max_len: u32,
}

impl Decoder {
    /// `piece_count` sizes the one message allowed past the length limit: the bitfield.
    pub fn new(piece_count: u32) -> Decoder {
        Decoder {
            piece_count,
            max_len: MAX_MESSAGE_LEN,
        }
    }

    /// Raises the length limit for non-bitfield messages (extension messages carrying 16 KiB
    /// of metadata plus a header need a little more than a piece).
    pub fn with_max_len(mut self, max_len: u32) -> Decoder {
        self.max_len = max_len.max(MAX_MESSAGE_LEN);
        self
    }

    /// Bytes the next message needs in all (prefix included), once its prefix has arrived:
    /// lets a reader size its next read. `None` until 4 bytes are buffered.
    pub fn next_frame_len(&self, buf: &[u8]) -> Option<usize> {
        let prefix: [u8; 4] = buf.get(..4)?.try_into().ok()?;
        Some(4 + u32::from_be_bytes(prefix) as usize)
    }

    /// Takes one whole message off the front of `buf`, or returns `Ok(None)` if the buffer does
    /// not hold one yet (nothing is consumed then). Errors are final for the connection.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Message>, WireError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
        if len == 0 {
            buf.advance(4);
            return Ok(Some(Message::KeepAlive));
        }
        let bitfield_len = self.piece_count.div_ceil(8) + 1;
        if len > self.max_len {
            let too_long = WireError::TooLong {
                len,
                limit: self.max_len,
            };
            // Only a bitfield of exactly the right size may be longer. Any other length is
            // refused on its prefix alone: a peer that sends `ff ff ff ff` and then nothing
            // must not be waited for.
            if len != bitfield_len {
                return Err(too_long);
            }
            if buf.len() < 5 {
                return Ok(None);
            }
            if buf[4] != id::BITFIELD {
                return Err(too_long);
            }
        }
        let total = 4 + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total).freeze();
        frame.advance(4);
        let msg_id = frame.get_u8();
        let payload = frame;
        let fixed = |want: usize| {
            if payload.len() == want {
                Ok(())
            } else {
                Err(WireError::BadLength { id: msg_id, len })
            }
        };
        let message = match msg_id {
            id::CHOKE => fixed(0).map(|()| Message::Choke)?,
            id::UNCHOKE => fixed(0).map(|()| Message::Unchoke)?,
            id::INTERESTED => fixed(0).map(|()| Message::Interested)?,
            id::NOT_INTERESTED => fixed(0).map(|()| Message::NotInterested)?,
            id::HAVE | id::SUGGEST | id::ALLOWED_FAST => {
                fixed(4)?;
                let index = u32::from_be_bytes(payload[..4].try_into().expect("4"));
                match msg_id {
                    id::HAVE => Message::Have(index),
                    id::SUGGEST => Message::Suggest(index),
                    _ => Message::AllowedFast(index),
                }
            }
            id::HAVE_ALL => fixed(0).map(|()| Message::HaveAll)?,
            id::HAVE_NONE => fixed(0).map(|()| Message::HaveNone)?,
            id::BITFIELD => Message::Bitfield(Bitfield::from_wire(&payload, self.piece_count)?),
            id::REQUEST | id::CANCEL | id::REJECT => {
                fixed(12)?;
                let r = read_request(&payload);
                if r.length > MAX_BLOCK {
                    return Err(WireError::RequestTooLong(r.length));
                }
                match msg_id {
                    id::REQUEST => Message::Request(r),
                    id::CANCEL => Message::Cancel(r),
                    _ => Message::Reject(r),
                }
            }
            id::PIECE => {
                if payload.len() < 8 {
                    return Err(WireError::BadLength { id: msg_id, len });
                }
                let mut header = payload.slice(..8);
                let index = header.get_u32();
                let begin = header.get_u32();
                Message::Piece {
                    index,
                    begin,
                    data: payload.slice(8..),
                }
            }
            id::PORT => {
                fixed(2)?;
                Message::Port(u16::from_be_bytes([payload[0], payload[1]]))
            }
            other => Message::Unknown { id: other, payload },
        };
        Ok(Some(message))
    }
}

fn read_request(payload: &[u8]) -> BlockRequest {
    let word = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().expect("4 bytes"));
    BlockRequest {
        index: word(0),
        begin: word(4),
        length: word(8),
    }
}
