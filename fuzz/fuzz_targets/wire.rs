#![no_main]
//! A byte stream fed to the peer decoder in the chunking the input itself chooses: no panic,
//! and the messages are the same as when the stream arrives in one piece. Extended messages'
//! bodies go through every extension decoder; a peer exchange read back from its own encoding
//! is stable.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pow_wire::extension::{split_extended, ExtHandshake, MetadataMessage, EXTENDED};
use pow_wire::pex::PexMessage;
use pow_wire::{Decoder, Handshake, Message};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let pieces = u32::from(u16::from_le_bytes([data[0], data[1]]));
    let step = usize::from(data[2]).max(1);
    let stream = &data[3..];
    let decoder = Decoder::new(pieces);

    let mut whole = BytesMut::from(stream);
    let _ = Handshake::decode(&mut whole.clone());
    let mut expected = Vec::new();
    let whole_result = loop {
        match decoder.decode(&mut whole) {
            Ok(Some(m)) => expected.push(m),
            other => break other.map(|_| ()),
        }
    };

    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut chunked_result = Ok(());
    'feed: for chunk in stream.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(e) => {
                    chunked_result = Err(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got, expected);
    for message in &expected {
        if let Message::Unknown { id: EXTENDED, payload } = message {
            if let Ok((_, body)) = split_extended(payload) {
                let _ = ExtHandshake::decode(&body);
                let _ = MetadataMessage::decode(&body);
                if let Ok(pex) = PexMessage::decode(&body) {
                    let once = reencoded(&pex);
                    assert_eq!(reencoded(&once), once);
                }
            }
        }
    }
    assert_eq!(chunked_result.is_err(), whole_result.is_err());
});

/// `pex` encoded and decoded again (IPv4-mapped IPv6 addresses come back as IPv4).
fn reencoded(pex: &PexMessage) -> PexMessage {
    match pex.to_message(1) {
        Message::Unknown { payload, .. } => PexMessage::decode(&payload[1..]).expect("our own"),
        other => panic!("{other:?}"),
    }
}
