#![no_main]
//! A byte stream fed to the peer decoder in the chunking the input itself chooses: no panic,
//! and the messages are the same as when the stream arrives in one piece.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pow_wire::{Decoder, Handshake};

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
    assert_eq!(chunked_result.is_err(), whole_result.is_err());
});
