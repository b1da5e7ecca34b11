//! HTTP tracker client: the announce/scrape query, and one small HTTP/1.1 GET with hard limits
//! on connect time, total read time and response size, over TCP or TLS (`https://`, with
//! `pow_tls`'s configuration: the system's CA certificates, always verified).

use crate::client::ClientConfig;
use crate::percent::encode;
use crate::{AnnounceRequest, Error, InfoHash, Result};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// The announce query (without `?`), every binary value percent-encoded byte by byte.
pub(crate) fn announce_query(req: &AnnounceRequest) -> String {
    let mut q = format!(
        "info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact=1&key={:08X}",
        encode(&req.info_hash),
        encode(&req.peer_id),
        req.port,
        req.uploaded,
        req.downloaded,
        req.left,
        req.key,
    );
    if let Some(n) = req.numwant {
        q.push_str(&format!("&numwant={n}"));
    }
    if let Some(ev) = req.event.as_str() {
        q.push_str("&event=");
        q.push_str(ev);
    }
    if let Some(id) = &req.tracker_id {
        q.push_str("&trackerid=");
        q.push_str(&encode(id));
    }
    q
}

pub(crate) fn scrape_query(hashes: &[InfoHash]) -> String {
    hashes
        .iter()
        .map(|h| format!("info_hash={}", encode(h)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Appends a query to a path that may already carry one (`/announce?passkey=x`).
pub(crate) fn with_query(path_and_query: &str, query: &str) -> String {
    let sep = if path_and_query.contains('?') {
        if path_and_query.ends_with('?') || path_and_query.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    format!("{path_and_query}{sep}{query}")
}

/// BEP 48: the scrape URL is the announce URL with the last path segment's leading
/// `announce` replaced by `scrape`; None when the last segment does not start with `announce`.
pub fn scrape_url(announce: &str) -> Option<String> {
    if announce.to_ascii_lowercase().starts_with("udp://") {
        return Some(announce.to_string());
    }
    let (base, query) = match announce.find('?') {
        Some(i) => (&announce[..i], &announce[i..]),
        None => (announce, ""),
    };
    let slash = base.rfind('/')?;
    // "http://host" has its last slash inside "//": no path segment at all
    if base[..slash].ends_with('/') || base[..slash].ends_with(':') {
        return None;
    }
    let last = &base[slash + 1..];
    let rest = last.strip_prefix("announce")?;
    Some(format!("{}/scrape{rest}{query}", &base[..slash]))
}

/// Addresses of a tracker's host name tried before giving up.
const MAX_CONNECT_ADDRESSES: usize = 3;

/// The addresses to try, in the resolver's order: at most [`MAX_CONNECT_ADDRESSES`] (a name
/// from a torrent anyone wrote may resolve to dozens that drop packets, each taking the whole
/// connect timeout), the first of each family among them (IPv6 listed first and broken must
/// not leave IPv4 untried).
pub(crate) fn connect_order(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut chosen: Vec<SocketAddr> = addrs.iter().copied().take(MAX_CONNECT_ADDRESSES).collect();
    for v4 in [true, false] {
        let missing = !chosen.iter().any(|a| a.is_ipv4() == v4);
        if let Some(first) = addrs.iter().find(|a| a.is_ipv4() == v4).filter(|_| missing) {
            let last = chosen.len() - 1;
            chosen[last] = *first;
        }
    }
    chosen
}

/// A tracker's addresses to try, in [`connect_order`]; never empty.
pub(crate) async fn resolve(host: &str, port: u16, cfg: &ClientConfig) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> =
        timeout(cfg.connect_timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| Error::Resolve(host.to_string()))?
            .map_err(|_| Error::Resolve(host.to_string()))?
            .collect();
    let addrs = connect_order(addrs);
    if addrs.is_empty() {
        return Err(Error::Resolve(host.to_string()));
    }
    Ok(addrs)
}

async fn connect(host: &str, port: u16, cfg: &ClientConfig) -> Result<TcpStream> {
    let mut last = Error::Resolve(host.to_string());
    for addr in resolve(host, port, cfg).await? {
        match timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(source)) => last = Error::Connect { addr, source },
            Err(_) => {
                last = Error::ConnectTimeout {
                    addr,
                    after: cfg.connect_timeout,
                }
            }
        }
    }
    Err(last)
}

/// A response: status code and body (already de-chunked).
pub(crate) struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// The `Location` header (where a redirect points).
    pub location: Option<String>,
}

/// One `GET` with `Connection: close`, over TLS with `tls`. The whole exchange after
/// connecting (the TLS handshake included) must finish within `cfg.read_timeout`, and the
/// response (head + body) may not exceed `cfg.max_response_bytes` plus 16 KiB of headers.
pub(crate) async fn get(
    tls: bool,
    host: &str,
    port: u16,
    path_and_query: &str,
    cfg: &ClientConfig,
) -> Result<HttpResponse> {
    let stream = connect(host, port, cfg).await?;
    let deadline = Instant::now() + cfg.read_timeout;
    if !tls {
        return exchange(stream, host, port, path_and_query, cfg, deadline).await;
    }
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| Error::Http(format!("{host:?} is not a name TLS can check")))?;
    let connector = tokio_rustls::TlsConnector::from(pow_tls::client_config());
    let handshake = connector.connect(name, stream);
    let stream = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(Error::Tls {
                host: host.to_string(),
                reason: source.to_string(),
            })
        }
        Err(_) => return Err(Error::Timeout(cfg.read_timeout)),
    };
    exchange(stream, host, port, path_and_query, cfg, deadline).await
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    port: u16,
    path_and_query: &str,
    cfg: &ClientConfig,
    deadline: Instant,
) -> Result<HttpResponse> {
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {}\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
        cfg.user_agent
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        read_response(&mut stream, cfg.max_response_bytes).await
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(cfg.read_timeout)),
    }
}

const MAX_HEAD: usize = 16 * 1024;

/// Reads one response from `stream` (a socket; the fuzz target feeds bytes).
pub(crate) async fn read_response<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    max_body: usize,
) -> Result<HttpResponse> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    // head
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(Error::Http("response headers too long".into()));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Error::Http("connection closed without a response".into())
            } else {
                Error::Http("connection closed in the middle of the headers".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| Error::Http("response headers are not text".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(Error::Http(format!(
            "not an HTTP/1.x status line: {:?}",
            status_line.chars().take(60).collect::<String>()
        )));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Http("bad status code".into()))?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut location = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len: u64 = value
                .parse()
                .map_err(|_| Error::Http("bad Content-Length".into()))?;
            if len > max_body as u64 {
                return Err(Error::TooLarge(max_body));
            }
            content_length = Some(len as usize);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_string());
        }
    }
    let mut body = buf.split_off(head_end);
    // Body: read until Content-Length, or EOF; never past the cap (+ chunk framing slack).
    let cap = if chunked {
        max_body + max_body / 8 + 1024
    } else {
        max_body
    };
    loop {
        if let (Some(len), false) = (content_length, chunked) {
            if body.len() >= len {
                body.truncate(len);
                break;
            }
        }
        // The last chunk read ends the body: a server that keeps the connection open (our
        // `Connection: close` ignored) turned a whole reply into a timeout.
        if chunked && body.ends_with(b"\r\n") && dechunk(&body, max_body).is_ok() {
            break;
        }
        if body.len() > cap {
            return Err(Error::TooLarge(max_body));
        }
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // A TLS server that closes without close_notify (rustls reports that as an
            // unexpected EOF). Whether the body is whole is for its own framing to say: the
            // Content-Length below, the last chunk, or the bencode parse of a body that runs
            // to the end of the stream, which a cut cannot leave valid.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            if let (Some(len), false) = (content_length, chunked) {
                if body.len() < len {
                    return Err(Error::Http(format!(
                        "body ended after {} of {len} bytes",
                        body.len()
                    )));
                }
            }
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if chunked {
        body = dechunk(&body, max_body)?;
    }
    Ok(HttpResponse {
        status,
        body,
        location,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut input: &[u8], max_body: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end =
            find(input, b"\r\n").ok_or_else(|| Error::Http("truncated chunk header".into()))?;
        let size_str = std::str::from_utf8(&input[..line_end])
            .map_err(|_| Error::Http("bad chunk header".into()))?;
        let size_str = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| Error::Http("bad chunk size".into()))?;
        input = &input[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        // A hostile size (up to usize::MAX) must not overflow the sum: checked, then capped.
        if out
            .len()
            .checked_add(size)
            .is_none_or(|total| total > max_body)
        {
            return Err(Error::TooLarge(max_body));
        }
        if input.len() < size + 2 {
            return Err(Error::Http("truncated chunk".into()));
        }
        if &input[size..size + 2] != b"\r\n" {
            return Err(Error::Http("chunk data not followed by CRLF".into()));
        }
        out.extend_from_slice(&input[..size]);
        input = &input[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    /// At most three addresses of a name are tried, the first of each family among them.
    #[test]
    fn a_name_of_many_addresses_is_tried_at_three_of_each_family() {
        let at = |a: &str| a.parse::<std::net::SocketAddr>().unwrap();
        let v6: Vec<_> = (1..=5)
            .map(|i| at(&format!("[2001:db8::{i}]:80")))
            .collect();
        let v4: Vec<_> = (1..=5).map(|i| at(&format!("192.0.2.{i}:80"))).collect();
        assert_eq!(super::connect_order(v4.clone()), v4[..3]);
        let mixed: Vec<_> = v6.iter().chain(&v4).copied().collect();
        assert_eq!(super::connect_order(mixed), [v6[0], v6[1], v4[0]]);
        assert_eq!(super::connect_order(vec![v4[0]]), [v4[0]]);
        assert!(super::connect_order(Vec::new()).is_empty());
    }

    use super::*;
    use crate::Event;

    #[test]
    fn scrape_urls_follow_bep48() {
        let s = |u: &str| scrape_url(u);
        assert_eq!(
            s("http://example.com/announce").as_deref(),
            Some("http://example.com/scrape")
        );
        assert_eq!(
            s("http://example.com/x/announce").as_deref(),
            Some("http://example.com/x/scrape")
        );
        assert_eq!(
            s("http://example.com/announce.php").as_deref(),
            Some("http://example.com/scrape.php")
        );
        assert_eq!(
            s("http://example.com/announce?x2%0644").as_deref(),
            Some("http://example.com/scrape?x2%0644")
        );
        assert_eq!(s("http://example.com/a"), None);
        assert_eq!(
            s("http://example.com/announce?x=2/4"),
            Some("http://example.com/scrape?x=2/4".into())
        );
        assert_eq!(s("http://example.com/x%064announce"), None);
        assert_eq!(s("http://example.com"), None);
    }

    #[test]
    fn announce_query_encodes_raw_bytes() {
        let mut info_hash = [0u8; 20];
        info_hash[0] = b'+';
        info_hash[1] = b' ';
        info_hash[2] = 0xff;
        info_hash[3] = b'a';
        let req = AnnounceRequest {
            info_hash,
            peer_id: *b"-PW0001-abcdefghijkl",
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 0,
            event: Event::Started,
            numwant: Some(50),
            key: 0xdead,
            tracker_id: Some(b"t&d".to_vec()),
        };
        let q = announce_query(&req);
        assert!(q.starts_with("info_hash=%2B%20%FFa%00"), "{q}");
        assert!(q.contains("&peer_id=-PW0001-abcdefghijkl&port=6881&uploaded=1&downloaded=2&left=0&compact=1&key=0000DEAD&numwant=50&event=started&trackerid=t%26d"), "{q}");
        assert_eq!(with_query("/announce?pk=1", "a=b"), "/announce?pk=1&a=b");
        assert_eq!(with_query("/announce", "a=b"), "/announce?a=b");
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n", 100).unwrap(),
            b"abcde"
        );
        assert!(matches!(dechunk(b"ff\r\nabc", 1000), Err(Error::Http(_))));
        assert!(matches!(
            dechunk(b"ff\r\nabc", 10),
            Err(Error::TooLarge(10))
        ));
        // Found by the tracker_response fuzz target in CI: a size of usize::MAX overflowed
        // `out.len() + size` (a panic with overflow checks, a slice past the end without).
        assert!(matches!(
            dechunk(b"1\r\na\r\nffffffffffffffff\r\nabc\r\n0\r\n\r\n", 4096),
            Err(Error::TooLarge(4096))
        ));
        // Chunk data runs to its CRLF, not past it.
        assert!(matches!(
            dechunk(b"3\r\nabcd\r\n0\r\n\r\n", 100),
            Err(Error::Http(_))
        ));
    }
}
