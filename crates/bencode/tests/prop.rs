//! Property tests: decode(encode(x)) == x, bendy (an independent implementation) reads our
//! encoding as the same value, and no input makes the decoder panic.

use pow_bencode::{decode, decode_with, Options, Value};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(6, 128, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..12),
                inner,
                0..8
            )
            .prop_map(Value::Dict),
        ]
    })
}

/// Reads a value with bendy's decoder into our `Value`, to compare.
fn bendy_read(object: bendy::decoding::Object<'_, '_>) -> Value {
    use bendy::decoding::Object;
    match object {
        Object::Integer(text) => Value::Int(text.parse().unwrap()),
        Object::Bytes(bytes) => Value::Bytes(bytes.to_vec()),
        Object::List(mut list) => {
            let mut items = Vec::new();
            while let Some(item) = list.next_object().unwrap() {
                items.push(bendy_read(item));
            }
            Value::List(items)
        }
        Object::Dict(mut dict) => {
            let mut map = BTreeMap::new();
            while let Some((key, item)) = dict.next_pair().unwrap() {
                map.insert(key.to_vec(), bendy_read(item));
            }
            Value::Dict(map)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trip(v in value()) {
        let bytes = v.encode();
        let node = decode(&bytes).unwrap();
        prop_assert_eq!(node.to_value(), v.clone());
        prop_assert_eq!(node.raw, &bytes[..]);
        let mut decoder = bendy::decoding::Decoder::new(&bytes).with_max_depth(64);
        let theirs = bendy_read(decoder.next_object().unwrap().unwrap());
        prop_assert_eq!(theirs, v);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let _ = decode_with(&bytes, Options::torrent_file());
    }

    #[test]
    fn mutated_encodings_never_panic(v in value(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = v.encode();
        let i = at % bytes.len();
        bytes[i] = byte;
        if let Ok(node) = decode(&bytes) {
            // Whatever strict decoding accepts is canonical: it re-encodes to the same bytes.
            prop_assert_eq!(node.to_value().encode(), bytes);
        }
    }

    #[test]
    fn truncations_are_errors_with_offsets_in_range(v in value(), cut in any::<usize>()) {
        let bytes = v.encode();
        let cut = cut % bytes.len();
        let err = decode(&bytes[..cut]).unwrap_err();
        prop_assert!(err.offset <= cut);
    }
}
