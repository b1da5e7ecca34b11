//! Bencode (BEP 3): a strict decoder and a canonical encoder.
//!
//! This crate owns the byte format and nothing else. It decodes into borrowed [`Node`]s that
//! remember the exact byte span they came from (so the metainfo crate can hash the `info`
//! dictionary as it stands in the file, never re-encoded), and encodes owned [`Value`]s into
//! canonical form (dictionary keys sorted by raw bytes).
//!
//! Why not bendy: bendy's decoder reports neither the byte offset of an error nor the raw span
//! of a value, and its dictionary-order check cannot be relaxed for the one place real
//! `.torrent` files need it. Both are needed here, so the codec is written out (about 400
//! lines) and bendy is kept as an independent implementation to cross-check ours in tests.
//!
//! Strict means: no leading zeros (`i03e`, `03:abc`), no `-0`, no `i-e`/`ie`, dictionary keys
//! sorted by raw bytes with no duplicates, no trailing data, string lengths checked against the
//! remaining input before anything is allocated, integers outside i64 rejected, nesting depth
//! bounded without recursion on the native stack beyond that bound, and the number of values
//! bounded (each decoded value costs about 40 bytes, 20 times the 2 bytes of an empty list).

use std::collections::BTreeMap;
use std::fmt;

/// Default bound on list/dict nesting. Real torrents nest 4-6 deep; 100-deep samples exist in tests.
pub const DEFAULT_MAX_DEPTH: usize = 256;
/// Default bound on the number of values in one input: libtorrent's `max_decode_tokens`
/// (2,000,000, which also counts keys), so whatever libtorrent loads, we do. Without it a 48 MiB
/// info dictionary of empty lists decoded into about 2 GiB of nodes.
pub const DEFAULT_MAX_VALUES: usize = 2_000_000;

/// What went wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Byte offset into the input at which the problem was found.
    pub offset: usize,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    EmptyInput,
    UnexpectedEnd,
    /// A byte that cannot start a value (or end a container) here.
    UnexpectedByte(u8),
    EmptyInteger,
    LeadingZero,
    NegativeZero,
    IntegerOverflow,
    /// A string length prefix that is not followed by `:`.
    MissingColon,
    /// A string length prefix larger than the bytes left in the input.
    StringTooLong {
        declared: u64,
        remaining: usize,
    },
    /// A dictionary key that is not a byte string.
    NonStringKey,
    UnsortedKey,
    DuplicateKey,
    TooDeep {
        limit: usize,
    },
    TooManyValues {
        limit: usize,
    },
    TrailingData,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::EmptyInput => write!(f, "empty input"),
            ErrorKind::UnexpectedEnd => write!(f, "input ends in the middle of a value"),
            ErrorKind::UnexpectedByte(b) => write!(f, "unexpected byte {}", show_byte(*b)),
            ErrorKind::EmptyInteger => write!(f, "integer has no digits"),
            ErrorKind::LeadingZero => write!(f, "number has a leading zero"),
            ErrorKind::NegativeZero => write!(f, "negative zero is not allowed"),
            ErrorKind::IntegerOverflow => write!(f, "integer does not fit in 64 bits"),
            ErrorKind::MissingColon => write!(f, "string length is not followed by ':'"),
            ErrorKind::StringTooLong {
                declared,
                remaining,
            } => write!(
                f,
                "string length {declared} exceeds the {remaining} bytes left"
            ),
            ErrorKind::NonStringKey => write!(f, "dictionary key is not a byte string"),
            ErrorKind::UnsortedKey => write!(f, "dictionary keys are not in sorted order"),
            ErrorKind::DuplicateKey => write!(f, "duplicate dictionary key"),
            ErrorKind::TooDeep { limit } => write!(f, "nesting deeper than {limit} levels"),
            ErrorKind::TooManyValues { limit } => write!(f, "more than {limit} values"),
            ErrorKind::TrailingData => write!(f, "trailing data after the value"),
        }
    }
}

fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bencode: {} at byte {}", self.kind, self.offset)
    }
}

impl std::error::Error for Error {}

/// How strict to be. [`Options::strict`] is BEP 3 to the letter.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub max_depth: usize,
    /// Values (integers, strings, lists, dictionaries) decoded at most, in all.
    pub max_values: usize,
    /// Accept dictionaries whose keys are not in sorted order (duplicates are still refused).
    /// Real `.torrent` files written by old tools do this; libtorrent loads them and hashes
    /// the bytes as they are, so the metainfo reader does too.
    pub allow_unsorted_keys: bool,
    /// Ignore bytes after the value. Some real `.torrent` files carry junk after the root
    /// dictionary (libtorrent loads them); the metainfo reader needs only the dictionary.
    pub allow_trailing_data: bool,
}

impl Options {
    pub const fn strict() -> Self {
        Options {
            max_depth: DEFAULT_MAX_DEPTH,
            max_values: DEFAULT_MAX_VALUES,
            allow_unsorted_keys: false,
            allow_trailing_data: false,
        }
    }
    pub const fn torrent_file() -> Self {
        Options {
            max_depth: DEFAULT_MAX_DEPTH,
            max_values: DEFAULT_MAX_VALUES,
            allow_unsorted_keys: true,
            allow_trailing_data: true,
        }
    }
}

/// A decoded value borrowing from the input: the bytes it was decoded from, and what they say.
///
/// Kept small (40 bytes; lists and dictionaries hold exactly their items): a torrent of
/// 100,000 files is half a million nodes, and at 64 bytes with vectors' spare room they took
/// 96 MB to read a 4 MB file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node<'a> {
    pub raw: &'a [u8],
    pub kind: Kind<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Box<[Node<'a>]>),
    /// In input order (sorted, unless decoded with `allow_unsorted_keys`).
    Dict(Box<[(&'a [u8], Node<'a>)]>),
}

impl<'a> Node<'a> {
    pub fn as_int(&self) -> Option<i64> {
        match self.kind {
            Kind::Int(i) => Some(i),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.kind {
            Kind::Bytes(b) => Some(b),
            _ => None,
        }
    }
    /// The string as UTF-8, if it is a byte string holding valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
    pub fn as_list(&self) -> Option<&[Node<'a>]> {
        match &self.kind {
            Kind::List(l) => Some(l),
            _ => None,
        }
    }
    pub fn as_dict(&self) -> Option<&[(&'a [u8], Node<'a>)]> {
        match &self.kind {
            Kind::Dict(d) => Some(d),
            _ => None,
        }
    }
    /// Look up `key` if this is a dictionary.
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| *k == key.as_bytes())
            .map(|(_, v)| v)
    }
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Int(_) => "integer",
            Kind::Bytes(_) => "string",
            Kind::List(_) => "list",
            Kind::Dict(_) => "dictionary",
        }
    }
    /// An owned copy of this value.
    pub fn to_value(&self) -> Value {
        match &self.kind {
            Kind::Int(i) => Value::Int(*i),
            Kind::Bytes(b) => Value::Bytes(b.to_vec()),
            Kind::List(l) => Value::List(l.iter().map(Node::to_value).collect()),
            Kind::Dict(d) => {
                Value::Dict(d.iter().map(|(k, v)| (k.to_vec(), v.to_value())).collect())
            }
        }
    }
}

/// An owned bencode value. Dictionaries are `BTreeMap`s, so encoding is canonical by construction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => encode_bytes(b, out),
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(k, out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }
}

/// Builds a dictionary `Value` from `(key, value)` pairs.
pub fn dict<K: AsRef<[u8]>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
    Value::Dict(
        entries
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_vec(), v))
            .collect(),
    )
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// Decodes exactly one value filling all of `input`, strictly.
pub fn decode(input: &[u8]) -> Result<Node<'_>, Error> {
    decode_with(input, Options::strict())
}

/// Decodes exactly one value filling all of `input`.
pub fn decode_with(input: &[u8], options: Options) -> Result<Node<'_>, Error> {
    let (node, end) = decode_prefix(input, options)?;
    if end != input.len() && !options.allow_trailing_data {
        return Err(Error {
            offset: end,
            kind: ErrorKind::TrailingData,
        });
    }
    Ok(node)
}

/// Decodes one value at the start of `input` and returns it with the offset just past it.
/// Useful for framed protocols (the extension protocol puts raw data after a dictionary).
pub fn decode_prefix(input: &[u8], options: Options) -> Result<(Node<'_>, usize), Error> {
    if input.is_empty() {
        return Err(Error {
            offset: 0,
            kind: ErrorKind::EmptyInput,
        });
    }
    let mut parser = Parser {
        input,
        pos: 0,
        values: 0,
        options,
    };
    let node = parser.value(0)?;
    Ok((node, parser.pos))
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    values: usize,
    options: Options,
}

impl<'a> Parser<'a> {
    fn err<T>(&self, offset: usize, kind: ErrorKind) -> Result<T, Error> {
        Err(Error { offset, kind })
    }

    fn peek(&self) -> Result<u8, Error> {
        match self.input.get(self.pos) {
            Some(b) => Ok(*b),
            None => self.err(self.pos, ErrorKind::UnexpectedEnd),
        }
    }

    /// `depth` is the number of containers already open around this value. Recursion is
    /// bounded by `max_depth`, which keeps the native stack use small and fixed.
    fn value(&mut self, depth: usize) -> Result<Node<'a>, Error> {
        let start = self.pos;
        self.values += 1;
        if self.values > self.options.max_values {
            let limit = self.options.max_values;
            return self.err(start, ErrorKind::TooManyValues { limit });
        }
        let kind = match self.peek()? {
            b'i' => Kind::Int(self.integer()?),
            b'0'..=b'9' => Kind::Bytes(self.bytes()?),
            b'l' => {
                self.enter(depth)?;
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Kind::List(items.into_boxed_slice())
            }
            b'd' => {
                self.enter(depth)?;
                self.pos += 1;
                Kind::Dict(self.dict_entries(depth)?.into_boxed_slice())
            }
            other => return self.err(self.pos, ErrorKind::UnexpectedByte(other)),
        };
        Ok(Node {
            raw: &self.input[start..self.pos],
            kind,
        })
    }

    fn enter(&self, depth: usize) -> Result<(), Error> {
        if depth >= self.options.max_depth {
            return self.err(
                self.pos,
                ErrorKind::TooDeep {
                    limit: self.options.max_depth,
                },
            );
        }
        Ok(())
    }

    fn dict_entries(&mut self, depth: usize) -> Result<Vec<(&'a [u8], Node<'a>)>, Error> {
        let mut entries: Vec<(&'a [u8], Node<'a>)> = Vec::new();
        // Once keys are out of order, sortedness no longer rules out duplicates: keep a set.
        let mut seen: Option<std::collections::HashSet<&'a [u8]>> = None;
        loop {
            let key_start = self.pos;
            match self.peek()? {
                b'e' => {
                    self.pos += 1;
                    break;
                }
                b'0'..=b'9' => {}
                _ => return self.err(key_start, ErrorKind::NonStringKey),
            }
            let key = self.bytes()?;
            if let Some(seen) = seen.as_mut() {
                if !seen.insert(key) {
                    return self.err(key_start, ErrorKind::DuplicateKey);
                }
            } else if let Some((last, _)) = entries.last() {
                if key == *last {
                    return self.err(key_start, ErrorKind::DuplicateKey);
                }
                if key < *last {
                    if !self.options.allow_unsorted_keys {
                        return self.err(key_start, ErrorKind::UnsortedKey);
                    }
                    let mut set: std::collections::HashSet<&'a [u8]> =
                        entries.iter().map(|(k, _)| *k).collect();
                    if !set.insert(key) {
                        return self.err(key_start, ErrorKind::DuplicateKey);
                    }
                    seen = Some(set);
                }
            }
            let value = self.value(depth + 1)?;
            entries.push((key, value));
        }
        Ok(entries)
    }

    fn integer(&mut self) -> Result<i64, Error> {
        self.pos += 1; // 'i'
        let negative = self.input.get(self.pos) == Some(&b'-');
        if negative {
            self.pos += 1;
        }
        let digits_start = self.pos;
        let mut magnitude: u64 = 0;
        loop {
            let b = self.peek()?;
            match b {
                b'0'..=b'9' => {
                    if self.pos > digits_start && self.input[digits_start] == b'0' {
                        return self.err(digits_start, ErrorKind::LeadingZero);
                    }
                    magnitude = magnitude
                        .checked_mul(10)
                        .and_then(|m| m.checked_add(u64::from(b - b'0')))
                        .ok_or(Error {
                            offset: digits_start,
                            kind: ErrorKind::IntegerOverflow,
                        })?;
                    self.pos += 1;
                }
                b'e' => break,
                other => return self.err(self.pos, ErrorKind::UnexpectedByte(other)),
            }
        }
        if self.pos == digits_start {
            return self.err(self.pos, ErrorKind::EmptyInteger);
        }
        self.pos += 1; // 'e'
        let overflow = Error {
            offset: digits_start,
            kind: ErrorKind::IntegerOverflow,
        };
        if negative {
            if magnitude == 0 {
                return self.err(digits_start - 1, ErrorKind::NegativeZero);
            }
            // i64::MIN's magnitude is one more than i64::MAX.
            if magnitude > i64::MAX as u64 + 1 {
                return Err(overflow);
            }
            Ok((magnitude as i64).wrapping_neg())
        } else {
            i64::try_from(magnitude).map_err(|_| overflow)
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let len_start = self.pos;
        let mut len: u64 = 0;
        loop {
            let b = self.peek()?;
            match b {
                b'0'..=b'9' => {
                    if self.pos > len_start && self.input[len_start] == b'0' {
                        return self.err(len_start, ErrorKind::LeadingZero);
                    }
                    len = len
                        .checked_mul(10)
                        .and_then(|l| l.checked_add(u64::from(b - b'0')))
                        .ok_or(Error {
                            offset: len_start,
                            kind: ErrorKind::IntegerOverflow,
                        })?;
                    self.pos += 1;
                }
                b':' => break,
                _ => return self.err(self.pos, ErrorKind::MissingColon),
            }
        }
        self.pos += 1; // ':'
        let remaining = self.input.len() - self.pos;
        if len > remaining as u64 {
            return self.err(
                len_start,
                ErrorKind::StringTooLong {
                    declared: len,
                    remaining,
                },
            );
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.input[start..self.pos])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(input: &[u8]) -> ErrorKind {
        decode(input).unwrap_err().kind
    }

    #[test]
    fn integers() {
        assert_eq!(decode(b"i0e").unwrap().as_int(), Some(0));
        assert_eq!(decode(b"i-3e").unwrap().as_int(), Some(-3));
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap().as_int(),
            Some(i64::MIN)
        );
        assert_eq!(kind_of(b"i03e"), ErrorKind::LeadingZero);
        assert_eq!(kind_of(b"i-0e"), ErrorKind::NegativeZero);
        assert_eq!(kind_of(b"i-e"), ErrorKind::EmptyInteger);
        assert_eq!(kind_of(b"ie"), ErrorKind::EmptyInteger);
        assert_eq!(
            kind_of(b"i9223372036854775808e"),
            ErrorKind::IntegerOverflow
        );
        assert_eq!(
            kind_of(b"i99999999999999999999999e"),
            ErrorKind::IntegerOverflow
        );
    }

    #[test]
    fn strings_are_checked_before_allocating() {
        let err = decode(b"18446744073709551615:x").unwrap_err();
        assert!(matches!(err.kind, ErrorKind::StringTooLong { .. }));
        assert_eq!(
            kind_of(b"99999999999999999999999:x"),
            ErrorKind::IntegerOverflow
        );
    }

    #[test]
    fn error_names_offset() {
        let err = decode(b"d3:cow3:moo3:abc1:xe").unwrap_err();
        assert_eq!(err.kind, ErrorKind::UnsortedKey);
        assert_eq!(err.offset, 11);
        assert_eq!(
            err.to_string(),
            "bencode: dictionary keys are not in sorted order at byte 11"
        );
    }

    #[test]
    fn unsorted_keys_allowed_only_when_asked_but_never_duplicates() {
        let input = b"d1:b1:x1:a1:ye";
        assert!(decode(input).is_err());
        assert!(decode_with(input, Options::torrent_file()).is_ok());
        let dup = b"d1:b1:x1:a1:y1:b1:ze";
        assert_eq!(
            decode_with(dup, Options::torrent_file()).unwrap_err().kind,
            ErrorKind::DuplicateKey
        );
    }

    #[test]
    fn spans_are_exact() {
        let input = b"d4:infod1:ai1eee";
        let node = decode(input).unwrap();
        let info = node.get("info").unwrap();
        assert_eq!(info.raw, b"d1:ai1ee");
        assert_eq!(info.raw.as_ptr_range().start, input[7..].as_ptr());
    }

    #[test]
    fn a_node_is_40_bytes() {
        assert_eq!(std::mem::size_of::<Node<'_>>(), 40);
    }

    /// 2,000,001 empty lists inside one: 4 MB of input, refused at the value past the limit
    /// (it decoded into about 100 MB of nodes, and 48 MiB of them into 2 GiB).
    #[test]
    fn the_number_of_values_is_bounded() {
        let many = |n: usize| format!("l{}e", "le".repeat(n));
        let limit = DEFAULT_MAX_VALUES;
        let input = many(limit - 1);
        let at_limit = decode_with(input.as_bytes(), Options::torrent_file()).unwrap();
        assert_eq!(at_limit.as_list().unwrap().len(), limit - 1);
        let err = decode_with(many(limit).as_bytes(), Options::torrent_file()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooManyValues { limit });
        assert_eq!(err.offset, 1 + 2 * (limit - 1));
        let small = Options {
            max_values: 3,
            ..Options::strict()
        };
        assert!(decode_with(b"li1ei2ee", small).is_ok());
        assert!(decode_with(b"li1ei2ei3ee", small).is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "l".repeat(100_000) + &"e".repeat(100_000);
        assert!(matches!(
            kind_of(deep.as_bytes()),
            ErrorKind::TooDeep { .. }
        ));
    }
}
