//! Acceptance 3: the client survives broken trackers. Every tracker here is a small real
//! server on 127.0.0.1 (TCP or UDP), not a mock of the client.

use pow_tracker::announcer::{self, Announcer, Progress, Tiers, Timing, Update};
use pow_tracker::server::{ServerConfig, TrackerServer};
use pow_tracker::{AnnounceRequest, Client, ClientConfig, Error, Event};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

fn cfg() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_millis(500),
        read_timeout: Duration::from_millis(500),
        max_response_bytes: 1024 * 1024,
        udp_base_timeout: Duration::from_millis(100),
        udp_max_retries: 2,
        ..ClientConfig::default()
    }
}

fn req() -> AnnounceRequest {
    AnnounceRequest {
        info_hash: [0xab; 20],
        peer_id: *b"-PW0001-faultytest00",
        port: 6881,
        uploaded: 0,
        downloaded: 0,
        left: 1000,
        event: Event::Started,
        numwant: Some(50),
        key: 1,
        tracker_id: None,
    }
}

/// A TCP server that answers every connection with `reply` (after reading the request).
async fn http_server(reply: Vec<u8>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}/announce")
}

async fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/announce")
}

/// Accepts connections and never answers (holds them open).
async fn silent_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    format!("http://{addr}/announce")
}

#[tokio::test]
async fn dead_tracker_connection_refused() {
    let url = dead_url().await;
    let err = Client::new(cfg()).announce(&url, &req()).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains("connecting to 127.0.0.1:"),
        "{err}"
    );
}

#[tokio::test]
async fn silent_tracker_times_out() {
    let url = silent_url().await;
    let t0 = Instant::now();
    let err = Client::new(cfg()).announce(&url, &req()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(err.to_string(), "tracker did not answer within 500ms");
}

#[tokio::test]
async fn garbage_answers_are_clear_errors() {
    let not_http = http_server(b"\x00\x01\x02 SSH-2.0-OpenSSH\r\n\r\n".to_vec()).await;
    let err = Client::new(cfg())
        .announce(&not_http, &req())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http(_)), "{err:?}");

    let html = http_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n<html>oops</html>\n\n\n".to_vec(),
    )
    .await;
    let err = Client::new(cfg())
        .announce(&html, &req())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Malformed(_)), "{err:?}");

    let truncated =
        http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nd8:intervali5e".to_vec()).await;
    let err = Client::new(cfg())
        .announce(&truncated, &req())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http(_)), "{err:?}");

    let hangup = http_server(Vec::new()).await;
    let err = Client::new(cfg())
        .announce(&hangup, &req())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http(_)), "{err:?}");

    let not_dict = http_server(b"HTTP/1.0 200 OK\r\n\r\ni42e".to_vec()).await;
    let err = Client::new(cfg())
        .announce(&not_dict, &req())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn failure_reason_with_http_400() {
    let body = b"d14:failure reason22:unregistered info hashe";
    let mut reply = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    reply.extend_from_slice(body);
    let url = http_server(reply).await;
    let err = Client::new(cfg()).announce(&url, &req()).await.unwrap_err();
    match &err {
        Error::Failure { reason, status } => {
            assert_eq!(reason, "unregistered info hash");
            assert_eq!(*status, Some(400));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.to_string(), "tracker refused: unregistered info hash");

    // a 500 without a bencoded body: the status
    let url = http_server(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno".to_vec()).await;
    let err = Client::new(cfg()).announce(&url, &req()).await.unwrap_err();
    assert!(matches!(err, Error::Status { status: 500 }), "{err:?}");
    // a 200 with failure reason (plain BEP 3)
    let url = http_server(b"HTTP/1.1 200 OK\r\n\r\nd14:failure reason4:nopee".to_vec()).await;
    let err = Client::new(cfg()).announce(&url, &req()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Failure {
                status: Some(200),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn ten_megabyte_body_is_refused() {
    let big = 10 * 1024 * 1024;
    // with Content-Length: refused from the header
    let mut reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n").into_bytes();
    reply.resize(reply.len() + big, b'x');
    let url = http_server(reply).await;
    let err = Client::new(cfg()).announce(&url, &req()).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
    // without a length (read until close) and chunked: refused once past the cap
    let mut reply = b"HTTP/1.1 200 OK\r\n\r\nd5:peers10485760:".to_vec();
    reply.resize(reply.len() + big, 0);
    let url = http_server(reply).await;
    let err = Client::new(cfg()).announce(&url, &req()).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
    let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..160 {
        reply.extend_from_slice(b"10000\r\n");
        reply.resize(reply.len() + 0x10000, b'y');
        reply.extend_from_slice(b"\r\n");
    }
    reply.extend_from_slice(b"0\r\n\r\n");
    let url = http_server(reply).await;
    let err = Client::new(cfg()).announce(&url, &req()).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "tracker response larger than the 1048576 byte limit"
    );
}

#[tokio::test]
async fn udp_silent_garbage_wrong_transaction_and_error_action() {
    // silent: retransmits with 100, 200, 400 ms timeouts, then gives up
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let url = format!("udp://{}", silent.local_addr().unwrap());
    let t0 = Instant::now();
    let err = Client::new(cfg()).announce(&url, &req()).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout(d) if d == Duration::from_millis(700)),
        "{err:?}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(650),
        "{:?}",
        t0.elapsed()
    );
    // and it did retransmit: 3 connect requests arrived
    let mut buf = [0u8; 256];
    let mut n = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(50), silent.recv_from(&mut buf)).await
    {
        n += 1;
    }
    assert_eq!(n, 3);

    // answers with a wrong transaction id, then garbage: both ignored, so a timeout
    let liar = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let url = format!("udp://{}", liar.local_addr().unwrap());
    tokio::spawn(async move {
        let mut buf = [0u8; 256];
        while let Ok((n, from)) = liar.recv_from(&mut buf).await {
            let mut r = buf[8..16].to_vec();
            r[7] ^= 0xff; // wrong transaction id
            r.extend_from_slice(&[0; 8]);
            let _ = liar.send_to(&r, from).await;
            let _ = liar.send_to(b"garbage", from).await;
            let _ = n;
        }
    });
    let err = Client::new(cfg()).announce(&url, &req()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");

    // error action (3) with a message
    let grumpy = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let url = format!("udp://{}", grumpy.local_addr().unwrap());
    tokio::spawn(async move {
        let mut buf = [0u8; 256];
        while let Ok((_, from)) = grumpy.recv_from(&mut buf).await {
            let mut r = 3u32.to_be_bytes().to_vec();
            r.extend_from_slice(&buf[12..16]);
            r.extend_from_slice(b"closed for maintenance");
            let _ = grumpy.send_to(&r, from).await;
        }
    });
    let err = Client::new(cfg()).announce(&url, &req()).await.unwrap_err();
    match err {
        Error::Failure { reason, status } => {
            assert_eq!(reason, "closed for maintenance");
            assert_eq!(status, None);
        }
        other => panic!("{other:?}"),
    }
}

/// A UDP tracker whose connection ids expire after 400 ms (a real tracker's after 1-2 minutes,
/// the client's after one) and that loses the first two announces: the second attempt comes
/// 200 ms after the id was obtained, the third 600 ms after, so the client must connect again
/// before it, as BEP 15 says.
/// It sent the expired id, and the tracker's error ended the announce.
#[tokio::test]
async fn udp_retransmissions_connect_again_once_the_id_expired() {
    let tracker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let url = format!("udp://{}", tracker.local_addr().unwrap());
    let connects = Arc::new(std::sync::atomic::AtomicU32::new(0));
    tokio::spawn({
        let connects = connects.clone();
        async move {
            let mut issued: Vec<(u64, Instant)> = Vec::new();
            let mut announces = 0;
            let mut buf = [0u8; 256];
            while let Ok((n, from)) = tracker.recv_from(&mut buf).await {
                let (conn, action, tid) = (&buf[..8], &buf[8..12], &buf[12..16]);
                let mut reply = Vec::new();
                if action == [0, 0, 0, 0] {
                    let id = 1000 + issued.len() as u64;
                    issued.push((id, Instant::now()));
                    connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    reply.extend_from_slice(&0u32.to_be_bytes());
                    reply.extend_from_slice(tid);
                    reply.extend_from_slice(&id.to_be_bytes());
                } else if n >= 98 && action == [0, 0, 0, 1] {
                    announces += 1;
                    if announces <= 2 {
                        continue; // lost
                    }
                    let id = u64::from_be_bytes(conn.try_into().unwrap());
                    let fresh = issued
                        .iter()
                        .any(|&(i, at)| i == id && at.elapsed() < Duration::from_millis(400));
                    if fresh {
                        reply.extend_from_slice(&1u32.to_be_bytes());
                        reply.extend_from_slice(tid);
                        for field in [60u32, 0, 1] {
                            reply.extend_from_slice(&field.to_be_bytes());
                        }
                    } else {
                        reply.extend_from_slice(&3u32.to_be_bytes());
                        reply.extend_from_slice(tid);
                        reply.extend_from_slice(b"connection id expired");
                    }
                }
                let _ = tracker.send_to(&reply, from).await;
            }
        }
    });
    let client = Client::new(ClientConfig {
        udp_connection_lifetime: Duration::from_millis(400),
        udp_base_timeout: Duration::from_millis(200),
        ..cfg()
    });
    let answer = client.announce(&url, &req()).await.unwrap();
    assert_eq!(answer.interval, Some(60));
    assert!(connects.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

fn fast_timing() -> Timing {
    Timing {
        default_interval: Duration::from_secs(1),
        min_interval_floor: Duration::from_millis(200),
        max_interval: Duration::from_secs(60),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        stop_timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn announce_loop_backs_off_on_every_kind_of_broken_tracker() {
    let big = {
        let mut r = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        r.resize(r.len() + 10 * 1024 * 1024, b'z');
        http_server(r).await
    };
    let failing = {
        let body = b"d14:failure reason4:nopee";
        let mut r =
            format!("HTTP/1.1 400 Bad\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        http_server(r).await
    };
    let garbage = http_server(b"HTTP/1.1 200 OK\r\n\r\nxyz".to_vec()).await;
    let tiers = vec![
        vec![dead_url().await, silent_url().await],
        vec![garbage, failing, big],
    ];
    let client = Arc::new(Client::new(cfg()));
    let mut rng = rand::rng();
    let a = Announcer::new(client, Tiers::new(tiers, &mut rng), [1; 20], [2; 20], 7000);
    let (_tx, rx) = tokio::sync::watch::channel(Progress::default());
    let mut h = announcer::spawn(a, rx, fast_timing());
    let mut delays = Vec::new();
    while delays.len() < 4 {
        match h.updates.recv().await.unwrap() {
            Update::Failed {
                error,
                failures,
                retry_in,
            } => {
                assert_eq!(failures as usize, delays.len() + 1);
                assert!(
                    error.starts_with("no tracker in any tier answered"),
                    "{error}"
                );
                delays.push(retry_in);
            }
            other => panic!("{other:?}"),
        }
    }
    // 100, 200, 400, 800 ms, each jittered into [75 %, 100 %]
    for (i, d) in delays.iter().enumerate() {
        let full = Duration::from_millis(100 << i);
        assert!(*d <= full && *d >= full.mul_f64(0.75), "{i}: {d:?}");
    }
    h.stop().await;
}

#[tokio::test]
async fn multitracker_falls_through_tiers_and_promotes_the_working_url() {
    let server = TrackerServer::start("127.0.0.1:0".parse().unwrap(), ServerConfig::default())
        .await
        .unwrap();
    let good = server.http_announce_url();
    let dead = dead_url().await;
    let client = Arc::new(Client::new(cfg()));
    let mut rng = rand::rng();
    // tier 0 all broken, tier 1 has the good one after a dead one
    let tiers = Tiers::new(
        vec![vec![dead_url().await], vec![dead.clone(), good.clone()]],
        &mut rng,
    );
    let mut a = Announcer::new(client, tiers, [3; 20], [4; 20], 7001);
    let p = Progress {
        left: 10,
        ..Progress::default()
    };
    let r = a.announce(p, false).await.unwrap();
    assert_eq!(r.url, good);
    assert_eq!(a.tiers.urls()[1][0], good, "working URL moved to the front");
    assert_eq!(server.scrape(&[3; 20]).incomplete, 1);
    // stopped goes to the tracker that saw started
    a.announce(p, true).await.unwrap();
    assert_eq!(server.scrape(&[3; 20]).incomplete, 0);
}

/// A small real HTTP server that answers every request with a redirect: to `target` (a base
/// URL, the request's path and query appended), or to itself when `target` is None.
async fn redirector(status: u16, target: Option<String>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let target = target.unwrap_or_else(|| base.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let reply = format!(
                    "HTTP/1.1 {status} Moved\r\nLocation: {target}{path}\r\nContent-Length: 0\r\n\
                     Connection: close\r\n\r\n"
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("{base}/announce")
}

/// A chunked reply is whole at its last chunk, though the server keeps the connection open (it
/// ignores our `Connection: close`, as keep-alive servers behind some proxies do): the client
/// read on until the connection closed, and the reply became a timeout.
#[tokio::test]
async fn a_chunked_reply_ends_at_its_last_chunk_on_a_connection_kept_open() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/announce", l.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 8192];
            let _ = s.read(&mut buf).await;
            let body = b"d8:intervali60e5:peers6:\x7f\x00\x00\x01\x1a\xe1e";
            let (first, rest) = body.split_at(10);
            let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for part in [first, rest] {
                reply.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
                reply.extend_from_slice(part);
                reply.extend_from_slice(b"\r\n");
            }
            reply.extend_from_slice(b"0\r\n\r\n");
            let _ = s.write_all(&reply).await;
            held.push(s);
        }
    });
    let client = Client::new(ClientConfig {
        read_timeout: Duration::from_secs(3),
        ..cfg()
    });
    let t0 = Instant::now();
    let response = client.announce(&url, &req()).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(response.interval, Some(60));
    assert_eq!(response.peers, vec!["127.0.0.1:6881".parse().unwrap()]);
}

/// A small real HTTP server at `/a/b/announce` (and `/a/b/scrape`) that redirects relatively,
/// to `../moved/announce?QUERY`, and from `/a/moved/...` to the tracker at `to`.
async fn relative_redirector(to: std::net::SocketAddr) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let target = head.split(' ').nth(1).unwrap_or("/").to_string();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let last = path.rsplit('/').next().unwrap_or_default();
                let location = match path.starts_with("/a/moved/") {
                    true => format!("http://{to}/{last}?{query}"),
                    false => format!("../moved/{last}?{query}"),
                };
                let reply = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\
                     Connection: close\r\n\r\n"
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("{base}/a/b/announce")
}

/// A tracker that moved answers 301, 307 or 302 (`//host/...`) with its new URL: the announce
/// and the scrape follow it (as libtorrent, Transmission and aria2 do); a redirect loop is an
/// error after 5. A relative location (`../moved/announce?...`) is resolved against the path,
/// as RFC 3986 says; it was "not followed".
/// Redirects were an error ("status 301"), so a moved tracker was never used again.
#[tokio::test]
async fn redirects_are_followed_up_to_five() {
    let server = TrackerServer::start("127.0.0.1:0".parse().unwrap(), ServerConfig::default())
        .await
        .unwrap();
    let client = Client::new(cfg());
    let to = server.local_addr();
    for (status, target) in [
        (301, format!("http://{to}")),
        (307, format!("http://{to}")),
        (302, format!("//{to}")),
    ] {
        let moved = redirector(status, Some(target)).await;
        let mut r = req();
        r.info_hash = [status as u8; 20];
        client.announce(&moved, &r).await.unwrap();
        assert_eq!(server.scrape(&[status as u8; 20]).incomplete, 1, "{status}");
        let scraped = client.scrape(&moved, &[[status as u8; 20]]).await.unwrap();
        assert_eq!(scraped[&[status as u8; 20]].incomplete, 1);
    }
    let relative = relative_redirector(to).await;
    let mut r = req();
    r.info_hash = [0x2e; 20];
    client.announce(&relative, &r).await.unwrap();
    assert_eq!(server.scrape(&[0x2e; 20]).incomplete, 1, "relative");
    let scraped = client.scrape(&relative, &[[0x2e; 20]]).await.unwrap();
    assert_eq!(scraped[&[0x2e; 20]].incomplete, 1);
    // A relative location naming the same URL (`#top`) is refused at once, not asked 5 times.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let same = format!("http://{}/announce", l.local_addr().unwrap());
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = vec![0u8; 8192];
            let _ = s.read(&mut buf).await;
            let reply = "HTTP/1.1 302 Found\r\nLocation: #top\r\nContent-Length: 0\r\n\r\n";
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    match client.announce(&same, &req()).await {
        Err(Error::Http(why)) => assert!(why.contains("the same URL"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    let looping = redirector(302, None).await;
    match client.announce(&looping, &req()).await {
        Err(Error::Http(why)) => assert!(why.contains("more than 5 redirects"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// `stopped` goes to every tracker that saw `started`, not only the first that answers: after
/// tier 0's tracker was down for a round (tier 1's got `started`) and came back (it got
/// `started` too), both hear `stopped`. Tier 1's kept listing us until it timed us out.
#[tokio::test]
async fn stopped_reaches_every_tracker_that_saw_started() {
    let first = TrackerServer::start("127.0.0.1:0".parse().unwrap(), ServerConfig::default())
        .await
        .unwrap();
    let first_addr = first.local_addr();
    let first_url = first.http_announce_url();
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = TrackerServer::start("127.0.0.1:0".parse().unwrap(), ServerConfig::default())
        .await
        .unwrap();
    let mut rng = rand::rng();
    let tiers = Tiers::new(
        vec![vec![first_url.clone()], vec![second.http_announce_url()]],
        &mut rng,
    );
    let mut a = Announcer::new(Arc::new(Client::new(cfg())), tiers, [5; 20], [6; 20], 7002);
    // A tracker that failed is passed over for its back-off: 10 ms here.
    a.tracker_backoff = Timing {
        backoff_base: Duration::from_millis(10),
        ..fast_timing()
    };
    let p = Progress {
        left: 10,
        ..Progress::default()
    };
    let r = a.announce(p, false).await.unwrap();
    assert_eq!(
        r.url,
        second.http_announce_url(),
        "the first tracker is down"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Back on its port: the aborted tasks release it as the runtime drops them.
    let first = loop {
        match TrackerServer::start(first_addr, ServerConfig::default()).await {
            Ok(server) => break server,
            Err(e) => {
                assert!(e.kind() == std::io::ErrorKind::AddrInUse, "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let r = a.announce(p, false).await.unwrap();
    assert_eq!(r.url, first_url, "back, it gets started");
    assert_eq!(first.scrape(&[5; 20]).incomplete, 1);
    assert_eq!(second.scrape(&[5; 20]).incomplete, 1);
    a.announce(p, true).await.unwrap();
    assert_eq!(first.scrape(&[5; 20]).incomplete, 0);
    assert_eq!(second.scrape(&[5; 20]).incomplete, 0, "never told stopped");
}

/// An announce loop for `hash` behind a silent first tier (3 s read timeout) and `server`'s
/// tracker, once that tracker has its `started`; and another peer in the swarm, which keeps
/// it (and its `downloaded` count) listed after our `stopped`.
struct BehindASilentTier {
    server: TrackerServer,
    hash: [u8; 20],
    progress: tokio::sync::watch::Sender<Progress>,
    handle: announcer::AnnounceHandle,
}

impl BehindASilentTier {
    async fn start(server: ServerConfig, hash: [u8; 20], timing: Timing) -> BehindASilentTier {
        let server = TrackerServer::start("127.0.0.1:0".parse().unwrap(), server)
            .await
            .unwrap();
        let tiers = Tiers::new(
            vec![vec![silent_url().await], vec![server.http_announce_url()]],
            &mut rand::rng(),
        );
        let client = Client::new(ClientConfig {
            read_timeout: Duration::from_secs(3),
            ..cfg()
        });
        let a = Announcer::new(Arc::new(client), tiers, hash, [7; 20], 7003);
        let (progress, rx) = tokio::sync::watch::channel(Progress {
            left: 100,
            ..Progress::default()
        });
        let mut handle = announcer::spawn(a, rx, timing);
        match handle.updates.recv().await.unwrap() {
            Update::Peers { url, .. } => assert_eq!(url, server.http_announce_url()),
            other => panic!("{other:?}"),
        }
        let other = AnnounceRequest {
            info_hash: hash,
            ..req()
        };
        Client::new(cfg())
            .announce(&server.http_announce_url(), &other)
            .await
            .unwrap();
        assert_eq!(server.scrape(&hash).incomplete, 2);
        BehindASilentTier {
            server,
            hash,
            progress,
            handle,
        }
    }

    /// The download completes and stops at once, as `pow download` tells both when it
    /// finishes; returns how long the stop took.
    async fn complete_and_stop(self) -> (Duration, TrackerServer) {
        self.progress
            .send(Progress {
                left: 0,
                downloaded: 100,
                uploaded: 0,
            })
            .unwrap();
        self.handle.completed();
        let t0 = Instant::now();
        self.handle.stop().await;
        (t0.elapsed(), self.server)
    }

    /// The tracker heard `completed` (counted) and then `stopped` (only the other peer left).
    fn assert_completed_then_stopped(server: &TrackerServer, hash: &[u8; 20]) {
        let s = server.scrape(hash);
        assert_eq!(
            (s.downloaded, s.complete, s.incomplete),
            (1, 0, 1),
            "completed counted, then stopped"
        );
    }
}

/// A download that stops right after it completed still owes `completed`. It went round the
/// tiers in order inside the stop's time, so a silent first tracker (which never saw us) used
/// that time up and the tracker that listed us heard neither `completed` nor `stopped`.
#[tokio::test]
async fn an_owed_completed_and_stopped_reach_the_tracker_past_a_silent_first_tier() {
    let timing = Timing {
        stop_timeout: Duration::from_secs(1),
        ..fast_timing()
    };
    // The tracker's `min interval` (30 s) has not passed: `completed` is owed at the stop.
    let swarm = BehindASilentTier::start(ServerConfig::default(), [0x3c; 20], timing).await;
    let hash = swarm.hash;
    let (took, server) = swarm.complete_and_stop().await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    BehindASilentTier::assert_completed_then_stopped(&server, &hash);
}

/// A tracker that did not answer is passed over in the next rounds, until its back-off ends:
/// each round waited out the silent first tier's timeout (here 3 s; 105 s for a silent UDP
/// tracker by default) before asking the tracker that answers.
#[tokio::test]
async fn a_silent_tracker_is_passed_over_until_its_back_off_ends() {
    let server = ServerConfig {
        interval: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let timing = Timing {
        backoff_base: Duration::from_secs(15),
        backoff_max: Duration::from_secs(60),
        ..fast_timing()
    };
    let mut swarm = BehindASilentTier::start(server, [0x5e; 20], timing).await;
    let t0 = Instant::now();
    for round in 0..2 {
        match swarm.handle.updates.recv().await.unwrap() {
            Update::Peers { url, .. } => assert_eq!(url, swarm.server.http_announce_url()),
            other => panic!("{other:?}"),
        }
        let took = t0.elapsed();
        println!("round {round} answered {took:?} after the first");
        let most = Duration::from_millis(1000 * (round + 1) + 700);
        assert!(took < most, "round {round}: {took:?}");
    }
}

/// `completed` and then the stop told while a round is under way (here held by the silent
/// first tier): the `completed` still reaches the tracker before `stopped`. It was kept with
/// the round's other commands and dropped when the stop ended the round.
#[tokio::test]
async fn completed_told_during_a_round_and_then_the_stop_is_still_announced() {
    let server = ServerConfig {
        interval: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let swarm = BehindASilentTier::start(server, [0x4d; 20], fast_timing()).await;
    // The next round starts 2 s after the first (the tracker's interval) and waits 3 s on the
    // silent tier: 2.5 s from then it is under way.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let hash = swarm.hash;
    let (_, server) = swarm.complete_and_stop().await;
    BehindASilentTier::assert_completed_then_stopped(&server, &hash);
}

#[tokio::test]
async fn announce_loop_events_and_intervals_against_the_test_server() {
    let server = TrackerServer::start(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig {
            interval: Duration::from_secs(1),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    for url in [server.http_announce_url(), server.udp_announce_url()] {
        let hash = [if url.starts_with("udp") { 5 } else { 6 }; 20];
        let before = server.stats().announces;
        let client = Arc::new(Client::new(cfg()));
        let a = Announcer::new(
            client.clone(),
            Tiers::new(vec![vec![url.clone()]], &mut rand::rng()),
            hash,
            [9; 20],
            7002,
        );
        let (tx, rx) = tokio::sync::watch::channel(Progress {
            left: 100,
            ..Progress::default()
        });
        let mut h = announcer::spawn(a, rx, fast_timing());
        let t0 = Instant::now();
        // started, then re-announces every second (the tracker's interval)
        for _ in 0..3 {
            match h.updates.recv().await.unwrap() {
                Update::Peers { next_in, .. } => assert_eq!(next_in, Duration::from_secs(1)),
                other => panic!("{other:?}"),
            }
        }
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
            "{took:?}"
        );
        assert_eq!(server.scrape(&hash).incomplete, 1);
        // completed: sent once, at once (min interval 0.5 s from the server has passed)
        tx.send(Progress {
            left: 0,
            downloaded: 100,
            uploaded: 0,
        })
        .unwrap();
        h.completed();
        match h.updates.recv().await.unwrap() {
            Update::Peers { complete, .. } => assert_eq!(complete, Some(1)),
            other => panic!("{other:?}"),
        }
        let s = server.scrape(&hash);
        assert_eq!((s.complete, s.incomplete, s.downloaded), (1, 0, 1));
        if url.starts_with("udp") {
            assert!(client.has_udp_connection(&url).await, "connection id kept");
        }
        h.stop().await;
        assert_eq!(server.scrape(&hash).complete, 0, "stopped removes the peer");
        // started + 2 regular + completed + stopped
        assert_eq!(server.stats().announces - before, 5);
    }
}

/// A reannouncer brings the next announce forward to `min interval` (the server says half
/// its interval), and does not keep the loop alive: dropping the handle still sends `stopped`.
#[tokio::test]
async fn reannounce_comes_at_min_interval_and_does_not_keep_the_loop_alive() {
    let server = TrackerServer::start(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig {
            interval: Duration::from_secs(4),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let hash = [7; 20];
    let a = Announcer::new(
        Arc::new(Client::new(cfg())),
        Tiers::new(vec![vec![server.http_announce_url()]], &mut rand::rng()),
        hash,
        [8; 20],
        7003,
    );
    let (_tx, rx) = tokio::sync::watch::channel(Progress {
        left: 100,
        ..Progress::default()
    });
    let mut h = announcer::spawn(a, rx, fast_timing());
    match h.updates.recv().await.unwrap() {
        Update::Peers { next_in, .. } => assert_eq!(next_in, Duration::from_secs(4)),
        other => panic!("{other:?}"),
    }
    let t0 = Instant::now();
    let reannouncer = h.reannouncer();
    reannouncer.reannounce();
    assert!(matches!(h.updates.recv().await, Some(Update::Peers { .. })));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    assert_eq!(server.scrape(&hash).incomplete, 1);
    drop(h);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.scrape(&hash).incomplete == 1 {
        assert!(
            Instant::now() < deadline,
            "no `stopped` after the handle was dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reannouncer.reannounce();
}

/// Early announces for a download nobody sends to (asked for every second by pow's commands)
/// back off: each waits twice as long as the one before, from `min interval` up to the regular
/// interval. A UDP tracker tells no `min interval`, and a stalled download announced to it at
/// the 30 s floor for as long as it ran (libtorrent's least is 5 minutes).
#[tokio::test]
async fn early_announces_back_off_while_they_bring_no_peer() {
    let server = TrackerServer::start(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig {
            interval: Duration::from_secs(60),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let a = Announcer::new(
        Arc::new(Client::new(cfg())),
        Tiers::new(vec![vec![server.udp_announce_url()]], &mut rand::rng()),
        [9; 20],
        [8; 20],
        7004,
    );
    let (_tx, rx) = tokio::sync::watch::channel(Progress {
        left: 100,
        ..Progress::default()
    });
    let mut h = announcer::spawn(a, rx, fast_timing());
    let reannouncer = h.reannouncer();
    let asking = tokio::spawn(async move {
        loop {
            reannouncer.reannounce();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let t0 = Instant::now();
    let mut at = Vec::new();
    while t0.elapsed() < Duration::from_millis(3300) {
        let left = Duration::from_millis(3300).saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, h.updates.recv()).await {
            Ok(Some(Update::Peers { .. })) => at.push(t0.elapsed().as_secs_f64()),
            Ok(other) => panic!("{other:?}"),
            Err(_) => break,
        }
    }
    asking.abort();
    let gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    println!("announces at {at:.2?} s, gaps {gaps:.2?}");
    // 0, then 0.2, 0.4, 0.8 and 1.6 s later (at the 200 ms floor each time: 16 of them).
    assert!((4..=5).contains(&at.len()), "{at:?}");
    for pair in gaps.windows(2) {
        assert!(pair[1] > 1.6 * pair[0], "{gaps:?}");
    }
    h.stop().await;
}

#[tokio::test]
async fn tracker_id_is_echoed_and_events_follow_bep3() {
    // a recording tracker that hands out a tracker id
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/announce?passkey=p%2B1", l.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let _ = tx.send(line);
            let body = b"d8:intervali60e5:peers6:\x7f\x00\x00\x01\x1a\xe110:tracker id3:xyze";
            let mut r =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            r.extend_from_slice(body);
            let _ = s.write_all(&r).await;
        }
    });
    let client = Arc::new(Client::new(cfg()));
    let tiers = Tiers::new(vec![vec![url]], &mut rand::rng());
    let mut a = Announcer::new(client, tiers, [0x20; 20], *b"-PW0001-+/ ~abcdefgh", 6881);
    let p = Progress {
        uploaded: 1,
        downloaded: 2,
        left: 3,
    };
    let r = a.announce(p, false).await.unwrap();
    assert_eq!(r.response.peers, vec!["127.0.0.1:6881".parse().unwrap()]);
    a.announce(p, false).await.unwrap();
    a.mark_completed();
    a.announce(p, false).await.unwrap();
    a.announce(p, false).await.unwrap();
    a.announce(p, true).await.unwrap();
    let lines: Vec<String> = (0..5).map(|_| rx.try_recv().unwrap()).collect();
    let first = &lines[0];
    assert!(
        first.starts_with("GET /announce?passkey=p%2B1&info_hash=%20%20"),
        "{first}"
    );
    assert!(first.contains("&peer_id=-PW0001-%2B%2F%20~abcdefgh&port=6881&uploaded=1&downloaded=2&left=3&compact=1&key="), "{first}");
    assert!(
        first.contains("&event=started") && !first.contains("trackerid"),
        "{first}"
    );
    assert!(
        !lines[1].contains("event=") && lines[1].contains("&trackerid=xyz"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("&event=completed"), "{}", lines[2]);
    assert!(
        !lines[3].contains("event="),
        "completed only once: {}",
        lines[3]
    );
    assert!(
        lines[4].contains("&event=stopped") && lines[4].contains("numwant=0"),
        "{}",
        lines[4]
    );
}
