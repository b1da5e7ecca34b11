use super::*;
use proptest::prelude::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn rc4_matches_the_published_test_vectors() {
    for (key, plain, cipher) in [
        ("Key", "Plaintext", "BBF316E8D940AF0AD3"),
        ("Wiki", "pedia", "1021BF0420"),
        ("Secret", "Attack at dawn", "45A01F645FC35B383552544B9BF5"),
    ] {
        let mut data = plain.as_bytes().to_vec();
        Rc4::new(key.as_bytes()).apply(&mut data);
        assert_eq!(hex(&data), cipher);
    }
}

#[test]
fn rc4_in_pieces_is_rc4_at_once() {
    let mut whole = vec![7u8; 1000];
    Rc4::new(b"k").apply(&mut whole);
    let mut parts = vec![7u8; 1000];
    let mut rc4 = Rc4::new(b"k");
    for chunk in parts.chunks_mut(37) {
        rc4.apply(chunk);
    }
    assert_eq!(whole, parts);
}

#[test]
fn public_keys_are_96_bytes_and_secrets_agree() {
    let a = KeyPair::new([1; 20]);
    let b = KeyPair::new([2; 20]);
    assert_eq!(a.public.len(), KEY_LEN);
    assert_eq!(
        a.shared_secret(&b.public).unwrap(),
        b.shared_secret(&a.public).unwrap()
    );
    assert_ne!(a.public, b.public);
}

#[test]
fn degenerate_public_keys_are_refused() {
    let a = KeyPair::new([1; 20]);
    let p_minus_one = to_key_bytes(&(prime() - BigUint::from(1u8)));
    for bad in [
        [0u8; KEY_LEN],
        to_key_bytes(&BigUint::from(1u8)),
        p_minus_one,
        [0xFF; KEY_LEN],
    ] {
        assert_eq!(a.shared_secret(&bad), Err(MseError::BadPublicKey));
    }
}

const TORRENT: [u8; 20] = [0xAB; 20];
const OTHER: [u8; 20] = [0xCD; 20];

/// Runs both ends against each other, handing bytes over `chunk` at a time; then each sends
/// `after` to the other. Returns (initiator's outcome, responder's outcome).
fn exchange(
    offer: Methods,
    accept: Methods,
    pads: (usize, usize),
    chunk: usize,
) -> Result<(Established, Established), MseError> {
    let ia = b"\x13BitTorrent protocol initial payload".to_vec();
    let (mut a, first) = Initiator::new(TORRENT, offer, [3; 20], &vec![0x55; pads.0], ia.clone());
    let mut b = Responder::new(vec![OTHER, TORRENT], accept, [4; 20], vec![0x66; pads.1]);
    let (mut to_b, mut to_a) = (first, Vec::new());
    let (mut in_a, mut in_b) = (BytesMut::new(), BytesMut::new());
    let (mut done_a, mut done_b) = (None, None);
    for _ in 0..10_000 {
        if done_a.is_some() && done_b.is_some() {
            break;
        }
        let n = chunk.min(to_b.len());
        in_b.extend_from_slice(&to_b.drain(..n).collect::<Vec<_>>());
        if done_b.is_none() {
            let p = b.step(&mut in_b)?;
            to_a.extend(p.send);
            done_b = p.done;
        }
        let n = chunk.min(to_a.len());
        in_a.extend_from_slice(&to_a.drain(..n).collect::<Vec<_>>());
        if done_a.is_none() {
            let p = a.step(&mut in_a)?;
            to_b.extend(p.send);
            done_a = p.done;
        }
    }
    let (done_a, done_b) = (
        done_a.expect("initiator done"),
        done_b.expect("responder done"),
    );
    assert_eq!(done_b.initial_payload, ia);
    assert_eq!(done_b.info_hash, TORRENT);
    assert_eq!(done_a.method, done_b.method);
    assert!(in_a.is_empty() && in_b.is_empty() && to_a.is_empty() && to_b.is_empty());
    Ok((done_a, done_b))
}

/// What one end sends after the handshake arrives at the other as it was sent.
fn payload_flows(a: &mut Established, b: &mut Established) {
    one_way(a, b);
    one_way(b, a);
}

fn one_way(from: &mut Established, to: &mut Established) {
    let message = b"\x00\x00\x00\x01\x02 interested".to_vec();
    let mut wire = message.clone();
    if let Some(send) = &mut from.send {
        send.apply(&mut wire);
        assert_ne!(wire, message, "RC4 changes the bytes");
    }
    if let Some(recv) = &mut to.recv {
        recv.apply(&mut wire);
    }
    assert_eq!(wire, message);
}

#[test]
fn both_ends_agree_on_each_method() {
    use Methods as M;
    for (offer, accept, method) in [
        (
            M::EITHER_PREFER_PLAINTEXT,
            M::EITHER_PREFER_PLAINTEXT,
            Method::Plaintext,
        ),
        (M::EITHER_PREFER_RC4, M::EITHER_PREFER_RC4, Method::Rc4),
        (M::EITHER_PREFER_PLAINTEXT, M::RC4_ONLY, Method::Rc4),
        (M::RC4_ONLY, M::EITHER_PREFER_PLAINTEXT, Method::Rc4),
    ] {
        let (mut a, mut b) = exchange(offer, accept, (100, 200), 4096).unwrap();
        assert_eq!(a.method, method);
        assert_eq!(a.send.is_some(), method == Method::Rc4);
        payload_flows(&mut a, &mut b);
    }
}

#[test]
fn a_plaintext_only_peer_meets_an_rc4_only_one() {
    let plaintext_only = Methods {
        plaintext: true,
        rc4: false,
        prefer_rc4: false,
    };
    let err = exchange(plaintext_only, Methods::RC4_ONLY, (0, 0), 4096).unwrap_err();
    assert_eq!(
        err,
        MseError::NoCommonMethod {
            offered: 1,
            ours: 2
        }
    );
}

#[test]
fn an_unknown_torrent_is_refused() {
    let (mut a, first) = Initiator::new([9; 20], Methods::RC4_ONLY, [3; 20], &[], vec![]);
    let mut b = Responder::new(vec![TORRENT], Methods::RC4_ONLY, [4; 20], vec![]);
    let mut in_b = BytesMut::from(&first[..]);
    let answer = b.step(&mut in_b).unwrap().send;
    let step3 = a.step(&mut BytesMut::from(&answer[..])).unwrap().send;
    in_b.extend_from_slice(&step3);
    assert_eq!(b.step(&mut in_b).unwrap_err(), MseError::UnknownTorrent);
}

#[test]
fn garbage_after_the_key_fails_to_sync_within_the_pad_limit() {
    let mut b = Responder::new(vec![TORRENT], Methods::RC4_ONLY, [4; 20], vec![]);
    let a = KeyPair::new([3; 20]);
    let mut input = BytesMut::from(&a.public[..]);
    assert!(b.step(&mut input).unwrap().done.is_none());
    input.extend_from_slice(&[0x42; MAX_PAD + 19]);
    assert!(
        b.step(&mut input).unwrap().done.is_none(),
        "still within the pad"
    );
    input.extend_from_slice(&[0x42]);
    assert_eq!(b.step(&mut input).unwrap_err(), MseError::NoSync);
}

#[test]
fn a_responder_that_never_syncs_fails_the_initiator() {
    let (mut a, _) = Initiator::new(TORRENT, Methods::RC4_ONLY, [3; 20], &[], vec![]);
    let b = KeyPair::new([4; 20]);
    let mut input = BytesMut::from(&b.public[..]);
    a.step(&mut input).unwrap();
    input.extend_from_slice(&[0x42; MAX_PAD + 8]);
    assert_eq!(a.step(&mut input).unwrap_err(), MseError::NoSync);
}

#[test]
fn plaintext_handshakes_are_told_apart_from_encrypted_ones() {
    let plain = b"\x13BitTorrent protocol\0\0\0\0\0\0\0\0";
    assert_eq!(is_plaintext_handshake(&plain[..5]), None);
    assert_eq!(is_plaintext_handshake(&plain[..]), Some(true));
    assert_eq!(is_plaintext_handshake(b"\x13BitTorrent pro"), None);
    assert_eq!(is_plaintext_handshake(b"\x13Bit Torrent"), Some(false));
    assert_eq!(is_plaintext_handshake(&[0x8f; 96]), Some(false));
    assert_eq!(is_plaintext_handshake(&[]), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any pad lengths and any size of read agree on the same method and stream.
    #[test]
    fn any_pads_and_reads_agree(pad_a in 0..=MAX_PAD, pad_b in 0..=MAX_PAD, chunk in 1usize..700,
                               rc4 in any::<bool>()) {
        let offer = if rc4 { Methods::RC4_ONLY } else { Methods::EITHER_PREFER_PLAINTEXT };
        let (mut a, mut b) = exchange(offer, Methods::EITHER_PREFER_PLAINTEXT, (pad_a, pad_b), chunk).unwrap();
        payload_flows(&mut a, &mut b);
    }

    /// Whatever a peer sends, the responder returns an error or waits; it never panics.
    #[test]
    fn a_responder_survives_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut b = Responder::new(vec![TORRENT], Methods::EITHER_PREFER_PLAINTEXT, [4; 20], vec![]);
        let mut input = BytesMut::from(&bytes[..]);
        let _ = b.step(&mut input);
    }
}
