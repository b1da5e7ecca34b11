//! Trackers: everything between a torrent and the peers a tracker hands out.
//!
//! This crate owns both sides of the tracker protocols:
//!
//! - the **client**: HTTP and HTTPS announce and scrape (BEP 3, BEP 23 compact peers, BEP 7 `peers6`,
//!   BEP 48 scrape), UDP announce and scrape (BEP 15), multitracker tiers (BEP 12) and the
//!   announce loop with its interval rules and back-off ([`announcer`]);
//! - a small **test tracker server** ([`server`]): open, in memory, bounded, HTTP `/announce`
//!   and `/scrape` plus UDP on the same port, used by `pow tracker --listen` and the tests.
//!
//! The HTTP side is a deliberately small HTTP/1.1 implementation on tokio, not a framework:
//! tracker queries carry raw binary bytes (`info_hash`, `peer_id`) percent-encoded, which
//! frameworks that decode queries as UTF-8 mangle, and the client needs hard caps on connect
//! time, read time and response size. `https://` runs the same exchange over rustls with
//! `pow_tls`'s configuration. It knows nothing about .torrent files: callers pass info-hashes and URLs.

pub mod announcer;
mod client;
mod http;
pub mod percent;
mod response;
pub mod server;
mod udp;
mod url;

pub use client::{Client, ClientConfig};

/// Entry points for `fuzz/fuzz_targets/tracker_response.rs`: the same code paths the client
/// runs on what a tracker sends, without sockets. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::Result;

    /// An HTTP tracker's whole response as it arrives on the socket, then its body as an
    /// announce (status 200) — what `Client::announce` does after connecting.
    pub async fn http_announce_response(bytes: &[u8], max_body: usize) -> Result<()> {
        let mut reader = bytes;
        let response = crate::http::read_response(&mut reader, max_body).await?;
        if response.status == 200 {
            crate::response::parse_announce(&response.body)?;
            crate::response::parse_scrape(&response.body)?;
        }
        Ok(())
    }

    /// A UDP datagram as the reply to connect, announce (v4 and v6) and scrape.
    pub fn udp_reply(datagram: &[u8], tid: u32, scrape_hashes: usize) {
        if let crate::udp::Reply::Answer(reply) = crate::udp::classify_reply(datagram, tid) {
            let _ = crate::udp::parse_connect_reply(reply);
            let _ = crate::udp::parse_announce_reply(reply, true);
            let _ = crate::udp::parse_announce_reply(reply, false);
            let _ = crate::udp::parse_scrape_reply(reply, scrape_hashes);
        }
    }
}
pub use http::scrape_url;
pub use response::{parse_announce, parse_compact_v4, parse_compact_v6, parse_scrape};
pub use url::TrackerUrl;

use std::net::SocketAddr;
use std::time::Duration;

/// SHA-1 info-hash of a v1 torrent.
pub type InfoHash = [u8; 20];
/// A peer id as sent to trackers.
pub type PeerId = [u8; 20];

/// The `event` of an announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A regular re-announce (no `event` parameter).
    None,
    Started,
    Completed,
    Stopped,
}

impl Event {
    /// The HTTP `event=` value (`None` sends no parameter).
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }
    /// The BEP 15 event code.
    pub fn udp_code(self) -> u32 {
        match self {
            Event::None => 0,
            Event::Completed => 1,
            Event::Started => 2,
            Event::Stopped => 3,
        }
    }
    pub fn from_udp_code(code: u32) -> Option<Event> {
        Some(match code {
            0 => Event::None,
            1 => Event::Completed,
            2 => Event::Started,
            3 => Event::Stopped,
            _ => return None,
        })
    }
}

/// One announce, as the client sends it.
#[derive(Debug, Clone)]
pub struct AnnounceRequest {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    /// Bytes still missing: exact, 0 when seeding.
    pub left: u64,
    pub event: Event,
    /// `None`: let the tracker choose (UDP sends -1).
    pub numwant: Option<u32>,
    /// Random per session; lets the tracker recognise us across IP changes.
    pub key: u32,
    /// The `tracker id` the tracker gave us before, echoed back.
    pub tracker_id: Option<Vec<u8>>,
}

/// What a tracker answered to an announce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// Seconds between regular announces.
    pub interval: Option<u32>,
    /// Seconds the client must wait at least between announces.
    pub min_interval: Option<u32>,
    /// Seeders.
    pub complete: Option<u32>,
    /// Leechers.
    pub incomplete: Option<u32>,
    pub warning: Option<String>,
    pub tracker_id: Option<Vec<u8>>,
    /// IPv4 and IPv6 peers (`peers` and `peers6`), in the tracker's order.
    pub peers: Vec<SocketAddr>,
}

/// Scrape counts for one torrent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrapeStats {
    pub complete: u32,
    pub incomplete: u32,
    pub downloaded: u32,
}

/// Everything that can go wrong talking to a tracker. Every variant is an ordinary,
/// expected outcome: trackers are remote and often broken.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad tracker URL {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("cannot resolve tracker host {0}")]
    Resolve(String),
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("TLS with {host} failed: {reason}{}", pow_tls::hint(reason))]
    Tls { host: String, reason: String },
    #[error("tracker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("I/O error talking to the tracker: {0}")]
    Io(#[from] std::io::Error),
    #[error("tracker response larger than the {0} byte limit")]
    TooLarge(usize),
    #[error("malformed HTTP response: {0}")]
    Http(String),
    #[error("tracker answered HTTP {status}")]
    Status { status: u16 },
    #[error("tracker refused: {reason}")]
    Failure {
        reason: String,
        /// The HTTP status it came with (200 for a plain BEP 3 failure), or None over UDP.
        status: Option<u16>,
    },
    #[error("malformed tracker response: {0}")]
    Malformed(String),
    #[error("this tracker has no scrape URL (BEP 48)")]
    NoScrape,
    #[error("no tracker in any tier answered; last error: {0}")]
    AllFailed(Box<Error>),
}

pub type Result<T> = std::result::Result<T, Error>;
