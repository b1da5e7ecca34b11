#![no_main]
//! Encrypted handshakes as a responder reads them. The first byte picks what the rest is:
//! even, the bytes a peer sends from its first one (in reads of the size the second byte
//! says); odd, a genuine initiator's opening and step three with the rest XORed over its
//! encrypted part, so that the fuzzer works past the Diffie-Hellman sync on VC, the offer,
//! the pad and payload lengths. Nothing may panic; a finished handshake's initial payload is
//! within its limit.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pow_mse::{Initiator, Methods, Responder, MAX_INITIAL_PAYLOAD};

const TORRENT: [u8; 20] = [0x5A; 20];

fuzz_target!(|data: &[u8]| {
    let (Some(&mode), Some(&chunk)) = (data.first(), data.get(1)) else {
        return;
    };
    let rest = &data[2..];
    let mut responder =
        Responder::new(vec![TORRENT], Methods::EITHER_PREFER_PLAINTEXT, [9; 20], vec![1; 17]);
    let stream = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let handshake = vec![0x13; 68];
        let (mut initiator, mut first) =
            Initiator::new(TORRENT, Methods::EITHER_PREFER_PLAINTEXT, [8; 20], &[2; 9], handshake);
        let mut probe =
            Responder::new(vec![TORRENT], Methods::EITHER_PREFER_PLAINTEXT, [9; 20], vec![1; 17]);
        let answer = probe.step(&mut BytesMut::from(&first[..])).expect("genuine").send;
        let step3 = initiator.step(&mut BytesMut::from(&answer[..])).expect("genuine").send;
        let encrypted_from = first.len() + 40;
        first.extend_from_slice(&step3);
        for (byte, noise) in first[encrypted_from..].iter_mut().zip(rest) {
            *byte ^= noise;
        }
        first.extend_from_slice(rest.get(step3.len().saturating_sub(40)..).unwrap_or(&[]));
        first
    };
    let mut input = BytesMut::new();
    for part in stream.chunks(usize::from(chunk).max(1)) {
        input.extend_from_slice(part);
        match responder.step(&mut input) {
            Ok(progress) => {
                if let Some(done) = progress.done {
                    assert!(done.initial_payload.len() <= MAX_INITIAL_PAYLOAD);
                    return;
                }
            }
            Err(_) => return,
        }
    }
});
