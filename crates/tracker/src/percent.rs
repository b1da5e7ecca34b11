//! Percent-encoding of raw bytes for tracker queries (RFC 3986), and the strict decoder the
//! server uses on raw query strings.

/// RFC 3986 unreserved characters: the only bytes sent as themselves.
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Encodes every byte outside the unreserved set as `%XX` (uppercase hex), `+` included.
pub fn encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes a query component into raw bytes. `%XX` must be complete hex; `+` is a space
/// (form encoding, as Python's `urlencode` and some clients send it). Returns None on a
/// broken escape.
pub fn decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' => {
                let hi = hex_val(*input.get(i + 1)?)?;
                let lo = hex_val(*input.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Splits a raw query string (`a=1&b=%20`) into decoded `(key, value)` byte pairs, in order.
/// Empty segments are skipped; a segment without `=` has an empty value.
pub fn parse_query(query: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for seg in query.split(|&b| b == b'&') {
        if seg.is_empty() {
            continue;
        }
        let (k, v) = match seg.iter().position(|&b| b == b'=') {
            Some(p) => (&seg[..p], &seg[p + 1..]),
            None => (seg, &[][..]),
        };
        out.push((decode(k)?, decode(v)?));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_value_round_trips_and_only_unreserved_stay_literal() {
        for b in 0..=255u8 {
            let enc = encode(&[b]);
            if is_unreserved(b) {
                assert_eq!(enc, (b as char).to_string(), "byte {b:#04x}");
            } else {
                assert_eq!(enc, format!("%{b:02X}"), "byte {b:#04x}");
            }
            assert_eq!(decode(enc.as_bytes()).unwrap(), vec![b], "byte {b:#04x}");
        }
        let all: Vec<u8> = (0..=255u8).collect();
        let enc = encode(&all);
        assert_eq!(decode(enc.as_bytes()).unwrap(), all);
        // exactly 66 unreserved characters: 26 + 26 + 10 + 4
        assert_eq!((0..=255u8).filter(|&b| is_unreserved(b)).count(), 66);
    }

    #[test]
    fn plus_and_space_are_escaped() {
        assert_eq!(encode(b"+"), "%2B");
        assert_eq!(encode(b" "), "%20");
        assert_eq!(encode(b"a~b-c.d_e"), "a~b-c.d_e");
        assert_eq!(encode(b"/?&=%"), "%2F%3F%26%3D%25");
    }

    #[test]
    fn decoder_is_strict_about_escapes_and_accepts_lowercase() {
        assert_eq!(decode(b"%ff%FF").unwrap(), vec![255, 255]);
        assert_eq!(decode(b"a+b").unwrap(), b"a b");
        assert!(decode(b"%").is_none());
        assert!(decode(b"%4").is_none());
        assert!(decode(b"%zz").is_none());
    }

    #[test]
    fn query_pairs_keep_raw_bytes_and_repeats() {
        let q = parse_query(b"info_hash=%00%01&info_hash=%FF&x&&y=").unwrap();
        assert_eq!(
            q,
            vec![
                (b"info_hash".to_vec(), vec![0, 1]),
                (b"info_hash".to_vec(), vec![255]),
                (b"x".to_vec(), vec![]),
                (b"y".to_vec(), vec![]),
            ]
        );
        assert!(parse_query(b"a=%G0").is_none());
    }
}
