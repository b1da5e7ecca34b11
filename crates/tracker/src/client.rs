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
            // `//host/path` keeps the scheme; `/path` the scheme and the host.
            let location = match location {
                l if l.starts_with("//") => format!("{}:{l}", if tls { "https" } else { "http" }),
                l if l.starts_with('/') => {
                    path = l.to_string();
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
        let found = match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(mut addrs) => addrs.next().is_some_and(|a| {
                self.udp_ids
                    .contains(a, self.config.udp_connection_lifetime)
            }),
            Err(_) => false,
        };
        found
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
