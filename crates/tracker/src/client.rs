//! One announce or scrape to one tracker URL, HTTP or UDP.

use crate::http::{self, announce_query, scrape_query, with_query};
use crate::response::{failure_reason, parse_announce, parse_scrape};
use crate::udp::{self, ConnectionCache};
use crate::{AnnounceRequest, AnnounceResponse, Error, InfoHash, Result, ScrapeStats, TrackerUrl};
use std::collections::HashMap;
use std::time::Duration;

/// Redirects an HTTP announce or scrape follows (libtorrent's and curl's default is 5).
pub const MAX_REDIRECTS: usize = 5;

/// Limits for talking to trackers. The defaults are for the real world; tests shrink them.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Resolving and TCP connect, each.
    pub connect_timeout: Duration,
    /// Sending the request and reading the whole HTTP response.
    pub read_timeout: Duration,
    /// Largest HTTP response body accepted.
    pub max_response_bytes: usize,
    /// BEP 15: the n-th UDP attempt waits `udp_base_timeout * 2^n` (15 s in the BEP).
    pub udp_base_timeout: Duration,
    /// Retransmissions after the first UDP attempt (8 in the BEP: about an hour in all).
    pub udp_max_retries: u32,
    /// How long a UDP connection id is used (BEP 15: one minute); tests shrink it.
    pub udp_connection_lifetime: Duration,
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(20),
            max_response_bytes: 1024 * 1024,
            udp_base_timeout: Duration::from_secs(15),
            udp_max_retries: 2,
            udp_connection_lifetime: crate::udp::CONNECTION_ID_LIFETIME,
            user_agent: concat!("pow/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// A tracker client: stateless apart from the UDP connection ids it reuses.
#[derive(Default)]
pub struct Client {
    pub config: ClientConfig,
    udp_ids: ConnectionCache,
}

impl Client {
    pub fn new(config: ClientConfig) -> Client {
        Client {
            config,
            udp_ids: ConnectionCache::default(),
        }
    }

    /// Announces to one tracker.
    pub async fn announce(&self, url: &str, req: &AnnounceRequest) -> Result<AnnounceResponse> {
        match TrackerUrl::parse(url)? {
            TrackerUrl::Http {
                tls,
                host,
                port,
                path_and_query,
            } => {
                let path = with_query(&path_and_query, &announce_query(req));
                let resp = self.get_following_redirects(tls, host, port, path).await?;
                check_status(resp.status, &resp.body)?;
                parse_announce(&resp.body)
            }
            TrackerUrl::Udp { host, port } => {
                udp::announce(&host, port, req, &self.config, &self.udp_ids).await
            }
        }
    }

    /// Scrapes one tracker for some info-hashes (BEP 48 over HTTP, BEP 15 over UDP).
    pub async fn scrape(
        &self,
        announce_url: &str,
        hashes: &[InfoHash],
    ) -> Result<HashMap<InfoHash, ScrapeStats>> {
        match TrackerUrl::parse(announce_url)? {
            TrackerUrl::Http { .. } => {
                let url = http::scrape_url(announce_url).ok_or(Error::NoScrape)?;
                let Ok(TrackerUrl::Http {
                    tls,
                    host,
                    port,
                    path_and_query,
                }) = TrackerUrl::parse(&url)
                else {
                    return Err(Error::NoScrape);
                };
                let path = with_query(&path_and_query, &scrape_query(hashes));
                let resp = self.get_following_redirects(tls, host, port, path).await?;
                check_status(resp.status, &resp.body)?;
                parse_scrape(&resp.body)
            }
            TrackerUrl::Udp { host, port } => {
                udp::scrape(&host, port, hashes, &self.config, &self.udp_ids).await
            }
        }
    }

    /// A GET that follows up to [`MAX_REDIRECTS`] redirects, as libtorrent, Transmission and
    /// aria2 do (a tracker moved to another host or to https answers 301 with its new URL,
    /// the query included). Never from https to plain http.
    async fn get_following_redirects(
        &self,
        mut tls: bool,
        mut host: String,
        mut port: u16,
        mut path: String,
    ) -> Result<http::HttpResponse> {
        for _ in 0..=MAX_REDIRECTS {
            let resp = http::get(tls, &host, port, &path, &self.config).await?;
            let (true, Some(location)) = (
                matches!(resp.status, 301 | 302 | 303 | 307 | 308),
                resp.location.as_deref(),
            ) else {
                return Ok(resp);
            };
            if location.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(Error::Http(format!(
                    "redirected to {location:?}, which is not a URL"
                )));
            }
            // `//host/path` keeps the scheme; `/path` the scheme and the host; a relative
            // reference (`announce2?...`, `../x`) is resolved against the path (RFC 3986 5.2).
            let location = match location {
                l if l.starts_with("//") => format!("{}:{l}", if tls { "https" } else { "http" }),
                l if !has_scheme(l) => {
                    let to = resolve_relative(&path, l);
                    if to == path {
                        return Err(Error::Http(format!(
                            "redirected ({}) to {location:?}, the same URL",
                            resp.status
                        )));
                    }
                    path = to;
                    continue;
                }
                l => l.to_string(),
            };
            match TrackerUrl::parse(&location) {
                Ok(TrackerUrl::Http {
                    tls: to_tls,
                    host: to_host,
                    port: to_port,
                    path_and_query,
                }) if to_tls || !tls => {
                    (tls, host, port, path) = (to_tls, to_host, to_port, path_and_query);
                }
                _ => {
                    return Err(Error::Http(format!(
                        "redirected ({}) to {location:?}, which is not followed",
                        resp.status
                    )))
                }
            }
        }
        Err(Error::Http(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// Whether a UDP connection id for this tracker is cached (ids are reused for 60 s).
    pub async fn has_udp_connection(&self, url: &str) -> bool {
        let Ok(TrackerUrl::Udp { host, port }) = TrackerUrl::parse(url) else {
            return false;
        };
        let Ok(addrs) = crate::http::resolve(&host, port, &self.config).await else {
            return false;
        };
        addrs.into_iter().any(|a| {
            self.udp_ids
                .contains(a, self.config.udp_connection_lifetime)
        })
    }
}

/// Whether a URI reference starts with a scheme (`http:`), as RFC 3986 3.1 spells one.
fn has_scheme(reference: &str) -> bool {
    let end = reference.find([':', '/', '?', '#']);
    match end {
        Some(at) if reference[at..].starts_with(':') && at > 0 => {
            let scheme = &reference[..at];
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        _ => false,
    }
}

/// The path and query a reference without a scheme or host (`/path`, `path`, `?query`) names
/// from `base` (a path and query): RFC 3986 5.2.2 and 5.2.3, dot segments removed.
fn resolve_relative(base: &str, reference: &str) -> String {
    let reference = reference.split('#').next().unwrap_or_default();
    let base_path = base.split('?').next().unwrap_or_default();
    if reference.is_empty() {
        return base.to_string();
    }
    if reference.starts_with('?') {
        return format!("{base_path}{reference}");
    }
    let (reference_path, query) = match reference.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (reference, None),
    };
    let directory = match reference_path.starts_with('/') {
        true => "",
        false => &base_path[..base_path.rfind('/').map_or(0, |at| at + 1)],
    };
    let merged = format!("{directory}{reference_path}");
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = merged.split('/').collect();
    for (i, segment) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *segment {
            "." | ".." => {
                if *segment == ".." && segments.len() > 1 {
                    segments.pop();
                }
                if last {
                    segments.push("");
                }
            }
            segment => segments.push(segment),
        }
    }
    let mut path = segments.join("/");
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    }
}

/// Non-200: the bencoded `failure reason` if the body has one, else the status.
fn check_status(status: u16, body: &[u8]) -> Result<()> {
    if status == 200 {
        return Ok(());
    }
    match failure_reason(body) {
        Some(reason) => Err(Error::Failure {
            reason,
            status: Some(status),
        }),
        None => Err(Error::Status { status }),
    }
}

#[cfg(test)]
mod tests {
    use super::{has_scheme, resolve_relative};

    /// RFC 3986 5.4.1's examples of references against `http://a/b/c/d;p?q`, those without a
    /// scheme or a host.
    #[test]
    fn relative_redirects_resolve_as_rfc_3986_says() {
        let base = "/b/c/d;p?q";
        for (reference, resolved) in [
            ("g", "/b/c/g"),
            ("./g", "/b/c/g"),
            ("/g", "/g"),
            ("/./g", "/g"),
            ("/../g", "/g"),
            ("/announce#x", "/announce"),
            ("g/", "/b/c/g/"),
            ("?y", "/b/c/d;p?y"),
            ("g?y", "/b/c/g?y"),
            ("#s", "/b/c/d;p?q"),
            ("g#s", "/b/c/g"),
            (";x", "/b/c/;x"),
            ("", "/b/c/d;p?q"),
            (".", "/b/c/"),
            ("./", "/b/c/"),
            ("..", "/b/"),
            ("../", "/b/"),
            ("../g", "/b/g"),
            ("../..", "/"),
            ("../../", "/"),
            ("../../g", "/g"),
            ("../../../g", "/g"),
            ("../../../../g", "/g"),
            ("g.", "/b/c/g."),
            (".g", "/b/c/.g"),
            ("g..", "/b/c/g.."),
            ("..g", "/b/c/..g"),
            ("./../g", "/b/g"),
            ("./g/.", "/b/c/g/"),
            ("g/./h", "/b/c/g/h"),
            ("g/../h", "/b/c/h"),
            ("g;x=1/./y", "/b/c/g;x=1/y"),
            ("g;x=1/../y", "/b/c/y"),
            ("g?y/./x", "/b/c/g?y/./x"),
            ("g?y/../x", "/b/c/g?y/../x"),
        ] {
            assert!(!has_scheme(reference), "{reference}");
            assert_eq!(resolve_relative(base, reference), resolved, "{reference}");
        }
        for absolute in [
            "http://a/b",
            "https://t.example/announce",
            "g:h",
            "udp+x://y",
        ] {
            assert!(has_scheme(absolute), "{absolute}");
        }
    }
}
