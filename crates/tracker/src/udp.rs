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
    /// Tracker addresses that did not answer a connect lately, and when: tried after the
    /// others of their name, so that an announce an interval later (30 minutes, past any
    /// connection id) does not wait on a silent address again.
    silent: Mutex<HashMap<SocketAddr, Instant>>,
}

/// How long an address that did not answer is tried after the others of its name.
const SILENT_FOR: Duration = Duration::from_secs(3600);
/// Silent addresses remembered at most (a client of many trackers).
const MAX_SILENT: usize = 1024;

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
    fn silent(&self, addr: SocketAddr, failed: bool) {
        let mut silent = self.silent.lock().unwrap_or_else(|e| e.into_inner());
        if !failed {
            silent.remove(&addr);
            return;
        }
        if silent.len() >= MAX_SILENT {
            silent.retain(|_, at| at.elapsed() < SILENT_FOR);
            if silent.len() >= MAX_SILENT {
                silent.clear();
            }
        }
        silent.insert(addr, Instant::now());
    }
    /// `addrs` in order, those silent lately last.
    fn answering_first(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let silent = self.silent.lock().unwrap_or_else(|e| e.into_inner());
        let lately = |a: &SocketAddr| silent.get(a).is_some_and(|at| at.elapsed() < SILENT_FOR);
        let mut ordered: Vec<SocketAddr> = addrs.iter().copied().filter(|a| !lately(a)).collect();
        ordered.extend(addrs.iter().copied().filter(|a| lately(a)));
        ordered
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
    /// Whether `conn` was used by a request before this one (kept from an earlier
    /// announce, or from an earlier group of a scrape): an error answered to it may only
    /// mean the tracker restarted since.
    conn_used_before: bool,
}

impl Session<'_> {
    /// Sends `packet` (built for a transaction id) and waits for the matching reply, on the
    /// BEP 15 schedule's `attempts`: timeout `base * 2^n` for attempt n (the whole schedule is
    /// `0..=udp_max_retries`). Replies from other addresses or with another transaction id are
    /// ignored.
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

    /// A request that carries the connection id, on [`Session::exchange_attempts`]' schedule, but
    /// with the id obtained again before an attempt once it expired: retransmissions 15 and
    /// 45 s later can outlive the minute an id is good for, and a tracker drops or refuses
    /// an expired one (BEP 15: ask for a new id then).
    ///
    /// An error answered to an id kept from an earlier request (the tracker restarted, with
    /// a new secret, within the id's minute) gets one more try with a new id: the announce
    /// failed, and the tracker counted as failed, though it would have answered.
    async fn request(&mut self, build: &(dyn Fn(u64, u32) -> Vec<u8> + Sync)) -> Result<Vec<u8>> {
        let mut waited = Duration::ZERO;
        let mut kept_id = self.conn.is_some() && self.conn_used_before;
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
                other => {
                    self.conn_used_before = true;
                    return other;
                }
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
        self.obtain_connection_id(0..=self.cfg.udp_max_retries)
            .await
    }

    /// A connect exchange with attempts `attempts` of the schedule; the id it gets is kept.
    async fn obtain_connection_id(
        &mut self,
        attempts: std::ops::RangeInclusive<u32>,
    ) -> Result<u64> {
        let reply = self
            .exchange_attempts(attempts, &|tid| {
                let mut p = Vec::with_capacity(16);
                p.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
                p.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
                p.extend_from_slice(&tid.to_be_bytes());
                p
            })
            .await?;
        let id = parse_connect_reply(&reply)?;
        self.conn = Some((id, Instant::now()));
        self.conn_used_before = false;
        Ok(id)
    }

    /// A session with `addr` that has a connection id, from a connect exchange of attempts
    /// `attempts`.
    async fn connect(
        addr: SocketAddr,
        cfg: &ClientConfig,
        attempts: std::ops::RangeInclusive<u32>,
    ) -> Result<Session<'_>> {
        let local: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let socket = UdpSocket::bind(local).await?;
        // connected: only the tracker's datagrams arrive, and ICMP "port unreachable" is reported
        socket.connect(addr).await?;
        let mut session = Session {
            socket,
            addr,
            cfg,
            conn: None,
            conn_used_before: false,
        };
        session.obtain_connection_id(attempts).await?;
        Ok(session)
    }
}

async fn session<'a>(
    host: &str,
    port: u16,
    cfg: &'a ClientConfig,
    cache: &ConnectionCache,
) -> Result<Session<'a>> {
    let addrs = crate::http::resolve(host, port, cfg).await?;
    session_at(&addrs, cfg, cache).await
}

/// A session with the first of a tracker's addresses (in [`crate::http::connect_order`],
/// those silent lately last) that answers a connect, or with one whose connection id is kept
/// from an earlier request. Each address gets the first attempt of the BEP 15 schedule
/// (`udp_base_timeout`, 15 s), less where it refuses (ICMP port unreachable) or cannot be
/// reached from here (no route for its family); then the first that only timed out gets the
/// rest of the schedule, as a lone address would. A name listing an IPv6 address first, where
/// the tracker listens on IPv4 only, is so announced to at its IPv4 address.
async fn session_at<'a>(
    addrs: &[SocketAddr],
    cfg: &'a ClientConfig,
    cache: &ConnectionCache,
) -> Result<Session<'a>> {
    for &addr in addrs {
        if let Some(c) = cache.take(addr, cfg.udp_connection_lifetime) {
            return Ok(Session {
                socket: c.socket,
                addr,
                cfg,
                conn: Some((c.id, c.at)),
                conn_used_before: true,
            });
        }
    }
    let mut last = Error::Malformed("a tracker name without addresses".into());
    let mut first_timed_out = None;
    for addr in cache.answering_first(addrs) {
        match Session::connect(addr, cfg, 0..=0).await {
            Ok(session) => {
                cache.silent(addr, false);
                return Ok(session);
            }
            // it answered: another address of the name is the same tracker
            Err(e @ (Error::Failure { .. } | Error::Malformed(_))) => return Err(e),
            Err(e) => {
                tracing::debug!(tracker = %addr, error = %e, "UDP tracker address did not answer a connect");
                cache.silent(addr, true);
                if matches!(e, Error::Timeout(_)) {
                    first_timed_out.get_or_insert(addr);
                }
                last = e;
            }
        }
    }
    match first_timed_out {
        Some(addr) if cfg.udp_max_retries > 0 => {
            match Session::connect(addr, cfg, 1..=cfg.udp_max_retries).await {
                Ok(session) => {
                    cache.silent(addr, false);
                    Ok(session)
                }
                // the first attempt's wait counted too
                Err(Error::Timeout(waited)) => Err(Error::Timeout(waited + cfg.udp_base_timeout)),
                Err(e) => Err(e),
            }
        }
        _ => Err(last),
    }
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
    let addrs = crate::http::resolve(host, port, cfg).await?;
    announce_at(&addrs, req, cfg, cache).await
}

/// [`announce`] to a tracker at `addrs`, in the order [`session_at`] tries them.
async fn announce_at(
    addrs: &[SocketAddr],
    req: &AnnounceRequest,
    cfg: &ClientConfig,
    cache: &ConnectionCache,
) -> Result<AnnounceResponse> {
    let mut s = session_at(addrs, cfg, cache).await?;
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
    use crate::server::{ServerConfig, TrackerServer};
    use crate::Event;

    fn request(info_hash: InfoHash) -> AnnounceRequest {
        AnnounceRequest {
            info_hash,
            peer_id: *b"-PW0001-udpfallback0",
            port: 6881,
            uploaded: 0,
            downloaded: 0,
            left: 1,
            event: Event::Started,
            numwant: None,
            key: 1,
            tracker_id: None,
        }
    }

    /// A name may resolve to an IPv6 address first where the tracker listens on IPv4 only
    /// (`localhost` as `::1, 127.0.0.1`): the announce goes on to the next address, at once
    /// where the first refuses and after one attempt's timeout where it drops the datagram,
    /// and the next announce, past the connection id's lifetime too, goes straight to the
    /// address that answered. The addresses are given as a resolver would list them (no name
    /// here resolves to both families); the tracker, the silent socket and the closed port
    /// are real.
    #[tokio::test]
    async fn an_announce_goes_on_to_the_next_address_of_the_name() {
        let cfg = ClientConfig {
            udp_base_timeout: Duration::from_secs(1),
            udp_max_retries: 2,
            udp_connection_lifetime: Duration::from_millis(300),
            ..ClientConfig::default()
        };
        let tracker = TrackerServer::start("127.0.0.1:0".parse().unwrap(), ServerConfig::default())
            .await
            .unwrap();
        // A port bound and closed again: nothing listens there.
        let Ok(bound) = std::net::UdpSocket::bind("[::1]:0") else {
            println!("no IPv6 loopback here: skipped");
            return;
        };
        let closed = bound.local_addr().unwrap();
        drop(bound);
        let silent = UdpSocket::bind("[::1]:0").await.unwrap();
        let cache = ConnectionCache::default();

        let refused_first = [closed, tracker.local_addr()];
        let started = Instant::now();
        announce_at(&refused_first, &request([1; 20]), &cfg, &cache)
            .await
            .expect("announced past a closed port");
        assert!(
            started.elapsed() < cfg.udp_base_timeout,
            "no wait for a refusal"
        );
        assert_eq!(tracker.scrape(&[1; 20]).incomplete, 1);

        let cache = ConnectionCache::default();
        let silent_first = [silent.local_addr().unwrap(), tracker.local_addr()];
        let started = Instant::now();
        announce_at(&silent_first, &request([2; 20]), &cfg, &cache)
            .await
            .expect("announced past a silent address");
        let took = started.elapsed();
        assert!(
            took >= cfg.udp_base_timeout && took < 3 * cfg.udp_base_timeout,
            "one attempt's timeout, then the next address: {took:?}"
        );
        assert_eq!(tracker.scrape(&[2; 20]).incomplete, 1);
        tokio::time::sleep(cfg.udp_connection_lifetime).await;
        announce_at(&silent_first, &request([3; 20]), &cfg, &cache)
            .await
            .expect("announced again");
        assert_eq!(tracker.scrape(&[3; 20]).incomplete, 1);
        let mut datagram = [0u8; 100];
        let mut asked = 0;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(50), silent.recv_from(&mut datagram)).await
        {
            asked += 1;
        }
        assert_eq!(
            asked, 1,
            "the silent address asked once, the other first after"
        );

        // Where no address answers, the rest of the schedule goes to the first that only
        // timed out, not to the last, which refused at once: a lost datagram cost the whole
        // announce when an unreachable address came last.
        let short = ClientConfig {
            udp_base_timeout: Duration::from_millis(200),
            udp_max_retries: 1,
            ..ClientConfig::default()
        };
        let none_answers = [silent.local_addr().unwrap(), closed];
        let err = announce_at(
            &none_answers,
            &request([4; 20]),
            &short,
            &ConnectionCache::default(),
        )
        .await
        .expect_err("nobody answers");
        assert!(
            matches!(err, Error::Timeout(waited) if waited == Duration::from_millis(600)),
            "{err:?}"
        );
        let mut asked = 0;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(50), silent.recv_from(&mut datagram)).await
        {
            asked += 1;
        }
        assert_eq!(
            asked, 2,
            "both attempts of the schedule at the silent address"
        );
    }

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
