//! Acceptance 4: the test tracker rejects malformed announces with a bencoded
//! `failure reason`, and stays bounded under 10,000 announces from 1,000 peers.

use pow_tracker::percent::encode;
use pow_tracker::server::{ServerConfig, TrackerServer};
use pow_tracker::{AnnounceRequest, Client, ClientConfig, Error, Event};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

async fn raw_get(addr: SocketAddr, target: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let status = std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap();
    (status, buf[head_end..].to_vec())
}

fn failure_of(body: &[u8]) -> String {
    let node = pow_bencode::decode(body).expect("bencoded reply");
    node.get("failure reason")
        .and_then(|n| n.as_str())
        .unwrap_or_else(|| panic!("no failure reason in {:?}", String::from_utf8_lossy(body)))
        .to_string()
}

fn good_query() -> String {
    format!(
        "info_hash={}&peer_id={}&port=6881&uploaded=0&downloaded=0&left=5&event=started",
        encode(&[0xfe; 20]),
        encode(b"-PW0001-000000000000")
    )
}

#[tokio::test]
async fn malformed_announces_get_a_bencoded_failure_reason() {
    let server = TrackerServer::start("127.0.0.1:0".parse().unwrap(), ServerConfig::default())
        .await
        .unwrap();
    let addr = server.local_addr();
    let good = good_query();
    let (status, body) = raw_get(addr, &format!("/announce?{good}")).await;
    assert_eq!(status, 200);
    assert!(pow_bencode::decode(&body)
        .unwrap()
        .get("interval")
        .is_some());

    let ih = encode(&[0xfe; 20]);
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace(&ih, &encode(&[0xfe; 19])),
            "info_hash must be 20 bytes",
        ),
        (
            good.replace(&ih, &encode(&[0xfe; 21])),
            "info_hash must be 20 bytes",
        ),
        (good.replace("port=6881", "port=0"), "invalid port 0"),
        (good.replace("port=6881", "port=x"), "port is not"),
        (good.replace("&left=5", ""), "missing left"),
        (
            good.replace(&format!("info_hash={ih}&"), ""),
            "missing info_hash",
        ),
        (good.replace("peer_id=", "peerid="), "missing peer_id"),
        (
            good.replace("event=started", "event=finished"),
            "invalid event",
        ),
        (good.replace("uploaded=0", "uploaded=-1"), "uploaded"),
        (format!("{good}&info_hash=%zz"), "percent"),
        (String::new(), "missing"),
    ];
    for (q, want) in &cases {
        let (status, body) = raw_get(addr, &format!("/announce?{q}")).await;
        assert_eq!(status, 200, "{q}");
        let reason = failure_of(&body);
        assert!(reason.contains(want), "{q}: {reason:?} lacks {want:?}");
    }
    assert_eq!(server.stats().rejected, cases.len() as u64);
    assert_eq!(server.stats().peers, 1, "rejected announces add nobody");

    // scrape with a bad hash, unknown path
    let (_, body) = raw_get(addr, "/scrape?info_hash=abc").await;
    assert!(failure_of(&body).contains("20 bytes"));
    let (status, body) = raw_get(addr, "/other").await;
    assert_eq!(status, 404);
    failure_of(&body);

    // our client shows the reason
    let client = Client::new(ClientConfig::default());
    let req = started(0, 0);
    let err = client
        .announce(&server.http_announce_url(), &req)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Failure { .. }), "{err:?}");
    assert_eq!(err.to_string(), "tracker refused: invalid port 0");
    // and over UDP: port 0 and bad event are error actions
    let err = client
        .announce(&server.udp_announce_url(), &req)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "tracker refused: invalid port 0");
}

#[tokio::test]
async fn udp_rejects_bad_connection_ids_and_events() {
    let server = TrackerServer::start("127.0.0.1:0".parse().unwrap(), ServerConfig::default())
        .await
        .unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server.local_addr()).await.unwrap();
    let mut buf = [0u8; 1024];
    // announce with a made-up connection id
    let mut p = 12345u64.to_be_bytes().to_vec();
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&77u32.to_be_bytes());
    p.resize(98, 1);
    sock.send(&p).await.unwrap();
    let n = sock.recv(&mut buf).await.unwrap();
    assert_eq!(&buf[..8], &[0, 0, 0, 3, 0, 0, 0, 77]);
    assert_eq!(&buf[8..n], b"invalid connection id");
    // connect, then announce with event 9
    let mut c = 0x41727101980u64.to_be_bytes().to_vec();
    c.extend_from_slice(&0u32.to_be_bytes());
    c.extend_from_slice(&5u32.to_be_bytes());
    sock.send(&c).await.unwrap();
    let n = sock.recv(&mut buf).await.unwrap();
    assert_eq!(n, 16);
    let conn = &buf[8..16].to_vec();
    let mut p = conn.clone();
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&6u32.to_be_bytes());
    p.resize(80, 1);
    p.extend_from_slice(&9u32.to_be_bytes()); // event
    p.resize(96, 0);
    p.extend_from_slice(&6881u16.to_be_bytes());
    sock.send(&p).await.unwrap();
    let n = sock.recv(&mut buf).await.unwrap();
    assert_eq!(&buf[8..n], b"invalid event");
    assert_eq!(server.stats().rejected, 2);
}

/// What one tracker answers a bad packet with, sent on to another (as a packet with a forged
/// source would have it), gets no answer: both answered every such packet with an error of
/// their own, which the other took for another bad packet, without end.
#[tokio::test]
async fn a_trackers_error_reply_sent_to_another_tracker_gets_no_answer() {
    let start = || TrackerServer::start("127.0.0.1:0".parse().unwrap(), ServerConfig::default());
    let (a, b) = (start().await.unwrap(), start().await.unwrap());
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 1024];
    let mut bad_connect = 1u64.to_be_bytes().to_vec();
    bad_connect.extend_from_slice(&0u32.to_be_bytes());
    bad_connect.extend_from_slice(&7u32.to_be_bytes());
    let connect = connect_request();
    let mut bad_id = 12345u64.to_be_bytes().to_vec();
    bad_id.extend_from_slice(&1u32.to_be_bytes());
    bad_id.extend_from_slice(&9u32.to_be_bytes());
    bad_id.resize(98, 1);
    for request in [bad_connect, connect, bad_id] {
        sock.send_to(&request, a.local_addr()).await.unwrap();
        let n = sock.recv(&mut buf).await.unwrap();
        let reply = buf[..n].to_vec();
        println!(
            "A answered {} bytes: {:?}",
            n,
            String::from_utf8_lossy(&reply[8..])
        );
        sock.send_to(&reply, b.local_addr()).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await;
        assert!(answer.is_err(), "B answered A's reply {reply:?}");
    }
    // B still answers requests.
    sock.send_to(&connect_request(), b.local_addr())
        .await
        .unwrap();
    let n = sock.recv(&mut buf).await.unwrap();
    assert_eq!(n, 16);
}

/// A tracker restarted (with a new secret) within the minute a connection id is good for: the
/// next announce, with the id kept from before, is answered with an error, and asks for a new
/// id and is answered (it failed, and the tracker counted as failed).
#[tokio::test]
async fn an_announce_with_an_id_from_before_a_tracker_restart_gets_a_new_one() {
    let first = TrackerServer::start("127.0.0.1:0".parse().unwrap(), ServerConfig::default())
        .await
        .unwrap();
    let (addr, url) = (first.local_addr(), first.udp_announce_url());
    let client = Client::new(ClientConfig::default());
    let req = started(6881, 5);
    client.announce(&url, &req).await.unwrap();
    drop(first);
    let mut second = None;
    for _ in 0..100 {
        // The aborted tasks let go of the port a moment later.
        match TrackerServer::start(addr, ServerConfig::default()).await {
            Ok(server) => {
                second = Some(server);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let second = second.expect("the port came free");
    let again = client.announce(&url, &req).await;
    assert!(again.is_ok(), "{again:?}");
    assert_eq!(second.stats().peers, 1);
    assert_eq!(second.stats().rejected, 1, "the kept id was refused once");
}

/// A `started` announce of torrent [1; 20] by peer [2; 20].
fn started(port: u16, left: u64) -> AnnounceRequest {
    AnnounceRequest {
        info_hash: [1; 20],
        peer_id: [2; 20],
        port,
        uploaded: 0,
        downloaded: 0,
        left,
        event: Event::Started,
        numwant: None,
        key: 0,
        tracker_id: None,
    }
}

fn connect_request() -> Vec<u8> {
    let mut connect = 0x41727101980u64.to_be_bytes().to_vec();
    connect.extend_from_slice(&0u32.to_be_bytes());
    connect.extend_from_slice(&8u32.to_be_bytes());
    connect
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_announces_from_a_thousand_peers_stay_bounded() {
    let cfg = ServerConfig {
        interval: Duration::from_secs(600),
        max_torrents: 20,
        max_peers_per_torrent: 200,
        ..ServerConfig::default()
    };
    let server = TrackerServer::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let http = server.http_announce_url();
    let udp = server.udp_announce_url();
    let rss_before = vm_rss_kib();
    // 1,000 peers (ports 20000..21000) x 10 announces, half HTTP half UDP, 8 workers in
    // parallel. Even peers share one hot torrent (over the 200 peer cap), the others are
    // spread over 50 torrents (over the 20 torrent cap).
    let mut workers = Vec::new();
    for w in 0..8u32 {
        let (http, udp) = (http.clone(), udp.clone());
        workers.push(tokio::spawn(async move {
            let client = Client::new(ClientConfig::default());
            let mut ok = 0u32;
            for i in (w..10_000).step_by(8) {
                let peer = i % 1000;
                let round = i / 1000;
                let req = AnnounceRequest {
                    info_hash: if peer % 2 == 0 {
                        [0xee; 20]
                    } else {
                        [(peer % 50) as u8; 20]
                    },
                    peer_id: [(peer % 251) as u8; 20],
                    port: 20_000 + peer as u16,
                    uploaded: 0,
                    downloaded: 0,
                    left: u64::from(peer % 3),
                    event: if round == 0 {
                        Event::Started
                    } else {
                        Event::None
                    },
                    numwant: Some(200),
                    key: peer,
                    tracker_id: None,
                };
                let url = if i % 2 == 0 { &http } else { &udp };
                let r = client.announce(url, &req).await.expect("announce");
                assert!(r.peers.len() <= 200);
                ok += 1;
            }
            ok
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert_eq!(total, 10_000);
    let s = server.stats();
    assert_eq!(s.announces, 10_000);
    assert!(s.torrents <= 20, "{s:?}");
    assert!(s.peers <= 20 * 200, "{s:?}");
    assert!(s.evicted_torrents > 0, "{s:?}");
    assert!(s.evicted_peers > 0, "{s:?}");
    // the hot torrent is kept (most recently active) and full
    let hot = server.scrape(&[0xee; 20]);
    assert_eq!(hot.complete + hot.incomplete, 200, "{s:?}");
    let grown = vm_rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    // still serving
    let (status, _) = raw_get(server.local_addr(), &format!("/announce?{}", good_query())).await;
    assert_eq!(status, 200);
    eprintln!("stats after 10,000 announces: {s:?}, RSS growth {grown} KiB");
}

/// A BEP 15 client speaking raw packets from its own address, as another host would.
struct UdpHost {
    sock: UdpSocket,
    connection_id: [u8; 8],
}

impl UdpHost {
    async fn connect(from: &str, tracker: SocketAddr) -> UdpHost {
        let sock = UdpSocket::bind((from, 0)).await.unwrap();
        sock.connect(tracker).await.unwrap();
        let mut p = 0x41727101980u64.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
        sock.send(&p).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
            .await
            .expect("connect answered")
            .unwrap();
        assert_eq!(n, 16);
        UdpHost {
            sock,
            connection_id: buf[8..16].try_into().unwrap(),
        }
    }

    /// Announces `started`: Ok on an announce reply, Err with the message of an error reply.
    async fn announce(&self, info_hash: [u8; 20], port: u16) -> Result<(), String> {
        let mut p = self.connection_id.to_vec();
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&9u32.to_be_bytes());
        p.extend_from_slice(&info_hash);
        p.extend_from_slice(b"-PW0001-flood0000000");
        p.extend_from_slice(&[0; 16]); // downloaded, left
        p.extend_from_slice(&[0; 8]); // uploaded
        p.extend_from_slice(&2u32.to_be_bytes()); // started
        p.extend_from_slice(&[0; 8]); // ip, key
        p.extend_from_slice(&50u32.to_be_bytes());
        p.extend_from_slice(&port.to_be_bytes());
        self.sock.send(&p).await.unwrap();
        let mut buf = [0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(2), self.sock.recv(&mut buf))
            .await
            .expect("announce answered")
            .unwrap();
        match buf[3] {
            1 => Ok(()),
            3 => Err(String::from_utf8_lossy(&buf[8..n]).into_owned()),
            other => panic!("action {other}"),
        }
    }
}

#[tokio::test]
async fn one_address_announcing_ever_new_torrents_and_ports_is_refused_past_its_share() {
    let server = TrackerServer::start("127.0.0.1:0".parse().unwrap(), ServerConfig::default())
        .await
        .unwrap();
    let per_ip = ServerConfig::default().max_peers_per_ip;
    // 127.0.0.2 floods: each announce a new info-hash from a new port
    let flood = UdpHost::connect("127.0.0.2", server.local_addr()).await;
    let mut refused = Vec::new();
    for n in 0..per_ip as u32 + 200 {
        let mut info_hash = [0xf1; 20];
        info_hash[..4].copy_from_slice(&n.to_be_bytes());
        if let Err(reason) = flood.announce(info_hash, 10_000 + n as u16).await {
            refused.push((n, reason));
        }
    }
    assert_eq!(refused.len(), 200);
    assert_eq!(
        refused[0].0, per_ip as u32,
        "refused from the first past its share"
    );
    assert!(
        refused[0].1.starts_with("too many peers from your address"),
        "{}",
        refused[0].1
    );
    let s = server.stats();
    assert_eq!((s.peers, s.torrents, s.rejected), (per_ip, per_ip, 200));
    // 127.0.0.1 is not held back: it joins a torrent of the flood's and a new one
    let mut floods_first = [0xf1; 20];
    floods_first[..4].fill(0);
    let client = Client::new(ClientConfig::default());
    for info_hash in [floods_first, [1; 20]] {
        let req = AnnounceRequest {
            info_hash,
            peer_id: [2; 20],
            port: 6881,
            uploaded: 0,
            downloaded: 0,
            left: 1,
            event: Event::Started,
            numwant: None,
            key: 0,
            tracker_id: None,
        };
        let r = client
            .announce(&server.udp_announce_url(), &req)
            .await
            .expect("another address announces");
        let flooders: Vec<SocketAddr> = if info_hash == floods_first {
            vec!["127.0.0.2:10000".parse().unwrap()]
        } else {
            vec![]
        };
        assert_eq!(r.peers, flooders);
    }
    assert_eq!(server.stats().peers, per_ip + 2);
}

/// GET `target` from a socket bound to `from`, as another host.
async fn get_from(from: &str, addr: SocketAddr, target: &str) -> (u16, Vec<u8>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let status = std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap();
    (status, buf[head_end..].to_vec())
}

/// Whether the server closes `s` within `within`, reading and discarding what it sends.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn one_hosts_idle_connections_do_not_keep_another_host_from_announcing() {
    let cfg = ServerConfig {
        max_http_connections: 8,
        max_http_connections_per_ip: 4,
        ..ServerConfig::default()
    };
    let server = TrackerServer::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let addr = server.local_addr();
    // 127.0.0.3 opens as many connections as the server has slots, and sends nothing
    // (127.0.0.1, where a local swarm's processes all come from, is not capped)
    let mut idle = Vec::new();
    for _ in 0..8 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        idle.push(socket.connect(addr).await.unwrap());
    }
    // 127.0.0.2 is answered at once (the idle ones would hold every slot for seconds)
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(2),
        get_from("127.0.0.2", addr, &format!("/announce?{}", good_query())),
    )
    .await
    .expect("127.0.0.2 answered while 127.0.0.3 holds its connections");
    assert_eq!(status, 200);
    assert!(pow_bencode::decode(&body)
        .unwrap()
        .get("interval")
        .is_some());
    // 127.0.0.3's connections past its share were closed at once; its share is kept open
    for s in &mut idle[4..] {
        assert!(closed_within(s, Duration::from_secs(2)).await);
    }
    for s in &mut idle[..4] {
        assert!(!closed_within(s, Duration::from_millis(100)).await);
    }
    // and once they go, 127.0.0.3 is served again
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = get_from("127.0.0.3", addr, &format!("/announce?{}", good_query())).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_connection_that_trickles_its_request_is_closed_at_the_header_timeout() {
    let cfg = ServerConfig {
        http_header_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let server = TrackerServer::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let s = TcpStream::connect(server.local_addr()).await.unwrap();
    let (mut reader, mut writer) = s.into_split();
    // a byte every 100 ms: each read is quick, the head never comes
    let trickle = tokio::spawn(async move {
        for b in b"GET /announce?info_hash=".iter().cycle() {
            if writer.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(3), reader.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "still open after 3 s: {closed:?}"
    );
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    trickle.abort();
}

/// A `pow serve` whose datasets' seeds announce to its own tracker through its public name
/// reaches the tracker from the address the tracker listens on, one peer per dataset: not
/// capped per address (a server of more datasets than an address's share had the rest
/// refused). Another host is.
#[tokio::test]
async fn announces_from_the_trackers_own_address_are_not_capped() {
    let cfg = ServerConfig {
        max_peers_per_ip: 3,
        ..ServerConfig::default()
    };
    let server = TrackerServer::start("127.0.0.2:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let addr = server.local_addr();
    let announce = |n: u8| {
        format!(
            "/announce?info_hash={}&peer_id={}&port=6881&uploaded=0&downloaded=0&left=0&event=started",
            encode(&[n; 20]),
            encode(b"-PW0001-000000000000")
        )
    };
    for n in 0..5 {
        let (status, body) = get_from("127.0.0.2", addr, &announce(n)).await;
        assert_eq!(status, 200);
        let reply = pow_bencode::decode(&body).unwrap();
        assert!(reply.get("failure reason").is_none(), "dataset {n} refused");
    }
    let refused = |body: &[u8]| {
        pow_bencode::decode(body)
            .unwrap()
            .get("failure reason")
            .is_some()
    };
    for n in 0..3 {
        let (_, body) = get_from("127.0.0.3", addr, &announce(n)).await;
        assert!(!refused(&body), "127.0.0.3's announce {n} refused");
    }
    let (_, body) = get_from("127.0.0.3", addr, &announce(3)).await;
    assert!(refused(&body), "127.0.0.3 listed past its share");
}
