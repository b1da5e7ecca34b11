//! `https://` everywhere pow speaks HTTP: tracker announces, torrent stores, web seeds. The TLS
//! server is nginx (a real one) with a certificate from a private CA made by the `openssl`
//! command line; pow trusts that CA through `SSL_CERT_FILE`, as OpenSSL and curl would, and
//! without it refuses the connection with the certificate named in the error.

mod common;

use common::nginx::{Nginx, TestCa};
use common::{free_port, make_zip, md5_hex, pow, text, Killed, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const PIECE: &str = "65536";

/// A fresh `.pow` with one data source naming `torrent_name`.
fn project(work: &Path, torrent_name: &str, md5: &str) -> PathBuf {
    common::project_with(
        &work.join("project"),
        &format!(
            "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"tls\"\n\
             torrent_file_name = \"{torrent_name}\"\nmd5 = \"{md5}\"\n"
        ),
    )
}

fn load(pow_dir: &Path, store: &str, ca: Option<&Path>) -> Output {
    let mut cmd = pow();
    cmd.arg("--pow-dir")
        .arg(pow_dir)
        .args(["source", "load", "ConnectomeCSVDataSource:tls", "--json"])
        .args(["--bind", "127.0.0.1", "--port", &free_port().to_string()])
        .args(["--torrent-store", store])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", ca);
    }
    cmd.output().unwrap()
}

/// A data source whose torrent is in an https store and announces to an https tracker: the
/// seed and the loader both announce through nginx, and the loader finds the seed only there.
#[test]
fn source_load_from_an_https_store_through_an_https_tracker() {
    let tmp = TempDir::new("https-load");
    let work = tmp.path();
    let ca = TestCa::create(&work.join("ca"));
    let www = work.join("www");
    std::fs::create_dir_all(www.join("torrents")).unwrap();
    let tracker = common::PowTracker::start();
    let nginx = Nginx::start_tls(
        &work.join("nginx"),
        &www,
        &ca,
        &[("/announce", tracker.port)],
    );

    let data = work.join("seed");
    std::fs::create_dir_all(&data).unwrap();
    let zip = data.join("tls_dataset.zip");
    make_zip(&zip, 6, 7);
    let md5 = md5_hex(&zip);
    let torrent_name = format!("{md5}.torrent");
    let torrent = www.join("torrents").join(&torrent_name);
    let announce = nginx.url("/announce");
    let o = pow()
        .args(["torrent", "create"])
        .arg(&zip)
        .arg("-o")
        .arg(&torrent)
        .args(["--piece-length", PIECE, "--tracker", &announce])
        .output()
        .unwrap();
    assert!(o.status.success(), "torrent create: {}", text(&o.stderr));

    let seed_port = free_port();
    let _seed = Killed(
        pow()
            .arg("seed")
            .arg(&torrent)
            .arg("--data")
            .arg(&data)
            .args(["--port", &seed_port.to_string(), "--bind", "127.0.0.1"])
            .env("SSL_CERT_FILE", &ca.ca)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let announced = |port: u16| {
        nginx.requests().iter().any(|line| {
            line.contains("GET /announce?")
                && line.contains(&format!("port={port}&"))
                && line.contains("\" 200 ")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !announced(seed_port) {
        assert!(
            Instant::now() < deadline,
            "the seed did not announce over https: {:?}",
            nginx.requests()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let pow_dir = project(work, &torrent_name, &md5);
    let store = nginx.url("/torrents/");

    // The system's CA certificates do not include the test CA: refused, and the error says why.
    let refused = load(&pow_dir, &store, None);
    let stderr = text(&refused.stderr);
    assert!(!refused.status.success(), "loaded without trusting the CA");
    assert!(
        stderr.contains("UnknownIssuer")
            && stderr.contains("SSL_CERT_FILE")
            && stderr.contains(&torrent_name),
        "{stderr}"
    );
    // The same for a tracker announce.
    let o = pow()
        .args(["tracker", "announce", &announce])
        .arg(&torrent)
        .args(["--port", "5003"])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    let announce_error = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        announce_error.contains("TLS with 127.0.0.1 failed")
            && announce_error.contains("UnknownIssuer")
            && announce_error.contains("SSL_CERT_FILE"),
        "{announce_error}"
    );

    let started = Instant::now();
    let out = load(&pow_dir, &store, Some(&ca.ca));
    assert!(out.status.success(), "load: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let loaded = PathBuf::from(json["directory"].as_str().unwrap()).join("tls_dataset.zip");
    common::same_bytes(&zip, &loaded).unwrap();
    assert_eq!(json["network"], true, "{json}");
    let loader_announces = nginx
        .requests()
        .iter()
        .filter(|l| l.contains("GET /announce?") && !l.contains(&format!("port={seed_port}&")))
        .count();
    assert!(loader_announces > 0, "{:?}", nginx.requests());
    println!(
        "https store and tracker: {} bytes loaded and verified in {:.2} s; untrusted CA refused with: {}",
        json["bytes"],
        started.elapsed().as_secs_f64(),
        stderr.lines().last().unwrap_or_default()
    );
}

/// A torrent whose only source is an https web seed: every piece comes over TLS `Range:`
/// requests that nginx answers with 206.
#[test]
fn download_from_an_https_web_seed() {
    let tmp = TempDir::new("https-webseed");
    let work = tmp.path();
    let ca = TestCa::create(&work.join("ca"));
    let www = work.join("www");
    std::fs::create_dir_all(www.join("mirror")).unwrap();
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let source = work.join("payload.bin");
    std::fs::write(&source, &content).unwrap();
    std::fs::write(www.join("mirror/payload.bin"), &content).unwrap();
    let nginx = Nginx::start_tls(&work.join("nginx"), &www, &ca, &[]);
    let torrent = work.join("payload.torrent");
    let o = pow()
        .args(["torrent", "create"])
        .arg(&source)
        .arg("-o")
        .arg(&torrent)
        .args(["--piece-length", PIECE, "--no-date"])
        .args(["--web-seed", &nginx.url("/mirror/payload.bin")])
        .output()
        .unwrap();
    assert!(o.status.success(), "torrent create: {}", text(&o.stderr));

    let out_dir = work.join("out");
    let started = Instant::now();
    let out = pow()
        .arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(&out_dir)
        .args([
            "--port",
            &free_port().to_string(),
            "--bind",
            "127.0.0.1",
            "--json",
        ])
        .env("SSL_CERT_FILE", &ca.ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "download: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(
        summary["web_seed_bytes"].as_u64(),
        Some(content.len() as u64)
    );
    assert_eq!(summary["hash_failures"].as_u64(), Some(0));
    assert_eq!(std::fs::read(out_dir.join("payload.bin")).unwrap(), content);
    let (partial, all) = nginx.partial_responses();
    assert!(partial > 0, "{:?}", nginx.requests());
    println!(
        "https web seed: {} bytes in {:.2} s, nginx answered {partial} of {all} requests with 206 over TLS",
        content.len(),
        started.elapsed().as_secs_f64()
    );
}

/// An https tracker that ends its response by closing the connection without TLS's
/// close_notify, and gives no Content-Length (the body runs to the end of the stream): some
/// servers do both. The announce is read, as curl and libtorrent read it.
#[test]
fn an_https_tracker_that_closes_without_close_notify() {
    let work = TempDir::new("https-eof");
    let work = work.path();
    let ca = TestCa::create(&work.join("ca"));
    let zip = work.join("eof.zip");
    make_zip(&zip, 1, 5);
    let torrent = work.join("eof.torrent");
    common::create_torrent(&zip, &torrent, 65536);
    let port = free_port();
    // Python's ssl module closes a socket without sending close_notify unless asked to
    // (`unwrap`), and HTTP/1.0 without Content-Length ends the body at the close.
    let script = "import socket, ssl, sys
cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(('127.0.0.1', port))
server.listen(1)
print('ready', flush=True)
conn, _ = server.accept()
tls = ctx.wrap_socket(conn, server_side=True)
request = b''
while b'\\r\\n\\r\\n' not in request:
    request += tls.recv(4096)
body = b'd8:intervali1800e5:peers6:\\x7f\\x00\\x00\\x01\\x1a\\xe1e'
tls.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n' + body)
tls.close()
";
    let mut server = Killed(
        std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&ca.cert)
            .arg(&ca.key)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(common::first_stdout_line(&mut server.0).trim(), "ready");
    let o = pow()
        .args(["tracker", "announce"])
        .arg(format!("https://127.0.0.1:{port}/announce"))
        .arg(&torrent)
        .args(["--port", "5003", "--json"])
        .env("SSL_CERT_FILE", &ca.ca)
        .output()
        .unwrap();
    let stdout = text(&o.stdout);
    println!("announce over TLS ended without close_notify: {stdout}");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(stdout.contains("127.0.0.1:6881"), "{stdout}");
}
