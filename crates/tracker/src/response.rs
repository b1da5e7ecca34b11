//! Parsing bencoded tracker responses (announce and scrape).

use crate::{AnnounceResponse, Error, InfoHash, Result, ScrapeStats};
use pow_bencode::{decode_with, Node, Options};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn malformed(msg: impl Into<String>) -> Error {
    Error::Malformed(msg.into())
}

/// Trackers in the wild do not always sort dictionary keys; accept that (duplicates are
/// still refused), like the .torrent reader does.
fn decode_body(body: &[u8]) -> Result<Node<'_>> {
    decode_with(body, Options::torrent_file()).map_err(|e| malformed(e.to_string()))
}

/// Characters kept of a text a tracker sends (a failure reason, a warning, a UDP error).
const MAX_TRACKER_TEXT: usize = 200;

/// A text a tracker sends, made fit to print: it reaches the terminal and the logs, so control
/// characters (escape sequences, carriage returns, new lines) and Unicode's bidirectional
/// overrides become U+FFFD, and a long text is cut, with "…", instead of filling the screen.
pub(crate) fn tracker_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let mut out: String = chars
        .by_ref()
        .take(MAX_TRACKER_TEXT)
        .map(|c| if unprintable(c) { '\u{fffd}' } else { c })
        .collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// C0 and C1 controls and DEL, the bidirectional marks, embeddings, overrides and isolates
/// (which can make a terminal show text in another order than it is), and the line and
/// paragraph separators.
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                | '\u{2028}' | '\u{2029}'
        )
}

/// A non-negative integer that fits u32 (counts, intervals); larger values saturate.
fn opt_u32(root: &Node, key: &str) -> Result<Option<u32>> {
    match root.get(key) {
        None => Ok(None),
        Some(n) => match n.as_int() {
            Some(i) if i >= 0 => Ok(Some(u32::try_from(i).unwrap_or(u32::MAX))),
            Some(i) => Err(malformed(format!("negative {key:?}: {i}"))),
            None => Err(malformed(format!("{key:?} is a {}", n.type_name()))),
        },
    }
}

/// If the body is a bencoded dictionary with `failure reason`, that reason.
pub(crate) fn failure_reason(body: &[u8]) -> Option<String> {
    let root = decode_body(body).ok()?;
    root.get("failure reason")
        .and_then(Node::as_bytes)
        .map(tracker_text)
}

/// BEP 23 compact IPv4 peers: 6 bytes each (address, port big-endian). A trailing partial
/// entry is ignored, as libtorrent and Transmission do: one truncated address must not cost
/// the whole list.
pub fn parse_compact_v4(bytes: &[u8]) -> Vec<SocketAddr> {
    bytes
        .chunks_exact(6)
        .map(|c| {
            let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
            SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([c[4], c[5]]))
        })
        .collect()
}

/// BEP 7 compact IPv6 peers: 18 bytes each; a trailing partial entry is ignored.
pub fn parse_compact_v6(bytes: &[u8]) -> Vec<SocketAddr> {
    bytes
        .chunks_exact(18)
        .map(|c| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&c[..16]);
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                u16::from_be_bytes([c[16], c[17]]),
            )
        })
        .collect()
}

/// One entry of a non-compact `peers` list: `None` for a host name (legal but rare, and
/// not dialled), an error for an entry without a string `ip` or a valid `port`.
fn dict_peer(p: &Node) -> Result<Option<SocketAddr>> {
    let ip = p
        .get("ip")
        .and_then(Node::as_str)
        .ok_or_else(|| malformed("peer dict without a string \"ip\""))?;
    let port = p
        .get("port")
        .and_then(Node::as_int)
        .and_then(|i| u16::try_from(i).ok())
        .ok_or_else(|| malformed("peer dict without a valid \"port\""))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    Ok(ip
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port)))
}

/// Parses an announce response body. A `failure reason` becomes [`Error::Failure`].
pub fn parse_announce(body: &[u8]) -> Result<AnnounceResponse> {
    let root = decode_body(body)?;
    if root.as_dict().is_none() {
        return Err(malformed(format!("response is a {}", root.type_name())));
    }
    if let Some(reason) = root.get("failure reason") {
        let reason = reason
            .as_bytes()
            .map(tracker_text)
            .unwrap_or_else(|| "(failure reason is not a string)".into());
        return Err(Error::Failure {
            reason,
            status: Some(200),
        });
    }
    let mut resp = AnnounceResponse {
        interval: opt_u32(&root, "interval")?,
        min_interval: opt_u32(&root, "min interval")?,
        complete: opt_u32(&root, "complete")?,
        incomplete: opt_u32(&root, "incomplete")?,
        warning: root
            .get("warning message")
            .and_then(Node::as_bytes)
            .map(tracker_text),
        tracker_id: root
            .get("tracker id")
            .and_then(Node::as_bytes)
            .map(<[u8]>::to_vec),
        peers: Vec::new(),
    };
    // As libtorrent's parser: a bad entry is skipped, a `peers` or `peers6` of another type
    // ignored, and only an answer whose every entry is broken is an error. One broken peer must
    // not cost the other peers of the answer.
    let mut first_error = None;
    match root.get("peers").map(|n| (n.as_bytes(), n.as_list())) {
        Some((Some(compact), _)) => resp.peers = parse_compact_v4(compact),
        Some((None, Some(list))) => {
            let mut usable = false;
            for p in list {
                match dict_peer(p) {
                    Ok(addr) => {
                        // A host name is usable, though not dialled.
                        usable = true;
                        resp.peers.extend(addr);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if usable {
                first_error = None;
            }
        }
        _ => {}
    }
    if let Some(b) = root.get("peers6").and_then(Node::as_bytes) {
        resp.peers.extend(parse_compact_v6(b));
    }
    if let (true, Some(e)) = (resp.peers.is_empty(), first_error) {
        return Err(e);
    }
    Ok(resp)
}

/// Parses a scrape response body into counts per info-hash.
pub fn parse_scrape(body: &[u8]) -> Result<HashMap<InfoHash, ScrapeStats>> {
    let root = decode_body(body)?;
    if let Some(reason) = root.get("failure reason") {
        return Err(Error::Failure {
            reason: reason.as_bytes().map(tracker_text).unwrap_or_default(),
            status: Some(200),
        });
    }
    let files = root
        .get("files")
        .and_then(Node::as_dict)
        .ok_or_else(|| malformed("scrape response has no \"files\" dictionary"))?;
    let mut out = HashMap::new();
    for (k, v) in files {
        let hash: InfoHash = (*k)
            .try_into()
            .map_err(|_| malformed(format!("scrape key of {} bytes", k.len())))?;
        let get = |key: &str| opt_u32(v, key).map(Option::unwrap_or_default);
        out.insert(
            hash,
            ScrapeStats {
                complete: get("complete")?,
                incomplete: get("incomplete")?,
                downloaded: get("downloaded")?,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pow_bencode::{dict, Value};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn compact_v4_and_v6() {
        let body = dict([
            ("interval", Value::Int(900)),
            ("min interval", Value::Int(60)),
            ("complete", Value::Int(2)),
            ("incomplete", Value::Int(3)),
            (
                "peers",
                Value::Bytes(vec![127, 0, 0, 1, 0x1a, 0xe1, 10, 1, 2, 3, 0xff, 0xff]),
            ),
            (
                "peers6",
                Value::Bytes({
                    let mut v = Ipv6Addr::LOCALHOST.octets().to_vec();
                    v.extend_from_slice(&[0, 80]);
                    v
                }),
            ),
        ])
        .encode();
        let r = parse_announce(&body).unwrap();
        assert_eq!(r.interval, Some(900));
        assert_eq!(r.min_interval, Some(60));
        assert_eq!((r.complete, r.incomplete), (Some(2), Some(3)));
        assert_eq!(
            r.peers,
            vec![sa("127.0.0.1:6881"), sa("10.1.2.3:65535"), sa("[::1]:80")]
        );
    }

    #[test]
    fn dict_peers_warning_and_tracker_id() {
        let peer = |ip: &str, port: i64| {
            dict([
                ("ip", Value::str(ip)),
                ("peer id", Value::Bytes(vec![b'x'; 20])),
                ("port", Value::Int(port)),
            ])
        };
        let body = dict([
            ("interval", Value::Int(30)),
            (
                "peers",
                Value::List(vec![
                    peer("127.0.0.1", 51101),
                    peer("::1", 51102),
                    peer("tracker.example", 1),
                ]),
            ),
            ("tracker id", Value::str("abc")),
            ("warning message", Value::str("be nice")),
        ])
        .encode();
        let r = parse_announce(&body).unwrap();
        assert_eq!(r.peers, vec![sa("127.0.0.1:51101"), sa("[::1]:51102")]);
        assert_eq!(r.tracker_id.as_deref(), Some(&b"abc"[..]));
        assert_eq!(r.warning.as_deref(), Some("be nice"));
    }

    #[test]
    fn failures_and_malformed() {
        let body = dict([("failure reason", Value::str("go away"))]).encode();
        match parse_announce(&body) {
            Err(Error::Failure { reason, .. }) => assert_eq!(reason, "go away"),
            other => panic!("{other:?}"),
        }
        let bad = |v: Value| parse_announce(&v.encode()).unwrap_err();
        // a `peers` or `peers6` of another type is ignored, as libtorrent does
        let odd_types = dict([("peers", Value::Int(7)), ("peers6", Value::List(vec![]))]);
        assert_eq!(parse_announce(&odd_types.encode()).unwrap().peers, vec![]);
        // a list whose every entry is broken is an error, not an empty swarm
        let no_ip = dict([("port", Value::Int(6881))]);
        assert!(matches!(
            bad(dict([("peers", Value::List(vec![no_ip]))])),
            Error::Malformed(m) if m.contains("without a string \"ip\"")
        ));
        assert!(matches!(
            bad(dict([("interval", Value::Int(-5))])),
            Error::Malformed(_)
        ));
        assert!(matches!(bad(Value::List(vec![])), Error::Malformed(_)));
        assert!(matches!(
            parse_announce(b"<html>hi</html>"),
            Err(Error::Malformed(_))
        ));
        // unsorted keys from a sloppy tracker are accepted
        assert_eq!(
            parse_announce(b"d8:intervali5e5:peers0:8:completei1ee")
                .unwrap()
                .interval,
            Some(5)
        );
    }

    /// What libtorrent's `parse_tracker_response` does: whole compact entries are kept and a
    /// trailing part ignored; broken dictionary entries are skipped.
    #[test]
    fn one_broken_peer_entry_does_not_cost_the_others() {
        let mut v4 = vec![127, 0, 0, 1, 0x1a, 0xe1, 10, 1, 2, 3, 0xff, 0xff];
        v4.extend_from_slice(&[9, 9, 9]);
        let mut v6 = Ipv6Addr::LOCALHOST.octets().to_vec();
        v6.extend_from_slice(&[0, 80, 1, 2]);
        let body = dict([("peers", Value::Bytes(v4)), ("peers6", Value::Bytes(v6))]).encode();
        assert_eq!(
            parse_announce(&body).unwrap().peers,
            vec![sa("127.0.0.1:6881"), sa("10.1.2.3:65535"), sa("[::1]:80")]
        );

        let peer = |ip: Value, port: i64| dict([("ip", ip), ("port", Value::Int(port))]);
        let list = vec![
            dict([("port", Value::Int(1))]),
            peer(Value::str("127.0.0.1"), 70_000),
            peer(Value::Int(4), 1),
            peer(Value::str("127.0.0.1"), 51101),
            Value::Int(3),
            peer(Value::str("::1"), 51102),
        ];
        let body = dict([("peers", Value::List(list))]).encode();
        assert_eq!(
            parse_announce(&body).unwrap().peers,
            vec![sa("127.0.0.1:51101"), sa("[::1]:51102")]
        );
        // Every dictionary entry broken, but `peers6` has one; or a host name beside the
        // broken one: not an error.
        let broken = || Value::List(vec![dict([("port", Value::Int(1))])]);
        let v6 = [Ipv6Addr::LOCALHOST.octets().to_vec(), vec![0, 80]].concat();
        let body = dict([("peers", broken()), ("peers6", Value::Bytes(v6))]).encode();
        assert_eq!(parse_announce(&body).unwrap().peers, vec![sa("[::1]:80")]);
        let named = Value::List(vec![
            dict([("port", Value::Int(1))]),
            peer(Value::str("tracker.example"), 1),
        ]);
        let body = dict([("peers", named)]).encode();
        assert_eq!(parse_announce(&body).unwrap().peers, vec![]);
    }

    /// What a hostile tracker writes in a failure reason or a warning cannot drive the
    /// terminal it is printed on, nor fill it.
    #[test]
    fn tracker_text_is_made_fit_to_print() {
        assert_eq!(tracker_text(b"go away"), "go away");
        assert_eq!(
            tracker_text("\x1b[2J\x1b]0;pwned\x07a\r\nb\u{202e}c\u{9b}d\u{7f}é".as_bytes()),
            "\u{fffd}[2J\u{fffd}]0;pwned\u{fffd}a\u{fffd}\u{fffd}b\u{fffd}c\u{fffd}d\u{fffd}é"
        );
        assert_eq!(tracker_text(b"ok\xffok"), "ok\u{fffd}ok");
        let exactly = "é".repeat(MAX_TRACKER_TEXT);
        assert_eq!(tracker_text(exactly.as_bytes()), exactly);
        let long = format!("{exactly}x").repeat(5_000);
        assert_eq!(tracker_text(long.as_bytes()), format!("{exactly}…"));

        let reason = format!("\x1b[31m{}", "x".repeat(1_000_000));
        let body = dict([("failure reason", Value::str(&reason))]).encode();
        let short = format!("\u{fffd}[31m{}…", "x".repeat(MAX_TRACKER_TEXT - 5));
        match parse_announce(&body) {
            Err(Error::Failure { reason, .. }) => assert_eq!(reason, short),
            other => panic!("{other:?}"),
        }
        assert_eq!(failure_reason(&body), Some(short.clone()));
        match parse_scrape(&body) {
            Err(Error::Failure { reason, .. }) => assert_eq!(reason, short),
            other => panic!("{other:?}"),
        }
        let body = dict([
            ("peers", Value::Bytes(vec![])),
            ("warning message", Value::str(&reason)),
        ])
        .encode();
        assert_eq!(parse_announce(&body).unwrap().warning, Some(short));
    }

    #[test]
    fn scrape_files() {
        let h = [7u8; 20];
        let body = dict([(
            "files",
            dict([(
                h,
                dict([
                    ("complete", Value::Int(1)),
                    ("downloaded", Value::Int(4)),
                    ("incomplete", Value::Int(2)),
                ]),
            )]),
        )])
        .encode();
        let m = parse_scrape(&body).unwrap();
        assert_eq!(
            m[&h],
            ScrapeStats {
                complete: 1,
                incomplete: 2,
                downloaded: 4
            }
        );
        assert!(parse_scrape(b"de").is_err());
    }
}
