//! UDP tracker protocol (BEP 15): connect, announce, scrape, error; the wire format is shared
//! with the test server.

use crate::client::ClientConfig;
use crate::response::{parse_compact_v4, parse_compact_v6, tracker_text};
use crate::{AnnounceRequest, AnnounceResponse, Error, InfoHash, Result, ScrapeStats};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

pub(crate) const PROTOCOL_ID: u64 = 0x0417_2710_1980;
pub(crate) const ACTION_CONNECT: u32 = 0;
pub(crate) const ACTION_ANNOUNCE: u32 = 1;
pub(crate) const ACTION_SCRAPE: u32 = 2;
pub(crate) const ACTION_ERROR: u32 = 3;
/// A client may use a connection id for one minute (BEP 15).
pub(crate) const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(60);
/// At most this many info-hashes fit in one scrape request.
pub const MAX_SCRAPE_HASHES: usize = 74;

/// Connection ids per tracker address, reused for [`ClientConfig::udp_connection_lifetime`]. A tracker may
/// bind the id to our address and port, so the id is kept together with the socket it was
/// obtained on; a request takes both out exclusively and puts them back after a success
/// (concurrent requests to one tracker simply connect on their own socket).
#[derive(Default)]
pub(crate) struct ConnectionCache {
    ids: Mutex<HashMap<SocketAddr, Cached>>,
}

struct Cached {
    id: u64,
    at: Instant,
    socket: UdpSocket,
}

impl ConnectionCache {
    fn take(&self, addr: SocketAddr, lifetime: Duration) -> Option<Cached> {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.remove(&addr).filter(|c| c.at.elapsed() < lifetime)
    }
    fn put(&self, addr: SocketAddr, c: Cached, lifetime: Duration) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.retain(|_, c| c.at.elapsed() < lifetime);
        ids.insert(addr, c);
    }
    /// Whether a fresh connection id for this tracker is cached.
    pub(crate) fn contains(&self, addr: SocketAddr, lifetime: Duration) -> bool {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.get(&addr).is_some_and(|c| c.at.elapsed() < lifetime)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

struct Session<'a> {
    socket: UdpSocket,
    addr: SocketAddr,
    cfg: &'a ClientConfig,
    /// Connection id and when it was obtained.
    conn: Option<(u64, Instant)>,
}

impl Session<'_> {
    /// Sends `packet` (built for a transaction id) and waits for the matching reply, with the
    /// BEP 15 schedule: timeout `base * 2^n` for attempt n, `udp_max_retries` retransmissions.
    /// Replies from other addresses or with another transaction id are ignored.
    async fn exchange(&self, build: &(dyn Fn(u32) -> Vec<u8> + Sync)) -> Result<Vec<u8>> {
        self.exchange_attempts(0..=self.cfg.udp_max_retries, build)
            .await
    }

    /// [`Session::exchange`]'s attempts `attempts` only (their timeouts as in the schedule).
    async fn exchange_attempts(
        &self,
        attempts: std::ops::RangeInclusive<u32>,
        build: &(dyn Fn(u32) -> Vec<u8> + Sync),
    ) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut waited = Duration::ZERO;
        for attempt in attempts {
            let tid: u32 = rand::random();
            let packet = build(tid);
            if let Err(e) = self.socket.send(&packet).await {
                return Err(if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    Error::Connect {
                        addr: self.addr,
                        source: e,
                    }
                } else {
                    Error::Io(e)
                });
            }
            let wait = self
                .cfg
                .udp_base_timeout
                .saturating_mul(1u32 << attempt.min(8));
            waited += wait;
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let recv = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await;
                let n = match recv {
                    Err(_) => break, // retransmit
                    // ICMP port unreachable shows up as ConnectionRefused on some systems
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Err(Error::Connect {
                            addr: self.addr,
                            source: e,
                        })
                    }
                    Ok(Err(e)) => return Err(Error::Io(e)),
                    Ok(Ok(x)) => x,
                };
                match classify_reply(&buf[..n], tid) {
                    Reply::Ignore => {
                        tracing::debug!(tracker = %self.addr, "UDP reply too short or with a stale transaction id ignored");
                        continue;
                    }
                    Reply::Error(reason) => {
                        return Err(Error::Failure {
                            reason,
                            status: None,
                        })
                    }
                    Reply::Answer(reply) => return Ok(reply.to_vec()),
                }
            }
        }
        Err(Error::Timeout(waited))
    }

    /// A request that carries the connection id, on [`Session::exchange`]'s schedule, but
    /// with the id obtained again before an attempt once it expired: retransmissions 15 and
    /// 45 s later can outlive the minute an id is good for, and a tracker drops or refuses
    /// an expired one (BEP 15: ask for a new id then).
    ///
    /// An error answered to an id kept from an earlier request (the tracker restarted, with
    /// a new secret, within the id's minute) gets one more try with a new id: the announce
    /// failed, and the tracker counted as failed, though it would have answered.
    async fn request(&mut self, build: &(dyn Fn(u64, u32) -> Vec<u8> + Sync)) -> Result<Vec<u8>> {
        let mut waited = Duration::ZERO;
        let mut kept_id = self.conn.is_some();
        let mut attempt = 0;
        while attempt <= self.cfg.udp_max_retries {
            let conn = self.connection_id().await?;
            match self
                .exchange_attempts(attempt..=attempt, &|tid| build(conn, tid))
                .await
            {
                Err(Error::Timeout(w)) => waited += w,
                Err(Error::Failure { .. }) if kept_id => {
                    kept_id = false;
                    self.conn = None;
                    continue;
                }
                other => return other,
            }
            attempt += 1;
        }
        Err(Error::Timeout(waited))
    }

    async fn connection_id(&mut self) -> Result<u64> {
        if let Some((id, at)) = self.conn {
            if at.elapsed() < self.cfg.udp_connection_lifetime {
                return Ok(id);
            }
        }
        let reply = self
            .exchange(&|tid| {
                let mut p = Vec::with_capacity(16);
                p.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
                p.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
                p.extend_from_slice(&tid.to_be_bytes());
                p
            })
            .await?;
        let id = parse_connect_reply(&reply)?;
        self.conn = Some((id, Instant::now()));
        Ok(id)
    }
}

async fn session<'a>(
    host: &str,
    port: u16,
    cfg: &'a ClientConfig,
    cache: &ConnectionCache,
) -> Result<Session<'a>> {
    let addr = tokio::time::timeout(cfg.connect_timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| Error::Resolve(host.to_string()))?
        .map_err(|_| Error::Resolve(host.to_string()))?
        .next()
        .ok_or_else(|| Error::Resolve(host.to_string()))?;
    if let Some(c) = cache.take(addr, cfg.udp_connection_lifetime) {
        return Ok(Session {
            socket: c.socket,
            addr,
            cfg,
            conn: Some((c.id, c.at)),
        });
    }
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(local).await?;
    // connected: only the tracker's datagrams arrive, and ICMP "port unreachable" is reported
    socket.connect(addr).await?;
    Ok(Session {
        socket,
        addr,
        cfg,
        conn: None,
    })
}

impl Session<'_> {
    /// Keeps the socket and its connection id for the next request to this tracker.
    fn keep(self, cache: &ConnectionCache) {
        if let Some((id, at)) = self.conn {
            cache.put(
                self.addr,
                Cached {
                    id,
                    at,
                    socket: self.socket,
                },
                self.cfg.udp_connection_lifetime,
            );
        }
    }
}

pub(crate) async fn announce(
    host: &str,
    port: u16,
    req: &AnnounceRequest,
    cfg: &ClientConfig,
    cache: &ConnectionCache,
) -> Result<AnnounceResponse> {
    let mut s = session(host, port, cfg, cache).await?;
    let build = |conn: u64, tid: u32| {
        let mut p = Vec::with_capacity(98);
        p.extend_from_slice(&conn.to_be_bytes());
        p.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
        p.extend_from_slice(&tid.to_be_bytes());
        p.extend_from_slice(&req.info_hash);
        p.extend_from_slice(&req.peer_id);
        p.extend_from_slice(&req.downloaded.to_be_bytes());
        p.extend_from_slice(&req.left.to_be_bytes());
        p.extend_from_slice(&req.uploaded.to_be_bytes());
        p.extend_from_slice(&req.event.udp_code().to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes()); // ip: the sender's
        p.extend_from_slice(&req.key.to_be_bytes());
        let numwant: i32 = req
            .numwant
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
            .unwrap_or(-1);
        p.extend_from_slice(&numwant.to_be_bytes());
        p.extend_from_slice(&req.port.to_be_bytes());
        p
    };
    // on any error the session is dropped: a stale id is the usual cause of an error action
    let reply = s.request(&build).await?;
    let response = parse_announce_reply(&reply, s.addr.is_ipv4())?;
    s.keep(cache);
    Ok(response)
}

pub(crate) async fn scrape(
    host: &str,
    port: u16,
    hashes: &[InfoHash],
    cfg: &ClientConfig,
    cache: &ConnectionCache,
) -> Result<HashMap<InfoHash, ScrapeStats>> {
    let mut s = session(host, port, cfg, cache).await?;
    let mut out = HashMap::new();
    for group in hashes.chunks(MAX_SCRAPE_HASHES) {
        let reply = s
            .request(&|conn, tid| {
                let mut p = Vec::with_capacity(16 + 20 * group.len());
                p.extend_from_slice(&conn.to_be_bytes());
                p.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
                p.extend_from_slice(&tid.to_be_bytes());
                for h in group {
                    p.extend_from_slice(h);
                }
                p
            })
            .await?;
        let stats = parse_scrape_reply(&reply, group.len())?;
        out.extend(group.iter().copied().zip(stats));
    }
    s.keep(cache);
    Ok(out)
}

/// What a datagram from the tracker is, for the request with transaction id `tid`.
pub(crate) enum Reply<'a> {
    /// Too short, or for another request: keep waiting.
    Ignore,
    /// The tracker's error action, with its message.
    Error(String),
    /// The reply to parse.
    Answer(&'a [u8]),
}

pub(crate) fn classify_reply(reply: &[u8], tid: u32) -> Reply<'_> {
    if reply.len() < 8 || u32_at(reply, 4) != tid {
        return Reply::Ignore;
    }
    if u32_at(reply, 0) == ACTION_ERROR {
        return Reply::Error(tracker_text(&reply[8..]));
    }
    Reply::Answer(reply)
}

/// The connection id of a connect reply.
pub(crate) fn parse_connect_reply(reply: &[u8]) -> Result<u64> {
    if reply.len() < 16 || u32_at(reply, 0) != ACTION_CONNECT {
        return Err(Error::Malformed(format!(
            "UDP connect reply of {} bytes, action {}",
            reply.len(),
            reply.get(..4).map_or(0, |_| u32_at(reply, 0))
        )));
    }
    Ok(u64_at(reply, 8))
}

/// An announce reply: interval, leechers, seeders, then compact peers of the tracker's family.
pub(crate) fn parse_announce_reply(reply: &[u8], ipv4: bool) -> Result<AnnounceResponse> {
    if reply.len() < 20 || u32_at(reply, 0) != ACTION_ANNOUNCE {
        return Err(Error::Malformed(format!(
            "UDP announce reply of {} bytes, action {}",
            reply.len(),
            reply.get(..4).map_or(0, |_| u32_at(reply, 0))
        )));
    }
    let peers = if ipv4 {
        parse_compact_v4(&reply[20..])
    } else {
        parse_compact_v6(&reply[20..])
    };
    Ok(AnnounceResponse {
        interval: Some(u32_at(reply, 8)),
        min_interval: None,
        incomplete: Some(u32_at(reply, 12)),
        complete: Some(u32_at(reply, 16)),
        warning: None,
        tracker_id: None,
        peers,
    })
}

/// A scrape reply for `hashes` info-hashes, in request order.
pub(crate) fn parse_scrape_reply(reply: &[u8], hashes: usize) -> Result<Vec<ScrapeStats>> {
    if reply.len() < 8 || u32_at(reply, 0) != ACTION_SCRAPE || reply.len() != 8 + 12 * hashes {
        return Err(Error::Malformed(format!(
            "UDP scrape reply of {} bytes for {hashes} hashes",
            reply.len()
        )));
    }
    Ok((0..hashes)
        .map(|i| {
            let at = 8 + 12 * i;
            ScrapeStats {
                complete: u32_at(reply, at),
                downloaded: u32_at(reply, at + 4),
                incomplete: u32_at(reply, at + 8),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP tracker's error text is made fit to print, as an HTTP tracker's failure reason.
    #[test]
    fn an_error_reply_is_made_fit_to_print() {
        let mut reply = ACTION_ERROR.to_be_bytes().to_vec();
        reply.extend_from_slice(&7u32.to_be_bytes());
        reply.extend_from_slice(b"\x1b[2Jgone\r\n");
        reply.extend_from_slice(&[b'x'; 70_000]);
        let Reply::Error(reason) = classify_reply(&reply, 7) else {
            panic!("not an error reply");
        };
        assert_eq!(
            reason,
            format!("\u{fffd}[2Jgone\u{fffd}\u{fffd}{}…", "x".repeat(190))
        );
    }
}
