//! Magnet links (BEP 9 `magnet:?xt=urn:btih:…`): parsing, and making one for a torrent.
//!
//! The parse follows libtorrent 2.0's `parse_magnet_uri`, checked against its answers for 67
//! magnet links from five projects' tests (`fixtures/magnets.json`, `tests/magnets.rs`):
//!
//! - Parameter names are case-insensitive (`XT`, `dN`), and a `.<digits>` suffix is dropped
//!   (`tr.1` is `tr`; `x.pe` stays `x.pe`).
//! - `xt=urn:btih:` takes 40 hex digits or 32 base32 characters (either case);
//!   `xt=urn:btmh:1220` takes a 64-hex-digit SHA-256 (BitTorrent v2). Other `xt`s (`urn:sha1`,
//!   `urn:ed2k`, …) are skipped. A link with neither btih nor btmh is an error; a btih or btmh of
//!   the wrong length or alphabet is an error.
//! - Values are percent-decoded, and `+` decodes to a space (as libtorrent does).
//! - `tr` (trackers), `ws` (web seeds), `x.pe` (peers) and `dht` (DHT nodes) keep their order.
//! - `so` (select only these files) is parsed but pow downloads every file: it is reported in
//!   [`Magnet::warnings`].
//! - Unknown parameters (`xl`, `as`, `xs`, `kt`, …) are ignored.
//!
//! Where pow differs on purpose:
//! - A 40-character btih or a `1220`+64-character btmh that is not hex parses, as in libtorrent,
//!   but gives no hash: it is kept in [`Magnet::unusable_info_hashes`] with a warning, and
//!   [`Magnet::v1`] explains that the link cannot be downloaded.
//! - Repeated trackers and peers are kept, as libtorrent's parse keeps them (users of the list
//!   drop the repeats); repeated web seeds are kept once.
//! - The query is split at `&` before `=`, so `magnet:?flag&xt=…` still finds the `xt`.
//! - `urn:btih:` and `urn:btmh:` are matched in any case (a URN's namespace is case-insensitive).
//! - A `dn` with a broken `%` escape keeps the broken escape as text (libtorrent cuts the name
//!   there). A `tr`, `ws`, `x.pe` or `dht` with a broken escape is dropped with a warning, as
//!   libtorrent drops it silently.
//!
//! Limits ([`MAX_URI_LEN`], [`MAX_PARAMS`], [`MAX_SELECT_INDEX`]) are listed in LIMITS.md.

use crate::{InfoHash, Metainfo};
use std::fmt::Write as _;
use std::net::SocketAddr;

/// Longest magnet link accepted. Real links are a few hundred bytes; a link with 100 trackers is
/// under 8 KiB.
pub const MAX_URI_LEN: usize = 64 * 1024;
/// Most `&`-separated parameters accepted in one link.
pub const MAX_PARAMS: usize = 1024;
/// Highest file index accepted in `so` (libtorrent's bound too): indices are parsed, not
/// expanded, but the cap keeps a range like `0-4000000000` from meaning anything.
pub const MAX_SELECT_INDEX: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    #[error("not a magnet link (expected it to start with 'magnet:?')")]
    NotMagnet,
    #[error("magnet link is {0} bytes; the limit is {MAX_URI_LEN}")]
    TooLong(usize),
    #[error("magnet link has more than {MAX_PARAMS} parameters")]
    TooManyParams,
    #[error("magnet link has no BitTorrent info-hash (xt=urn:btih:… or xt=urn:btmh:…)")]
    MissingInfoHash,
    #[error("invalid info-hash in magnet link: {0}")]
    InvalidInfoHash(String),
    #[error("broken percent-escape in magnet link's xt: {0}")]
    BadEscape(String),
    #[error("BitTorrent v2 only magnet link (no urn:btih): pow downloads v1 and hybrid torrents")]
    V2Only,
}

/// A parsed magnet link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Magnet {
    /// BitTorrent v1 info-hash (`xt=urn:btih:`). `None` for a v2-only link.
    pub info_hash: Option<InfoHash>,
    /// BitTorrent v2 info-hash (`xt=urn:btmh:1220…`, SHA-256), when given.
    pub info_hash_v2: Option<[u8; 32]>,
    /// Display name (`dn`); `None` when absent or empty.
    pub name: Option<String>,
    /// Trackers (`tr`), in order, each once; each is its own tier, as in libtorrent.
    pub trackers: Vec<String>,
    /// Web seeds (`ws`, BEP 19), in order, each once.
    pub web_seeds: Vec<String>,
    /// Peers (`x.pe`), in order, each once.
    pub peers: Vec<SocketAddr>,
    /// DHT bootstrap nodes (`dht=host:port`).
    pub dht_nodes: Vec<(String, u16)>,
    /// `so` file selection as inclusive index ranges, in the order given. Not acted on.
    pub select_only: Vec<(u32, u32)>,
    /// What was ignored or dropped, one sentence each (for the user, not for code).
    pub warnings: Vec<String>,
    /// `xt` values of a hash's length that are not hex (libtorrent accepts the link and keeps
    /// no hash; so does pow, and says why it cannot download it).
    pub unusable_info_hashes: Vec<String>,
}

/// Whether `text` is meant as a magnet link rather than a file path: its scheme is
/// `magnet:`, in any case (as [`Magnet::parse`] takes it).
pub fn is_magnet_link(text: &str) -> bool {
    text.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("magnet:"))
}

impl Magnet {
    /// The link's `dht=` nodes as `host:port`, as a torrent's `nodes` are named.
    pub fn dht_node_names(&self) -> Vec<String> {
        self.dht_nodes
            .iter()
            .map(|(host, port)| crate::dht_node_name(host, *port))
            .collect()
    }

    /// Parses a magnet link. See the module documentation for the rules.
    pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
        if uri.len() > MAX_URI_LEN {
            return Err(MagnetError::TooLong(uri.len()));
        }
        let query = match uri.get(..8) {
            Some(head) if head.eq_ignore_ascii_case("magnet:?") => &uri[8..],
            _ => return Err(MagnetError::NotMagnet),
        };
        let mut m = Magnet::default();
        let mut params = 0usize;
        for param in query.split('&') {
            if param.is_empty() {
                continue;
            }
            params += 1;
            if params > MAX_PARAMS {
                return Err(MagnetError::TooManyParams);
            }
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let key = match key.split_once('.') {
                Some((stem, n)) if n.bytes().all(|b| b.is_ascii_digit()) => stem,
                _ => key,
            };
            let key = key.to_ascii_lowercase();
            match key.as_str() {
                "xt" => m.exact_topic(value)?,
                "dn" => {
                    let name = String::from_utf8_lossy(&unescape_lenient(value)).into_owned();
                    if name.contains('\u{FFFD}') {
                        m.warnings
                            .push("dn: name is not UTF-8; bad bytes replaced".to_string());
                    }
                    m.name = (!name.is_empty()).then_some(name);
                }
                "tr" => {
                    if let Some(url) = m.text_value("tr", value) {
                        if !url.is_empty() {
                            m.trackers.push(url);
                        }
                    }
                }
                "ws" => {
                    if let Some(url) = m.text_value("ws", value) {
                        if !url.is_empty() && !m.web_seeds.contains(&url) {
                            m.web_seeds.push(url);
                        }
                    }
                }
                "x.pe" => {
                    if let Some(text) = m.text_value("x.pe", value) {
                        match text.parse::<SocketAddr>() {
                            Ok(addr) => m.peers.push(addr),
                            Err(_) => m.warnings.push(format!(
                                "x.pe: {text:?} is not an IP address and port; ignored"
                            )),
                        }
                    }
                }
                "dht" => {
                    if let Some(text) = m.text_value("dht", value) {
                        match text.rsplit_once(':').and_then(|(host, port)| {
                            let port = parse_digits(port)?;
                            let port = u16::try_from(port).ok().filter(|&p| p > 0)?;
                            (!host.is_empty()).then(|| (host.to_string(), port))
                        }) {
                            Some(node) => m.dht_nodes.push(node),
                            None => m
                                .warnings
                                .push(format!("dht: {text:?} is not host:port; ignored")),
                        }
                    }
                }
                "so" => m.select_only(value),
                _ => {}
            }
        }
        if m.info_hash.is_none() && m.info_hash_v2.is_none() && m.unusable_info_hashes.is_empty() {
            return Err(MagnetError::MissingInfoHash);
        }
        if !m.select_only.is_empty() {
            m.warnings.push(
                "so (select only some files) is ignored: pow downloads every file".to_string(),
            );
        }
        Ok(m)
    }

    /// The v1 info-hash pow downloads by, or [`MagnetError::V2Only`].
    pub fn v1(&self) -> Result<InfoHash, MagnetError> {
        match (self.info_hash, self.unusable_info_hashes.first()) {
            (Some(ih), _) => Ok(ih),
            (None, Some(raw)) if self.info_hash_v2.is_none() => {
                Err(MagnetError::InvalidInfoHash(raw.clone()))
            }
            (None, _) => Err(MagnetError::V2Only),
        }
    }

    /// A magnet link for a torrent: its v1 info-hash, name, trackers (all tiers, each URL once)
    /// and web seeds (`url-list`).
    pub fn for_torrent(metainfo: &Metainfo) -> Magnet {
        let mut trackers: Vec<String> = Vec::new();
        for url in metainfo.tracker_tiers().into_iter().flatten() {
            if !trackers.contains(&url) {
                trackers.push(url);
            }
        }
        let mut web_seeds: Vec<String> = Vec::new();
        for url in &metainfo.url_list {
            if !web_seeds.contains(url) {
                web_seeds.push(url.clone());
            }
        }
        Magnet {
            info_hash: Some(metainfo.info_hash),
            name: (!metainfo.name.is_empty()).then(|| metainfo.name.clone()),
            trackers,
            web_seeds,
            ..Magnet::default()
        }
    }

    /// The link as text, in libtorrent's `make_magnet_uri` layout
    /// (`magnet:?xt=urn:btih:<hex>&dn=<name>&tr=<url>…&ws=<url>…`), followed by `x.pe`, `dht` and
    /// `so` when set. Values are percent-encoded: everything but ASCII letters, digits and
    /// `-_.!~*()`, so `parse(to_uri())` gives the same magnet back (warnings aside).
    pub fn to_uri(&self) -> String {
        let mut out = String::from("magnet:?");
        let mut sep = "";
        if let Some(ih) = &self.info_hash {
            let _ = write!(out, "xt=urn:btih:{}", ih.to_hex());
            sep = "&";
        }
        if let Some(v2) = &self.info_hash_v2 {
            let _ = write!(out, "{sep}xt=urn:btmh:1220{}", hex::encode(v2));
            sep = "&";
        }
        for raw in &self.unusable_info_hashes {
            out.push_str(sep);
            out.push_str("xt=");
            escape_into(&mut out, raw);
            sep = "&";
        }
        let mut add = |key: &str, value: &str| {
            out.push_str(sep);
            out.push_str(key);
            out.push('=');
            escape_into(&mut out, value);
            sep = "&";
        };
        if let Some(name) = &self.name {
            add("dn", name);
        }
        for tr in &self.trackers {
            add("tr", tr);
        }
        for ws in &self.web_seeds {
            add("ws", ws);
        }
        for peer in &self.peers {
            add("x.pe", &peer.to_string());
        }
        for (host, port) in &self.dht_nodes {
            add("dht", &format!("{host}:{port}"));
        }
        if !self.select_only.is_empty() {
            let ranges: Vec<String> = self
                .select_only
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            // Digits, '-' and ',' only, unescaped: libtorrent does not decode `so`.
            let _ = write!(out, "{sep}so={}", ranges.join(","));
        }
        out
    }

    fn exact_topic(&mut self, value: &str) -> Result<(), MagnetError> {
        let decoded;
        let value = if value.contains('%') {
            decoded = unescape(value)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| MagnetError::BadEscape(value.to_string()))?;
            decoded.as_str()
        } else {
            value
        };
        let (urn, hash) = match value.get(..9) {
            Some(urn) => (urn.to_ascii_lowercase(), &value[9..]),
            None => return Ok(()),
        };
        let invalid = || MagnetError::InvalidInfoHash(value.to_string());
        match urn.as_str() {
            "urn:btih:" => {
                let ih = match hash.len() {
                    40 => match InfoHash::from_hex(hash) {
                        Some(ih) => ih,
                        None => {
                            self.unusable(value);
                            return Ok(());
                        }
                    },
                    32 => InfoHash(base32_20(hash).ok_or_else(invalid)?),
                    _ => return Err(invalid()),
                };
                if self.info_hash.is_some_and(|old| old != ih) {
                    self.warnings
                        .push("several different urn:btih: the last one is used".to_string());
                }
                self.info_hash = Some(ih);
            }
            "urn:btmh:" => {
                let digest = hash.strip_prefix("1220").ok_or_else(invalid)?;
                let mut v2 = [0u8; 32];
                if digest.len() != 64 {
                    return Err(invalid());
                }
                if hex::decode_to_slice(digest, &mut v2).is_err() {
                    self.unusable(value);
                    return Ok(());
                }
                if self.info_hash_v2.is_some_and(|old| old != v2) {
                    self.warnings
                        .push("several different urn:btmh: the last one is used".to_string());
                }
                self.info_hash_v2 = Some(v2);
            }
            _ => {}
        }
        Ok(())
    }

    fn unusable(&mut self, xt: &str) {
        self.warnings.push(format!(
            "xt={xt}: not hex, so no info-hash (kept, as libtorrent does)"
        ));
        self.unusable_info_hashes.push(xt.to_string());
    }

    /// A percent-decoded UTF-8 value, or a warning and `None`.
    fn text_value(&mut self, key: &str, value: &str) -> Option<String> {
        match unescape(value).map(String::from_utf8) {
            Some(Ok(text)) => Some(text),
            Some(Err(_)) => {
                self.warnings.push(format!(
                    "{key}: {value:?} is not UTF-8 once decoded; ignored"
                ));
                None
            }
            None => {
                self.warnings
                    .push(format!("{key}: {value:?} has a broken %-escape; ignored"));
                None
            }
        }
    }

    /// `so=0,2-4`: libtorrent's rule (only digits, `-` and `,`; bad tokens skipped).
    fn select_only(&mut self, value: &str) {
        if !value
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b',')
        {
            self.warnings.push(format!(
                "so: {value:?} is not a list of file indices; ignored"
            ));
            return;
        }
        for token in value.split(',').filter(|t| !t.is_empty()) {
            let range = match token.split_once('-') {
                Some((a, b)) => parse_digits(a).zip(parse_digits(b)),
                None => parse_digits(token).map(|a| (a, a)),
            };
            match range {
                Some((a, b)) if a <= b && b <= u64::from(MAX_SELECT_INDEX) => {
                    self.select_only.push((a as u32, b as u32))
                }
                _ => self
                    .warnings
                    .push(format!("so: {token:?} is not a valid file index or range")),
            }
        }
    }
}

/// A magnet link for a torrent (see [`Magnet::for_torrent`] and [`Magnet::to_uri`]).
pub fn magnet_link(metainfo: &Metainfo) -> String {
    Magnet::for_torrent(metainfo).to_uri()
}

/// A non-empty run of ASCII digits, at most 9 of them (enough for any index or port).
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decoding with `+` as a space; `None` on a broken escape.
fn unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// Like [`unescape`], but a broken escape stays as text.
fn unescape_lenient(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex_val(*bytes.get(i + 1)?)? << 4 | hex_val(*bytes.get(i + 2)?)?))
            .flatten();
        match (bytes[i], escaped) {
            (_, Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b'+', None) => out.push(b' '),
            (b, None) => out.push(b),
        }
        i += 1;
    }
    out
}

/// Percent-encodes all but ASCII alphanumerics and `-_.!~*()` (libtorrent's `escape_string`).
fn escape_into(out: &mut String, s: &str) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*()".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// RFC 4648 base32 (either case, no padding) of exactly 32 characters to 20 bytes.
fn base32_20(s: &str) -> Option<[u8; 20]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 20];
    let mut acc: u64 = 0;
    let mut bits = 0;
    let mut n = 0;
    for b in s.bytes() {
        let v = match b.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = acc << 5 | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out[n] = (acc >> bits) as u8;
            n += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

    #[test]
    fn round_trips_through_parse() {
        let m = Magnet {
            info_hash: InfoHash::from_hex(HEX),
            info_hash_v2: Some([0xab; 32]),
            name: Some("a name+with / odd & chars = ünïcode 100%".to_string()),
            trackers: vec![
                "udp://tracker.example:6969/announce".to_string(),
                "http://t.example/a?x=1&y=2".to_string(),
            ],
            web_seeds: vec!["http://mirror.example/files/a b".to_string()],
            peers: vec![
                "127.0.0.1:6881".parse().unwrap(),
                "[2001:db8::2]:55013".parse().unwrap(),
            ],
            dht_nodes: vec![("router.example".to_string(), 6881)],
            select_only: vec![(0, 0), (2, 4)],
            warnings: vec![],
            unusable_info_hashes: vec![],
        };
        let uri = m.to_uri();
        assert!(uri.starts_with(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btmh:1220abab")));
        assert!(uri.contains("&dn=a%20name%2Bwith%20%2F%20odd%20%26%20chars"));
        assert!(uri.contains("&tr=udp%3A%2F%2Ftracker.example%3A6969%2Fannounce&"));
        let mut back = Magnet::parse(&uri).unwrap();
        assert_eq!(back.warnings.len(), 1, "{:?}", back.warnings); // the `so` warning
        back.warnings.clear();
        assert_eq!(back, m);
    }

    #[test]
    fn link_for_a_torrent_round_trips() {
        let info =
            b"d6:lengthi5e4:name5:a b+c12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae";
        let mut torrent = b"d8:announce13:http://t/ann113:announce-listll13:http://t/ann1el13:http://t/ann213:http://t/ann1ee8:url-list9:http://w/4:info".to_vec();
        torrent.extend_from_slice(info);
        torrent.push(b'e');
        let meta = Metainfo::from_bytes(&torrent).unwrap();
        let uri = magnet_link(&meta);
        assert_eq!(
            uri,
            format!(
                "magnet:?xt=urn:btih:{}&dn=a%20b%2Bc&tr=http%3A%2F%2Ft%2Fann1&tr=http%3A%2F%2Ft%2Fann2&ws=http%3A%2F%2Fw%2F",
                InfoHash::of(info).to_hex()
            )
        );
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(m.v1().unwrap(), meta.info_hash);
        assert_eq!(m.name.as_deref(), Some("a b+c"));
        assert_eq!(m.trackers, ["http://t/ann1", "http://t/ann2"]);
        assert_eq!(m.web_seeds, ["http://w/"]);
        assert!(m.warnings.is_empty());
    }

    #[test]
    fn limits_and_errors() {
        let long = format!("magnet:?xt=urn:btih:{HEX}&dn={}", "a".repeat(MAX_URI_LEN));
        assert_eq!(Magnet::parse(&long), Err(MagnetError::TooLong(long.len())));
        let many = format!("magnet:?xt=urn:btih:{HEX}{}", "&x=1".repeat(MAX_PARAMS));
        assert_eq!(Magnet::parse(&many), Err(MagnetError::TooManyParams));
        assert_eq!(Magnet::parse("http://x"), Err(MagnetError::NotMagnet));
        assert_eq!(Magnet::parse("magnet:"), Err(MagnetError::NotMagnet));
        assert!(matches!(
            Magnet::parse("magnet:?xt=urn:btih:%zz"),
            Err(MagnetError::BadEscape(_))
        ));
        let v2 = Magnet::parse(&format!("magnet:?xt=urn:btmh:1220{HEX}{}", &HEX[..24])).unwrap();
        assert_eq!(v2.v1(), Err(MagnetError::V2Only));
    }

    #[test]
    fn pow_specific_rules() {
        // Split at '&' first: a bare flag before xt does not hide it.
        let m = Magnet::parse(&format!(
            "magnet:?flag&XT=URN:BTIH:{HEX}&tr.1=a&tr.2=a&tr=%zz"
        ))
        .unwrap();
        assert_eq!(m.info_hash, InfoHash::from_hex(HEX));
        assert_eq!(m.trackers, ["a", "a"], "repeats kept, as libtorrent does");
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        // A broken escape in dn stays as text.
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&dn=100%+sure%2")).unwrap();
        assert_eq!(m.name.as_deref(), Some("100% sure%2"));
        // so: bad tokens skipped with a warning, good ones kept.
        let m = Magnet::parse(&format!(
            "magnet:?xt=urn:btih:{HEX}&so=1,5-3,-2,7-,0-99999,4"
        ))
        .unwrap();
        assert_eq!(m.select_only, [(1, 1), (4, 4)]);
        assert_eq!(m.warnings.len(), 5, "{:?}", m.warnings);
    }
}
