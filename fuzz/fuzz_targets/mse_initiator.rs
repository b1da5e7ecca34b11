#![no_main]
//! Encrypted handshakes as an initiator (the end that dialed) reads the answer, from a
//! responder that may be hostile. The first byte picks what the rest is: even, the bytes a
//! peer answers with (in reads of the size the second byte says); odd, a genuine responder's
//! public key and pad, then its step four (VC, the method it selects, pad D and its length)
//! with the rest XORed over it, so that the fuzzer works past the Diffie-Hellman sync. Nothing
//! may panic, and a finished handshake is RC4, the only method offered, with both ciphers.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pow_mse::{Initiator, Method, Methods, Responder};

const TORRENT: [u8; 20] = [0x5A; 20];

fuzz_target!(|data: &[u8]| {
    let (Some(&mode), Some(&chunk)) = (data.first(), data.get(1)) else {
        return;
    };
    let rest = &data[2..];
    let offer = Methods::RC4_ONLY;
    let handshake = vec![0x13; 68];
    let (mut initiator, first) = Initiator::new(TORRENT, offer, [8; 20], &[2; 9], handshake);
    let stream = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let either = Methods::EITHER_PREFER_PLAINTEXT;
        let mut responder = Responder::new(vec![TORRENT], either, [9; 20], vec![1; 17]);
        let answer = responder
            .step(&mut BytesMut::from(&first[..]))
            .expect("genuine")
            .send;
        let (mut probe, _) = Initiator::new(TORRENT, offer, [8; 20], &[2; 9], vec![0x13; 68]);
        let step3 = probe
            .step(&mut BytesMut::from(&answer[..]))
            .expect("genuine")
            .send;
        let step4 = responder
            .step(&mut BytesMut::from(&step3[..]))
            .expect("genuine")
            .send;
        let mut stream = answer;
        let encrypted_from = stream.len();
        stream.extend_from_slice(&step4);
        for (byte, noise) in stream[encrypted_from..].iter_mut().zip(rest) {
            *byte ^= noise;
        }
        stream.extend_from_slice(rest.get(step4.len()..).unwrap_or(&[]));
        stream
    };
    let mut input = BytesMut::new();
    for part in stream.chunks(usize::from(chunk).max(1)) {
        input.extend_from_slice(part);
        match initiator.step(&mut input) {
            Ok(progress) => {
                if let Some(done) = progress.done {
                    assert_eq!(done.method, Method::Rc4);
                    assert!(done.send.is_some() && done.recv.is_some());
                    return;
                }
            }
            Err(_) => return,
        }
    }
});
