//! Peer exchange (BEP 11): the `ut_pex` extended message, which tells a peer which peers we
//! are connected to (`added`) and which we no longer are (`dropped`), as compact address lists
//! (6 bytes per IPv4 peer, 18 per IPv6 peer) with one flag byte per added peer.
//!
//! Decoding is as lenient as libtorrent's: a list whose length is not a whole number of entries
//! loses its tail, flags of the wrong length are ignored (the peers are kept, without flags),
//! entries with port 0 are skipped. How many peers to believe is the engine's call.

use crate::extension::{extended, lenient, ExtensionError};
use crate::Message;
use pow_bencode::{decode_prefix, dict, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The id we ask peers to use when they send us `ut_pex` messages.
pub const OUR_UT_PEX: u8 = 2;

/// Flag bits of an added peer (`added.f`).
pub mod flags {
    /// The peer prefers encrypted connections.
    pub const ENCRYPTION: u8 = 0x01;
    /// The peer is a seed (or upload-only).
    pub const SEED: u8 = 0x02;
    /// The peer speaks uTP.
    pub const UTP: u8 = 0x04;
    /// The peer supports the hole-punching extension.
    pub const HOLEPUNCH: u8 = 0x08;
    /// The sender connected out to this address, so it accepts connections.
    pub const REACHABLE: u8 = 0x10;
}

/// One `ut_pex` message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Peers the sender connected to since its last message, with their flag bits.
    pub added: Vec<(SocketAddr, u8)>,
    /// Peers the sender is no longer connected to.
    pub dropped: Vec<SocketAddr>,
}

impl PexMessage {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty()
    }

    /// Framed for a peer that asked for `ut_pex` messages as `their_id`. IPv4-mapped IPv6
    /// addresses (what a dual-stack socket reports for an IPv4 peer) go in the IPv4 lists.
    pub fn to_message(&self, their_id: u8) -> Message {
        let (mut added, mut added_f, mut added6, mut added6_f) = (vec![], vec![], vec![], vec![]);
        for &(addr, f) in &self.added {
            match compact(addr) {
                Compact::V4(bytes) => {
                    added.extend_from_slice(&bytes);
                    added_f.push(f);
                }
                Compact::V6(bytes) => {
                    added6.extend_from_slice(&bytes);
                    added6_f.push(f);
                }
            }
        }
        let (mut dropped, mut dropped6) = (vec![], vec![]);
        for &addr in &self.dropped {
            match compact(addr) {
                Compact::V4(bytes) => dropped.extend_from_slice(&bytes),
                Compact::V6(bytes) => dropped6.extend_from_slice(&bytes),
            }
        }
        // libtorrent reads `added` only next to an `added.f` of matching length: both always go.
        let mut entries = vec![
            ("added", Value::Bytes(added)),
            ("added.f", Value::Bytes(added_f)),
            ("dropped", Value::Bytes(dropped)),
        ];
        if !added6.is_empty() {
            entries.push(("added6", Value::Bytes(added6)));
            entries.push(("added6.f", Value::Bytes(added6_f)));
        }
        if !dropped6.is_empty() {
            entries.push(("dropped6", Value::Bytes(dropped6)));
        }
        extended(their_id, &dict(entries).encode(), &[])
    }

    /// Reads the dictionary after the extended id.
    pub fn decode(body: &[u8]) -> Result<PexMessage, ExtensionError> {
        let (root, _) =
            decode_prefix(body, lenient()).map_err(|e| ExtensionError::Bencode(e.to_string()))?;
        if root.as_dict().is_none() {
            return Err(ExtensionError::Invalid(
                "ut_pex message is not a dictionary",
            ));
        }
        let bytes = |key: &str| root.get(key).and_then(|n| n.as_bytes()).unwrap_or(&[]);
        let mut message = PexMessage::default();
        for (list, flag_list, width) in [("added", "added.f", 6), ("added6", "added6.f", 18)] {
            let addrs = peers(bytes(list), width);
            let flags = bytes(flag_list);
            let flags_fit = flags.len() == bytes(list).len() / width;
            for (i, addr) in addrs.into_iter().enumerate() {
                if let Some(addr) = addr {
                    let f = if flags_fit { flags[i] } else { 0 };
                    message.added.push((addr, f));
                }
            }
        }
        for (list, width) in [("dropped", 6), ("dropped6", 18)] {
            message
                .dropped
                .extend(peers(bytes(list), width).into_iter().flatten());
        }
        Ok(message)
    }
}

enum Compact {
    V4([u8; 6]),
    V6([u8; 18]),
}

fn compact(addr: SocketAddr) -> Compact {
    let port = addr.port().to_be_bytes();
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            let mut out = [0u8; 6];
            out[..4].copy_from_slice(&ip.octets());
            out[4..].copy_from_slice(&port);
            Compact::V4(out)
        }
        IpAddr::V6(ip) => {
            let mut out = [0u8; 18];
            out[..16].copy_from_slice(&ip.octets());
            out[16..].copy_from_slice(&port);
            Compact::V6(out)
        }
    }
}

/// The whole entries of a compact list, in order; `None` for an entry with port 0 (kept as a
/// slot so flags still line up).
fn peers(list: &[u8], width: usize) -> Vec<Option<SocketAddr>> {
    list.chunks_exact(width)
        .map(|entry| {
            let (ip, port) = entry.split_at(width - 2);
            let port = u16::from_be_bytes([port[0], port[1]]);
            let ip = match <[u8; 4]>::try_from(ip) {
                Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
                Err(_) => IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(ip).expect("18-byte entries"),
                )),
            };
            (port != 0).then_some(SocketAddr::new(ip, port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extension::{split_extended, EXTENDED};
    use crate::Decoder;
    use bytes::BytesMut;

    fn body_of(message: &Message) -> (u8, Vec<u8>) {
        let mut out = BytesMut::new();
        message.encode(&mut out);
        match Decoder::new(1)
            .with_max_len(crate::extension::MAX_EXTENDED_LEN)
            .decode(&mut out)
        {
            Ok(Some(Message::Unknown {
                id: EXTENDED,
                payload,
            })) => {
                let (id, body) = split_extended(&payload).unwrap();
                (id, body.to_vec())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_trips_both_families_and_maps_ipv4_in_ipv6_to_ipv4() {
        let v4: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.2]:51413".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:6882".parse().unwrap();
        let gone: SocketAddr = "192.168.1.9:1".parse().unwrap();
        let message = PexMessage {
            added: vec![(v4, flags::SEED), (mapped, flags::REACHABLE), (v6, 0)],
            dropped: vec![gone],
        };
        let (id, body) = body_of(&message.to_message(9));
        assert_eq!(id, 9);
        let back = PexMessage::decode(&body).unwrap();
        assert_eq!(
            back.added,
            vec![
                (v4, flags::SEED),
                ("10.0.0.2:51413".parse().unwrap(), flags::REACHABLE),
                (v6, 0)
            ]
        );
        assert_eq!(back.dropped, vec![gone]);
        // Keys in order, both `added` lists always present, as libtorrent reads them.
        assert!(body.starts_with(b"d5:added12:"), "{body:?}");
        assert_eq!(
            PexMessage::decode(&body_of(&PexMessage::default().to_message(1)).1).unwrap(),
            PexMessage::default()
        );
    }

    #[test]
    fn reads_what_libtorrent_sends_and_survives_ragged_lists() {
        // libtorrent's first message: empty dropped lists, one IPv4 peer flagged seed.
        let lt = b"d5:added6:\x7f\x00\x00\x01\xc7\xdb7:added.f1:\x027:dropped0:6:added60:8:added6.f0:8:dropped60:e";
        let m = PexMessage::decode(lt).unwrap();
        assert_eq!(m.added, vec![("127.0.0.1:51163".parse().unwrap(), 2)]);
        assert!(m.dropped.is_empty());
        // Seven bytes: one whole entry; flags of the wrong length are dropped, not the peers.
        let ragged = b"d5:added7:\x01\x02\x03\x04\x00\x50\xff7:added.f3:abce";
        let m = PexMessage::decode(ragged).unwrap();
        assert_eq!(m.added, vec![("1.2.3.4:80".parse().unwrap(), 0)]);
        // Port 0 is skipped, and the flags of the entries after it still line up.
        let zero =
            b"d5:added12:\x01\x01\x01\x01\x00\x00\x02\x02\x02\x02\x00\x017:added.f2:\x01\x02e";
        let m = PexMessage::decode(zero).unwrap();
        assert_eq!(m.added, vec![("2.2.2.2:1".parse().unwrap(), 2)]);
        // Wrong types are absent lists; not a dictionary, or not bencode, is an error.
        assert!(PexMessage::decode(b"d5:addedi3ee").unwrap().is_empty());
        assert!(PexMessage::decode(b"le").is_err());
        assert!(PexMessage::decode(b"d5:added").is_err());
    }
}
