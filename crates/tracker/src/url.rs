//! Tracker URLs: `http[s]://host[:port]/path[?query]` and `udp://host:port[/...]`.

use crate::{Error, Result};

/// A parsed tracker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerUrl {
    Http {
        /// `https://`: the exchange runs over TLS (`pow_tls`).
        tls: bool,
        host: String,
        port: u16,
        /// Path and query as written (`/announce?passkey=x`), starting with `/`.
        path_and_query: String,
    },
    Udp {
        host: String,
        port: u16,
    },
}

fn bad(url: &str, reason: &'static str) -> Error {
    Error::BadUrl {
        url: url.to_string(),
        reason,
    }
}

/// Splits `host[:port]` (IPv6 as `[::1]:port`).
fn host_port(url: &str, authority: &str, default_port: Option<u16>) -> Result<(String, u16)> {
    if authority.contains('@') {
        return Err(bad(url, "user info is not supported"));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(|| bad(url, "unclosed '['"))?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad(url, "junk after IPv6 address")),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad(url, "no host"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad(url, "bad port"))?,
        None => default_port.ok_or_else(|| bad(url, "a port is required"))?,
    };
    if port == 0 {
        return Err(bad(url, "port 0"));
    }
    Ok((host.to_string(), port))
}

impl TrackerUrl {
    pub fn parse(url: &str) -> Result<TrackerUrl> {
        let lower = url.to_ascii_lowercase();
        let http = if lower.starts_with("http://") {
            Some((false, &url[7..], 80))
        } else if lower.starts_with("https://") {
            Some((true, &url[8..], 443))
        } else {
            None
        };
        if let Some((tls, rest, default_port)) = http {
            let (authority, path) = match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let path = if path.starts_with('?') {
                format!("/{path}")
            } else {
                path.to_string()
            };
            let path = match path.find('#') {
                Some(i) => path[..i].to_string(),
                None => path,
            };
            if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(bad(url, "spaces or control characters in the path"));
            }
            let (host, port) = host_port(url, authority, Some(default_port))?;
            Ok(TrackerUrl::Http {
                tls,
                host,
                port,
                path_and_query: path,
            })
        } else if let Some(rest) = lower.strip_prefix("udp://").map(|_| &url[6..]) {
            let authority = match rest.find(['/', '?']) {
                Some(i) => &rest[..i],
                None => rest,
            };
            let (host, port) = host_port(url, authority, None)?;
            Ok(TrackerUrl::Udp { host, port })
        } else {
            Err(bad(url, "scheme must be http://, https:// or udp://"))
        }
    }

    pub fn host(&self) -> &str {
        match self {
            TrackerUrl::Http { host, .. } | TrackerUrl::Udp { host, .. } => host,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            TrackerUrl::Http { port, .. } | TrackerUrl::Udp { port, .. } => *port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_https_and_udp() {
        assert_eq!(
            TrackerUrl::parse("http://127.0.0.1:6969/announce?passkey=a%20b").unwrap(),
            TrackerUrl::Http {
                tls: false,
                host: "127.0.0.1".into(),
                port: 6969,
                path_and_query: "/announce?passkey=a%20b".into()
            }
        );
        assert_eq!(
            TrackerUrl::parse("HTTP://example.org/ann").unwrap().port(),
            80
        );
        assert_eq!(
            TrackerUrl::parse("udp://[::1]:6969/announce").unwrap(),
            TrackerUrl::Udp {
                host: "::1".into(),
                port: 6969
            }
        );
        assert!(TrackerUrl::parse("udp://127.0.0.1/announce").is_err());
        assert_eq!(
            TrackerUrl::parse("HTTPS://tracker.example.org/announce").unwrap(),
            TrackerUrl::Http {
                tls: true,
                host: "tracker.example.org".into(),
                port: 443,
                path_and_query: "/announce".into()
            }
        );
        assert!(TrackerUrl::parse("ftp://x/announce").is_err());
        assert!(TrackerUrl::parse("http://:80/announce").is_err());
        assert!(TrackerUrl::parse("http://x:0/announce").is_err());
        assert!(TrackerUrl::parse("http://x:99999/announce").is_err());
    }
}
