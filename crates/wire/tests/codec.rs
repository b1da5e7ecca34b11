//! Every message encodes and decodes; limits are enforced; arbitrary chunkings of a stream give
//! the same messages; arbitrary bytes never panic.

use bytes::{Bytes, BytesMut};
use pow_wire::*;
use proptest::prelude::*;

const PIECES: u32 = 1000;

fn decode_all(decoder: &Decoder, bytes: &[u8]) -> Result<Vec<Message>, WireError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(m) = decoder.decode(&mut buf)? {
        out.push(m);
    }
    assert!(buf.is_empty(), "left over: {buf:?}");
    Ok(out)
}

fn one(message: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    message.encode(&mut out);
    out.to_vec()
}

#[test]
fn every_message_has_its_wire_form() {
    let req = BlockRequest {
        index: 1,
        begin: 16384,
        length: 16384,
    };
    let mut bits = Bitfield::new(PIECES);
    bits.set(0);
    bits.set(999);
    let cases: Vec<(Message, Vec<u8>)> = vec![
        (Message::KeepAlive, vec![0, 0, 0, 0]),
        (Message::Choke, vec![0, 0, 0, 1, 0]),
        (Message::Unchoke, vec![0, 0, 0, 1, 1]),
        (Message::Interested, vec![0, 0, 0, 1, 2]),
        (Message::NotInterested, vec![0, 0, 0, 1, 3]),
        (Message::Have(258), vec![0, 0, 0, 5, 4, 0, 0, 1, 2]),
        (
            Message::Request(req),
            vec![0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
        ),
        (
            Message::Cancel(req),
            vec![0, 0, 0, 13, 8, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
        ),
        (
            Message::Piece {
                index: 2,
                begin: 0,
                data: Bytes::from_static(b"abc"),
            },
            vec![0, 0, 0, 12, 7, 0, 0, 0, 2, 0, 0, 0, 0, b'a', b'b', b'c'],
        ),
        (Message::Port(6881), vec![0, 0, 0, 3, 9, 0x1a, 0xe1]),
        // BEP 6's byte layouts.
        (Message::HaveAll, vec![0, 0, 0, 1, 0x0E]),
        (Message::HaveNone, vec![0, 0, 0, 1, 0x0F]),
        (Message::Suggest(5), vec![0, 0, 0, 5, 0x0D, 0, 0, 0, 5]),
        (Message::AllowedFast(6), vec![0, 0, 0, 5, 0x11, 0, 0, 0, 6]),
        (
            Message::Reject(BlockRequest {
                index: 1,
                begin: 16384,
                length: 16384,
            }),
            vec![0, 0, 0, 13, 0x10, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
        ),
        (
            Message::Unknown {
                id: 20,
                payload: Bytes::from_static(b"\0de"),
            },
            vec![0, 0, 0, 4, 20, 0, b'd', b'e'],
        ),
    ];
    let decoder = Decoder::new(PIECES);
    for (message, wire) in cases {
        assert_eq!(one(&message), wire, "{message:?}");
        assert_eq!(decode_all(&decoder, &wire).unwrap(), vec![message]);
    }
    let wire = one(&Message::Bitfield(bits.clone()));
    assert_eq!(wire.len(), 4 + 1 + 125);
    assert_eq!(wire[5], 0x80);
    assert_eq!(wire[129], 0x01); // piece 999 is the last bit of byte 124
    assert_eq!(
        decode_all(&decoder, &wire).unwrap(),
        vec![Message::Bitfield(bits)]
    );
}

#[test]
fn piece_header_matches_encoded_piece() {
    let data = Bytes::from(vec![7u8; 100]);
    let full = one(&Message::Piece {
        index: 5,
        begin: 32768,
        data: data.clone(),
    });
    assert_eq!(&full[..13], &piece_header(5, 32768, 100));
}

#[test]
fn handshake_round_trip_and_bits() {
    let mut hs = Handshake::new([1; 20], [2; 20]);
    hs.reserved[5] = 0x10;
    hs.reserved[7] = 0x05;
    let wire = hs.encode();
    assert_eq!(wire[0], 19);
    assert_eq!(&wire[1..20], b"BitTorrent protocol");
    let mut buf = BytesMut::from(&wire[..30]);
    assert_eq!(Handshake::decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(&wire[30..]);
    buf.extend_from_slice(&[0, 0, 0, 0]);
    let got = Handshake::decode(&mut buf).unwrap().unwrap();
    assert_eq!(got, hs);
    assert!(got.supports_extensions() && got.supports_fast() && got.supports_dht());
    assert_eq!(&buf[..], &[0, 0, 0, 0]);
    let mut bad = BytesMut::from(&b"\x13BitTorrent protocoX"[..]);
    assert_eq!(Handshake::decode(&mut bad), Err(WireError::BadProtocol));
    let mut early = BytesMut::from(&b"GET / HTTP/1.1"[..]);
    assert_eq!(Handshake::decode(&mut early), Err(WireError::BadProtocol));
}

#[test]
fn limits() {
    let d = Decoder::new(PIECES);
    // Length prefix 2^32-1: refused on the prefix alone (no id byte needed), nothing
    // allocated.
    let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        d.decode(&mut huge),
        Err(WireError::TooLong { .. })
    ));
    assert!(huge.capacity() < 1024);
    let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 7][..]);
    assert!(matches!(
        d.decode(&mut huge),
        Err(WireError::TooLong { .. })
    ));
    // The exact bitfield length with another id is refused once the id is there.
    let many = Decoder::new(1_000_000);
    let mut not_bitfield = BytesMut::new();
    not_bitfield.extend_from_slice(&(1_000_000u32.div_ceil(8) + 1).to_be_bytes());
    assert_eq!(many.decode(&mut not_bitfield), Ok(None));
    not_bitfield.extend_from_slice(&[7]);
    assert!(matches!(
        many.decode(&mut not_bitfield),
        Err(WireError::TooLong { .. })
    ));
    // A piece with a block just over 16 KiB + 13.
    let mut over = BytesMut::new();
    over.extend_from_slice(&(MAX_MESSAGE_LEN + 1).to_be_bytes());
    over.extend_from_slice(&[7]);
    assert!(matches!(
        d.decode(&mut over),
        Err(WireError::TooLong { .. })
    ));
    // A large bitfield is fine when it has exactly the right size.
    let big = Decoder::new(1_000_000);
    let wire = one(&Message::Bitfield(Bitfield::full(1_000_000)));
    assert_eq!(decode_all(&big, &wire).unwrap().len(), 1);
    // ...and refused when not.
    let wrong = one(&Message::Bitfield(Bitfield::full(999_000)));
    assert!(big.decode(&mut BytesMut::from(&wrong[..])).is_err());
    // Small bitfield of the wrong size, and spare bits.
    let short = [0, 0, 0, 3, 5, 0xff, 0xff];
    assert!(matches!(
        d.decode(&mut BytesMut::from(&short[..])),
        Err(WireError::BitfieldSize {
            got: 2,
            expected: 125,
            ..
        })
    ));
    let mut spare = vec![0, 0, 0, 126, 5];
    spare.extend_from_slice(&[0; 125]);
    spare[129] = 0x01; // with 999 pieces, piece 999 does not exist
    assert_eq!(
        Decoder::new(999).decode(&mut BytesMut::from(&spare[..])),
        Err(WireError::BitfieldSpareBits { pieces: 999 })
    );
    // Request over 16 KiB.
    let req = one(&Message::Request(BlockRequest {
        index: 0,
        begin: 0,
        length: 16385,
    }));
    assert_eq!(
        d.decode(&mut BytesMut::from(&req[..])),
        Err(WireError::RequestTooLong(16385))
    );
    // Fixed-size messages with the wrong size.
    assert!(matches!(
        d.decode(&mut BytesMut::from(&[0, 0, 0, 2, 0, 0][..])),
        Err(WireError::BadLength { id: 0, len: 2 })
    ));
    assert!(matches!(
        d.decode(&mut BytesMut::from(&[0, 0, 0, 4, 4, 0, 0, 1][..])),
        Err(WireError::BadLength { id: 4, .. })
    ));
    assert!(matches!(
        d.decode(&mut BytesMut::from(&[0, 0, 0, 5, 7, 0, 0, 0, 1][..])),
        Err(WireError::BadLength { id: 7, .. })
    ));
}

#[test]
fn piece_payload_is_not_copied() {
    let d = Decoder::new(PIECES);
    let wire = one(&Message::Piece {
        index: 0,
        begin: 0,
        data: Bytes::from(vec![9u8; 16384]),
    });
    let mut buf = BytesMut::from(&wire[..]);
    let base = buf.as_ptr() as usize;
    let Some(Message::Piece { data, .. }) = d.decode(&mut buf).unwrap() else {
        panic!()
    };
    // The block is a view into the read buffer, 13 bytes in.
    assert_eq!(data.as_ptr() as usize, base + 13);
}

fn message() -> impl Strategy<Value = Message> {
    let req = (any::<u32>(), any::<u32>(), 0..=MAX_BLOCK).prop_map(|(index, begin, length)| {
        BlockRequest {
            index,
            begin,
            length,
        }
    });
    prop_oneof![
        Just(Message::KeepAlive),
        Just(Message::Choke),
        Just(Message::Unchoke),
        Just(Message::Interested),
        Just(Message::NotInterested),
        any::<u32>().prop_map(Message::Have),
        proptest::collection::btree_set(0..PIECES, 0..50).prop_map(|set| {
            let mut bits = Bitfield::new(PIECES);
            for i in set {
                bits.set(i);
            }
            Message::Bitfield(bits)
        }),
        req.clone().prop_map(Message::Request),
        req.prop_map(Message::Cancel),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..=16384usize)
        )
            .prop_map(|(index, begin, data)| Message::Piece {
                index,
                begin,
                data: data.into()
            }),
        any::<u16>().prop_map(Message::Port),
        any::<u32>().prop_map(Message::Suggest),
        Just(Message::HaveAll),
        Just(Message::HaveNone),
        (any::<u32>(), any::<u32>(), 0u32..=16384).prop_map(|(index, begin, length)| {
            Message::Reject(BlockRequest {
                index,
                begin,
                length,
            })
        }),
        any::<u32>().prop_map(Message::AllowedFast),
        (18u8..=255, proptest::collection::vec(any::<u8>(), 0..100)).prop_map(|(id, p)| {
            Message::Unknown {
                id,
                payload: p.into(),
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn stream_round_trips_in_any_chunking(
        messages in proptest::collection::vec(message(), 0..20),
        cuts in proptest::collection::vec(1usize..5000, 0..40),
    ) {
        let mut stream = BytesMut::new();
        for m in &messages {
            m.encode(&mut stream);
        }
        let decoder = Decoder::new(PIECES);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut cuts = cuts.into_iter();
        while !rest.is_empty() {
            let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(m) = decoder.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, messages);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let decoder = Decoder::new(PIECES);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        let mut hs = BytesMut::from(&bytes[..]);
        let _ = Handshake::decode(&mut hs);
    }
}
