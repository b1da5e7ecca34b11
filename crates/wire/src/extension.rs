//! The extension protocol (BEP 10) and metadata exchange (BEP 9) as codecs over the payload of
//! message id 20. The framing stays [`Message::Unknown`]`{ id: 20, .. }`; this module reads and
//! builds what is inside.
//!
//! Limits: an extended message is at most [`MAX_EXTENDED_LEN`] bytes (16 KiB of metadata plus
//! its dictionary); the handshake dictionary is parsed strictly except for key order and trailing
//! data, as real clients send both.

use crate::Message;
use bytes::{BufMut, Bytes, BytesMut};
use pow_bencode::{decode_prefix, dict, Options, Value};

/// Message id of every extended message.
pub const EXTENDED: u8 = 20;
/// Extended message id of the extension handshake.
pub const EXTENDED_HANDSHAKE: u8 = 0;
/// Metadata travels in pieces of this size (the last may be shorter).
pub const METADATA_PIECE_LEN: usize = 16 * 1024;
/// Longest extended message accepted (a metadata piece plus room for its header).
pub const MAX_EXTENDED_LEN: u32 = METADATA_PIECE_LEN as u32 + 1024;
/// The id we ask peers to use when they send us `ut_metadata` messages.
pub const OUR_UT_METADATA: u8 = 1;

/// Sets the reserved-bytes bit that says we speak BEP 10 (byte 5, `0x10`).
pub fn set_extension_bit(reserved: &mut [u8; 8]) {
    reserved[5] |= 0x10;
}

pub fn has_extension_bit(reserved: &[u8; 8]) -> bool {
    reserved[5] & 0x10 != 0
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    #[error("empty extended message")]
    Empty,
    #[error("extended message: {0}")]
    Bencode(String),
    #[error("extended message: {0}")]
    Invalid(&'static str),
}

/// The extension handshake dictionary (the fields pow uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// The id the sender wants for `ut_metadata` messages; `None` if it does not support them
    /// (absent, or 0, which means disabled).
    pub ut_metadata: Option<u8>,
    /// The id the sender wants for `ut_pex` messages (BEP 11); `None` if it does not take them.
    pub ut_pex: Option<u8>,
    /// Size of the info dictionary, when the sender has it.
    pub metadata_size: Option<u64>,
    /// `v`: client name and version.
    pub client: Option<String>,
    /// `reqq`: how many outstanding requests the sender accepts.
    pub reqq: Option<u32>,
    /// `yourip`: our address as the sender sees it (4 or 16 bytes).
    pub yourip: Option<Vec<u8>>,
    /// `p`: the sender's listening port.
    pub listen_port: Option<u16>,
    /// BEP 21 `upload_only`: the sender wants nothing more (a seed, or a partial seed that has
    /// every piece it selected). A peer may send its handshake again to change it.
    pub upload_only: bool,
}

impl ExtHandshake {
    pub fn to_message(&self) -> Message {
        let mut m = Vec::new();
        if let Some(id) = self.ut_metadata {
            m.push(("ut_metadata", Value::Int(i64::from(id))));
        }
        if let Some(id) = self.ut_pex {
            m.push(("ut_pex", Value::Int(i64::from(id))));
        }
        let mut entries = vec![("m", dict(m))];
        if let Some(size) = self.metadata_size {
            entries.push(("metadata_size", Value::Int(size as i64)));
        }
        if let Some(port) = self.listen_port {
            entries.push(("p", Value::Int(i64::from(port))));
        }
        if let Some(reqq) = self.reqq {
            entries.push(("reqq", Value::Int(i64::from(reqq))));
        }
        if let Some(v) = &self.client {
            entries.push(("v", Value::str(v)));
        }
        if let Some(ip) = &self.yourip {
            entries.push(("yourip", Value::Bytes(ip.clone())));
        }
        if self.upload_only {
            entries.push(("upload_only", Value::Int(1)));
        }
        extended(EXTENDED_HANDSHAKE, &dict(entries).encode(), &[])
    }

    /// Reads the dictionary after the extended id 0. Unknown keys are ignored; fields of the
    /// wrong type are treated as absent, as libtorrent does.
    pub fn decode(body: &[u8]) -> Result<ExtHandshake, ExtensionError> {
        let (root, _) =
            decode_prefix(body, lenient()).map_err(|e| ExtensionError::Bencode(e.to_string()))?;
        if root.as_dict().is_none() {
            return Err(ExtensionError::Invalid("handshake is not a dictionary"));
        }
        let int = |key: &str| root.get(key).and_then(|n| n.as_int());
        let message_id = |name: &str| {
            root.get("m")
                .and_then(|m| m.get(name))
                .and_then(|n| n.as_int())
                .and_then(|id| u8::try_from(id).ok())
                .filter(|&id| id != 0)
        };
        Ok(ExtHandshake {
            ut_metadata: message_id("ut_metadata"),
            ut_pex: message_id("ut_pex"),
            metadata_size: int("metadata_size").and_then(|n| u64::try_from(n).ok()),
            client: root.get("v").and_then(|n| n.as_str()).map(str::to_string),
            reqq: int("reqq").and_then(|n| u32::try_from(n).ok()),
            yourip: root
                .get("yourip")
                .and_then(|n| n.as_bytes())
                .filter(|b| b.len() == 4 || b.len() == 16)
                .map(<[u8]>::to_vec),
            listen_port: int("p").and_then(|n| u16::try_from(n).ok()),
            upload_only: int("upload_only").is_some_and(|n| n != 0),
        })
    }
}

pub(crate) fn lenient() -> Options {
    Options {
        allow_unsorted_keys: true,
        allow_trailing_data: true,
        ..Options::strict()
    }
}

/// A `ut_metadata` message (BEP 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataMessage {
    Request {
        piece: u32,
    },
    Data {
        piece: u32,
        total_size: u64,
        data: Bytes,
    },
    Reject {
        piece: u32,
    },
    /// A `msg_type` this side does not know: BEP 9 says to ignore it.
    Unknown {
        msg_type: i64,
    },
}

impl MetadataMessage {
    /// Framed for a peer that asked for `ut_metadata` messages as `their_id`.
    pub fn to_message(&self, their_id: u8) -> Message {
        let head = |kind: i64, piece: u32, total: Option<u64>| {
            let mut entries = vec![
                ("msg_type", Value::Int(kind)),
                ("piece", Value::Int(i64::from(piece))),
            ];
            if let Some(total) = total {
                entries.push(("total_size", Value::Int(total as i64)));
            }
            dict(entries).encode()
        };
        match self {
            MetadataMessage::Request { piece } => extended(their_id, &head(0, *piece, None), &[]),
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => extended(their_id, &head(1, *piece, Some(*total_size)), data),
            MetadataMessage::Reject { piece } => extended(their_id, &head(2, *piece, None), &[]),
            MetadataMessage::Unknown { msg_type } => extended(
                their_id,
                &dict(vec![("msg_type", Value::Int(*msg_type))]).encode(),
                &[],
            ),
        }
    }

    /// Reads the body after the extended id (a dictionary, then the data of a `Data`).
    pub fn decode(body: &Bytes) -> Result<MetadataMessage, ExtensionError> {
        let (root, end) =
            decode_prefix(body, lenient()).map_err(|e| ExtensionError::Bencode(e.to_string()))?;
        let int = |key: &str| root.get(key).and_then(|n| n.as_int());
        let msg_type =
            int("msg_type").ok_or(ExtensionError::Invalid("ut_metadata without a msg_type"))?;
        if !(0..=2).contains(&msg_type) {
            return Ok(MetadataMessage::Unknown { msg_type });
        }
        let piece = int("piece")
            .and_then(|p| u32::try_from(p).ok())
            .ok_or(ExtensionError::Invalid("ut_metadata without a valid piece"))?;
        match msg_type {
            0 => Ok(MetadataMessage::Request { piece }),
            1 => {
                let total_size = int("total_size")
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or(ExtensionError::Invalid(
                        "ut_metadata data without total_size",
                    ))?;
                Ok(MetadataMessage::Data {
                    piece,
                    total_size,
                    data: body.slice(end..),
                })
            }
            _ => Ok(MetadataMessage::Reject { piece }),
        }
    }
}

/// Splits an extended message's payload into its extended id and body.
pub fn split_extended(payload: &Bytes) -> Result<(u8, Bytes), ExtensionError> {
    match payload.first() {
        Some(&id) => Ok((id, payload.slice(1..))),
        None => Err(ExtensionError::Empty),
    }
}

pub(crate) fn extended(ext_id: u8, head: &[u8], data: &[u8]) -> Message {
    let mut payload = BytesMut::with_capacity(1 + head.len() + data.len());
    payload.put_u8(ext_id);
    payload.put_slice(head);
    payload.put_slice(data);
    Message::Unknown {
        id: EXTENDED,
        payload: payload.freeze(),
    }
}

/// Number of metadata pieces for an info dictionary of `size` bytes.
pub fn metadata_pieces(size: u64) -> u32 {
    size.div_ceil(METADATA_PIECE_LEN as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decoder;

    fn roundtrip(message: &Message) -> Bytes {
        let mut out = BytesMut::new();
        message.encode(&mut out);
        match Decoder::new(1)
            .with_max_len(MAX_EXTENDED_LEN)
            .decode(&mut out)
        {
            Ok(Some(Message::Unknown {
                id: EXTENDED,
                payload,
            })) => payload,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn handshake_round_trips_and_reads_what_libtorrent_sends() {
        let ours = ExtHandshake {
            ut_metadata: Some(OUR_UT_METADATA),
            ut_pex: Some(crate::pex::OUR_UT_PEX),
            metadata_size: Some(31_337),
            client: Some("pow 0.1.0".into()),
            reqq: Some(1024),
            yourip: Some(vec![127, 0, 0, 1]),
            listen_port: Some(6881),
            upload_only: true,
        };
        let payload = roundtrip(&ours.to_message());
        let (id, body) = split_extended(&payload).unwrap();
        assert_eq!(id, EXTENDED_HANDSHAKE);
        assert_eq!(ExtHandshake::decode(&body).unwrap(), ours);
        // libtorrent-style: unsorted keys, other extensions, ut_metadata disabled with 0.
        let theirs = b"d1:md11:lt_donthavei7e6:ut_pexi0e11:ut_metadatai3ee13:metadata_sizei100e1:v4:lt 24:reqqi500e11:upload_onlyi1ee";
        let hs = ExtHandshake::decode(theirs).unwrap();
        assert_eq!(
            (
                hs.ut_metadata,
                hs.ut_pex,
                hs.metadata_size,
                hs.reqq,
                hs.upload_only
            ),
            (Some(3), None, Some(100), Some(500), true)
        );
        assert!(
            !ExtHandshake::decode(b"d11:upload_onlyi0ee")
                .unwrap()
                .upload_only
        );
        let disabled = ExtHandshake::decode(b"d1:md11:ut_metadatai0eee").unwrap();
        assert_eq!(disabled.ut_metadata, None);
        assert!(ExtHandshake::decode(b"li1ee").is_err());
        assert!(ExtHandshake::decode(b"d1:m").is_err());
    }

    #[test]
    fn metadata_messages_round_trip() {
        let data = Bytes::from(vec![7u8; METADATA_PIECE_LEN]);
        for message in [
            MetadataMessage::Request { piece: 3 },
            MetadataMessage::Reject { piece: 3 },
            MetadataMessage::Data {
                piece: 2,
                total_size: 40_000,
                data: data.clone(),
            },
        ] {
            let payload = roundtrip(&message.to_message(5));
            let (id, body) = split_extended(&payload).unwrap();
            assert_eq!(id, 5);
            assert_eq!(MetadataMessage::decode(&body).unwrap(), message);
        }
        assert_eq!(
            MetadataMessage::decode(&Bytes::from_static(b"d8:msg_typei9e5:piecei0ee")).unwrap(),
            MetadataMessage::Unknown { msg_type: 9 },
            "BEP 9: an unknown msg_type is ignored, not an error"
        );
        assert!(MetadataMessage::decode(&Bytes::from_static(b"d8:msg_typei0ee")).is_err());
        assert!(MetadataMessage::decode(&Bytes::from_static(b"d5:piecei0ee")).is_err());
        assert_eq!(metadata_pieces(16_384), 1);
        assert_eq!(metadata_pieces(16_385), 2);
    }

    #[test]
    fn extension_bit() {
        let mut reserved = [0u8; 8];
        assert!(!has_extension_bit(&reserved));
        set_extension_bit(&mut reserved);
        assert!(has_extension_bit(&reserved));
        assert_eq!(reserved, [0, 0, 0, 0, 0, 0x10, 0, 0]);
    }
}
