//! The uTP packet: a 20-byte header, a chain of extensions (only selective ack is read), and
//! the payload. All fields big-endian (BEP 29).

/// Bytes of the fixed header.
pub const HEADER: usize = 20;
const VERSION: u8 = 1;
const EXT_SELECTIVE_ACK: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Data = 0,
    Fin = 1,
    State = 2,
    Reset = 3,
    Syn = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub conn_id: u16,
    pub timestamp: u32,
    pub timestamp_diff: u32,
    pub wnd: u32,
    pub seq: u16,
    pub ack: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub header: Header,
    /// The selective-ack bitmask, if the packet carries one: bit `i` (byte `i / 8`, least
    /// significant bit first) says packet `ack + 2 + i` was received.
    pub sack: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    Short,
    Version,
    Kind,
    Extension,
}

impl std::fmt::Display for PacketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PacketError::Short => "shorter than a uTP header",
            PacketError::Version => "not uTP version 1",
            PacketError::Kind => "unknown uTP packet type",
            PacketError::Extension => "uTP extension runs past the packet",
        })
    }
}

impl std::error::Error for PacketError {}

/// Whether a datagram looks like uTP at all (a DHT message starts with `d`, 0x64).
pub fn looks_like_utp(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER && datagram[0] & 0x0f == VERSION && datagram[0] >> 4 <= 4
}

pub fn decode(buf: &[u8]) -> Result<Packet<'_>, PacketError> {
    if buf.len() < HEADER {
        return Err(PacketError::Short);
    }
    if buf[0] & 0x0f != VERSION {
        return Err(PacketError::Version);
    }
    let kind = match buf[0] >> 4 {
        0 => Kind::Data,
        1 => Kind::Fin,
        2 => Kind::State,
        3 => Kind::Reset,
        4 => Kind::Syn,
        _ => return Err(PacketError::Kind),
    };
    let u16_at = |i: usize| u16::from_be_bytes([buf[i], buf[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let header = Header {
        kind,
        conn_id: u16_at(2),
        timestamp: u32_at(4),
        timestamp_diff: u32_at(8),
        wnd: u32_at(12),
        seq: u16_at(16),
        ack: u16_at(18),
    };
    let mut next = buf[1];
    let mut at = HEADER;
    let mut sack = None;
    while next != 0 {
        if at + 2 > buf.len() {
            return Err(PacketError::Extension);
        }
        let (kind, len) = (next, buf[at + 1] as usize);
        next = buf[at];
        let body = buf
            .get(at + 2..at + 2 + len)
            .ok_or(PacketError::Extension)?;
        if kind == EXT_SELECTIVE_ACK {
            sack = Some(body);
        }
        at += 2 + len;
    }
    Ok(Packet {
        header,
        sack,
        payload: &buf[at..],
    })
}

/// Appends the packet to `out`. A selective-ack mask must be a multiple of 4 bytes long.
pub fn encode(header: &Header, sack: Option<&[u8]>, payload: &[u8], out: &mut Vec<u8>) {
    out.push(((header.kind as u8) << 4) | VERSION);
    out.push(if sack.is_some() { EXT_SELECTIVE_ACK } else { 0 });
    out.extend_from_slice(&header.conn_id.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.timestamp_diff.to_be_bytes());
    out.extend_from_slice(&header.wnd.to_be_bytes());
    out.extend_from_slice(&header.seq.to_be_bytes());
    out.extend_from_slice(&header.ack.to_be_bytes());
    if let Some(mask) = sack {
        out.push(0);
        out.push(mask.len() as u8);
        out.extend_from_slice(mask);
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_syn_from_the_wire() {
        // type 4, version 1, no extension, conn id 0x1234, seq 1, ack 0.
        let mut raw = vec![0x41, 0, 0x12, 0x34];
        raw.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 1, 0, 0]);
        let p = decode(&raw).unwrap();
        assert_eq!(p.header.kind, Kind::Syn);
        assert_eq!(p.header.conn_id, 0x1234);
        assert_eq!(p.header.timestamp, 9);
        assert_eq!(p.header.wnd, 0x100000);
        assert_eq!((p.header.seq, p.header.ack), (1, 0));
        assert!(p.payload.is_empty() && p.sack.is_none());
        assert!(looks_like_utp(&raw));
        assert!(!looks_like_utp(
            b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe"
        ));
    }

    #[test]
    fn extensions_past_the_end_are_refused() {
        let mut raw = Vec::new();
        let h = Header {
            kind: Kind::State,
            conn_id: 1,
            timestamp: 0,
            timestamp_diff: 0,
            wnd: 0,
            seq: 0,
            ack: 0,
        };
        encode(&h, Some(&[1, 0, 0, 0]), b"", &mut raw);
        raw.truncate(raw.len() - 1);
        assert_eq!(decode(&raw), Err(PacketError::Extension));
        raw[0] = 0x51;
        assert_eq!(decode(&raw), Err(PacketError::Kind));
        raw[0] = 0x42;
        assert_eq!(decode(&raw), Err(PacketError::Version));
        assert_eq!(decode(&raw[..19]), Err(PacketError::Short));
    }

    proptest! {
        #[test]
        fn round_trip(kind in 0u8..5, conn_id: u16, timestamp: u32, timestamp_diff: u32, wnd: u32,
                      seq: u16, ack: u16, sack in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..4)),
                      payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let kind = [Kind::Data, Kind::Fin, Kind::State, Kind::Reset, Kind::Syn][kind as usize];
            let h = Header { kind, conn_id, timestamp, timestamp_diff, wnd, seq, ack };
            let mask = sack.map(|m| m.repeat(4));
            let mut raw = Vec::new();
            encode(&h, mask.as_deref(), &payload, &mut raw);
            let p = decode(&raw).unwrap();
            prop_assert_eq!(p.header, h);
            prop_assert_eq!(p.sack, mask.as_deref());
            prop_assert_eq!(p.payload, &payload[..]);
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(raw in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode(&raw);
        }
    }
}
